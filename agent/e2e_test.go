package agent_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/internal/fleet"
	"github.com/bansshee/bansshee/internal/netns"
	"github.com/bansshee/bansshee/proto"
)

var agentBin string

func TestMain(m *testing.M) { os.Exit(fleet.RunTests(m, &agentBin)) }

type rig struct {
	*fleet.Fleet
	node  *fleet.Node
	queue string
	t     *testing.T
}

func newRig(t *testing.T) *rig {
	t.Helper()
	if err := netns.Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	f, err := fleet.New(t.Context(), fleet.Options{AgentBin: agentBin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	n, err := f.AddNode(t.Context(), map[string]string{"Role": "mail", "bansshee:managed": "true"})
	if err != nil {
		t.Fatal(err)
	}
	q, err := f.Queues.Ensure(t.Context(), n.ID)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{Fleet: f, node: n, queue: q, t: t}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", n.Log.String())
		}
	})
	return r
}

func (r *rig) start() {
	r.t.Helper()
	if err := r.StartAgent(r.node); err != nil {
		r.t.Fatal(err)
	}
}

var seq atomic.Int64

func msgID() string { return fmt.Sprintf("m-%d-%d", time.Now().UnixNano(), seq.Add(1)) }

func (r *rig) send(m *proto.Message) {
	r.t.Helper()
	if m.ID == "" {
		m.ID = msgID()
	}
	if m.IssuedAt.IsZero() {
		m.IssuedAt = time.Now().UTC()
	}
	if m.To == "" {
		m.To = r.node.ID
	}
	if err := controller.Send(r.t.Context(), r.Clients.SQS, r.Signer, r.queue, m); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) banMsg(addr netip.Addr, rev int64) *proto.Message {
	p := netip.PrefixFrom(addr, addr.BitLen())
	return &proto.Message{Kind: proto.KindBan, Rev: rev, Bans: []proto.Ban{{ID: proto.BanID(p), CIDR: p.String(), ExpiresAt: time.Now().Add(time.Hour), Rev: rev, Reason: "test"}}}
}

func (r *rig) waitDropped(want bool) time.Duration {
	r.t.Helper()
	return r.waitDroppedWithin(want, 10*time.Second)
}

func (r *rig) waitDroppedWithin(want bool, limit time.Duration) time.Duration {
	r.t.Helper()
	d, ok := r.WaitReachable(r.node, netip.Addr{}, !want, limit)
	if !ok {
		r.t.Fatalf("attacker dropped = %v not reached within %s", want, limit)
	}
	return d
}

// queueDepth is visible + in-flight messages.
func (r *rig) queueDepth(url string) int {
	r.t.Helper()
	out, err := r.Clients.SQS.GetQueueAttributes(r.t.Context(), &sqs.GetQueueAttributesInput{QueueUrl: aws.String(url),
		AttributeNames: []sqstypes.QueueAttributeName{"ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"}})
	if err != nil {
		r.t.Fatal(err)
	}
	var n, m int
	fmt.Sscan(out.Attributes["ApproximateNumberOfMessages"], &n)
	fmt.Sscan(out.Attributes["ApproximateNumberOfMessagesNotVisible"], &m)
	return n + m
}

func (r *rig) waitQueueDepth(url string, want int) {
	r.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for r.queueDepth(url) != want {
		if time.Now().After(deadline) {
			r.t.Fatalf("queue %s depth %d, want %d", url, r.queueDepth(url), want)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not synchronisation
	}
}

// metric reads one sample from the agent's /metrics ("" when absent or the agent is not up).
func (r *rig) metric(name string) string {
	r.t.Helper()
	out, err := r.node.HTTPGet(r.t.Context(), "/metrics")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, name+" ") {
			return strings.TrimPrefix(l, name+" ")
		}
	}
	return ""
}

func (r *rig) waitHealthy() {
	r.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := r.node.HTTPGet(r.t.Context(), "/healthz")
		if err == nil && strings.HasPrefix(out, "HTTP/1.0 200") {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("agent not healthy: %v %s", err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *rig) waitMetric(name, want string) {
	r.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for r.metric(name) != want {
		if time.Now().After(deadline) {
			r.t.Fatalf("%s = %q, want %q", name, r.metric(name), want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestAgentBanRevisionRuleAndSync(t *testing.T) {
	r := newRig(t)
	r.start()
	atk := r.Attacker.IP4
	if !r.Reachable(r.node, netip.Addr{}, time.Second) {
		t.Fatal("attacker cannot reach the node before any ban")
	}
	ban := r.banMsg(atk, 10)
	sent := time.Now()
	r.send(ban)
	d := r.waitDropped(true)
	t.Logf("ban dropped the attacker %v after send", d.Round(time.Millisecond))
	_ = sent
	r.waitQueueDepth(r.queue, 0)

	// The same message delivered again (another dedup id): no change, still dropped.
	dup := *ban
	dup.ID = msgID()
	r.send(&dup)
	r.waitMetric(`bansshee_agent_messages_applied_total{kind="ban"}`, "2")
	r.waitDropped(true)

	// An unban arriving before its ban: the later-arriving older ban must not resurrect.
	other := netip.MustParseAddr("10.97.200.9")
	if err := r.Lab.AddAddr(r.Attacker, other); err != nil {
		t.Fatal(err)
	}
	id := proto.BanID(netip.PrefixFrom(other, 32))
	r.send(&proto.Message{Kind: proto.KindUnban, Rev: 30, Unbans: []proto.Tombstone{{ID: id, Rev: 30}}})
	r.send(r.banMsg(other, 20))
	r.waitMetric(`bansshee_agent_messages_applied_total{kind="ban"}`, "3")
	if !r.Reachable(r.node, other, time.Second) {
		t.Fatal("a ban older than its unban was applied")
	}
	// A sync at a newer revision without the first ban removes it.
	r.send(&proto.Message{Kind: proto.KindSync, Rev: 40})
	r.waitDropped(false)
	r.waitMetric("bansshee_agent_bans_active", "0")
	r.waitMetric("bansshee_agent_applied_revision", "40")
}

func TestAgentRejectsBadMessages(t *testing.T) {
	r := newRig(t)
	r.start()
	ctx := t.Context()
	good := r.banMsg(r.Attacker.IP4, 5)
	good.ID, good.IssuedAt, good.To = msgID(), time.Now().UTC(), r.node.ID
	body, _, err := r.Signer.Encode(good)
	if err != nil {
		t.Fatal(err)
	}
	stranger, _ := proto.GenerateKey("stranger")
	sbody, sattrs, _ := stranger.Encode(good)
	world := &proto.Message{ID: msgID(), Kind: proto.KindBan, To: r.node.ID, IssuedAt: time.Now().UTC(), Rev: 6, Bans: []proto.Ban{{CIDR: "0.0.0.0/0", Rev: 6}}}
	wbody, _ := jsonMarshal(world)
	bad := []struct {
		body  []byte
		attrs map[string]string
	}{
		{body, map[string]string{proto.AttrVersion: "1"}}, // unsigned
		{sbody, sattrs}, // unknown key
		{[]byte(`{"id":"x","kind":`), r.Signer.Sign([]byte(`{"id":"x","kind":`))}, // malformed
		{wbody, r.Signer.Sign(wbody)}, // 0.0.0.0/0
	}
	for i, b := range bad {
		if err := controller.SendRaw(ctx, r.Clients.SQS, r.queue, fmt.Sprint("bad", i), b.body, b.attrs); err != nil {
			t.Fatal(err)
		}
	}
	good.ID = msgID()
	r.send(good)
	r.waitDropped(true)
	for _, reason := range []string{"unsigned", "unknown_key", "malformed", "invalid"} {
		r.waitMetric(fmt.Sprintf(`bansshee_agent_messages_rejected_total{reason="%s"}`, reason), "5") // one per receive, five receives
	}
	dlq, err := r.Queues.URL(ctx, "dlq")
	if err != nil {
		dlqOut, err2 := r.Clients.SQS.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(r.Queues.DLQName())})
		if err2 != nil {
			t.Fatal(err2)
		}
		dlq = aws.ToString(dlqOut.QueueUrl)
	}
	r.waitQueueDepth(dlq, 4)
	r.waitQueueDepth(r.queue, 0)
	r.waitMetric("bansshee_agent_bans_active", "1")
}

func TestAgentKilledBetweenApplyAndDelete(t *testing.T) {
	r := newRig(t)
	r.start()
	release := r.Env.Hold("AmazonSQS.DeleteMessage")
	defer release()
	r.send(r.banMsg(r.Attacker.IP4, 7))
	r.waitDropped(true) // applied; its delete hangs
	r.KillAgent(r.node)
	release()
	r.waitDropped(true) // bans outlive the agent
	r.start()
	r.waitQueueDepth(r.queue, 0) // redelivered, a no-op by revision, deleted
	r.waitMetric("bansshee_agent_bans_active", "1")
	out, err := r.node.Host.Run("ipset", "list", "bansshee-ban4")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out, r.Attacker.IP4.String()); n != 1 {
		t.Fatalf("attacker in the ban set %d times:\n%s", n, out)
	}
}

func TestAgentRebootRestoresBeforeFirstPoll(t *testing.T) {
	r := newRig(t)
	r.start()
	r.send(r.banMsg(r.Attacker.IP4, 3))
	r.waitDropped(true)
	if err := r.StopAgent(r.node, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r.waitDropped(true) // SIGTERM leaves every rule in place
	// A reboot: the kernel forgets everything.
	// (Every chain of the node's namespace goes, the forward hooks and chains of issue 23 too.)
	for _, c := range [][]string{{"iptables", "-F"}, {"iptables", "-X"}, {"ip6tables", "-F"}, {"ip6tables", "-X"},
		{"ipset", "destroy"}} {
		if _, err := r.node.Host.Run(c[0], c[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	r.waitDropped(false)
	r.Env.Stop() // no AWS at all: the bans must come from the state file
	defer r.Env.Resume()
	r.start()
	r.waitDropped(true)
}

func TestFaultEmulatorOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("30 s outage")
	}
	r := newRig(t)
	r.start()
	r.waitHealthy()
	r.Env.Stop()
	outage := time.NewTimer(30 * time.Second)
	<-outage.C // the scenario is a 30 s outage; nothing is being waited for
	if err := r.Env.Resume(); err != nil {
		t.Fatal(err)
	}
	r.send(r.banMsg(r.Attacker.IP4, 9))
	r.waitDroppedWithin(true, 30*time.Second) // one backoff step (at most 10 s) plus SDK retries
	if v := r.metric(`bansshee_agent_aws_errors_total{op="ReceiveMessage"}`); v == "" || v == "0" {
		t.Fatalf("outage not counted: %q", v)
	}
	if !strings.Contains(r.node.Log.String(), "backing off") {
		t.Fatal("outage not logged")
	}
}

// A sync in two parts with the agent killed between them: the first part, already deleted from
// the queue, survives on disk, and the sync completes when the second arrives.
func TestAgentSyncPartsSurviveRestart(t *testing.T) {
	r := newRig(t)
	r.start()
	p1 := netip.MustParsePrefix("198.51.100.1/32")
	p2 := netip.PrefixFrom(r.Attacker.IP4, 32)
	exp := time.Now().Add(time.Hour)
	part := func(i int, p netip.Prefix) *proto.Message {
		return &proto.Message{Kind: proto.KindSync, Rev: 50, Bans: []proto.Ban{{ID: proto.BanID(p), CIDR: p.String(), ExpiresAt: exp, Rev: 50}},
			Part: &proto.Part{Set: "s-restart", Index: i, Count: 2}}
	}
	r.send(part(1, p1))
	r.waitQueueDepth(r.queue, 0)
	r.KillAgent(r.node)
	r.start()
	r.send(part(2, p2))
	r.waitDropped(true)
	r.waitMetric("bansshee_agent_bans_active", "2")
	r.waitMetric("bansshee_agent_applied_revision", "50")
	if left, _ := filepath.Glob(filepath.Join(r.node.StateDir, "sync-*")); len(left) != 0 {
		t.Fatalf("part files left: %v", left)
	}
}

// A sync that carries a ban over the instance's own address applies; that ban is held (so the
// state's digest matches the ledger's) but not enforced, and is counted.
func TestAgentSyncLeavesOutAllowlistedBans(t *testing.T) {
	r := newRig(t)
	r.start()
	own := netip.PrefixFrom(r.node.Host.IP4, 32)
	atk := netip.PrefixFrom(r.Attacker.IP4, 32)
	exp := time.Now().Add(time.Hour)
	r.send(&proto.Message{Kind: proto.KindSync, Rev: 7, Bans: []proto.Ban{
		{ID: proto.BanID(own), CIDR: own.String(), ExpiresAt: exp, Rev: 7},
		{ID: proto.BanID(atk), CIDR: atk.String(), ExpiresAt: exp, Rev: 7},
	}})
	r.waitDropped(true)
	r.waitMetric("bansshee_agent_bans_refused", "1")
	out, err := r.node.Host.Run("ipset", "list", "bansshee-ban4")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, r.node.Host.IP4.String()) {
		t.Fatalf("own address in the kernel's ban set:\n%s", out)
	}
}
