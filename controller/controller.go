package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/wafv2"
	"github.com/bansshee/bansshee/proto"
	"github.com/oklog/ulid/v2"
	"golang.org/x/sync/errgroup"
)

// Config wires a controller.
type Config struct {
	EC2    *ec2.Client
	SQS    *sqs.Client
	DDB    *dynamodb.Client
	Table  string // default "bansshee"
	Prefix string // queue prefix, default "bansshee"
	Signer proto.Signer
	// Managed is the selector every instance must match to be managed (default bansshee:managed=true).
	Managed string
	// Admin CIDRs no ban may cover. The VPC CIDRs are added unless SkipVPCAllow.
	Admin        []netip.Prefix
	SkipVPCAllow bool
	// SoftMin4/6: prefixes broader than these need Force (defaults /16 and /48); the hard limits
	// are Limits.MinPrefix4/6 (/8 and /32), which nothing passes.
	SoftMin4, SoftMin6 int
	Limits             proto.Limits
	Concurrency        int           // parallel sends in a fan-out or reconcile pass (default 256, the idle connections cli.AWSConfig keeps)
	QueueGrace         time.Duration // how long a gone instance's queue is kept (default 10 min)
	LagGrace           time.Duration // how long an agent may lag before it gets a sync (default 30 s)
	SilentAfter        time.Duration // an agent whose heartbeat is older gets no syncs (default 10 min: agents keep alive every 4)
	VisibilityTimeout  int
	// AgentRoleID: see Queues.AgentRoleID. Empty: the id recorded in the ledger.
	AgentRoleID string
	// PolicyCheck: how often each queue's live policy is compared with the one it should have
	// (default PolicyCheckEvery); a changed agent role id is acted on in the next pass.
	PolicyCheck time.Duration
	// FeedClient fetches feeds (default: an http.Client with a one-minute timeout).
	FeedClient *http.Client
	// MaxInstanceCoverage4 and 6: what the bans and feeds one instance holds may cover together,
	// in IPv4 addresses and IPv6 /64s (0: DefaultInstanceMaxCoverage). A feed version that would
	// pass it is held.
	MaxInstanceCoverage4, MaxInstanceCoverage6 uint64
	// MaxInstanceEntries: the most bans (per address family) one instance's desired state may
	// hold (0: DefaultMaxInstanceEntries, what an agent's set holds).
	MaxInstanceEntries int
	// FeedsApart: reconcile passes do not refresh feeds; they run in an invocation of their own
	// (the Lambda's feed schedule, the feed loop of Serve), so a bad feed cannot stop a pass.
	FeedsApart bool
	// FeedAllowHTTP lets feeds use plain http:// URLs (tests; a mirror inside the VPC).
	FeedAllowHTTP bool
	// PolicyCache is how long the allow entries and holds are cached between bans (default 10 s;
	// a write through this controller drops the cache at once).
	PolicyCache time.Duration
	// HistoryRetention is how long history events are kept (default 90 days).
	HistoryRetention time.Duration
	// NoHistory writes no history (the bench compares a fan-out with and without it).
	NoHistory bool
	// Repeat lengthens the bans of repeat offenders (triggers' bans only).
	Repeat Repeat
	// NoticeTopic is an SNS topic ARN that gets ban and unban notices (empty: none).
	NoticeTopic string
	SNS         Publisher
	Log         *slog.Logger
	Now         func() time.Time

	// InventoryMaxAge is how old the reconciler's inventory may be for a fan-out, status or why to
	// take their instances from it (0: DefaultInventoryMaxAge; negative: always discover).
	InventoryMaxAge time.Duration

	// WAF keeps edges' IP sets (edge.go); nil: no edges. WAFWriteInterval spaces the calls of
	// each WAF write action (default 1 s, the documented rate).
	WAF              *wafv2.Client
	WAFWriteInterval time.Duration
}

// Controller is the control plane library.
type Controller struct {
	Config
	EC2     *ec2.Client
	Ledger  *Ledger
	Queues  *Queues
	managed *Selector

	urls      sync.Map // instance id -> queue URL
	feedCache sync.Map // feed name -> *feedVersion

	// afterLedgerRead, when set (tests), runs between a reconcile pass's ledger read and its syncs.
	afterLedgerRead func()

	vpcMu      sync.Mutex
	vpcs       []netip.Prefix // VPCCIDRs' cache
	vpcAt      time.Time
	fleetMu    sync.Mutex
	fleetPub   fleetAddrs // FleetAddresses' cache
	fleetAt    time.Time
	recordRole sync.Once
	formsMu    sync.Mutex
	lastForms  map[string]uint8 // the status key form of each agent at the last pass (ledger.go)
	policy     policyCache
	simulated  atomic.Int64 // simulate-mode bans recorded
	pacer      wafPacer     // edge.go
}

// New builds a controller. It makes no AWS call.
func New(cfg Config) (*Controller, error) {
	if cfg.Table == "" {
		cfg.Table = "bansshee"
	}
	if cfg.Managed == "" {
		cfg.Managed = "bansshee:managed=true"
	}
	if cfg.SoftMin4 == 0 {
		cfg.SoftMin4 = 16
	}
	if cfg.SoftMin6 == 0 {
		cfg.SoftMin6 = 48
	}
	if cfg.Limits == (proto.Limits{}) {
		cfg.Limits = proto.DefaultLimits()
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 256
	}
	if cfg.QueueGrace == 0 {
		cfg.QueueGrace = 10 * time.Minute
	}
	if cfg.LagGrace == 0 {
		cfg.LagGrace = 30 * time.Second
	}
	if cfg.PolicyCheck == 0 {
		cfg.PolicyCheck = PolicyCheckEvery
	}
	if cfg.SilentAfter == 0 {
		cfg.SilentAfter = 10 * time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.PolicyCache == 0 {
		cfg.PolicyCache = 10 * time.Second
	}
	if cfg.HistoryRetention == 0 {
		cfg.HistoryRetention = DefaultHistoryRetention
	}
	cfg.Repeat = cfg.Repeat.withDefaults()
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	managed, err := ParseSelector(cfg.Managed)
	if err != nil {
		return nil, fmt.Errorf("managed selector: %w", err)
	}
	l := &Ledger{DDB: cfg.DDB, Table: cfg.Table, AgentRoleID: cfg.AgentRoleID}
	return &Controller{Config: cfg, EC2: cfg.EC2, managed: managed, Ledger: l,
		Queues: &Queues{SQS: cfg.SQS, Prefix: cfg.Prefix, VisibilityTimeout: cfg.VisibilityTimeout, AgentRoleID: cfg.AgentRoleID, RoleID: l.agentRoleID}}, nil
}

// BanRequest asks for bans.
type BanRequest struct {
	CIDRs  []string
	Target string // selector; empty: every managed instance
	TTL    time.Duration
	Reason string
	Source string
	Force  bool // allow prefixes broader than the soft minimum, and CIDRs an unban holds
	// Operator: a person typed the reason (the CLI). Text over proto.MaxTextBytes is refused;
	// otherwise (an alarm's query, a long alarm name) it is truncated.
	Operator bool
	// Who asked: the operator's identity (STS), the jail, the feed or the limit (history).
	Who string
	// Trigger names the trigger when one made the request (a jail, an alarm, GuardDuty, an
	// escalation): its bans count as offences, and last longer for repeat offenders (Repeat);
	// an operator's TTL is exact.
	Trigger string
	// Causes says, by CIDR (as given), what caused each ban; Cause applies to the others.
	Causes map[string]Cause
	Cause  *Cause
	// Simulate records what would be banned (history, why, a metric) and bans nothing.
	Simulate bool
}

// Delivery is the outcome of sending to one instance.
type Delivery struct {
	InstanceID string
	Err        error
}

// Result is what a ban, unban, limit or unlimit did.
type Result struct {
	Rev        int64
	Written    int        // ledger items written
	Instances  []Delivery // one per targeted instance
	Selector   string
	Unchanged  []string // CIDRs already banned for longer
	Tombstoned []BanItem
	Hold       time.Duration     // an unban's hold
	TTLs       map[string]string // a trigger's bans whose TTL the repeat-offender rule lengthened: CIDR -> TTL
	Simulated  []string          // CIDRs a simulate-mode request would have banned
	banned     []string          // CIDRs written (notices)
}

// Failed returns the deliveries that failed.
func (r *Result) Failed() []Delivery {
	var out []Delivery
	for _, d := range r.Instances {
		if d.Err != nil {
			out = append(out, d)
		}
	}
	return out
}

// ErrRefused wraps every validation refusal (nothing was written).
var ErrRefused = errors.New("refused")

// ErrUndelivered wraps a failure after the ledger was written (discovery failed, say): the change
// holds, some instances may not have it yet, and the reconciler delivers it to them.
var ErrUndelivered = errors.New("written, not delivered everywhere")

// Allowlist is the admin CIDRs plus, by default, the VPC CIDRs.
func (c *Controller) Allowlist(ctx context.Context) ([]netip.Prefix, error) {
	allow := append([]netip.Prefix(nil), c.Admin...)
	if !c.SkipVPCAllow {
		vpcs, err := c.VPCCIDRs(ctx)
		if err != nil {
			return nil, err
		}
		allow = append(allow, vpcs...)
	}
	return allow, nil
}

// CheckCIDRs validates and canonicalises CIDRs against the limits and the allowlist, naming
// every problem; one bad CIDR refuses them all. Nothing is written.
func (c *Controller) CheckCIDRs(ctx context.Context, cidrs []string, force bool) ([]netip.Prefix, error) {
	if len(cidrs) == 0 {
		return nil, fmt.Errorf("%w: no address given", ErrRefused)
	}
	ok, refused, err := c.filter(ctx, cidrs, force)
	if err != nil {
		return nil, err
	}
	if len(refused) > 0 {
		var errs []error
		for _, raw := range cidrs {
			if e, bad := refused[raw]; bad {
				errs = append(errs, fmt.Errorf("ban %s: %w", raw, e))
			}
		}
		return nil, fmt.Errorf("%w: %w", ErrRefused, errors.Join(errs...))
	}
	return ok, nil
}

// FilterCIDRs is CheckCIDRs that keeps the good ones: it returns the CIDRs that may be banned
// and, by input text, why the others may not (for automated triggers, which ban what they can).
func (c *Controller) FilterCIDRs(ctx context.Context, cidrs []string) ([]netip.Prefix, map[string]error, error) {
	return c.filter(ctx, cidrs, false)
}

func (c *Controller) filter(ctx context.Context, cidrs []string, force bool) ([]netip.Prefix, map[string]error, error) {
	// Both are cached for a minute; a cold controller (the CLI) reads them at once.
	var allow []netip.Prefix
	var pub fleetAddrs
	var g errgroup.Group
	g.Go(func() (err error) { allow, err = c.Allowlist(ctx); return err })
	g.Go(func() (err error) { pub, err = c.FleetAddresses(ctx); return err })
	if err := g.Wait(); err != nil {
		return nil, nil, err
	}
	allows, holds, err := c.policies(ctx)
	if err != nil {
		return nil, nil, err
	}
	var out []netip.Prefix
	refused := map[string]error{}
	for _, raw := range cidrs {
		p, err := proto.ParseCIDR(raw)
		if err == nil {
			err = c.Limits.CheckPrefix(p)
		}
		if err == nil && !force {
			soft := c.SoftMin4
			if p.Addr().Is6() {
				soft = c.SoftMin6
			}
			if p.Bits() < soft {
				err = fmt.Errorf("prefix /%d of %s is broader than /%d: give --force if you mean it", p.Bits(), p, soft)
			}
		}
		if err == nil {
			for _, a := range allow {
				if p.Overlaps(a) {
					err = fmt.Errorf("%s covers allowlisted %s", p, a)
					break
				}
			}
		}
		if a, ok := pub.covered(p); err == nil && ok {
			err = fmt.Errorf("%s covers %s, a public address of the fleet (an instance, an Elastic IP or a NAT gateway)", p, a)
		}
		if err == nil {
			err = policyRefusal(p, allows, holds, force)
		}
		if err != nil {
			refused[raw] = err
			continue
		}
		out = append(out, p)
	}
	return out, refused, nil
}

// Ban validates, writes the ledger and fans the bans out to every targeted instance. The history
// events are written while the fan-out runs, not before it.
func (c *Controller) Ban(ctx context.Context, req BanRequest) (*Result, error) {
	sel, err := ParseSelector(req.Target)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if req.TTL < 0 || req.TTL > c.Limits.MaxTTL {
		return nil, fmt.Errorf("%w: ttl %s is not between 0 (permanent) and %s", ErrRefused, req.TTL, c.Limits.MaxTTL)
	}
	if req.Operator {
		for field, v := range map[string]string{"reason": req.Reason, "source": req.Source} {
			if len(v) > proto.MaxTextBytes {
				return nil, fmt.Errorf("%w: %s: %d bytes is over the limit of %d", ErrRefused, field, len(v), proto.MaxTextBytes)
			}
		}
	}
	req.Reason, req.Source = proto.TruncateText(req.Reason, proto.MaxTextBytes), proto.TruncateText(req.Source, proto.MaxTextBytes)
	prefixes, err := c.CheckCIDRs(ctx, req.CIDRs, req.Force)
	if err != nil {
		return nil, err
	}
	if req.Simulate {
		return c.simulate(ctx, req, sel, prefixes)
	}
	// Discovery runs while the ledger is written: a ban's latency is the longer of the two, not
	// their sum.
	disc := c.startDiscover(ctx)
	// A trigger's offences are read while the revision is taken: one round trip, not two.
	ttlc := make(chan []time.Duration, 1)
	go func() { ttlc <- c.repeatTTLs(ctx, req, prefixes) }()
	rev, err := c.Ledger.NextRev(ctx)
	ttls := <-ttlc
	if err != nil {
		return nil, err
	}
	now := c.Now().UTC()
	res := &Result{Rev: rev, Selector: sel.String()}
	// Ledger writes run in parallel (bounded): a Lambda batch can carry hundreds of addresses.
	items := make([]BanItem, len(prefixes))
	written := make([]bool, len(prefixes))
	errs := make([]error, len(prefixes))
	var g errgroup.Group
	g.SetLimit(16)
	for i, p := range prefixes {
		items[i] = BanItem{CIDR: p.String(), Target: sel.String(), Reason: req.Reason, Source: req.Source, Rev: rev, Created: now, Updated: now}
		if ttls[i] > 0 {
			items[i].ExpiresAt = now.Add(ttls[i]).Unix()
		}
		g.Go(func() error {
			written[i], errs[i] = c.Ledger.PutBan(ctx, items[i])
			return nil
		})
	}
	_ = g.Wait()
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	var wire []proto.Ban
	var events []Event
	for i, it := range items {
		if !written[i] {
			res.Unchanged = append(res.Unchanged, it.CIDR)
			continue
		}
		res.Written++
		res.banned = append(res.banned, it.CIDR)
		wire = append(wire, it.Wire())
		if ttls[i] != req.TTL {
			if res.TTLs == nil {
				res.TTLs = map[string]string{}
			}
			res.TTLs[it.CIDR] = ttls[i].String()
		}
		events = append(events, Event{Kind: EventBan, CIDRs: []string{it.CIDR}, Target: it.Target, Who: req.Who, Reason: req.Reason, Source: req.Source,
			Trigger: req.Trigger, Rev: rev, Until: it.Expires(), TTL: ttls[i].String(), Cause: req.causeOf(req.CIDRs, i, prefixes)})
	}
	if len(wire) == 0 {
		return res, nil
	}
	c.Log.Info("ban", "rev", rev, "cidrs", len(wire), "target", sel.String(), "reason", req.Reason, "source", req.Source, "who", req.Who)
	wait := c.recordAsync(ctx, events...)
	err = c.fanoutTo(ctx, disc, []*Selector{sel}, &proto.Message{Kind: proto.KindBan, Rev: rev, Bans: wire}, res)
	c.edgeAfterBan(ctx, sel, wire) // edge.go: WAF IP sets whose edge the target covers
	c.notify(ctx, "ban", res)
	wait()
	return res, err
}

// causeOf is the cause of the i-th prefix, given as raw[i] (Causes is keyed by the CIDR as given
// or canonical).
func (r BanRequest) causeOf(raw []string, i int, prefixes []netip.Prefix) *Cause {
	if r.Causes != nil {
		if i < len(raw) {
			if cs, ok := r.Causes[raw[i]]; ok {
				return &cs
			}
		}
		if cs, ok := r.Causes[prefixes[i].String()]; ok {
			return &cs
		}
	}
	return r.Cause
}

// LimitRequest sets a rate-limit policy on a target.
type LimitRequest struct {
	Limit  proto.Limit
	Target string
	// EscalateFleet: with Limit.Escalate, a source that trips on one instance is banned on the
	// whole target at once, not first on that instance only.
	EscalateFleet bool
}

// Limit writes a policy and sends it to the targeted instances.
func (c *Controller) Limit(ctx context.Context, req LimitRequest) (*Result, error) {
	sel, err := ParseSelector(req.Target)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	l := req.Limit
	if err := l.Validate(c.Limits); err != nil {
		return nil, fmt.Errorf("%w: limit %s: %w", ErrRefused, l.ID, err)
	}
	rev, err := c.Ledger.NextRev(ctx)
	if err != nil {
		return nil, err
	}
	l.Rev = rev
	it := LimitItem{SK: l.ID, Target: sel.String(), Proto: l.Proto, Ports: l.Ports, Hits: l.Hits, Seconds: l.Seconds, Action: l.Action, Escalate: l.Escalate, EscalateUnverified: l.EscalateUnverified, EscalateFleet: req.EscalateFleet && l.Escalate, Rev: rev, Updated: c.Now().UTC()}
	if _, err := c.Ledger.PutLimit(ctx, it); err != nil {
		return nil, err
	}
	res := &Result{Rev: rev, Written: 1, Selector: sel.String()}
	err = c.fanout(ctx, sel, &proto.Message{Kind: proto.KindLimit, Rev: rev, Limits: []proto.Limit{l}}, res)
	return res, err
}

// Unlimit removes a policy.
func (c *Controller) Unlimit(ctx context.Context, id string) (*Result, error) {
	all, err := c.Ledger.Limits(ctx)
	if err != nil {
		return nil, err
	}
	var cur *LimitItem
	for i := range all {
		if all[i].SK == id && !all[i].Deleted {
			cur = &all[i]
		}
	}
	if cur == nil {
		return nil, fmt.Errorf("%w: no rate limit %q", ErrRefused, id)
	}
	rev, err := c.Ledger.NextRev(ctx)
	if err != nil {
		return nil, err
	}
	dead := *cur
	dead.Deleted, dead.Rev, dead.Updated = true, rev, c.Now().UTC()
	if _, err := c.Ledger.PutLimit(ctx, dead); err != nil {
		return nil, err
	}
	sel, err := ParseSelector(cur.Target)
	if err != nil {
		return nil, err
	}
	res := &Result{Rev: rev, Written: 1, Selector: sel.String()}
	err = c.fanout(ctx, sel, &proto.Message{Kind: proto.KindUnlimit, Rev: rev, Unlimits: []proto.Tombstone{{ID: id, Rev: rev}}}, res)
	return res, err
}

// Targets previews which instances a selector reaches.
func (c *Controller) Targets(ctx context.Context, target string) ([]Instance, error) {
	sel, err := ParseSelector(target)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	return c.Discover(ctx, sel)
}

func (c *Controller) fanout(ctx context.Context, sel *Selector, m *proto.Message, res *Result) error {
	return c.fanoutAny(ctx, []*Selector{sel}, m, res)
}

// fanoutAny sends m to every instance matching any of sels, signed for each, with bounded
// concurrency. Failures are recorded per instance; the reconciler repairs them from the ledger.
func (c *Controller) fanoutAny(ctx context.Context, sels []*Selector, m *proto.Message, res *Result) error {
	return c.fanoutTo(ctx, c.startDiscover(ctx), sels, m, res)
}

// discovery is a Discover of every managed instance running in the background, its pages
// readable as they arrive, as often as needed (a feed change fans out twice from one discovery).
type discovery struct {
	mu    sync.Mutex
	pages [][]Instance
	done  bool
	err   error
	wake  chan struct{} // closed (and replaced) when a page arrives or discovery ends
}

func (c *Controller) startDiscover(ctx context.Context) *discovery {
	d := &discovery{wake: make(chan struct{})}
	go func() {
		_, err := c.managedPages(ctx, mustParse("*"), func(page []Instance) {
			d.mu.Lock()
			d.pages = append(d.pages, page)
			close(d.wake)
			d.wake = make(chan struct{})
			d.mu.Unlock()
		})
		d.mu.Lock()
		d.done, d.err = true, err
		close(d.wake)
		d.mu.Unlock()
	}()
	return d
}

// each calls fn with every page, in order, as discovery finds it, and returns discovery's error.
func (d *discovery) each(ctx context.Context, fn func([]Instance)) error {
	for next := 0; ; {
		d.mu.Lock()
		pages, done, err, wake := d.pages[next:], d.done, d.err, d.wake
		d.mu.Unlock()
		for _, p := range pages {
			fn(p)
		}
		next += len(pages)
		if done {
			return err
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (c *Controller) fanoutTo(ctx context.Context, d *discovery, sels []*Selector, m *proto.Message, res *Result) error {
	m.ID = ulid.Make().String()
	m.IssuedAt = c.Now().UTC()
	parts := splitBody(*m)
	type part struct {
		id     string
		encode func(string) ([]byte, map[string]string, error)
	}
	encoders := make([]part, len(parts))
	for i, pm := range parts {
		encode, err := c.Signer.Addressed(pm)
		if err != nil {
			return fmt.Errorf("%w: ledger written at rev %d, but the message cannot be encoded (the reconciler will deliver): %w", ErrUndelivered, m.Rev, err)
		}
		encoders[i] = part{pm.ID, encode}
	}
	pool := c.newSendPool(ctx, func(ctx context.Context, id, url string) error {
		// Signed per instance: the body names its instance, so it cannot be replayed elsewhere.
		// Parts go out in order, in the queue's one FIFO group.
		for _, p := range encoders {
			body, attrs, err := p.encode(id)
			if err != nil {
				return err
			}
			if err := SendRaw(ctx, c.Queues.SQS, url, p.id, body, attrs); err != nil {
				return err
			}
		}
		return nil
	})
	// Sends start with discovery's first page, not after its last.
	derr := d.each(ctx, func(page []Instance) {
		for _, in := range page {
			for _, sel := range sels {
				if sel.MatchInstance(in.ID, in.Tags) {
					pool.add(in)
					break
				}
			}
		}
	})
	res.Instances = pool.wait()
	if failed := res.Failed(); len(failed) > 0 {
		ids := make([]string, len(failed))
		for i, f := range failed {
			ids[i] = f.InstanceID
		}
		c.Log.Warn("fan-out partly failed; the reconciler will deliver from the ledger", "rev", m.Rev, "failed", strings.Join(ids, ","))
	}
	if derr != nil {
		return fmt.Errorf("%w: ledger written at rev %d, but discovery failed after %d instances (the reconciler will deliver to the rest): %w", ErrUndelivered, m.Rev, len(res.Instances), derr)
	}
	return nil
}

// splitBody splits a ban or unban message whose body would pass SQS's limit (thousands of
// addresses, or long reasons) into messages of the same revision that each fit; m itself when it
// fits. Syncs are split by proto.SplitSync; limits are few.
func splitBody(m proto.Message) []proto.Message {
	const budget = proto.MaxBodyBytes - proto.AttributeHeadroom - 1024 // the envelope: id, kind, to, issued_at, rev
	size := func(v any) int { b, _ := json.Marshal(v); return len(b) + 1 }
	var out []proto.Message
	emit := func(bans []proto.Ban, unbans []proto.Tombstone) {
		pm := m
		pm.Bans, pm.Unbans = bans, unbans
		if len(out) > 0 {
			pm.ID = ulid.Make().String()
		}
		out = append(out, pm)
	}
	total := 0
	for _, b := range m.Bans {
		total += size(b)
	}
	for _, u := range m.Unbans {
		total += size(u)
	}
	if total <= budget && len(m.Bans)+len(m.Unbans) <= proto.DefaultLimits().MaxEntries {
		return []proto.Message{m}
	}
	for start, n, i := 0, 0, 0; i <= len(m.Bans); i++ {
		if i == len(m.Bans) || n+size(m.Bans[i]) > budget {
			if i > start {
				emit(m.Bans[start:i], nil)
			}
			if i == len(m.Bans) {
				break
			}
			start, n = i, 0
		}
		n += size(m.Bans[i])
	}
	for start, n, i := 0, 0, 0; i <= len(m.Unbans); i++ {
		if i == len(m.Unbans) || n+size(m.Unbans[i]) > budget {
			if i > start {
				emit(nil, m.Unbans[start:i])
			}
			if i == len(m.Unbans) {
				break
			}
			start, n = i, 0
		}
		n += size(m.Unbans[i])
	}
	return out
}

func (c *Controller) sendAll(ctx context.Context, targets []Instance, send func(ctx context.Context, id, url string) error) []Delivery {
	pool := c.newSendPool(ctx, send)
	for _, in := range targets {
		pool.add(in)
	}
	return pool.wait()
}

// sendPool sends to instances as they are added, with at most c.Concurrency sends in flight. Its
// workers are started as work arrives and live for the whole fan-out, not a goroutine per send:
// an SDK call runs deep in middleware, and each fresh goroutine would grow its stack again.
type sendPool struct {
	c       *Controller
	ctx     context.Context
	send    func(ctx context.Context, id, url string) error
	jobs    chan Instance
	wg      sync.WaitGroup
	workers int
	mu      sync.Mutex
	out     []Delivery
}

func (c *Controller) newSendPool(ctx context.Context, send func(ctx context.Context, id, url string) error) *sendPool {
	return &sendPool{c: c, ctx: ctx, send: send, jobs: make(chan Instance, 1024)}
}

func (p *sendPool) add(in Instance) {
	if p.workers < max(p.c.Concurrency, 1) {
		p.workers++
		p.wg.Go(p.work)
	}
	p.jobs <- in
}

func (p *sendPool) work() {
	for in := range p.jobs {
		url, err := p.c.queueURL(p.ctx, in.ID)
		if err == nil {
			err = p.send(p.ctx, in.ID, url)
		}
		p.mu.Lock()
		p.out = append(p.out, Delivery{InstanceID: in.ID, Err: err}) // one instance's failure is recorded, not fatal
		p.mu.Unlock()
	}
}

// wait returns every delivery, by instance id.
func (p *sendPool) wait() []Delivery {
	close(p.jobs)
	p.wg.Wait()
	sort.Slice(p.out, func(i, j int) bool { return p.out[i].InstanceID < p.out[j].InstanceID })
	if p.out == nil {
		return []Delivery{}
	}
	return p.out
}

// queueURL returns (and caches) an instance's queue, creating it if the reconciler has not yet.
func (c *Controller) queueURL(ctx context.Context, id string) (string, error) {
	if u, ok := c.urls.Load(id); ok {
		return u.(string), nil
	}
	u, err := c.Queues.URL(ctx, id)
	if errors.Is(err, ErrNoQueue) {
		u, err = c.Queues.Ensure(ctx, id)
	}
	if err != nil {
		return "", err
	}
	c.urls.Store(id, u)
	return u, nil
}

func mustParse(s string) *Selector {
	sel, err := ParseSelector(s)
	if err != nil {
		panic(err)
	}
	return sel
}
