package main

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"time"

	"github.com/bansshee/bansshee/agent/firewall"
	"github.com/bansshee/bansshee/internal/netns"
)

// benchBans returns n distinct /32 bans in 100.64.0.0/10 (never the lab's addresses).
func benchBans(n int, ttl time.Duration) []firewall.Ban {
	bans := make([]firewall.Ban, n)
	for i := range bans {
		a := netip.AddrFrom4([4]byte{100, byte(64 + i>>16), byte(i >> 8), byte(i)})
		bans[i] = firewall.Ban{Prefix: netip.PrefixFrom(a, 32), Expires: time.Now().Add(ttl)}
	}
	return bans
}

// restoreFloor times one `ipset restore` of bans into a set of its own, created in the same batch.
func restoreFloor(ctx context.Context, bans []firewall.Ban) (time.Duration, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "create bsh-floor hash:net family inet hashsize 4096 maxelem %d timeout 0\n", max(len(bans), 65536))
	for _, ban := range bans {
		fmt.Fprintf(&b, "add bsh-floor %s timeout 3600\n", ban.Prefix)
	}
	cmd := exec.CommandContext(ctx, "ipset", "restore")
	cmd.Stdin = &b
	start := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(start)
	_ = exec.Command("ipset", "destroy", "bsh-floor").Run()
	if err != nil {
		return 0, fmt.Errorf("ipset restore (floor): %v: %s", err, out)
	}
	return d, nil
}

func runFirewall(ctx context.Context, emit func(Row)) error {
	if err := netns.Available(); err != nil {
		return err
	}
	for _, n := range []int{1000, 10000, 100000, 1000000} {
		if err := benchApply(ctx, n, emit); err != nil {
			return err
		}
	}
	for _, n := range []int{1000, 10000} {
		if err := benchSeed(ctx, n, emit); err != nil {
			return err
		}
	}
	if err := benchConnect(ctx, 10000, emit); err != nil {
		return err
	}
	return benchForward(ctx, 10000, emit) // forward.go: the DNATed (container) path
}

func withHost(fn func(l *netns.Lab, h *netns.Host) error) error {
	l, err := netns.New()
	if err != nil {
		return err
	}
	defer l.Close()
	h, err := l.AddHost("victim")
	if err != nil {
		return err
	}
	return fn(l, h)
}

// benchApply: time for one Apply of n new bans on an empty kernel; then one more ban alone.
func benchApply(ctx context.Context, n int, emit func(Row)) error {
	return withHost(func(_ *netns.Lab, h *netns.Host) error {
		return h.Do(func() error {
			fw, err := firewall.New(firewall.Config{})
			if err != nil {
				return err
			}
			if _, err := fw.Ensure(ctx); err != nil {
				return err
			}
			bans := benchBans(n, time.Hour)
			start := time.Now()
			res, err := fw.Apply(ctx, firewall.State{Bans: bans})
			d := time.Since(start)
			if err != nil {
				return err
			}
			if res.Added != n {
				return fmt.Errorf("applied %d of %d bans", res.Added, n)
			}
			// The kernel's own count, so that a figure never stands for entries that are not there.
			hdr, err := exec.CommandContext(ctx, "ipset", "list", "-t", "bansshee-ban4").Output()
			if err != nil || !bytes.Contains(hdr, []byte(fmt.Sprintf("Number of entries: %d\n", n))) {
				return fmt.Errorf("the kernel's set does not hold %d entries after the apply: %v\n%s", n, err, hdr)
			}
			emit(Row{"firewall", strconv.Itoa(n), "apply_seconds", d.Seconds(), "s"})
			// The floor in the same run: one raw `ipset restore` of the same entries into a fresh
			// set, the least any apply through ipset can cost.
			floor, err := restoreFloor(ctx, bans)
			if err != nil {
				return err
			}
			emit(Row{"firewall", strconv.Itoa(n), "floor_seconds", floor.Seconds(), "s"})
			emit(Row{"firewall", strconv.Itoa(n), "apply_vs_floor", d.Seconds() / floor.Seconds(), "ratio"})
			if n == 1000 {
				var times []time.Duration
				for i := 0; i < 21; i++ {
					b := []firewall.Ban{{Prefix: netip.MustParsePrefix(fmt.Sprintf("198.18.0.%d/32", i+1)), Expires: time.Now().Add(time.Hour)}}
					s := time.Now()
					if err := fw.Ban(ctx, b); err != nil {
						return err
					}
					times = append(times, time.Since(s))
				}
				slices.Sort(times)
				emit(Row{"firewall", "1", "single_ban_seconds", times[len(times)/2].Seconds(), "s"})
			}
			return nil
		})
	})
}

// benchSeed: the seed's method, one `iptables -I INPUT -s X -j DROP` process per address.
func benchSeed(ctx context.Context, n int, emit func(Row)) error {
	return withHost(func(_ *netns.Lab, h *netns.Host) error {
		return h.Do(func() error {
			bans := benchBans(n, time.Hour)
			start := time.Now()
			for _, b := range bans {
				if out, err := exec.CommandContext(ctx, "iptables", "-w", "-I", "INPUT", "-s", b.Prefix.Addr().String(), "-j", "DROP").CombinedOutput(); err != nil {
					return fmt.Errorf("iptables -I: %v: %s", err, out)
				}
			}
			emit(Row{"firewall", strconv.Itoa(n), "per_rule_apply_seconds", time.Since(start).Seconds(), "s"})
			return nil
		})
	})
}

// benchConnect: new TCP connections per second from an unbanned attacker with n bans present,
// as a set (ours) and as a linear chain of n rules, each against no bans at all.
func benchConnect(ctx context.Context, n int, emit func(Row)) error {
	l, err := netns.New()
	if err != nil {
		return err
	}
	defer l.Close()
	v, err := l.AddHost("victim")
	if err != nil {
		return err
	}
	a, err := l.AddHost("attacker")
	if err != nil {
		return err
	}
	srv, err := netns.Serve(&v.NS, 110)
	if err != nil {
		return err
	}
	defer srv.Close()
	dst := netip.AddrPortFrom(v.IP4, 110)
	if err := warm(&a.NS, dst); err != nil { // forward.go
		return err
	}
	const conns = 1500
	measure := func() (float64, error) {
		// Best of three rounds, to keep scheduler noise out of the ratio.
		best := 0.0
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
	bans := benchBans(n, time.Hour)
	err = v.Do(func() error {
		fw, err := firewall.New(firewall.Config{})
		if err != nil {
			return err
		}
		_, err = fw.Apply(ctx, firewall.State{Bans: bans})
		return err
	})
	if err != nil {
		return err
	}
	withSet, err := measure()
	if err != nil {
		return err
	}
	emit(Row{"firewall", fmt.Sprintf("%d-set", n), "connect_rate_ratio", withSet / base, "ratio"})
	var b bytes.Buffer
	b.WriteString("*filter\n")
	for _, ban := range bans {
		fmt.Fprintf(&b, "-A INPUT -s %s -j DROP\n", ban.Prefix.Addr())
	}
	b.WriteString("COMMIT\n")
	err = v.Do(func() error {
		cmd := exec.CommandContext(ctx, "iptables-restore", "--noflush")
		cmd.Stdin = &b
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("load linear chain: %v: %s", err, out)
		}
		return nil
	})
	if err != nil {
		return err
	}
	linear, err := measure()
	if err != nil {
		return err
	}
	emit(Row{"firewall", fmt.Sprintf("%d-linear", n), "connect_rate_ratio", linear / base, "ratio"})
	emit(Row{"firewall", "0", "connect_rate", base, "conn/s"})
	return nil
}
