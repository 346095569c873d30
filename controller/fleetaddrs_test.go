package controller

import (
	"errors"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

// The fleet's own public addresses cannot be banned (issue 22, finding 10): an instance's public
// IPv4, an Elastic IP, a NAT gateway's address, by an operator or a feed.
func TestFleetPublicAddressesAreAllowlisted(t *testing.T) {
	e, fs := feedEnv(t)
	ctx := t.Context()
	id := e.launch(t, "mail1", map[string]string{"Role": "mail"})
	// An instance that bansshee does not manage still has the fleet's address.
	unmanaged, err := e.clients.EC2.RunInstances(ctx, &ec2.RunInstancesInput{MinCount: aws.Int32(1), MaxCount: aws.Int32(1), ImageId: aws.String("ami-0")})
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.clients.EC2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		t.Fatal(err)
	}
	instancePub := aws.ToString(out.Reservations[0].Instances[0].PublicIpAddress)
	eip, err := e.clients.EC2.AllocateAddress(ctx, &ec2.AllocateAddressInput{})
	if err != nil {
		t.Fatal(err)
	}
	natEIP, err := e.clients.EC2.AllocateAddress(ctx, &ec2.AllocateAddressInput{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.clients.EC2.CreateNatGateway(ctx, &ec2.CreateNatGatewayInput{SubnetId: aws.String("subnet-0b5a55hee000001"), AllocationId: natEIP.AllocationId}); err != nil {
		t.Fatal(err)
	}
	fleet := map[string]string{
		"instance":       instancePub,
		"unmanaged":      aws.ToString(unmanaged.Instances[0].PublicIpAddress),
		"elastic IP":     aws.ToString(eip.PublicIp),
		"NAT gateway":    aws.ToString(natEIP.PublicIp),
		"instance's /24": strings.Join(strings.Split(instancePub, ".")[:3], ".") + ".0/24",
	}
	for what, addr := range fleet {
		if addr == "" || addr == ".0/24" {
			t.Fatalf("%s has no public address in the emulator", what)
		}
		_, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{addr}})
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "public address of the fleet") {
			t.Errorf("ban of the %s (%s): %v", what, addr, err)
		}
	}
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"198.51.100.77"}}); err != nil {
		t.Fatalf("an address outside the fleet: %v", err)
	}
	// A feed listing them: dropped and reported, the rest applied.
	var list []string
	for _, a := range fleet {
		list = append(list, a)
	}
	fs.set(strings.Join(append(list, "198.51.100.88"), "\n"), "")
	if _, err := e.c.AddFeed(ctx, FeedSpec{Name: "drop", URL: fs.URL + "/drop.txt", Target: "Role=mail"}); err != nil {
		t.Fatal(err)
	}
	rep, err := e.c.SyncFeed(ctx, "drop", FeedOptions{})
	if err != nil || rep.Entries != 1 || len(rep.Dropped) != len(fleet) {
		t.Fatalf("feed: %v %s, dropped %q", err, rep, rep.Dropped)
	}
}
