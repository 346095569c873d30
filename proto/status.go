package proto

import (
	"crypto/sha256"
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
	Digest      string       `dynamodbav:"digest"`     // see Digest
	ExpiresAt   int64        `dynamodbav:"expires_at"` // TTL: a silent agent's item goes away after a day
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
