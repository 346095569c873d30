package controller

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/bansshee/bansshee/proto"
	"golang.org/x/sync/errgroup"
)

// Applied says which targeted instances have applied a revision.
type Applied struct {
	Targeted int      `json:"targeted"`
	Applied  int      `json:"applied"`
	Pending  []string `json:"pending,omitempty"` // the first 20 that have not
}

// WhyBan is a ledger ban that covers the address.
type WhyBan struct {
	CIDR    string    `json:"cidr"`
	Target  string    `json:"target"`
	Reason  string    `json:"reason"`
	Source  string    `json:"source"`
	Who     string    `json:"who,omitempty"`
	Trigger string    `json:"trigger,omitempty"`
	Cause   *Cause    `json:"cause,omitempty"`
	Rev     int64     `json:"rev"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires,omitzero"` // zero: permanent
	Applied
}

// WhyFeed is a feed entry that covers the address.
type WhyFeed struct {
	Feed    string    `json:"feed"`
	CIDR    string    `json:"cidr"`
	Target  string    `json:"target"`
	Rev     int64     `json:"rev"`
	Expires time.Time `json:"expires"`
	Mode    string    `json:"mode,omitempty"`
	Lifted  string    `json:"lifted,omitempty"` // an allow entry or hold keeps it off the agents
	Applied
}

// WhyPolicy is an allow entry or hold that covers the address.
type WhyPolicy struct {
	CIDR    string    `json:"cidr"`
	Reason  string    `json:"reason"`
	Who     string    `json:"who"`
	Rev     int64     `json:"rev"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires,omitzero"`
}

// WhyReport answers `bansshee why ADDR`.
type WhyReport struct {
	Addr    string      `json:"addr"`
	Bans    []WhyBan    `json:"bans"`
	Feeds   []WhyFeed   `json:"feeds"`
	Allows  []WhyPolicy `json:"allows"`
	Holds   []WhyPolicy `json:"holds"`
	History []Event     `json:"history"`
}

// Why gathers everything that bans, lifts or allows addr, exact or as a prefix, with which
// instances have applied each ban, and the address's history. Every read runs in parallel: the
// covering prefixes' ban partitions (one Query each), the feeds, the policies, the history, and
// discovery with the agents' statuses.
func (c *Controller) Why(ctx context.Context, addr string) (*WhyReport, error) {
	p, err := proto.ParseCIDR(addr)
	if err != nil {
		return nil, fmt.Errorf("%w: why %s: %w", ErrRefused, addr, err)
	}
	now := c.Now()
	rep := &WhyReport{Addr: p.String(), Bans: []WhyBan{}, Feeds: []WhyFeed{}, Allows: []WhyPolicy{}, Holds: []WhyPolicy{}}
	var mu sync.Mutex
	var g errgroup.Group
	g.SetLimit(64)
	// Every prefix that may cover p, from the broadest a ban may be to p itself.
	min := c.Limits.MinPrefix4
	if p.Addr().Is6() {
		min = c.Limits.MinPrefix6
	}
	// The partition of bans written before the split is read per prefix only if it holds any.
	legacy, err := c.Ledger.DDB.Query(ctx, &dynamodb.QueryInput{TableName: aws.String(c.Table), KeyConditionExpression: aws.String("pk = :pk"),
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":pk": s(legacyBanPK)}, Limit: aws.Int32(1), ProjectionExpression: aws.String("pk")})
	if err != nil {
		return nil, fmt.Errorf("why %s: %w", p, err)
	}
	pks := func(cidr string) []string {
		if len(legacy.Items) > 0 {
			return []string{BanPK(cidr), legacyBanPK}
		}
		return []string{BanPK(cidr)}
	}
	for bits := min; bits <= p.Bits(); bits++ {
		cidr := netip.PrefixFrom(p.Addr(), bits).Masked().String()
		for _, pk := range pks(cidr) {
			g.Go(func() error {
				raws, err := c.Ledger.query(ctx, pk, cidr+"|")
				if err != nil {
					return err
				}
				var items []BanItem
				if err := attributevalue.UnmarshalListOfMaps(raws, &items); err != nil {
					return err
				}
				mu.Lock()
				defer mu.Unlock()
				for _, b := range items {
					b.fromKey()
					if b.Active(now) {
						rep.Bans = append(rep.Bans, WhyBan{CIDR: b.CIDR, Target: b.Target, Reason: b.Reason, Source: b.Source, Rev: b.Rev, Created: b.Created, Expires: b.Expires()})
					}
				}
				return nil
			})
		}
	}
	var feeds []feedView
	g.Go(func() error {
		heads, err := c.Ledger.Feeds(ctx)
		if err != nil {
			return err
		}
		for _, f := range heads {
			if !f.Current(now) {
				continue
			}
			entries, err := c.loadFeed(ctx, f)
			if err != nil {
				return err
			}
			var hit []feedEntry
			for _, e := range entries {
				if e.p.Overlaps(p) && e.p.Bits() <= p.Bits() {
					hit = append(hit, e)
				}
			}
			if len(hit) > 0 {
				mu.Lock()
				feeds = append(feeds, feedView{FeedItem: f, entries: hit})
				mu.Unlock()
			}
		}
		return nil
	})
	var allows, holds []PolicyItem
	g.Go(func() (err error) { allows, err = c.Ledger.Allows(ctx, now); return err })
	g.Go(func() (err error) { holds, err = c.Ledger.Holds(ctx, now); return err })
	g.Go(func() (err error) { rep.History, err = c.History(ctx, p, time.Time{}); return err })
	// The instances (from the inventory, or discovery), and the statuses of each page's
	// instances as the page arrives (not after the last page): when discovering 10 000
	// instances, 10 pages and 100 status reads overlap.
	var instances []Instance
	statuses := map[string]proto.AgentStatus{}
	g.Go(func() error {
		var sg errgroup.Group
		_, err := c.managedPagesFrom(ctx, mustParse("*"), func(page []Instance, inv *Inventory) {
			mu.Lock()
			instances = append(instances, page...)
			mu.Unlock()
			ids := make([]string, len(page))
			for i, in := range page {
				ids[i] = in.ID
			}
			sg.Go(func() error {
				var st map[string]proto.AgentStatus
				var err error
				if inv != nil { // only the key each agent was last found under
					st, err = c.Ledger.statusesHinted(ctx, ids, inv.keyForms, now.Add(-c.SilentAfter), appliedOnly)
				} else {
					st, err = c.Ledger.statuses(ctx, ids, appliedOnly)
				}
				mu.Lock()
				defer mu.Unlock()
				for id, s := range st {
					statuses[id] = s
				}
				return err
			})
		})
		return errors.Join(err, sg.Wait())
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if rep.History == nil {
		rep.History = []Event{}
	}
	for _, list := range []struct {
		in  []PolicyItem
		out *[]WhyPolicy
	}{{allows, &rep.Allows}, {holds, &rep.Holds}} {
		for _, a := range list.in {
			if a.Active(now) && a.Prefix().Overlaps(p) {
				*list.out = append(*list.out, WhyPolicy{CIDR: a.SK, Reason: a.Reason, Who: a.Who, Rev: a.Rev, Created: a.Created, Expires: a.Expires()})
			}
		}
	}
	for i := range rep.Bans {
		b := &rep.Bans[i]
		for _, e := range rep.History {
			if e.Kind == EventBan && e.Rev == b.Rev && len(e.CIDRs) == 1 && e.CIDRs[0] == b.CIDR {
				b.Who, b.Trigger, b.Cause = e.Who, e.Trigger, e.Cause
			}
		}
	}
	for _, f := range feeds {
		for _, e := range f.entries {
			wf := WhyFeed{Feed: f.SK, CIDR: e.p.String(), Target: f.Target, Rev: e.rev, Expires: time.Unix(f.GoodUntil, 0).UTC(), Mode: f.Mode}
			if err := policyRefusal(e.p, allows, holds, false); err != nil && (f.Mode != FeedSimulate) {
				wf.Lifted = err.Error()
			}
			rep.Feeds = append(rep.Feeds, wf)
		}
	}
	c.applied(instances, statuses, rep)
	sort.Slice(rep.Bans, func(i, j int) bool { return rep.Bans[i].CIDR+rep.Bans[i].Target < rep.Bans[j].CIDR+rep.Bans[j].Target })
	return rep, nil
}

// applied fills in, for every ban and feed entry of rep, which targeted instances report its
// revision.
func (c *Controller) applied(instances []Instance, statuses map[string]proto.AgentStatus, rep *WhyReport) {
	count := func(target string, rev int64) Applied {
		var a Applied
		sel, err := ParseSelector(target)
		if err != nil {
			return a
		}
		for _, in := range instances {
			if !sel.MatchInstance(in.ID, in.Tags) {
				continue
			}
			a.Targeted++
			if statuses[in.ID].AppliedRev >= rev {
				a.Applied++
			} else if len(a.Pending) < 20 {
				a.Pending = append(a.Pending, in.ID)
			}
		}
		return a
	}
	for i := range rep.Bans {
		rep.Bans[i].Applied = count(rep.Bans[i].Target, rep.Bans[i].Rev)
	}
	for i := range rep.Feeds {
		rep.Feeds[i].Applied = count(rep.Feeds[i].Target, rep.Feeds[i].Rev)
	}
}
