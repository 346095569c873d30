package netns

import (
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"
)

func TestSmokeDropByHand(t *testing.T) {
	p := NewPair(t)
	srv, err := Serve(&p.Victim.NS, 110)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	for _, dst := range []netip.Addr{p.Victim.IP4, p.Victim.IP6} {
		if err := Connect(&p.Attacker.NS, netip.Addr{}, netip.AddrPortFrom(dst, 110), 2*time.Second); err != nil {
			t.Fatalf("before the drop: %v", err)
		}
	}
	if err := Echo(&p.Attacker.NS, netip.Addr{}, netip.AddrPortFrom(p.Victim.IP4, 110), 2*time.Second); err != nil {
		t.Fatalf("udp before the drop: %v", err)
	}
	if _, err := p.Victim.Run("iptables", "-I", "INPUT", "-s", p.Attacker.IP4.String(), "-j", "DROP"); err != nil {
		t.Fatal(err)
	}
	if err := Echo(&p.Attacker.NS, netip.Addr{}, netip.AddrPortFrom(p.Victim.IP4, 110), 300*time.Millisecond); !errors.Is(err, ErrBlocked) {
		t.Fatalf("udp after the drop: want ErrBlocked, got %v", err)
	}
	err = Connect(&p.Attacker.NS, netip.Addr{}, netip.AddrPortFrom(p.Victim.IP4, 110), 300*time.Millisecond)
	if !errors.Is(err, ErrBlocked) {
		t.Fatalf("after the drop: want ErrBlocked, got %v", err)
	}
	// IPv6 has its own table, so it still gets through: the drop was IPv4 only.
	if err := Connect(&p.Attacker.NS, netip.Addr{}, netip.AddrPortFrom(p.Victim.IP6, 110), 2*time.Second); err != nil {
		t.Fatalf("v6 after a v4 drop: %v", err)
	}
	n, err := BruteForce(t.Context(), &p.Attacker.NS, netip.Addr{}, netip.AddrPortFrom(p.Victim.IP6, 110), 3, 2*time.Second)
	if err != nil || n != 3 || srv.Logins(p.Attacker.IP6) != 3 {
		t.Fatalf("brute force: n=%d logins=%d err=%v", n, srv.Logins(p.Attacker.IP6), err)
	}
}

func TestCloseRemovesEverything(t *testing.T) {
	if err := Available(); err != nil {
		t.Skip(err)
	}
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	h, err := l.AddHost("h")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	l.Close()
	for _, name := range []string{l.Lan.Name, h.Name} {
		if _, err := os.Stat("/run/netns/" + name); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists: %v", name, err)
		}
	}
}
