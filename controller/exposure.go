package controller

// Exposure: which ports each instance's security groups open to the whole internet (0.0.0.0/0,
// ::/0, directly or through a managed prefix list that holds them), set beside the rate limits
// that reach the instance: a limit on a port no group opens protects nothing, and a port open to
// the internet that a jail watches should have a limit.

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// JailPorts are the TCP ports the daemons of the built-in jails listen on.
var JailPorts = map[string][]int{
	"sshd":         {22},
	"dovecot":      {110, 143, 993, 995},
	"cyrus":        {110, 143, 993, 995},
	"postfix-sasl": {25, 465, 587},
}

// OpenPort is one ingress permission of a security group.
type OpenPort struct {
	Proto    string // tcp, udp, icmp, all
	From, To int    // inclusive; 0-65535 for all
	Group    string
	Source   string // the world-open source: 0.0.0.0/0, ::/0, or a prefix list id
}

func (o OpenPort) String() string {
	port := fmt.Sprintf("%s/%d", o.Proto, o.From)
	switch {
	case o.Proto == "all":
		port = "all traffic"
	case o.From != o.To:
		port = fmt.Sprintf("%s/%d-%d", o.Proto, o.From, o.To)
	}
	return fmt.Sprintf("%s (%s %s)", port, o.Group, o.Source)
}

func (o OpenPort) covers(proto string, port int) bool {
	return (o.Proto == "all" || o.Proto == proto) && port >= o.From && port <= o.To
}

// Exposure is one instance's world-open ports and what is wrong beside them.
type Exposure struct {
	Instance Instance
	Open     []OpenPort // open to the internet
	Flags    []string
}

// Exposure reads the security groups (and the prefix lists they reference) of every instance the
// target selects, and the rate limits that reach each, and flags limits on ports no group opens
// and world-open ports that one of jails watches without a limit.
func (c *Controller) Exposure(ctx context.Context, target string, jails []string) ([]Exposure, error) {
	for _, j := range jails {
		if _, ok := JailPorts[j]; !ok {
			return nil, fmt.Errorf("%w: --jails %s: unknown jail (have %s)", ErrRefused, j, strings.Join(jailNames(), ", "))
		}
	}
	ins, err := c.Targets(ctx, target)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, in := range ins {
		for _, g := range in.Groups {
			if !slices.Contains(ids, g) {
				ids = append(ids, g)
			}
		}
	}
	perms := map[string][]ec2types.IpPermission{}
	if len(ids) > 0 {
		p := ec2.NewDescribeSecurityGroupsPaginator(c.EC2, &ec2.DescribeSecurityGroupsInput{GroupIds: ids})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				return nil, fmt.Errorf("describe security groups: %w", err)
			}
			for _, g := range page.SecurityGroups {
				perms[aws.ToString(g.GroupId)] = g.IpPermissions
			}
		}
	}
	worldLists := map[string]bool{} // prefix list id -> holds 0.0.0.0/0 or ::/0
	world := func(pl string) (bool, error) {
		if v, ok := worldLists[pl]; ok {
			return v, nil
		}
		p := ec2.NewGetManagedPrefixListEntriesPaginator(c.EC2, &ec2.GetManagedPrefixListEntriesInput{PrefixListId: aws.String(pl)})
		found := false
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				return false, fmt.Errorf("read prefix list %s: %w", pl, err)
			}
			for _, e := range page.Entries {
				if c := aws.ToString(e.Cidr); c == "0.0.0.0/0" || c == "::/0" {
					found = true
				}
			}
		}
		worldLists[pl] = found
		return found, nil
	}
	limits, err := c.Ledger.Limits(ctx)
	if err != nil {
		return nil, err
	}
	var out []Exposure
	for _, in := range ins {
		ex := Exposure{Instance: in}
		var opened []OpenPort // to anyone at all
		for _, g := range in.Groups {
			for _, p := range perms[g] {
				op := OpenPort{Proto: aws.ToString(p.IpProtocol), From: int(aws.ToInt32(p.FromPort)), To: int(aws.ToInt32(p.ToPort)), Group: g}
				if op.Proto == "-1" {
					op.Proto, op.From, op.To = "all", 0, 65535
				}
				opened = append(opened, op)
				var sources []string
				for _, r := range p.IpRanges {
					if aws.ToString(r.CidrIp) == "0.0.0.0/0" {
						sources = append(sources, "0.0.0.0/0")
					}
				}
				for _, r := range p.Ipv6Ranges {
					if aws.ToString(r.CidrIpv6) == "::/0" {
						sources = append(sources, "::/0")
					}
				}
				for _, pl := range p.PrefixListIds {
					ok, err := world(aws.ToString(pl.PrefixListId))
					if err != nil {
						return nil, err
					}
					if ok {
						sources = append(sources, "prefix list "+aws.ToString(pl.PrefixListId))
					}
				}
				if len(sources) > 0 {
					op.Source = strings.Join(sources, ", ")
					ex.Open = append(ex.Open, op)
				}
			}
		}
		sort.Slice(ex.Open, func(i, j int) bool { return ex.Open[i].From < ex.Open[j].From })
		limited := map[string]bool{} // "tcp/22"
		for _, l := range limits {
			sel, err := ParseSelector(l.Target)
			if l.Deleted || err != nil || !sel.MatchInstance(in.ID, in.Tags) {
				continue
			}
			for _, port := range l.Ports {
				limited[fmt.Sprintf("%s/%d", l.Proto, port)] = true
				if !slices.ContainsFunc(opened, func(o OpenPort) bool { return o.covers(l.Proto, port) }) {
					ex.Flags = append(ex.Flags, fmt.Sprintf("limit %s on %s/%d: no security group opens this port", l.SK, l.Proto, port))
				}
			}
		}
		for _, j := range jails {
			for _, port := range JailPorts[j] {
				if limited[fmt.Sprintf("tcp/%d", port)] {
					continue
				}
				limited[fmt.Sprintf("tcp/%d", port)] = true // one flag a port, whichever jails watch it
				if slices.ContainsFunc(ex.Open, func(o OpenPort) bool { return o.covers("tcp", port) }) {
					ex.Flags = append(ex.Flags, fmt.Sprintf("tcp/%d is open to the internet and the %s jail watches it, but no rate limit covers it", port, j))
				}
			}
		}
		out = append(out, ex)
	}
	return out, nil
}

func jailNames() []string {
	var out []string
	for k := range JailPorts {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
