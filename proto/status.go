package proto

import (
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"strconv"
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

// StatusKey returns the ledger key of an agent's status item.
func StatusKey(instanceID string) (pk, sk string) { return "agent#" + instanceID, "status" }

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
