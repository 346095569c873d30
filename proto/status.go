package proto

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"sort"
	"strconv"
	"strings"
	"time"
)

// AgentStatus is the heartbeat an agent writes to the ledger table, item key
// pk = "agent#<instance-id>", sk = "status". It is the agent's only write to the ledger.
type AgentStatus struct {
	PK          string       `dynamodbav:"pk"`
	SK          string       `dynamodbav:"sk"`
	InstanceID  string       `dynamodbav:"instance_id"`
	AppliedRev  int64        `dynamodbav:"applied_rev"`
	Bans        int          `dynamodbav:"bans"`
	Limits      int          `dynamodbav:"limits"`
	Heartbeat   time.Time    `dynamodbav:"heartbeat"`
	LastError   string       `dynamodbav:"last_error,omitempty"`
	Version     string       `dynamodbav:"version"`
	Escalations []Escalation `dynamodbav:"escalations,omitempty"`
	Digest      string       `dynamodbav:"digest"`              // see Digest
	Caps        string       `dynamodbav:"caps,omitempty"`      // capabilities, comma separated: CapAllow
	AllowRev    int64        `dynamodbav:"allow_rev,omitempty"` // the allowlist revision it holds
	ExpiresAt   int64        `dynamodbav:"expires_at"`          // TTL: a silent agent's item goes away after a day
}

// Escalation reports a source that tripped an escalating rate limit on the agent.
type Escalation struct {
	Addr    string    `dynamodbav:"addr"`
	LimitID string    `dynamodbav:"limit_id"`
	Seen    time.Time `dynamodbav:"seen"`
}

// StatusKey returns the ledger key of an agent's status item. principal is what IAM knows the
// agent as, aws:userid: for an instance-profile role that is "<role id>:<instance id>" (the key
// the agent role's policy pins with dynamodb:LeadingKeys = agent#${aws:userid}, so an instance can
// write only its own); elsewhere (static credentials, tests) it is the instance id itself.
func StatusKey(principal string) (pk, sk string) { return "agent#" + principal, "status" }

// StatusPrincipal is the principal an agent keys its status with: its aws:userid when that names
// this instance (role-id:instance-id), else the instance id.
func StatusPrincipal(userID, instanceID string) string {
	if i := strings.LastIndexByte(userID, ':'); i >= 0 && userID[i+1:] == instanceID {
		return userID
	}
	return instanceID
}

// InstanceOfStatusKey returns the instance a status item's pk speaks for: the part after the last
// ':' of a role-session principal, or the whole id.
func InstanceOfStatusKey(pk string) (string, bool) {
	id, ok := strings.CutPrefix(pk, "agent#")
	if !ok || id == "" {
		return "", false
	}
	if i := strings.LastIndexByte(id, ':'); i >= 0 {
		id = id[i+1:]
	}
	return id, id != ""
}

// DigestV2Prefix marks a digest of the second kind (DigestV2).
const DigestV2Prefix = "2:"

// DigestSum is the running form of DigestV2: the sum, lane by lane, of every entry's hash. Adding
// or removing one entry is O(1), so an agent holding a million bans keeps its digest current
// without sorting them on every change.
type DigestSum [2]uint64

// entryHash is the hash of one digest line, as two 64-bit lanes.
func entryHash(kind byte, id string, n int64) [2]uint64 {
	var buf [96]byte
	line := append(buf[:0], kind, ' ')
	line = append(line, id...)
	line = append(line, ' ')
	line = strconv.AppendInt(line, n, 10)
	h := sha256.Sum256(line)
	return [2]uint64{binary.BigEndian.Uint64(h[:8]), binary.BigEndian.Uint64(h[8:16])}
}

func expUnix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// AddBan adds (sign +1) or removes (sign -1) a ban with id and expiry (unix seconds, 0: never).
func (d *DigestSum) AddBan(id string, exp int64, sign int) { d.add(entryHash('b', id, exp), sign) }

// AddLimit adds or removes a limit at its revision.
func (d *DigestSum) AddLimit(id string, rev int64, sign int) { d.add(entryHash('l', id, rev), sign) }

func (d *DigestSum) add(h [2]uint64, sign int) {
	if sign >= 0 {
		d[0], d[1] = d[0]+h[0], d[1]+h[1]
	} else {
		d[0], d[1] = d[0]-h[0], d[1]-h[1]
	}
}

// String is the digest as agents report it.
func (d DigestSum) String() string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], d[0])
	binary.BigEndian.PutUint64(b[8:], d[1])
	return DigestV2Prefix + hex.EncodeToString(b[:])
}

// DigestV2 summarises the same state as Digest (ban ids with their expiry, limit ids with their
// revision) as the sum of the entries' hashes: order does not matter, so it needs no sort and can
// be kept up to date one entry at a time (DigestSum). Agents since the journal report it; the
// reconciler compares an agent's digest with the digest of the same kind.
func DigestV2(bans []Ban, limits []Limit) string {
	var d DigestSum
	for _, b := range bans {
		d.AddBan(b.ID, expUnix(b.ExpiresAt), 1)
	}
	for _, l := range limits {
		d.AddLimit(l.ID, l.Rev, 1)
	}
	return d.String()
}

// Matches reports whether an agent's reported digest is the digest of bans and limits, of
// whichever kind the agent reports (an agent older than DigestV2 reports Digest).
func Matches(reported string, bans []Ban, limits []Limit) bool {
	if strings.HasPrefix(reported, DigestV2Prefix) {
		return reported == DigestV2(bans, limits)
	}
	return reported == Digest(bans, limits)
}

// Digest summarises a desired state (ban ids with their expiry, limit ids with their revision) so
// the reconciler can tell an agent that holds the same state from one that does not, whatever
// revisions it has seen. Agents report it; the reconciler computes it from the ledger.
func Digest(bans []Ban, limits []Limit) string {
	lines := make([]string, 0, len(bans)+len(limits))
	for _, b := range bans {
		exp := int64(0)
		if !b.ExpiresAt.IsZero() {
			exp = b.ExpiresAt.Unix()
		}
		lines = append(lines, "b "+b.ID+" "+strconv.FormatInt(exp, 10))
	}
	for _, l := range limits {
		lines = append(lines, "l "+l.ID+" "+strconv.FormatInt(l.Rev, 10))
	}
	sort.Strings(lines)
	h := sha256.New()
	for _, l := range lines {
		h.Write([]byte(l))
		h.Write([]byte{'\n'})
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}
