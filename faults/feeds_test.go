package faults

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bansshee/bansshee/controller"
)

// feedList is n addresses in 100.64.0.0/10 (outside the lab and every never-ban range).
func feedList(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = netip.AddrFrom4([4]byte{100, byte(64 + i>>16), byte(i >> 8), byte(i)}).String()
	}
	return out
}

// A feed reaches real agents' kernels, a one-line change reaches them as that line, and a failed
// refresh leaves the kernels as they were.
func TestFeedToRealAgents(t *testing.T) {
	r := newRig(t, 2)
	ctx := t.Context()
	var mu sync.Mutex
	body, status := "", 200
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if status != 200 {
			http.Error(w, "down", status)
			return
		}
		etag := fmt.Sprintf(`"%d-%d"`, len(body), strings.Count(body, "7"))
		if req.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("ETag", etag)
		_, _ = w.Write([]byte(body))
	}))
	defer srv.Close()
	r.c.FeedClient = srv.Client()
	serve := func(lines []string, code int) {
		mu.Lock()
		body, status = "# test feed\n"+strings.Join(lines, "\n")+"\n", code
		mu.Unlock()
	}

	list := append(feedList(20000), r.Attacker.IP4.String())
	serve(list, 200)
	if _, err := r.c.AddFeed(ctx, controller.FeedSpec{Name: "intel", URL: srv.URL + "/intel", Target: "Role=mail"}); err != nil {
		t.Fatal(err)
	}
	rep, err := r.c.SyncFeed(ctx, "intel", controller.FeedOptions{})
	if err != nil || rep.Err != nil || rep.Entries != len(list) || rep.Delivery != "sync" {
		t.Fatalf("first version: %v %s", err, rep)
	}
	want := map[string]bool{}
	for _, a := range list {
		want[a+"/32"] = true
	}
	r.waitKernel(want, 30*time.Second)
	for _, n := range r.Nodes() {
		if r.Reachable(n, netip.Addr{}, 300*time.Millisecond) {
			t.Fatalf("%s: the attacker the feed lists still connects", n.ID)
		}
	}

	// Upstream drops the attacker's line and adds another: that one line each way.
	changed := append(append([]string(nil), list[:len(list)-1]...), "198.51.100.99")
	serve(changed, 200)
	r.Env.ResetOps()
	rep, err = r.c.SyncFeed(ctx, "intel", controller.FeedOptions{})
	if err != nil || rep.Delivery != "diff" || len(rep.Added) != 1 || len(rep.Removed) != 1 {
		t.Fatalf("one-line change: %v %s", err, rep)
	}
	if sends := r.Env.Ops()["sqs:SendMessage"]; sends != 2*len(r.Nodes()) {
		t.Fatalf("a one-line change took %d messages for %d agents, want one ban and one unban each", sends, len(r.Nodes()))
	}
	delete(want, r.Attacker.IP4.String()+"/32")
	want["198.51.100.99/32"] = true
	r.waitKernel(want, 15*time.Second)
	for _, n := range r.Nodes() {
		if _, ok := r.WaitReachable(n, netip.Addr{}, true, 10*time.Second); !ok {
			t.Fatalf("%s: the address the feed dropped is still dropped", n.ID)
		}
	}

	// The publisher fails: nothing changes in any kernel, and nothing is sent.
	serve(nil, 500)
	r.Env.ResetOps()
	if rep, _ = r.c.SyncFeed(ctx, "intel", controller.FeedOptions{}); rep.Err == nil {
		t.Fatalf("a 500 was taken: %s", rep)
	}
	if sends := r.Env.Ops()["sqs:SendMessage"]; sends != 0 {
		t.Fatalf("a failed refresh sent %d messages", sends)
	}
	r.waitKernel(want, 5*time.Second)
}
