package controller

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// fleetAddrs is the fleet's own public addresses, sorted: what no ban may cover, however the
// fleet's instances are tagged (a ban of the NAT gateway's address cuts every private instance
// off from what it talks to; a feed that lists an instance's public address bans it from itself).
type fleetAddrs []netip.Addr

// covered returns an address of the set inside p, if any (a binary search: feeds hold a million
// entries and fleets thousands of addresses).
func (s fleetAddrs) covered(p netip.Prefix) (netip.Addr, bool) {
	p = p.Masked()
	i, _ := slices.BinarySearchFunc(s, p.Addr(), netip.Addr.Compare)
	if i < len(s) && p.Contains(s[i]) {
		return s[i], true
	}
	return netip.Addr{}, false
}

// FleetAddresses returns the account's public addresses in the region: every instance's public
// IPv4 address (managed or not), the Elastic IPs and the NAT gateways' addresses. Cached like
// the VPC CIDRs; when the cache is cold (a new process), taken from the reconciler's inventory if
// it is fresh and holds them (read from EC2 at most a minute before its pass), else read from EC2:
// every instance in every state, a page per 1 000, before a ban is written.
func (c *Controller) FleetAddresses(ctx context.Context) (fleetAddrs, error) {
	c.fleetMu.Lock()
	if c.fleetPub != nil && c.Now().Sub(c.fleetAt) < vpcCacheTTL {
		defer c.fleetMu.Unlock()
		return c.fleetPub, nil
	}
	c.fleetMu.Unlock()
	if inv := c.inventory(ctx); inv != nil && inv.public != nil {
		// Cached as of the pass that wrote them: they expire a minute after it, not after now.
		c.fleetMu.Lock()
		if c.fleetPub == nil || inv.At.After(c.fleetAt) {
			c.fleetPub, c.fleetAt = inv.public, inv.At
		}
		c.fleetMu.Unlock()
		return inv.public, nil
	}
	return c.fleetAddressesLive(ctx)
}

// fleetAddressesLive is FleetAddresses from its cache or EC2, never from the inventory (the
// reconciler, which writes them there).
func (c *Controller) fleetAddressesLive(ctx context.Context) (fleetAddrs, error) {
	c.fleetMu.Lock()
	defer c.fleetMu.Unlock()
	if c.fleetPub != nil && c.Now().Sub(c.fleetAt) < vpcCacheTTL {
		return c.fleetPub, nil
	}
	out := fleetAddrs{}
	add := func(s *string) {
		if a, err := netip.ParseAddr(aws.ToString(s)); err == nil {
			out = append(out, a.Unmap())
		}
	}
	p := ec2.NewDescribeInstancesPaginator(c.EC2, &ec2.DescribeInstancesInput{MaxResults: aws.Int32(1000),
		Filters: []ec2types.Filter{{Name: aws.String("instance-state-name"), Values: []string{"pending", "running", "stopping", "stopped"}}}})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("the fleet's public addresses: %w", err)
		}
		for _, r := range page.Reservations {
			for _, in := range r.Instances {
				add(in.PublicIpAddress)
			}
		}
	}
	eips, err := c.EC2.DescribeAddresses(ctx, &ec2.DescribeAddressesInput{})
	if err != nil {
		return nil, fmt.Errorf("the fleet's Elastic IPs: %w", err)
	}
	for _, e := range eips.Addresses {
		add(e.PublicIp)
	}
	nats := ec2.NewDescribeNatGatewaysPaginator(c.EC2, &ec2.DescribeNatGatewaysInput{})
	for nats.HasMorePages() {
		page, err := nats.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("the fleet's NAT gateways: %w", err)
		}
		for _, n := range page.NatGateways {
			for _, a := range n.NatGatewayAddresses {
				add(a.PublicIp)
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	out = slices.Compact(out)
	c.fleetPub, c.fleetAt = out, c.Now()
	return out, nil
}
