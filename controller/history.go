package controller

// History: every ban, unban, allow change, hold and simulate verdict as an event, kept for
// Config.HistoryRetention (90 days) by the table's TTL.
//
//	pk="hist#<bucket>"  sk="<cidr>#<unix nanos>#<event id>"  one item per CIDR of an event
//	pk="hday#<date>"    sk="<unix nanos>#<event id>"         the whole event, for `history` of everything
//
// The bucket of a CIDR is its /16 (IPv4) or /32 (IPv6), or "4w"/"6w" for broader ones, so the
// history of an address is one Query of its bucket and one of the broad bucket. Beside its events,
// sk="<cidr>#off" holds the times of the CIDR's trigger bans (Repeat), read by key.

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/bansshee/bansshee/proto"
	"github.com/oklog/ulid/v2"
	"golang.org/x/sync/errgroup"
)

// DefaultHistoryRetention is how long events are kept.
const DefaultHistoryRetention = 90 * 24 * time.Hour

// Event kinds.
const (
	EventBan      = "ban"
	EventUnban    = "unban" // with Hold when it leaves one
	EventAllow    = "allow"
	EventUnallow  = "allow-rm"
	EventSimulate = "simulate"
	EventExpire   = "expire" // derived: a ban's TTL passed with no later change
)

// Cause is what made a trigger ban: the jail's log group, stream, count and window, an alarm,
// a GuardDuty finding, a feed, or an escalating limit and the instance that reported it.
type Cause struct {
	Jail      string `json:"jail,omitempty" dynamodbav:"jail,omitempty"`
	LogGroup  string `json:"log_group,omitempty" dynamodbav:"log_group,omitempty"`
	LogStream string `json:"log_stream,omitempty" dynamodbav:"log_stream,omitempty"`
	Count     int    `json:"count,omitempty" dynamodbav:"count,omitempty"`
	Window    string `json:"window,omitempty" dynamodbav:"window,omitempty"`
	Alarm     string `json:"alarm,omitempty" dynamodbav:"alarm,omitempty"`
	Finding   string `json:"finding,omitempty" dynamodbav:"finding,omitempty"`
	Feed      string `json:"feed,omitempty" dynamodbav:"feed,omitempty"`
	Limit     string `json:"limit,omitempty" dynamodbav:"limit,omitempty"`
	Instance  string `json:"instance,omitempty" dynamodbav:"instance,omitempty"`
}

// String is the cause in one line.
func (c *Cause) String() string {
	if c == nil {
		return ""
	}
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+" "+v)
		}
	}
	add("jail", c.Jail)
	add("log group", c.LogGroup)
	add("stream", c.LogStream)
	if c.Count > 0 {
		parts = append(parts, fmt.Sprintf("%d failures", c.Count))
	}
	add("in", c.Window)
	add("alarm", c.Alarm)
	add("finding", c.Finding)
	add("feed", c.Feed)
	add("limit", c.Limit)
	add("instance", c.Instance)
	return strings.Join(parts, ", ")
}

// Event is one entry of the history.
type Event struct {
	Time    time.Time `json:"time"`
	ID      string    `json:"id"`
	Kind    string    `json:"kind"`
	CIDRs   []string  `json:"cidrs"`
	Target  string    `json:"target,omitempty"`
	Who     string    `json:"who"`
	Reason  string    `json:"reason,omitempty"`
	Source  string    `json:"source,omitempty"`
	Trigger string    `json:"trigger,omitempty"` // a trigger's ban: counts as an offence
	Rev     int64     `json:"rev,omitempty"`
	Until   time.Time `json:"until,omitzero"` // a ban's expiry, an allow entry's, a hold's end
	TTL     string    `json:"ttl,omitempty"`
	Hold    string    `json:"hold,omitempty"`
	Cause   *Cause    `json:"cause,omitempty"`
}

// histItem is an event in the table.
type histItem struct {
	PK        string   `dynamodbav:"pk"`
	SK        string   `dynamodbav:"sk"`
	Kind      string   `dynamodbav:"k"`
	CIDRs     []string `dynamodbav:"cidrs,omitempty"` // day items only
	Target    string   `dynamodbav:"target,omitempty"`
	Who       string   `dynamodbav:"who,omitempty"`
	Reason    string   `dynamodbav:"reason,omitempty"`
	Source    string   `dynamodbav:"source,omitempty"`
	Trigger   string   `dynamodbav:"trig,omitempty"`
	Rev       int64    `dynamodbav:"rev,omitempty"`
	Until     int64    `dynamodbav:"until,omitempty"`
	TTL       string   `dynamodbav:"ttl,omitempty"`
	Hold      string   `dynamodbav:"hold,omitempty"`
	Cause     *Cause   `dynamodbav:"cause,omitempty"`
	ExpiresAt int64    `dynamodbav:"expires_at"`
}

// historyBucket is the partition of the history of p.
func historyBucket(p netip.Prefix) string {
	if p.Addr().Is4() {
		if p.Bits() < 16 {
			return "hist#4w"
		}
		return "hist#" + netip.PrefixFrom(p.Addr(), 16).Masked().String()
	}
	if p.Bits() < 32 {
		return "hist#6w"
	}
	return "hist#" + netip.PrefixFrom(p.Addr(), 32).Masked().String()
}

// historyBuckets are the partitions that may hold events of prefixes overlapping p: its own
// buckets (every /16 inside it, for a broad IPv4 prefix) and the broad one.
func historyBuckets(p netip.Prefix) []string {
	wide := "hist#4w"
	if p.Addr().Is6() {
		wide = "hist#6w"
	}
	if p.Addr().Is6() || p.Bits() >= 16 {
		if p.Addr().Is6() && p.Bits() < 32 {
			return []string{wide}
		}
		return []string{historyBucket(p), wide}
	}
	out := []string{wide}
	base := p.Masked().Addr().As4()
	for i := 0; i < 1<<(16-p.Bits()); i++ {
		hi := uint16(base[0])<<8 | uint16(base[1]) + uint16(i)
		out = append(out, "hist#"+netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(hi >> 8), byte(hi), 0, 0}), 16).String())
	}
	return out
}

func nanos(t time.Time) string { return fmt.Sprintf("%019d", t.UnixNano()) }

func (e Event) item(pk, sk string, exp int64) histItem {
	it := histItem{PK: pk, SK: sk, Kind: e.Kind, Target: e.Target, Who: e.Who, Reason: e.Reason, Source: e.Source, Trigger: e.Trigger, Rev: e.Rev,
		TTL: e.TTL, Hold: e.Hold, Cause: e.Cause, ExpiresAt: exp}
	if !e.Until.IsZero() {
		it.Until = e.Until.Unix()
	}
	return it
}

// record writes events: one item per CIDR in its bucket, and the event in its day.
func (c *Controller) record(ctx context.Context, events ...Event) error {
	now := c.Now().UTC()
	exp := now.Add(c.HistoryRetention).Unix()
	var items []histItem
	for i := range events {
		if events[i].Time.IsZero() {
			events[i].Time = now
		}
		if events[i].ID == "" {
			events[i].ID = ulid.Make().String()
		}
	}
	for _, e := range events {
		ts := nanos(e.Time)
		for _, cidr := range e.CIDRs {
			p, err := proto.ParseCIDR(cidr)
			if err != nil {
				continue
			}
			items = append(items, e.item(historyBucket(p), p.String()+"#"+ts+"#"+e.ID, exp))
		}
		// The day item lists at most 500 CIDRs each (a flood's event stays under DynamoDB's 400 KB).
		for i := 0; i == 0 || i < len(e.CIDRs); i += 500 {
			it := e.item("hday#"+e.Time.Format("2006-01-02"), ts+"#"+e.ID+"#"+strconv.Itoa(i/500), exp)
			it.CIDRs = e.CIDRs[i:min(i+500, len(e.CIDRs))]
			items = append(items, it)
		}
	}
	var g errgroup.Group
	g.SetLimit(8)
	for i := 0; i < len(items); i += 25 {
		chunk := items[i:min(i+25, len(items))]
		g.Go(func() error { return c.Ledger.batchWrite(ctx, chunk) })
	}
	g.Go(func() error { return c.recordOffences(ctx, events) })
	return g.Wait()
}

// recordAsync writes events while the caller goes on (a fan-out); the returned func waits for
// the write and logs a failure (a history write never fails a ban).
func (c *Controller) recordAsync(ctx context.Context, events ...Event) (wait func()) {
	if len(events) == 0 || c.NoHistory {
		return func() {}
	}
	done := make(chan error, 1)
	go func() { done <- c.record(context.WithoutCancel(ctx), events...) }()
	return sync.OnceFunc(func() {
		if err := <-done; err != nil {
			c.Log.Warn("history not written", "events", len(events), "kind", events[0].Kind, "err", err)
		}
	})
}

// batchWrite puts up to 25 items, retrying what DynamoDB leaves unprocessed.
func (l *Ledger) batchWrite(ctx context.Context, items []histItem) error {
	reqs := make([]ddbtypes.WriteRequest, 0, len(items))
	for _, it := range items {
		av, err := attributevalue.MarshalMap(it)
		if err != nil {
			return err
		}
		reqs = append(reqs, ddbtypes.WriteRequest{PutRequest: &ddbtypes.PutRequest{Item: av}})
	}
	return l.writeRequests(ctx, reqs)
}

func (it histItem) event(cidr string) Event {
	parts := strings.Split(it.SK, "#")
	var ts, id string
	if strings.HasPrefix(it.PK, "hday#") {
		ts, id = parts[0], parts[1]
	} else if len(parts) >= 3 {
		ts, id = parts[1], parts[2]
	}
	ns, _ := strconv.ParseInt(ts, 10, 64)
	e := Event{Time: time.Unix(0, ns).UTC(), ID: id, Kind: it.Kind, CIDRs: it.CIDRs, Target: it.Target, Who: it.Who, Reason: it.Reason, Source: it.Source,
		Trigger: it.Trigger, Rev: it.Rev, TTL: it.TTL, Hold: it.Hold, Cause: it.Cause}
	if cidr != "" {
		e.CIDRs = []string{cidr}
	}
	if it.Until != 0 {
		e.Until = time.Unix(it.Until, 0).UTC()
	}
	return e
}

// History returns the events since since, oldest first: of every CIDR that overlaps p (an
// address: the bans that covered it, exact or as a prefix), or of everything when p is invalid.
// A ban whose TTL passed with no later event of its CIDR gets a derived expire event.
func (c *Controller) History(ctx context.Context, p netip.Prefix, since time.Time) ([]Event, error) {
	now := c.Now().UTC()
	var events []Event
	var mu sync.Mutex
	var g errgroup.Group
	g.SetLimit(16)
	if p.IsValid() {
		for _, pk := range historyBuckets(p) {
			g.Go(func() error {
				raws, err := c.Ledger.query(ctx, pk, "")
				if err != nil {
					return err
				}
				var items []histItem
				if err := attributevalue.UnmarshalListOfMaps(raws, &items); err != nil {
					return err
				}
				mu.Lock()
				defer mu.Unlock()
				for _, it := range items {
					cidr, rest, _ := strings.Cut(it.SK, "#")
					if rest == "off" {
						continue // the CIDR's offence item, not an event
					}
					cp, err := proto.ParseCIDR(cidr)
					if err != nil || !cp.Overlaps(p) {
						continue
					}
					events = append(events, it.event(cp.String()))
				}
				return nil
			})
		}
	} else {
		oldest := now.Add(-c.HistoryRetention)
		from := since.UTC() // day partitions are named by the UTC date
		if from.Before(oldest) {
			from = oldest
		}
		for d := from.Truncate(24 * time.Hour); !d.After(now); d = d.Add(24 * time.Hour) {
			pk := "hday#" + d.Format("2006-01-02")
			g.Go(func() error {
				items, err := queryItems[histItem](ctx, c.Ledger, pk)
				if err != nil {
					return err
				}
				mu.Lock()
				defer mu.Unlock()
				for _, it := range items {
					events = append(events, it.event(""))
				}
				return nil
			})
		}
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("read history: %w", err)
	}
	events = withExpiries(events, now)
	out := events[:0]
	for _, e := range events {
		if !e.Time.Before(since) {
			out = append(out, e)
		}
	}
	sortEvents(out)
	return out, nil
}

// sortEvents orders events by time, then id (ULIDs: in the order they were made).
func sortEvents(events []Event) {
	sort.SliceStable(events, func(i, j int) bool {
		if !events[i].Time.Equal(events[j].Time) {
			return events[i].Time.Before(events[j].Time)
		}
		return events[i].ID < events[j].ID
	})
}

// withExpiries adds an expire event for every ban whose expiry has passed and that no later
// event of the same CIDR (a ban that extended it, an unban, an allow) changed before it expired.
func withExpiries(events []Event, now time.Time) []Event {
	sortEvents(events)
	last := map[string][]int{} // CIDR -> indexes of its events
	for i, e := range events {
		if len(e.CIDRs) > 50 {
			continue
		}
		for _, c := range e.CIDRs {
			last[c] = append(last[c], i)
		}
	}
	var add []Event
	for i, e := range events {
		if e.Kind != EventBan || e.Until.IsZero() || e.Until.After(now) {
			continue
		}
		for _, c := range e.CIDRs {
			changed := false
			for _, j := range last[c] {
				if j > i && events[j].Time.Before(e.Until) && events[j].Kind != EventSimulate {
					changed = true
				}
			}
			if !changed {
				add = append(add, Event{Time: e.Until, ID: e.ID, Kind: EventExpire, CIDRs: []string{c}, Target: e.Target, Who: "ttl",
					Reason: fmt.Sprintf("the ban of revision %d expired", e.Rev), Rev: e.Rev})
			}
		}
	}
	return append(events, add...)
}

// Repeat lengthens the bans of repeat offenders: the n-th trigger ban of a CIDR within Forget
// lasts base × Factor^(n-1), at most Max (and never less than base).
type Repeat struct {
	Factor float64       // default 2; 1 turns it off
	Max    time.Duration // default 7 days
	Forget time.Duration // default 30 days
}

func (r Repeat) withDefaults() Repeat {
	if r.Factor == 0 {
		r.Factor = 2
	}
	if r.Max == 0 {
		r.Max = 7 * 24 * time.Hour
	}
	if r.Forget == 0 {
		r.Forget = 30 * 24 * time.Hour
	}
	return r
}

// TTL is the n-th offence's ban (n counts from 1).
func (r Repeat) TTL(base time.Duration, n int) time.Duration {
	if n <= 1 || r.Factor <= 1 || base <= 0 {
		return base
	}
	f := float64(base) * math.Pow(r.Factor, float64(n-1))
	if f >= float64(r.Max) || math.IsInf(f, 0) {
		return max(r.Max, base)
	}
	return time.Duration(f)
}

// offenceKey is the key of a CIDR's offence item, beside its events in its history bucket:
// `times`, a number set of the unix nanoseconds of its trigger bans, and expires_at (TTL) Repeat.Forget
// after the last, when the count starts again anyway.
func offenceKey(p netip.Prefix) map[string]ddbtypes.AttributeValue {
	return map[string]ddbtypes.AttributeValue{"pk": s(historyBucket(p)), "sk": s(p.String() + "#off")}
}

// Offences counts each prefix's trigger bans since since, from the offence items of their
// history: one BatchGetItem per 100 prefixes, not a Query each (a Lambda batch bans hundreds).
func (c *Controller) Offences(ctx context.Context, prefixes []netip.Prefix, since time.Time) (map[netip.Prefix]int, error) {
	out := make(map[netip.Prefix]int, len(prefixes))
	seen := map[netip.Prefix]bool{}
	var keys []map[string]ddbtypes.AttributeValue
	for _, p := range prefixes {
		if !seen[p] {
			seen[p] = true
			keys = append(keys, offenceKey(p))
		}
	}
	for i := 0; i < len(keys); i += 100 {
		items, err := c.Ledger.batchGet(ctx, keys[i:min(i+100, len(keys))], "")
		if err != nil {
			return nil, fmt.Errorf("count offences: %w", err)
		}
		for _, it := range items {
			var o struct {
				SK    string  `dynamodbav:"sk"`
				Times []int64 `dynamodbav:"times,numberset"`
			}
			if err := attributevalue.UnmarshalMap(it, &o); err != nil {
				return nil, err
			}
			cidr, _, _ := strings.Cut(o.SK, "#")
			p, err := proto.ParseCIDR(cidr)
			if err != nil {
				continue
			}
			for _, t := range o.Times {
				if t >= since.UnixNano() {
					out[p]++
				}
			}
		}
	}
	return out, nil
}

// recordOffences adds a trigger ban's time to each of its CIDRs' offence items.
func (c *Controller) recordOffences(ctx context.Context, events []Event) error {
	var g errgroup.Group
	g.SetLimit(8)
	for _, e := range events {
		if e.Kind != EventBan || e.Trigger == "" {
			continue
		}
		for _, cidr := range e.CIDRs {
			p, err := proto.ParseCIDR(cidr)
			if err != nil {
				continue
			}
			g.Go(func() error {
				_, err := c.Ledger.DDB.UpdateItem(ctx, &dynamodb.UpdateItemInput{TableName: aws.String(c.Table), Key: offenceKey(p),
					UpdateExpression: aws.String("ADD times :t SET expires_at = :exp"),
					ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{
						// Nanoseconds: two offences in one second are two members of the set.
						":t":   &ddbtypes.AttributeValueMemberNS{Value: []string{strconv.FormatInt(e.Time.UnixNano(), 10)}},
						":exp": n(e.Time.Add(c.Repeat.Forget).Unix())}})
				if err != nil {
					return fmt.Errorf("record offence of %s: %w", p, err)
				}
				return nil
			})
		}
	}
	return g.Wait()
}

// repeatTTLs is the TTL of each prefix's ban: req.TTL, lengthened for a trigger's repeat
// offenders. A history that cannot be read leaves the base TTL (and says so in the log).
func (c *Controller) repeatTTLs(ctx context.Context, req BanRequest, prefixes []netip.Prefix) []time.Duration {
	out := make([]time.Duration, len(prefixes))
	for i := range out {
		out[i] = req.TTL
	}
	if req.Trigger == "" || req.TTL == 0 || c.Repeat.Factor <= 1 {
		return out
	}
	counts, err := c.Offences(ctx, prefixes, c.Now().Add(-c.Repeat.Forget))
	if err != nil {
		c.Log.Warn("repeat offences not counted; the base TTL applies", "cidrs", len(prefixes), "err", err)
		return out
	}
	for i, p := range prefixes {
		out[i] = c.Repeat.TTL(req.TTL, counts[p]+1)
	}
	return out
}

// simulate records what a simulate-mode trigger would have banned, and bans nothing.
func (c *Controller) simulate(ctx context.Context, req BanRequest, sel *Selector, prefixes []netip.Prefix) (*Result, error) {
	res := &Result{Selector: sel.String()}
	ttls := c.repeatTTLs(ctx, req, prefixes)
	now := c.Now().UTC()
	events := make([]Event, len(prefixes))
	for i, p := range prefixes {
		res.Simulated = append(res.Simulated, p.String())
		ev := Event{Kind: EventSimulate, CIDRs: []string{p.String()}, Target: sel.String(), Who: req.Who, Reason: req.Reason, Source: req.Source,
			TTL: ttls[i].String(), Cause: req.causeOf(req.CIDRs, i, prefixes)}
		if ttls[i] > 0 {
			ev.Until = now.Add(ttls[i])
		}
		events[i] = ev
	}
	c.simulated.Add(int64(len(prefixes)))
	c.Log.Info("simulate: would ban", "cidrs", len(prefixes), "target", sel.String(), "source", req.Source)
	return res, c.record(ctx, events...)
}

// ParseRepeat reads "factor=2,max=7d,forget=30d" (any part may be left out: its default). A
// duration is Go's ("36h") or whole days ("7d").
func ParseRepeat(spec string) (Repeat, error) {
	var r Repeat
	for _, part := range strings.Split(spec, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return r, fmt.Errorf("repeat %q: want factor=F,max=D,forget=D", spec)
		}
		var err error
		switch k {
		case "factor":
			r.Factor, err = strconv.ParseFloat(v, 64)
			if err == nil && (r.Factor < 1 || r.Factor > 100) {
				err = fmt.Errorf("not between 1 and 100")
			}
		case "max":
			r.Max, err = ParseDays(v)
		case "forget":
			r.Forget, err = ParseDays(v)
		default:
			err = fmt.Errorf("unknown setting")
		}
		if err != nil {
			return r, fmt.Errorf("repeat %s: %w", part, err)
		}
	}
	return r.withDefaults(), nil
}

// ParseDays reads a Go duration or a whole number of days ("7d"); it must be positive.
func ParseDays(s string) (time.Duration, error) {
	var d time.Duration
	var err error
	if n, ok := strings.CutSuffix(s, "d"); ok {
		var days int
		days, err = strconv.Atoi(n)
		d = time.Duration(days) * 24 * time.Hour
	} else {
		d, err = time.ParseDuration(s)
	}
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q: want a positive duration (36h) or days (7d)", s)
	}
	return d, nil
}
