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

// BenchmarkFilterPolicies: what the allow entries and holds add to the triggers' check of one
// address (FilterCIDRs, before every trigger's ban), at 15 ms per AWS request, with the 10 s cache
// (cached) and without it (a read of both partitions per check).
func BenchmarkFilterPolicies(b *testing.B) {
	e, clients := awstest.New(b)
	c, err := New(Config{EC2: clients.EC2, SQS: clients.SQS, DDB: clients.DynamoDB, Table: awstest.Unique("bansshee"), Prefix: awstest.Unique("bansshee")})
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	if err := c.Ledger.CreateTable(ctx); err != nil {
		b.Fatal(err)
	}
	for i := range 20 {
		it := PolicyItem{PK: allowPK, SK: fmt.Sprintf("203.0.%d.0/24", i), Reason: "bench", Rev: int64(i + 1)}
		if err := c.Ledger.putPolicy(ctx, it); err != nil {
			b.Fatal(err)
		}
	}
	if _, _, err := c.FilterCIDRs(ctx, []string{"192.0.2.1"}); err != nil { // VPC CIDRs cached
		b.Fatal(err)
	}
	e.SetLatency(15 * time.Millisecond)
	for _, cached := range []bool{true, false} {
		b.Run(fmt.Sprintf("cached=%v", cached), func(b *testing.B) {
			c.PolicyCache = time.Nanosecond
			if cached {
				c.PolicyCache = 10 * time.Second
			}
			for b.Loop() {
				if _, refused, err := c.FilterCIDRs(ctx, []string{"192.0.2.1", "203.0.7.9"}); err != nil || len(refused) != 1 {
					b.Fatalf("filter: %v %v", refused, err)
				}
			}
		})
	}
}
