package main

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/bansshee/bansshee/agent/firewall"
	"github.com/bansshee/bansshee/internal/netns"
)

// runConnect is the connection-rate part of the firewall suite alone: INPUT and the forwarded
// (DNATed) path, 10 000 bans each.
func runConnect(ctx context.Context, emit func(Row)) error {
	if err := netns.Available(); err != nil {
		return err
	}
	if err := benchConnect(ctx, 10000, emit); err != nil {
		return err
	}
	return benchForward(ctx, 10000, emit)
}

// benchForward: new TCP connections per second from an unbanned source to a NodePort-style
// DNATed port (forwarded to a pod namespace behind the host), with n bans in BANSSHEE-FWD against
// none; the target is the INPUT ratio of benchConnect.
func benchForward(ctx context.Context, n int, emit func(Row)) error {
	l, err := netns.New()
	if err != nil {
		return err
	}
	defer l.Close()
	v, err := l.AddHost("node")
	if err != nil {
		return err
	}
	a, err := l.AddHost("client")
	if err != nil {
		return err
	}
	pod, err := l.AddPod(v, "pod", netip.MustParsePrefix("10.244.1.0/24"))
	if err != nil {
		return err
	}
	srv, err := netns.Serve(&pod.NS, 110)
	if err != nil {
		return err
	}
	defer srv.Close()
	for _, c := range [][]string{
		{"-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "30110", "-j", "DNAT", "--to-destination", pod.Addr.String() + ":110"},
	} {
		if _, err := v.Run("iptables", c...); err != nil {
			return err
		}
	}
	dst := netip.AddrPortFrom(v.IP4, 30110)
	if err := warm(&a.NS, dst); err != nil {
		return err
	}
	const conns = 1500
	measure := func() (float64, error) {
		best := 0.0 // best of three rounds, as benchConnect
		for round := 0; round < 3; round++ {
			start := time.Now()
			for i := 0; i < conns; i++ {
				if err := netns.Connect(&a.NS, netip.Addr{}, dst, 2*time.Second); err != nil {
					return 0, err
				}
			}
			best = max(best, conns/time.Since(start).Seconds())
		}
		return best, nil
	}
	base, err := measure()
	if err != nil {
		return err
	}
	err = v.Do(func() error {
		fw, err := firewall.New(firewall.Config{})
		if err != nil {
			return err
		}
		_, err = fw.Apply(ctx, firewall.State{Bans: benchBans(n, time.Hour)})
		if err != nil {
			return err
		}
		rep, err := fw.Hooks(ctx)
		if err == nil && len(rep.Missing) > 0 {
			err = fmt.Errorf("forward hooks missing: %v", rep.Missing)
		}
		return err
	})
	if err != nil {
		return err
	}
	withSet, err := measure()
	if err != nil {
		return err
	}
	emit(Row{"firewall", fmt.Sprintf("%d-set-forwarded", n), "connect_rate_ratio", withSet / base, "ratio"})
	emit(Row{"firewall", "0-forwarded", "connect_rate", base, "conn/s"})
	return nil
}

// warm waits until dst answers once from ns: a fresh lab's first connections can be lost
// (neighbour resolution on a loaded host), and nothing should be timed before the path works.
func warm(ns *netns.NS, dst netip.AddrPort) error {
	for deadline := time.Now().Add(15 * time.Second); ; {
		err := netns.Connect(ns, netip.Addr{}, dst, 2*time.Second)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s never answered: %w", dst, err)
		}
	}
}
