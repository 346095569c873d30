package controller

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bansshee/bansshee/internal/awstest"
)

func newEdgeEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t)
	e.c.WAF = e.clients.WAF
	return e
}

// wafHas reports whether the edge's sets of the family hold addr.
func (e *env) wafAddrs(edge string) map[string]int {
	out := map[string]int{}
	for name, addrs := range e.aws.WAF.Addresses("REGIONAL", edge+"-") {
		for _, a := range addrs {
			out[a]++
		}
		_ = name
	}
	return out
}

func TestSelectorCovers(t *testing.T) {
	for _, c := range []struct {
		ban, edge string
		want      bool
	}{
		{"*", "Role=web", true},
		{"Role=web", "Role=web", true},
		{"Role=web", "Role=web,Env=prod", true},
		{"Role=web,Env=prod", "Role=web", false},
		{"Role=mail", "Role=web", false},
		{"Role in (web,api)", "Role in (api,web)", true},
		{"instance-id=i-1", "Role=web", false},
	} {
		b, _ := ParseSelector(c.ban)
		ed, _ := ParseSelector(c.edge)
		if got := b.Covers(ed); got != c.want {
			t.Errorf("%q covers %q = %v, want %v", c.ban, c.edge, got, c.want)
		}
	}
}

func TestEdgeRefusals(t *testing.T) {
	e := newEdgeEnv(t)
	for _, c := range []struct {
		req  EdgeRequest
		want string
	}{
		{EdgeRequest{Name: "bad name", Scope: "REGIONAL", Target: "*"}, "edge name"},
		{EdgeRequest{Name: "e", Scope: "GLOBAL", Target: "*"}, "--scope"},
		{EdgeRequest{Name: "e", Scope: "REGIONAL", Target: "Role="}, "--target"},
		{EdgeRequest{Name: "e", Scope: "REGIONAL", Target: ""}, "--target"},
		{EdgeRequest{Name: "e", Scope: "REGIONAL", Target: "*", MaxSets: 26}, "--max-sets"},
		{EdgeRequest{Name: "e", Scope: "REGIONAL", Target: "*", WebACL: "arn:aws:wafv2:us-east-1:1:global/webacl/x/y"}, "regional web ACL"},
	} {
		_, err := e.c.AddEdge(t.Context(), c.req)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want a refusal naming %s", c.req, err, c.want)
		}
	}
}

// A ban whose target covers the edge's reaches the WAF set within 2 s; others do not; an unban,
// an expiry, the allowlist and the never-ban list take addresses out; a lock conflict is retried;
// writes keep WAF's documented rate.
func TestEdgeFollowsBans(t *testing.T) {
	e := newEdgeEnv(t)
	ctx := t.Context()
	e.launch(t, "web1", map[string]string{"Role": "web", "Env": "prod"})
	edge := awstest.Unique("edge")
	rep, err := e.c.AddEdge(ctx, EdgeRequest{Name: edge, Scope: "REGIONAL", Target: "Role=web", WebACL: "arn:aws:wafv2:us-east-1:000000000000:regional/webacl/front/1234"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{edge + "-v4-0", edge + "-v6-0"}; !slices.Equal(rep.Sets, want) {
		t.Fatalf("sets %v, want %v", rep.Sets, want)
	}
	ban := func(target string, ttl time.Duration, cidrs ...string) time.Duration {
		t.Helper()
		start := time.Now()
		if _, err := e.c.Ban(ctx, BanRequest{CIDRs: cidrs, Target: target, TTL: ttl, Reason: "edge test", Source: "cli"}); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	took := ban("Role=web", time.Hour, "198.51.100.7")
	got := e.wafAddrs(edge)
	if got["198.51.100.7/32"] != 1 || took > 2*time.Second {
		t.Fatalf("after %v the sets hold %v, want 198.51.100.7/32 within 2 s", took, got)
	}
	ban("*", time.Hour, "2001:db8::7")
	ban("Role=mail", time.Hour, "198.51.100.8")         // another fleet
	ban("Role=web,Env=prod", time.Hour, "198.51.100.9") // narrower than the edge: blocking at the edge would be wider than the ban
	ban("Role=web", time.Minute, "198.51.100.10")       // expires
	got = e.wafAddrs(edge)
	for a, want := range map[string]int{"2001:db8::7/128": 1, "198.51.100.8/32": 0, "198.51.100.9/32": 0, "198.51.100.10/32": 1} {
		if got[a] != want {
			t.Errorf("%s in the sets %d times, want %d (sets: %v)", a, got[a], want, got)
		}
	}

	// A write between our read and our update: retried with a fresh lock token.
	before := e.aws.Ops()["wafv2:UpdateIPSet"]
	e.aws.WAF.ConflictUpdates(1)
	ban("Role=web", time.Hour, "198.51.100.11")
	if e.wafAddrs(edge)["198.51.100.11/32"] != 1 {
		t.Fatal("ban lost to a lock conflict")
	}
	if n := e.aws.Ops()["wafv2:UpdateIPSet"] - before; n != 2 {
		t.Fatalf("%d UpdateIPSet calls for one ban after a conflict, want 2 (the conflict, the retry)", n)
	}

	if _, err := e.c.Unban(ctx, []string{"198.51.100.7"}); err != nil {
		t.Fatal(err)
	}
	if e.wafAddrs(edge)["198.51.100.7/32"] != 0 {
		t.Fatal("unbanned address still in the WAF set")
	}

	// Expiry, the allowlist (an admin range added later) and an old never-ban ledger item: the
	// reconciler's pass takes them out.
	if _, err := e.c.Ledger.PutBan(ctx, BanItem{CIDR: "169.254.169.254/32", Target: "*", Reason: "old item", Rev: 1, Created: e.now, Updated: e.now}); err != nil {
		t.Fatal(err)
	}
	e.c.Admin = append(e.c.Admin, netip.MustParsePrefix("198.51.100.11/32"))
	e.advance(2 * time.Minute)
	rrep, err := e.c.ReconcileOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rrep.Edges) != 1 || rrep.Edges[0].Skipped != 2 {
		t.Fatalf("reconcile edges %+v, want one edge with 2 entries skipped (never-ban, allowlisted)", rrep.Edges)
	}
	got = e.wafAddrs(edge)
	for _, a := range []string{"198.51.100.10/32", "198.51.100.11/32", "169.254.169.254/32"} {
		if got[a] != 0 {
			t.Errorf("%s still in the sets after the reconcile: %v", a, got)
		}
	}
	if got["2001:db8::7/128"] != 1 {
		t.Errorf("the reconcile dropped a live ban: %v", got)
	}

	// Writes stay within one call a second per action.
	last := map[string]time.Time{}
	for _, w := range e.aws.WAF.Writes() {
		if prev, ok := last[w.Op]; ok && w.At.Sub(prev) < 950*time.Millisecond {
			t.Errorf("%s %s only %v after the previous %s", w.Op, w.Name, w.At.Sub(prev), w.Op)
		}
		last[w.Op] = w.At
	}
}

// 25 000 bans per family fill three sets per family (10 000 each at most); with room for two
// sets, the oldest bans are left out and the report says why.
func TestEdgeSpreadsOverSets(t *testing.T) {
	e := newEdgeEnv(t)
	ctx := t.Context()
	edge := awstest.Unique("big")
	if _, err := e.c.AddEdge(ctx, EdgeRequest{Name: edge, Scope: "REGIONAL", Target: "*"}); err != nil {
		t.Fatal(err)
	}
	cidrs := make([]string, 0, 50000)
	for i := 0; i < 25000; i++ {
		cidrs = append(cidrs, fmt.Sprintf("45.%d.%d.%d", 70+i>>16, (i>>8)&255, i&255), fmt.Sprintf("2001:db8:%x::1", i))
	}
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: cidrs, Target: "*", TTL: time.Hour, Reason: "bulk", Source: "cli"}); err != nil {
		t.Fatal(err)
	}
	check := func(edge string, sets, perFamily int) {
		t.Helper()
		by := e.aws.WAF.Addresses("REGIONAL", edge+"-")
		if len(by) != 2*sets {
			t.Fatalf("%d sets %v, want %d per family", len(by), keys(by), sets)
		}
		count := map[string]int{}
		seen := map[string]bool{}
		for name, addrs := range by {
			if len(addrs) > awstest.WAFMaxAddresses {
				t.Errorf("set %s holds %d addresses", name, len(addrs))
			}
			for _, a := range addrs {
				if seen[a] {
					t.Errorf("%s is in two sets", a)
				}
				seen[a] = true
			}
			fam := name[len(edge)+1 : len(edge)+3]
			count[fam] += len(addrs)
		}
		if count["v4"] != perFamily || count["v6"] != perFamily {
			t.Fatalf("sets hold %v, want %d per family", count, perFamily)
		}
	}
	check(edge, 3, 25000)
	rep, err := e.c.SyncEdge(ctx, edge)
	if err != nil || rep.WriteCalls != 0 {
		t.Fatalf("a sync with nothing to change made %d writes (%v)", rep.WriteCalls, err)
	}

	// Two sets a family: the newest ban is kept, 5 000 older ones per family are left out.
	e.advance(time.Minute)
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"198.51.100.77"}, Target: "*", TTL: time.Hour, Reason: "newest", Source: "cli"}); err != nil {
		t.Fatal(err)
	}
	small := awstest.Unique("small")
	rep, err = e.c.AddEdge(ctx, EdgeRequest{Name: small, Scope: "REGIONAL", Target: "*", MaxSets: 2})
	if err != nil {
		t.Fatal(err)
	}
	if rep.LeftOut != 5001+5000 || !strings.Contains(rep.Reason, "oldest") {
		t.Fatalf("left out %d (%q), want 10 001 with the reason", rep.LeftOut, rep.Reason)
	}
	check(small, 2, 20000)
	if e.wafAddrs(small)["198.51.100.77/32"] != 1 {
		t.Fatal("the newest ban was left out of a full edge")
	}
	item, _, _ := e.c.Ledger.Edge(ctx, small)
	if item.LeftOut != rep.LeftOut || !strings.Contains(item.Report, "left out") {
		t.Fatalf("edge item does not say what was left out: %+v", item)
	}
}

func keys(m map[string][]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// A CLOUDFRONT edge keeps its sets in that scope (served from us-east-1).
func TestEdgeCloudFrontScope(t *testing.T) {
	e := newEdgeEnv(t)
	edge := awstest.Unique("cf")
	if _, err := e.c.AddEdge(t.Context(), EdgeRequest{Name: edge, Scope: "CLOUDFRONT", Target: "*",
		WebACL: "arn:aws:wafv2:us-east-1:000000000000:global/webacl/cdn/1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Ban(t.Context(), BanRequest{CIDRs: []string{"203.0.113.50"}, Target: "*", TTL: time.Hour, Reason: "cdn", Source: "cli"}); err != nil {
		t.Fatal(err)
	}
	got := e.aws.WAF.Addresses("CLOUDFRONT", edge+"-")
	if !slices.Equal(got[edge+"-v4-0"], []string{"203.0.113.50/32"}) || len(e.aws.WAF.Addresses("REGIONAL", edge+"-")) != 0 {
		t.Fatalf("CLOUDFRONT sets %v", got)
	}
}
