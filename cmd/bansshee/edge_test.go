package main

import (
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/bansshee/bansshee/internal/awstest"
)

func TestCLIEdge(t *testing.T) {
	c := newCLI(t)
	code, _, errOut := c.run(t, "edge", "add", "shop", "--scope", "GLOBAL", "--target", "Role=web")
	if code != exitUsage || !strings.Contains(errOut, "--scope") {
		t.Fatalf("bad scope: %d %q", code, errOut)
	}
	code, out, errOut := c.run(t, "edge", "add", "shop", "--scope", "REGIONAL", "--target", "Role=web")
	if code != 0 || !strings.Contains(out, "edge shop: 0 IPv4 and 0 IPv6 addresses in shop-v4-0, shop-v6-0") {
		t.Fatalf("edge add: %d %q %q", code, out, errOut)
	}
	if code, _, errOut := c.run(t, "ban", "198.51.100.5", "2001:db8::5", "--target", "Role=web"); code != 0 {
		t.Fatalf("ban: %s", errOut)
	}
	got := c.env.WAF.Addresses("REGIONAL", "shop-")
	if len(got["shop-v4-0"]) != 1 || got["shop-v4-0"][0] != "198.51.100.5/32" || len(got["shop-v6-0"]) != 1 {
		t.Fatalf("sets after the ban: %v", got)
	}
	code, out, errOut = c.run(t, "edge", "sync", "shop")
	if code != 0 || !strings.Contains(out, "edge shop: 1 IPv4 and 1 IPv6 addresses") {
		t.Fatalf("edge sync: %d %q %q", code, out, errOut)
	}
	code, out, _ = c.run(t, "edge", "list")
	if code != 0 || !strings.Contains(out, "shop") || !strings.Contains(out, "Role=web") {
		t.Fatalf("edge list: %d %q", code, out)
	}
	if code, out, errOut := c.run(t, "edge", "rm", "shop", "--delete-sets"); code != 0 || !strings.Contains(out, "removed") {
		t.Fatalf("edge rm: %d %q %q", code, out, errOut)
	}
	if got := c.env.WAF.Addresses("REGIONAL", "shop-"); len(got) != 0 {
		t.Fatalf("sets left after rm --delete-sets: %v", got)
	}
}

func TestCLITargetsExposure(t *testing.T) {
	c := newCLI(t)
	ec := awstest.NewClients(c.env.Config("")).EC2
	ctx := t.Context()
	sg, err := ec.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{GroupName: aws.String("ssh"), Description: aws.String("ssh")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ec.AuthorizeSecurityGroupIngress(ctx, &ec2.AuthorizeSecurityGroupIngressInput{GroupId: sg.GroupId, IpPermissions: []ec2types.IpPermission{
		{IpProtocol: aws.String("tcp"), FromPort: aws.Int32(22), ToPort: aws.Int32(22), IpRanges: []ec2types.IpRange{{CidrIp: aws.String("0.0.0.0/0")}}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := awstest.LaunchInGroups(ctx, ec, map[string]string{"Role": "bastion", "bansshee:managed": "true"}, aws.ToString(sg.GroupId)); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := c.run(t, "targets", "Role=bastion", "--exposure")
	if code != 0 || !strings.Contains(out, "open to the internet: tcp/22 ("+aws.ToString(sg.GroupId)+" 0.0.0.0/0)") ||
		!strings.Contains(out, "! tcp/22 is open to the internet and the sshd jail watches it, but no rate limit covers it") || !strings.Contains(out, "1 findings") {
		t.Fatalf("targets --exposure: %d\n%s\n%s", code, out, errOut)
	}
	if code, _, errOut := c.run(t, "limit", "l-ssh", "--target", "Role=bastion", "--port", "22", "--hits", "5", "--seconds", "60"); code != 0 {
		t.Fatalf("limit: %s", errOut)
	}
	code, out, _ = c.run(t, "targets", "Role=bastion", "--exposure")
	if code != 0 || !strings.Contains(out, "0 findings") {
		t.Fatalf("after a limit on 22: %d\n%s", code, out)
	}
	code, _, errOut = c.run(t, "targets", "Role=bastion", "--exposure", "--jails", "nginx")
	if code != exitUsage || !strings.Contains(errOut, "unknown jail") {
		t.Fatalf("unknown jail: %d %q", code, errOut)
	}
}
