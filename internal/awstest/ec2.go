package awstest

import (
	"encoding/xml"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ec2Server serves the EC2 calls bansshee makes, at the wire level (EC2 query protocol), because
// kumo's EC2 ignores Filters and TagSpecifications and returns no Tags: with it, the production
// discovery code could not be exercised as real AWS runs it. Everything else goes to kumo.
type ec2Server struct {
	mu        sync.Mutex
	seq       int
	instances []*instance
	vpcs      []vpc
	eips      []eip
	nats      []natGateway
	tokens    map[string]runInstancesResponse // ClientToken -> first answer (idempotent retries)
	// ec2sg.go
	groups      []*secGroup
	prefixLists []*prefixList
}

type instance struct {
	ID      string
	State   string
	Tags    map[string]string
	IP      string
	Public  string // public IPv4 address
	Launch  time.Time
	VpcID   string
	Subnet  string
	ImageID string
	Type    string
	Groups  []xmlGroupRef // ec2sg.go
}

type vpc struct {
	ID    string
	CIDRs []string
	IPv6  []string
}

func newEC2() *ec2Server {
	return &ec2Server{vpcs: []vpc{{ID: "vpc-0b5a55hee0000001", CIDRs: []string{"172.31.0.0/16"}, IPv6: []string{"2600:1f18:4a3:6a00::/56"}}}}
}

const ec2NS = "http://ec2.amazonaws.com/doc/2016-11-15/"

type ec2Error struct {
	Status  int
	Code    string
	Message string
}

func (s *ec2Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		writeEC2Error(w, &ec2Error{400, "MalformedQueryString", err.Error()})
		return
	}
	f := r.PostForm
	var resp any
	var err *ec2Error
	switch action := f.Get("Action"); action {
	case "RunInstances":
		resp, err = s.runInstances(f)
	case "CreateTags":
		resp, err = s.createTags(f)
	case "DescribeInstances":
		resp, err = s.describeInstances(f)
	case "TerminateInstances":
		resp, err = s.terminateInstances(f)
	case "DescribeVpcs":
		resp = s.describeVpcs()
	case "AllocateAddress":
		resp = s.allocateAddress()
	case "DescribeAddresses":
		resp = s.describeAddresses()
	case "CreateNatGateway":
		resp, err = s.createNatGateway(f)
	case "DescribeNatGateways":
		resp = s.describeNatGateways()
	case "CreateSecurityGroup": // ec2sg.go
		resp, err = s.createSecurityGroup(f)
	case "AuthorizeSecurityGroupIngress":
		resp, err = s.authorizeIngress(f)
	case "DescribeSecurityGroups":
		resp, err = s.describeSecurityGroups(f)
	case "CreateManagedPrefixList":
		resp, err = s.createPrefixList(f)
	case "GetManagedPrefixListEntries":
		resp, err = s.prefixListEntries(f)
	default:
		err = &ec2Error{400, "InvalidAction", fmt.Sprintf("The action %s is not valid for this web service (bansshee test harness).", action)}
	}
	if err != nil {
		writeEC2Error(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	_, _ = w.Write([]byte(xml.Header))
	_ = xml.NewEncoder(w).Encode(resp)
}

func writeEC2Error(w http.ResponseWriter, e *ec2Error) {
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(e.Status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>%s</Code><Message>%s</Message></Error></Errors><RequestID>bansshee-test</RequestID></Response>`, e.Code, xmlEscape(e.Message))
}

func xmlEscape(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// indexed collects Prefix.N values in N order ("InstanceId.1", "InstanceId.2", ...).
func indexed(f url.Values, prefix string) []string {
	var out []string
	for i := 1; ; i++ {
		v, ok := f[prefix+"."+strconv.Itoa(i)]
		if !ok {
			return out
		}
		out = append(out, v[0])
	}
}

func tagsFrom(f url.Values, prefix string) map[string]string {
	tags := map[string]string{}
	for i := 1; ; i++ {
		k := f.Get(fmt.Sprintf("%s.%d.Key", prefix, i))
		if k == "" {
			return tags
		}
		tags[k] = f.Get(fmt.Sprintf("%s.%d.Value", prefix, i))
	}
}

type xmlTag struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

type xmlState struct {
	Code int    `xml:"code"`
	Name string `xml:"name"`
}

type xmlInstance struct {
	InstanceID   string        `xml:"instanceId"`
	ImageID      string        `xml:"imageId"`
	State        xmlState      `xml:"instanceState"`
	PrivateIP    string        `xml:"privateIpAddress"`
	PublicIP     string        `xml:"ipAddress,omitempty"`
	InstanceType string        `xml:"instanceType"`
	LaunchTime   string        `xml:"launchTime"`
	VpcID        string        `xml:"vpcId"`
	SubnetID     string        `xml:"subnetId"`
	Tags         []xmlTag      `xml:"tagSet>item"`
	Groups       []xmlGroupRef `xml:"groupSet>item"`
}

var stateCodes = map[string]int{"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}

func (in *instance) xml() xmlInstance {
	x := xmlInstance{InstanceID: in.ID, ImageID: in.ImageID, State: xmlState{stateCodes[in.State], in.State},
		PrivateIP: in.IP, PublicIP: in.Public, InstanceType: in.Type, LaunchTime: in.Launch.UTC().Format(time.RFC3339), VpcID: in.VpcID, SubnetID: in.Subnet, Groups: in.Groups}
	keys := make([]string, 0, len(in.Tags))
	for k := range in.Tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		x.Tags = append(x.Tags, xmlTag{k, in.Tags[k]})
	}
	return x
}

type runInstancesResponse struct {
	XMLName       xml.Name      `xml:"RunInstancesResponse"`
	NS            string        `xml:"xmlns,attr"`
	RequestID     string        `xml:"requestId"`
	ReservationID string        `xml:"reservationId"`
	OwnerID       string        `xml:"ownerId"`
	Instances     []xmlInstance `xml:"instancesSet>item"`
}

func (s *ec2Server) runInstances(f url.Values) (any, *ec2Error) {
	n, _ := strconv.Atoi(f.Get("MaxCount"))
	if n < 1 {
		n = 1
	}
	if n > 100 {
		return nil, &ec2Error{400, "InvalidParameterValue", "MaxCount is limited to 100 in the harness"}
	}
	tags := map[string]string{}
	for i := 1; ; i++ {
		p := fmt.Sprintf("TagSpecification.%d", i)
		rt := f.Get(p + ".ResourceType")
		if rt == "" {
			break
		}
		if rt == "instance" {
			for k, v := range tagsFrom(f, p+".Tag") {
				tags[k] = v
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var groups []xmlGroupRef
	for _, id := range indexed(f, "SecurityGroupId") {
		g := s.group(id)
		if g == nil {
			return nil, &ec2Error{400, "InvalidGroup.NotFound", fmt.Sprintf("The security group '%s' does not exist", id)}
		}
		groups = append(groups, xmlGroupRef{g.ID, g.Name})
	}
	// The SDK fills ClientToken and retries with the same one: a retry must not launch again.
	token := f.Get("ClientToken")
	if prev, ok := s.tokens[token]; ok && token != "" {
		return prev, nil
	}
	resp := runInstancesResponse{NS: ec2NS, RequestID: "req", ReservationID: fmt.Sprintf("r-%017x", s.seq+1), OwnerID: "000000000000"}
	defer func() {
		if token != "" {
			if s.tokens == nil {
				s.tokens = map[string]runInstancesResponse{}
			}
			s.tokens[token] = resp
		}
	}()
	for i := 0; i < n; i++ {
		s.seq++
		// kumo keeps its state in process-wide storage, shared by every emulator in a test binary:
		// ids must be unique across them, or queues named after instances would collide.
		in := &instance{ID: fmt.Sprintf("i-%017x", rand.Uint64()>>4), State: "running", Tags: cloneMap(tags),
			IP: fmt.Sprintf("172.31.%d.%d", s.seq/250, s.seq%250+4), Public: fmt.Sprintf("54.240.%d.%d", s.seq/250, s.seq%250+4), Launch: time.Now(), VpcID: s.vpcs[0].ID,
			Subnet: "subnet-0b5a55hee000001", ImageID: f.Get("ImageId"), Type: f.Get("InstanceType"), Groups: groups}
		s.instances = append(s.instances, in)
		resp.Instances = append(resp.Instances, in.xml())
	}
	return resp, nil
}

type boolResponse struct {
	XMLName   xml.Name
	NS        string `xml:"xmlns,attr"`
	RequestID string `xml:"requestId"`
	Return    bool   `xml:"return"`
}

func (s *ec2Server) find(id string) *instance {
	for _, in := range s.instances {
		if in.ID == id {
			return in
		}
	}
	return nil
}

func (s *ec2Server) createTags(f url.Values) (any, *ec2Error) {
	ids := indexed(f, "ResourceId")
	tags := tagsFrom(f, "Tag")
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if s.find(id) == nil {
			return nil, &ec2Error{400, "InvalidInstanceID.NotFound", fmt.Sprintf("The instance ID '%s' does not exist", id)}
		}
	}
	for _, id := range ids {
		in := s.find(id)
		for k, v := range tags {
			in.Tags[k] = v
		}
	}
	return boolResponse{XMLName: xml.Name{Local: "CreateTagsResponse"}, NS: ec2NS, RequestID: "req", Return: true}, nil
}

type filter struct {
	name   string
	values []string
}

func matchValue(pattern, v string) bool {
	// EC2 filter values allow * and ? wildcards.
	if !strings.ContainsAny(pattern, "*?") {
		return pattern == v
	}
	ok, _ := path.Match(pattern, v)
	return ok
}

func (fl filter) match(in *instance) (bool, *ec2Error) {
	any := func(v string, ok bool) bool {
		if !ok {
			return false
		}
		for _, p := range fl.values {
			if matchValue(p, v) {
				return true
			}
		}
		return false
	}
	switch {
	case fl.name == "instance-state-name":
		return any(in.State, true), nil
	case fl.name == "instance-id":
		return any(in.ID, true), nil
	case fl.name == "vpc-id":
		return any(in.VpcID, true), nil
	case fl.name == "tag-key":
		for k := range in.Tags {
			if any(k, true) {
				return true, nil
			}
		}
		return false, nil
	case strings.HasPrefix(fl.name, "tag:"):
		v, ok := in.Tags[strings.TrimPrefix(fl.name, "tag:")]
		return any(v, ok), nil
	}
	return false, &ec2Error{400, "InvalidParameterValue", fmt.Sprintf("The filter '%s' is invalid", fl.name)}
}

type describeInstancesResponse struct {
	XMLName      xml.Name         `xml:"DescribeInstancesResponse"`
	NS           string           `xml:"xmlns,attr"`
	RequestID    string           `xml:"requestId"`
	Reservations []xmlReservation `xml:"reservationSet>item"`
	NextToken    string           `xml:"nextToken,omitempty"`
}

type xmlReservation struct {
	ReservationID string        `xml:"reservationId"`
	OwnerID       string        `xml:"ownerId"`
	Instances     []xmlInstance `xml:"instancesSet>item"`
}

func (s *ec2Server) describeInstances(f url.Values) (any, *ec2Error) {
	var filters []filter
	for i := 1; ; i++ {
		name := f.Get(fmt.Sprintf("Filter.%d.Name", i))
		if name == "" {
			break
		}
		filters = append(filters, filter{name, indexed(f, fmt.Sprintf("Filter.%d.Value", i))})
	}
	ids := indexed(f, "InstanceId")
	max := 1000
	if v := f.Get("MaxResults"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 5 || n > 1000 {
			return nil, &ec2Error{400, "InvalidParameterValue", "MaxResults must be between 5 and 1000"}
		}
		if len(ids) > 0 {
			return nil, &ec2Error{400, "InvalidParameterCombination", "The parameter instancesSet cannot be used with the parameter maxResults"}
		}
		max = n
	}
	start := 0
	if tok := f.Get("NextToken"); tok != "" {
		n, err := strconv.Atoi(tok)
		if err != nil || n < 0 {
			return nil, &ec2Error{400, "InvalidParameterValue", "bad NextToken"}
		}
		start = n
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if s.find(id) == nil {
			return nil, &ec2Error{400, "InvalidInstanceID.NotFound", fmt.Sprintf("The instance ID '%s' does not exist", id)}
		}
	}
	var matched []*instance
	for _, in := range s.instances {
		if len(ids) > 0 && !slices.Contains(ids, in.ID) {
			continue
		}
		ok := true
		for _, fl := range filters {
			m, err := fl.match(in)
			if err != nil {
				return nil, err
			}
			ok = ok && m
		}
		if ok {
			matched = append(matched, in)
		}
	}
	resp := describeInstancesResponse{NS: ec2NS, RequestID: "req"}
	end := min(start+max, len(matched))
	for _, in := range matched[min(start, len(matched)):end] {
		// One reservation per instance is what AWS returns for single launches.
		resp.Reservations = append(resp.Reservations, xmlReservation{ReservationID: "r-" + in.ID[2:], OwnerID: "000000000000", Instances: []xmlInstance{in.xml()}})
	}
	if end < len(matched) {
		resp.NextToken = strconv.Itoa(end)
	}
	return resp, nil
}

type terminateResponse struct {
	XMLName   xml.Name `xml:"TerminateInstancesResponse"`
	NS        string   `xml:"xmlns,attr"`
	RequestID string   `xml:"requestId"`
	Items     []struct {
		InstanceID string   `xml:"instanceId"`
		Current    xmlState `xml:"currentState"`
		Previous   xmlState `xml:"previousState"`
	} `xml:"instancesSet>item"`
}

func (s *ec2Server) terminateInstances(f url.Values) (any, *ec2Error) {
	ids := indexed(f, "InstanceId")
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := terminateResponse{NS: ec2NS, RequestID: "req"}
	for _, id := range ids {
		in := s.find(id)
		if in == nil {
			return nil, &ec2Error{400, "InvalidInstanceID.NotFound", fmt.Sprintf("The instance ID '%s' does not exist", id)}
		}
		prev := in.State
		in.State = "terminated"
		resp.Items = append(resp.Items, struct {
			InstanceID string   `xml:"instanceId"`
			Current    xmlState `xml:"currentState"`
			Previous   xmlState `xml:"previousState"`
		}{id, xmlState{48, "terminated"}, xmlState{stateCodes[prev], prev}})
	}
	return resp, nil
}

type describeVpcsResponse struct {
	XMLName   xml.Name `xml:"DescribeVpcsResponse"`
	NS        string   `xml:"xmlns,attr"`
	RequestID string   `xml:"requestId"`
	Vpcs      []xmlVpc `xml:"vpcSet>item"`
}

type xmlCIDRAssoc struct {
	AssociationID string `xml:"associationId"`
	CIDR          string `xml:"cidrBlock,omitempty"`
	IPv6CIDR      string `xml:"ipv6CidrBlock,omitempty"`
	State         string `xml:"cidrBlockState>state,omitempty"`
	IPv6State     string `xml:"ipv6CidrBlockState>state,omitempty"`
}

type xmlVpc struct {
	VpcID string         `xml:"vpcId"`
	CIDR  string         `xml:"cidrBlock"`
	State string         `xml:"state"`
	V4    []xmlCIDRAssoc `xml:"cidrBlockAssociationSet>item"`
	V6    []xmlCIDRAssoc `xml:"ipv6CidrBlockAssociationSet>item"`
}

func (s *ec2Server) describeVpcs() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := describeVpcsResponse{NS: ec2NS, RequestID: "req"}
	for _, v := range s.vpcs {
		x := xmlVpc{VpcID: v.ID, CIDR: v.CIDRs[0], State: "available"}
		for i, c := range v.CIDRs {
			x.V4 = append(x.V4, xmlCIDRAssoc{AssociationID: fmt.Sprintf("vpc-cidr-assoc-%d", i), CIDR: c, State: "associated"})
		}
		for i, c := range v.IPv6 {
			x.V6 = append(x.V6, xmlCIDRAssoc{AssociationID: fmt.Sprintf("vpc-cidr-assoc-6-%d", i), IPv6CIDR: c, IPv6State: "associated"})
		}
		resp.Vpcs = append(resp.Vpcs, x)
	}
	return resp
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
