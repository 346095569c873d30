package proto

import "time"

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
