package faults

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/controller/trigger"
	"github.com/bansshee/bansshee/internal/awstest"
	"github.com/bansshee/bansshee/internal/fleet"
	"github.com/bansshee/bansshee/internal/netns"
	"github.com/bansshee/bansshee/proto"
)

var agentBin string

func TestMain(m *testing.M) { os.Exit(fleet.RunTests(m, &agentBin)) }

type rig struct {
	*fleet.Fleet
	c     *controller.Controller
	table string
	t     *testing.T
}

// newRig is a fleet of n Role=mail instances with running, converged agents.
func newRig(t *testing.T, n int) *rig {
	t.Helper()
	if err := netns.Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	table := awstest.Unique("bansshee")
	f, err := fleet.New(t.Context(), fleet.Options{AgentBin: agentBin, Table: table})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	r := &rig{Fleet: f, table: table, t: t}
	r.c = r.newController()
	if err := r.c.Ledger.CreateTable(t.Context()); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := 0; i < n; i++ {
		node, err := f.AddNode(t.Context(), map[string]string{"Role": "mail", "bansshee:managed": "true"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, node.ID)
	}
	if _, err := r.c.ReconcileOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, node := range f.Nodes() {
		if err := f.StartAgent(node); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, node := range f.Nodes() {
				t.Logf("agent %s log (tail):\n%s", node.ID, tail(node.Log.String(), 4000))
			}
		}
	})
	r.waitRev(ids, 1)
	return r
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (r *rig) newController() *controller.Controller {
	c, err := controller.New(controller.Config{AgentRoleID: fleet.AgentRoleID, EC2: r.Clients.EC2, SQS: r.Clients.SQS, DDB: r.Clients.DynamoDB, Table: r.table,
		Prefix: r.Queues.Prefix, Signer: r.Signer, LagGrace: time.Nanosecond, VisibilityTimeout: r.Queues.VisibilityTimeout})
	if err != nil {
		r.t.Fatal(err)
	}
	return c
}

func (r *rig) ids() []string {
	var out []string
	for _, n := range r.Nodes() {
		out = append(out, n.ID)
	}
	return out
}

func (r *rig) waitRev(ids []string, rev int64) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(r.t.Context(), 30*time.Second)
	defer cancel()
	if pending, err := r.c.Wait(ctx, ids, rev, nil); err != nil || len(pending) > 0 {
		r.t.Fatalf("agents %v not at revision %d: %v", pending, rev, err)
	}
}

// kernelBans reads a node's ban set back from its kernel.
func (r *rig) kernelBans(n *fleet.Node) map[string]bool {
	r.t.Helper()
	out := map[string]bool{}
	for _, set := range []string{"bansshee-ban4", "bansshee-ban6"} {
		text, err := n.Host.Run("ipset", "save", set)
		if err != nil {
			r.t.Fatal(err)
		}
		for _, l := range strings.Split(text, "\n") {
			f := strings.Fields(l)
			if len(f) >= 3 && f[0] == "add" {
				p, err := proto.ParseCIDR(f[2])
				if err != nil {
					r.t.Fatal(err)
				}
				out[p.String()] = true
			}
		}
	}
	return out
}

// waitKernel polls until every node's kernel holds exactly want.
func (r *rig) waitKernel(want map[string]bool, limit time.Duration) {
	r.t.Helper()
	deadline := time.Now().Add(limit)
	for _, n := range r.Nodes() {
		for {
			got := r.kernelBans(n)
			if sameSet(got, want) {
				break
			}
			if time.Now().After(deadline) {
				var missing, extra []string
				for k := range want {
					if !got[k] {
						missing = append(missing, k)
					}
				}
				for k := range got {
					if !want[k] {
						extra = append(extra, k)
					}
				}
				r.t.Fatalf("%s kernel: %d bans, want %d; missing %d (first: %v), extra %d (first: %v)", n.ID, len(got), len(want), len(missing), first(missing), len(extra), first(extra))
			}
			time.Sleep(100 * time.Millisecond) // polling interval
		}
	}
}

func first(list []string) []string {
	if len(list) > 5 {
		return list[:5]
	}
	return list
}

func sameSet(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func (r *rig) ban(cidrs ...string) *controller.Result {
	r.t.Helper()
	res, err := r.c.Ban(r.t.Context(), controller.BanRequest{CIDRs: cidrs, Target: "Role=mail", TTL: time.Hour, Reason: "fault"})
	if err != nil {
		r.t.Fatal(err)
	}
	return res
}

func set(cidrs ...string) map[string]bool {
	m := map[string]bool{}
	for _, c := range cidrs {
		m[c] = true
	}
	return m
}

// An agent killed with SIGKILL in the middle of a batch: what it applied stays, what it had not
// reached is applied after the restart, and the redeliveries of what it applied are no-ops.
func TestFaultAgentKilledMidBatch(t *testing.T) {
	r := newRig(t, 1)
	node := r.Nodes()[0]
	release := r.Env.Hold("AmazonSQS.DeleteMessage") // the first delete hangs: the agent stops mid-batch
	defer release()
	var want []string
	var last int64
	for i := 1; i <= 5; i++ {
		c := fmt.Sprintf("192.0.2.%d/32", i)
		want = append(want, c)
		last = r.ban(c).Rev
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(r.kernelBans(node)) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	r.KillAgent(node)
	release()
	if got := len(r.kernelBans(node)); got == 0 || got == 5 {
		t.Logf("kernel held %d of 5 bans at the kill (the batch boundary moved; still a valid run)", got)
	}
	if err := r.StartAgent(node); err != nil {
		t.Fatal(err)
	}
	r.waitKernel(set(want...), 30*time.Second)
	r.waitRev(r.ids(), last)
}

// A poison message between good ones goes to the DLQ; the good ones on both sides apply.
func TestFaultPoisonBetweenGood(t *testing.T) {
	r := newRig(t, 1)
	ctx := t.Context()
	node := r.Nodes()[0]
	url, err := r.Queues.URL(ctx, node.ID)
	if err != nil {
		t.Fatal(err)
	}
	r.ban("192.0.2.10/32")
	poison := []byte(`{"id":"evil","kind":"ban","to":"` + node.ID + `","issued_at":"` + time.Now().UTC().Format(time.RFC3339) + `","rev":99,"bans":[{"cidr":"0.0.0.0/0","rev":99}]}`)
	if err := controller.SendRaw(ctx, r.Clients.SQS, url, "poison", poison, r.Signer.Sign(poison)); err != nil {
		t.Fatal(err)
	}
	forged := []byte(`{"id":"forged","kind":"unban","issued_at":"` + time.Now().UTC().Format(time.RFC3339) + `","rev":98,"unbans":[{"id":"b-192.0.2.10_32","rev":98}]}`)
	if err := controller.SendRaw(ctx, r.Clients.SQS, url, "forged", forged, map[string]string{proto.AttrVersion: "1", proto.AttrKeyID: r.Signer.KeyID, proto.AttrSignature: "AAAA"}); err != nil {
		t.Fatal(err)
	}
	stale := &proto.Message{ID: "stale", Kind: proto.KindUnban, To: node.ID, IssuedAt: time.Now().Add(-time.Hour).UTC(), Rev: 97, Unbans: []proto.Tombstone{{ID: "b-192.0.2.10_32", Rev: 97}}}
	if err := controller.Send(ctx, r.Clients.SQS, r.Signer, url, stale); err != nil { // a replay from an hour ago
		t.Fatal(err)
	}
	r.ban("192.0.2.11/32")
	r.waitKernel(set("192.0.2.10/32", "192.0.2.11/32"), 20*time.Second)
	dlq, err := r.Clients.SQS.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(r.Queues.DLQName())})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		a, err := r.Clients.SQS.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: dlq.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{"ApproximateNumberOfMessages"}})
		if err != nil {
			t.Fatal(err)
		}
		// The poison and the forged message; the stale replay is skipped without poisoning.
		if a.Attributes["ApproximateNumberOfMessages"] == "2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("DLQ holds %s messages, want the 2 bad ones", a.Attributes["ApproximateNumberOfMessages"])
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.waitKernel(set("192.0.2.10/32", "192.0.2.11/32"), time.Second) // and nothing else, after all
}

// The chain deleted by hand is back within one reconcile interval (2 s in the fleet).
func TestFaultChainDeletedByHand(t *testing.T) {
	r := newRig(t, 1)
	node := r.Nodes()[0]
	r.ban(r.Attacker.IP4.String() + "/32")
	if _, ok := r.WaitReachable(node, netip.Addr{}, false, 10*time.Second); !ok {
		t.Fatal("ban never applied")
	}
	for _, c := range [][]string{{"iptables", "-D", "INPUT", "-j", "BANSSHEE"}, {"iptables", "-F", "BANSSHEE"}, {"iptables", "-X", "BANSSHEE"}} {
		if _, err := node.Host.Run(c[0], c[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	if !r.Reachable(node, netip.Addr{}, time.Second) {
		t.Fatal("deleting the chain did not open the door: the test proves nothing")
	}
	d, ok := r.WaitReachable(node, netip.Addr{}, false, 6*time.Second) // one 2 s interval, plus slack
	if !ok {
		t.Fatal("chain not repaired within 6 s")
	}
	t.Logf("repaired after %v", d.Round(100*time.Millisecond))
}

// The reconciler (or CLI) killed in the middle of a fan-out: the ledger holds the ban, some queues
// never got it; a later reconcile pass finds the lagging agents and syncs them.
func TestFaultReconcilerKilledMidFanout(t *testing.T) {
	r := newRig(t, 3)
	release := r.Env.Hold("AmazonSQS.SendMessage")
	ctx, kill := context.WithCancel(t.Context())
	done := make(chan *controller.Result, 1)
	go func() {
		res, _ := r.c.Ban(ctx, controller.BanRequest{CIDRs: []string{"198.51.100.99"}, Target: "Role=mail", TTL: time.Hour})
		done <- res
	}()
	// Kill it once the ledger holds the ban: the sends are held, so no queue has it yet.
	deadline := time.Now().Add(10 * time.Second)
	for {
		bans, err := r.c.Ledger.Bans(t.Context(), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if len(bans) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the ban never reached the ledger")
		}
		time.Sleep(10 * time.Millisecond)
	}
	kill()
	release()
	if res := <-done; res != nil && len(res.Instances) > 0 && len(res.Failed()) == 0 {
		t.Fatalf("the kill did not interrupt the fan-out: %+v", res)
	}
	for _, n := range r.Nodes() {
		if len(r.kernelBans(n)) != 0 {
			t.Fatalf("%s got the ban despite the kill: the test proves nothing", n.ID)
		}
	}
	// A new reconciler process: the first pass marks the lag, the next (after LagGrace) syncs.
	c2 := r.newController()
	for i := 0; i < 10; i++ {
		rep, err := c2.ReconcileOnce(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("pass %d: %+v", i, rep)
		if len(rep.Synced) > 0 {
			break
		}
		time.Sleep(300 * time.Millisecond) // agents heartbeat every 2 s: wait for their status
	}
	r.waitKernel(set("198.51.100.99/32"), 20*time.Second)
}

// 10 000 bans through the Lambda path (CloudWatch Logs batches, jail, ledger, fan-out) in one
// go: every one ends in the ledger and in every agent's kernel, and nothing else does.
// The flood is 10 000 real attackers in one log stream, so the stream's cap on fleet-wide bans
// (20 an hour by default, against a forging instance) is lifted here: this measures the pipeline.
func TestFaultLambdaFlood10k(t *testing.T) {
	if testing.Short() {
		t.Skip("10 000 bans")
	}
	r := newRig(t, 2)
	cfg, err := trigger.ParseConfig([]byte(`{"jails":[{"name":"cyrus","builtin":"cyrus","maxretry":2,"target":"Role=mail"}],"stream_fleet_bans_per_hour":-1}`))
	if err != nil {
		t.Fatal(err)
	}
	h := &trigger.Handler{Cfg: cfg, Counter: &trigger.LedgerCounter{DDB: r.Clients.DynamoDB, Table: r.table}, Actor: r.c}
	want := map[string]bool{}
	start := time.Now()
	const batches, perBatch = 50, 200
	for b := 0; b < batches; b++ {
		var lines []string
		for i := 0; i < perBatch; i++ {
			n := b*perBatch + i
			addr := fmt.Sprintf("100.%d.%d.%d", 64+n>>16, (n>>8)&255, n&255)
			want[addr+"/32"] = true
			line := fmt.Sprintf("pop3[%d]: badlogin: host [%s] plaintext user SASL(-13): authentication failure", n, addr)
			lines = append(lines, line, line)
		}
		out, err := h.Handle(t.Context(), trigger.EncodeLogsEvent("/var/log/maillog", lines))
		if err != nil {
			t.Fatalf("batch %d: %v", b, err)
		}
		if len(out.Bans) != perBatch {
			t.Fatalf("batch %d: %d bans decided, want %d", b, len(out.Bans), perBatch)
		}
	}
	t.Logf("10 000 bans through the handler in %v", time.Since(start).Round(time.Millisecond))
	bans, err := r.c.Ledger.Bans(t.Context(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	inLedger := map[string]bool{}
	for _, b := range bans {
		inLedger[b.CIDR] = true
	}
	if !sameSet(inLedger, want) {
		t.Fatalf("ledger holds %d bans, want %d", len(inLedger), len(want))
	}
	r.waitKernel(want, 60*time.Second)
	t.Logf("in every kernel %v after the first batch", time.Since(start).Round(time.Millisecond))
}

// Detect on one, ban on all: a source that trips an escalating rate limit on one agent is banned
// by the reconciler on the limit's whole target.
func TestEscalationBansFleetWide(t *testing.T) {
	r := newRig(t, 2)
	ctx := t.Context()
	res, err := r.c.Limit(ctx, controller.LimitRequest{Limit: proto.Limit{ID: "l-pop3", Proto: "tcp", Ports: []int{110}, Hits: 3, Seconds: 60, Action: "drop", Escalate: true}, Target: "Role=mail", EscalateFleet: true})
	if err != nil {
		t.Fatal(err)
	}
	r.waitRev(r.ids(), res.Rev)
	first, second := r.Nodes()[0], r.Nodes()[1]
	// A brute forcer keeps a session open while it opens more: the limit drops its 4th SYN (a
	// suspect), and the next packet of its open session proves it is no forged source.
	session, err := netns.Dial(&r.Attacker.NS, netip.Addr{}, netip.AddrPortFrom(first.Host.IP4, 110), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	for i := 0; i < 2; i++ {
		if !r.Reachable(first, netip.Addr{}, time.Second) {
			t.Fatalf("connection %d of 3 dropped", i+2)
		}
	}
	if r.Reachable(first, netip.Addr{}, 300*time.Millisecond) {
		t.Fatal("the 4th connection was not limited")
	}
	if _, err := session.Write([]byte("USER admin\r\n")); err != nil {
		t.Fatal(err)
	}
	if !r.Reachable(second, netip.Addr{}, time.Second) {
		t.Fatal("the second instance limited a source that never touched it")
	}
	deadline := time.Now().Add(20 * time.Second)
	var escalated []string
	for len(escalated) == 0 && time.Now().Before(deadline) {
		rep, err := r.c.ReconcileOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		escalated = rep.Escalated
		time.Sleep(200 * time.Millisecond) // the agent reports on its next reconcile (2 s)
	}
	if len(escalated) != 1 || escalated[0] != r.Attacker.IP4.String()+"/32" {
		t.Fatalf("escalated %v", escalated)
	}
	if _, ok := r.WaitReachable(second, netip.Addr{}, false, 10*time.Second); !ok {
		t.Fatal("the escalation did not reach the second instance")
	}
}

// The operator's path: the real `bansshee ban --wait` binary against the fleet; it exits 0 once
// every targeted agent reports the revision, and the attacker is dropped everywhere.
func TestCLIBanWaitConverges(t *testing.T) {
	r := newRig(t, 2)
	dir := t.TempDir()
	bin := filepath.Join(dir, "bansshee")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/bansshee/bansshee/cmd/bansshee").CombinedOutput(); err != nil {
		t.Fatalf("build: %v %s", err, out)
	}
	key := filepath.Join(dir, "k")
	if err := os.WriteFile(key, []byte(r.Signer.MarshalPrivate()), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "ban", r.Attacker.IP4.String(), "--target", "Role=mail", "--ttl", "1h", "--reason", "cli", "--wait", "--timeout", "20s",
		"--key", key, "--table", r.table, "--queue-prefix", r.Queues.Prefix, "--endpoint-url", r.Env.URL(), "--region", awstest.Region)
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID=AKIDBANSSHEETEST", "AWS_SECRET_ACCESS_KEY=secret", "AWS_EC2_METADATA_DISABLED=true")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bansshee ban --wait: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "all 2 instances at revision") || !strings.Contains(string(out), "waiting for agents: 2/2") {
		t.Fatalf("output:\n%s", out)
	}
	for _, n := range r.Nodes() {
		if r.Reachable(n, netip.Addr{}, 300*time.Millisecond) {
			t.Fatalf("%s still answers the attacker after --wait returned", n.ID)
		}
	}
}
