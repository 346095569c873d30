package main

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/internal/awstest"
	"github.com/bansshee/bansshee/proto"
)

// fanoutRig is a controller against the in-process emulator with n managed instances, their
// queues made by one reconcile pass (not measured).
func fanoutRig(ctx context.Context, n int, role string) (*controller.Controller, *awstest.Env, error) {
	env, err := awstest.Start()
	if err != nil {
		return nil, nil, err
	}
	clients := awstest.NewClients(env.Config(""))
	signer, _ := proto.GenerateKey("bench")
	c, err := controller.New(controller.Config{AgentRoleID: "AROABENCHAGENTROLE", EC2: clients.EC2, SQS: clients.SQS, DDB: clients.DynamoDB, Signer: signer,
		Table: awstest.Unique("bansshee"), Prefix: awstest.Unique("bansshee")})
	if err != nil {
		env.Close()
		return nil, nil, err
	}
	if err := c.Ledger.CreateTable(ctx); err != nil {
		env.Close()
		return nil, nil, err
	}
	for left := n; left > 0; left -= 100 {
		count := min(left, 100)
		_, err := clients.EC2.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String("ami-0bench"), MinCount: aws.Int32(int32(count)), MaxCount: aws.Int32(int32(count)),
			TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: []ec2types.Tag{
				{Key: aws.String("bansshee:managed"), Value: aws.String("true")}, {Key: aws.String("Role"), Value: aws.String(role)}}}}})
		if err != nil {
			env.Close()
			return nil, nil, err
		}
	}
	if _, err := c.ReconcileOnce(ctx); err != nil {
		env.Close()
		return nil, nil, err
	}
	return c, env, nil
}

func runFanout(ctx context.Context, emit func(Row)) error {
	c, env, err := fanoutRig(ctx, 1000, "mail")
	if err != nil {
		return err
	}
	start := time.Now()
	res, err := c.Ban(ctx, controller.BanRequest{CIDRs: []string{"198.51.100.7"}, Target: "Role=mail", TTL: time.Hour, Reason: "bench"})
	d := time.Since(start)
	env.Close()
	if err != nil {
		return err
	}
	if len(res.Instances) != 1000 || len(res.Failed()) > 0 {
		return fmt.Errorf("delivered to %d of 1000 (%d failed)", len(res.Instances)-len(res.Failed()), len(res.Failed()))
	}
	emit(Row{"fanout", "1ban-1000queues", "seconds", d.Seconds(), "s"})

	c, env, err = fanoutRig(ctx, 50, "web")
	if err != nil {
		return err
	}
	defer env.Close()
	cidrs := make([]string, 1000)
	for i := range cidrs {
		cidrs[i] = fmt.Sprintf("100.%d.%d.%d", 64+i>>16, (i>>8)&255, i&255)
	}
	start = time.Now()
	res, err = c.Ban(ctx, controller.BanRequest{CIDRs: cidrs, Target: "Role=web", TTL: time.Hour, Reason: "bench"})
	d = time.Since(start)
	if err != nil {
		return err
	}
	if res.Written != 1000 || len(res.Instances) != 50 || len(res.Failed()) > 0 {
		return fmt.Errorf("wrote %d bans to %d instances (%d failed)", res.Written, len(res.Instances), len(res.Failed()))
	}
	emit(Row{"fanout", "1000bans-50queues", "seconds", d.Seconds(), "s"})
	return nil
}
