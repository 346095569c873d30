package agent_test

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/internal/awstest"
	"github.com/bansshee/bansshee/internal/fleet"
	"github.com/bansshee/bansshee/internal/netns"
)

// On an instance in eu-west-1 with the documented install (no --region, no --instance-id), the
// agent takes both from the instance metadata service, and every request it makes is signed for
// eu-west-1.
func TestAgentRegionFromIMDS(t *testing.T) {
	if err := netns.Available(); err != nil {
		t.Skipf("SKIP (kernel): %v", err)
	}
	ctx := t.Context()
	table := awstest.Unique("bansshee")
	f, err := fleet.New(ctx, fleet.Options{AgentBin: agentBin, Table: table})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	c, err := controller.New(controller.Config{EC2: f.Clients.EC2, SQS: f.Clients.SQS, DDB: f.Clients.DynamoDB, Table: table,
		Prefix: f.Queues.Prefix, Signer: f.Signer, VisibilityTimeout: 2, AgentRoleID: "AROAEXAMPLEAGENT"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ledger.CreateTable(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := f.AddNode(ctx, map[string]string{"Role": "mail", "bansshee:managed": "true"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	// The instance profile's credentials come from IMDS too; IAM knows their session as
	// "<role id>:<instance id>", and the agent keys its status item by that.
	imds := &awstest.IMDS{InstanceID: n.ID, Region: "eu-west-1", VPC4: []string{"172.31.0.0/16"}, Role: "bansshee-agent", AccessKeyID: "ASIABANSSHEE" + n.ID[2:10]}
	f.Env.SetPrincipal(imds.AccessKeyID, "AROAEXAMPLEAGENT:"+n.ID)
	var ln net.Listener
	if err := f.Lab.Lan.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(f.Lab.LanIP4.String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: imds, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	if err := f.StartAgentOnEC2(n, "http://"+ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	res, err := c.Ban(ctx, controller.BanRequest{CIDRs: []string{f.Attacker.IP4.String()}, Target: "Role=mail", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if pending, err := c.Wait(wctx, []string{n.ID}, res.Rev, nil); err != nil || len(pending) > 0 {
		t.Fatalf("agent did not converge: %v %v\n%s", pending, err, n.Log.String())
	}
	if _, ok := f.WaitReachable(n, f.Attacker.IP4, false, 10*time.Second); !ok {
		t.Fatal("the attacker is not dropped")
	}
	u, _ := url.Parse(f.Endpoint)
	regions := f.Env.Regions(u.Host)
	if regions["eu-west-1"] == 0 || len(regions) != 1 {
		t.Fatalf("agent requests by signing region: %v, want all eu-west-1", regions)
	}
	item, err := f.Clients.DynamoDB.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(table), Key: map[string]ddbtypes.AttributeValue{
		"pk": &ddbtypes.AttributeValueMemberS{Value: "agent#AROAEXAMPLEAGENT:" + n.ID}, "sk": &ddbtypes.AttributeValueMemberS{Value: "status"}}})
	if err != nil || len(item.Item) == 0 {
		t.Fatalf("no status item under the agent's IAM principal (%v)", err)
	}
	if imds.Gets() == 0 || !strings.Contains(n.Log.String(), n.ID) {
		t.Fatalf("the agent did not read its identity from IMDS (%d reads)", imds.Gets())
	}
	t.Logf("agent requests by signing region: %v; IMDS reads: %d", regions, imds.Gets())
}
