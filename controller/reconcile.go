package controller

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bansshee/bansshee/proto"
	"github.com/oklog/ulid/v2"
	"golang.org/x/sync/errgroup"
)

// Report says what one reconcile pass did.
type Report struct {
	Instances     int
	QueuesCreated []string
	QueuesDeleted []string
	Synced        []string // instances sent a full sync
	Silent        []string // instances whose agent's heartbeat is too old: no sync is queued for them
	// OverCapacity: instances whose desired state is more than their agent's sets hold; they get
	// no sync (ErrOverCapacity says why).
	OverCapacity []string
	// PoliciesRewritten: instances whose queue policy named another role (or none) and was rewritten.
	PoliciesRewritten []string
	Escalated         []string // CIDRs banned fleet-wide from agent escalations
	// EscalatedLocal are CIDRs banned only on the instance that reported them.
	EscalatedLocal []string
	Refused        []string // escalations refused, with why
	Fleet          FleetCounts
	Feeds          []FeedReport  // feeds that were due and refreshed before the pass
	Edges          []*EdgeReport // WAF IP sets synced (edge.go)
	Simulated      int           // addresses simulate-mode feeds and triggers recorded during the pass
	Errors         []error
}

// desired computes, for an instance's tags, the active bans and limits and the highest revision
// of any ledger entry (tombstones included) that concerns it.
type desired struct {
	bans   []proto.Ban
	limits []proto.Limit
	maxRev int64
	syncs  *syncTemplates // its sync parts, split once and shared by every copy (forTags sets it)
}

// syncTemplates are a desired state's sync parts, compressed ([1]) and plain ([0]), each split
// the first time an instance needs it.
type syncTemplates struct {
	once [2]sync.Once
	tmpl [2]*proto.SyncTemplate
	err  [2]error
}

// syncParts returns the parts of a sync of d for one instance, splitting d at most once per kind.
func (d desired) syncParts(id, to string, issuedAt time.Time, rev int64, compress bool) ([]proto.Message, error) {
	st := d.syncs
	if st == nil {
		st = &syncTemplates{}
	}
	k := 0
	if compress {
		k = 1
	}
	st.once[k].Do(func() {
		st.tmpl[k], st.err[k] = proto.NewSyncTemplate(d.bans, d.limits, proto.MaxBodyBytes-proto.AttributeHeadroom, compress)
	})
	if st.err[k] != nil {
		return nil, st.err[k]
	}
	return st.tmpl[k].For(id, to, issuedAt, rev), nil
}

type ledgerView struct {
	allowRev  int64         // the allowlist's revision
	allowList []proto.Allow // what agents' kernels get
	allows    []PolicyItem  // in force
	holds     []PolicyItem  // in force
	bans      []BanItem
	limits    []LimitItem
	feeds     []feedView
	sels      map[string]*Selector
	rev       int64
	// scoped are the instances some target names by id; anyID: a target depends on ids otherwise.
	scoped map[string]bool
	anyID  bool
}

func (c *Controller) readLedger(ctx context.Context) (*ledgerView, error) {
	now := c.Now()
	// The partitions are read at once: six reads one after the other were six round trips.
	var bans []BanItem
	var limits []LimitItem
	var rev int64
	var allows, holds []PolicyItem
	var feeds []FeedItem
	var g errgroup.Group
	g.Go(func() (err error) { bans, err = c.Ledger.Bans(ctx, now); return err })
	g.Go(func() (err error) { limits, err = c.Ledger.Limits(ctx); return err })
	g.Go(func() (err error) { rev, err = c.Ledger.CurrentRev(ctx); return err })
	g.Go(func() (err error) { allows, err = c.Ledger.Allows(ctx, now); return err })
	g.Go(func() (err error) { holds, err = c.Ledger.Holds(ctx, now); return err })
	g.Go(func() (err error) { feeds, err = c.Ledger.Feeds(ctx); return err })
	if err := g.Wait(); err != nil {
		return nil, err
	}
	v := &ledgerView{bans: bans, limits: limits, sels: map[string]*Selector{}, rev: rev}
	for _, a := range allows {
		if a.Active(now) {
			v.allows = append(v.allows, a)
		}
	}
	v.allowRev, v.allowList = allowList(allows, now)
	for _, h := range holds {
		if h.Active(now) {
			v.holds = append(v.holds, h)
		}
	}
	for _, f := range feeds {
		fv := feedView{FeedItem: f}
		if f.Active(now) {
			var err error
			if fv.entries, err = c.loadFeed(ctx, f); err != nil {
				return nil, err
			}
		}
		v.feeds = append(v.feeds, fv)
		v.sel(f.Target)
	}
	for _, b := range bans {
		v.sel(b.Target)
	}
	for _, l := range limits {
		v.sel(l.Target)
	}
	return v, nil
}

// feedView is a feed head with its entries (when active).
type feedView struct {
	FeedItem
	entries []feedEntry
}

// heldElsewhere is every prefix an active ban or another active feed holds.
func (v *ledgerView) heldElsewhere(feed string, now time.Time) map[netip.Prefix]bool {
	held := map[netip.Prefix]bool{}
	for _, b := range v.bans {
		if b.Active(now) {
			if p, err := proto.ParseCIDR(b.CIDR); err == nil {
				held[p] = true
			}
		}
	}
	for _, f := range v.feeds {
		if f.SK != feed && f.Active(now) {
			for _, e := range f.entries {
				held[e.p] = true
			}
		}
	}
	return held
}

func (v *ledgerView) sel(target string) *Selector {
	if s, ok := v.sels[target]; ok {
		return s
	}
	s, err := ParseSelector(target)
	if err != nil {
		s = nil // an unparsable target in the ledger matches nothing
	}
	v.sels[target] = s
	if s != nil {
		ids, anyID := s.Instances()
		for _, id := range ids {
			if v.scoped == nil {
				v.scoped = map[string]bool{}
			}
			v.scoped[id] = true
		}
		v.anyID = v.anyID || anyID
	}
	return s
}

// scopedKey is what, beside its tags, decides an instance's state: its id, when a ban, limit or
// feed targets it by id.
func (v *ledgerView) scopedKey(id string) string {
	if v.anyID || v.scoped[id] {
		return "\x00" + id
	}
	return ""
}

func (v *ledgerView) forTags(tags map[string]string, now time.Time) desired {
	return v.forInstance("", tags, now)
}

func (v *ledgerView) forInstance(id string, tags map[string]string, now time.Time) desired {
	d := desired{syncs: &syncTemplates{}}
	byID := map[string]proto.Ban{}
	for _, b := range v.bans {
		s := v.sel(b.Target)
		if s == nil || !s.MatchInstance(id, tags) {
			continue
		}
		d.maxRev = max(d.maxRev, b.Rev)
		if !b.Active(now) {
			continue
		}
		w := b.Wire()
		// An allow entry beats any ban (Allow tombstones what it covers; this covers a race).
		if len(v.allows) > 0 && policyRefusal(w.Prefix(), v.allows, nil, true) != nil {
			continue
		}
		// Two ledger bans of one CIDR reaching one instance: the longer wins.
		if old, ok := byID[w.ID]; ok && (old.ExpiresAt.IsZero() || (!w.ExpiresAt.IsZero() && old.ExpiresAt.After(w.ExpiresAt))) {
			w.ExpiresAt = old.ExpiresAt
		}
		if old, ok := byID[w.ID]; ok && old.Rev > w.Rev {
			w.Rev = old.Rev
		}
		byID[w.ID] = w
	}
	for _, f := range v.feeds {
		s := v.sel(f.Target)
		if s == nil || !s.MatchInstance(id, tags) {
			continue
		}
		d.maxRev = max(d.maxRev, f.Rev)
		if !f.Active(now) {
			continue
		}
		exp := time.Unix(f.GoodUntil, 0).UTC()
		src, reason := f.Source(), "feed "+f.SK
		screen := len(v.allows)+len(v.holds) > 0
		for _, e := range f.entries {
			// A feed is a trigger: allow entries and holds keep its entries off the agents.
			if screen && policyRefusal(e.p, v.allows, v.holds, false) != nil {
				continue
			}
			w := proto.Ban{ID: proto.BanID(e.p), CIDR: e.p.String(), ExpiresAt: exp, Reason: reason, Source: src, Rev: e.rev}
			if old, ok := byID[w.ID]; ok {
				// A ban and a feed (or two feeds) on one prefix: the longer expiry and the newer
				// revision win, as for two bans.
				if old.ExpiresAt.IsZero() || old.ExpiresAt.After(w.ExpiresAt) {
					w.ExpiresAt = old.ExpiresAt
				}
				w.Rev = max(w.Rev, old.Rev)
				w.Reason, w.Source = old.Reason, old.Source
			}
			byID[w.ID] = w
		}
	}
	for _, b := range byID {
		d.bans = append(d.bans, b)
	}
	sort.Slice(d.bans, func(i, j int) bool { return d.bans[i].ID < d.bans[j].ID })
	for _, l := range v.limits {
		s := v.sel(l.Target)
		if s == nil || !s.MatchInstance(id, tags) {
			continue
		}
		d.maxRev = max(d.maxRev, l.Rev)
		if !l.Deleted {
			d.limits = append(d.limits, l.Wire())
		}
	}
	return d
}

// ReconcileOnce is one pass of the reconciler: discovery, queue lifecycle, syncs for new and
// lagging instances, escalations. Errors for one instance do not stop the others.
func (c *Controller) ReconcileOnce(ctx context.Context) (*Report, error) {
	rep := &Report{}
	simulated := c.simulated.Load()
	defer func() { rep.Simulated = int(c.simulated.Load() - simulated) }()
	now := c.Now().UTC()
	if c.AgentRoleID != "" {
		c.recordRole.Do(func() {
			if err := c.Ledger.RecordAgentRoleID(ctx, c.AgentRoleID); err != nil {
				c.Log.Warn("could not record the agent role id in the ledger", "err", err)
			}
		})
	}
	// Feeds that are due are fetched first, so that this pass already syncs what they changed.
	// A feed that fails keeps its last good version; its failure is in its report, not an error
	// of the pass.
	if !c.FeedsApart {
		feeds, err := c.RefreshFeeds(ctx, FeedOptions{})
		if err != nil {
			rep.Errors = append(rep.Errors, err)
		}
		rep.Feeds = feeds
	}
	instances, err := c.Discover(ctx, mustParse("*"))
	if err != nil {
		return rep, err
	}
	rep.Instances = len(instances)
	// A sync's revision is taken before the ledger is read, so that it is older than every change
	// the read may have missed: a ban or unban written while the pass reads has a newer revision,
	// and an agent keeps it over the sync. (Taken after the read, it claimed authority over them:
	// a ban written meanwhile was dropped until the next digest repair.)
	syncRev, revErr := c.Ledger.NextRev(ctx)
	if revErr != nil {
		return rep, revErr
	}
	view, err := c.readLedger(ctx)
	if err != nil {
		return rep, err
	}
	if c.afterLedgerRead != nil {
		c.afterLedgerRead()
	}
	rep.Fleet.Instances = len(instances)
	for _, b := range view.bans {
		if b.Active(now) {
			rep.Fleet.BansActive++
		}
	}
	for _, l := range view.limits {
		if !l.Deleted {
			rep.Fleet.LimitsActive++
		}
	}
	known, err := c.Ledger.Instances(ctx)
	if err != nil {
		return rep, err
	}
	ids := make([]string, len(instances))
	for i, in := range instances {
		ids[i] = in.ID
	}
	// Each agent's status under the key it was found under last pass (half the reads, and the
	// read units, of a fleet on instance profiles); both keys on a process's first pass, and for
	// an agent whose hinted heartbeat is missing or older than its keep-alive allows (it changed
	// credentials, or it is down).
	c.formsMu.Lock()
	lastForms := c.lastForms
	c.formsMu.Unlock()
	statuses, err := c.Ledger.StatusesHinted(ctx, ids, lastForms, now.Add(-min(hintStale, c.SilentAfter)))
	if err != nil {
		return rep, err
	}
	queues, err := c.Queues.List(ctx)
	if err != nil {
		return rep, err
	}
	running := map[string]bool{}
	for _, in := range instances {
		running[in.ID] = true
	}
	// A sync takes a revision of its own, newer than everything it was computed from: one per
	// pass, taken when the first instance needs one.
	nextRev := func() (int64, error) { return syncRev, nil }
	// Instances with the same tags want the same state: compute it (and its digest) once.
	var memoMu sync.Mutex
	memo := map[string]*desiredDigest{}
	desiredFor := func(in Instance) *desiredDigest {
		key := tagKey(in.Tags) + view.scopedKey(in.ID)
		memoMu.Lock()
		defer memoMu.Unlock()
		if d, ok := memo[key]; ok {
			return d
		}
		d := view.forInstance(in.ID, in.Tags, now)
		dd := &desiredDigest{desired: d, digest: proto.DigestV2(d.bans, d.limits)}
		memo[key] = dd
		return dd
	}
	var mu sync.Mutex
	var g errgroup.Group
	g.SetLimit(max(c.Concurrency, 1))
	for _, in := range instances {
		g.Go(func() error {
			_, hasQueue := queues[in.ID]
			st, reported := statuses[in.ID]
			rec, seen := known[in.ID]
			o := c.reconcileInstance(ctx, in, hasQueue, desiredFor(in), st, reported, rec, seen, now, nextRev)
			if view.allowRev > 0 && reported && takesAllows(st, reported) && st.AllowRev < view.allowRev && o.state != "silent" {
				if err := c.sendAllowsTo(ctx, in.ID, view.allowRev, view.allowList); err != nil {
					o.errs = append(o.errs, err)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			rep.merge(in.ID, o)
			return nil
		})
	}
	_ = g.Wait()
	// What this pass found is the inventory fan-outs, status and why read (inventory.go). A
	// failed write is not the pass's failure: the last inventory ages out and discovery is used.
	// (The queues created this pass join the listed ones: queues is not read for them again.)
	for _, in := range instances {
		if _, ok := queues[in.ID]; !ok {
			if u, ok := c.urls.Load(in.ID); ok {
				queues[in.ID] = u.(string)
			}
		}
	}
	forms := make(map[string]uint8, len(statuses))
	for id, st := range statuses {
		forms[id] = keyFormOf(st)
	}
	c.formsMu.Lock()
	c.lastForms = forms
	c.formsMu.Unlock()
	// The fleet's public addresses too, read from EC2 (at most once a minute), never from an
	// inventory: a new process's ban then checks against them without paging every instance.
	public, err := c.fleetAddressesLive(ctx)
	if err != nil {
		c.Log.Warn("the fleet's public addresses not read; the inventory goes without them", "err", err)
		public = nil
	}
	if err := c.Ledger.WriteInventory(ctx, instances, queues, forms, public, c.Queues.QueueName, now); err != nil {
		c.Log.Warn("inventory not written; fan-outs discover instances until it is", "err", err)
	}
	// Queues of instances that are gone: mark, then delete after the grace period.
	for id, url := range queues {
		if running[id] {
			continue
		}
		rec := known[id]
		if rec.GoneSince.IsZero() {
			rec.SK, rec.GoneSince = id, now
			if err := c.Ledger.PutInstance(ctx, rec); err != nil {
				rep.Errors = append(rep.Errors, err)
			}
			continue
		}
		if now.Sub(rec.GoneSince) < c.QueueGrace {
			continue
		}
		if err := c.Queues.Delete(ctx, url); err != nil {
			rep.Errors = append(rep.Errors, err)
			continue
		}
		c.urls.Delete(id)
		_ = c.Ledger.DeleteInstance(ctx, id)
		rep.QueuesDeleted = append(rep.QueuesDeleted, id)
	}
	c.escalate(ctx, view, statuses, instances, rep)
	// Notices held back by the 30 s batching go out here if no later ban sent them.
	if _, err := c.FlushNotices(ctx); err != nil {
		c.Log.Warn("ban notice not sent", "err", err)
	}
	edges, err := c.syncEdges(ctx, view) // edge.go: WAF IP sets; expiries leave them here
	rep.Edges = edges
	if err != nil {
		rep.Errors = append(rep.Errors, err)
	}
	return rep, errors.Join(rep.Errors...)
}

type desiredDigest struct {
	desired
	digest string // proto.DigestV2

	v1Once sync.Once
	v1     string // proto.Digest, for agents older than DigestV2, computed when one reports
}

// matches reports whether an agent's reported digest is this state's, of the kind it reports.
func (dd *desiredDigest) matches(reported string) bool {
	if strings.HasPrefix(reported, proto.DigestV2Prefix) {
		return reported == dd.digest
	}
	dd.v1Once.Do(func() { dd.v1 = proto.Digest(dd.bans, dd.limits) })
	return reported == dd.v1
}

func tagKey(tags map[string]string) string {
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(tags[k])
		b.WriteByte(0)
	}
	return b.String()
}

// instanceOutcome is what reconciling one instance did.
type instanceOutcome struct {
	queueCreated, synced, silent bool
	policyRewritten, over        bool
	state                        string // converged, lagging, silent, unreported
	errs                         []error
}

func (r *Report) merge(id string, o instanceOutcome) {
	if o.queueCreated {
		r.QueuesCreated = append(r.QueuesCreated, id)
	}
	if o.synced {
		r.Synced = append(r.Synced, id)
	}
	if o.policyRewritten {
		r.PoliciesRewritten = append(r.PoliciesRewritten, id)
	}
	if o.over {
		r.OverCapacity = append(r.OverCapacity, id)
	}
	if o.silent {
		r.Silent = append(r.Silent, id)
	}
	switch o.state {
	case "converged":
		r.Fleet.Converged++
	case "lagging":
		r.Fleet.Lagging++
	case "silent":
		r.Fleet.Silent++
	case "unreported":
		r.Fleet.Unreported++
	}
	r.Errors = append(r.Errors, o.errs...)
}

// reconcileInstance creates a missing queue and sends a sync to an instance that is new or whose
// agent lags; it runs for many instances at once.
func (c *Controller) reconcileInstance(ctx context.Context, in Instance, hasQueue bool, dd *desiredDigest, st proto.AgentStatus, reported bool,
	rec InstanceItem, seen bool, now time.Time, nextRev func() (int64, error)) instanceOutcome {
	var o instanceOutcome
	role := c.Queues.Role(ctx)
	if !hasQueue {
		u, err := c.Queues.Ensure(ctx, in.ID)
		if err != nil {
			o.errs = append(o.errs, err)
			return o
		}
		c.urls.Store(in.ID, u)
		o.queueCreated = true
		rec.PolicyRole, rec.PolicyChecked = role, now
	} else if role != "" && (rec.PolicyRole != role || now.Sub(rec.PolicyChecked) >= c.PolicyCheck) {
		// The recorded role is compared every pass (free: the record is read anyway); the live
		// policy is read when it differs and otherwise once per PolicyCheck.
		if err := c.checkPolicy(ctx, in.ID, role, &o); err != nil {
			o.errs = append(o.errs, err)
		} else {
			rec.SK, rec.PolicyRole, rec.PolicyChecked = in.ID, role, now
			if err := c.Ledger.PutInstance(ctx, rec); err != nil {
				o.errs = append(o.errs, err)
			}
		}
	}
	d := dd.desired
	// An agent lags when its applied revision stays below what concerns it, or what it holds
	// differs from the ledger's view, for longer than the grace (a fan-out in flight is not
	// lag). The digest catches what revisions cannot: a message lost to a race or a crash.
	lagging := reported && (st.AppliedRev < d.maxRev || (st.Digest != "" && !dd.matches(st.Digest)))
	silent := reported && now.Sub(st.Heartbeat) > c.SilentAfter
	switch {
	case !reported:
		o.state = "unreported"
	case silent:
		o.state = "silent"
	case lagging:
		o.state = "lagging"
	default:
		o.state = "converged"
	}
	if silent {
		// A dead agent reads nothing: a sync every pass would only pile up in its queue (40
		// messages each at 100 000 bans). It gets one when its heartbeat shows it back.
		o.silent = true
		return o
	}
	if !lagging && !rec.LagSince.IsZero() {
		rec.LagSince = time.Time{}
		_ = c.Ledger.PutInstance(ctx, rec)
	}
	if lagging && rec.LagSince.IsZero() {
		rec.SK, rec.LagSince = in.ID, now
		_ = c.Ledger.PutInstance(ctx, rec)
	}
	// A sync already sent that the agent has not answered (no heartbeat since) is not sent
	// again: a dead or stuck agent gets one sync, not one per pass.
	awaiting := reported && !rec.SyncedAt.IsZero() && st.Heartbeat.Before(rec.SyncedAt)
	if seen && (awaiting || !(lagging && now.Sub(rec.LagSince) >= c.LagGrace)) {
		if !rec.GoneSince.IsZero() {
			rec.GoneSince = time.Time{}
			_ = c.Ledger.PutInstance(ctx, rec)
		}
		return o
	}
	if err := c.checkCapacity(in.ID, d); err != nil {
		o.errs, o.over = append(o.errs, err), true
		return o
	}
	rev, err := nextRev()
	if err != nil {
		o.errs = append(o.errs, err)
		return o
	}
	if err := c.sendSync(ctx, in.ID, rev, d, compressFor(st, reported)); err != nil {
		o.errs = append(o.errs, err)
		return o
	}
	if rec.FirstSeen.IsZero() {
		rec.FirstSeen = now
	}
	rec.SK, rec.SyncedRev, rec.SyncedAt, rec.GoneSince, rec.LagSince = in.ID, rev, now, time.Time{}, time.Time{}
	if err := c.Ledger.PutInstance(ctx, rec); err != nil {
		o.errs = append(o.errs, err)
	}
	o.synced = true
	return o
}

// ErrOverCapacity: an instance's desired state is more than its agent's sets hold.
var ErrOverCapacity = errors.New("desired state over the agent's capacity")

// DefaultMaxInstanceEntries is what an agent's ban set holds, per address family.
const DefaultMaxInstanceEntries = 1 << 20

// checkCapacity refuses a desired state the agent cannot apply: a sync of it would fail on the
// agent every pass.
func (c *Controller) checkCapacity(id string, d desired) error {
	limit := cmp.Or(c.MaxInstanceEntries, DefaultMaxInstanceEntries)
	var n [2]int
	for _, b := range d.bans {
		if strings.Contains(b.CIDR, ":") {
			n[1]++
		} else {
			n[0]++
		}
	}
	for i, fam := range []string{"IPv4", "IPv6"} {
		if n[i] > limit {
			return fmt.Errorf("%w: instance %s: its bans and feeds make %d %s bans, more than the %d its agent's set holds; no sync sent (remove bans or feeds that target it)",
				ErrOverCapacity, id, n[i], fam, limit)
		}
	}
	return nil
}

// PolicyCheckEvery is how often the reconciler reads each queue's policy to compare it.
const PolicyCheckEvery = time.Hour

func (c *Controller) checkPolicy(ctx context.Context, id, role string, o *instanceOutcome) error {
	url, err := c.queueURL(ctx, id)
	if err != nil {
		return err
	}
	rewritten, err := c.Queues.CheckPolicy(ctx, id, url, role)
	if rewritten {
		c.Log.Warn("queue policy differed from the agent role's; rewritten", "instance", id, "role", role)
		o.policyRewritten = true
	}
	return err
}

// compressFor says whether an agent takes compressed syncs (bans_z): every agent that reports
// the second kind of digest does, and one that has not reported yet is assumed current. An agent
// that reports the first kind predates both and gets plain parts, so the controller can be
// upgraded before the agents.
func compressFor(st proto.AgentStatus, reported bool) bool {
	return !reported || st.Digest == "" || strings.HasPrefix(st.Digest, proto.DigestV2Prefix)
}

// sendSync sends an instance its whole desired state, split into parts if needed.
func (c *Controller) sendSync(ctx context.Context, id string, rev int64, d desired, compress bool) error {
	url, err := c.queueURL(ctx, id)
	if err != nil {
		return err
	}
	m := proto.Message{ID: ulid.Make().String(), Kind: proto.KindSync, To: id, IssuedAt: c.Now().UTC(), Rev: rev}
	// Split (and compressed) once per desired state, not once per instance.
	parts, err := d.syncParts(m.ID, id, m.IssuedAt, rev, compress)
	if err != nil {
		return err
	}
	for i := range parts {
		if err := Send(ctx, c.Queues.SQS, c.Signer, url, &parts[i]); err != nil {
			return fmt.Errorf("sync %s: %w", id, err)
		}
	}
	c.Log.Info("sync", "instance", id, "rev", m.Rev, "bans", len(d.bans), "limits", len(d.limits), "parts", len(parts))
	return nil
}

// localEscalationSource marks a ban an escalation placed on its reporting instance only.
const localEscalationSource = "escalation-local:"

// Escalation caps: a compromised or flooded agent cannot turn its heartbeat into a stream of
// fleet-wide bans.
const (
	MaxEscalationsPerInstance = 20  // per agent, per reconcile pass (local bans, and fleet-wide ones apart)
	MaxEscalationsPerMinute   = 100 // fleet-wide, counted from the ledger
)

// escalate turns sources that tripped an escalating limit on an agent into bans on that limit's
// whole target. Each escalation is checked as an operator's ban is (never-ban addresses,
// allowlists, prefix limits) and accepted only from an instance the limit targets, credited to
// that limit, capped per instance and per fleet minute, and banned in one batch per limit.
func (c *Controller) escalate(ctx context.Context, view *ledgerView, statuses map[string]proto.AgentStatus, instances []Instance, rep *Report) {
	limits := map[string]LimitItem{}
	for _, l := range view.limits {
		if l.Escalate && !l.Deleted {
			limits[l.SK] = l
		}
	}
	if len(limits) == 0 {
		return
	}
	now := c.Now()
	tags := map[string]map[string]string{}
	for _, in := range instances {
		tags[in.ID] = in.Tags
	}
	active := map[string]bool{}
	reporters := map[string]map[string]bool{} // cidr -> instances that reported it (earlier passes' local bans)
	recent := 0
	for _, b := range view.bans {
		if b.Active(now) {
			active[b.CIDR+"|"+b.Target] = true
			if sel := view.sel(b.Target); sel != nil && strings.HasPrefix(b.Source, localEscalationSource) {
				if ids, _ := sel.Instances(); len(ids) == 1 {
					if reporters[b.CIDR] == nil {
						reporters[b.CIDR] = map[string]bool{}
					}
					reporters[b.CIDR][ids[0]] = true
				}
			}
		}
		if strings.HasPrefix(b.Source, "escalation:") && now.Sub(b.Created) < time.Minute {
			recent++
		}
	}
	budget := MaxEscalationsPerMinute - recent
	ids := make([]string, 0, len(statuses))
	for id := range statuses {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	byLimit := map[string][]string{}  // fleet-wide, by limit
	local := map[[2]string][]string{} // on the reporter only, by limit and instance
	from := map[string]string{}       // CIDR -> the (last) instance that reported it
	refuse := func(format string, args ...any) {
		if len(rep.Refused) < 100 {
			rep.Refused = append(rep.Refused, fmt.Sprintf(format, args...))
		}
	}
	// Each escalation is checked, then banned on the reporting instance at once; it goes to the
	// limit's whole target only when a second instance reports the source (or the limit says
	// escalate_fleet), so one compromised instance cannot spend the fleet's budget on real
	// clients' addresses.
	for _, id := range ids {
		taken, fleet := 0, 0
		for _, e := range statuses[id].Escalations {
			l, ok := limits[e.LimitID]
			if !ok {
				refuse("%s: %s: limit %q is not an escalating limit", id, e.Addr, e.LimitID)
				continue
			}
			if sel := view.sel(l.Target); sel == nil || tags[id] == nil || !sel.MatchInstance(id, tags[id]) {
				refuse("%s: %s: limit %s does not target this instance", id, e.Addr, l.SK)
				continue
			}
			a, err := proto.ParseAddr(e.Addr)
			if err != nil {
				refuse("%s: %v", id, err)
				continue
			}
			pfx := netip.PrefixFrom(a, a.BitLen())
			if err := proto.CheckNeverBan(pfx); err != nil {
				refuse("%s: %v", id, err)
				continue
			}
			cidr := pfx.String()
			if active[cidr+"|"+l.Target] {
				continue
			}
			if reporters[cidr] == nil {
				reporters[cidr] = map[string]bool{}
			}
			reporters[cidr][id] = true
			if l.EscalateFleet || len(reporters[cidr]) >= 2 {
				if fleet >= MaxEscalationsPerInstance || budget <= 0 {
					refuse("%s: %s: over the escalation cap (%d per instance per pass, %d per minute)", id, cidr, MaxEscalationsPerInstance, MaxEscalationsPerMinute)
					continue
				}
				fleet++
				budget--
				active[cidr+"|"+l.Target] = true
				byLimit[l.SK] = append(byLimit[l.SK], cidr)
				from[cidr] = id
				continue
			}
			own := InstanceIDKey + "=" + id
			if active[cidr+"|"+own] {
				continue
			}
			if taken >= MaxEscalationsPerInstance {
				refuse("%s: %s: over the escalation cap (%d per instance per pass, %d per minute)", id, cidr, MaxEscalationsPerInstance, MaxEscalationsPerMinute)
				continue
			}
			taken++
			active[cidr+"|"+own] = true
			local[[2]string{l.SK, id}] = append(local[[2]string{l.SK, id}], cidr)
			from[cidr] = id
		}
	}
	type batch struct {
		limit, target, source string
		cidrs                 []string
		fleet                 bool
	}
	var batches []batch
	for name, cidrs := range byLimit {
		batches = append(batches, batch{name, limits[name].Target, "escalation:" + name, cidrs, true})
	}
	for k, cidrs := range local {
		batches = append(batches, batch{k[0], InstanceIDKey + "=" + k[1], localEscalationSource + k[0], cidrs, false})
	}
	sort.Slice(batches, func(i, j int) bool { return batches[i].target+batches[i].limit < batches[j].target+batches[j].limit })
	for _, b := range batches {
		ok, refused, err := c.FilterCIDRs(ctx, b.cidrs)
		if err != nil {
			rep.Errors = append(rep.Errors, fmt.Errorf("escalate on %s: %w", b.limit, err))
			continue
		}
		for cidr, why := range refused {
			refuse("%s: %v", cidr, why)
		}
		if len(ok) == 0 {
			continue
		}
		cidrs := make([]string, len(ok))
		for i, p := range ok {
			cidrs[i] = p.String()
		}
		reason := "tripped escalating rate limit " + b.limit
		if !b.fleet {
			reason += " (on this instance; fleet-wide when another reports it)"
		}
		causes := map[string]Cause{}
		for _, cidr := range cidrs {
			causes[cidr] = Cause{Limit: b.limit, Instance: from[cidr]}
		}
		req := BanRequest{CIDRs: cidrs, Target: b.target, TTL: time.Hour, Reason: reason, Source: b.source, Who: "limit " + b.limit, Causes: causes}
		// An offence (repeat offenders) is counted once: on the reporting instance, or fleet-wide
		// when the limit goes there at once; a second reporter's promotion is the same offence.
		if !b.fleet || limits[b.limit].EscalateFleet {
			req.Trigger = "escalation/" + b.limit
		}
		if _, err := c.Ban(ctx, req); err != nil {
			rep.Errors = append(rep.Errors, fmt.Errorf("escalate on %s: %w", b.limit, err))
			continue
		}
		if b.fleet {
			rep.Escalated = append(rep.Escalated, cidrs...)
		} else {
			rep.EscalatedLocal = append(rep.EscalatedLocal, cidrs...)
		}
	}
	for _, r := range rep.Refused {
		c.Log.Warn("escalation refused", "why", r)
	}
}

// InstanceStatus is one line of `bansshee status`.
type InstanceStatus struct {
	Instance
	AppliedRev int64
	WantRev    int64
	Bans       int
	WantBans   int
	Heartbeat  time.Time
	LastError  string
	Converged  bool
	Silent     bool   // the agent reported once but its heartbeat is older than SilentAfter
	Version    string // the agent's version
	OldVersion bool   // older than the newest version in the fleet (or than most of it)
}

// Status reports, per managed instance, how far its agent has converged on the ledger.
func (c *Controller) Status(ctx context.Context, target string) ([]InstanceStatus, int64, error) {
	fs, err := c.FleetStatus(ctx, target, false)
	if err != nil {
		return nil, 0, err
	}
	return fs.Instances, fs.Rev, nil
}

// FleetStatusReport is Status with where its instances came from.
type FleetStatusReport struct {
	Instances []InstanceStatus
	Rev       int64 // the ledger's revision
	// InventoryAt is when the reconciler found the instances (its inventory); zero when they
	// were discovered for this call (live, or no fresh inventory).
	InventoryAt time.Time
}

// FleetStatus is Status; live reads the instances from EC2 instead of the reconciler's
// inventory. The instances, the ledger and (then) the agents' statuses are read at once where
// they do not depend on each other.
func (c *Controller) FleetStatus(ctx context.Context, target string, live bool) (*FleetStatusReport, error) {
	sel, err := ParseSelector(target)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	var instances []Instance
	var inv *Inventory
	var view *ledgerView
	var statuses map[string]proto.AgentStatus
	// The instances then their agents' statuses, while the ledger is read.
	var g errgroup.Group
	g.Go(func() (err error) {
		if live {
			instances, err = c.Discover(ctx, sel)
		} else {
			instances, inv, err = c.managedInstances(ctx, sel)
		}
		if err != nil {
			return err
		}
		ids := make([]string, len(instances))
		for i, in := range instances {
			ids[i] = in.ID
		}
		if inv != nil {
			// Only the key each agent was last found under (half the reads on instance profiles).
			statuses, err = c.Ledger.StatusesHinted(ctx, ids, inv.keyForms, c.Now().Add(-c.SilentAfter))
		} else {
			statuses, err = c.Ledger.Statuses(ctx, ids)
		}
		return err
	})
	g.Go(func() (err error) { view, err = c.readLedger(ctx); return err })
	if err := g.Wait(); err != nil {
		return nil, err
	}
	now := c.Now()
	out := make([]InstanceStatus, 0, len(instances))
	// Instances with the same tags want the same state: computed, with its digest, once (as in
	// a reconcile pass), not once an instance.
	memo := map[string]*desiredDigest{}
	for _, in := range instances {
		key := tagKey(in.Tags) + view.scopedKey(in.ID)
		dd, ok := memo[key]
		if !ok {
			d := view.forInstance(in.ID, in.Tags, now)
			dd = &desiredDigest{desired: d, digest: proto.DigestV2(d.bans, d.limits)}
			memo[key] = dd
		}
		d := dd.desired
		st := statuses[in.ID]
		is := InstanceStatus{Instance: in, AppliedRev: st.AppliedRev, WantRev: d.maxRev, Bans: st.Bans, WantBans: len(d.bans), Heartbeat: st.Heartbeat, LastError: st.LastError, Version: st.Version}
		is.Converged = st.InstanceID != "" && st.AppliedRev >= d.maxRev && (st.Digest == "" || dd.matches(st.Digest))
		is.Silent = !st.Heartbeat.IsZero() && now.Sub(st.Heartbeat) > c.SilentAfter
		out = append(out, is)
	}
	markOldVersions(out)
	rep := &FleetStatusReport{Instances: out, Rev: view.rev}
	if inv != nil {
		rep.InventoryAt = inv.At
	}
	return rep, nil
}

// markOldVersions flags agents behind the fleet's newest release (vX.Y.Z, as make dist stamps
// them), or, when no version is a release, those that differ from the most common one.
func markOldVersions(sts []InstanceStatus) {
	var newest [3]int
	released := false
	count := map[string]int{}
	for _, s := range sts {
		if s.Version == "" {
			continue
		}
		count[s.Version]++
		if v, ok := semver(s.Version); ok && (!released || less(newest, v)) {
			newest, released = v, true
		}
	}
	common, best := "", 0
	for v, n := range count {
		if n > best || n == best && v < common {
			common, best = v, n
		}
	}
	for i := range sts {
		v := sts[i].Version
		if v == "" {
			continue
		}
		if released {
			sv, ok := semver(v)
			sts[i].OldVersion = !ok || less(sv, newest)
		} else {
			sts[i].OldVersion = v != common
		}
	}
}

// semver reads the leading vX.Y.Z (or X.Y.Z) of a version; "v1.4.0-3-gabc" is 1.4.0.
func semver(v string) ([3]int, bool) {
	var out [3]int
	v = strings.TrimPrefix(v, "v")
	for i := 0; i < 3; i++ {
		j := 0
		for j < len(v) && v[j] >= '0' && v[j] <= '9' {
			j++
		}
		if j == 0 {
			return out, false
		}
		n, _ := strconv.Atoi(v[:j])
		out[i], v = n, v[j:]
		if i < 2 {
			if !strings.HasPrefix(v, ".") {
				return out, false
			}
			v = v[1:]
		}
	}
	return out, true
}

func less(a, b [3]int) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

// Wait polls agent statuses until every instance in ids reports rev or later, or ctx ends. It
// calls progress after each poll and returns the instances that did not converge.
func (c *Controller) Wait(ctx context.Context, ids []string, rev int64, progress func(done, total int)) ([]string, error) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	// Each poll reads only the statuses still awaited: the last agents cost one small batch.
	waiting := ids
	for {
		statuses, err := c.Ledger.Statuses(ctx, waiting)
		if err != nil && ctx.Err() == nil {
			return waiting, err
		}
		var pending []string
		for _, id := range waiting {
			if statuses[id].AppliedRev < rev {
				pending = append(pending, id)
			}
		}
		if progress != nil {
			progress(len(ids)-len(pending), len(ids))
		}
		if len(pending) == 0 {
			return nil, nil
		}
		waiting = pending
		select {
		case <-ctx.Done():
			return pending, nil
		case <-t.C:
		}
	}
}

// Serve runs ReconcileOnce every interval until ctx ends.
//
// Feeds are refreshed apart from the passes, by a loop of their own with its own time budget
// (FeedBudget a round), so that a slow or huge feed cannot hold up new instances' queues or
// repair syncs.
func (c *Controller) Serve(ctx context.Context, interval time.Duration, onPass func(*Report, error)) {
	c.FeedsApart = true
	go c.serveFeeds(ctx, interval)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		rep, err := c.ReconcileOnce(ctx)
		if onPass != nil {
			onPass(rep, err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// FeedBudget is how long one round of feed refreshes may take in Serve's feed loop.
const FeedBudget = 5 * time.Minute

func (c *Controller) serveFeeds(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		func() {
			defer func() {
				if r := recover(); r != nil {
					c.Log.Error("feed refresh panicked; the reconciler runs on", "panic", r)
				}
			}()
			fctx, cancel := context.WithTimeout(ctx, FeedBudget)
			defer cancel()
			if _, err := c.RefreshFeeds(fctx, FeedOptions{}); err != nil {
				c.Log.Error("feed refresh", "err", err)
			}
		}()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
