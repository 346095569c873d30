package controller

import (
	"fmt"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/bansshee/bansshee/internal/awstest"
	"github.com/bansshee/bansshee/proto"
)

// BenchmarkSelectorMatch: one client-side evaluation, done per instance per fan-out.
func BenchmarkSelectorMatch(b *testing.B) {
	sel, err := ParseSelector("Role in (mail,web),Env!=dev,has(Team)")
	if err != nil {
		b.Fatal(err)
	}
	tags := map[string]string{"Role": "mail", "Env": "prod", "Team": "ops", "Name": "mail-1", "bansshee:managed": "true"}
	b.ReportAllocs()
	for b.Loop() {
		if !sel.Match(tags) {
			b.Fatal("no match")
		}
	}
}

// BenchmarkFanout: one ban signed and sent to 1 000 instance queues on the embedded emulator
// (client and emulator share the machine's CPU, as in `bansshee-bench fleet`).
func BenchmarkFanout(b *testing.B) {
	e, clients := awstest.New(b)
	signer, err := proto.GenerateKey("k1")
	if err != nil {
		b.Fatal(err)
	}
	c, err := New(Config{AgentRoleID: TestAgentRoleID, EC2: clients.EC2, SQS: clients.SQS, DDB: clients.DynamoDB, Signer: signer, Table: awstest.Unique("bansshee"), Prefix: awstest.Unique("bansshee"), Concurrency: 128})
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	if err := c.Ledger.CreateTable(ctx); err != nil {
		b.Fatal(err)
	}
	const n = 1000
	for left := n; left > 0; left -= 100 {
		if _, err := clients.EC2.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String("ami-0bench"), MinCount: aws.Int32(100), MaxCount: aws.Int32(100),
			TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: []ec2types.Tag{
				{Key: aws.String("bansshee:managed"), Value: aws.String("true")}, {Key: aws.String("Role"), Value: aws.String("mail")}}}}}); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := c.ReconcileOnce(ctx); err != nil {
		b.Fatal(err)
	}
	_ = e
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		res, err := c.Ban(ctx, BanRequest{CIDRs: []string{fmt.Sprintf("198.51.%d.%d", i>>8&255, i&255)}, Target: "Role=mail", TTL: time.Hour, Reason: "bench"})
		if err != nil || len(res.Instances) != n || len(res.Failed()) > 0 {
			b.Fatalf("ban: %v", err)
		}
	}
}
