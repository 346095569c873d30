package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"sync"
	"time"

	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/controller/trigger"
	"github.com/bansshee/bansshee/internal/fleet"
	"github.com/bansshee/bansshee/internal/netns"
)

// The e2e suite's log-line case: from a CloudWatch Logs subscription event handed to the Lambda
// handler (in this process, as the Lambda runtime would hand it) to the attacker's probe dropped
// on the last of the agents, each a real bansshee-agent in its own namespace.
//
// One log stream causes every ban here (the stream of the first instance, named for it as the
// CloudWatch agent names its streams), so the trigger's per-stream cap of fleet-wide bans an hour
// (stream_fleet_bans_per_hour, 20 by default) is turned off: with it, every ban past the 20th
// would go to that stream's own instance only, and the sample would measure a different path.
const loglineConfig = `{"jails":[{"name":"cyrus","builtin":"cyrus","maxretry":1,"target":"Role=mail"}],"stream_fleet_bans_per_hour":-1}`

// loglineSamples is the number of samples at each latency (BANSSHEE_BENCH_LOGLINE_SAMPLES).
var loglineSamples = envInt("BANSSHEE_BENCH_LOGLINE_SAMPLES", 200)

// stageClock records when a sample's stages end: the handler asking the controller to filter
// (the batch decoded, the jail counted), the ban call, the ledger written (the controller logs
// "ban" between its ledger writes and its sends), and the ban call's return (every message sent).
type stageClock struct {
	mu                              sync.Mutex
	filter, ban, ledger, sent, last time.Time
}

func (s *stageClock) mark(t *time.Time) {
	s.mu.Lock()
	*t = time.Now()
	s.mu.Unlock()
}

// timedActor is the controller as the handler's Actor, with the stage clock.
type timedActor struct {
	*controller.Controller
	clock *stageClock
}

func (a timedActor) FilterCIDRs(ctx context.Context, cidrs []string) ([]netip.Prefix, map[string]error, error) {
	a.clock.mark(&a.clock.filter)
	return a.Controller.FilterCIDRs(ctx, cidrs)
}

func (a timedActor) Ban(ctx context.Context, req controller.BanRequest) (*controller.Result, error) {
	a.clock.mark(&a.clock.ban)
	defer a.clock.mark(&a.clock.sent)
	return a.Controller.Ban(ctx, req)
}

// banLogged marks the clock's ledger stage when the controller logs its "ban" line.
type banLogged struct{ clock *stageClock }

func (h banLogged) Enabled(context.Context, slog.Level) bool { return true }
func (h banLogged) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "ban" {
		h.clock.mark(&h.clock.ledger)
	}
	return nil
}
func (h banLogged) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h banLogged) WithGroup(string) slog.Handler      { return h }

// loglineStages names the stages of a sample, in order, and how each is measured.
var loglineStages = []string{
	"decode_and_jail", // event handed to the handler -> it asks the controller to filter (batch dedupe and the jail's count: 2 DynamoDB writes)
	"filter",          // -> the ban call (the allowlist, cached)
	"ledger",          // -> the ledger written (revision, the ban item; discovery alongside)
	"send",            // -> every message sent (one SendMessage per agent, in parallel), or the last drop if sooner
	"agents",          // -> the probe dropped on the last agent, after the last send (long poll wakes, verify, netlink; probe resolution)
}

// runE2ELogLine measures the log-line case on f's agents at 0 ms and 15 ms per request.
func runE2ELogLine(ctx context.Context, emit func(Row), f *fleet.Fleet, c *controller.Controller) error {
	for i := range 20 { // the ban-to-drop case's attacker addresses (absent with BANSSHEE_BENCH_E2E=logline)
		_ = exec.Command("ip", "-n", f.Attacker.Name, "addr", "del", fmt.Sprintf("10.97.210.%d/16", i+1), "dev", "eth0").Run()
	}
	if err := flushNeighbours(f.Nodes(), "10.97.210.0/24"); err != nil {
		return err
	}
	for i, lat := range []time.Duration{0, 15 * time.Millisecond} {
		if err := loglineAt(ctx, emit, f, c, lat, byte(220+2*i)); err != nil {
			return fmt.Errorf("log line at %s: %w", lat, err)
		}
	}
	f.Env.SetLatency(0)
	return nil
}

func loglineAt(ctx context.Context, emit func(Row), f *fleet.Fleet, c *controller.Controller, lat time.Duration, net3 byte) error {
	cfg, err := trigger.ParseConfig([]byte(loglineConfig))
	if err != nil {
		return err
	}
	clock := &stageClock{}
	prevLog := c.Log
	c.Log = slog.New(banLogged{clock})
	defer func() { c.Log = prevLog }()
	h := &trigger.Handler{Cfg: cfg, Counter: &trigger.LedgerCounter{DDB: f.Clients.DynamoDB, Table: c.Table}, Actor: timedActor{c, clock}}
	nodes := f.Nodes()
	stream := nodes[0].ID // the CloudWatch agent's default stream name: {instance_id}
	f.Env.SetLatency(lat)
	fmt.Fprintf(os.Stderr, "   log line to drop on %d agents, %s per request: %d samples ...\n", len(nodes), lat, loglineSamples)
	var totals []time.Duration
	stages := make([][]time.Duration, len(loglineStages))
	for i := 0; i < loglineSamples; i++ {
		src := netip.AddrFrom4([4]byte{10, 97, net3 + byte(i/250), byte(i%250 + 1)})
		if err := f.Lab.AddAddr(f.Attacker, src); err != nil {
			return err
		}
		for _, node := range nodes {
			if _, ok := f.WaitReachable(node, src, true, 5*time.Second); !ok {
				cerr := netns.Connect(&f.Attacker.NS, src, netip.AddrPortFrom(node.Host.IP4, 110), time.Second)
				addrs, _ := f.Attacker.Run("ip", "-4", "addr")
				neigh, _ := node.Host.Run("ip", "neigh")
				return fmt.Errorf("sample %d: %s unreachable from %s before the ban: %v\n%s\n%s", i, node.ID, src, cerr, addrs, neigh)
			}
		}
		line := fmt.Sprintf("pop3[%d]: badlogin: host [%s] plaintext user SASL(-13): authentication failure", 20000+i, src)
		event := trigger.EncodeLogsEventStream("/var/log/maillog", stream, []string{line})
		*clock = stageClock{}
		t0 := time.Now()
		last, err := probeAll(f, nodes, src, t0, func() error {
			out, err := h.Handle(ctx, event)
			if err == nil && (len(out.Bans) != 1 || out.Bans[0].CIDR != src.String()+"/32" || out.Rev == 0) {
				err = fmt.Errorf("handler decided %+v", out)
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("sample %d: %w", i, err)
		}
		clock.last = last
		// Done with: an address left on the attacker keeps answering the nodes' ARP, and keeps
		// its entry in their neighbour tables (see flushNeighbours).
		if out, err := exec.Command("ip", "-n", f.Attacker.Name, "addr", "del", src.String()+"/16", "dev", "eth0").CombinedOutput(); err != nil {
			return fmt.Errorf("ip addr del %s: %v: %s", src, err, out)
		}
		if (i+1)%10 == 0 {
			if err := flushNeighbours(nodes, "10.97.220.0/22"); err != nil {
				return err
			}
		}
		totals = append(totals, last.Sub(t0))
		// The last agent often drops the probe before the ban call returns (its send done, others
		// still in flight): the send stage ends at whichever comes first.
		marks := []time.Time{t0, clock.filter, clock.ban, clock.ledger, minTime(clock.sent, clock.last), clock.last}
		for s := range loglineStages {
			stages[s] = append(stages[s], max(0, marks[s+1].Sub(marks[s])))
		}
		if verbose() && i%20 == 0 {
			fmt.Fprintf(os.Stderr, "     sample %d: %s (", i, last.Sub(t0).Round(100*time.Microsecond))
			for s, name := range loglineStages {
				fmt.Fprintf(os.Stderr, " %s %s", name, stages[s][i].Round(100*time.Microsecond))
			}
			fmt.Fprintln(os.Stderr, " )")
		}
	}
	cs := fmt.Sprintf("logline-%d-agents-%dms", len(nodes), lat.Milliseconds())
	sorted := slices.Clone(totals)
	slices.Sort(sorted)
	pct := func(v []time.Duration, p float64) time.Duration { return v[min(len(v)-1, int(p*float64(len(v))))] }
	emit(Row{"e2e", cs, "p50_seconds", pct(sorted, 0.50).Seconds(), "s"})
	emit(Row{"e2e", cs, "p99_seconds", pct(sorted, 0.99).Seconds(), "s"})
	emit(Row{"e2e", cs, "max_seconds", sorted[len(sorted)-1].Seconds(), "s"})
	emit(Row{"e2e", cs, "samples", float64(len(sorted)), "samples"})
	var total time.Duration
	for _, t := range totals {
		total += t
	}
	for s, name := range loglineStages {
		var sum time.Duration
		for _, d := range stages[s] {
			sum += d
		}
		st := slices.Clone(stages[s])
		slices.Sort(st)
		emit(Row{"e2e", cs, name + "_p50_seconds", pct(st, 0.5).Seconds(), "s"})
		emit(Row{"e2e", cs, name + "_share", float64(sum) / float64(total), "fraction"})
	}
	return nil
}

// probeAll runs act while a prober per node connects from src every probeEvery, and returns when
// the last node dropped the probe (the start of its first failed probe).
func probeAll(f *fleet.Fleet, nodes []*fleet.Node, src netip.Addr, t0 time.Time, act func() error) (time.Time, error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	var last time.Time
	var lost []string
	for _, node := range nodes {
		wg.Go(func() {
			tick := time.NewTicker(probeEvery)
			defer tick.Stop()
			for time.Since(t0) < 10*time.Second {
				<-tick.C
				probe := time.Now()
				if !f.Reachable(node, src, 10*time.Millisecond) {
					mu.Lock()
					if probe.After(last) {
						last = probe
					}
					mu.Unlock()
					return
				}
			}
			mu.Lock()
			lost = append(lost, node.ID)
			mu.Unlock()
		})
	}
	err := act()
	wg.Wait()
	if err != nil {
		return last, err
	}
	if len(lost) > 0 {
		return last, fmt.Errorf("%d agents still reachable 10 s after the event (%v)", len(lost), lost)
	}
	return last, nil
}

// e2eOnlyLogLine: BANSSHEE_BENCH_E2E=logline runs only the log-line case.
func e2eOnlyLogLine() bool { return os.Getenv("BANSSHEE_BENCH_E2E") == "logline" }

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// flushNeighbours forgets, on every node, the ARP entries of the samples' attacker addresses.
// The kernel's neighbour table is one for all namespaces (gc_thresh3, 1 024 entries by default,
// shared with whatever else runs on the machine), and a reply to an address past it is never
// sent: without this (and each address removed from the attacker once its sample is done), the
// 49th fresh address of a run found a node unreachable.
func flushNeighbours(nodes []*fleet.Node, prefix string) error {
	for _, node := range nodes {
		// The node's side of the probes that got through just before a ban keeps retransmitting
		// its FIN to the banned address for minutes, and every retransmission asks for its
		// neighbour entry again: those sockets go first.
		if out, err := node.Host.Run("ss", "-K", "dst", prefix); err != nil {
			return fmt.Errorf("ss -K in %s: %v: %s", node.Host.Name, err, out)
		}
		if out, err := exec.Command("ip", "-n", node.Host.Name, "neigh", "flush", "to", prefix).CombinedOutput(); err != nil {
			return fmt.Errorf("ip neigh flush in %s: %v: %s", node.Host.Name, err, out)
		}
	}
	return nil
}
