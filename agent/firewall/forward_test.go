package firewall

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bansshee/bansshee/internal/netns"
	"github.com/bansshee/bansshee/proto"
)

func TestPortRanges(t *testing.T) {
	for _, c := range []struct {
		in   []int
		want []string
	}{
		{[]int{8080}, []string{"8080"}},
		{[]int{81, 80, 82, 443, 80}, []string{"80:82", "443"}},
		{[]int{1, 3, 5}, []string{"1", "3", "5"}},
	} {
		if got := portRanges(c.in); !slices.Equal(got, c.want) {
			t.Errorf("portRanges(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestForwardModeIsChecked(t *testing.T) {
	if _, err := New(Config{Forward: "some"}); err == nil || !strings.Contains(err.Error(), `forward mode "some"`) {
		t.Fatalf("New with forward mode some: %v, want a clear error", err)
	}
}

// kubeLab is a node (the victim namespace) with a pod behind it and kube-proxy-style rules: a
// NodePort 30110 DNATed to the pod's port 110, and KUBE-FORWARD accepting established traffic
// ahead of everything else in FORWARD.
type kubeLab struct {
	*lab
	pod *netns.Pod
	srv *netns.Server
}

const nodePort = 30110

func newKubeLab(t *testing.T) *kubeLab {
	t.Helper()
	l := newLab(t)
	pod, err := l.Lab.AddPod(l.Victim, "pod", netip.MustParsePrefix("10.244.1.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := netns.Serve(&pod.NS, 110)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	for _, c := range [][]string{
		{"-t", "nat", "-N", "KUBE-NODEPORTS"},
		{"-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "KUBE-NODEPORTS"},
		{"-t", "nat", "-A", "KUBE-NODEPORTS", "-p", "tcp", "--dport", "30110", "-j", "DNAT", "--to-destination", pod.Addr.String() + ":110"},
		{"-N", "KUBE-FORWARD"},
		{"-A", "KUBE-FORWARD", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"},
		{"-A", "FORWARD", "-j", "KUBE-FORWARD"},
	} {
		if _, err := l.Victim.Run("iptables", c...); err != nil {
			t.Fatal(err)
		}
	}
	// An IPv6 rule of the host's own, so that the IPv6 filter table exists before (as on a host).
	if _, err := l.Victim.Run("ip6tables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"); err != nil {
		t.Fatal(err)
	}
	// The attacker can also reach the pod network directly, through the node as a router.
	if err := l.Lab.Route(l.Attacker, netip.MustParsePrefix("10.244.1.0/24"), l.Victim.IP4); err != nil {
		t.Fatal(err)
	}
	k := &kubeLab{lab: l, pod: pod, srv: srv}
	// A fresh lab's first packets can be lost on a loaded host: the paths must answer once first.
	for deadline := time.Now().Add(15 * time.Second); !k.reachNodePort(k.src2) || !k.reachPod(k.src2); {
		if time.Now().After(deadline) {
			t.Fatal("the lab never forwarded to the pod (node port or routed)")
		}
	}
	return k
}

func (k *kubeLab) reachNodePort(src netip.Addr) bool {
	return netns.Connect(&k.Attacker.NS, src, netip.AddrPortFrom(k.Victim.IP4, nodePort), 400*time.Millisecond) == nil
}

func (k *kubeLab) reachPod(src netip.Addr) bool {
	return netns.Connect(&k.Attacker.NS, src, netip.AddrPortFrom(k.pod.Addr, 110), 400*time.Millisecond) == nil
}

func (l *lab) hooks(t *testing.T, fw *Firewall) HookReport {
	t.Helper()
	var rep HookReport
	l.do(t, func() error {
		var err error
		rep, err = fw.Hooks(t.Context())
		return err
	})
	return rep
}

func hookAt(rep HookReport, family, from, to string) int {
	for _, h := range rep.Hooks {
		if h.Family == family && h.From == from && h.To == to {
			return h.Position
		}
	}
	return 0
}

// A NodePort (kube-proxy's DNAT in PREROUTING): bans and limits apply to the forwarded
// connection, limits by the published port; routing through the node without DNAT is untouched
// in the default mode and covered with Forward "all"; uninstall leaves kube's rules as they were.
func TestForwardDNATNodePort(t *testing.T) {
	k := newKubeLab(t)
	before := kernelDump(t, &k.Victim.NS)
	if !k.reachNodePort(k.src1) || !k.reachPod(k.src1) {
		t.Fatal("the lab does not forward: node port or pod unreachable before any ban")
	}
	published := proto.Limit{ID: "l-nodeport", Proto: "tcp", Ports: []int{nodePort}, Hits: 3, Seconds: 60, Action: "drop", Rev: 1}
	podPort := proto.Limit{ID: "l-podport", Proto: "tcp", Ports: []int{110}, Hits: 1, Seconds: 60, Action: "drop", Rev: 1}
	k.apply(t, State{Bans: []Ban{ban(k.src1.String()+"/32", time.Hour)}, Limits: []proto.Limit{published, podPort}})

	rep := k.hooks(t, k.fw)
	if pos := hookAt(rep, "ipv4", "FORWARD", "BANSSHEE-FWD"); pos != 1 {
		t.Fatalf("FORWARD hook at position %d, want 1: %+v", pos, rep.Hooks)
	}
	if len(rep.Missing) != 0 {
		t.Fatalf("hooks missing: %v", rep.Missing)
	}
	if k.reachNodePort(k.src1) {
		t.Fatal("banned source reached the node port")
	}
	if !k.reachNodePort(k.src2) {
		t.Fatal("unbanned source could not reach the node port")
	}
	// Routed, not DNATed: the host as a router is untouched by default.
	if !k.reachPod(k.src1) {
		t.Fatal("forward mode dnat dropped routed traffic that no DNAT redirected")
	}
	// The published port's limit counts; the pod port's limit (1 hit) must not, or the second
	// connection would be dropped.
	for i := 1; i <= 3; i++ {
		if !k.reachNodePort(k.oth) {
			t.Fatalf("connection %d of 3 to the node port dropped", i)
		}
	}
	if k.reachNodePort(k.oth) {
		t.Fatal("4th connection within the window passed the node port's limit")
	}

	// kube-proxy started after the agent prepends its own jump: Ensure puts ours back on top.
	if _, err := k.Victim.Run("iptables", "-I", "FORWARD", "1", "-j", "KUBE-FORWARD"); err != nil {
		t.Fatal(err)
	}
	var repairs []string
	k.do(t, func() error {
		var err error
		repairs, err = k.fw.Ensure(t.Context())
		return err
	})
	if !slices.Contains(repairs, "hook:FORWARD4") {
		t.Fatalf("repairs %v, want hook:FORWARD4", repairs)
	}
	if pos := hookAt(k.hooks(t, k.fw), "ipv4", "FORWARD", "BANSSHEE-FWD"); pos != 1 {
		t.Fatalf("FORWARD hook at position %d after repair, want 1", pos)
	}
	if _, err := k.Victim.Run("iptables", "-D", "FORWARD", "-j", "KUBE-FORWARD"); err != nil { // the one we added
		t.Fatal(err)
	}

	// --forward all: routed traffic is covered too.
	var all *Firewall
	k.do(t, func() error {
		var err error
		all, err = New(Config{Forward: ForwardAll})
		return err
	})
	k.do(t, func() error {
		_, err := all.Apply(t.Context(), State{Bans: []Ban{ban(k.src1.String()+"/32", time.Hour)}})
		return err
	})
	if k.reachPod(k.src1) {
		t.Fatal("forward mode all let a banned source through the router")
	}
	if !k.reachPod(k.src2) {
		t.Fatal("forward mode all dropped an unbanned source")
	}
	if rep := k.hooks(t, all); hookAt(rep, "ipv4", "FORWARD", "BANSSHEE-FWD") != 1 || rep.Mode != ForwardAll {
		t.Fatalf("mode all hooks: %+v", rep)
	}

	k.do(t, func() error { return all.Uninstall(t.Context()) })
	if after := kernelDump(t, &k.Victim.NS); after != before {
		t.Fatalf("uninstall left a trace:\n--- before\n%s\n--- after\n%s", before, after)
	}
	if !k.reachNodePort(k.src1) {
		t.Fatal("after uninstall the formerly banned source cannot reach the node port")
	}
}

// Forward "off" puts no hook anywhere and removes hooks an earlier mode left.
func TestForwardOff(t *testing.T) {
	k := newKubeLab(t)
	k.apply(t, State{Bans: []Ban{ban(k.src1.String()+"/32", time.Hour)}})
	var off *Firewall
	k.do(t, func() error {
		var err error
		if off, err = New(Config{Forward: ForwardOff}); err != nil {
			return err
		}
		_, err = off.Apply(t.Context(), State{Bans: []Ban{ban(k.src1.String()+"/32", time.Hour)}})
		return err
	})
	rep := k.hooks(t, off)
	for _, h := range rep.Hooks {
		if h.To == "BANSSHEE-FWD" {
			t.Fatalf("forward off left a hook: %+v", h)
		}
	}
	if !k.reachNodePort(k.src1) {
		t.Fatal("forward off still drops the banned source on the node port")
	}
	if k.reach(k.src1, k.Victim.IP4) {
		t.Fatal("forward off also removed the INPUT ban")
	}
}

// The forward chain's limit rules: one per port range, by original destination port, sharing one
// hashlimit table; escalation only drops here; reject keeps its TCP reset.
func TestForwardLimitRules(t *testing.T) {
	fam := &family{chain: "BANSSHEE", banSet: "b", allowSet: "a"}
	rules := fam.fwdRules([]proto.Limit{
		{ID: "l-web", Proto: "tcp", Ports: []int{8081, 8080, 9000}, Hits: 5, Seconds: 60, Action: "reject"},
		{ID: "l-esc", Proto: "tcp", Ports: []int{2222}, Hits: 3, Seconds: 60, Action: "drop", Escalate: true},
	})
	if len(rules) != 6 {
		t.Fatalf("%d rules, want 3 base + 1 escalating + 2 ranges:\n%s", len(rules), strings.Join(rules, "\n"))
	}
	esc, web1, web2 := rules[3], rules[4], rules[5]
	for _, c := range []struct {
		rule string
		want []string
	}{
		{esc, []string{"--ctorigdstport 2222 ", "-j DROP", "--hashlimit-name bsf4-"}},
		{web1, []string{"--ctstate NEW --ctorigdstport 8080:8081 ", "-j REJECT --reject-with tcp-reset", "--hashlimit-above 5/minute"}},
		{web2, []string{"--ctorigdstport 9000 "}},
	} {
		for _, w := range c.want {
			if !strings.Contains(c.rule, w) {
				t.Errorf("rule %q lacks %q", c.rule, w)
			}
		}
	}
	name := func(r string) string { return strings.Fields(r[strings.Index(r, "--hashlimit-name"):])[1] }
	if name(web1) != name(web2) || name(web1) == name(esc) {
		t.Errorf("a limit's ranges must share one table, limits must not: %s %s %s", name(web1), name(web2), name(esc))
	}
	if strings.Contains(strings.Join(rules, "\n"), "TRIP") {
		t.Error("forwarded traffic must not reach the trip chain")
	}
}
