package awstest

import (
	"encoding/xml"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
)

// Security groups and managed prefix lists, as much as `bansshee targets --exposure` reads:
// CreateSecurityGroup, AuthorizeSecurityGroupIngress, DescribeSecurityGroups,
// CreateManagedPrefixList, GetManagedPrefixListEntries; instances launched with
// SecurityGroupId.N carry their groups in DescribeInstances.

type secGroup struct {
	ID, Name, Desc, VpcID string
	Ingress               []xmlIPPermission
}

type prefixList struct {
	ID, Name, Family string
	Max              int
	Entries          []xmlPLEntry
}

type xmlIPPermission struct {
	Protocol    string         `xml:"ipProtocol"`
	FromPort    *int32         `xml:"fromPort,omitempty"`
	ToPort      *int32         `xml:"toPort,omitempty"`
	IPRanges    []xmlIPRange   `xml:"ipRanges>item"`
	IPv6Ranges  []xmlIPv6Range `xml:"ipv6Ranges>item"`
	PrefixLists []xmlPLID      `xml:"prefixListIds>item"`
}

type xmlIPRange struct {
	CIDR string `xml:"cidrIp"`
}

type xmlIPv6Range struct {
	CIDR string `xml:"cidrIpv6"`
}

type xmlPLID struct {
	ID string `xml:"prefixListId"`
}

type xmlPLEntry struct {
	CIDR        string `xml:"cidr"`
	Description string `xml:"description,omitempty"`
}

type xmlGroupRef struct {
	ID   string `xml:"groupId"`
	Name string `xml:"groupName"`
}

func (s *ec2Server) group(id string) *secGroup {
	for _, g := range s.groups {
		if g.ID == id {
			return g
		}
	}
	return nil
}

func (s *ec2Server) createSecurityGroup(f url.Values) (any, *ec2Error) {
	name := f.Get("GroupName")
	if name == "" || f.Get("GroupDescription") == "" {
		return nil, &ec2Error{400, "MissingParameter", "GroupName and GroupDescription are required"}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.groups {
		if g.Name == name {
			return nil, &ec2Error{400, "InvalidGroup.Duplicate", fmt.Sprintf("The security group '%s' already exists", name)}
		}
	}
	s.seq++
	g := &secGroup{ID: fmt.Sprintf("sg-%017x", s.seq), Name: name, Desc: f.Get("GroupDescription"), VpcID: s.vpcs[0].ID}
	s.groups = append(s.groups, g)
	return struct {
		XMLName   xml.Name `xml:"CreateSecurityGroupResponse"`
		NS        string   `xml:"xmlns,attr"`
		RequestID string   `xml:"requestId"`
		Return    bool     `xml:"return"`
		GroupID   string   `xml:"groupId"`
	}{NS: ec2NS, RequestID: "req", Return: true, GroupID: g.ID}, nil
}

func (s *ec2Server) authorizeIngress(f url.Values) (any, *ec2Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.group(f.Get("GroupId"))
	if g == nil {
		return nil, &ec2Error{400, "InvalidGroup.NotFound", fmt.Sprintf("The security group '%s' does not exist", f.Get("GroupId"))}
	}
	var perms []xmlIPPermission
	for i := 1; ; i++ {
		p := fmt.Sprintf("IpPermissions.%d.", i)
		proto := f.Get(p + "IpProtocol")
		if proto == "" {
			break
		}
		perm := xmlIPPermission{Protocol: proto}
		if proto != "-1" {
			from, err1 := strconv.Atoi(f.Get(p + "FromPort"))
			to, err2 := strconv.Atoi(f.Get(p + "ToPort"))
			if err1 != nil || err2 != nil || from > to || to > 65535 || (from < 0 && proto != "icmp") {
				return nil, &ec2Error{400, "InvalidParameterValue", fmt.Sprintf("Invalid port range %q-%q for %s", f.Get(p+"FromPort"), f.Get(p+"ToPort"), proto)}
			}
			a, b := int32(from), int32(to)
			perm.FromPort, perm.ToPort = &a, &b
		}
		for j := 1; ; j++ {
			c := f.Get(fmt.Sprintf("%sIpRanges.%d.CidrIp", p, j))
			if c == "" {
				break
			}
			if pp, err := netip.ParsePrefix(c); err != nil || !pp.Addr().Is4() {
				return nil, &ec2Error{400, "InvalidParameterValue", fmt.Sprintf("CIDR block %s is malformed", c)}
			}
			perm.IPRanges = append(perm.IPRanges, xmlIPRange{c})
		}
		for j := 1; ; j++ {
			c := f.Get(fmt.Sprintf("%sIpv6Ranges.%d.CidrIpv6", p, j))
			if c == "" {
				break
			}
			if pp, err := netip.ParsePrefix(c); err != nil || !pp.Addr().Is6() {
				return nil, &ec2Error{400, "InvalidParameterValue", fmt.Sprintf("CIDR block %s is malformed", c)}
			}
			perm.IPv6Ranges = append(perm.IPv6Ranges, xmlIPv6Range{c})
		}
		for j := 1; ; j++ {
			id := f.Get(fmt.Sprintf("%sPrefixListIds.%d.PrefixListId", p, j))
			if id == "" {
				break
			}
			if s.prefixList(id) == nil {
				return nil, &ec2Error{400, "InvalidPrefixListId.NotFound", fmt.Sprintf("The prefix list ID '%s' does not exist", id)}
			}
			perm.PrefixLists = append(perm.PrefixLists, xmlPLID{id})
		}
		perms = append(perms, perm)
	}
	if len(perms) == 0 {
		return nil, &ec2Error{400, "MissingParameter", "IpPermissions is required"}
	}
	g.Ingress = append(g.Ingress, perms...)
	return boolResponse{XMLName: xml.Name{Local: "AuthorizeSecurityGroupIngressResponse"}, NS: ec2NS, RequestID: "req", Return: true}, nil
}

func (s *ec2Server) describeSecurityGroups(f url.Values) (any, *ec2Error) {
	ids := indexed(f, "GroupId")
	s.mu.Lock()
	defer s.mu.Unlock()
	type xmlGroup struct {
		OwnerID string            `xml:"ownerId"`
		ID      string            `xml:"groupId"`
		Name    string            `xml:"groupName"`
		Desc    string            `xml:"groupDescription"`
		VpcID   string            `xml:"vpcId"`
		Ingress []xmlIPPermission `xml:"ipPermissions>item"`
	}
	resp := struct {
		XMLName   xml.Name   `xml:"DescribeSecurityGroupsResponse"`
		NS        string     `xml:"xmlns,attr"`
		RequestID string     `xml:"requestId"`
		Groups    []xmlGroup `xml:"securityGroupInfo>item"`
	}{NS: ec2NS, RequestID: "req"}
	for _, id := range ids {
		if s.group(id) == nil {
			return nil, &ec2Error{400, "InvalidGroup.NotFound", fmt.Sprintf("The security group '%s' does not exist", id)}
		}
	}
	for _, g := range s.groups {
		if len(ids) > 0 && !slices.Contains(ids, g.ID) {
			continue
		}
		resp.Groups = append(resp.Groups, xmlGroup{OwnerID: "000000000000", ID: g.ID, Name: g.Name, Desc: g.Desc, VpcID: g.VpcID, Ingress: g.Ingress})
	}
	return resp, nil
}

func (s *ec2Server) prefixList(id string) *prefixList {
	for _, p := range s.prefixLists {
		if p.ID == id {
			return p
		}
	}
	return nil
}

func (s *ec2Server) createPrefixList(f url.Values) (any, *ec2Error) {
	fam := f.Get("AddressFamily")
	if fam != "IPv4" && fam != "IPv6" {
		return nil, &ec2Error{400, "InvalidParameterValue", "AddressFamily must be IPv4 or IPv6"}
	}
	max, err := strconv.Atoi(f.Get("MaxEntries"))
	if err != nil || max < 1 || max > 1000 {
		return nil, &ec2Error{400, "InvalidParameterValue", "MaxEntries must be between 1 and 1000"}
	}
	pl := &prefixList{Name: f.Get("PrefixListName"), Family: fam, Max: max}
	for i := 1; ; i++ {
		c := f.Get(fmt.Sprintf("Entry.%d.Cidr", i))
		if c == "" {
			break
		}
		if p, err := netip.ParsePrefix(c); err != nil || p.Addr().Is4() != (fam == "IPv4") {
			return nil, &ec2Error{400, "InvalidParameterValue", fmt.Sprintf("entry %s is not an %s CIDR", c, fam)}
		}
		pl.Entries = append(pl.Entries, xmlPLEntry{CIDR: c, Description: f.Get(fmt.Sprintf("Entry.%d.Description", i))})
	}
	if len(pl.Entries) > max {
		return nil, &ec2Error{400, "PrefixListMaxEntriesExceeded", fmt.Sprintf("%d entries exceed MaxEntries %d", len(pl.Entries), max)}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	pl.ID = fmt.Sprintf("pl-%017x", s.seq)
	s.prefixLists = append(s.prefixLists, pl)
	type xmlPL struct {
		ID     string `xml:"prefixListId"`
		Name   string `xml:"prefixListName"`
		Family string `xml:"addressFamily"`
		State  string `xml:"state"`
		Max    int    `xml:"maxEntries"`
	}
	return struct {
		XMLName   xml.Name `xml:"CreateManagedPrefixListResponse"`
		NS        string   `xml:"xmlns,attr"`
		RequestID string   `xml:"requestId"`
		PL        xmlPL    `xml:"prefixList"`
	}{NS: ec2NS, RequestID: "req", PL: xmlPL{pl.ID, pl.Name, pl.Family, "create-complete", pl.Max}}, nil
}

func (s *ec2Server) prefixListEntries(f url.Values) (any, *ec2Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	pl := s.prefixList(f.Get("PrefixListId"))
	if pl == nil {
		return nil, &ec2Error{400, "InvalidPrefixListId.NotFound", fmt.Sprintf("The prefix list ID '%s' does not exist", f.Get("PrefixListId"))}
	}
	return struct {
		XMLName   xml.Name     `xml:"GetManagedPrefixListEntriesResponse"`
		NS        string       `xml:"xmlns,attr"`
		RequestID string       `xml:"requestId"`
		Entries   []xmlPLEntry `xml:"entrySet>item"`
	}{NS: ec2NS, RequestID: "req", Entries: pl.Entries}, nil
}
