package controller

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/bansshee/bansshee/proto"
)

// cold is a controller as a new process (the CLI, a cold Lambda) builds it: same ledger and
// queues, nothing cached.
func (e *env) cold(t *testing.T) *Controller {
	t.Helper()
	cfg := e.c.Config
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (e *env) reconcile(t *testing.T) *Report {
	t.Helper()
	rep, err := e.c.ReconcileOnce(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// banned reports whether the last message of id's queue bans cidr.
func (e *env) gotBan(t *testing.T, id, cidr string) bool {
	t.Helper()
	for _, m := range e.drain(t, id) {
		if m.Kind == proto.KindBan {
			for _, b := range m.Bans {
				if b.CIDR == cidr {
					return true
				}
			}
		}
	}
	return false
}

func inventoryParts(t *testing.T, e *env) []map[string]ddbtypes.AttributeValue {
	t.Helper()
	out, err := e.clients.DynamoDB.Query(t.Context(), &dynamodb.QueryInput{TableName: aws.String(e.c.Table), ConsistentRead: aws.Bool(true),
		KeyConditionExpression:    aws.String("pk = :pk AND begins_with(sk, :p)"),
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":pk": s(inventoryPK), ":p": s("part#")}})
	if err != nil {
		t.Fatal(err)
	}
	return out.Items
}

// A ban from a new process takes its targets and their queues from the reconciler's inventory:
// no DescribeInstances page and no GetQueueUrl per instance, and every instance gets it.
func TestBanFromInventoryAsksEC2AndSQSNothing(t *testing.T) {
	e := newEnv(t)
	e.fleet6(t)
	e.reconcile(t)
	for _, id := range e.ids {
		e.drain(t, id)
	}
	c := e.cold(t)
	// The allowlist's own reads (VPCs, the fleet's public addresses) are not what is measured:
	// warm them, as a Lambda's earlier invocation would.
	if _, err := c.Allowlist(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.FleetAddresses(t.Context()); err != nil {
		t.Fatal(err)
	}
	e.aws.ResetOps()
	res, err := c.Ban(t.Context(), BanRequest{CIDRs: []string{"203.0.113.9"}, Target: "Role=mail", TTL: time.Hour, Reason: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ops := e.aws.Ops()
	if ops["ec2:DescribeInstances"] != 0 || ops["sqs:GetQueueUrl"] != 0 {
		t.Fatalf("a ban with a fresh inventory asked EC2 or SQS for its targets: %v", ops)
	}
	if len(res.Instances) != 4 || len(res.Failed()) != 0 {
		t.Fatalf("ban reached %v, want the 4 mail instances", res.Instances)
	}
	for _, name := range []string{"mail1", "mail2", "mail3", "maildev"} {
		if !e.gotBan(t, e.ids[name], "203.0.113.9/32") {
			t.Fatalf("%s did not get the ban", name)
		}
	}
	if e.gotBan(t, e.ids["web1"], "203.0.113.9/32") {
		t.Fatal("web1 got a ban for Role=mail")
	}
	fs, err := c.FleetStatus(t.Context(), "*", false)
	if err != nil {
		t.Fatal(err)
	}
	if fs.InventoryAt.IsZero() || len(fs.Instances) != 6 {
		t.Fatalf("status: %d instances, inventory at %v; want 6 from the inventory", len(fs.Instances), fs.InventoryAt)
	}
	live, err := c.FleetStatus(t.Context(), "*", true)
	if err != nil {
		t.Fatal(err)
	}
	if !live.InventoryAt.IsZero() || len(live.Instances) != 6 {
		t.Fatalf("status --live: %d instances, inventory at %v", len(live.Instances), live.InventoryAt)
	}
}

// An inventory older than its maximum age (the reconciler stopped), or none at all, is not
// used: the ban discovers, and still reaches an instance launched since the last pass.
func TestStaleInventoryFallsBackToDiscovery(t *testing.T) {
	e := newEnv(t)
	e.fleet6(t)
	e.reconcile(t)
	late := e.launch(t, "mail4", map[string]string{"Role": "mail"})
	e.advance(DefaultInventoryMaxAge + time.Second)
	c := e.cold(t)
	e.aws.ResetOps()
	res, err := c.Ban(t.Context(), BanRequest{CIDRs: []string{"203.0.113.10"}, Target: "Role=mail", TTL: time.Hour, Reason: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if e.aws.Ops()["ec2:DescribeInstances"] == 0 {
		t.Fatal("a stale inventory was used")
	}
	if len(res.Instances) != 5 || !e.gotBan(t, late, "203.0.113.10/32") {
		t.Fatalf("ban reached %v; the instance launched since the pass should be among them", res.Instances)
	}
	// Negative max age: never the inventory, however fresh.
	e.reconcile(t)
	c = e.cold(t)
	c.InventoryMaxAge = -1
	e.aws.ResetOps()
	if _, err := c.Ban(t.Context(), BanRequest{CIDRs: []string{"203.0.113.11"}, Target: "Role=mail", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if e.aws.Ops()["ec2:DescribeInstances"] == 0 {
		t.Fatal("InventoryMaxAge < 0 used the inventory")
	}
}

// What the inventory misses (an instance launched since the last pass, a tag changed) the next
// pass repairs: the new instance's first sync, the retagged one's digest check.
func TestInventoryMissIsRepairedByTheNextPass(t *testing.T) {
	e := newEnv(t)
	e.fleet6(t)
	e.reconcile(t)
	late := e.launch(t, "mail4", map[string]string{"Role": "mail"})
	c := e.cold(t)
	res, err := c.Ban(t.Context(), BanRequest{CIDRs: []string{"203.0.113.12"}, Target: "Role=mail", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Instances) != 4 {
		t.Fatalf("ban from the inventory reached %d instances, want the 4 it lists", len(res.Instances))
	}
	rep := e.reconcile(t)
	found := false
	for _, id := range rep.Synced {
		found = found || id == late
	}
	if !found {
		t.Fatalf("the next pass did not sync %s (synced %v)", late, rep.Synced)
	}
	var sync *proto.Message
	for _, m := range e.drain(t, late) {
		if m.Kind == proto.KindSync {
			sync = m
		}
	}
	if sync == nil || !strings.Contains(fmt.Sprint(sync.Bans), "203.0.113.12/32") {
		t.Fatalf("the new instance's first sync lacks the ban: %+v", sync)
	}
}

// A damaged inventory (a part gone, a part rewritten) is never used: its digest does not match,
// and the reader discovers instead, without an error.
func TestDamagedInventoryIsNotUsed(t *testing.T) {
	for _, damage := range []string{"part deleted", "part rewritten"} {
		t.Run(damage, func(t *testing.T) {
			e := newEnv(t)
			e.fleet6(t)
			e.reconcile(t)
			parts := inventoryParts(t, e)
			if len(parts) != 1 {
				t.Fatalf("%d parts for six instances", len(parts))
			}
			key := map[string]ddbtypes.AttributeValue{"pk": parts[0]["pk"], "sk": parts[0]["sk"]}
			var err error
			if damage == "part deleted" {
				_, err = e.clients.DynamoDB.DeleteItem(t.Context(), &dynamodb.DeleteItemInput{TableName: aws.String(e.c.Table), Key: key})
			} else {
				// A valid gzip of another fleet: only the digest can tell.
				forged, _, ferr := encodeInventory([]Instance{{ID: "i-0forged", Tags: map[string]string{"Role": "mail", "bansshee:managed": "true"}}}, nil, nil, nil, e.c.Queues.QueueName)
				if ferr != nil {
					t.Fatal(ferr)
				}
				key["data"] = &ddbtypes.AttributeValueMemberB{Value: forged[0]}
				_, err = e.clients.DynamoDB.PutItem(t.Context(), &dynamodb.PutItemInput{TableName: aws.String(e.c.Table), Item: key})
			}
			if err != nil {
				t.Fatal(err)
			}
			inv, err := e.c.Ledger.ReadInventory(t.Context())
			if err != nil || inv != nil {
				t.Fatalf("damaged inventory read as %v, %v; want nil, nil", inv, err)
			}
			res, err := e.cold(t).Ban(t.Context(), BanRequest{CIDRs: []string{"203.0.113.13"}, Target: "Role=mail", TTL: time.Hour})
			if err != nil || len(res.Instances) != 4 {
				t.Fatalf("ban after damage: %v, %v", res, err)
			}
		})
	}
}

// A queue URL in the inventory that is not its instance's queue is not used: a damaged or
// forged entry cannot send one instance's messages to another's queue.
func TestInventoryQueueURLMustBeItsInstances(t *testing.T) {
	e := newEnv(t)
	e.fleet6(t)
	e.reconcile(t)
	a, b := e.ids["mail1"], e.ids["web1"]
	ua, err := e.c.Queues.URL(t.Context(), a)
	if err != nil {
		t.Fatal(err)
	}
	ub, err := e.c.Queues.URL(t.Context(), b)
	if err != nil {
		t.Fatal(err)
	}
	ins, err := e.c.Discover(t.Context(), mustParse("*"))
	if err != nil {
		t.Fatal(err)
	}
	urls := map[string]string{}
	for _, in := range ins {
		urls[in.ID], _ = e.c.Queues.URL(t.Context(), in.ID)
	}
	urls[a] = ub // mail1's entry points at web1's queue
	if err := e.c.Ledger.WriteInventory(t.Context(), ins, urls, nil, nil, e.c.Queues.QueueName, e.c.Now()); err != nil {
		t.Fatal(err)
	}
	e.drain(t, b)
	c := e.cold(t)
	e.aws.ResetOps()
	if _, err := c.Ban(t.Context(), BanRequest{CIDRs: []string{"203.0.113.14"}, Target: "Role=mail", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if got := e.aws.Ops()["sqs:GetQueueUrl"]; got != 1 {
		t.Fatalf("GetQueueUrl %d times; want once, for the entry whose URL was refused", got)
	}
	if e.gotBan(t, b, "203.0.113.14/32") {
		t.Fatal("web1's queue got mail1's ban")
	}
	if !strings.HasSuffix(ua, e.c.Queues.QueueName(a)) || !e.gotBan(t, a, "203.0.113.14/32") {
		t.Fatal("mail1 did not get its ban through its own queue")
	}
}

// A pass that finds the same fleet moves only the head's time; a changed fleet is a new
// generation, and the old one's parts are deleted. A fleet larger than one item is split, and
// read back whole.
func TestInventoryWrites(t *testing.T) {
	e := newEnv(t)
	e.fleet6(t)
	e.reconcile(t)
	first := inventoryParts(t, e)
	e.aws.ResetOps()
	e.advance(time.Minute)
	e.reconcile(t)
	if got := inventoryParts(t, e); len(got) != 1 || got[0]["sk"].(*ddbtypes.AttributeValueMemberS).Value != first[0]["sk"].(*ddbtypes.AttributeValueMemberS).Value {
		t.Fatalf("an unchanged fleet rewrote its parts: %v -> %v", first, got)
	}
	inv, err := e.c.Ledger.ReadInventory(t.Context())
	if err != nil || inv == nil || !inv.At.Equal(e.c.Now().UTC()) {
		t.Fatalf("head not moved to the pass's time: %+v, %v", inv, err)
	}
	e.launch(t, "mail4", map[string]string{"Role": "mail"})
	e.reconcile(t)
	if got := inventoryParts(t, e); len(got) != 1 || got[0]["sk"].(*ddbtypes.AttributeValueMemberS).Value == first[0]["sk"].(*ddbtypes.AttributeValueMemberS).Value {
		t.Fatalf("a changed fleet: parts %v", got)
	}
	if inv, _ = e.c.Ledger.ReadInventory(t.Context()); inv == nil || len(inv.Instances) != 7 {
		t.Fatalf("inventory after a launch: %+v", inv)
	}

	// 20 000 instances with tags that do not compress: several parts, read back whole.
	big := make([]Instance, 20000)
	urls := map[string]string{}
	for i := range big {
		id := fmt.Sprintf("i-%017x", i*7919+1)
		big[i] = Instance{ID: id, PrivateIP: fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255),
			Tags: map[string]string{"bansshee:managed": "true", "Role": "mail", "Name": fmt.Sprintf("n%x", uint64(i)*0x9e3779b97f4a7c15)}}
		urls[id] = "https://sqs.example/123/" + e.c.Queues.QueueName(id)
	}
	if err := e.c.Ledger.WriteInventory(t.Context(), big, urls, nil, nil, e.c.Queues.QueueName, e.c.Now()); err != nil {
		t.Fatal(err)
	}
	if n := len(inventoryParts(t, e)); n < 2 {
		t.Fatalf("20 000 instances in %d part(s); want the split exercised", n)
	}
	inv, err = e.c.Ledger.ReadInventory(t.Context())
	if err != nil || inv == nil || len(inv.Instances) != len(big) || inv.queueURL(big[19999].ID, e.c.Queues.QueueName(big[19999].ID)) != urls[big[19999].ID] {
		t.Fatalf("big inventory read back: %v, %v", inv != nil, err)
	}
}

// Status reads, for each agent, only the key it was last found under; an agent that changed
// credentials (its status now under the other key, the old one stale or gone) is still seen.
func TestStatusReadsTheKeyItsAgentUses(t *testing.T) {
	keys := statusKeys([]string{"i-1", "i-2", "i-3"}, map[string]uint8{"i-1": keyFormRole, "i-2": keyFormInstance}, "AROA")
	var got []string
	for _, k := range keys {
		got = append(got, k["pk"].(*ddbtypes.AttributeValueMemberS).Value)
	}
	if fmt.Sprint(got) != "[agent#AROA:i-1 agent#i-2 agent#i-3 agent#AROA:i-3]" {
		t.Fatalf("keys %v", got)
	}
	if keys := statusKeys([]string{"i-1"}, map[string]uint8{"i-1": keyFormRole}, ""); len(keys) != 1 || keys[0]["pk"].(*ddbtypes.AttributeValueMemberS).Value != "agent#i-1" {
		t.Fatalf("without a role id: %v", keys)
	}

	e := newEnv(t)
	e.fleet6(t)
	for _, id := range e.ids {
		e.putStatus(t, TestAgentRoleID+":"+id, proto.AgentStatus{InstanceID: id, Version: "v1"})
	}
	e.reconcile(t)
	inv, err := e.c.Ledger.ReadInventory(t.Context())
	if err != nil || inv == nil {
		t.Fatal(inv, err)
	}
	for name, id := range e.ids {
		if inv.keyForms[id] != keyFormRole {
			t.Fatalf("%s: key form %d recorded, want the role's", name, inv.keyForms[id])
		}
	}
	// mail1's agent moves to its instance id key: its role-keyed status goes silent. mail2's
	// role-keyed status is deleted outright.
	e.advance(e.c.SilentAfter + time.Minute)
	e.putStatus(t, e.ids["mail1"], proto.AgentStatus{Version: "v2"})
	pk, sk := proto.StatusKey(TestAgentRoleID + ":" + e.ids["mail2"])
	if _, err := e.clients.DynamoDB.DeleteItem(t.Context(), &dynamodb.DeleteItemInput{TableName: aws.String(e.c.Table),
		Key: map[string]ddbtypes.AttributeValue{"pk": s(pk), "sk": s(sk)}}); err != nil {
		t.Fatal(err)
	}
	e.putStatus(t, e.ids["mail2"], proto.AgentStatus{Version: "v2"})
	// The inventory is older than its maximum now: write it again as of now, with the key forms
	// the last pass found (all the role's), as a pass before the switch would have.
	forms := map[string]uint8{}
	for _, id := range e.ids {
		forms[id] = keyFormRole
	}
	urls := map[string]string{}
	for _, in := range inv.Instances {
		urls[in.ID] = inv.queueURL(in.ID, e.c.Queues.QueueName(in.ID))
	}
	if err := e.c.Ledger.WriteInventory(t.Context(), inv.Instances, urls, forms, inv.public, e.c.Queues.QueueName, e.c.Now()); err != nil {
		t.Fatal(err)
	}
	c := e.cold(t)
	fs, err := c.FleetStatus(t.Context(), "*", false)
	if err != nil {
		t.Fatal(err)
	}
	if fs.InventoryAt.IsZero() {
		t.Fatal("status did not use the inventory")
	}
	for _, s := range fs.Instances {
		want := "v1"
		if s.ID == e.ids["mail1"] || s.ID == e.ids["mail2"] {
			want = "v2"
		}
		if s.Version != want {
			t.Fatalf("%s: version %q, want %q", s.ID, s.Version, want)
		}
	}
}

// The reconciler reads each agent's status under the key it found last pass; an agent that moved
// to its other key is found once its old heartbeat is older than its keep-alive allows.
func TestReconcilerFollowsAnAgentThatChangedKeys(t *testing.T) {
	e := newEnv(t)
	e.fleet6(t)
	for _, id := range e.ids {
		e.putStatus(t, TestAgentRoleID+":"+id, proto.AgentStatus{InstanceID: id, Version: "v1"})
	}
	e.reconcile(t)
	e.reconcile(t) // hinted from here on
	e.advance(hintStale + time.Minute)
	for name, id := range e.ids {
		if name == "mail1" {
			e.putStatus(t, id, proto.AgentStatus{Version: "v2"}) // its role-keyed status is now stale
		} else {
			e.putStatus(t, TestAgentRoleID+":"+id, proto.AgentStatus{InstanceID: id, Version: "v1"})
		}
	}
	e.reconcile(t)
	e.c.formsMu.Lock()
	forms := e.c.lastForms
	e.c.formsMu.Unlock()
	for name, id := range e.ids {
		want := keyFormRole
		if name == "mail1" {
			want = keyFormInstance
		}
		if forms[id] != want {
			t.Fatalf("%s: key form %d after the pass, want %d", name, forms[id], want)
		}
	}
	fs, err := e.c.FleetStatus(t.Context(), "*", false)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range fs.Instances {
		if s.ID == e.ids["mail1"] && s.Version != "v2" {
			t.Fatalf("mail1: version %q, want v2", s.Version)
		}
	}
}

// A ban from a new process checks the fleet's own public addresses from the inventory, without
// paging every instance, and is still refused for one of them; an inventory without them means
// EC2 is asked.
func TestBanFromNewProcessChecksOwnAddressesFromInventory(t *testing.T) {
	e := newEnv(t)
	e.fleet6(t)
	e.reconcile(t)
	pub, err := e.c.FleetAddresses(t.Context())
	if err != nil || len(pub) == 0 {
		t.Fatalf("the fleet's public addresses: %v, %v (the emulator gives instances public addresses)", pub, err)
	}
	inv, err := e.c.Ledger.ReadInventory(t.Context())
	if err != nil || inv == nil || fmt.Sprint(inv.public) != fmt.Sprint(pub) {
		t.Fatalf("inventory's public addresses %v, want %v (%v)", inv, pub, err)
	}
	c := e.cold(t)
	if _, err := c.Allowlist(t.Context()); err != nil {
		t.Fatal(err)
	}
	e.aws.ResetOps()
	_, err = c.Ban(t.Context(), BanRequest{CIDRs: []string{pub[0].String()}, Target: "Role=mail", TTL: time.Hour})
	if err == nil || !errors.Is(err, ErrRefused) {
		t.Fatalf("a ban of the fleet's own address %s: %v, want refused", pub[0], err)
	}
	if n := e.aws.Ops()["ec2:DescribeInstances"]; n != 0 {
		t.Fatalf("the check paged EC2 %d times with a fresh inventory", n)
	}
	// Without the addresses in the inventory, EC2 is asked, and the ban is still refused.
	if err := e.c.Ledger.WriteInventory(t.Context(), inv.Instances, nil, nil, nil, e.c.Queues.QueueName, e.c.Now()); err != nil {
		t.Fatal(err)
	}
	c = e.cold(t)
	e.aws.ResetOps()
	if _, err := c.Ban(t.Context(), BanRequest{CIDRs: []string{pub[0].String()}, Target: "Role=mail", TTL: time.Hour}); !errors.Is(err, ErrRefused) {
		t.Fatalf("without the inventory's addresses: %v, want refused", err)
	}
	if e.aws.Ops()["ec2:DescribeInstances"] == 0 {
		t.Fatal("no public addresses in the inventory, and EC2 was not asked")
	}
}
