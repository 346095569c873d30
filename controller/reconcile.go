package controller

import (
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
	Escalated     []string // CIDRs banned fleet-wide from agent escalations
	// EscalatedLocal are CIDRs banned only on the instance that reported them.
	EscalatedLocal []string
	Refused        []string // escalations refused, with why
	Fleet          FleetCounts
	Feeds          []FeedReport // feeds that were due and refreshed before the pass
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
	bans   []BanItem
	limits []LimitItem
	feeds  []feedView
	sels   map[string]*Selector
	rev    int64
	// scoped are the instances some target names by id; anyID: a target depends on ids otherwise.
	scoped map[string]bool
	anyID  bool
}

func (c *Controller) readLedger(ctx context.Context) (*ledgerView, error) {
	now := c.Now()
	bans, err := c.Ledger.Bans(ctx, now)
	if err != nil {
		return nil, err
	}
	limits, err := c.Ledger.Limits(ctx)
	if err != nil {
		return nil, err
	}
	rev, err := c.Ledger.CurrentRev(ctx)
	if err != nil {
		return nil, err
	}
	v := &ledgerView{bans: bans, limits: limits, sels: map[string]*Selector{}, rev: rev}
	feeds, err := c.Ledger.Feeds(ctx)
	if err != nil {
		return nil, err
	}
	for _, f := range feeds {
		fv := feedView{FeedItem: f}
		if f.Active(now) {
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
		for _, e := range f.entries {
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
	feeds, err := c.RefreshFeeds(ctx, FeedOptions{})
	if err != nil {
		rep.Errors = append(rep.Errors, err)
	}
	rep.Feeds = feeds
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
	statuses, err := c.Ledger.Statuses(ctx, ids)
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
			mu.Lock()
			defer mu.Unlock()
			rep.merge(in.ID, o)
			return nil
		})
	}
	_ = g.Wait()
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
	if !hasQueue {
		u, err := c.Queues.Ensure(ctx, in.ID)
		if err != nil {
			o.errs = append(o.errs, err)
			return o
		}
		c.urls.Store(in.ID, u)
		o.queueCreated = true
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
		if _, err := c.Ban(ctx, BanRequest{CIDRs: cidrs, Target: b.target, TTL: time.Hour, Reason: reason, Source: b.source}); err != nil {
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
	sel, err := ParseSelector(target)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	instances, err := c.Discover(ctx, sel)
	if err != nil {
		return nil, 0, err
	}
	view, err := c.readLedger(ctx)
	if err != nil {
		return nil, 0, err
	}
	ids := make([]string, len(instances))
	for i, in := range instances {
		ids[i] = in.ID
	}
	statuses, err := c.Ledger.Statuses(ctx, ids)
	if err != nil {
		return nil, 0, err
	}
	now := c.Now()
	out := make([]InstanceStatus, 0, len(instances))
	for _, in := range instances {
		d := view.forInstance(in.ID, in.Tags, now)
		st := statuses[in.ID]
		is := InstanceStatus{Instance: in, AppliedRev: st.AppliedRev, WantRev: d.maxRev, Bans: st.Bans, WantBans: len(d.bans), Heartbeat: st.Heartbeat, LastError: st.LastError, Version: st.Version}
		is.Converged = st.InstanceID != "" && st.AppliedRev >= d.maxRev && (st.Digest == "" || proto.Matches(st.Digest, d.bans, d.limits))
		is.Silent = !st.Heartbeat.IsZero() && now.Sub(st.Heartbeat) > c.SilentAfter
		out = append(out, is)
	}
	markOldVersions(out)
	return out, view.rev, nil
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
func (c *Controller) Serve(ctx context.Context, interval time.Duration, onPass func(*Report, error)) {
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
