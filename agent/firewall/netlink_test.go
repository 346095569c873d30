package firewall

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink/nl"
)

// The batched netlink path itself must work (the fallback to `ipset restore` would hide a broken
// encoding): adds with timeouts, re-adds, IPv6, and deletes of present and absent entries.
func TestIpsetADTDirect(t *testing.T) {
	l := newLab(t)
	l.apply(t, State{})
	var v4 []netip.Prefix
	var tm []int
	for i := range 4500 { // three messages
		v4 = append(v4, netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), 32))
		tm = append(tm, 600)
	}
	v4 = append(v4, netip.MustParsePrefix("198.51.100.0/24"))
	tm = append(tm, 0)
	l.do(t, func() error { return ipsetADT(nl.IPSET_CMD_ADD, "bansshee-ban4", v4, tm) })
	l.do(t, func() error {
		return ipsetADT(nl.IPSET_CMD_ADD, "bansshee-ban6", []netip.Prefix{netip.MustParsePrefix("2001:db8:bad::/48")}, []int{3600})
	})
	save4, _ := l.Victim.Run("ipset", "save", "bansshee-ban4")
	save6, _ := l.Victim.Run("ipset", "save", "bansshee-ban6")
	if n := strings.Count(save4, "\nadd "); n != len(v4) || !strings.Contains(save4, "add bansshee-ban4 198.51.100.0/24 timeout 0") ||
		!strings.Contains(save6, "2001:db8:bad::/48 timeout 3") {
		t.Fatalf("after netlink adds: %d v4 entries, want %d\n%s", n, len(v4), save6)
	}
	l.do(t, func() error {
		return ipsetADT(nl.IPSET_CMD_DEL, "bansshee-ban4", append(v4[:4000:4000], netip.MustParsePrefix("203.0.113.0/24")), nil)
	})
	save4, _ = l.Victim.Run("ipset", "save", "bansshee-ban4")
	if n := strings.Count(save4, "\nadd "); n != len(v4)-4000 {
		t.Fatalf("after netlink deletes: %d entries, want %d", n, len(v4)-4000)
	}
	if err := func() (err error) {
		l.do(t, func() error { err = ipsetADT(nl.IPSET_CMD_ADD, "no-such-set", v4[:1], tm[:1]); return nil })
		return
	}(); err == nil {
		t.Fatal("an add to a missing set did not fail")
	}
	_ = time.Second
}

// The netlink dump reads what `ipset save` prints: members, prefix lengths and timeouts.
func TestIpsetDumpMatchesSave(t *testing.T) {
	l := newLab(t)
	var bans []Ban
	for i := range 2500 {
		bans = append(bans, ban(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}).String()+"/32", time.Hour))
	}
	bans = append(bans, ban("198.51.100.0/24", 0), ban("2001:db8:bad::/48", 2*time.Hour))
	l.apply(t, State{Bans: bans})
	for _, set := range []string{"bansshee-ban4", "bansshee-ban6", "no-such-set"} {
		var dumped, saved map[netip.Prefix]int
		l.do(t, func() error {
			dumped = map[netip.Prefix]int{}
			if err := ipsetDump(set, func(p netip.Prefix, t int) { dumped[p] = t }); err != nil && set != "no-such-set" {
				return err
			}
			fw := &Firewall{cfg: Config{NoNetlink: true}}
			var err error
			saved, err = fw.readSet(t.Context(), set)
			return err
		})
		if len(dumped) != len(saved) {
			t.Fatalf("%s: dump has %d members, save %d", set, len(dumped), len(saved))
		}
		for p, ts := range saved {
			if td, ok := dumped[p]; !ok || td-ts > 2 || ts-td > 2 {
				t.Fatalf("%s: %s has timeout %d in the dump, %d in save (present: %v)", set, p, td, ts, ok)
			}
		}
	}
}
