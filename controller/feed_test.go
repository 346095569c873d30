package controller

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bansshee/bansshee/agent"
	"github.com/bansshee/bansshee/proto"
)

// Bodies as the lists are published: the Spamhaus DROP text and JSON-lines editions and a FireHOL
// netset keep their real headers and layout; the addresses are documentation ranges and a few
// real DROP entries.
const (
	spamhausText = `; Spamhaus DROP List 2026/11/26 - (c) 2026 The Spamhaus Project SLU
; https://www.spamhaus.org/drop/drop.txt
; Last-Modified: Thu, 26 Nov 2026 10:24:03 GMT
; Expires: Thu, 26 Nov 2026 11:39:03 GMT
1.10.16.0/20 ; SBL256894
1.19.0.0/16 ; SBL434604
2.56.192.0/22 ; SBL459831
203.0.113.0/24 ; SBL000001
`
	spamhausJSON = `{"cidr":"1.10.16.0/20","sblid":"SBL256894","rir":"apnic"}
{"cidr":"1.19.0.0/16","sblid":"SBL434604","rir":"apnic"}
{"cidr":"2.56.192.0/22","sblid":"SBL459831","rir":"ripencc"}
{"type":"metadata","timestamp":1795688643,"size":187,"records":3,"copyright":"(c) 2026 The Spamhaus Project SLU","terms":"https://www.spamhaus.org/drop/terms/"}
`
	fireholNetset = `#
# firehol_level1
#
# ipv4 hash:net ipset
#
# A firewall blacklist composed from IP lists, providing
# maximum protection with minimum false positives.
#
# Source File Date: Thu Nov 26 09:11:02 UTC 2026
#
1.10.16.0/20
1.19.0.0/16
2.56.192.0/22
198.51.100.7
`
)

func TestParseFeedFormats(t *testing.T) {
	for _, c := range []struct {
		name, body, format string
		want               []string
		invalid            int
		err                string
	}{
		{"spamhaus text", spamhausText, FormatSpamhaus, []string{"1.10.16.0/20", "1.19.0.0/16", "2.56.192.0/22", "203.0.113.0/24"}, 0, ""},
		{"spamhaus text, auto", spamhausText, FormatAuto, []string{"1.10.16.0/20", "1.19.0.0/16", "2.56.192.0/22", "203.0.113.0/24"}, 0, ""},
		{"spamhaus json", spamhausJSON, FormatAuto, []string{"1.10.16.0/20", "1.19.0.0/16", "2.56.192.0/22"}, 0, ""},
		{"spamhaus json, truncated", strings.Join(strings.SplitAfter(spamhausJSON, "\n")[1:], ""), FormatSpamhaus, nil, 0, "metadata says 3 records but 2 arrived"},
		{"firehol", fireholNetset, FormatFireHOL, []string{"1.10.16.0/20", "1.19.0.0/16", "2.56.192.0/22", "198.51.100.7/32"}, 0, ""},
		{"plain, v6, junk and duplicates", "# mine\n2001:db8::1\n2001:DB8:0:0::/48 trailing words\n198.51.100.9\n198.51.100.9\nnot-an-address\n300.1.1.1\n::ffff:198.51.100.10\n",
			FormatPlain, []string{"198.51.100.9/32", "198.51.100.10/32", "2001:db8::/48", "2001:db8::1/128"}, 2, ""},
		{"an HTML error page", "<html>\n<body>Service Unavailable</body>\n</html>\n", FormatAuto, nil, 3, "none of the 3 entry lines"},
		{"unknown format", "1.2.3.4\n", "csv", nil, 0, "unknown feed format"},
	} {
		t.Run(c.name, func(t *testing.T) {
			pf, err := ParseFeed([]byte(c.body), c.format)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range pf.Prefixes {
				got = append(got, p.String())
			}
			if strings.Join(got, " ") != strings.Join(c.want, " ") || pf.Invalid != c.invalid {
				t.Fatalf("got %v (%d invalid: %v), want %v (%d invalid)", got, pf.Invalid, pf.Examples, c.want, c.invalid)
			}
		})
	}
}

// feedServer is a local HTTPS server standing in for a list's publisher.
type feedServer struct {
	*httptest.Server
	mu      sync.Mutex
	body    string
	etag    string
	mode    string // "", "500", "truncate", "hang"
	fetches int
	cond    int // requests that carried If-None-Match
}

func newFeedServer(t *testing.T) *feedServer {
	fs := &feedServer{}
	fs.Server = httptest.NewTLSServer(http.HandlerFunc(fs.serve))
	t.Cleanup(fs.Close)
	return fs
}

func (fs *feedServer) set(body, mode string) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.body, fs.mode = body, mode
	fs.etag = fmt.Sprintf(`"%x"`, len(body)*7919+strings.Count(body, "1"))
}

func (fs *feedServer) serve(w http.ResponseWriter, r *http.Request) {
	fs.mu.Lock()
	body, etag, mode := fs.body, fs.etag, fs.mode
	fs.fetches++
	if r.Header.Get("If-None-Match") != "" {
		fs.cond++
	}
	fs.mu.Unlock()
	switch mode {
	case "500":
		http.Error(w, "upstream exploded", http.StatusInternalServerError)
		return
	case "hang":
		<-r.Context().Done()
		return
	case "truncate":
		// The length of the whole list is announced, half of it sent, then the connection closed.
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(body[:len(body)/2]))
		w.(http.Flusher).Flush()
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
		return
	}
	if r.Header.Get("If-None-Match") == etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("ETag", etag)
	_, _ = w.Write([]byte(body))
}

// docAddrs is n distinct addresses outside every never-ban and VPC range (100.64.0.0/10 and up).
func docAddrs(n, skip int) []string {
	out := make([]string, n)
	base := netip.MustParseAddr("100.64.0.0").As4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	for i := range n {
		x := v + uint32(i+skip)*3
		out[i] = netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)}).String()
	}
	return out
}

func feedEnv(t *testing.T) (*env, *feedServer) {
	e := newEnv(t)
	fs := newFeedServer(t)
	e.c.FeedClient = fs.Client()
	e.c.FeedClient.Timeout = 2 * time.Second
	return e, fs
}

// agents holds a simulated agent state per instance, fed from its queue.
type agents map[string]*agent.State

func (a agents) pump(t *testing.T, e *env, ids ...string) map[string][]*proto.Message {
	got := map[string][]*proto.Message{}
	for _, id := range ids {
		if a[id] == nil {
			a[id] = agent.NewState()
		}
		for _, m := range e.drain(t, id) {
			a[id].Apply(m, time.Now())
			got[id] = append(got[id], m)
		}
	}
	return got
}

// wantDigest checks that an agent holds exactly what the ledger's view wants for its instance.
func (a agents) wantDigest(t *testing.T, e *env, id string, tags map[string]string) desired {
	t.Helper()
	view, err := e.c.readLedger(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	d := view.forTags(tags, e.c.Now())
	if got, want := a[id].Digest(), proto.DigestV2(d.bans, d.limits); got != want {
		t.Fatalf("agent %s holds %d bans, digest %s; the ledger wants %d, digest %s", id, a[id].BanCount(), got, len(d.bans), want)
	}
	return d
}

func TestFeedReachesItsTargetsAsDifferences(t *testing.T) {
	e, fs := feedEnv(t)
	ctx := t.Context()
	mailTags := map[string]string{"Role": "mail", "bansshee:managed": "true"}
	m1 := e.launch(t, "mail1", map[string]string{"Role": "mail"})
	m2 := e.launch(t, "mail2", map[string]string{"Role": "mail"})
	web := e.launch(t, "web", map[string]string{"Role": "web"})
	list := docAddrs(3000, 0)
	fs.set("# my threat intel\n"+strings.Join(list, "\n")+"\n", "")

	if _, err := e.c.AddFeed(ctx, FeedSpec{Name: "intel", URL: "http://example.com/x", Target: "Role=mail"}); err == nil || !strings.Contains(err.Error(), "https") {
		t.Fatalf("plain http accepted: %v", err)
	}
	if _, err := e.c.AddFeed(ctx, FeedSpec{Name: "intel", URL: fs.URL + "/intel.txt", Target: "Role=mail"}); err != nil {
		t.Fatal(err)
	}
	rep, err := e.c.SyncFeed(ctx, "intel", FeedOptions{})
	if err != nil || rep.Err != nil || rep.Held != "" {
		t.Fatalf("first sync: %v %s", err, rep)
	}
	if rep.Entries != 3000 || rep.Delivery != "sync" || len(rep.Result.Instances) != 2 {
		t.Fatalf("first version: %s, %d deliveries", rep, len(rep.Result.Instances))
	}
	ag := agents{}
	got := ag.pump(t, e, m1, m2, web)
	if len(got[web]) != 0 {
		t.Fatalf("the web instance, outside the target, got %d messages", len(got[web]))
	}
	for _, id := range []string{m1, m2} {
		d := ag.wantDigest(t, e, id, mailTags)
		if len(d.bans) != 3000 || ag[id].BanCount() != 3000 {
			t.Fatalf("%s holds %d, ledger wants %d", id, ag[id].BanCount(), len(d.bans))
		}
		if b, _ := ag[id].Ban(netip.MustParsePrefix(list[7] + "/32")); b.Source != "feed:intel" || b.ExpiresAt.Before(time.Now().Add(47*time.Hour)) {
			t.Fatalf("entry as held: %+v", b)
		}
	}

	// One line changed upstream: one entry out, one in, sent as one ban and one unban message.
	changed := append([]string(nil), list...)
	changed[100] = "198.51.100.77"
	fs.set(strings.Join(changed, "\n")+"\n", "")
	rep, err = e.c.SyncFeed(ctx, "intel", FeedOptions{})
	if err != nil || rep.Delivery != "diff" || len(rep.Added) != 1 || len(rep.Removed) != 1 {
		t.Fatalf("one-line change: %v %s", err, rep)
	}
	got = ag.pump(t, e, m1, m2, web)
	for _, id := range []string{m1, m2} {
		msgs := got[id]
		if len(msgs) != 2 || msgs[1].Kind != proto.KindBan || len(msgs[1].Bans) != 1 || msgs[1].Bans[0].CIDR != "198.51.100.77/32" ||
			msgs[0].Kind != proto.KindUnban || len(msgs[0].Unbans) != 1 || msgs[0].Unbans[0].ID != proto.BanID(netip.MustParsePrefix(list[100]+"/32")) {
			t.Fatalf("%s got %d messages for a one-line change: %+v", id, len(msgs), msgs)
		}
		if msgs[1].Rev <= msgs[0].Rev || rep.Result.Rev != msgs[1].Rev {
			t.Fatalf("the ban message (rev %d) must come after the unban (rev %d) and be the result's revision (%d)", msgs[1].Rev, msgs[0].Rev, rep.Result.Rev)
		}
		ag.wantDigest(t, e, id, mailTags)
	}
	if len(got[web]) != 0 {
		t.Fatal("the web instance got the difference")
	}

	// Unchanged upstream: a conditional request, a 304, nothing sent.
	before := fs.cond
	rep, err = e.c.SyncFeed(ctx, "intel", FeedOptions{})
	if err != nil || !rep.NotModified || fs.cond != before+1 {
		t.Fatalf("unchanged list: %v %s (conditional requests %d -> %d)", err, rep, before, fs.cond)
	}
	if got := ag.pump(t, e, m1, m2); len(got[m1])+len(got[m2]) != 0 {
		t.Fatalf("a 304 sent messages: %v", got)
	}

	// An operator's ban of an address the feed drops stays on the agents.
	op := changed[200]
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{op}, Target: "Role=mail"}); err != nil {
		t.Fatal(err)
	}
	ag.pump(t, e, m1, m2)
	changed2 := append(append([]string(nil), changed[:200]...), changed[201:]...)
	fs.set(strings.Join(changed2, "\n")+"\n", "")
	if rep, err = e.c.SyncFeed(ctx, "intel", FeedOptions{}); err != nil || len(rep.Removed) != 1 {
		t.Fatalf("drop: %v %s", err, rep)
	}
	ag.pump(t, e, m1, m2)
	for _, id := range []string{m1, m2} {
		if b, ok := ag[id].Ban(netip.MustParsePrefix(op + "/32")); !ok || b.Source == "feed:intel" {
			t.Fatalf("%s: the operator's ban of %s went with the feed's entry: %+v %v", id, op, b, ok)
		}
	}

	// Removing the feed takes its entries off every instance and leaves the operator's ban.
	if _, err := e.c.RemoveFeed(ctx, "intel"); err != nil {
		t.Fatal(err)
	}
	ag.pump(t, e, m1, m2)
	for _, id := range []string{m1, m2} {
		ag.wantDigest(t, e, id, mailTags)
		if ag[id].BanCount() != 1 {
			t.Fatalf("%s holds %d bans after the feed's removal, want the operator's one", id, ag[id].BanCount())
		}
	}
}

func TestFeedFailuresKeepTheLastGoodVersion(t *testing.T) {
	e, fs := feedEnv(t)
	ctx := t.Context()
	e.c.Admin = []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32")}
	m1 := e.launch(t, "mail1", map[string]string{"Role": "mail"})
	mailTags := map[string]string{"Role": "mail", "bansshee:managed": "true"}
	vpcs, err := e.c.VPCCIDRs(ctx)
	if err != nil || len(vpcs) == 0 {
		t.Fatalf("the emulator's VPCs: %v %v", vpcs, err)
	}
	list := docAddrs(1000, 0)
	// Entries no ban may have: dropped and reported, the rest applied.
	forbidden := []string{"127.0.0.1", "169.254.169.254", "fd00:ec2::254", "224.0.0.0/4", "0.0.0.0/0", "100.64.0.1"}
	fs.set(strings.Join(append(append([]string(nil), list...), forbidden...), "\n"), "")
	if _, err := e.c.AddFeed(ctx, FeedSpec{Name: "drop", URL: fs.URL + "/drop.txt", Target: "Role=mail", MaxBytes: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	rep, err := e.c.SyncFeed(ctx, "drop", FeedOptions{})
	if err != nil || rep.Err != nil || rep.Entries != 1000 || len(rep.Dropped) != len(forbidden) {
		t.Fatalf("first version: %v %s, dropped %q", err, rep, rep.Dropped)
	}
	ag := agents{}
	ag.pump(t, e, m1)
	ag.wantDigest(t, e, m1, mailTags)
	for _, f := range forbidden {
		p, _ := proto.ParseCIDR(f)
		if _, ok := ag[m1].Ban(p); ok {
			t.Fatalf("forbidden entry %s reached the agent", f)
		}
	}
	good := rep.Version

	bigger := strings.Repeat("# padding to pass the cap\n", 64<<10/26+1) + strings.Join(list, "\n")
	vpcEntry := netip.PrefixFrom(vpcs[0].Addr(), vpcs[0].Bits()).String()
	for _, c := range []struct {
		name, body, mode, want string
		held                   bool
	}{
		{"HTTP 500", strings.Join(list, "\n"), "500", "HTTP 500", false},
		{"truncated body", strings.Join(list, "\n"), "truncate", "cut short", false},
		{"oversize body", bigger, "", "over the feed's cap", false},
		{"timeout", strings.Join(list, "\n"), "hang", "fetch", false},
		{"not a list", "<html>\n<h1>Moved</h1>\n</html>", "", "none of the", false},
		{"shrank by more than half", strings.Join(list[:400], "\n"), "", "shrank from 1000 to 400", true},
		{"covers a VPC CIDR", strings.Join(append(append([]string(nil), list...), vpcEntry), "\n"), "", "cover a VPC CIDR", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			fs.set(c.body, c.mode)
			rep, err := e.c.SyncFeed(ctx, "drop", FeedOptions{})
			if err != nil {
				t.Fatal(err)
			}
			why := rep.Held
			if !c.held && rep.Err != nil {
				why = rep.Err.Error()
			}
			if (rep.Held != "") != c.held || !strings.Contains(why, c.want) {
				t.Fatalf("report %s; want held=%v and %q", rep, c.held, c.want)
			}
			f, _, _ := e.c.Ledger.Feed(ctx, "drop")
			if f.Version != good || f.Entries != 1000 {
				t.Fatalf("the feed moved off its last good version: %+v", f)
			}
			if stored := f.Error + f.Held; !strings.Contains(stored, c.want) {
				t.Fatalf("the ledger does not say why: error %q held %q", f.Error, f.Held)
			}
			if got := ag.pump(t, e, m1); len(got[m1]) != 0 {
				t.Fatalf("a failed refresh sent %d messages", len(got[m1]))
			}
			ag.wantDigest(t, e, m1, mailTags)
			if ag[m1].BanCount() != 1000 {
				t.Fatalf("agent holds %d", ag[m1].BanCount())
			}
		})
	}
	// A compromised or mistaken list: a broad entry is dropped unless the feed was added with
	// --force, a list past FeedMaxEntries is held, and a redirect to plain HTTP is a failure.
	fs.set(strings.Join(append(append([]string(nil), list...), "44.0.0.0/9"), "\n"), "")
	rep, err = e.c.SyncFeed(ctx, "drop", FeedOptions{})
	if err != nil || rep.Entries != 1000 || len(rep.Dropped) != 1 || !strings.Contains(rep.Dropped[0], "44.0.0.0/9 is broader than /16") {
		t.Fatalf("broad entry: %v %s %q", err, rep, rep.Dropped)
	}
	defer func(n int) { FeedMaxEntries = n }(FeedMaxEntries)
	FeedMaxEntries = 1000
	fs.set(strings.Join(docAddrs(1001, 0), "\n"), "")
	if rep, err = e.c.SyncFeed(ctx, "drop", FeedOptions{}); err != nil || !strings.Contains(rep.Held, "more than the 1000 entries a feed may have") {
		t.Fatalf("oversize list: %v %s", err, rep)
	}
	FeedMaxEntries = 1000000
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("198.51.100.1\n")) }))
	defer plain.Close()
	redirect := httptest.NewTLSServer(http.RedirectHandler(plain.URL+"/list", http.StatusFound))
	defer redirect.Close()
	e.c.FeedClient = redirect.Client()
	if _, err := e.c.AddFeed(ctx, FeedSpec{Name: "redir", URL: redirect.URL + "/list", Target: "Role=mail"}); err != nil {
		t.Fatal(err)
	}
	if rep, err := e.c.SyncFeed(ctx, "redir", FeedOptions{}); err != nil || rep.Err == nil || !strings.Contains(rep.Err.Error(), "not https") {
		t.Fatalf("redirect to http: %v %s", err, rep)
	}
	e.c.FeedClient = fs.Client()
	e.c.FeedClient.Timeout = 2 * time.Second

	// The operator accepts the shrink.
	fs.set(strings.Join(list[:400], "\n"), "")
	if rep, err := e.c.SyncFeed(ctx, "drop", FeedOptions{AcceptShrink: true}); err != nil || rep.Entries != 400 {
		t.Fatalf("accepted shrink: %v %s", err, rep)
	}
	ag.pump(t, e, m1)
	ag.wantDigest(t, e, m1, mailTags)

	// A feed that keeps failing is dropped when its entries expire, not before.
	fs.set("", "500")
	e.advance(47 * time.Hour)
	if rep, _ := e.c.SyncFeed(ctx, "drop", FeedOptions{}); rep.Err == nil {
		t.Fatal("a 500 was not a failure")
	}
	if d := ag.wantDigest(t, e, m1, mailTags); len(d.bans) != 400 {
		t.Fatalf("after 47 h of failures the ledger wants %d entries, want the 400 of the last good version", len(d.bans))
	}
	e.advance(2 * time.Hour)
	view, _ := e.c.readLedger(ctx)
	if d := view.forTags(mailTags, e.c.Now()); len(d.bans) != 0 {
		t.Fatalf("after the TTL the ledger still wants %d feed entries", len(d.bans))
	}
}

// A feed's refresh is due after its interval; RefreshFeeds (the schedule) fetches only those.
func TestRefreshFeedsOnlyWhenDue(t *testing.T) {
	e, fs := feedEnv(t)
	ctx := t.Context()
	e.launch(t, "mail1", map[string]string{"Role": "mail"})
	fs.set(strings.Join(docAddrs(10, 0), "\n"), "")
	if _, err := e.c.AddFeed(ctx, FeedSpec{Name: "a", URL: fs.URL + "/a", Target: "Role=mail", Refresh: 10 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct {
		advance time.Duration
		fetched int
	}{{0, 1}, {time.Minute, 0}, {10 * time.Minute, 1}} {
		e.advance(want.advance)
		reps, err := e.c.RefreshFeeds(ctx, FeedOptions{})
		if err != nil || len(reps) != want.fetched {
			t.Fatalf("step %d: %v, %d refreshed, want %d", i, err, len(reps), want.fetched)
		}
	}
	if fs.fetches != 2 {
		t.Fatalf("%d fetches, want 2", fs.fetches)
	}
	// The reconcile pass (`bansshee serve`, the scheduled Lambda) refreshes what is due first.
	e.advance(10 * time.Minute)
	rep, err := e.c.ReconcileOnce(ctx)
	if err != nil || len(rep.Feeds) != 1 || rep.Feeds[0].Name != "a" || fs.fetches != 3 {
		t.Fatalf("reconcile pass: %v, feeds %+v, %d fetches", err, rep.Feeds, fs.fetches)
	}
}

// Holds and allow entries keep a feed's entries off its targets at once (an unban message), and
// the ledger's view agrees (digests match); a simulate-mode feed reaches no agent and shows in why
// and history.
func TestFeedObeysHoldsAllowsAndSimulate(t *testing.T) {
	e, fs := feedEnv(t)
	ctx := t.Context()
	tags := map[string]string{"Role": "mail", "bansshee:managed": "true"}
	m1 := e.launch(t, "mail1", map[string]string{"Role": "mail"})
	list := docAddrs(10, 0)
	fs.set(strings.Join(list, "\n")+"\n", "")
	for _, spec := range []FeedSpec{{Name: "intel", URL: fs.URL + "/intel", Target: "Role=mail"}, {Name: "trial", URL: fs.URL + "/trial", Target: "Role=mail", Mode: FeedSimulate}} {
		if _, err := e.c.AddFeed(ctx, spec); err != nil {
			t.Fatal(err)
		}
		if rep, err := e.c.SyncFeed(ctx, spec.Name, FeedOptions{}); err != nil || rep.Err != nil {
			t.Fatalf("%s: %v %s", spec.Name, err, rep)
		}
	}
	ag := agents{}
	ag.pump(t, e, m1)
	if d := ag.wantDigest(t, e, m1, tags); len(d.bans) != 10 {
		t.Fatalf("want the enforcing feed's 10 entries, not the simulating one's too: %d", len(d.bans))
	}
	held, allowed := list[2], list[5]
	if _, err := e.c.UnbanWith(ctx, UnbanRequest{CIDRs: []string{held}, Hold: time.Hour, Who: "alice"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Allow(ctx, AllowRequest{CIDR: allowed + "/30", Reason: "partner", Who: "bob"}); err != nil {
		t.Fatal(err)
	}
	ag.pump(t, e, m1)
	d := ag.wantDigest(t, e, m1, tags)
	for _, gone := range []string{held, allowed} {
		// The /30 covers two entries (every third address is listed).
		if _, ok := ag[m1].Ban(netip.MustParsePrefix(gone + "/32")); ok || len(d.bans) != 7 {
			t.Fatalf("%s still held by the agent (%d bans wanted)", gone, len(d.bans))
		}
	}
	why, err := e.c.Why(ctx, list[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(why.Feeds) != 2 || why.Feeds[0].Mode+why.Feeds[1].Mode != FeedSimulate {
		t.Fatalf("why: feeds %+v", why.Feeds)
	}
	var kinds []string
	for _, ev := range why.History {
		kinds = append(kinds, ev.Kind+" "+ev.Who)
	}
	if strings.Join(kinds, ",") != "ban feed:intel,simulate feed:trial" && strings.Join(kinds, ",") != "simulate feed:trial,ban feed:intel" {
		t.Fatalf("history of a feed entry: %v", kinds)
	}
	why, _ = e.c.Why(ctx, held)
	if len(why.Holds) != 1 || why.Feeds[0].Lifted == "" {
		t.Fatalf("why of a held feed entry: %+v", why)
	}
}
