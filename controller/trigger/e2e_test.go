package trigger

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/internal/awstest"
	"github.com/bansshee/bansshee/internal/fleet"
	"github.com/bansshee/bansshee/internal/netns"
)

// TestCyrusBatchDropsAttacker: a CloudWatch Logs batch of 12 Cyrus badlogin lines from one
// address, through the handler against the emulator, ends with that address dropped by a real
// agent in a network namespace.
func TestCyrusBatchDropsAttacker(t *testing.T) {
	if err := netns.Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	table := awstest.Unique("bansshee")
	f, err := fleet.New(t.Context(), fleet.Options{Table: table})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	node, err := f.AddNode(t.Context(), map[string]string{"Role": "mail", "bansshee:managed": "true"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := controller.New(controller.Config{EC2: f.Clients.EC2, SQS: f.Clients.SQS, DDB: f.Clients.DynamoDB, Table: table, Prefix: f.Queues.Prefix, Signer: f.Signer})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ledger.CreateTable(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReconcileOnce(t.Context()); err != nil { // creates the queue, sends the first sync
		t.Fatal(err)
	}
	if err := f.StartAgent(node); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", node.Log.String())
		}
	})
	if !f.Reachable(node, netip.Addr{}, 2*time.Second) {
		t.Fatal("attacker blocked before any ban")
	}
	cfg, err := ParseConfig([]byte(`{"jails":[{"name":"cyrus","builtin":"cyrus","maxretry":10,"target":"Role=mail"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{Cfg: cfg, Counter: &LedgerCounter{DDB: f.Clients.DynamoDB, Table: table}, Actor: c}
	var lines []string
	for i := 0; i < 12; i++ {
		lines = append(lines, fmt.Sprintf("pop3[%d]: badlogin: host [%s] plaintext user SASL(-13): authentication failure", 22145+i, f.Attacker.IP4))
	}
	out, err := h.Handle(t.Context(), batch(t, "/var/log/maillog", lines...))
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Bans) != 1 || out.Bans[0].CIDR != f.Attacker.IP4.String()+"/32" || out.Rev == 0 {
		t.Fatalf("decisions %+v", out)
	}
	d, ok := f.WaitReachable(node, netip.Addr{}, false, 10*time.Second)
	if !ok {
		t.Fatal("attacker still reaches the POP3 server 10 s after the batch")
	}
	t.Logf("dropped %v after the handler returned", d.Round(time.Millisecond))

	// The scheduled event runs a reconcile pass, which refreshes the feeds that are due, and says so.
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("198.51.100.1\n198.51.100.2\n"))
	}))
	defer srv.Close()
	c.FeedClient = srv.Client()
	if _, err := c.AddFeed(t.Context(), controller.FeedSpec{Name: "intel", URL: srv.URL + "/list", Target: "Role=mail"}); err != nil {
		t.Fatal(err)
	}
	event, err := os.ReadFile("testdata/schedule.json")
	if err != nil {
		t.Fatal(err)
	}
	out, err = h.Handle(t.Context(), event)
	if err != nil || !out.Reconciled || len(out.Feeds) != 1 || !strings.Contains(out.Feeds[0], "feed intel: version") || !strings.Contains(out.Feeds[0], "2 entries") {
		t.Fatalf("scheduled pass: %v %+v", err, out)
	}
}
