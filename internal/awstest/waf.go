package awstest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
)

// wafServer serves the WAFv2 IP-set calls (AWS JSON 1.1, target prefix AWSWAF_20190729) with the
// semantics of the API reference: names unique per scope, every change needs the entity's current
// LockToken (else WAFOptimisticLockException) and returns a new one, at most 10 000 addresses per
// set (WAFLimitsExceededException), CIDR notation of the set's version and never /0
// (WAFInvalidParameterException), 100 IP sets per scope (the default quota). kumo has no WAF.
type wafServer struct {
	mu       sync.Mutex
	seq      int
	sets     map[string]*wafIPSet // by scope + "/" + id
	conflict int                  // UpdateIPSet calls still to fail as if another writer came first
	writes   []WAFWrite
}

type wafIPSet struct {
	Name, ID, ARN, Scope, Version, Description, LockToken string
	Addresses                                             []string
}

// WAFWrite is one write call the emulator answered (for rate checks).
type WAFWrite struct {
	Op   string
	Name string
	At   time.Time
}

// WAFMaxAddresses is WAF's quota of CIDRs per IP set.
const WAFMaxAddresses = 10000

// wafMaxSets is the default quota of IP sets per account and Region (per scope here).
const wafMaxSets = 100

func newWAF() *wafServer { return &wafServer{sets: map[string]*wafIPSet{}} }

type wafError struct {
	Type, Msg string
}

var wafNameRe = regexp.MustCompile(`^[\w\-]{1,128}$`)

func (s *wafServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, op, _ := strings.Cut(r.Header.Get("X-Amz-Target"), ".")
	var in map[string]json.RawMessage
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		writeWAF(w, nil, &wafError{"WAFInvalidParameterException", "body is not JSON: " + err.Error()})
		return
	}
	str := func(k string) string {
		var v string
		_ = json.Unmarshal(in[k], &v)
		return v
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	scope := str("Scope")
	if scope != "REGIONAL" && scope != "CLOUDFRONT" {
		writeWAF(w, nil, &wafError{"WAFInvalidParameterException", fmt.Sprintf("Scope %q: want REGIONAL or CLOUDFRONT", scope)})
		return
	}
	var out any
	var err *wafError
	switch op {
	case "CreateIPSet":
		out, err = s.create(scope, str("Name"), str("IPAddressVersion"), str("Description"), in["Addresses"])
	case "GetIPSet":
		out, err = s.get(scope, str("Name"), str("Id"))
	case "UpdateIPSet":
		out, err = s.update(scope, str("Name"), str("Id"), str("LockToken"), in["Addresses"], in["Description"])
	case "ListIPSets":
		var limit int
		_ = json.Unmarshal(in["Limit"], &limit)
		out, err = s.list(scope, str("NextMarker"), limit)
	case "DeleteIPSet":
		out, err = s.delete(scope, str("Name"), str("Id"), str("LockToken"))
	default:
		err = &wafError{"WAFInvalidOperationException", fmt.Sprintf("operation %s is not emulated (bansshee test harness)", op)}
	}
	if err == nil && op != "GetIPSet" && op != "ListIPSets" {
		s.writes = append(s.writes, WAFWrite{Op: op, Name: str("Name"), At: time.Now()})
	}
	writeWAF(w, out, err)
}

func writeWAF(w http.ResponseWriter, out any, err *wafError) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	if err != nil {
		w.Header().Set("X-Amzn-ErrorType", err.Type)
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"__type": err.Type, "Message": err.Msg})
		return
	}
	_ = json.NewEncoder(w).Encode(out)
}

func token() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// addresses checks a request's Addresses against the set's version and the quota.
func addresses(raw json.RawMessage, version string) ([]string, *wafError) {
	if raw == nil {
		return nil, &wafError{"WAFInvalidParameterException", "Addresses is required"}
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, &wafError{"WAFInvalidParameterException", "Addresses: " + err.Error()}
	}
	if len(list) > WAFMaxAddresses {
		return nil, &wafError{"WAFLimitsExceededException", fmt.Sprintf("an IP set holds at most %d addresses; got %d", WAFMaxAddresses, len(list))}
	}
	for _, a := range list {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return nil, &wafError{"WAFInvalidParameterException", fmt.Sprintf("address %q is not in CIDR notation", a)}
		}
		if p.Bits() == 0 {
			return nil, &wafError{"WAFInvalidParameterException", fmt.Sprintf("address %s: /0 is not supported", a)}
		}
		if p.Addr().Is4() != (version == "IPV4") {
			return nil, &wafError{"WAFInvalidParameterException", fmt.Sprintf("address %s does not match the set's IPAddressVersion %s", a, version)}
		}
	}
	return list, nil
}

func (s *wafServer) create(scope, name, version, desc string, raw json.RawMessage) (any, *wafError) {
	if !wafNameRe.MatchString(name) {
		return nil, &wafError{"WAFInvalidParameterException", fmt.Sprintf("Name %q: 1 to 128 of [A-Za-z0-9_-]", name)}
	}
	if version != "IPV4" && version != "IPV6" {
		return nil, &wafError{"WAFInvalidParameterException", fmt.Sprintf("IPAddressVersion %q: want IPV4 or IPV6", version)}
	}
	n := 0
	for _, st := range s.sets {
		if st.Scope == scope {
			n++
			if st.Name == name {
				return nil, &wafError{"WAFDuplicateItemException", fmt.Sprintf("an IP set named %s already exists in scope %s", name, scope)}
			}
		}
	}
	if n >= wafMaxSets {
		return nil, &wafError{"WAFLimitsExceededException", fmt.Sprintf("scope %s already has %d IP sets", scope, n)}
	}
	list, err := addresses(raw, version)
	if err != nil {
		return nil, err
	}
	s.seq++
	id := fmt.Sprintf("%08x-0000-4000-8000-%012x", s.seq, s.seq)
	region := Region
	if scope == "CLOUDFRONT" {
		region = "us-east-1"
	}
	kind := "regional"
	if scope == "CLOUDFRONT" {
		kind = "global"
	}
	st := &wafIPSet{Name: name, ID: id, Scope: scope, Version: version, Description: desc, LockToken: token(), Addresses: list,
		ARN: fmt.Sprintf("arn:aws:wafv2:%s:000000000000:%s/ipset/%s/%s", region, kind, name, id)}
	s.sets[scope+"/"+id] = st
	return map[string]any{"Summary": st.summary()}, nil
}

func (st *wafIPSet) summary() map[string]any {
	return map[string]any{"ARN": st.ARN, "Id": st.ID, "Name": st.Name, "Description": st.Description, "LockToken": st.LockToken}
}

func (s *wafServer) find(scope, name, id string) (*wafIPSet, *wafError) {
	st := s.sets[scope+"/"+id]
	if st == nil || st.Name != name {
		return nil, &wafError{"WAFNonexistentItemException", fmt.Sprintf("no IP set %s with id %s in scope %s", name, id, scope)}
	}
	return st, nil
}

func (s *wafServer) get(scope, name, id string) (any, *wafError) {
	st, err := s.find(scope, name, id)
	if err != nil {
		return nil, err
	}
	addrs := st.Addresses
	if addrs == nil {
		addrs = []string{}
	}
	return map[string]any{"LockToken": st.LockToken, "IPSet": map[string]any{"ARN": st.ARN, "Id": st.ID, "Name": st.Name,
		"Description": st.Description, "IPAddressVersion": st.Version, "Addresses": addrs}}, nil
}

func (s *wafServer) update(scope, name, id, lock string, raw, desc json.RawMessage) (any, *wafError) {
	st, err := s.find(scope, name, id)
	if err != nil {
		return nil, err
	}
	if s.conflict > 0 {
		s.conflict--
		st.LockToken = token() // another writer's update landed between the caller's get and this call
	}
	if lock == "" || lock != st.LockToken {
		return nil, &wafError{"WAFOptimisticLockException", "AWS WAF couldn’t save your changes because someone changed the resource after you started to edit it. Reapply your changes."}
	}
	list, err := addresses(raw, st.Version)
	if err != nil {
		return nil, err
	}
	st.Addresses = list
	if desc != nil {
		_ = json.Unmarshal(desc, &st.Description)
	}
	st.LockToken = token()
	return map[string]any{"NextLockToken": st.LockToken}, nil
}

func (s *wafServer) list(scope, marker string, limit int) (any, *wafError) {
	if limit == 0 {
		limit = 100
	}
	if limit < 1 || limit > 100 {
		return nil, &wafError{"WAFInvalidParameterException", fmt.Sprintf("Limit %d: 1 to 100", limit)}
	}
	var all []*wafIPSet
	for _, st := range s.sets {
		if st.Scope == scope {
			all = append(all, st)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	start := 0
	if marker != "" {
		start = sort.Search(len(all), func(i int) bool { return all[i].Name > marker })
	}
	out := []map[string]any{}
	next := ""
	for i := start; i < len(all); i++ {
		if len(out) == limit {
			next = all[i-1].Name
			break
		}
		out = append(out, all[i].summary())
	}
	resp := map[string]any{"IPSets": out}
	if next != "" {
		resp["NextMarker"] = next
	}
	return resp, nil
}

func (s *wafServer) delete(scope, name, id, lock string) (any, *wafError) {
	st, err := s.find(scope, name, id)
	if err != nil {
		return nil, err
	}
	if lock == "" || lock != st.LockToken {
		return nil, &wafError{"WAFOptimisticLockException", "the IP set changed since its LockToken was read"}
	}
	delete(s.sets, scope+"/"+id)
	return map[string]any{}, nil
}

// ConflictUpdates makes the next n UpdateIPSet calls find the set changed by another writer since
// the caller read it, so they fail with WAFOptimisticLockException.
func (s *wafServer) ConflictUpdates(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conflict = n
}

// Writes returns the write calls (create, update, delete) answered so far.
func (s *wafServer) Writes() []WAFWrite {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]WAFWrite(nil), s.writes...)
}

// Addresses returns the addresses of the sets of a scope whose name starts with prefix, by name.
func (s *wafServer) Addresses(scope, prefix string) map[string][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]string{}
	for _, st := range s.sets {
		if st.Scope == scope && strings.HasPrefix(st.Name, prefix) {
			out[st.Name] = append([]string(nil), st.Addresses...)
		}
	}
	return out
}
