package controller

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/bansshee/bansshee/proto"
)

// putStatus writes a heartbeat item under key (an agent's own id), as an agent (or an attacker
// holding that agent's credentials) can.
func (e *env) putStatus(t *testing.T, key string, st proto.AgentStatus) {
	t.Helper()
	st.PK, st.SK = proto.StatusKey(key)
	if st.InstanceID == "" {
		st.InstanceID = key
	}
	if st.Heartbeat.IsZero() {
		st.Heartbeat = e.c.Now()
	}
	item, err := attributevalue.MarshalMap(st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.clients.DynamoDB.PutItem(t.Context(), &dynamodb.PutItemInput{TableName: aws.String(e.c.Table), Item: item}); err != nil {
		t.Fatal(err)
	}
}

// A compromised instance writes, under its own key, a status that claims to be another
// instance's: it does not hide that instance's lag.
func TestForgedStatusIsIgnored(t *testing.T) {
	e := newEnv(t)
	e.putStatus(t, "i-0aaaaaaaaaaaaaaaa", proto.AgentStatus{InstanceID: "i-0bbbbbbbbbbbbbbbb", AppliedRev: 1 << 40, Digest: "forged"})
	e.putStatus(t, "i-0cccccccccccccccc", proto.AgentStatus{AppliedRev: 7})
	got, err := e.c.Ledger.Statuses(t.Context(), []string{"i-0aaaaaaaaaaaaaaaa", "i-0bbbbbbbbbbbbbbbb", "i-0cccccccccccccccc"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got["i-0bbbbbbbbbbbbbbbb"]; ok {
		t.Fatal("a status written under another instance's key was credited to it")
	}
	if _, ok := got["i-0aaaaaaaaaaaaaaaa"]; ok {
		t.Fatal("a status whose instance_id disagrees with its key was used")
	}
	if got["i-0cccccccccccccccc"].AppliedRev != 7 || len(got) != 1 {
		t.Fatalf("statuses %v", got)
	}
}

func TestEscalationsAreCheckedCappedAndBatched(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	mail1 := e.launch(t, "mail1", map[string]string{"Role": "mail"})
	mail2 := e.launch(t, "mail2", map[string]string{"Role": "mail"})
	web1 := e.launch(t, "web1", map[string]string{"Role": "web"})
	if _, err := e.c.Limit(ctx, LimitRequest{Limit: proto.Limit{ID: "l-pop3", Proto: "tcp", Ports: []int{110}, Hits: 5, Seconds: 60, Escalate: true}, Target: "Role=mail", EscalateFleet: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Limit(ctx, LimitRequest{Limit: proto.Limit{ID: "l-plain", Proto: "tcp", Ports: []int{25}, Hits: 5, Seconds: 60}, Target: "Role=mail"}); err != nil {
		t.Fatal(err)
	}
	now := e.c.Now()
	esc := func(from, n int, limit string) []proto.Escalation {
		var out []proto.Escalation
		for i := from; i < from+n; i++ {
			out = append(out, proto.Escalation{Addr: fmt.Sprintf("198.51.%d.%d", 100+i/250, 1+i%250), LimitID: limit, Seen: now})
		}
		return out
	}
	// mail1 reports 30 sources (cap 20), loopback and IMDS (never banned), and a source on a
	// limit that does not escalate; web1 (not targeted by l-pop3) reports 5.
	m1 := append(esc(0, 30, "l-pop3"), proto.Escalation{Addr: "127.0.0.1", LimitID: "l-pop3", Seen: now},
		proto.Escalation{Addr: "169.254.169.254", LimitID: "l-pop3", Seen: now}, proto.Escalation{Addr: "203.0.113.9", LimitID: "l-plain", Seen: now})
	e.putStatus(t, mail1, proto.AgentStatus{Escalations: m1})
	e.putStatus(t, web1, proto.AgentStatus{Escalations: esc(1000, 5, "l-pop3")})
	revBefore, _ := e.c.Ledger.CurrentRev(ctx)
	rep, _ := e.c.ReconcileOnce(ctx)
	if len(rep.Escalated) != MaxEscalationsPerInstance {
		t.Fatalf("escalated %d: %v\nrefused: %v", len(rep.Escalated), rep.Escalated, rep.Refused)
	}
	refused := strings.Join(rep.Refused, "\n")
	for _, want := range []string{"does not target this instance", "not an escalating limit", "over the escalation cap", "never banned: 127.0.0.1/32 is loopback", "169.254.169.254/32 is link-local"} {
		if !strings.Contains(refused, want) {
			t.Errorf("refused lacks %q:\n%s", want, refused)
		}
	}
	bans, err := e.c.Ledger.Bans(ctx, e.c.Now())
	if err != nil {
		t.Fatal(err)
	}
	revs := map[int64]bool{}
	for _, b := range bans {
		revs[b.Rev] = true
		if b.Target != "Role=mail" || !strings.HasPrefix(b.Source, "escalation:l-pop3") {
			t.Fatalf("ban %+v", b)
		}
	}
	revAfter, _ := e.c.Ledger.CurrentRev(ctx)
	if len(bans) != MaxEscalationsPerInstance || len(revs) != 1 {
		t.Fatalf("%d bans over %d revisions, want one batch of %d", len(bans), len(revs), MaxEscalationsPerInstance)
	}
	if revAfter-revBefore > 3 { // the batch's revision and the first syncs'
		t.Fatalf("the escalations took %d revisions", revAfter-revBefore)
	}
	// Fleet-wide: at most 100 escalation bans a minute, whatever the number of reporters.
	e.putStatus(t, mail1, proto.AgentStatus{Escalations: esc(2000, 20, "l-pop3")})
	e.putStatus(t, mail2, proto.AgentStatus{Escalations: esc(3000, 20, "l-pop3")})
	for i := 0; i < 5; i++ {
		e.putStatus(t, mail1, proto.AgentStatus{Escalations: esc(4000+40*i, 20, "l-pop3")})
		e.putStatus(t, mail2, proto.AgentStatus{Escalations: esc(4020+40*i, 20, "l-pop3")})
		if _, err := e.c.ReconcileOnce(ctx); err != nil {
			t.Fatal(err)
		}
	}
	bans, _ = e.c.Ledger.Bans(ctx, e.c.Now())
	if len(bans) != MaxEscalationsPerMinute {
		t.Fatalf("%d escalation bans within a minute, want the cap %d", len(bans), MaxEscalationsPerMinute)
	}
}

// Without escalate_fleet, one instance's escalations ban only on that instance: a compromised
// instance reporting real clients' addresses cannot ban them fleet-wide, nor spend the fleet's
// budget. A second instance reporting the same source takes it fleet-wide.
func TestEscalationNeedsASecondReporter(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	mail1 := e.launch(t, "mail1", map[string]string{"Role": "mail"})
	mail2 := e.launch(t, "mail2", map[string]string{"Role": "mail"})
	if _, err := e.c.Limit(ctx, LimitRequest{Limit: proto.Limit{ID: "l-pop3", Proto: "tcp", Ports: []int{110}, Hits: 5, Seconds: 60, Escalate: true}, Target: "Role=mail"}); err != nil {
		t.Fatal(err)
	}
	now := e.c.Now()
	var flood []proto.Escalation
	for i := 0; i < 40; i++ {
		flood = append(flood, proto.Escalation{Addr: fmt.Sprintf("198.51.100.%d", i+1), LimitID: "l-pop3", Seen: now})
	}
	e.putStatus(t, mail1, proto.AgentStatus{Escalations: flood})
	rep, err := e.c.ReconcileOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Escalated) != 0 || len(rep.EscalatedLocal) != MaxEscalationsPerInstance {
		t.Fatalf("one reporter: fleet %v, local %d", rep.Escalated, len(rep.EscalatedLocal))
	}
	bans, _ := e.c.Ledger.Bans(ctx, e.c.Now())
	for _, b := range bans {
		if b.Target != "instance-id="+mail1 {
			t.Fatalf("one reporter's escalation banned on %s", b.Target)
		}
	}
	sts, _, _ := e.c.Status(ctx, "Role=mail")
	for _, st := range sts {
		if st.ID == mail2 && st.WantBans != 0 {
			t.Fatalf("the other instance wants %d bans", st.WantBans)
		}
	}
	// mail2 reports one of them: it goes fleet-wide.
	e.putStatus(t, mail2, proto.AgentStatus{Escalations: flood[:1]})
	rep, err = e.c.ReconcileOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Escalated) != 1 || rep.Escalated[0] != "198.51.100.1/32" {
		t.Fatalf("second reporter: fleet %v (refused %v)", rep.Escalated, rep.Refused)
	}
}

// An agent that stopped heartbeating gets no syncs, however many passes run.
func TestSilentAgentGetsNoSyncStorm(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	id := e.launch(t, "mail1", map[string]string{"Role": "mail"})
	if _, err := e.c.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if msgs := e.drain(t, id); len(msgs) != 1 || msgs[0].To != id {
		t.Fatalf("first sync %+v", msgs)
	}
	e.putStatus(t, id, proto.AgentStatus{AppliedRev: 1, Digest: "old"}) // then the agent dies
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"198.51.100.7"}, Target: "Role=mail", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	// While its heartbeat is recent it looks lagging and gets one sync, not one per pass (it never
	// answers it); once the heartbeat is older than SilentAfter, ten more passes queue nothing.
	synced := 0
	for i := 0; i < 11; i++ {
		e.advance(time.Minute)
		rep, err := e.c.ReconcileOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		synced += len(rep.Synced)
	}
	if synced > 1 {
		t.Fatalf("%d syncs for an agent that answers none", synced)
	}
	e.drain(t, id)
	for i := 0; i < 10; i++ {
		e.advance(time.Minute)
		rep, err := e.c.ReconcileOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Synced) != 0 || len(rep.Silent) != 1 {
			t.Fatalf("pass %d: synced %v, silent %v", i, rep.Synced, rep.Silent)
		}
	}
	if msgs := e.drain(t, id); len(msgs) != 0 {
		t.Fatalf("%d messages queued for a dead agent", len(msgs))
	}
	// It comes back: a fresh heartbeat with the old digest gets one sync.
	synced = 0
	for i := 0; i < 3; i++ {
		e.putStatus(t, id, proto.AgentStatus{AppliedRev: 1, Digest: "old"})
		rep, err := e.c.ReconcileOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		synced += len(rep.Synced)
		e.advance(10 * time.Second)
	}
	if synced != 1 {
		t.Fatalf("the returning agent got %d syncs, want 1", synced)
	}
}

func TestOldVersionsMarked(t *testing.T) {
	sts := []InstanceStatus{{Version: "v1.4.0"}, {Version: "v1.3.9-2-gabc"}, {Version: "1.4.0"}, {Version: "dev"}, {}}
	markOldVersions(sts)
	got := fmt.Sprint(sts[0].OldVersion, sts[1].OldVersion, sts[2].OldVersion, sts[3].OldVersion, sts[4].OldVersion)
	if got != "false true false true false" {
		t.Fatalf("old = %s", got)
	}
	dev := []InstanceStatus{{Version: "abc123"}, {Version: "abc123"}, {Version: "def456"}}
	markOldVersions(dev)
	if dev[0].OldVersion || !dev[2].OldVersion {
		t.Fatalf("unreleased versions: %+v", dev)
	}
}

// With the agent role's id configured, each queue admits only its own instance's session.
func TestQueuePolicyAdmitsOnlyItsInstance(t *testing.T) {
	e := newEnv(t)
	e.c.Queues.AgentRoleID = "AROAEXAMPLEAGENT"
	id := e.launch(t, "mail1", map[string]string{"Role": "mail"})
	if _, err := e.c.ReconcileOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	url, err := e.c.Queues.URL(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.clients.SQS.GetQueueAttributes(t.Context(), &sqs.GetQueueAttributesInput{QueueUrl: aws.String(url), AttributeNames: []sqstypes.QueueAttributeName{"Policy"}})
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Statement []struct {
			Effect    string
			Action    []string
			Condition map[string]map[string]string
		}
	}
	if err := json.Unmarshal([]byte(out.Attributes["Policy"]), &doc); err != nil {
		t.Fatalf("policy %q: %v", out.Attributes["Policy"], err)
	}
	st := doc.Statement[0]
	if st.Effect != "Deny" || !slices.Contains(st.Action, "sqs:ReceiveMessage") ||
		st.Condition["StringNotEquals"]["aws:userid"] != "AROAEXAMPLEAGENT:"+id || st.Condition["StringLike"]["aws:userid"] != "AROAEXAMPLEAGENT:*" {
		t.Fatalf("queue policy %+v", doc)
	}
}

// A sync's parts, with their signature attributes, stay under SQS's message size (the emulator
// refuses bigger messages, as SQS does).
func TestSyncPartsFitSQSMessageSize(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.launch(t, "mail1", map[string]string{"Role": "mail"})
	var cidrs []string
	for i := 0; i < 6000; i++ {
		cidrs = append(cidrs, fmt.Sprintf("100.%d.%d.%d", 64+i>>16, (i>>8)&255, i&255))
	}
	// Reasons that do not compress (parts are gzipped), so the sync needs several parts.
	for i := 0; i < len(cidrs); i += 500 {
		noise := make([]byte, 150)
		rand.Read(noise)
		reason := base64.StdEncoding.EncodeToString(noise)
		if _, err := e.c.Ban(ctx, BanRequest{CIDRs: cidrs[i : i+500], Target: "Role=mail", TTL: time.Hour, Reason: reason}); err != nil {
			t.Fatal(err)
		}
	}
	late := e.launch(t, "mail2", map[string]string{"Role": "mail"})
	rep, err := e.c.ReconcileOnce(ctx)
	if err != nil {
		t.Fatalf("reconcile (a part over the limit is refused): %v", err)
	}
	if !slices.Contains(rep.Synced, late) {
		t.Fatalf("synced %v", rep.Synced)
	}
	msgs := e.drain(t, late)
	total := 0
	for _, m := range msgs {
		total += len(m.Bans)
	}
	if len(msgs) < 2 || total != 6000 {
		t.Fatalf("%d parts holding %d bans", len(msgs), total)
	}
}

// The hot paths read by key: no table scan in a reconcile pass, `status` or `--wait`.
func TestNoScansOnHotPaths(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	id := e.launch(t, "mail1", map[string]string{"Role": "mail"})
	res, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"198.51.100.9"}, Target: "Role=mail", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	e.putStatus(t, id, proto.AgentStatus{AppliedRev: res.Rev})
	e.aws.ResetOps()
	if _, err := e.c.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.c.Status(ctx, "*"); err != nil {
		t.Fatal(err)
	}
	if pending, err := e.c.Wait(ctx, []string{id}, res.Rev, nil); err != nil || len(pending) > 0 {
		t.Fatalf("wait: %v %v", pending, err)
	}
	ops := e.aws.Ops()
	if ops["dynamodb:Scan"] != 0 || ops["dynamodb:BatchGetItem"] == 0 {
		t.Fatalf("operations: %v", ops)
	}
}

// A controller without the agent role id (the operator's CLI) reads it from the ledger, where the
// stack's Lambda recorded it, and finds statuses keyed by the agents' IAM principal.
func TestAgentRoleIDFromTheLedger(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	id := e.launch(t, "mail1", map[string]string{"Role": "mail"})
	e.c.AgentRoleID = "AROAEXAMPLEAGENT"
	if _, err := e.c.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	e.putStatus(t, "AROAEXAMPLEAGENT:"+id, proto.AgentStatus{InstanceID: id, AppliedRev: 9})
	cli, err := New(Config{EC2: e.clients.EC2, SQS: e.clients.SQS, DDB: e.clients.DynamoDB, Table: e.c.Table, Prefix: e.c.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	got, err := cli.Ledger.Statuses(ctx, []string{id})
	if err != nil || got[id].AppliedRev != 9 {
		t.Fatalf("statuses %v %v", got, err)
	}
}

// `bansshee list` reads only what it prints: the bans in force (tombstones filtered by DynamoDB),
// CIDR and target from the sort key. What it gets is the full read's active bans, field for field.
func TestBansToList(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.launch(t, "mail1", map[string]string{"Role": "mail"})
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"198.51.100.9", "198.51.100.10"}, Target: "Role=mail", TTL: time.Hour, Reason: "why", Source: "cli"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"2001:db8::/64"}, Target: "Role in (mail,web),Env!=dev", Reason: "permanent", Source: "lambda"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Unban(ctx, []string{"198.51.100.10"}); err != nil {
		t.Fatal(err)
	}
	full, err := e.c.Ledger.Bans(ctx, e.c.Now())
	if err != nil {
		t.Fatal(err)
	}
	list, err := e.c.Ledger.BansToList(ctx, e.c.Now())
	if err != nil {
		t.Fatal(err)
	}
	var active []BanItem
	for _, b := range full {
		if b.Active(e.c.Now()) {
			active = append(active, b)
		}
	}
	byKey := func(b []BanItem) { sort.Slice(b, func(i, j int) bool { return b[i].SK < b[j].SK }) }
	byKey(active)
	byKey(list)
	if len(full) != 3 || len(active) != 2 || len(list) != 2 {
		t.Fatalf("full %d (active %d), list %d: want 3, 2, 2 (the tombstone is not listed)", len(full), len(active), len(list))
	}
	for i := range active {
		f, l := active[i], list[i]
		if f.CIDR != l.CIDR || f.Target != l.Target || f.Reason != l.Reason || f.Source != l.Source || f.Rev != l.Rev || f.ExpiresAt != l.ExpiresAt || !l.Active(e.c.Now()) {
			t.Fatalf("full %+v, list %+v", f, l)
		}
	}
}

// An agent that reports the first kind of digest predates compressed syncs: it gets plain parts
// (and is judged by the first kind), so the controller can be upgraded before the agents. An agent
// that reports the second kind gets bans_z.
func TestSyncsCompressedOnlyForAgentsThatTakeThem(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.c.LagGrace = time.Nanosecond
	oldID := e.launch(t, "old", map[string]string{"Role": "mail"})
	newID := e.launch(t, "new", map[string]string{"Role": "mail"})
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: docAddrs(50, 0), Target: "Role=mail", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	e.drain(t, oldID)
	e.drain(t, newID)
	e.putStatus(t, oldID, proto.AgentStatus{AppliedRev: 1, Digest: proto.Digest(nil, nil), Heartbeat: e.c.Now().Add(time.Second)})
	e.putStatus(t, newID, proto.AgentStatus{AppliedRev: 1, Digest: proto.DigestV2(nil, nil), Heartbeat: e.c.Now().Add(time.Second)})
	e.advance(2 * time.Second)
	if _, err := e.c.ReconcileOnce(ctx); err != nil { // they are seen lagging
		t.Fatal(err)
	}
	e.advance(time.Second)
	rep, err := e.c.ReconcileOnce(ctx) // past the lag grace
	if err != nil || len(rep.Synced) != 2 {
		t.Fatalf("both lag: %v %+v", err, rep.Synced)
	}
	for id, wantZ := range map[string]bool{oldID: false, newID: true} {
		url, _ := e.c.Queues.URL(ctx, id)
		r, err := e.clients.SQS.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(url), MaxNumberOfMessages: 1})
		if err != nil || len(r.Messages) != 1 {
			t.Fatalf("%s: %v %d messages", id, err, len(r.Messages))
		}
		if got := strings.Contains(aws.ToString(r.Messages[0].Body), `"bans_z"`); got != wantZ {
			t.Fatalf("%s: compressed=%v, want %v", id, got, wantZ)
		}
	}
	// An old agent that holds the state is converged by the first kind of digest.
	view, _ := e.c.readLedger(ctx)
	d := view.forTags(map[string]string{"Role": "mail", "bansshee:managed": "true"}, e.c.Now())
	e.putStatus(t, oldID, proto.AgentStatus{AppliedRev: 100, Digest: proto.Digest(d.bans, d.limits)})
	rep, err = e.c.ReconcileOnce(ctx)
	if err != nil || rep.Fleet.Lagging != 1 || slices.Contains(rep.Synced, oldID) {
		t.Fatalf("old agent holding the state: %v synced %v, %d lagging", err, rep.Synced, rep.Fleet.Lagging)
	}
}
