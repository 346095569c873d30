package controller

// Operators' steering: the ledger allowlist (pk "allow") and the holds unbans leave (pk "hold").
// Every ban, whoever asks, passes Controller.filter, which refuses what they cover.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/bansshee/bansshee/proto"
	"golang.org/x/sync/errgroup"
)

// Partitions of the policy items.
const (
	allowPK = "allow"
	holdPK  = "hold"
)

// DefaultHold is how long an unban of a trigger's ban keeps triggers from banning it again
// when the operator gives no --hold.
const DefaultHold = time.Hour

// policyTombstone is how long a removed allow entry stays as a tombstone (so the allow list's
// revision, the highest of its items, never goes back).
const policyTombstone = 7 * 24 * time.Hour

// PolicyItem is an allow entry or a hold in the ledger; the sort key is the CIDR.
type PolicyItem struct {
	PK        string    `dynamodbav:"pk"`
	SK        string    `dynamodbav:"sk"`
	Reason    string    `dynamodbav:"reason"`
	Who       string    `dynamodbav:"who"`
	Rev       int64     `dynamodbav:"rev"`
	Until     int64     `dynamodbav:"until,omitempty"`      // when it stops applying (0: never)
	ExpiresAt int64     `dynamodbav:"expires_at,omitempty"` // TTL: Until, or a tombstone's end
	Created   time.Time `dynamodbav:"created"`
	Deleted   bool      `dynamodbav:"deleted,omitempty"`
}

// Prefix is the entry's CIDR.
func (p PolicyItem) Prefix() netip.Prefix { pf, _ := proto.ParseCIDR(p.SK); return pf }

// Active reports whether the entry applies at now.
func (p PolicyItem) Active(now time.Time) bool {
	return !p.Deleted && (p.Until == 0 || p.Until > now.Unix())
}

// Expires is when the entry stops applying (zero: never).
func (p PolicyItem) Expires() time.Time {
	if p.Until == 0 {
		return time.Time{}
	}
	return time.Unix(p.Until, 0).UTC()
}

// putPolicy writes an allow entry or hold unless the ledger holds it at a newer revision.
func (l *Ledger) putPolicy(ctx context.Context, it PolicyItem) error {
	item, err := attributevalue.MarshalMap(it)
	if err != nil {
		return err
	}
	_, err = l.DDB.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(l.Table), Item: item,
		ConditionExpression:       aws.String("attribute_not_exists(pk) OR rev < :rev"),
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":rev": n(it.Rev)}})
	if isConditionFailed(err) {
		return fmt.Errorf("%s %s: a newer change was written meanwhile", it.PK, it.SK)
	}
	if err != nil {
		return fmt.Errorf("write %s %s: %w", it.PK, it.SK, err)
	}
	return nil
}

// Allows returns the allow entries, tombstones included, that have not expired at now.
func (l *Ledger) Allows(ctx context.Context, now time.Time) ([]PolicyItem, error) {
	return l.policies(ctx, allowPK, now)
}

// Holds returns the holds that have not expired at now.
func (l *Ledger) Holds(ctx context.Context, now time.Time) ([]PolicyItem, error) {
	return l.policies(ctx, holdPK, now)
}

func (l *Ledger) policies(ctx context.Context, pk string, now time.Time) ([]PolicyItem, error) {
	all, err := queryItems[PolicyItem](ctx, l, pk)
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, p := range all {
		if p.ExpiresAt == 0 || p.ExpiresAt > now.Unix() {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].SK < out[j].SK })
	return out, nil
}

// policyCache holds the allow entries and holds for Config.PolicyCache, so that the hot ban path
// (a Lambda batch, an escalation) does not read them for every ban. A write through this
// controller drops it at once; another process's write is seen within PolicyCache (and agents
// enforce allow entries in their kernels regardless).
type policyCache struct {
	mu     sync.Mutex
	allows []PolicyItem
	holds  []PolicyItem
	at     time.Time
}

func (c *Controller) invalidatePolicies() {
	c.policy.mu.Lock()
	c.policy.at = time.Time{}
	c.policy.mu.Unlock()
}

// policies returns the allow entries and holds in force at now.
func (c *Controller) policies(ctx context.Context) (allows, holds []PolicyItem, err error) {
	c.policy.mu.Lock()
	defer c.policy.mu.Unlock()
	now := c.Now()
	if c.policy.at.IsZero() || time.Since(c.policy.at) >= c.PolicyCache {
		var a, h []PolicyItem
		var g errgroup.Group // both partitions at once: one round trip, not two
		g.Go(func() (err error) { a, err = c.Ledger.Allows(ctx, now); return err })
		g.Go(func() (err error) { h, err = c.Ledger.Holds(ctx, now); return err })
		if err = g.Wait(); err != nil {
			return nil, nil, fmt.Errorf("read allow list and holds: %w", err)
		}
		c.policy.allows, c.policy.holds, c.policy.at = a, h, time.Now()
	}
	for _, p := range c.policy.allows {
		if p.Active(now) {
			allows = append(allows, p)
		}
	}
	for _, p := range c.policy.holds {
		if p.Active(now) {
			holds = append(holds, p)
		}
	}
	return allows, holds, nil
}

// policyRefusal says why p may not be banned by the allow entries and (unless force) holds.
func policyRefusal(p netip.Prefix, allows, holds []PolicyItem, force bool) error {
	for _, a := range allows {
		if p.Overlaps(a.Prefix()) {
			return fmt.Errorf("%s covers allow entry %s (%q, by %s): 'bansshee allow rm %s' first", p, a.SK, a.Reason, a.Who, a.SK)
		}
	}
	if force {
		return nil
	}
	for _, h := range holds {
		if p.Overlaps(h.Prefix()) {
			return fmt.Errorf("%s is held until %s after an unban (%q, by %s): give --force to ban it anyway", h.SK, h.Expires().Format(time.RFC3339), h.Reason, h.Who)
		}
	}
	return nil
}

// AllowRequest adds an entry to the ledger allowlist.
type AllowRequest struct {
	CIDR   string
	Reason string // required
	Who    string
	TTL    time.Duration // 0: until removed
	Force  bool          // accept a prefix broader than the soft minimum (/16, /48)
}

// Allow writes an allow entry, lifts every ban and feed entry it covers on every instance, and
// sends the new allowlist to the agents' kernels.
func (c *Controller) Allow(ctx context.Context, req AllowRequest) (*Result, error) {
	p, err := proto.ParseCIDR(req.CIDR)
	if err != nil {
		return nil, fmt.Errorf("%w: allow %s: %w", ErrRefused, req.CIDR, err)
	}
	if err := c.checkWidth(p, req.Force); err != nil {
		return nil, fmt.Errorf("%w: allow %s: %w", ErrRefused, req.CIDR, err)
	}
	if strings.TrimSpace(req.Reason) == "" {
		return nil, fmt.Errorf("%w: allow %s: --reason is required (the allowlist says why every entry is there)", ErrRefused, p)
	}
	if req.TTL < 0 || req.TTL > c.Limits.MaxTTL {
		return nil, fmt.Errorf("%w: allow %s: ttl %s is not between 0 (until removed) and %s", ErrRefused, p, req.TTL, c.Limits.MaxTTL)
	}
	rev, err := c.Ledger.NextRev(ctx)
	if err != nil {
		return nil, err
	}
	now := c.Now().UTC()
	it := PolicyItem{PK: allowPK, SK: p.String(), Reason: req.Reason, Who: req.Who, Rev: rev, Created: now}
	if req.TTL > 0 {
		it.Until = now.Add(req.TTL).Unix()
		it.ExpiresAt = it.Until + int64(policyTombstone/time.Second)
	}
	if err := c.Ledger.putPolicy(ctx, it); err != nil {
		return nil, err
	}
	c.invalidatePolicies()
	c.Log.Info("allow add", "cidr", p.String(), "who", req.Who, "reason", req.Reason, "ttl", req.TTL, "rev", rev)
	wait := c.recordAsync(ctx, Event{Kind: EventAllow, CIDRs: []string{p.String()}, Who: req.Who, Reason: req.Reason, Rev: rev, Until: it.Expires()})
	res, err := c.lift(ctx, p, rev)
	if res != nil && len(res.Tombstoned) > 0 {
		var lifted []string
		for _, b := range res.Tombstoned {
			lifted = append(lifted, b.CIDR)
		}
		if herr := c.record(ctx, Event{Kind: EventUnban, CIDRs: lifted, Who: req.Who, Reason: "lifted by allow entry " + p.String() + ": " + req.Reason, Rev: rev}); herr != nil {
			c.Log.Warn("history not written", "kind", EventUnban, "err", herr)
		}
	}
	c.notify(ctx, "allow", res)
	if aerr := c.sendAllows(ctx, rev); aerr != nil && err == nil {
		err = aerr
	}
	wait()
	return res, err
}

// RemoveAllow takes an entry off the ledger allowlist. Feed entries it kept out come back with
// the reconciler's next pass; bans it lifted stay lifted.
func (c *Controller) RemoveAllow(ctx context.Context, cidr, who, reason string) (*Result, error) {
	p, err := proto.ParseCIDR(cidr)
	if err != nil {
		return nil, fmt.Errorf("%w: allow rm %s: %w", ErrRefused, cidr, err)
	}
	now := c.Now().UTC()
	all, err := c.Ledger.Allows(ctx, now)
	if err != nil {
		return nil, err
	}
	var cur *PolicyItem
	for i := range all {
		if all[i].SK == p.String() && all[i].Active(now) {
			cur = &all[i]
		}
	}
	if cur == nil {
		return nil, fmt.Errorf("%w: no allow entry %s", ErrRefused, p)
	}
	rev, err := c.Ledger.NextRev(ctx)
	if err != nil {
		return nil, err
	}
	dead := *cur
	dead.Deleted, dead.Rev, dead.Who, dead.Reason = true, rev, who, reason
	dead.ExpiresAt = now.Add(policyTombstone).Unix()
	if err := c.Ledger.putPolicy(ctx, dead); err != nil {
		return nil, err
	}
	c.invalidatePolicies()
	c.Log.Info("allow rm", "cidr", p.String(), "who", who, "reason", reason, "rev", rev)
	wait := c.recordAsync(ctx, Event{Kind: EventUnallow, CIDRs: []string{p.String()}, Who: who, Reason: reason, Rev: rev})
	res := &Result{Rev: rev, Written: 1}
	err = c.sendAllows(ctx, rev)
	wait()
	return res, err
}

// checkWidth applies the prefix limits of a ban to p: never broader than the hard minimum (/8,
// /32), and broader than the soft one (/16, /48) only with force.
func (c *Controller) checkWidth(p netip.Prefix, force bool) error {
	hard, soft := c.Limits.MinPrefix4, c.SoftMin4
	if p.Addr().Is6() {
		hard, soft = c.Limits.MinPrefix6, c.SoftMin6
	}
	if p.Bits() < hard {
		return fmt.Errorf("prefix /%d of %s is broader than the minimum /%d", p.Bits(), p, hard)
	}
	if p.Bits() < soft && !force {
		return fmt.Errorf("prefix /%d of %s is broader than /%d: give --force if you mean it", p.Bits(), p, soft)
	}
	return nil
}

// lift tombstones, at rev, every active ban that overlaps p and tells every instance that held
// it or a feed entry overlapping p to drop them: what `allow add` does to what it covers.
func (c *Controller) lift(ctx context.Context, p netip.Prefix, rev int64) (*Result, error) {
	res := &Result{Rev: rev, Written: 1}
	disc := c.startDiscover(ctx)
	view, err := c.readLedger(ctx)
	if err != nil {
		return res, err
	}
	now := c.Now().UTC()
	tombs := map[string]proto.Tombstone{}
	targets := map[string]bool{}
	cidrs := map[string]bool{}
	for _, b := range view.bans {
		if b.Active(now) {
			if bp, err := proto.ParseCIDR(b.CIDR); err == nil && bp.Overlaps(p) {
				cidrs[b.CIDR] = true
			}
		}
	}
	for cidr := range cidrs {
		removed, err := c.Ledger.TombstoneBans(ctx, cidr, rev, now)
		if err != nil {
			return res, err
		}
		for _, b := range removed {
			targets[b.Target] = true
			res.Tombstoned = append(res.Tombstoned, b)
			bp, _ := proto.ParseCIDR(b.CIDR)
			tombs[proto.BanID(bp)] = proto.Tombstone{ID: proto.BanID(bp), Rev: rev, ExpiresAt: b.Expires()}
		}
	}
	for _, f := range view.feeds {
		if !f.Active(now) {
			continue
		}
		for _, e := range f.entries {
			if e.p.Overlaps(p) {
				targets[f.Target] = true
				tombs[proto.BanID(e.p)] = proto.Tombstone{ID: proto.BanID(e.p), Rev: rev, ExpiresAt: time.Unix(f.GoodUntil, 0).UTC()}
			}
		}
	}
	if len(tombs) == 0 {
		return res, nil
	}
	list := make([]proto.Tombstone, 0, len(tombs))
	for _, t := range tombs {
		list = append(list, t)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	sels := make([]*Selector, 0, len(targets))
	for t := range targets {
		if sel, err := ParseSelector(t); err == nil {
			sels = append(sels, sel)
		}
	}
	c.Log.Info("allow lifts", "cidr", p.String(), "entries", len(list), "rev", rev)
	err = c.fanoutTo(ctx, disc, sels, &proto.Message{Kind: proto.KindUnban, Rev: rev, Unbans: list}, res)
	lifted := make([]netip.Prefix, 0, len(list))
	for _, t := range list {
		if lp, perr := proto.ParseBanID(t.ID); perr == nil {
			lifted = append(lifted, lp)
		}
	}
	c.edgeAfterUnban(ctx, lifted) // edge.go: WAF IP sets drop them too
	return res, err
}

// UnbanRequest lifts bans.
type UnbanRequest struct {
	CIDRs  []string
	Who    string
	Reason string
	// Hold keeps triggers (jails, alarms, GuardDuty, feeds, escalations) from banning the CIDRs
	// again for this long; an operator can still, with --force. Negative: DefaultHold if a
	// trigger made one of the bans lifted, none otherwise. Zero: none.
	Hold time.Duration
}

// triggered reports whether a ban's source is a trigger's (not an operator's).
func triggered(source string) bool {
	return strings.HasPrefix(source, "escalation:") || strings.HasPrefix(source, "feed:") ||
		strings.HasPrefix(source, "lambda:") && !strings.HasPrefix(source, "lambda:invoke")
}

// Unban tombstones every ban of the CIDRs (whatever their target) and tells every instance that
// held one; the default hold applies to bans a trigger made.
func (c *Controller) Unban(ctx context.Context, cidrs []string) (*Result, error) {
	return c.UnbanWith(ctx, UnbanRequest{CIDRs: cidrs, Hold: -1, Who: "lambda:invoke"})
}

// UnbanWith is Unban with who, why and a hold.
func (c *Controller) UnbanWith(ctx context.Context, req UnbanRequest) (*Result, error) {
	var prefixes []netip.Prefix
	for _, raw := range req.CIDRs {
		p, err := proto.ParseCIDR(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: unban %s: %w", ErrRefused, raw, err)
		}
		prefixes = append(prefixes, p)
	}
	if len(prefixes) == 0 {
		return nil, fmt.Errorf("%w: no address given", ErrRefused)
	}
	if req.Hold > c.Limits.MaxTTL {
		return nil, fmt.Errorf("%w: hold %s is longer than %s", ErrRefused, req.Hold, c.Limits.MaxTTL)
	}
	res, err := c.unban(ctx, prefixes)
	if res == nil {
		return nil, err
	}
	now := c.Now().UTC()
	hold := req.Hold
	if hold < 0 {
		hold = 0
		for _, b := range res.Tombstoned {
			if triggered(b.Source) {
				hold = DefaultHold
			}
		}
	}
	var herrs []error
	if hold > 0 {
		for _, p := range prefixes {
			until := now.Add(hold).Unix()
			herrs = append(herrs, c.Ledger.putPolicy(ctx, PolicyItem{PK: holdPK, SK: p.String(), Reason: req.Reason, Who: req.Who, Rev: res.Rev, Until: until, ExpiresAt: until, Created: now}))
		}
		c.invalidatePolicies()
		res.Hold = hold
		// A feed's entries the hold covers leave the agents now, not at the next reconcile pass.
		herrs = append(herrs, c.liftFeedEntries(ctx, prefixes, res.Rev))
	}
	cidrs := make([]string, len(prefixes))
	for i, p := range prefixes {
		cidrs[i] = p.String()
	}
	wait := func() {}
	if res.Written > 0 || hold > 0 {
		c.Log.Info("unban", "cidrs", strings.Join(cidrs, ","), "who", req.Who, "reason", req.Reason, "hold", hold, "rev", res.Rev)
		ev := Event{Kind: EventUnban, CIDRs: cidrs, Who: req.Who, Reason: req.Reason, Rev: res.Rev}
		if hold > 0 {
			ev.Until = now.Add(hold)
			ev.Hold = hold.String()
		}
		wait = c.recordAsync(ctx, ev)
	}
	if res.Written > 0 {
		c.notify(ctx, "unban", res)
	}
	wait()
	return res, errors.Join(append([]error{err}, herrs...)...)
}

// unban tombstones every ban of prefixes (whatever their target) at a new revision and tells
// every instance that held one.
func (c *Controller) unban(ctx context.Context, prefixes []netip.Prefix) (*Result, error) {
	rev, err := c.Ledger.NextRev(ctx)
	if err != nil {
		return nil, err
	}
	now := c.Now().UTC()
	res := &Result{Rev: rev}
	var tombs []proto.Tombstone
	targets := map[string]bool{}
	for _, p := range prefixes {
		removed, err := c.Ledger.TombstoneBans(ctx, p.String(), rev, now)
		if err != nil {
			return res, err
		}
		for _, b := range removed {
			targets[b.Target] = true
			res.Tombstoned = append(res.Tombstoned, b)
		}
		if len(removed) > 0 {
			tombs = append(tombs, proto.Tombstone{ID: proto.BanID(p), Rev: rev, ExpiresAt: removed[0].Expires()})
		}
	}
	res.Written = len(res.Tombstoned)
	if len(tombs) == 0 {
		return res, nil
	}
	sels := make([]*Selector, 0, len(targets))
	for t := range targets {
		sel, err := ParseSelector(t)
		if err != nil {
			return res, err
		}
		sels = append(sels, sel)
	}
	c.Log.Info("unban", "rev", rev, "cidrs", len(tombs))
	err = c.fanoutAny(ctx, sels, &proto.Message{Kind: proto.KindUnban, Rev: rev, Unbans: tombs}, res)
	c.edgeAfterUnban(ctx, prefixes) // edge.go
	return res, err
}

// liftFeedEntries tells the targets of every active feed to drop its entries that overlap
// prefixes (which a hold or allow entry now keeps off them), at rev.
func (c *Controller) liftFeedEntries(ctx context.Context, prefixes []netip.Prefix, rev int64) error {
	now := c.Now()
	feeds, err := c.Ledger.Feeds(ctx)
	if err != nil {
		return err
	}
	tombs := map[string]proto.Tombstone{}
	var sels []*Selector
	for _, f := range feeds {
		if !f.Active(now) {
			continue
		}
		entries, err := c.loadFeed(ctx, f)
		if err != nil {
			return err
		}
		hit := false
		for _, e := range entries {
			for _, p := range prefixes {
				if e.p.Overlaps(p) {
					tombs[proto.BanID(e.p)] = proto.Tombstone{ID: proto.BanID(e.p), Rev: rev, ExpiresAt: time.Unix(f.GoodUntil, 0).UTC()}
					hit = true
				}
			}
		}
		if sel, err := ParseSelector(f.Target); err == nil && hit {
			sels = append(sels, sel)
		}
	}
	if len(tombs) == 0 {
		return nil
	}
	list := make([]proto.Tombstone, 0, len(tombs))
	for _, t := range tombs {
		list = append(list, t)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	return c.fanoutAny(ctx, sels, &proto.Message{Kind: proto.KindUnban, Rev: rev, Unbans: list}, &Result{})
}
