package controller

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/bansshee/bansshee/agent"
	"github.com/bansshee/bansshee/internal/awstest"
	"github.com/bansshee/bansshee/proto"
)

// TestAgentRoleID is the agent role id the test ledgers record.
const TestAgentRoleID = "AROATESTAGENTROLE"

type env struct {
	c       *Controller
	clients awstest.Clients
	aws     *awstest.Env
	ids     map[string]string // name -> instance id
	ver     *proto.Verifier
	now     time.Time
	mu      sync.Mutex
}

// onDynalite makes newEnv serve DynamoDB from dynalite (TestLedgerAndReconcilerOnDynalite).
var onDynalite bool

func newEnv(t *testing.T) *env {
	t.Helper()
	newAWS := awstest.New
	if onDynalite {
		newAWS = awstest.NewWithDynalite
	}
	e, clients := newAWS(t)
	signer, err := proto.GenerateKey("k1")
	if err != nil {
		t.Fatal(err)
	}
	te := &env{clients: clients, aws: e, ids: map[string]string{}, now: time.Now()}
	c, err := New(Config{EC2: clients.EC2, SQS: clients.SQS, DDB: clients.DynamoDB, Signer: signer, VisibilityTimeout: 1, Table: awstest.Unique("bansshee"), Prefix: awstest.Unique("bansshee"),
		Now: func() time.Time { te.mu.Lock(); defer te.mu.Unlock(); return te.now }})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ledger.CreateTable(t.Context()); err != nil {
		t.Fatal(err)
	}
	// As the stack's Lambda does: queues are created only with the agent role's id.
	if err := c.Ledger.RecordAgentRoleID(t.Context(), TestAgentRoleID); err != nil {
		t.Fatal(err)
	}
	te.c = c
	te.ver = &proto.Verifier{Keys: map[string]ed25519.PublicKey{"k1": signer.Key.Public().(ed25519.PublicKey)}}
	return te
}

func (e *env) advance(d time.Duration) {
	e.mu.Lock()
	e.now = e.now.Add(d)
	e.mu.Unlock()
}

func (e *env) launch(t *testing.T, name string, tags map[string]string) string {
	t.Helper()
	tags["bansshee:managed"] = "true"
	id, err := awstest.Launch(t.Context(), e.clients.EC2, tags)
	if err != nil {
		t.Fatal(err)
	}
	e.ids[name] = id
	return id
}

// fleet6 is six instances in three groups, plus one unmanaged.
func (e *env) fleet6(t *testing.T) {
	for i := 1; i <= 3; i++ {
		e.launch(t, fmt.Sprint("mail", i), map[string]string{"Role": "mail", "Env": "prod"})
	}
	e.launch(t, "maildev", map[string]string{"Role": "mail", "Env": "dev"})
	e.launch(t, "web1", map[string]string{"Role": "web", "Env": "prod"})
	e.launch(t, "web2", map[string]string{"Role": "web"})
	if _, err := awstest.Launch(t.Context(), e.clients.EC2, map[string]string{"Role": "mail"}); err != nil { // not managed
		t.Fatal(err)
	}
}

// drain reads and deletes every message in an instance's queue, decoded.
func (e *env) drain(t *testing.T, id string) []*proto.Message {
	t.Helper()
	url, err := e.c.Queues.URL(t.Context(), id)
	if errors.Is(err, ErrNoQueue) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []*proto.Message
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := e.clients.SQS.ReceiveMessage(t.Context(), &sqs.ReceiveMessageInput{QueueUrl: aws.String(url), MaxNumberOfMessages: 10, MessageAttributeNames: []string{"All"}})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Messages) == 0 {
			// An empty receive is the end only if the queue agrees it holds nothing (a message
			// still being stored, or made visible again, is not lost).
			a, err := e.clients.SQS.GetQueueAttributes(t.Context(), &sqs.GetQueueAttributesInput{QueueUrl: aws.String(url),
				AttributeNames: []sqstypes.QueueAttributeName{"ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"}})
			if err != nil {
				t.Fatal(err)
			}
			if a.Attributes["ApproximateNumberOfMessages"] == "0" && a.Attributes["ApproximateNumberOfMessagesNotVisible"] == "0" {
				return out
			}
			if time.Now().After(deadline) {
				t.Fatalf("queue of %s still reports messages it does not deliver: %v", id, a.Attributes)
			}
			continue
		}
		for _, m := range r.Messages {
			attrs := map[string]string{}
			for k, v := range m.MessageAttributes {
				attrs[k] = aws.ToString(v.StringValue)
			}
			msg, err := e.ver.Decode([]byte(aws.ToString(m.Body)), attrs)
			if err != nil {
				t.Fatalf("queue of %s holds a bad message: %v\n%s\n%v", id, err, aws.ToString(m.Body), attrs)
			}
			out = append(out, msg)
			if _, err := e.clients.SQS.DeleteMessage(t.Context(), &sqs.DeleteMessageInput{QueueUrl: aws.String(url), ReceiptHandle: m.ReceiptHandle}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestTargetsAndBanReachExactlyTheSelection(t *testing.T) {
	e := newEnv(t)
	e.fleet6(t)
	ctx := t.Context()
	got, err := e.c.Targets(ctx, "Role=mail,Env!=dev")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, in := range got {
		ids = append(ids, in.ID)
	}
	want := []string{e.ids["mail1"], e.ids["mail2"], e.ids["mail3"]}
	sort.Strings(want)
	if strings.Join(ids, ",") != strings.Join(want, ",") {
		t.Fatalf("targets %v, want %v", ids, want)
	}
	res, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"174.132.223.252"}, Target: "Role=mail,Env!=dev", TTL: 2 * time.Hour, Reason: "pop3 brute force"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Instances) != 3 || len(res.Failed()) != 0 {
		t.Fatalf("deliveries %+v", res.Instances)
	}
	for name, id := range e.ids {
		msgs := e.drain(t, id)
		inTarget := strings.HasPrefix(name, "mail") && name != "maildev"
		if inTarget != (len(msgs) == 1) {
			t.Errorf("%s (%s) got %d messages, in target: %v", name, id, len(msgs), inTarget)
		}
		if inTarget && len(msgs) == 1 {
			m := msgs[0]
			if m.Kind != proto.KindBan || m.Rev != res.Rev || m.Bans[0].CIDR != "174.132.223.252/32" || m.Bans[0].Reason != "pop3 brute force" {
				t.Errorf("message %+v", m)
			}
		}
	}
	// A re-ban of the same CIDR and target with a longer TTL extends the one ledger item.
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"174.132.223.252/32"}, Target: "Role=mail,Env!=dev", TTL: 4 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	res3, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"174.132.223.252/32"}, Target: "Role=mail,Env!=dev", TTL: time.Hour})
	if err != nil || len(res3.Unchanged) != 1 {
		t.Fatalf("shorter re-ban: %+v %v", res3, err)
	}
	bans, _ := e.c.Ledger.Bans(ctx, time.Now())
	if len(bans) != 1 || time.Until(bans[0].Expires()) < 3*time.Hour {
		t.Fatalf("ledger %+v, want one ban extended to 4 h", bans)
	}
}

func TestRefusals(t *testing.T) {
	e := newEnv(t)
	e.fleet6(t)
	e.c.Admin = append(e.c.Admin, mustPrefix("203.0.113.0/24"))
	ctx := t.Context()
	for _, c := range []struct {
		req  BanRequest
		want string
	}{
		{BanRequest{CIDRs: []string{"0.0.0.0/0"}}, "would match every address"},
		{BanRequest{CIDRs: []string{"::/0"}}, "would match every address"},
		{BanRequest{CIDRs: []string{"10.0.0.0/4"}, Force: true}, "broader than the minimum /8"},
		{BanRequest{CIDRs: []string{"10.0.0.0/12"}}, "give --force"},
		{BanRequest{CIDRs: []string{"172.31.5.5"}}, "covers allowlisted 172.31.0.0/16"},
		{BanRequest{CIDRs: []string{"203.0.113.7"}}, "covers allowlisted 203.0.113.0/24"},
		{BanRequest{CIDRs: []string{"300.1.1.1"}}, "not an IP address"},
		{BanRequest{CIDRs: []string{"1.2.3.4"}, Target: "Role="}, "expected a value"},
	} {
		_, err := e.c.Ban(ctx, c.req)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want refusal with %q", c.req, err, c.want)
		}
	}
	if rev, _ := e.c.Ledger.CurrentRev(ctx); rev != 0 {
		t.Fatalf("refusals wrote the ledger: rev %d", rev)
	}
	if e.aws.Requests("sqs") != 0 {
		t.Fatalf("refusals touched SQS: %d requests", e.aws.Requests("sqs"))
	}
}

func mustPrefix(s string) (p netipPrefix) { return mustParsePrefix(s) }

func TestNewInstanceGetsSyncAndGoneQueueIsDeleted(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.launch(t, "mail1", map[string]string{"Role": "mail"})
	if _, err := e.c.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	e.drain(t, e.ids["mail1"]) // its first sync (empty)
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"198.51.100.7"}, Target: "Role=mail", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Limit(ctx, LimitRequest{Limit: proto.Limit{ID: "l-pop3", Proto: "tcp", Ports: []int{110}, Hits: 10, Seconds: 60}, Target: "Role=mail"}); err != nil {
		t.Fatal(err)
	}
	late := e.launch(t, "mail2", map[string]string{"Role": "mail"})
	rep, err := e.c.ReconcileOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Synced) != 1 || rep.Synced[0] != late {
		t.Fatalf("synced %v, want only %s", rep.Synced, late)
	}
	msgs := e.drain(t, late)
	if len(msgs) != 1 || msgs[0].Kind != proto.KindSync || len(msgs[0].Bans) != 1 || msgs[0].Bans[0].CIDR != "198.51.100.7/32" || len(msgs[0].Limits) != 1 {
		t.Fatalf("late instance got %+v", msgs)
	}
	// Terminate mail1: its queue stays through the grace period, then goes.
	if _, err := e.clients.EC2.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{e.ids["mail1"]}}); err != nil {
		t.Fatal(err)
	}
	if rep, _ = e.c.ReconcileOnce(ctx); len(rep.QueuesDeleted) != 0 {
		t.Fatalf("deleted at once: %v", rep.QueuesDeleted)
	}
	e.advance(11 * time.Minute)
	rep, err = e.c.ReconcileOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.QueuesDeleted) != 1 || rep.QueuesDeleted[0] != e.ids["mail1"] {
		t.Fatalf("deleted %v, want %s", rep.QueuesDeleted, e.ids["mail1"])
	}
	if _, err := e.c.Queues.URL(ctx, e.ids["mail1"]); !errors.Is(err, ErrNoQueue) {
		t.Fatalf("queue still there: %v", err)
	}
}

func TestRacingBanAndUnbanAgree(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	for i := 1; i <= 3; i++ {
		e.launch(t, fmt.Sprint("mail", i), map[string]string{"Role": "mail"})
	}
	if _, err := e.c.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range e.ids {
		e.drain(t, id)
	}
	// Two controllers (as the CLI and the Lambda would be) racing on one CIDR, many rounds.
	other, err := New(e.c.Config)
	if err != nil {
		t.Fatal(err)
	}
	const cidr = "192.0.2.77/32"
	for round := 0; round < 8; round++ {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			res, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{cidr}, Target: "Role=mail", TTL: time.Hour})
			if err != nil || res != nil && len(res.Failed()) > 0 {
				t.Logf("round %d: ban: %v %+v", round, err, res)
			}
		}()
		go func() {
			defer wg.Done()
			res, err := other.Unban(ctx, []string{cidr})
			if err != nil || res != nil && len(res.Failed()) > 0 {
				t.Logf("round %d: unban: %v %+v", round, err, res)
			}
		}()
		wg.Wait()
	}
	bans, err := e.c.Ledger.Bans(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ledgerBanned := false
	for _, b := range bans {
		if b.CIDR == cidr && b.Active(time.Now()) {
			ledgerBanned = true
		}
	}
	for name, id := range e.ids {
		st := agent.NewState()
		for _, m := range e.drain(t, id) {
			st.Apply(m, time.Now())
		}
		_, agentBanned := st.Ban(mustParsePrefix(cidr))
		if agentBanned != ledgerBanned {
			t.Errorf("%s: agent banned=%v, ledger banned=%v", name, agentBanned, ledgerBanned)
		}
	}
}

// Throttled sends are retried with backoff by the SDK: the fan-out still reaches every queue.
func TestFanoutSurvivesThrottling(t *testing.T) {
	e := newEnv(t)
	for i := 1; i <= 3; i++ {
		e.launch(t, fmt.Sprint("mail", i), map[string]string{"Role": "mail"})
	}
	if _, err := e.c.ReconcileOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, id := range e.ids {
		e.drain(t, id)
	}
	before := e.aws.Requests("sqs")
	e.aws.Throttle("AmazonSQS.SendMessage", 4)
	res, err := e.c.Ban(t.Context(), BanRequest{CIDRs: []string{"203.0.113.5"}, Target: "Role=mail", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Failed()) != 0 {
		t.Fatalf("throttling lost deliveries: %+v", res.Failed())
	}
	if sent := e.aws.Requests("sqs") - before; sent < 3+4 {
		t.Fatalf("%d SQS requests: the throttled sends were not retried", sent)
	}
	for name, id := range e.ids {
		if msgs := e.drain(t, id); len(msgs) != 1 {
			t.Errorf("%s got %d messages, want 1", name, len(msgs))
		}
	}
}

// A fan-out sends from discovery's first page on; when EC2 fails in the middle of paging, the
// instances already found have the ban, the error says how far it got, and the reconciler
// delivers to the rest from the ledger.
func TestFanoutStreamsDiscoveryAndSurvivesItsFailure(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	var ids []string
	for range 12 {
		out, err := e.clients.EC2.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String("ami-0test"), MinCount: aws.Int32(100), MaxCount: aws.Int32(100),
			TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: []ec2types.Tag{
				{Key: aws.String("bansshee:managed"), Value: aws.String("true")}, {Key: aws.String("Role"), Value: aws.String("mail")}}}}})
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range out.Instances {
			ids = append(ids, aws.ToString(in.InstanceId))
		}
	}
	// The fleet's public addresses are read first (and cached); then discovery pages by 1 000:
	// the first page is answered, the second never is.
	if _, err := e.c.FleetAddresses(ctx); err != nil {
		t.Fatal(err)
	}
	e.aws.FailAfter("ec2:DescribeInstances", 1)
	res, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"203.0.113.9"}, Target: "Role=mail", TTL: time.Hour, Reason: "test"})
	if err == nil || !strings.Contains(err.Error(), "discovery failed after 1000 instances") {
		t.Fatalf("want the discovery failure and how far the fan-out got, got %v", err)
	}
	if len(res.Instances) != 1000 || len(res.Failed()) != 0 {
		t.Fatalf("%d deliveries (%d failed), want the first page's 1000", len(res.Instances), len(res.Failed()))
	}
	bans, err := e.c.Ledger.Bans(ctx, time.Now())
	if err != nil || len(bans) != 1 || bans[0].CIDR != "203.0.113.9/32" {
		t.Fatalf("ledger: %+v, %v", bans, err)
	}
	reached := map[string]bool{}
	for _, d := range res.Instances {
		reached[d.InstanceID] = true
	}
	e.aws.Recover()
	rep, err := e.c.ReconcileOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	synced := map[string]bool{}
	for _, id := range rep.Synced {
		synced[id] = true
	}
	for _, id := range ids {
		if !reached[id] && !synced[id] {
			t.Fatalf("%s got neither the fan-out nor a sync", id)
		}
	}
	// What the first page got is one signed ban for its own instance.
	msgs := e.drain(t, res.Instances[0].InstanceID)
	if len(msgs) < 1 || msgs[0].Kind != proto.KindBan || msgs[0].To != res.Instances[0].InstanceID {
		t.Fatalf("first message: %+v", msgs)
	}
}

// A ban on one instance by id (a jail's ban on the instance that logged the failures): only
// that instance's queue gets it, a late sync of that instance holds it, and the other instances'
// state (and the sync they share) does not.
func TestInstanceScopedBan(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.launch(t, "mail1", map[string]string{"Role": "mail"})
	e.launch(t, "mail2", map[string]string{"Role": "mail"})
	if _, err := e.c.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	e.drain(t, e.ids["mail1"])
	e.drain(t, e.ids["mail2"])
	one := e.ids["mail1"]
	res, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"198.51.100.9"}, Target: "instance-id=" + one, TTL: time.Hour, Reason: "jail sshd"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Instances) != 1 || res.Instances[0].InstanceID != one {
		t.Fatalf("deliveries %+v, want only %s", res.Instances, one)
	}
	if m := e.drain(t, one); len(m) != 1 || m[0].Bans[0].CIDR != "198.51.100.9/32" {
		t.Fatalf("%s got %+v", one, m)
	}
	if m := e.drain(t, e.ids["mail2"]); len(m) != 0 {
		t.Fatalf("the other instance got %+v", m)
	}
	sts, _, err := e.c.Status(ctx, "Role=mail")
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range sts {
		if want := map[bool]int{true: 1, false: 0}[st.ID == one]; st.WantBans != want {
			t.Errorf("%s wants %d bans, want %d", st.ID, st.WantBans, want)
		}
	}
	// Two new instances with the same tags: only the one named would hold the ban, so their
	// states are computed apart (the id joins the memo key only where a target names it).
	view, err := e.c.readLedger(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tags := map[string]string{"Role": "mail", "bansshee:managed": "true"}
	if d := view.forInstance(one, tags, time.Now()); len(d.bans) != 1 {
		t.Fatalf("named instance: %d bans", len(d.bans))
	}
	if d := view.forInstance("i-0fffffffffffffff0", tags, time.Now()); len(d.bans) != 0 {
		t.Fatalf("other instance: %d bans", len(d.bans))
	}
	if view.scopedKey(one) == "" || view.scopedKey("i-0fffffffffffffff0") != "" {
		t.Fatalf("scoped keys %q %q", view.scopedKey(one), view.scopedKey("i-0fffffffffffffff0"))
	}
}

// A ban written while a reconcile pass reads the ledger is newer than the pass's syncs, so the
// agent keeps it over a sync that does not hold it (issue 22, finding 13).
func TestBanDuringReconcileReadIsNewerThanTheSync(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	id := e.launch(t, "mail1", map[string]string{"Role": "mail"})
	var banRev int64
	e.c.afterLedgerRead = func() {
		e.c.afterLedgerRead = nil
		res, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"198.51.100.44"}, Target: "Role=mail", TTL: time.Hour})
		if err != nil {
			t.Error(err)
			return
		}
		banRev = res.Rev
	}
	rep, err := e.c.ReconcileOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Synced) != 1 {
		t.Fatalf("synced %v", rep.Synced)
	}
	var syncRev int64
	for _, m := range e.drain(t, id) {
		if m.Kind == proto.KindSync {
			syncRev = m.Rev
			for _, b := range m.Bans {
				t.Fatalf("the sync holds %s, which its read could not see", b.CIDR)
			}
		}
	}
	if syncRev == 0 || banRev <= syncRev {
		t.Fatalf("sync at %d, the ban written during its read at %d: the sync would claim authority over the ban", syncRev, banRev)
	}
}
