package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/internal/awstest"
	"github.com/bansshee/bansshee/internal/fleet"
	"github.com/bansshee/bansshee/internal/netns"
	"github.com/bansshee/bansshee/proto"
)

var e2eAgents = envInt("BANSSHEE_BENCH_AGENTS", 20)

// probeEvery paces each prober: back-to-back connects from 20 probers (thousands a second) take
// the CPU the system under test needs on a small machine. A dropped SYN is still seen within
// probeEvery plus one connect, inside the 10 ms resolution.
var probeEvery = time.Duration(envInt("BANSSHEE_BENCH_PROBE_MS", 5)) * time.Millisecond

func envInt(k string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(k)); err == nil && v > 0 {
		return v
	}
	return def
}

// benchFleet is a fleet with n agents running and converged, and its controller.
func benchFleet(ctx context.Context, n int, extra ...string) (*fleet.Fleet, *controller.Controller, error) {
	if err := netns.Available(); err != nil {
		return nil, nil, err
	}
	table := awstest.Unique("bansshee")
	f, err := fleet.New(ctx, fleet.Options{Table: table})
	if err != nil {
		return nil, nil, err
	}
	c, err := controller.New(controller.Config{AgentRoleID: fleet.AgentRoleID, EC2: f.Clients.EC2, SQS: f.Clients.SQS, DDB: f.Clients.DynamoDB, Table: table, Prefix: f.Queues.Prefix, Signer: f.Signer})
	if err == nil {
		err = c.Ledger.CreateTable(ctx)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	var ids []string
	for i := 0; i < n; i++ {
		node, err := f.AddNode(ctx, map[string]string{"Role": "mail", "bansshee:managed": "true"})
		if err != nil {
			f.Close()
			return nil, nil, err
		}
		ids = append(ids, node.ID)
	}
	if _, err := c.ReconcileOnce(ctx); err != nil {
		f.Close()
		return nil, nil, err
	}
	for _, node := range f.Nodes() {
		if err := f.StartAgent(node, extra...); err != nil {
			f.Close()
			return nil, nil, err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if pending, _ := c.Wait(wctx, ids, 1, nil); len(pending) > 0 {
		f.Close()
		return nil, nil, fmt.Errorf("%d agents never reported", len(pending))
	}
	return f, c, nil
}

// runE2E: latency from `bansshee ban` (the controller call) to the attacker's packets being
// dropped, on every targeted agent, over several rounds with a fresh attacker address each.
func runE2E(ctx context.Context, emit func(Row)) error {
	n := e2eAgents
	fmt.Fprintf(os.Stderr, "   starting %d agents ...\n", n)
	f, c, err := benchFleet(ctx, n, "--poll-wait", "20")
	if err != nil {
		return err
	}
	defer f.Close()
	if e2eOnlyLogLine() {
		return runE2ELogLine(ctx, emit, f, c)
	}
	const rounds = 20
	var samples, calls []time.Duration
	for r := 0; r < rounds; r++ {
		src := netip.AddrFrom4([4]byte{10, 97, 210, byte(r + 1)})
		if err := f.Lab.AddAddr(f.Attacker, src); err != nil {
			return err
		}
		for _, node := range f.Nodes() {
			if !f.Reachable(node, src, time.Second) {
				return fmt.Errorf("round %d: %s unreachable before the ban", r, node.ID)
			}
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		var errs []error
		t0 := time.Now()
		for _, node := range f.Nodes() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tick := time.NewTicker(probeEvery)
				defer tick.Stop()
				for time.Since(t0) < 10*time.Second {
					<-tick.C
					probe := time.Now()
					if !f.Reachable(node, src, 10*time.Millisecond) { // a dropped SYN is noticed within 10 ms
						mu.Lock()
						samples = append(samples, probe.Sub(t0))
						mu.Unlock()
						return
					}
				}
				mu.Lock()
				errs = append(errs, fmt.Errorf("%s still reachable 10 s after the ban", node.ID))
				mu.Unlock()
			}()
		}
		if _, err := c.Ban(ctx, controller.BanRequest{CIDRs: []string{src.String()}, Target: "Role=mail", TTL: time.Hour, Reason: "bench"}); err != nil {
			return err
		}
		calls = append(calls, time.Since(t0))
		wg.Wait()
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		if os.Getenv("BANSSHEE_BENCH_VERBOSE") != "" {
			round := samples[len(samples)-n:]
			fmt.Fprintf(os.Stderr, "   round %d: slowest %s, ban call %s\n", r, slices.Max(round), calls[len(calls)-1])
		}
	}
	slices.Sort(samples)
	pct := func(p float64) time.Duration { return samples[min(len(samples)-1, int(p*float64(len(samples))))] }
	cs := strconv.Itoa(n)
	emit(Row{"e2e", cs, "p50_seconds", pct(0.50).Seconds(), "s"})
	emit(Row{"e2e", cs, "p99_seconds", pct(0.99).Seconds(), "s"})
	emit(Row{"e2e", cs, "max_seconds", samples[len(samples)-1].Seconds(), "s"})
	// How much of it is the controller: Controller.Ban returns once every message is sent.
	slices.Sort(calls)
	emit(Row{"e2e", cs, "ban_call_p50_seconds", calls[len(calls)/2].Seconds(), "s"})
	fmt.Fprintf(os.Stderr, "   %d samples (%d rounds x %d agents)\n", len(samples), rounds, n)
	return runE2ELogLine(ctx, emit, f, c)
}

// runAgent: resident memory and CPU of an idle agent holding 0 and 100 000 bans, with its default
// 30 s reconcile, measured from /proc over BANSSHEE_BENCH_IDLE seconds (default 300: ten passes,
// one of them a full compare, as in steady state).
func runAgent(ctx context.Context, emit func(Row)) error {
	sizes := []int{0, 100000, 1000000}
	if v := os.Getenv("BANSSHEE_BENCH_AGENT_BANS"); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				return fmt.Errorf("BANSSHEE_BENCH_AGENT_BANS: %w", err)
			}
			sizes = append(sizes, n)
		}
	}
	for _, bans := range sizes {
		f, c, err := benchFleet(ctx, 1, "--reconcile-interval", "30s", "--poll-wait", "20", "--log-level", "info")
		if err != nil {
			return err
		}
		node := f.Nodes()[0]
		if bans > 0 {
			m := proto.Message{ID: "bench-sync", Kind: proto.KindSync, To: node.ID, IssuedAt: time.Now().UTC(), Rev: 1000}
			exp := time.Now().Add(2 * time.Hour).UTC().Truncate(time.Second)
			for i := 0; i < bans; i++ {
				p := netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(64 + i>>16), byte(i >> 8), byte(i)}), 32)
				m.Bans = append(m.Bans, proto.Ban{ID: proto.BanID(p), CIDR: p.String(), ExpiresAt: exp, Rev: 1000})
			}
			parts, err := proto.SplitSyncCompressed(m, proto.MaxBodyBytes-proto.AttributeHeadroom)
			if err != nil {
				f.Close()
				return err
			}
			url, err := f.Queues.URL(ctx, node.ID)
			if err != nil {
				f.Close()
				return err
			}
			for i := range parts {
				if err := controller.Send(ctx, f.Clients.SQS, f.Signer, url, &parts[i]); err != nil {
					f.Close()
					return err
				}
			}
			wctx, cancel := context.WithTimeout(ctx, 120*time.Second)
			pending, _ := c.Wait(wctx, []string{node.ID}, 1000, nil)
			cancel()
			if len(pending) > 0 {
				f.Close()
				return fmt.Errorf("agent did not apply the %d-ban sync in 120 s", bans)
			}
			fmt.Fprintf(os.Stderr, "   agent holds %d bans (sync in %d parts)\n", bans, len(parts))
			// Give the agent's first passes after a large sync (state written, memory returned) time
			// to finish before the window opens: the window measures idling, not the sync.
			time.Sleep(5 * time.Second) // settling time before a measurement window, not synchronisation
		}
		pid := node.Pid()
		window := time.Duration(envInt("BANSSHEE_BENCH_IDLE", 300)) * time.Second
		fmt.Fprintf(os.Stderr, "   measuring an idle agent with %d bans for %s ...\n", bans, window)
		cpu0, err := procCPU(pid)
		if err != nil {
			f.Close()
			return err
		}
		start := time.Now()
		select {
		case <-ctx.Done():
			f.Close()
			return ctx.Err()
		case <-time.After(window):
		}
		cpu1, _ := procCPU(pid)
		rss, err := procRSS(pid)
		f.Close()
		if err != nil {
			return err
		}
		cs := strconv.Itoa(bans)
		emit(Row{"agent", cs, "rss_bytes", float64(rss), "bytes"})
		emit(Row{"agent", cs, "cpu_fraction", (cpu1 - cpu0).Seconds() / time.Since(start).Seconds(), "cores"})
	}
	return nil
}

// procCPU is user+system time of pid and its reaped children (the ipset and iptables processes
// the agent runs are part of its cost).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	var ticks int64
	for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime
		v, _ := strconv.ParseInt(fields[i], 10, 64)
		ticks += v
	}
	return time.Duration(ticks) * time.Second / 100, nil // USER_HZ is 100 on Linux
}

func procRSS(pid int) (int64, error) { return procStatus(pid, "VmRSS:") }

// procStatus reads a kB field of /proc/PID/status (VmRSS, VmHWM: the peak) in bytes.
func procStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field) {
			kb, err := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}
