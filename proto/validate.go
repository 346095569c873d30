package proto

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"time"
	"unicode/utf8"
)

// Sentinel errors callers branch on. Every error Decode returns wraps exactly one of them;
// Reason maps it to the short label used in metrics and logs.
var (
	ErrTooLarge     = errors.New("body too large")
	ErrUnsigned     = errors.New("message is not signed")
	ErrBadVersion   = errors.New("unsupported wire version")
	ErrUnknownKey   = errors.New("unknown signing key")
	ErrBadSignature = errors.New("bad signature")
	ErrMalformed    = errors.New("malformed message")
	ErrInvalid      = errors.New("invalid message")
	ErrStale        = errors.New("message outside the replay window")
	ErrMisdirected  = errors.New("message for another instance")
)

// Reason returns a short, stable label for err ("bad_signature", "invalid", ...), or "other".
func Reason(err error) string {
	for _, r := range []struct {
		err   error
		label string
	}{
		{ErrTooLarge, "too_large"}, {ErrUnsigned, "unsigned"}, {ErrBadVersion, "bad_version"},
		{ErrUnknownKey, "unknown_key"}, {ErrBadSignature, "bad_signature"}, {ErrMalformed, "malformed"},
		{ErrInvalid, "invalid"}, {ErrStale, "stale"}, {ErrMisdirected, "misdirected"},
	} {
		if errors.Is(err, r.err) {
			return r.label
		}
	}
	return "other"
}

// FieldError says which field broke which rule. It wraps ErrInvalid.
type FieldError struct {
	Field string // e.g. "bans[2].cidr"
	Msg   string
	also  error // a second sentinel, for callers that branch on it
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }
func (e *FieldError) Unwrap() []error {
	if e.also != nil {
		return []error{ErrInvalid, e.also}
	}
	return []error{ErrInvalid}
}

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Limits bounds what Validate accepts. The zero value is not useful: start from DefaultLimits.
type Limits struct {
	MinPrefix4 int           // broadest IPv4 prefix accepted (default 8)
	MinPrefix6 int           // broadest IPv6 prefix accepted (default 32)
	MaxTTL     time.Duration // longest ban (default 365 days)
	MaxHits    int           // default 10000
	MaxSeconds int           // default 86400
	MaxEntries int           // entries in one message (default 100000)
}

// DefaultLimits are the defaults of DESIGN.md.
func DefaultLimits() Limits {
	return Limits{MinPrefix4: 8, MinPrefix6: 32, MaxTTL: 365 * 24 * time.Hour, MaxHits: 10000, MaxSeconds: 86400, MaxEntries: 100000}
}

// CheckPrefix rejects the whole-internet prefixes, the never-ban ranges and prefixes broader than
// the limits allow.
func (l Limits) CheckPrefix(p netip.Prefix) error {
	if err := l.checkBits(p); err != nil {
		return err
	}
	return CheckNeverBan(p)
}

func (l Limits) checkBits(p netip.Prefix) error {
	if p.Bits() == 0 {
		return fmt.Errorf("%s would match every address", p)
	}
	min := l.MinPrefix4
	if p.Addr().Is6() {
		min = l.MinPrefix6
	}
	if p.Bits() < min {
		return fmt.Errorf("prefix /%d of %s is broader than the minimum /%d", p.Bits(), p, min)
	}
	return nil
}

var idRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/_-]{0,127}$`)

// setRe is a sync's set id: it names files in the agent's state directory, so no '/' and no '.'.
var setRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

// Validate checks every field of m against l at time now and canonicalises ban CIDRs in place.
func (m *Message) Validate(l Limits, now time.Time) error {
	if m.ID == "" || !idRe.MatchString(m.ID) {
		return fieldErr("id", "must be 1-128 characters of [A-Za-z0-9._:/-], got %q", m.ID)
	}
	if m.To != "" && !idRe.MatchString(m.To) {
		return fieldErr("to", "bad instance id %q", m.To)
	}
	if m.IssuedAt.IsZero() {
		return fieldErr("issued_at", "missing")
	}
	if m.Rev <= 0 {
		return fieldErr("rev", "must be positive, got %d", m.Rev)
	}
	if n := len(m.Bans) + len(m.Unbans) + len(m.Limits) + len(m.Unlimits); n > l.MaxEntries {
		return fieldErr("bans", "%d entries exceed the maximum %d", n, l.MaxEntries)
	}
	allowed := map[Kind]string{KindBan: "bans", KindUnban: "unbans", KindLimit: "limits", KindUnlimit: "unlimits"}
	switch m.Kind {
	case KindBan, KindUnban, KindLimit, KindUnlimit:
		for field, n := range map[string]int{"bans": len(m.Bans), "unbans": len(m.Unbans), "limits": len(m.Limits), "unlimits": len(m.Unlimits)} {
			if field == allowed[m.Kind] && n == 0 {
				return fieldErr(field, "a %q message needs at least one entry", m.Kind)
			}
			if field != allowed[m.Kind] && n > 0 {
				return fieldErr(field, "not allowed in a %q message", m.Kind)
			}
		}
		if m.Part != nil {
			return fieldErr("part", "only sync messages have parts")
		}
	case KindSync:
		if len(m.Unbans)+len(m.Unlimits) > 0 {
			return fieldErr("unbans", "not allowed in a sync message")
		}
		if p := m.Part; p != nil && (p.Count < 1 || p.Index < 1 || p.Index > p.Count || p.Count > 10000 || !setRe.MatchString(p.Set)) {
			return fieldErr("part", "want 1 <= index <= count <= 10000 and a set id of [A-Za-z0-9_-], got %+v", *p)
		}
	case KindAllow:
		// An empty list is valid: the last entry was removed.
		if n := len(m.Bans) + len(m.Unbans) + len(m.Limits) + len(m.Unlimits); n > 0 || m.BansZ != "" {
			return fieldErr("bans", "not allowed in an allow message")
		}
		if m.Part != nil {
			return fieldErr("part", "only sync messages have parts")
		}
		if len(m.Allows) > MaxAllows {
			return fieldErr("allows", "%d entries exceed the maximum %d", len(m.Allows), MaxAllows)
		}
		for i := range m.Allows {
			a := &m.Allows[i]
			p, err := ParseCIDR(a.CIDR)
			if err == nil {
				err = l.checkBits(p)
			}
			if err != nil {
				return fieldErr(fmt.Sprintf("allows[%d].cidr", i), "%v", err)
			}
			a.CIDR = p.String()
		}
		return nil
	default:
		return fieldErr("kind", "unknown kind %q (want ban, unban, limit, unlimit, sync or allow)", m.Kind)
	}
	if len(m.Allows) > 0 {
		return fieldErr("allows", "only allow messages carry allows")
	}
	// A sync is the whole state: an entry that expired in transit, or that breaks a rule (a
	// reason over MaxTextBytes from an old ledger item, say), is dropped and counted and the rest
	// applied; one bad entry must not keep an instance from converging. A never-ban entry (an old
	// ledger item) is kept for the agent to hold without enforcing it, so that its digest still
	// matches the ledger's. In any other kind a bad entry refuses the message.
	sync := m.Kind == KindSync
	kept := m.Bans[:0]
	for i := range m.Bans {
		err := m.Bans[i].validate(l, now, m.Rev, sync)
		if sync && err != nil {
			m.Dropped++
			continue
		}
		if err != nil {
			return prefixField(fmt.Sprintf("bans[%d].", i), err)
		}
		kept = append(kept, m.Bans[i])
	}
	m.Bans = kept
	for i, t := range m.Unbans {
		if err := t.validate(m.Rev); err != nil {
			return prefixField(fmt.Sprintf("unbans[%d].", i), err)
		}
	}
	for i, t := range m.Unlimits {
		if err := t.validate(m.Rev); err != nil {
			return prefixField(fmt.Sprintf("unlimits[%d].", i), err)
		}
	}
	for i := range m.Limits {
		if err := m.Limits[i].validate(l, m.Rev); err != nil {
			return prefixField(fmt.Sprintf("limits[%d].", i), err)
		}
	}
	return nil
}

func prefixField(prefix string, err error) error {
	var fe *FieldError
	if errors.As(err, &fe) {
		return &FieldError{Field: prefix + fe.Field, Msg: fe.Msg, also: fe.also}
	}
	return err
}

// MaxTextBytes is the longest reason or source a ban may carry. The controller truncates what a
// machine wrote and refuses an operator's longer text, so that no ledger item is one an agent
// refuses.
const MaxTextBytes = 256

// TruncateText cuts s to at most n bytes (n >= 3), ending in "..." when it cut, and never inside
// a UTF-8 sequence.
func TruncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - 3
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// Validate checks one ban on its own and canonicalises its CIDR and id.
func (b *Ban) Validate(l Limits, now time.Time) error { return b.validate(l, now, 0, false) }

// errExpired marks a ban whose expiry has passed (a sync drops such an entry).
var errExpired = errors.New("expired")

func (b *Ban) validate(l Limits, now time.Time, msgRev int64, inSync bool) error {
	p, err := ParseCIDR(b.CIDR)
	if err != nil {
		return fieldErr("cidr", "%v", err)
	}
	check := l.CheckPrefix
	if inSync {
		check = l.checkBits
	}
	if err := check(p); err != nil {
		return fieldErr("cidr", "%v", err)
	}
	b.CIDR = p.String()
	if b.ID == "" {
		b.ID = BanID(p)
	} else if b.ID != BanID(p) {
		return fieldErr("id", "%q must be %q, the id of %s", b.ID, BanID(p), p)
	}
	if !b.ExpiresAt.IsZero() {
		if !b.ExpiresAt.After(now) {
			return &FieldError{Field: "expires_at", Msg: fmt.Sprintf("%s is in the past", b.ExpiresAt.Format(time.RFC3339)), also: errExpired}
		}
		if b.ExpiresAt.Sub(now) > l.MaxTTL {
			return fieldErr("expires_at", "%s is more than the maximum TTL %s away", b.ExpiresAt.Format(time.RFC3339), l.MaxTTL)
		}
	}
	if len(b.Reason) > MaxTextBytes || len(b.Source) > MaxTextBytes {
		return fieldErr("reason", "reason and source are limited to %d bytes", MaxTextBytes)
	}
	if b.Rev < 0 || (msgRev > 0 && b.Rev > msgRev) {
		return fieldErr("rev", "%d must be between 0 and the message revision %d", b.Rev, msgRev)
	}
	if b.Rev == 0 {
		b.Rev = msgRev
	}
	return nil
}

func (t Tombstone) validate(msgRev int64) error {
	if !idRe.MatchString(t.ID) {
		return fieldErr("id", "bad id %q", t.ID)
	}
	if t.Rev <= 0 || t.Rev > msgRev {
		return fieldErr("rev", "%d must be between 1 and the message revision %d", t.Rev, msgRev)
	}
	return nil
}

// Validate checks one rate-limit policy on its own.
func (p *Limit) Validate(l Limits) error { return p.validate(l, 0) }

func (p *Limit) validate(l Limits, msgRev int64) error {
	if !idRe.MatchString(p.ID) {
		return fieldErr("id", "bad id %q", p.ID)
	}
	if p.Proto != "tcp" && p.Proto != "udp" {
		return fieldErr("proto", "must be tcp or udp, got %q", p.Proto)
	}
	if len(p.Ports) == 0 || len(p.Ports) > 15 {
		return fieldErr("ports", "need 1 to 15 ports, got %d", len(p.Ports))
	}
	for i, port := range p.Ports {
		if port < 1 || port > 65535 {
			return fieldErr(fmt.Sprintf("ports[%d]", i), "%d is not in 1-65535", port)
		}
	}
	if p.Hits < 1 || p.Hits > l.MaxHits {
		return fieldErr("hits", "%d is not in 1-%d", p.Hits, l.MaxHits)
	}
	if p.Seconds < 1 || p.Seconds > l.MaxSeconds {
		return fieldErr("seconds", "%d is not in 1-%d", p.Seconds, l.MaxSeconds)
	}
	if p.EscalateUnverified && (!p.Escalate || p.Proto != "udp") {
		return fieldErr("escalate_unverified", "only for an escalating udp limit")
	}
	if p.Action == "" {
		p.Action = "drop"
	}
	if p.Action != "drop" && p.Action != "reject" {
		return fieldErr("action", "must be drop or reject, got %q", p.Action)
	}
	if p.Rev == 0 {
		p.Rev = msgRev
	}
	if p.Rev < 0 || (msgRev > 0 && p.Rev > msgRev) {
		return fieldErr("rev", "%d must be between 1 and the message revision %d", p.Rev, msgRev)
	}
	return nil
}
