package controller

import (
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// Bans are spread over BanShards partitions; bans a controller wrote before the split (partition
// "ban") are still read, listed, synced and unbanned, so an upgrade loses none.
func TestBansAcrossPartitionsAndLegacy(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.launch(t, "mail1", map[string]string{"Role": "mail"})
	cidrs := docAddrs(200, 0)
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: cidrs, Target: "Role=mail", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	legacy := BanItem{PK: legacyBanPK, SK: "203.0.113.7/32|Role=mail", Rev: 1, Reason: "before the split"}
	item, err := attributevalue.MarshalMap(legacy)
	if err != nil {
		t.Fatal(err)
	}
	// As earlier controllers wrote it: CIDR and target as attributes of their own, deleted=false.
	item["cidr"] = &ddbtypes.AttributeValueMemberS{Value: "203.0.113.7/32"}
	item["target"] = &ddbtypes.AttributeValueMemberS{Value: "Role=mail"}
	item["deleted"] = &ddbtypes.AttributeValueMemberBOOL{Value: false}
	if _, err := e.clients.DynamoDB.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(e.c.Table), Item: item}); err != nil {
		t.Fatal(err)
	}
	pks := map[string]bool{}
	for _, read := range []func() ([]BanItem, error){
		func() ([]BanItem, error) { return e.c.Ledger.Bans(ctx, time.Now()) },
		func() ([]BanItem, error) { return e.c.Ledger.BansToList(ctx, time.Now()) },
	} {
		bans, err := read()
		if err != nil {
			t.Fatal(err)
		}
		if len(bans) != 201 {
			t.Fatalf("read %d bans, want 200 and the legacy one", len(bans))
		}
		for _, b := range bans {
			pks[b.PK] = true
			if b.SK != b.CIDR+"|"+b.Target || b.Target != "Role=mail" || !b.Active(time.Now()) {
				t.Fatalf("ban read as %+v", b)
			}
		}
	}
	if len(pks) < BanShards/2 || !pks[legacyBanPK] {
		t.Fatalf("bans in partitions %v", pks)
	}
	view, err := e.c.readLedger(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := view.forTags(map[string]string{"Role": "mail", "bansshee:managed": "true"}, time.Now()); len(d.bans) != 201 {
		t.Fatalf("desired state has %d bans", len(d.bans))
	}
	for _, c := range []string{"203.0.113.7", cidrs[5]} {
		res, err := e.c.Unban(ctx, []string{c})
		if err != nil || res.Written != 1 {
			t.Fatalf("unban %s: %v %+v", c, err, res)
		}
	}
	bans, _ := e.c.Ledger.Bans(ctx, time.Now())
	active := 0
	for _, b := range bans {
		if b.Active(time.Now()) {
			active++
		}
	}
	if active != 199 {
		t.Fatalf("%d active after two unbans, want 199", active)
	}
}
