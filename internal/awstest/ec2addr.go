package awstest

import (
	"encoding/xml"
	"fmt"
	"net/url"
)

// Elastic IPs and NAT gateways, as much as bansshee reads (the fleet's own public addresses are
// allowlisted): AllocateAddress and CreateNatGateway to set them up, DescribeAddresses and
// DescribeNatGateways (every item, no filters).

type eip struct{ AllocationID, PublicIP string }

type natGateway struct {
	ID, SubnetID, AllocationID, PublicIP string
}

type allocateAddressResponse struct {
	XMLName      xml.Name `xml:"AllocateAddressResponse"`
	NS           string   `xml:"xmlns,attr"`
	RequestID    string   `xml:"requestId"`
	PublicIP     string   `xml:"publicIp"`
	Domain       string   `xml:"domain"`
	AllocationID string   `xml:"allocationId"`
}

func (s *ec2Server) allocateAddress() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	e := eip{AllocationID: fmt.Sprintf("eipalloc-%017x", s.seq), PublicIP: fmt.Sprintf("52.94.%d.%d", s.seq/250, s.seq%250+1)}
	s.eips = append(s.eips, e)
	return allocateAddressResponse{NS: ec2NS, RequestID: "req", PublicIP: e.PublicIP, Domain: "vpc", AllocationID: e.AllocationID}
}

type xmlAddress struct {
	PublicIP     string `xml:"publicIp"`
	AllocationID string `xml:"allocationId"`
	Domain       string `xml:"domain"`
}

type describeAddressesResponse struct {
	XMLName   xml.Name     `xml:"DescribeAddressesResponse"`
	NS        string       `xml:"xmlns,attr"`
	RequestID string       `xml:"requestId"`
	Addresses []xmlAddress `xml:"addressesSet>item"`
}

func (s *ec2Server) describeAddresses() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := describeAddressesResponse{NS: ec2NS, RequestID: "req"}
	for _, e := range s.eips {
		resp.Addresses = append(resp.Addresses, xmlAddress{e.PublicIP, e.AllocationID, "vpc"})
	}
	return resp
}

type xmlNatAddress struct {
	AllocationID string `xml:"allocationId"`
	PublicIP     string `xml:"publicIp"`
}

type xmlNatGateway struct {
	ID        string          `xml:"natGatewayId"`
	SubnetID  string          `xml:"subnetId"`
	VpcID     string          `xml:"vpcId"`
	State     string          `xml:"state"`
	Addresses []xmlNatAddress `xml:"natGatewayAddressSet>item"`
}

type createNatGatewayResponse struct {
	XMLName    xml.Name      `xml:"CreateNatGatewayResponse"`
	NS         string        `xml:"xmlns,attr"`
	RequestID  string        `xml:"requestId"`
	NatGateway xmlNatGateway `xml:"natGateway"`
}

type describeNatGatewaysResponse struct {
	XMLName   xml.Name        `xml:"DescribeNatGatewaysResponse"`
	NS        string          `xml:"xmlns,attr"`
	RequestID string          `xml:"requestId"`
	Gateways  []xmlNatGateway `xml:"natGatewaySet>item"`
}

func (s *ec2Server) natXML(n natGateway) xmlNatGateway {
	return xmlNatGateway{ID: n.ID, SubnetID: n.SubnetID, VpcID: s.vpcs[0].ID, State: "available", Addresses: []xmlNatAddress{{n.AllocationID, n.PublicIP}}}
}

func (s *ec2Server) createNatGateway(f url.Values) (any, *ec2Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	alloc := f.Get("AllocationId")
	for _, e := range s.eips {
		if e.AllocationID == alloc {
			s.seq++
			n := natGateway{ID: fmt.Sprintf("nat-%017x", s.seq), SubnetID: f.Get("SubnetId"), AllocationID: alloc, PublicIP: e.PublicIP}
			s.nats = append(s.nats, n)
			return createNatGatewayResponse{NS: ec2NS, RequestID: "req", NatGateway: s.natXML(n)}, nil
		}
	}
	return nil, &ec2Error{400, "InvalidAllocationID.NotFound", fmt.Sprintf("The allocation ID '%s' does not exist", alloc)}
}

func (s *ec2Server) describeNatGateways() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := describeNatGatewaysResponse{NS: ec2NS, RequestID: "req"}
	for _, n := range s.nats {
		resp.Gateways = append(resp.Gateways, s.natXML(n))
	}
	return resp
}
