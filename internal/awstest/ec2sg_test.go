package awstest

import (
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
)

// Security groups and prefix lists through the real EC2 client: create, authorize (world, IPv6,
// a prefix list), describe, instances in groups, prefix-list entries, and the errors AWS gives.
func TestSecurityGroupsWithTheSDK(t *testing.T) {
	_, c := New(t)
	ctx := t.Context()
	pl, err := c.EC2.CreateManagedPrefixList(ctx, &ec2.CreateManagedPrefixListInput{PrefixListName: aws.String("everyone"), AddressFamily: aws.String("IPv4"),
		MaxEntries: aws.Int32(5), Entries: []ec2types.AddPrefixListEntry{{Cidr: aws.String("0.0.0.0/0"), Description: aws.String("all")}}})
	if err != nil {
		t.Fatal(err)
	}
	plID := aws.ToString(pl.PrefixList.PrefixListId)
	sg, err := c.EC2.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{GroupName: aws.String("web"), Description: aws.String("web")})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(sg.GroupId)
	_, err = c.EC2.AuthorizeSecurityGroupIngress(ctx, &ec2.AuthorizeSecurityGroupIngressInput{GroupId: sg.GroupId, IpPermissions: []ec2types.IpPermission{
		{IpProtocol: aws.String("tcp"), FromPort: aws.Int32(443), ToPort: aws.Int32(443), IpRanges: []ec2types.IpRange{{CidrIp: aws.String("0.0.0.0/0")}}, Ipv6Ranges: []ec2types.Ipv6Range{{CidrIpv6: aws.String("::/0")}}},
		{IpProtocol: aws.String("tcp"), FromPort: aws.Int32(8000), ToPort: aws.Int32(8100), PrefixListIds: []ec2types.PrefixListId{{PrefixListId: aws.String(plID)}}},
		{IpProtocol: aws.String("-1"), IpRanges: []ec2types.IpRange{{CidrIp: aws.String("10.0.0.0/8")}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	inst, err := LaunchInGroups(ctx, c.EC2, map[string]string{"Role": "web"}, id)
	if err != nil {
		t.Fatal(err)
	}
	di, err := c.EC2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{inst}})
	if err != nil || len(di.Reservations[0].Instances[0].SecurityGroups) != 1 || aws.ToString(di.Reservations[0].Instances[0].SecurityGroups[0].GroupId) != id {
		t.Fatalf("instance groups: %+v %v", di, err)
	}
	ds, err := c.EC2.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{GroupIds: []string{id}})
	if err != nil || len(ds.SecurityGroups) != 1 {
		t.Fatalf("describe: %+v %v", ds, err)
	}
	perms := ds.SecurityGroups[0].IpPermissions
	if len(perms) != 3 || aws.ToInt32(perms[0].FromPort) != 443 || aws.ToString(perms[0].Ipv6Ranges[0].CidrIpv6) != "::/0" ||
		aws.ToString(perms[1].PrefixListIds[0].PrefixListId) != plID || aws.ToString(perms[2].IpProtocol) != "-1" || perms[2].FromPort != nil {
		t.Fatalf("permissions %+v", perms)
	}
	en, err := c.EC2.GetManagedPrefixListEntries(ctx, &ec2.GetManagedPrefixListEntriesInput{PrefixListId: aws.String(plID)})
	if err != nil || len(en.Entries) != 1 || aws.ToString(en.Entries[0].Cidr) != "0.0.0.0/0" {
		t.Fatalf("entries %+v %v", en, err)
	}
	var api smithy.APIError
	_, err = c.EC2.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{GroupIds: []string{"sg-0000000000000dead"}})
	if !errors.As(err, &api) || api.ErrorCode() != "InvalidGroup.NotFound" {
		t.Fatalf("unknown group: %v", err)
	}
	_, err = c.EC2.AuthorizeSecurityGroupIngress(ctx, &ec2.AuthorizeSecurityGroupIngressInput{GroupId: sg.GroupId, IpPermissions: []ec2types.IpPermission{
		{IpProtocol: aws.String("tcp"), FromPort: aws.Int32(90), ToPort: aws.Int32(80), IpRanges: []ec2types.IpRange{{CidrIp: aws.String("0.0.0.0/0")}}}}})
	if !errors.As(err, &api) || api.ErrorCode() != "InvalidParameterValue" {
		t.Fatalf("inverted port range: %v", err)
	}
}
