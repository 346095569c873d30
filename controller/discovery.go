package controller

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// Instance is a managed, running EC2 instance.
type Instance struct {
	ID        string
	Tags      map[string]string
	PrivateIP string
	Groups    []string // security group ids (exposure.go)
}

// Discover lists running managed instances matching sel: the positive terms and the managed tag go
// to EC2 as server-side filters, then the whole selector is evaluated here. Pages are followed.
func (c *Controller) Discover(ctx context.Context, sel *Selector) ([]Instance, error) {
	var out []Instance
	if err := c.discoverPages(ctx, sel, func(page []Instance) { out = append(out, page...) }); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// discoverPages is Discover one DescribeInstances page at a time: a fan-out starts sending to the
// first thousand instances while EC2 is still answering for the next.
func (c *Controller) discoverPages(ctx context.Context, sel *Selector, each func([]Instance)) error {
	filters := append([]ec2types.Filter{{Name: aws.String("instance-state-name"), Values: []string{"running"}}}, c.managed.Filters()...)
	filters = append(filters, sel.Filters()...)
	p := ec2.NewDescribeInstancesPaginator(c.EC2, &ec2.DescribeInstancesInput{Filters: filters, MaxResults: aws.Int32(1000)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("describe instances: %w", err)
		}
		var out []Instance
		for _, r := range page.Reservations {
			for _, in := range r.Instances {
				tags := map[string]string{}
				for _, t := range in.Tags {
					tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
				}
				if in.State != nil && in.State.Name != ec2types.InstanceStateNameRunning {
					continue
				}
				if !c.managed.Match(tags) || !sel.MatchInstance(aws.ToString(in.InstanceId), tags) {
					continue
				}
				var groups []string
				for _, g := range in.SecurityGroups {
					groups = append(groups, aws.ToString(g.GroupId))
				}
				out = append(out, Instance{ID: aws.ToString(in.InstanceId), Tags: tags, PrivateIP: aws.ToString(in.PrivateIpAddress), Groups: groups})
			}
		}
		if len(out) > 0 {
			each(out)
		}
	}
	return nil
}

// vpcCacheTTL is how long VPC CIDRs are reused: a ban should not wait for DescribeVpcs, and a
// VPC's CIDRs change when an operator associates a block, not every second.
const vpcCacheTTL = time.Minute

// VPCCIDRs returns every IPv4 and IPv6 CIDR of the account's VPCs in the region: load balancers
// and NAT gateways speak from them, so they are allowlisted by default. Read at most once a
// minute.
func (c *Controller) VPCCIDRs(ctx context.Context) ([]netip.Prefix, error) {
	c.vpcMu.Lock()
	defer c.vpcMu.Unlock()
	if c.vpcs != nil && time.Since(c.vpcAt) < vpcCacheTTL {
		return c.vpcs, nil
	}
	vpcs, err := c.describeVPCs(ctx)
	if err != nil {
		return nil, err
	}
	c.vpcs, c.vpcAt = vpcs, time.Now()
	return vpcs, nil
}

func (c *Controller) describeVPCs(ctx context.Context) ([]netip.Prefix, error) {
	p := ec2.NewDescribeVpcsPaginator(c.EC2, &ec2.DescribeVpcsInput{})
	var out []netip.Prefix
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("describe VPCs: %w", err)
		}
		for _, v := range page.Vpcs {
			for _, a := range v.CidrBlockAssociationSet {
				if pf, err := netip.ParsePrefix(aws.ToString(a.CidrBlock)); err == nil {
					out = append(out, pf)
				}
			}
			for _, a := range v.Ipv6CidrBlockAssociationSet {
				if pf, err := netip.ParsePrefix(aws.ToString(a.Ipv6CidrBlock)); err == nil {
					out = append(out, pf)
				}
			}
		}
	}
	return out, nil
}
