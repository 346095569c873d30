package faults

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/internal/fleet"
	"github.com/bansshee/bansshee/internal/netns"
	"github.com/bansshee/bansshee/proto"

	"net/netip"
)

// The hostile suite: what a compromised instance, a forged packet or a bad day can make the fleet
// do. Each test is a row of the table in docs/RELIABILITY.md.

func (r *rig) queueDepth(url string) int {
	r.t.Helper()
	a, err := r.Clients.SQS.GetQueueAttributes(r.t.Context(), &sqs.GetQueueAttributesInput{QueueUrl: aws.String(url),
		AttributeNames: []sqstypes.QueueAttributeName{"ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"}})
	if err != nil {
		r.t.Fatal(err)
	}
	n, _ := strconv.Atoi(a.Attributes["ApproximateNumberOfMessages"])
	m, _ := strconv.Atoi(a.Attributes["ApproximateNumberOfMessagesNotVisible"])
	return n + m
}

func (r *rig) dlqURL() string {
	r.t.Helper()
	out, err := r.Clients.SQS.GetQueueUrl(r.t.Context(), &sqs.GetQueueUrlInput{QueueName: aws.String(r.Queues.DLQName())})
	if err != nil {
		r.t.Fatal(err)
	}
	return aws.ToString(out.QueueUrl)
}

func (r *rig) queueURL(n *fleet.Node) string {
	r.t.Helper()
	u, err := r.Queues.URL(r.t.Context(), n.ID)
	if err != nil {
		r.t.Fatal(err)
	}
	return u
}

// send signs m (for the instance it names) and puts it in n's queue.
func (r *rig) send(n *fleet.Node, m *proto.Message) {
	r.t.Helper()
	if m.ID == "" {
		m.ID = "h-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	if m.IssuedAt.IsZero() {
		m.IssuedAt = time.Now().UTC()
	}
	if err := controller.Send(r.t.Context(), r.Clients.SQS, r.Signer, r.queueURL(n), m); err != nil {
		r.t.Fatal(err)
	}
}

// metric reads one sample from a node's /metrics.
func metric(t *testing.T, n *fleet.Node, name string) float64 {
	t.Helper()
	text, err := n.HTTPGet(t.Context(), "/metrics")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, name+" ") {
			v, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(l, name)), 64)
			return v
		}
	}
	return -1
}

func waitFor(t *testing.T, what string, limit time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, limit)
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
}

// A compromised instance writes a status item under its own key that claims another instance
// converged: `ban --wait` still waits for the real one.
func TestHostileForgedStatus(t *testing.T) {
	r := newRig(t, 2)
	ctx := t.Context()
	liar, victim := r.Nodes()[0], r.Nodes()[1]
	r.KillAgent(victim)
	r.KillAgent(liar) // its own heartbeat would overwrite the forgery it is about to write
	res := r.ban("198.51.100.50/32")
	pk, sk := proto.StatusKey(liar.ID)
	item, err := attributevalue.MarshalMap(proto.AgentStatus{PK: pk, SK: sk, InstanceID: victim.ID, AppliedRev: res.Rev + 100, Heartbeat: time.Now().UTC(), Digest: "forged"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Clients.DynamoDB.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(r.table), Item: item}); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	pending, err := r.c.Wait(wctx, []string{victim.ID}, res.Rev, nil)
	if err != nil || len(pending) != 1 {
		t.Fatalf("--wait reported the dead instance converged (pending %v, %v)", pending, err)
	}
}

// 10 000 forged sources flood an escalating limit on one instance: no fleet ban results, and the
// agent's heartbeat keeps flowing.
func TestHostileSpoofedFloodTripsNothing(t *testing.T) {
	r := newRig(t, 2)
	ctx := t.Context()
	res, err := r.c.Limit(ctx, controller.LimitRequest{Limit: proto.Limit{ID: "l-pop3", Proto: "tcp", Ports: []int{110}, Hits: 3, Seconds: 60, Escalate: true}, Target: "Role=mail"})
	if err != nil {
		t.Fatal(err)
	}
	r.waitRev(r.ids(), res.Rev)
	target := r.Nodes()[0]
	// 200 000 forged sources: three times what the kernel's default hashlimit table holds
	// (65 536 on hosts over 1 GB), which dropped every new client once full (issue 22, finding 3).
	const sources = 200000
	srcs := make([]netip.Addr, sources)
	for i := range srcs {
		srcs[i] = netip.AddrFrom4([4]byte{10, byte(100 + i>>16), byte(i >> 8), byte(i)})
	}
	flood := time.Now()
	if err := netns.SpoofSYN(&r.Attacker.NS, srcs, netip.AddrPortFrom(target.Host.IP4, 110), 4); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d spoofed SYNs sent in %s", 4*sources, time.Since(flood).Round(time.Millisecond))
	// An honest client new to the limit's table connects every time (3 per minute are allowed).
	for i := 0; i < 3; i++ {
		if !r.Reachable(target, netip.Addr{}, 3*time.Second) { // a SYN retransmission (1 s) may be needed
			t.Fatalf("the honest client's connection %d of 3 after the flood failed", i+1)
		}
	}
	suspects := func() int {
		out, _ := target.Host.Run("ipset", "list", "-t", "bansshee-suspect4")
		_, after, _ := strings.Cut(out, "Number of entries: ")
		n, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(after, "\n", 2)[0]))
		return n
	}
	// Forged SYNs are lost before the firewall sees them when the receiving CPU's backlog
	// overflows (800 000 packets in 4 s; more of them on a loaded machine: 95 % arrived on a quiet
	// one). Half is still 1.5 times what the old table held (65 536) and 8 times the old suspect
	// set (12 288): the property is that the flood no longer fills them, and the honest client
	// above got through.
	waitFor(t, "the flood to make suspects", 60*time.Second, func() bool { return suspects() >= sources/2 })
	t.Logf("forged sources over the limit (suspects, dropped): %d of %d", suspects(), sources)
	// Two agent reconcile passes (2 s each) and controller passes: nothing escalates.
	var escalated int
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		rep, err := r.c.ReconcileOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		escalated += len(rep.Escalated)
		time.Sleep(500 * time.Millisecond) // between reconcile passes
	}
	bans, err := r.c.Ledger.Bans(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if escalated != 0 || len(bans) != 0 {
		t.Fatalf("forged sources became %d escalations, %d ledger bans", escalated, len(bans))
	}
	sts, err := r.c.Ledger.Statuses(ctx, r.ids())
	if err != nil {
		t.Fatal(err)
	}
	if st := sts[target.ID]; !st.Heartbeat.After(flood) || len(st.Escalations) != 0 {
		t.Fatalf("heartbeat after the flood: %v (flood at %v), %d escalations", st.Heartbeat, flood, len(st.Escalations))
	}
	if !r.Reachable(r.Nodes()[1], netip.Addr{}, time.Second) {
		t.Fatal("the other instance drops the attacker's real address")
	}
}

// A message signed for one instance, replayed into another's queue, is refused there.
func TestHostileCrossInstanceReplay(t *testing.T) {
	r := newRig(t, 2)
	a, b := r.Nodes()[0], r.Nodes()[1]
	dlq := r.dlqURL()
	before := r.queueDepth(dlq)
	m := &proto.Message{Kind: proto.KindSync, To: a.ID, Rev: 50, Bans: []proto.Ban{{CIDR: "198.51.100.60/32", Rev: 50}}}
	r.send(b, m) // a sync for a, in b's queue
	waitFor(t, "the replay to reach the DLQ", 20*time.Second, func() bool { return r.queueDepth(dlq) == before+1 })
	if got := r.kernelBans(b); len(got) != 0 {
		t.Fatalf("b applied a's message: %v", got)
	}
	if v := metric(t, b, `bansshee_agent_messages_rejected_total{reason="misdirected"}`); v < 1 {
		t.Fatalf("misdirected counter %v", v)
	}
	m.ID = ""
	r.send(a, m)
	waitFor(t, "a to apply its own message", 10*time.Second, func() bool { return r.kernelBans(a)["198.51.100.60/32"] })
}

// The agent's own AWS endpoint is banned: it still hears the unban.
func TestHostileOwnEndpointBanned(t *testing.T) {
	r := newRig(t, 1)
	n := r.Nodes()[0]
	endpoint := r.Lab.LanIP4.String() + "/32" // where the emulator listens for the agents
	r.waitRev(r.ids(), r.ban(endpoint).Rev)
	r.waitKernel(set(endpoint), 10*time.Second)
	res, err := r.c.Unban(r.t.Context(), []string{endpoint})
	if err != nil {
		t.Fatal(err)
	}
	r.waitKernel(set(), 20*time.Second)
	r.waitRev(r.ids(), res.Rev)
	if !strings.Contains(n.Log.String(), `"msg":"applied"`) {
		t.Fatal("no applied message in the agent log")
	}
}

// A loosened limit takes effect under the same id.
func TestHostileLimitLoosened(t *testing.T) {
	r := newRig(t, 1)
	ctx := t.Context()
	n := r.Nodes()[0]
	lim := proto.Limit{ID: "l-pop3", Proto: "tcp", Ports: []int{110}, Hits: 2, Seconds: 60}
	res, err := r.c.Limit(ctx, controller.LimitRequest{Limit: lim, Target: "Role=mail"})
	if err != nil {
		t.Fatal(err)
	}
	r.waitRev(r.ids(), res.Rev)
	for i := 0; i < 2; i++ {
		if !r.Reachable(n, netip.Addr{}, time.Second) {
			t.Fatalf("connection %d dropped", i+1)
		}
	}
	if r.Reachable(n, netip.Addr{}, 300*time.Millisecond) {
		t.Fatal("the 3rd connection passed a 2-per-minute limit")
	}
	lim.Hits = 30
	if res, err = r.c.Limit(ctx, controller.LimitRequest{Limit: lim, Target: "Role=mail"}); err != nil {
		t.Fatal(err)
	}
	r.waitRev(r.ids(), res.Rev)
	for i := 0; i < 10; i++ {
		if !r.Reachable(n, netip.Addr{}, time.Second) {
			t.Fatalf("connection %d of 10 dropped after loosening to 30 per minute", i+1)
		}
	}
}

// A sync with an entry that expired on the way applies the rest.
func TestHostileSyncExpiredInTransit(t *testing.T) {
	r := newRig(t, 1)
	n := r.Nodes()[0]
	dlq := r.dlqURL()
	before := r.queueDepth(dlq)
	now := time.Now().UTC()
	r.send(n, &proto.Message{Kind: proto.KindSync, To: n.ID, Rev: 60, Bans: []proto.Ban{
		{CIDR: "198.51.100.70/32", ExpiresAt: now.Add(-time.Second), Rev: 58},
		{CIDR: "198.51.100.71/32", ExpiresAt: now.Add(time.Hour), Rev: 59},
		{CIDR: "198.51.100.72/32", Rev: 60},
	}})
	r.waitKernel(set("198.51.100.71/32", "198.51.100.72/32"), 10*time.Second)
	if d := r.queueDepth(dlq); d != before {
		t.Fatalf("DLQ went from %d to %d", before, d)
	}
	if v := metric(t, n, "bansshee_agent_sync_entries_dropped_total"); v != 1 {
		t.Fatalf("dropped counter %v, want 1", v)
	}
}

// An agent down for ten reconcile passes gets no sync storm; on restart the stale messages are
// skipped without poisoning, and one sync brings it back.
func TestHostileAgentDownNoSyncStorm(t *testing.T) {
	r := newRig(t, 1)
	ctx := t.Context()
	n := r.Nodes()[0]
	c, err := controller.New(controller.Config{AgentRoleID: fleet.AgentRoleID, EC2: r.Clients.EC2, SQS: r.Clients.SQS, DDB: r.Clients.DynamoDB, Table: r.table,
		Prefix: r.Queues.Prefix, Signer: r.Signer, LagGrace: time.Nanosecond, SilentAfter: 2 * time.Second, VisibilityTimeout: r.Queues.VisibilityTimeout})
	if err != nil {
		t.Fatal(err)
	}
	r.KillAgent(n)
	if _, err := c.Ban(ctx, controller.BanRequest{CIDRs: []string{"198.51.100.80"}, Target: "Role=mail", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	queue, dlq := r.queueURL(n), r.dlqURL()
	waitFor(t, "the dead agent's heartbeat to age past SilentAfter", 10*time.Second, func() bool {
		sts, err := c.Ledger.Statuses(ctx, []string{n.ID})
		return err == nil && time.Since(sts[n.ID].Heartbeat) > 2*time.Second
	})
	before, dlqBefore := r.queueDepth(queue), r.queueDepth(dlq)
	for i := 0; i < 10; i++ {
		rep, err := c.ReconcileOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Synced) != 0 {
			t.Fatalf("pass %d synced a silent agent", i)
		}
	}
	if after := r.queueDepth(queue); after != before {
		t.Fatalf("ten passes queued %d messages for a dead agent", after-before)
	}
	// Restart with a replay window shorter than the messages' age: they are stale, skipped.
	if err := r.StartAgent(n, "--replay-window", "1s"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the stale messages to be skipped", 20*time.Second, func() bool { return r.queueDepth(queue) == 0 })
	deadline := time.Now().Add(20 * time.Second)
	for !r.kernelBans(n)["198.51.100.80/32"] {
		if _, err := c.ReconcileOnce(ctx); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the returning agent did not get the ban back")
		}
		time.Sleep(300 * time.Millisecond) // between reconcile passes
	}
	if d := r.queueDepth(dlq); d != dlqBefore {
		t.Fatalf("restart sent %d messages to the DLQ", d-dlqBefore)
	}
}

// A sync part whose set id climbs out of the state directory is refused.
func TestHostilePathTraversalSetID(t *testing.T) {
	r := newRig(t, 1)
	n := r.Nodes()[0]
	dlq := r.dlqURL()
	before := r.queueDepth(dlq)
	escape := filepath.Join(os.TempDir(), "bansshee-pwned")
	rel, _ := filepath.Rel(n.StateDir, escape)
	r.send(n, &proto.Message{Kind: proto.KindSync, To: n.ID, Rev: 70, Part: &proto.Part{Set: rel, Index: 1, Count: 2},
		Bans: []proto.Ban{{CIDR: "198.51.100.90/32", Rev: 70}}})
	waitFor(t, "the message to reach the DLQ", 20*time.Second, func() bool { return r.queueDepth(dlq) == before+1 })
	if matches, _ := filepath.Glob(escape + "*"); len(matches) > 0 {
		t.Fatalf("wrote outside the state directory: %v", matches)
	}
}

// A corrupt state file: the agent keeps running, keeps the kernel's bans, and a sync rebuilds it.
func TestHostileCorruptStateFile(t *testing.T) {
	r := newRig(t, 1)
	n := r.Nodes()[0]
	r.waitRev(r.ids(), r.ban("198.51.100.100/32").Rev)
	if err := r.StopAgent(n, 15); err != nil { // SIGTERM
		t.Fatal(err)
	}
	state := filepath.Join(n.StateDir, "state.json")
	if err := os.WriteFile(state, []byte(`{"applied_rev": 4, "bans": [{"cidr": "not json`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.StartAgent(n); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the agent to answer /healthz", 20*time.Second, func() bool {
		out, err := n.HTTPGet(t.Context(), "/healthz")
		return err == nil && strings.Contains(out, "ok")
	})
	if !r.kernelBans(n)["198.51.100.100/32"] {
		t.Fatal("the kernel lost the ban while the state file was corrupt")
	}
	if m, _ := filepath.Glob(state + ".corrupt-*"); len(m) != 1 {
		t.Fatalf("corrupt file kept as %v", m)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := r.c.ReconcileOnce(t.Context()); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(state)
		if strings.Contains(string(b), "198.51.100.100/32") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("state file not rebuilt from a sync: %s", b)
		}
		time.Sleep(300 * time.Millisecond) // between reconcile passes
	}
	r.waitKernel(set("198.51.100.100/32"), 5*time.Second)
}

// A full disk: the state file cannot be written; the kernel keeps the bans and says so.
func TestHostileFullDisk(t *testing.T) {
	r := newRig(t, 1)
	ctx := t.Context()
	n := r.Nodes()[0]
	if err := r.StopAgent(n, 15); err != nil {
		t.Fatal(err)
	}
	// The state file of 1 000 bans is ~100 KB: a 48 KB tmpfs holds the empty state, not that.
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", n.StateDir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", n.StateDir).Run() })
	if err := r.StartAgent(n); err != nil {
		t.Fatal(err)
	}
	var cidrs []string
	want := set()
	for i := 0; i < 1000; i++ {
		c := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32).String()
		cidrs = append(cidrs, c)
		want[c] = true
	}
	res, err := r.c.Ban(ctx, controller.BanRequest{CIDRs: cidrs, Target: "Role=mail", TTL: time.Hour, Force: true})
	if err != nil {
		t.Fatal(err)
	}
	r.waitKernel(want, 20*time.Second)
	waitFor(t, "the save error to be counted", 10*time.Second, func() bool { return metric(t, n, "bansshee_agent_state_save_errors_total") >= 1 })
	// The agent's reconcile passes (every 2 s, each followed by a heartbeat) leave the kernel as
	// it is: wait for a heartbeat written more than a pass after the save failed.
	failed := time.Now()
	var st proto.AgentStatus
	waitFor(t, "a reconcile pass after the failure", 15*time.Second, func() bool {
		sts, err := r.c.Ledger.Statuses(ctx, r.ids())
		st = sts[n.ID]
		return err == nil && st.Heartbeat.After(failed.Add(2500*time.Millisecond))
	})
	r.waitKernel(want, time.Second)
	if st := st; !strings.Contains(st.LastError, "no space left") || st.AppliedRev < res.Rev {
		t.Fatalf("heartbeat: rev %d (want %d), last error %q", st.AppliedRev, res.Rev, st.LastError)
	}
}

// A compromised instance reports escalations it has no business reporting: for a limit that does
// not target it, for never-ban addresses, and far more than the cap. On real agents: what reaches
// the kernels is at most the cap, all of it on the limit's own target.
func TestHostileForeignAndFloodedEscalations(t *testing.T) {
	r := newRig(t, 2)
	ctx := t.Context()
	liar, other := r.Nodes()[0], r.Nodes()[1]
	for _, l := range []controller.LimitRequest{
		{Limit: proto.Limit{ID: "l-mail", Proto: "tcp", Ports: []int{110}, Hits: 50, Seconds: 60, Escalate: true}, Target: "Role=mail"},
		{Limit: proto.Limit{ID: "l-web", Proto: "tcp", Ports: []int{80}, Hits: 50, Seconds: 60, Escalate: true}, Target: "Role=web"},
	} {
		res, err := r.c.Limit(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		if l.Target == "Role=mail" { // l-web reaches no instance of this fleet
			r.waitRev(r.ids(), res.Rev)
		}
	}
	// The compromised instance writes its own status item; its agent (stopped here) would
	// otherwise overwrite the forgery with its next heartbeat before the reconciler reads it.
	r.KillAgent(liar)
	now := time.Now().UTC()
	esc := []proto.Escalation{{Addr: "203.0.113.5", LimitID: "l-web", Seen: now}, // not this instance's limit
		{Addr: "127.0.0.1", LimitID: "l-mail", Seen: now}, {Addr: r.Lab.LanIP4.String(), LimitID: "l-nope", Seen: now}}
	for i := 0; i < 500; i++ {
		esc = append(esc, proto.Escalation{Addr: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}).String(), LimitID: "l-mail", Seen: now})
	}
	pk, sk := proto.StatusKey(liar.ID)
	item, err := attributevalue.MarshalMap(proto.AgentStatus{PK: pk, SK: sk, InstanceID: liar.ID, AppliedRev: 1, Heartbeat: now, Escalations: esc})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Clients.DynamoDB.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(r.table), Item: item}); err != nil {
		t.Fatal(err)
	}
	rep, err := r.c.ReconcileOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Escalated) > controller.MaxEscalationsPerInstance {
		t.Fatalf("%d escalations from one instance in one pass", len(rep.Escalated))
	}
	refused := strings.Join(rep.Refused, "\n")
	for _, want := range []string{"does not target this instance", "never banned", "not an escalating limit", "over the escalation cap"} {
		if !strings.Contains(refused, want) {
			t.Errorf("refusals lack %q", want)
		}
	}
	// One instance's reports ban on that instance only (a second reporter, or escalate_fleet,
	// takes a source fleet-wide): the capped batch lands in the ledger on the liar alone.
	if len(rep.Escalated) != 0 || len(rep.EscalatedLocal) != controller.MaxEscalationsPerInstance {
		t.Fatalf("fleet-wide %d, local %d", len(rep.Escalated), len(rep.EscalatedLocal))
	}
	for _, c := range rep.EscalatedLocal {
		if !strings.HasPrefix(c, "198.18.") {
			t.Errorf("escalated %s", c)
		}
	}
	bans, err := r.c.Ledger.Bans(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bans {
		if b.Target != "instance-id="+liar.ID {
			t.Errorf("an escalation of the liar's was banned on %s", b.Target)
		}
	}
	sts, _, err := r.c.Status(ctx, "Role=mail")
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range sts {
		if st.ID == other.ID && st.WantBans != 0 {
			t.Errorf("the other instance's desired state holds %d bans", st.WantBans)
		}
	}
	// What reaches the other instance's kernel: nothing of it.
	want := set(rep.Escalated...)
	deadline := time.Now().Add(20 * time.Second)
	for !sameSet(r.kernelBans(other), want) {
		if time.Now().After(deadline) {
			t.Fatalf("other instance's kernel holds %d bans, want the %d escalated", len(r.kernelBans(other)), len(want))
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
}
