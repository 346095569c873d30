package controller

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/bansshee/bansshee/internal/awstest"
	"github.com/bansshee/bansshee/proto"
)

func (e *env) group(t *testing.T, name string, perms ...ec2types.IpPermission) string {
	t.Helper()
	sg, err := e.clients.EC2.CreateSecurityGroup(t.Context(), &ec2.CreateSecurityGroupInput{GroupName: aws.String(awstest.Unique(name)), Description: aws.String(name)})
	if err != nil {
		t.Fatal(err)
	}
	if len(perms) > 0 {
		if _, err := e.clients.EC2.AuthorizeSecurityGroupIngress(t.Context(), &ec2.AuthorizeSecurityGroupIngressInput{GroupId: sg.GroupId, IpPermissions: perms}); err != nil {
			t.Fatal(err)
		}
	}
	return aws.ToString(sg.GroupId)
}

func tcp(from, to int32, world4, world6 bool, lists ...string) ec2types.IpPermission {
	p := ec2types.IpPermission{IpProtocol: aws.String("tcp"), FromPort: aws.Int32(from), ToPort: aws.Int32(to)}
	if world4 {
		p.IpRanges = append(p.IpRanges, ec2types.IpRange{CidrIp: aws.String("0.0.0.0/0")})
	} else if !world6 && len(lists) == 0 {
		p.IpRanges = append(p.IpRanges, ec2types.IpRange{CidrIp: aws.String("10.0.0.0/8")})
	}
	if world6 {
		p.Ipv6Ranges = append(p.Ipv6Ranges, ec2types.Ipv6Range{CidrIpv6: aws.String("::/0")})
	}
	for _, l := range lists {
		p.PrefixListIds = append(p.PrefixListIds, ec2types.PrefixListId{PrefixListId: aws.String(l)})
	}
	return p
}

// Exposure on the emulator's security groups: world-open ports directly, over IPv6 and through a
// prefix list; a port open only to the VPC is not exposed; a limit on a closed port and an
// exposed jail port without a limit are flagged.
func TestExposure(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	world, err := e.clients.EC2.CreateManagedPrefixList(ctx, &ec2.CreateManagedPrefixListInput{PrefixListName: aws.String("world"), AddressFamily: aws.String("IPv4"),
		MaxEntries: aws.Int32(2), Entries: []ec2types.AddPrefixListEntry{{Cidr: aws.String("0.0.0.0/0")}}})
	if err != nil {
		t.Fatal(err)
	}
	office, err := e.clients.EC2.CreateManagedPrefixList(ctx, &ec2.CreateManagedPrefixListInput{PrefixListName: aws.String("office"), AddressFamily: aws.String("IPv4"),
		MaxEntries: aws.Int32(2), Entries: []ec2types.AddPrefixListEntry{{Cidr: aws.String("203.0.113.0/24")}}})
	if err != nil {
		t.Fatal(err)
	}
	mailSG := e.group(t, "mail", tcp(22, 22, true, false), tcp(110, 110, false, true), tcp(143, 143, false, false),
		tcp(25, 25, false, false, aws.ToString(world.PrefixList.PrefixListId)), tcp(993, 993, false, false, aws.ToString(office.PrefixList.PrefixListId)))
	webSG := e.group(t, "web", tcp(443, 443, true, true))
	mail, err := awstest.LaunchInGroups(ctx, e.clients.EC2, map[string]string{"Role": "mail", "bansshee:managed": "true"}, mailSG)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := awstest.LaunchInGroups(ctx, e.clients.EC2, map[string]string{"Role": "web", "bansshee:managed": "true"}, webSG); err != nil {
		t.Fatal(err)
	}
	// A limit on POP3 (open over IPv6), one on 8080 (closed everywhere).
	for _, l := range []LimitRequest{
		{Target: "Role=mail", Limit: proto.Limit{ID: "l-pop3", Proto: "tcp", Ports: []int{110}, Hits: 10, Seconds: 60, Action: "drop"}},
		{Target: "Role=mail", Limit: proto.Limit{ID: "l-alt", Proto: "tcp", Ports: []int{8080}, Hits: 10, Seconds: 60, Action: "drop"}},
	} {
		if _, err := e.c.Limit(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	exps, err := e.c.Exposure(ctx, "Role=mail", []string{"sshd", "dovecot", "postfix-sasl"})
	if err != nil {
		t.Fatal(err)
	}
	if len(exps) != 1 || exps[0].Instance.ID != mail {
		t.Fatalf("exposures %+v", exps)
	}
	var open []string
	for _, o := range exps[0].Open {
		open = append(open, o.String())
	}
	want := []string{"tcp/22 (" + mailSG + " 0.0.0.0/0)", "tcp/25 (" + mailSG + " prefix list " + aws.ToString(world.PrefixList.PrefixListId) + ")", "tcp/110 (" + mailSG + " ::/0)"}
	if !slices.Equal(open, want) {
		t.Fatalf("open:\n%s\nwant:\n%s", strings.Join(open, "\n"), strings.Join(want, "\n"))
	}
	flags := strings.Join(exps[0].Flags, "\n")
	for _, w := range []string{
		"limit l-alt on tcp/8080: no security group opens this port",
		"tcp/22 is open to the internet and the sshd jail watches it, but no rate limit covers it",
		"tcp/25 is open to the internet and the postfix-sasl jail watches it",
	} {
		if !strings.Contains(flags, w) {
			t.Errorf("flags lack %q:\n%s", w, flags)
		}
	}
	for _, not := range []string{"tcp/110 is open", "tcp/143", "tcp/993", "l-pop3"} {
		if strings.Contains(flags, not) {
			t.Errorf("flags mention %q:\n%s", not, flags)
		}
	}
	if len(exps[0].Flags) != 3 {
		t.Errorf("%d flags, want 3:\n%s", len(exps[0].Flags), flags)
	}
	if _, err := e.c.Exposure(ctx, "Role=mail", []string{"nginx"}); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "unknown jail") {
		t.Fatalf("unknown jail: %v", err)
	}
}
