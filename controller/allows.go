package controller

// The ledger allowlist reaches the agents' kernel allow sets as an allow message: the whole list
// at its revision (the highest revision of its items, tombstones included), sent to every agent
// that reports the allow capability when the list changes, and again by the reconciler to an
// agent that reports an older revision. Agents older than the message kind never get one (their
// strict decoding would refuse it); the controller still keeps what the list covers off them.

import (
	"context"
	"time"

	"github.com/bansshee/bansshee/proto"
	"github.com/oklog/ulid/v2"
)

// allowList is the allow message's content for the allow items (tombstones included) at now.
func allowList(items []PolicyItem, now time.Time) (rev int64, list []proto.Allow) {
	list = []proto.Allow{}
	for _, a := range items {
		rev = max(rev, a.Rev)
		if a.Active(now) {
			list = append(list, proto.Allow{CIDR: a.Prefix().String(), ExpiresAt: a.Expires()})
		}
	}
	return rev, list
}

// takesAllows reports whether an agent takes allow messages: it says so, or has not reported
// yet (a new agent is current).
func takesAllows(st proto.AgentStatus, reported bool) bool {
	return !reported || st.Caps == proto.CapAllow
}

// sendAllows sends the ledger allowlist to every managed agent that takes it.
func (c *Controller) sendAllows(ctx context.Context, _ int64) error {
	now := c.Now().UTC()
	items, err := c.Ledger.Allows(ctx, now)
	if err != nil {
		return err
	}
	rev, list := allowList(items, now)
	if rev == 0 {
		return nil
	}
	instances, _, err := c.managedInstances(ctx, mustParse("*"))
	if err != nil {
		return err
	}
	ids := make([]string, len(instances))
	for i, in := range instances {
		ids[i] = in.ID
	}
	statuses, err := c.Ledger.Statuses(ctx, ids)
	if err != nil {
		return err
	}
	var targets []Instance
	for _, in := range instances {
		st, reported := statuses[in.ID]
		if takesAllows(st, reported) && st.AllowRev < rev {
			targets = append(targets, in)
		}
	}
	m := proto.Message{ID: ulid.Make().String(), Kind: proto.KindAllow, IssuedAt: now, Rev: rev, Allows: list}
	encode, err := c.Signer.Addressed(m)
	if err != nil {
		return err
	}
	var failed int
	for _, d := range c.sendAll(ctx, targets, func(ctx context.Context, id, url string) error {
		body, attrs, err := encode(id)
		if err != nil {
			return err
		}
		return SendRaw(ctx, c.Queues.SQS, url, m.ID, body, attrs)
	}) {
		if d.Err != nil {
			failed++
		}
	}
	if failed > 0 {
		c.Log.Warn("allowlist not sent to every agent; the reconciler will", "failed", failed, "rev", rev)
	}
	return nil
}

// sendAllowsTo sends one agent the allowlist (the reconciler, to an agent behind).
func (c *Controller) sendAllowsTo(ctx context.Context, id string, rev int64, list []proto.Allow) error {
	url, err := c.queueURL(ctx, id)
	if err != nil {
		return err
	}
	m := &proto.Message{ID: ulid.Make().String(), Kind: proto.KindAllow, To: id, IssuedAt: c.Now().UTC(), Rev: rev, Allows: list}
	return Send(ctx, c.Queues.SQS, c.Signer, url, m)
}
