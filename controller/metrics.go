package controller

import (
	"github.com/prometheus/client_golang/prometheus"
)

// FleetCounts is what one reconcile pass saw of the fleet.
type FleetCounts struct {
	Instances    int
	BansActive   int
	LimitsActive int
	// Agents by state: converged (at the ledger's revision and digest), lagging, silent (heartbeat
	// older than SilentAfter), unreported (never heartbeated).
	Converged, Lagging, Silent, Unreported int
}

// AgentStates names the states of FleetCounts, in order.
var AgentStates = []string{"converged", "lagging", "silent", "unreported"}

func (f FleetCounts) byState() []int { return []int{f.Converged, f.Lagging, f.Silent, f.Unreported} }

// Metrics are the reconciler's Prometheus metrics (`bansshee serve --metrics`).
type Metrics struct {
	Registry    *prometheus.Registry
	Passes      *prometheus.CounterVec
	Syncs       prometheus.Counter
	Escalations prometheus.Counter
	Instances   prometheus.Gauge
	Bans        prometheus.Gauge
	Limits      prometheus.Gauge
	Agents      *prometheus.GaugeVec
	Decisions   *prometheus.CounterVec
	// Feeds: refreshes by feed and result (ok, not_modified, failed, held), and each feed's entries
	// in force.
	FeedRefreshes *prometheus.CounterVec
	FeedEntries   *prometheus.GaugeVec
	// Simulated counts what simulate-mode feeds (and, in this process, triggers) would have banned.
	Simulated prometheus.Counter
	// OverCapacity: instances whose desired state is more than their agent's set holds.
	OverCapacity prometheus.Gauge
}

// FeedResult names the outcome of one refresh: ok, not_modified, failed or held.
func FeedResult(r FeedReport) string {
	switch {
	case r.Err != nil:
		return "failed"
	case r.Held != "":
		return "held"
	case r.NotModified:
		return "not_modified"
	}
	return "ok"
}

// NewMetrics registers the reconciler's metrics on a new registry.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry:    prometheus.NewRegistry(),
		Passes:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bansshee_reconcile_passes_total", Help: "Reconcile passes, by result."}, []string{"result"}),
		Syncs:       prometheus.NewCounter(prometheus.CounterOpts{Name: "bansshee_reconcile_syncs_total", Help: "Full syncs sent."}),
		Escalations: prometheus.NewCounter(prometheus.CounterOpts{Name: "bansshee_escalations_total", Help: "Sources banned fleet-wide from agents' escalations."}),
		Instances:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "bansshee_fleet_instances", Help: "Managed running instances."}),
		Bans:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "bansshee_fleet_bans_active", Help: "Active bans in the ledger."}),
		Limits:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "bansshee_fleet_limits_active", Help: "Active rate-limit policies in the ledger."}),
		Agents:      prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bansshee_fleet_agents", Help: "Agents by state: converged, lagging, silent, unreported."}, []string{"state"}),
		Decisions:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bansshee_decisions_total", Help: "Bans decided, by trigger."}, []string{"trigger"}),
		FeedRefreshes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bansshee_feed_refreshes_total",
			Help: "Feed refreshes by feed and result: ok, not_modified, failed (the last good version stays), held (a version not applied)."}, []string{"feed", "result"}),
		FeedEntries: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bansshee_feed_entries", Help: "Entries in force of each feed's last good version."}, []string{"feed"}),
		Simulated:   prometheus.NewCounter(prometheus.CounterOpts{Name: "bansshee_simulated_total", Help: "Addresses simulate-mode feeds and triggers would have banned (and did not)."}),
		OverCapacity: prometheus.NewGauge(prometheus.GaugeOpts{Name: "bansshee_fleet_instances_over_capacity",
			Help: "Instances whose bans and feeds are more than their agent's set holds (they get no sync)."}),
	}
	m.Registry.MustRegister(m.Passes, m.Syncs, m.Escalations, m.Instances, m.Bans, m.Limits, m.Agents, m.Decisions, m.FeedRefreshes, m.FeedEntries, m.Simulated, m.OverCapacity)
	for _, r := range []string{"ok", "error"} {
		m.Passes.WithLabelValues(r)
	}
	for _, s := range AgentStates {
		m.Agents.WithLabelValues(s)
	}
	return m
}

// Observe records one pass.
func (m *Metrics) Observe(rep *Report, err error) {
	if err != nil {
		m.Passes.WithLabelValues("error").Inc()
	} else {
		m.Passes.WithLabelValues("ok").Inc()
	}
	if rep == nil {
		return
	}
	m.Syncs.Add(float64(len(rep.Synced)))
	m.Simulated.Add(float64(rep.Simulated))
	m.Escalations.Add(float64(len(rep.Escalated)))
	if len(rep.Escalated) > 0 {
		m.Decisions.WithLabelValues("escalation").Add(float64(len(rep.Escalated)))
	}
	m.Instances.Set(float64(rep.Fleet.Instances))
	m.OverCapacity.Set(float64(len(rep.OverCapacity)))
	m.Bans.Set(float64(rep.Fleet.BansActive))
	m.Limits.Set(float64(rep.Fleet.LimitsActive))
	for i, n := range rep.Fleet.byState() {
		m.Agents.WithLabelValues(AgentStates[i]).Set(float64(n))
	}
	for _, f := range rep.Feeds {
		m.FeedRefreshes.WithLabelValues(f.Name, FeedResult(f)).Inc()
		m.FeedEntries.WithLabelValues(f.Name).Set(float64(f.Entries))
	}
}
