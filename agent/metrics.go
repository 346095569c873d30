package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the agent's Prometheus metrics, on a registry of their own.
type Metrics struct {
	Registry     *prometheus.Registry
	BansActive   prometheus.Gauge
	AppliedRev   prometheus.Gauge
	Refused      prometheus.Gauge
	Applied      *prometheus.CounterVec
	Rejected     *prometheus.CounterVec
	ApplySeconds prometheus.Histogram
	LagSeconds   prometheus.Histogram
	Repairs      *prometheus.CounterVec
	AWSErrors    *prometheus.CounterVec
	Dropped      prometheus.Counter
	SaveErrors   prometheus.Counter
	KernelErrors prometheus.Counter
	StateCorrupt prometheus.Counter
	Escalations  *prometheus.CounterVec
}

// NewMetrics registers the agent's metrics on a new registry.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry:   prometheus.NewRegistry(),
		BansActive: prometheus.NewGauge(prometheus.GaugeOpts{Name: "bansshee_agent_bans_active", Help: "Bans in the desired state (and so in the kernel)."}),
		AppliedRev: prometheus.NewGauge(prometheus.GaugeOpts{Name: "bansshee_agent_applied_revision", Help: "Highest ledger revision applied."}),
		Refused: prometheus.NewGauge(prometheus.GaugeOpts{Name: "bansshee_agent_bans_refused",
			Help: "Bans held (from a sync) but not enforced because they cover this instance's allowlist."}),
		Applied: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bansshee_agent_messages_applied_total", Help: "Messages applied, by kind."}, []string{"kind"}),
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bansshee_agent_messages_rejected_total",
			Help: "Messages refused (left for the DLQ), by reason."}, []string{"reason"}),
		ApplySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "bansshee_agent_apply_duration_seconds",
			Help: "Time to apply one message to the kernel and the state file.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		LagSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "bansshee_agent_delivery_lag_seconds",
			Help: "From a message's issued_at to its application (queue lag).", Buckets: prometheus.ExponentialBuckets(0.01, 2, 16)}),
		Repairs:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bansshee_agent_drift_repairs_total", Help: "Kernel drift found and repaired, by what."}, []string{"what"}),
		AWSErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bansshee_agent_aws_errors_total", Help: "Failed AWS calls after SDK retries, by operation."}, []string{"op"}),
		Dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "bansshee_agent_sync_entries_dropped_total",
			Help: "Sync entries left out because they expired in transit (the rest of the sync applied)."}),
		SaveErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "bansshee_agent_state_save_errors_total",
			Help: "Failed writes of the state file (the kernel keeps the change; the write is retried every reconcile)."}),
		KernelErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "bansshee_agent_kernel_apply_errors_total",
			Help: "Messages whose kernel change failed (kept in the state, retried every reconcile pass)."}),
		StateCorrupt: prometheus.NewCounter(prometheus.CounterOpts{Name: "bansshee_agent_state_corrupt_total",
			Help: "Unreadable state files moved aside at start (the state is rebuilt from a sync)."}),
		Escalations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bansshee_agent_escalations_total",
			Help: "Sources that tripped an escalating limit, by outcome (reported, dropped over the cap)."}, []string{"outcome"}),
	}
	m.Registry.MustRegister(m.BansActive, m.AppliedRev, m.Refused, m.Applied, m.Rejected, m.ApplySeconds, m.LagSeconds, m.Repairs, m.AWSErrors,
		m.Dropped, m.SaveErrors, m.KernelErrors, m.StateCorrupt, m.Escalations, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, r := range []string{"too_large", "unsigned", "bad_version", "unknown_key", "bad_signature", "malformed", "invalid", "stale", "misdirected"} {
		m.Rejected.WithLabelValues(r)
	}
	m.Escalations.WithLabelValues("reported")
	m.Escalations.WithLabelValues("dropped")
	return m
}
