// Package proto is bansshee's wire format v1: the messages the controller sends to agents over SQS,
// their strict decoding, validation and Ed25519 signatures. It knows nothing of SQS or the kernel.
package proto

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Version is the wire format version carried in the bansshee-v message attribute.
const Version = "1"

// Message attribute names.
const (
	AttrVersion   = "bansshee-v"
	AttrKeyID     = "bansshee-kid"
	AttrSignature = "bansshee-sig"
)

// MaxBodyBytes is the largest message SQS takes (body and attributes together), and so the
// largest body we accept.
const MaxBodyBytes = 256 * 1024

// AttributeHeadroom is what the signature attributes (names, types, values) may take of an SQS
// message: sync parts are split to MaxBodyBytes - AttributeHeadroom, so that body and attributes
// stay under SQS's limit.
const AttributeHeadroom = 1024

// Kind says what a message asks an agent to do.
type Kind string

const (
	KindBan     Kind = "ban"
	KindUnban   Kind = "unban"
	KindLimit   Kind = "limit"
	KindUnlimit Kind = "unlimit"
	KindSync    Kind = "sync"
	// KindAllow carries the whole ledger allowlist (Allows) at its revision: the agent puts it in
	// its kernel allow set. Only agents that report the "allow" capability get one.
	KindAllow Kind = "allow"
)

// CapAllow is the capability (AgentStatus.Caps) of an agent that takes allow messages.
const CapAllow = "allow"

// MaxAllows bounds the entries of an allow message.
const MaxAllows = 10000

// Message is one command to an agent. Which slices may be set depends on Kind.
type Message struct {
	ID   string `json:"id"`
	Kind Kind   `json:"kind"`
	// To is the instance the message is for. It is inside the signed body, so a message read from
	// one instance's queue cannot be replayed into another's.
	To       string    `json:"to,omitempty"`
	IssuedAt time.Time `json:"issued_at"`
	Rev      int64     `json:"rev"`

	Bans     []Ban       `json:"bans,omitempty"`     // ban, sync
	BansZ    string      `json:"bans_z,omitempty"`   // sync: the bans compressed (see compress.go)
	Unbans   []Tombstone `json:"unbans,omitempty"`   // unban
	Limits   []Limit     `json:"limits,omitempty"`   // limit, sync
	Unlimits []Tombstone `json:"unlimits,omitempty"` // unlimit
	Part     *Part       `json:"part,omitempty"`     // sync split over several messages
	Allows   []Allow     `json:"allows,omitempty"`   // allow: the whole allowlist

	// Dropped counts the sync entries Validate left out: expired in transit, or breaking a rule.
	Dropped int `json:"-"`
}

// Ban drops all traffic from CIDR until ExpiresAt (zero: no expiry).
type Ban struct {
	ID        string    `json:"id"`
	CIDR      string    `json:"cidr"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	Reason    string    `json:"reason,omitempty"`
	Source    string    `json:"source,omitempty"`
	Rev       int64     `json:"rev"`
}

// Allow is an entry of the ledger allowlist: no ban drops CIDR until ExpiresAt (zero: until it is
// removed).
type Allow struct {
	CIDR      string    `json:"cidr"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// Prefix returns the entry's CIDR, which Validate has canonicalised.
func (a Allow) Prefix() netip.Prefix { p, _ := netip.ParsePrefix(a.CIDR); return p }

// Prefix returns the ban's CIDR, which Validate has canonicalised.
func (b Ban) Prefix() netip.Prefix { p, _ := netip.ParsePrefix(b.CIDR); return p }

// Tombstone removes an entry (ban or limit) created at an older revision. Agents keep it until
// ExpiresAt so that a late copy of the original cannot resurrect the entry.
type Tombstone struct {
	ID        string    `json:"id"`
	Rev       int64     `json:"rev"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// Limit is a rate-limit policy: each source may open Hits new connections per Seconds to Ports.
type Limit struct {
	ID       string `json:"id"`
	Proto    string `json:"proto"`
	Ports    []int  `json:"ports"`
	Hits     int    `json:"hits"`
	Seconds  int    `json:"seconds"`
	Action   string `json:"action"`
	Escalate bool   `json:"escalate,omitempty"`
	// EscalateUnverified lets a UDP limit escalate. A TCP source escalates only after it has
	// completed a handshake, which a spoofed source cannot; UDP has no handshake, so any address
	// can be forged into a fleet ban, and the operator must ask for it.
	EscalateUnverified bool  `json:"escalate_unverified,omitempty"`
	Rev                int64 `json:"rev"`
}

// Part numbers one message of a sync that did not fit in one body. Set names the whole sync.
type Part struct {
	Set   string `json:"set"`
	Index int    `json:"index"` // 1-based
	Count int    `json:"count"`
}

// BanID is the canonical id of a ban on prefix p: "b-174.132.223.252_32".
func BanID(p netip.Prefix) string {
	return "b-" + p.Addr().String() + "_" + fmt.Sprint(p.Bits())
}

// ParseBanID is the inverse of BanID.
func ParseBanID(id string) (netip.Prefix, error) {
	rest, ok := strings.CutPrefix(id, "b-")
	if !ok {
		return netip.Prefix{}, fmt.Errorf("%q is not a ban id", id)
	}
	i := strings.LastIndexByte(rest, '_')
	if i < 0 {
		return netip.Prefix{}, fmt.Errorf("%q is not a ban id", id)
	}
	p, err := netip.ParsePrefix(rest[:i] + "/" + rest[i+1:])
	if err != nil || BanID(p.Masked()) != id {
		return netip.Prefix{}, fmt.Errorf("%q is not a ban id", id)
	}
	return p, nil
}

// ParseCIDR parses an address or CIDR and returns it canonicalised (host bits cleared). A bare
// address is a /32 or /128. IPv4-mapped IPv6 addresses are unmapped.
func ParseCIDR(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return netip.Prefix{}, fmt.Errorf("empty address")
	}
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", s)
		}
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q: zones are not allowed", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a valid CIDR", s)
	}
	if p.Addr().Is4In6() {
		bits := p.Bits() - 96
		if bits < 0 {
			return netip.Prefix{}, fmt.Errorf("%q: IPv4-mapped prefix shorter than ::ffff:0:0/96", s)
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), bits)
	}
	return p.Masked(), nil
}
