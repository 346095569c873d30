package controller

// The edge: AWS WAF IP sets kept in step with the bans whose target covers an edge's target, for
// fleets behind an Application Load Balancer or CloudFront, where hosts see the load balancer's
// address and not the client's. WAF sees only HTTP(S) through the load balancer: raw TCP (SSH,
// POP3, SMTP) still needs the host agent.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/wafv2"
	waftypes "github.com/aws/aws-sdk-go-v2/service/wafv2/types"
	"github.com/bansshee/bansshee/proto"
)

// WAFSetMax is WAF's quota of addresses (CIDRs) per IP set.
const WAFSetMax = 10000

// EdgeItem is an edge in the ledger (pk "edge", sk its name).
type EdgeItem struct {
	PK      string    `dynamodbav:"pk"`
	SK      string    `dynamodbav:"sk"` // the edge's name; its sets are <name>-v4-<i> and <name>-v6-<i>
	Scope   string    `dynamodbav:"scope"`
	Target  string    `dynamodbav:"target"`
	WebACL  string    `dynamodbav:"web_acl,omitempty"`
	MaxSets int       `dynamodbav:"max_sets"` // per family
	Created time.Time `dynamodbav:"created"`
	// What the last full sync did.
	Synced  time.Time `dynamodbav:"synced,omitempty"`
	V4, V6  int       `dynamodbav:"v4,omitempty"`
	LeftOut int       `dynamodbav:"left_out,omitempty"`
	Report  string    `dynamodbav:"report,omitempty"`
	Error   string    `dynamodbav:"error,omitempty"`
}

// EdgeRequest adds (or changes) an edge.
type EdgeRequest struct {
	Name, Scope, Target, WebACL string
	MaxSets                     int // per family; default 5
}

// EdgeReport says what a sync did to an edge's sets.
type EdgeReport struct {
	Edge            string
	V4, V6          int      // addresses in the sets after the sync
	Sets            []string // set names, v4 then v6
	Created         []string
	Updated         []string
	LeftOut         int    // bans the quota kept out
	Reason          string // why they were left out
	Skipped         int    // never-ban or allowlisted entries
	LockRetries     int
	Added, Removed  int
	WriteCalls      int
	DurationSeconds float64
}

var edgeNameRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,100}$`)

// ErrNoWAF: the controller has no WAF client.
var ErrNoWAF = errors.New("no WAF client configured")

func (r EdgeRequest) check() error {
	if !edgeNameRe.MatchString(r.Name) {
		return fmt.Errorf("%w: edge name %q: 1 to 100 of A-Z a-z 0-9 _ - (it names the WAF IP sets)", ErrRefused, r.Name)
	}
	if r.Scope != "REGIONAL" && r.Scope != "CLOUDFRONT" {
		return fmt.Errorf("%w: edge %s: --scope %q: want REGIONAL (an ALB, API Gateway) or CLOUDFRONT", ErrRefused, r.Name, r.Scope)
	}
	if _, err := ParseSelector(r.Target); err != nil || strings.TrimSpace(r.Target) == "" {
		return fmt.Errorf("%w: edge %s: --target: %v", ErrRefused, r.Name, errOr(err, "required (\"*\" for every ban)"))
	}
	if r.MaxSets < 1 || r.MaxSets > 25 {
		return fmt.Errorf("%w: edge %s: --max-sets %d: 1 to 25 per family (a web ACL holds 50 reference statements, an account 100 IP sets)", ErrRefused, r.Name, r.MaxSets)
	}
	if r.WebACL != "" {
		kind := "regional"
		if r.Scope == "CLOUDFRONT" {
			kind = "global"
		}
		if !strings.HasPrefix(r.WebACL, "arn:aws") || !strings.Contains(r.WebACL, ":wafv2:") || !strings.Contains(r.WebACL, ":"+kind+"/webacl/") {
			return fmt.Errorf("%w: edge %s: --web-acl %q: want the ARN of a %s web ACL (arn:aws:wafv2:REGION:ACCOUNT:%s/webacl/NAME/ID)", ErrRefused, r.Name, r.WebACL, kind, kind)
		}
	}
	return nil
}

func errOr(err error, s string) string {
	if err != nil {
		return err.Error()
	}
	return s
}

// AddEdge records an edge and syncs its sets at once (creating them, or adopting sets of the same
// names that the stack created).
func (c *Controller) AddEdge(ctx context.Context, req EdgeRequest) (*EdgeReport, error) {
	if req.MaxSets == 0 {
		req.MaxSets = 5
	}
	if err := req.check(); err != nil {
		return nil, err
	}
	if c.WAF == nil {
		return nil, ErrNoWAF
	}
	sel, _ := ParseSelector(req.Target)
	e := EdgeItem{PK: "edge", SK: req.Name, Scope: req.Scope, Target: sel.String(), WebACL: req.WebACL, MaxSets: req.MaxSets, Created: c.Now().UTC()}
	if err := c.Ledger.PutEdge(ctx, e); err != nil {
		return nil, err
	}
	return c.SyncEdge(ctx, req.Name)
}

// RemoveEdge forgets an edge; with deleteSets its WAF IP sets are deleted too (WAF refuses while a
// web ACL rule still references them).
func (c *Controller) RemoveEdge(ctx context.Context, name string, deleteSets bool) error {
	e, ok, err := c.Ledger.Edge(ctx, name)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: no edge named %s", ErrRefused, name)
	}
	if deleteSets {
		sets, err := c.edgeSets(ctx, e)
		if err != nil {
			return err
		}
		for _, fam := range sets {
			for _, s := range fam {
				if err := c.wafPace(ctx, "DeleteIPSet"); err != nil {
					return err
				}
				if _, err := c.wafFor(e).DeleteIPSet(ctx, &wafv2.DeleteIPSetInput{Name: aws.String(s.name), Id: aws.String(s.id), Scope: waftypes.Scope(e.Scope), LockToken: aws.String(s.lock)}); err != nil {
					return fmt.Errorf("delete IP set %s: %w", s.name, err)
				}
			}
		}
	}
	_, err = c.Ledger.DDB.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: aws.String(c.Ledger.Table), Key: map[string]ddbtypes.AttributeValue{"pk": s("edge"), "sk": s(name)}})
	return err
}

// PutEdge writes an edge.
func (l *Ledger) PutEdge(ctx context.Context, e EdgeItem) error {
	e.PK = "edge"
	item, err := attributevalue.MarshalMap(e)
	if err != nil {
		return err
	}
	_, err = l.DDB.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(l.Table), Item: item})
	if err != nil {
		return fmt.Errorf("write edge %s: %w", e.SK, err)
	}
	return nil
}

// Edges lists the edges.
func (l *Ledger) Edges(ctx context.Context) ([]EdgeItem, error) {
	return queryItems[EdgeItem](ctx, l, "edge")
}

// Edge reads one edge.
func (l *Ledger) Edge(ctx context.Context, name string) (EdgeItem, bool, error) {
	out, err := l.DDB.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(l.Table), ConsistentRead: aws.Bool(true),
		Key: map[string]ddbtypes.AttributeValue{"pk": s("edge"), "sk": s(name)}})
	if err != nil {
		return EdgeItem{}, false, fmt.Errorf("read edge %s: %w", name, err)
	}
	if out.Item == nil {
		return EdgeItem{}, false, nil
	}
	var e EdgeItem
	err = attributevalue.UnmarshalMap(out.Item, &e)
	return e, err == nil, err
}

// Covers reports whether s selects every instance o selects, judged on their terms: each term of
// s is a term of o ("*" covers everything). A ban reaches an edge when its target covers the
// edge's, so a WAF set never blocks a client for instances the ban does not name.
func (s *Selector) Covers(o *Selector) bool {
	have := map[string]bool{}
	for _, t := range o.terms {
		have[t.canon()] = true
	}
	for _, t := range s.terms {
		if !have[t.canon()] {
			return false
		}
	}
	return true
}

func (t term) canon() string {
	vals := slices.Clone(t.values)
	sort.Strings(vals)
	return fmt.Sprint(t.key, "\x00", int(t.op), "\x00", strings.Join(vals, "\x00"))
}

// edgeEntry is a prefix the edge should block, with what orders it against the quota.
type edgeEntry struct {
	p       netip.Prefix
	updated time.Time
}

// edgeDesired is what an edge should hold per family, newest first: the active bans and feed
// entries whose target covers the edge's, less never-ban and allowlisted prefixes.
func (c *Controller) edgeDesired(ctx context.Context, e EdgeItem, v *ledgerView) ([2][]netip.Prefix, int, error) {
	var out [2][]netip.Prefix
	allow, err := c.Allowlist(ctx)
	if err != nil {
		return out, 0, err
	}
	edgeSel, err := ParseSelector(e.Target)
	if err != nil {
		return out, 0, fmt.Errorf("edge %s: target: %w", e.SK, err)
	}
	now := c.Now()
	best := map[netip.Prefix]time.Time{}
	add := func(p netip.Prefix, t time.Time) {
		if old, ok := best[p]; !ok || t.After(old) {
			best[p] = t
		}
	}
	for _, b := range v.bans {
		if s := v.sel(b.Target); s == nil || !b.Active(now) || !s.Covers(edgeSel) {
			continue
		}
		if p, err := netip.ParsePrefix(b.CIDR); err == nil && policyRefusal(p.Masked(), v.allows, nil, true) == nil {
			add(p.Masked(), b.Updated)
		}
	}
	for _, f := range v.feeds {
		if s := v.sel(f.Target); s == nil || !f.Active(now) || !s.Covers(edgeSel) {
			continue
		}
		for _, en := range f.entries {
			// Ledger allow entries and holds keep a feed's entries off the edge as off the agents.
			if policyRefusal(en.p, v.allows, v.holds, false) == nil {
				add(en.p, f.OK)
			}
		}
	}
	skipped := 0
	var entries [2][]edgeEntry
	for p, t := range best {
		if !c.edgeAllowed(p, allow) {
			skipped++
			continue
		}
		fi := 0
		if p.Addr().Is6() {
			fi = 1
		}
		entries[fi] = append(entries[fi], edgeEntry{p, t})
	}
	for fi := range entries {
		sort.Slice(entries[fi], func(i, j int) bool {
			a, b := entries[fi][i], entries[fi][j]
			if !a.updated.Equal(b.updated) {
				return a.updated.After(b.updated) // newest first: the oldest are left out past the quota
			}
			return a.p.Addr().Less(b.p.Addr())
		})
		for _, en := range entries[fi] {
			out[fi] = append(out[fi], en.p)
		}
	}
	return out, skipped, nil
}

// edgeAllowed applies the never-ban list, the hard prefix limits and the allowlist (WAF refuses /0).
func (c *Controller) edgeAllowed(p netip.Prefix, allow []netip.Prefix) bool {
	if p.Bits() == 0 || c.Limits.CheckPrefix(p) != nil {
		return false
	}
	for _, a := range allow {
		if p.Overlaps(a) {
			return false
		}
	}
	return true
}

// SyncEdge brings one edge's sets to the ledger: adds, removes what was unbanned or expired.
func (c *Controller) SyncEdge(ctx context.Context, name string) (*EdgeReport, error) {
	if c.WAF == nil {
		return nil, ErrNoWAF
	}
	e, ok, err := c.Ledger.Edge(ctx, name)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: no edge named %s", ErrRefused, name)
	}
	v, err := c.readLedger(ctx)
	if err != nil {
		return nil, err
	}
	return c.syncEdge(ctx, e, v)
}

func (c *Controller) syncEdge(ctx context.Context, e EdgeItem, v *ledgerView) (*EdgeReport, error) {
	desired, skipped, err := c.edgeDesired(ctx, e, v)
	if err != nil {
		return nil, err
	}
	rep, err := c.changeEdge(ctx, e, func(fi int, _ []netip.Prefix) ([]netip.Prefix, string) {
		return desired[fi], "the oldest bans were left out"
	})
	if rep != nil {
		rep.Skipped = skipped
		e.Synced, e.V4, e.V6, e.LeftOut, e.Error = c.Now().UTC(), rep.V4, rep.V6, rep.LeftOut, ""
		e.Report = ""
		if rep.LeftOut > 0 {
			e.Report = fmt.Sprintf("%d bans left out: %s", rep.LeftOut, rep.Reason)
		}
	}
	if err != nil {
		e.Error = err.Error()
	}
	if perr := c.Ledger.PutEdge(ctx, e); perr != nil && err == nil {
		err = perr
	}
	return rep, err
}

// SyncEdges syncs every edge (the reconciler's pass); one edge's failure does not stop the others.
func (c *Controller) SyncEdges(ctx context.Context) ([]*EdgeReport, error) {
	if c.WAF == nil {
		return nil, nil
	}
	v, err := c.readLedger(ctx)
	if err != nil {
		return nil, err
	}
	return c.syncEdges(ctx, v)
}

func (c *Controller) syncEdges(ctx context.Context, v *ledgerView) ([]*EdgeReport, error) {
	if c.WAF == nil {
		return nil, nil
	}
	edges, err := c.Ledger.Edges(ctx)
	if err != nil || len(edges) == 0 {
		return nil, err
	}
	var reps []*EdgeReport
	var errs []error
	for _, e := range edges {
		rep, err := c.syncEdge(ctx, e, v)
		if rep != nil {
			reps = append(reps, rep)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("edge %s: %w", e.SK, err))
		}
	}
	return reps, errors.Join(errs...)
}

// edgeBan adds freshly banned prefixes to the edges their target covers, at once (the
// reconciler's sync would add them within a pass; this is within seconds).
func (c *Controller) edgeBan(ctx context.Context, target *Selector, prefixes []netip.Prefix) error {
	return c.edgeChange(ctx, func(e EdgeItem, sel *Selector) bool { return target.Covers(sel) }, prefixes, nil)
}

// edgeUnban removes unbanned prefixes from every edge.
func (c *Controller) edgeUnban(ctx context.Context, prefixes []netip.Prefix) error {
	return c.edgeChange(ctx, func(EdgeItem, *Selector) bool { return true }, nil, prefixes)
}

func (c *Controller) edgeChange(ctx context.Context, match func(EdgeItem, *Selector) bool, add, del []netip.Prefix) error {
	if c.WAF == nil {
		return nil
	}
	edges, err := c.Ledger.Edges(ctx)
	if err != nil || len(edges) == 0 {
		return err
	}
	allow, err := c.Allowlist(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range edges {
		sel, err := ParseSelector(e.Target)
		if err != nil || !match(e, sel) {
			continue
		}
		gone := map[netip.Prefix]bool{}
		for _, p := range del {
			gone[p.Masked()] = true
		}
		_, err = c.changeEdge(ctx, e, func(fi int, cur []netip.Prefix) ([]netip.Prefix, string) {
			var w []netip.Prefix
			seen := map[netip.Prefix]bool{}
			for _, p := range cur {
				if !gone[p] && !seen[p] {
					w, seen[p] = append(w, p), true
				}
			}
			for _, p := range add {
				p = p.Masked()
				if (fi == 1) == p.Addr().Is6() && !seen[p] && c.edgeAllowed(p, allow) {
					w, seen[p] = append(w, p), true
				}
			}
			return w, "the sets are full; the next reconcile keeps the newest bans"
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("edge %s: %w", e.SK, err))
		}
	}
	return errors.Join(errs...)
}

// edgeAfterBan and edgeAfterUnban carry a ban or unban to the edges at once; a failure is logged
// and left to the reconciler's next pass (the ban itself holds either way).
func (c *Controller) edgeAfterBan(ctx context.Context, sel *Selector, bans []proto.Ban) {
	var ps []netip.Prefix
	for _, b := range bans {
		if p, err := netip.ParsePrefix(b.CIDR); err == nil {
			ps = append(ps, p)
		}
	}
	if err := c.edgeBan(ctx, sel, ps); err != nil {
		c.Log.Warn("edge: ban not carried to WAF now; the reconciler will", "err", err)
	}
}

func (c *Controller) edgeAfterUnban(ctx context.Context, prefixes []netip.Prefix) {
	if err := c.edgeUnban(ctx, prefixes); err != nil {
		c.Log.Warn("edge: unban not carried to WAF now; the reconciler will", "err", err)
	}
}
