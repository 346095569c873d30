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
