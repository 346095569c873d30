package controller

// Blocklist feeds: lists an operator trusts (Spamhaus DROP, FireHOL level 1, a threat-intelligence
// export) banned on every instance of a selector and refreshed on a schedule.
//
// A feed is one head item (pk "feed", sk NAME) and its last good version, stored compressed in
// chunks (pk "feedv#NAME", sk "<version>#<chunk>"): a million entries are a few dozen items, not a
// million ban items for every reconcile pass to read. The reconciler merges the entries of the
// feeds an instance's tags select into its desired state; a refresh sends agents the difference
// from the last version (one ban and one unban message) or, when the difference is large or the
// entries' expiry moved, a full sync.
//
// What a feed can do is bounded like any other ban: the never-ban addresses, the hard prefix
// limits and the admin allowlist drop entries (reported); an entry that covers a VPC CIDR holds
// the whole version (a list that bans your own network is a wrong list), as does a version that
// shrank by more than half (a truncated or emptied download). A failed fetch keeps the last good
// version until its entries' expiry (the feed's TTL after its last good fetch).

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
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

// Feed defaults.
const (
	DefaultFeedRefresh  = time.Hour
	DefaultFeedTTL      = 48 * time.Hour
	DefaultFeedMaxBytes = 32 << 20
	DefaultFeedTimeout  = time.Minute
	// FeedDiffMax is the largest difference sent as ban and unban messages; a larger one (a new
	// feed, a list that turned over) goes out as full syncs, compressed.
	FeedDiffMax = 2000
	// feedChunkBytes bounds one stored chunk (DynamoDB items are limited to 400 KB).
	feedChunkBytes = 300 << 10
)

// DefaultFeedMaxCoverage is what one feed may cover by default: 2^24 IPv4 addresses (a /8's
// worth) and as many IPv6 /64s (a /40's worth). The review found a list of every public /16 (86 %
// of IPv4) kept whole, since entries were screened one by one.
const DefaultFeedMaxCoverage = 1 << 24

// DefaultInstanceMaxCoverage is what the bans and feeds an instance holds may cover together by
// default: 2^26 IPv4 addresses (four /8s) and as many IPv6 /64s.
const DefaultInstanceMaxCoverage = 1 << 26

// feedGrowthFloor: a version covering no more than this is not held for growing (a list of ten
// addresses that becomes fifty is no event).
const feedGrowthFloor = 1 << 16

// FeedMaxEntries is the most entries a version may have: agents' ban sets hold 1 048 576, and
// operators' bans and other feeds need room too. A larger version is held. (A variable for tests.)
var FeedMaxEntries = 1000000

var feedNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,39}$`)

// FeedItem is a feed's head in the ledger.
type FeedItem struct {
	PK       string `dynamodbav:"pk"`
	SK       string `dynamodbav:"sk"` // the feed's name
	URL      string `dynamodbav:"url"`
	Target   string `dynamodbav:"target"`
	Format   string `dynamodbav:"format"`
	Refresh  int64  `dynamodbav:"refresh_s"`
	TTL      int64  `dynamodbav:"ttl_s"`
	MaxBytes int64  `dynamodbav:"max_bytes"`
	// DropVPCOverlap drops entries that cover a VPC CIDR instead of holding the version (FireHOL
	// level 1 lists the private ranges on purpose).
	DropVPCOverlap bool `dynamodbav:"drop_vpc_overlap,omitempty"`
	// Force accepts entries broader than the soft limits (/16, /48), as `ban --force` does; without
	// it they are dropped and reported, so that a compromised list cannot ban a /9 fleet-wide.
	Force bool `dynamodbav:"force,omitempty"`
	// Mode: "" or FeedSimulate (see FeedSpec).
	Mode string `dynamodbav:"mode,omitempty"`

	ETag         string `dynamodbav:"etag,omitempty"`
	LastModified string `dynamodbav:"last_modified,omitempty"`
	Version      int64  `dynamodbav:"version"` // revision of the applied version; 0: none yet
	Chunks       int    `dynamodbav:"chunks"`
	Entries      int    `dynamodbav:"entries"`
	GoodUntil    int64  `dynamodbav:"good_until"` // the entries' expiry (epoch seconds)

	Checked  time.Time `dynamodbav:"checked,omitempty"` // last fetch attempt
	OK       time.Time `dynamodbav:"ok,omitempty"`      // last good fetch (200 applied or 304)
	Error    string    `dynamodbav:"error,omitempty"`   // last failure; empty after a good fetch
	Failures int       `dynamodbav:"failures,omitempty"`
	Held     string    `dynamodbav:"held,omitempty"` // why the last fetched version was not applied
	// Cover4 and Cover6: the applied version's coverage (IPv4 addresses, IPv6 /64s).
	Cover4 uint64 `dynamodbav:"cover4,omitempty"`
	Cover6 uint64 `dynamodbav:"cover6,omitempty"`
	// MaxCover4 and MaxCover6: the most a version may cover (0: DefaultFeedMaxCoverage).
	MaxCover4 uint64 `dynamodbav:"max_cover4,omitempty"`
	MaxCover6 uint64 `dynamodbav:"max_cover6,omitempty"`
	Report    string `dynamodbav:"report,omitempty"`

	Rev       int64     `dynamodbav:"rev"` // last change agents must see (a version, a removal)
	Deleted   bool      `dynamodbav:"deleted"`
	ExpiresAt int64     `dynamodbav:"expires_at,omitempty"` // a removed feed's tombstone
	Updated   time.Time `dynamodbav:"updated"`
}

// Active reports whether the feed's entries are in force at now (a simulate-mode feed's are
// not).
func (f FeedItem) Active(now time.Time) bool {
	return f.Current(now) && f.Mode != FeedSimulate
}

// Current reports whether the feed has a version that has not expired at now.
func (f FeedItem) Current(now time.Time) bool {
	return !f.Deleted && f.Version > 0 && f.GoodUntil > now.Unix()
}

// Source is what agents see as the source of the feed's bans.
func (f FeedItem) Source() string { return "feed:" + f.SK }

// Due reports whether the feed should be fetched at now.
func (f FeedItem) Due(now time.Time) bool {
	return !f.Deleted && (f.Checked.IsZero() || !now.Before(f.Checked.Add(time.Duration(f.Refresh)*time.Second)))
}

// feedEntry is one entry of a stored version: the prefix and the revision it was added at.
type feedEntry struct {
	p   netip.Prefix
	rev int64
}

type feedVersion struct {
	version int64
	entries []feedEntry // sorted by prefix
}

// FeedSpec is what `bansshee feed add` asks for.
type FeedSpec struct {
	Name, URL, Target, Format string
	Refresh, TTL              time.Duration
	MaxBytes                  int64
	DropVPCOverlap, Force     bool
	// MaxCoverage4 and MaxCoverage6: the most a version may cover, in IPv4 addresses and IPv6
	// /64s (0: DefaultFeedMaxCoverage).
	MaxCoverage4, MaxCoverage6 uint64
	// Mode is "" (enforce) or FeedSimulate: the feed is fetched and its new entries recorded
	// (history, why, a metric), and nothing is banned.
	Mode string
}

// FeedSimulate is the mode of a feed that bans nothing.
const FeedSimulate = "simulate"

// AddFeed writes (or changes) a feed's settings. It does not fetch it: FeedSync or the schedule do.
func (c *Controller) AddFeed(ctx context.Context, spec FeedSpec) (FeedItem, error) {
	if !feedNameRe.MatchString(spec.Name) {
		return FeedItem{}, fmt.Errorf("%w: feed name %q: 1-40 characters of [a-z0-9_-], starting with a letter or digit", ErrRefused, spec.Name)
	}
	u, err := url.Parse(spec.URL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && !c.FeedAllowHTTP) {
		return FeedItem{}, fmt.Errorf("%w: feed url %q: want an https:// URL", ErrRefused, spec.URL)
	}
	sel, err := ParseSelector(spec.Target)
	if err != nil {
		return FeedItem{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if spec.Format == "" {
		spec.Format = FormatAuto
	}
	if !slices.Contains(FeedFormats, spec.Format) {
		return FeedItem{}, fmt.Errorf("%w: format %q: want one of %s", ErrRefused, spec.Format, strings.Join(FeedFormats, ", "))
	}
	if spec.Refresh == 0 {
		spec.Refresh = DefaultFeedRefresh
	}
	if spec.TTL == 0 {
		spec.TTL = max(DefaultFeedTTL, 3*spec.Refresh)
	}
	if spec.Refresh < time.Minute || spec.TTL < 2*spec.Refresh || spec.TTL > c.Limits.MaxTTL {
		return FeedItem{}, fmt.Errorf("%w: --refresh %s and --ttl %s: want a refresh of at least 1m and a TTL of at least two refreshes and at most %s",
			ErrRefused, spec.Refresh, spec.TTL, c.Limits.MaxTTL)
	}
	if spec.MaxBytes == 0 {
		spec.MaxBytes = DefaultFeedMaxBytes
	}
	if spec.Mode != "" && spec.Mode != FeedSimulate && spec.Mode != "enforce" {
		return FeedItem{}, fmt.Errorf("%w: --mode %q: want enforce or simulate", ErrRefused, spec.Mode)
	}
	if spec.Mode == "enforce" {
		spec.Mode = ""
	}
	if spec.MaxBytes < 0 || spec.MaxBytes > 1<<30 {
		return FeedItem{}, fmt.Errorf("%w: --max-bytes %d: want 1 byte to 1 GiB", ErrRefused, spec.MaxBytes)
	}
	old, found, err := c.Ledger.Feed(ctx, spec.Name)
	if err != nil {
		return FeedItem{}, err
	}
	f := FeedItem{SK: spec.Name}
	if found && !old.Deleted {
		f = old
	}
	f.URL, f.Target, f.Format = spec.URL, sel.String(), spec.Format
	f.Refresh, f.TTL, f.MaxBytes, f.DropVPCOverlap, f.Force = int64(spec.Refresh/time.Second), int64(spec.TTL/time.Second), spec.MaxBytes, spec.DropVPCOverlap, spec.Force
	f.MaxCover4, f.MaxCover6 = spec.MaxCoverage4, spec.MaxCoverage6
	if found && old.Mode != spec.Mode && f.Version > 0 && f.Rev == old.Rev {
		// Entering or leaving simulate mode changes what the target's agents hold.
		if f.Rev, err = c.Ledger.NextRev(ctx); err != nil {
			return FeedItem{}, err
		}
	}
	f.Mode = spec.Mode
	f.Deleted, f.ExpiresAt, f.Checked = false, 0, time.Time{} // due now
	if found && old.Target != f.Target && f.Version > 0 {
		// Instances the old target picked and the new one does not must lose the entries.
		if f.Rev, err = c.Ledger.NextRev(ctx); err != nil {
			return FeedItem{}, err
		}
	}
	if found && old.Deleted {
		f.Rev = old.Rev
	}
	f.Updated = c.Now().UTC()
	if err := c.Ledger.putFeed(ctx, f, old.Version, found); err != nil {
		return FeedItem{}, err
	}
	return f, nil
}

// RemoveFeed removes a feed: its entries leave every instance (by full sync) and its head stays
// as a tombstone for a week so that reconcilers know what changed.
func (c *Controller) RemoveFeed(ctx context.Context, name string) (*Result, error) {
	f, found, err := c.Ledger.Feed(ctx, name)
	if err != nil {
		return nil, err
	}
	if !found || f.Deleted {
		return nil, fmt.Errorf("%w: no feed named %q", ErrRefused, name)
	}
	rev, err := c.Ledger.NextRev(ctx)
	if err != nil {
		return nil, err
	}
	oldVersion := f.Version
	f.Deleted, f.Rev, f.Updated = true, rev, c.Now().UTC()
	f.ExpiresAt = c.Now().Add(7 * 24 * time.Hour).Unix()
	if err := c.Ledger.putFeed(ctx, f, oldVersion, true); err != nil {
		return nil, err
	}
	res := &Result{Rev: rev, Selector: f.Target}
	sel, err := ParseSelector(f.Target)
	if err != nil {
		return res, err
	}
	if err := c.SyncTargets(ctx, sel, res); err != nil {
		return res, err
	}
	c.Ledger.deleteFeedChunks(ctx, name, oldVersion)
	return res, nil
}

// Feeds lists every feed head, removed ones included.
func (l *Ledger) Feeds(ctx context.Context) ([]FeedItem, error) {
	return queryItems[FeedItem](ctx, l, "feed")
}

// Feed reads one feed head.
func (l *Ledger) Feed(ctx context.Context, name string) (FeedItem, bool, error) {
	out, err := l.DDB.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(l.Table), ConsistentRead: aws.Bool(true),
		Key: map[string]ddbtypes.AttributeValue{"pk": s("feed"), "sk": s(name)}})
	if err != nil {
		return FeedItem{}, false, fmt.Errorf("read feed %s: %w", name, err)
	}
	if out.Item == nil {
		return FeedItem{}, false, nil
	}
	var f FeedItem
	err = attributevalue.UnmarshalMap(out.Item, &f)
	return f, err == nil, err
}

// ErrFeedRace: another controller changed the feed between our read and our write.
var ErrFeedRace = errors.New("the feed changed under us (another controller refreshed it); try again")

// putFeed writes a feed head if its stored version is still oldVersion (or, when it did not
// exist, if it still does not).
func (l *Ledger) putFeed(ctx context.Context, f FeedItem, oldVersion int64, existed bool) error {
	f.PK = "feed"
	item, err := attributevalue.MarshalMap(f)
	if err != nil {
		return err
	}
	in := &dynamodb.PutItemInput{TableName: aws.String(l.Table), Item: item}
	if existed {
		in.ConditionExpression = aws.String("version = :v")
		in.ExpressionAttributeValues = map[string]ddbtypes.AttributeValue{":v": n(oldVersion)}
	} else {
		in.ConditionExpression = aws.String("attribute_not_exists(pk)")
	}
	_, err = l.DDB.PutItem(ctx, in)
	if isConditionFailed(err) {
		return ErrFeedRace
	}
	if err != nil {
		return fmt.Errorf("write feed %s: %w", f.SK, err)
	}
	return nil
}

func feedChunkKey(name string, version int64, i int) map[string]ddbtypes.AttributeValue {
	return map[string]ddbtypes.AttributeValue{"pk": s("feedv#" + name), "sk": s(fmt.Sprintf("%020d#%05d", version, i))}
}

// putFeedChunks stores a version's entries, compressed, and returns how many chunks it took.
func (l *Ledger) putFeedChunks(ctx context.Context, name string, version int64, entries []feedEntry) (int, error) {
	chunks, err := encodeFeedChunks(entries, feedChunkBytes)
	if err != nil {
		return 0, err
	}
	for i, z := range chunks {
		item := feedChunkKey(name, version, i)
		item["z"] = &ddbtypes.AttributeValueMemberB{Value: z}
		if _, err := l.DDB.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(l.Table), Item: item}); err != nil {
			return 0, fmt.Errorf("write feed %s chunk %d: %w", name, i, err)
		}
	}
	return len(chunks), nil
}

// feedEntries reads a stored version.
func (l *Ledger) feedEntries(ctx context.Context, f FeedItem) ([]feedEntry, error) {
	if f.Version == 0 || f.Chunks == 0 {
		return nil, nil
	}
	raws, err := l.query(ctx, "feedv#"+f.SK, fmt.Sprintf("%020d#", f.Version))
	if err != nil {
		return nil, err
	}
	if len(raws) != f.Chunks {
		return nil, fmt.Errorf("feed %s version %d: %d of %d chunks found (%w)", f.SK, f.Version, len(raws), f.Chunks, ErrFeedRace)
	}
	entries := make([]feedEntry, 0, f.Entries)
	for _, raw := range raws {
		z, ok := raw["z"].(*ddbtypes.AttributeValueMemberB)
		if !ok {
			return nil, fmt.Errorf("feed %s: chunk without data", f.SK)
		}
		if entries, err = decodeFeedChunk(z.Value, entries); err != nil {
			return nil, fmt.Errorf("feed %s version %d: %w", f.SK, f.Version, err)
		}
	}
	return entries, nil
}

func (l *Ledger) deleteFeedChunks(ctx context.Context, name string, version int64) {
	if version == 0 {
		return
	}
	raws, err := l.query(ctx, "feedv#"+name, fmt.Sprintf("%020d#", version))
	if err != nil {
		return // left behind: they take space, nothing reads them
	}
	for _, raw := range raws {
		_, _ = l.DDB.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: aws.String(l.Table), Key: map[string]ddbtypes.AttributeValue{"pk": raw["pk"], "sk": raw["sk"]}})
	}
}

// encodeFeedChunks writes entries as "cidr rev" lines, gzipped, in chunks of at most max bytes.
func encodeFeedChunks(entries []feedEntry, max int) ([][]byte, error) {
	var out [][]byte
	for per := 50000; len(entries) > 0; {
		n := min(per, len(entries))
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
		line := make([]byte, 0, 64)
		for _, e := range entries[:n] {
			line = e.p.AppendTo(line[:0])
			line = append(line, ' ')
			line = strconv.AppendInt(line, e.rev, 10)
			line = append(line, '\n')
			_, _ = zw.Write(line)
		}
		if err := zw.Close(); err != nil {
			return nil, err
		}
		if buf.Len() > max && n > 1 {
			per = n / 2
			continue
		}
		out = append(out, buf.Bytes())
		entries = entries[n:]
	}
	return out, nil
}

func decodeFeedChunk(z []byte, into []feedEntry) ([]feedEntry, error) {
	zr, err := gzip.NewReader(bytes.NewReader(z))
	if err != nil {
		return into, err
	}
	raw, err := io.ReadAll(io.LimitReader(zr, 256<<20))
	if err != nil {
		return into, err
	}
	for line := range bytes.Lines(raw) {
		cidr, rev, ok := strings.Cut(strings.TrimSpace(string(line)), " ")
		p, err1 := netip.ParsePrefix(cidr)
		r, err2 := strconv.ParseInt(rev, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			return into, fmt.Errorf("bad stored entry %q", line)
		}
		into = append(into, feedEntry{p: p, rev: r})
	}
	return into, nil
}

// loadFeed returns a feed's entries, from the cache when its version is there.
func (c *Controller) loadFeed(ctx context.Context, f FeedItem) ([]feedEntry, error) {
	if v, ok := c.feedCache.Load(f.SK); ok && v.(*feedVersion).version == f.Version {
		return v.(*feedVersion).entries, nil
	}
	entries, err := c.Ledger.feedEntries(ctx, f)
	if err != nil {
		return nil, err
	}
	c.feedCache.Store(f.SK, &feedVersion{version: f.Version, entries: entries})
	return entries, nil
}

// FeedOptions changes one refresh.
type FeedOptions struct {
	Force        bool // fetch even if not due, without If-None-Match / If-Modified-Since
	AcceptShrink bool // apply a version that shrank by more than half
	AcceptGrowth bool // apply a version whose coverage grew more than fourfold
}

// FeedReport says what one refresh of one feed did.
type FeedReport struct {
	Name        string
	Fetched     bool // a body arrived (not a 304, not a failure)
	NotModified bool
	Err         error  // the fetch or parse failed: the last good version stays
	Held        string // the version was not applied, and why
	Version     int64  // the version in force afterwards
	Entries     int
	Added       []netip.Prefix
	Removed     []netip.Prefix
	Invalid     int      // lines that were not addresses
	Dropped     []string // entries the allowlists or the never-ban list forbid, with why
	Delivery    string   // "diff", "sync" or "" (nothing to send)
	Result      *Result
}

// String is one line for logs and the CLI.
func (r FeedReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "feed %s:", r.Name)
	switch {
	case r.Err != nil:
		fmt.Fprintf(&b, " FAILED (%v); version %d (%d entries) stays", r.Err, r.Version, r.Entries)
	case r.Held != "":
		fmt.Fprintf(&b, " HELD (%s); version %d (%d entries) stays", r.Held, r.Version, r.Entries)
	case r.NotModified:
		fmt.Fprintf(&b, " not modified; version %d (%d entries)", r.Version, r.Entries)
	default:
		fmt.Fprintf(&b, " version %d, %d entries, +%d -%d", r.Version, r.Entries, len(r.Added), len(r.Removed))
		if r.Delivery != "" {
			fmt.Fprintf(&b, " (sent as %s)", r.Delivery)
		}
	}
	if r.Invalid > 0 {
		fmt.Fprintf(&b, "; %d lines not addresses", r.Invalid)
	}
	if len(r.Dropped) > 0 {
		fmt.Fprintf(&b, "; %d entries dropped (first: %s)", len(r.Dropped), r.Dropped[0])
	}
	return b.String()
}

// RefreshFeeds refreshes every feed that is due (all of them with opts.Force), four at a time.
func (c *Controller) RefreshFeeds(ctx context.Context, opts FeedOptions) ([]FeedReport, error) {
	feeds, err := c.Ledger.Feeds(ctx)
	if err != nil {
		return nil, err
	}
	now := c.Now()
	var due []FeedItem
	for _, f := range feeds {
		if !f.Deleted && (opts.Force || f.Due(now)) {
			due = append(due, f)
		}
	}
	out := make([]FeedReport, len(due))
	var g errgroup.Group
	g.SetLimit(4)
	for i, f := range due {
		g.Go(func() error {
			r, err := c.refreshFeed(ctx, f, opts)
			if err != nil {
				r.Err = err
			}
			out[i] = r
			return nil
		})
	}
	_ = g.Wait()
	for _, r := range out {
		if r.Err != nil || r.Held != "" {
			c.Log.Warn("feed", "report", r.String())
		} else {
			c.Log.Info("feed", "report", r.String())
		}
	}
	return out, nil
}

// SyncFeed refreshes one feed now (`bansshee feed sync NAME`).
func (c *Controller) SyncFeed(ctx context.Context, name string, opts FeedOptions) (FeedReport, error) {
	f, found, err := c.Ledger.Feed(ctx, name)
	if err != nil {
		return FeedReport{Name: name}, err
	}
	if !found || f.Deleted {
		return FeedReport{Name: name}, fmt.Errorf("%w: no feed named %q", ErrRefused, name)
	}
	return c.refreshFeed(ctx, f, opts)
}

// feedFetch is one HTTP fetch, its body parsed as it arrived.
type feedFetch struct {
	parsed             ParsedFeed
	notModified        bool
	etag, lastModified string
}

// capReader fails a read past max bytes.
type capReader struct {
	r   io.Reader
	n   int64
	max int64
}

var errOverCap = errors.New("over the cap")

func (c *capReader) Read(p []byte) (int, error) {
	if c.n > c.max {
		return 0, errOverCap
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.n > c.max {
		return n, errOverCap
	}
	return n, err
}

func (c *Controller) fetchFeed(ctx context.Context, f FeedItem, conditional bool) (feedFetch, error) {
	client := &http.Client{Timeout: DefaultFeedTimeout}
	if c.FeedClient != nil {
		copied := *c.FeedClient
		client = &copied
	}
	// A redirect may not leave HTTPS: a list fetched over TLS must not come from plain HTTP.
	client.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= 5 {
			return errors.New("more than 5 redirects")
		}
		if req.URL.Scheme != "https" && !c.FeedAllowHTTP {
			return fmt.Errorf("redirected to %s: not https", req.URL.Redacted())
		}
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.URL, nil)
	if err != nil {
		return feedFetch{}, err
	}
	req.Header.Set("User-Agent", "bansshee-feed/1")
	if conditional && f.Version > 0 {
		if f.ETag != "" {
			req.Header.Set("If-None-Match", f.ETag)
		}
		if f.LastModified != "" {
			req.Header.Set("If-Modified-Since", f.LastModified)
		}
	}
	resp, err := client.Do(req)
	if err != nil {
		return feedFetch{}, fmt.Errorf("fetch: %w", err)
	}
	defer resp.Body.Close()
	out := feedFetch{etag: resp.Header.Get("ETag"), lastModified: resp.Header.Get("Last-Modified")}
	switch {
	case resp.StatusCode == http.StatusNotModified:
		out.notModified = true
		return out, nil
	case resp.StatusCode != http.StatusOK:
		return out, fmt.Errorf("fetch: HTTP %s", resp.Status)
	case resp.ContentLength > f.MaxBytes:
		return out, fmt.Errorf("fetch: the body is %d bytes, over the feed's cap of %d (--max-bytes)", resp.ContentLength, f.MaxBytes)
	}
	// Parsed as it arrives: what is kept is the entries, at most FeedMaxEntries of them.
	cr := &capReader{r: resp.Body, max: f.MaxBytes}
	out.parsed, err = ParseFeedStream(cr, f.Format, FeedMaxEntries)
	switch {
	case errors.Is(err, errOverCap):
		return out, fmt.Errorf("fetch: the body is over the feed's cap of %d bytes (--max-bytes)", f.MaxBytes)
	case errors.Is(err, ErrFeedTooLarge):
		return out, err
	case err != nil && strings.HasPrefix(err.Error(), "read:"):
		return out, fmt.Errorf("fetch: body cut short after %d bytes: %w", cr.n, err)
	}
	return out, err
}

// refreshFeed fetches one feed and applies what it may.
func (c *Controller) refreshFeed(ctx context.Context, f FeedItem, opts FeedOptions) (FeedReport, error) {
	now := c.Now().UTC()
	rep := FeedReport{Name: f.SK, Version: f.Version, Entries: f.Entries}
	fail := func(err error) (FeedReport, error) {
		rep.Err = err
		f.Checked, f.Error, f.Failures, f.Updated = now, err.Error(), f.Failures+1, now
		if werr := c.Ledger.putFeed(ctx, f, f.Version, true); werr != nil {
			return rep, werr
		}
		if f.Version == 0 {
			c.Log.Warn("feed fetch failed; it has no version yet", "feed", f.SK, "err", err, "failures", f.Failures)
		} else {
			c.Log.Warn("feed fetch failed; the last good version stays", "feed", f.SK, "err", err, "failures", f.Failures,
				"version", f.Version, "good_until", time.Unix(f.GoodUntil, 0).UTC())
		}
		return rep, nil
	}
	// Checked is written before the fetch: a refresh that kills the process (a huge body, a
	// timeout of the whole invocation) leaves the feed not due until its next refresh.
	f.Checked, f.Updated = now, now
	if err := c.Ledger.putFeed(ctx, f, f.Version, true); err != nil {
		return rep, err
	}
	ft, err := c.fetchFeed(ctx, f, !opts.Force)
	if errors.Is(err, ErrFeedTooLarge) {
		rep.Fetched, rep.Held = true, fmt.Sprintf("%v; agents' sets hold 1 048 576 in all", err)
		f.Held, f.Error = rep.Held, ""
		c.Log.Warn("feed version held", "feed", f.SK, "why", rep.Held)
		return rep, c.Ledger.putFeed(ctx, f, f.Version, true)
	}
	if err != nil {
		return fail(err)
	}
	old, err := c.loadFeed(ctx, f)
	if err != nil {
		return rep, err
	}
	// The entries' expiry moves forward once it is less than half the TTL away; every agent then
	// needs the new expiry, which a full sync carries.
	renew := f.GoodUntil-now.Unix() < f.TTL/2
	if ft.notModified {
		rep.NotModified = true
		f.Checked, f.OK, f.Error, f.Failures, f.Updated = now, now, "", 0, now
		if renew && f.Version > 0 {
			return c.commitFeed(ctx, f, old, old, now, &rep)
		}
		return rep, c.Ledger.putFeed(ctx, f, f.Version, true)
	}
	rep.Fetched = true
	parsed := ft.parsed
	rep.Invalid = parsed.Invalid
	kept, held, err := c.screenFeed(ctx, f, parsed.Prefixes, &rep)
	if err != nil {
		return rep, err
	}
	if held == "" && len(kept) > FeedMaxEntries {
		held = fmt.Sprintf("the list has %d entries, more than the %d a feed may have (agents' sets hold 1 048 576 in all)", len(kept), FeedMaxEntries)
	}
	if held == "" && f.Entries > 0 && len(kept) < f.Entries/2 && !opts.AcceptShrink {
		held = fmt.Sprintf("the list shrank from %d to %d entries, by more than half (a truncated or emptied download?); apply it with 'bansshee feed sync %s --accept-shrink'",
			f.Entries, len(kept), f.SK)
	}
	cover := CoverageOf(kept)
	if held == "" {
		held, err = c.checkReach(ctx, f, old, cover, opts)
		if err != nil {
			return rep, err
		}
	}
	f.Checked, f.Updated = now, now
	f.Report = feedReportText(parsed, rep.Dropped)
	if held != "" {
		rep.Held = held
		// The validators are not kept: the next fetch gets the whole body again and judges it anew.
		f.Held, f.Error = held, ""
		c.Log.Warn("feed version held", "feed", f.SK, "why", held)
		return rep, c.Ledger.putFeed(ctx, f, f.Version, true)
	}
	f.Held, f.Error, f.Failures, f.OK, f.ETag, f.LastModified = "", "", 0, now, ft.etag, ft.lastModified
	// The difference from the last version; kept entries keep the revision they were added at.
	next := make([]feedEntry, len(kept))
	for i, p := range kept {
		next[i] = feedEntry{p: p}
	}
	i := 0
	for j := range next {
		for i < len(old) && comparePrefix(old[i].p, next[j].p) < 0 {
			rep.Removed = append(rep.Removed, old[i].p)
			i++
		}
		if i < len(old) && old[i].p == next[j].p {
			next[j].rev = old[i].rev
			i++
		} else {
			rep.Added = append(rep.Added, next[j].p)
		}
	}
	for ; i < len(old); i++ {
		rep.Removed = append(rep.Removed, old[i].p)
	}
	if len(rep.Added) == 0 && len(rep.Removed) == 0 && !(renew && f.Version > 0) {
		return rep, c.Ledger.putFeed(ctx, f, f.Version, true)
	}
	return c.commitFeed(ctx, f, old, next, now, &rep)
}

// commitFeed stores next as the feed's new version (when the entries changed), moves the
// entries' expiry forward when it is due, and tells the agents.
func (c *Controller) commitFeed(ctx context.Context, f FeedItem, old, next []feedEntry, now time.Time, rep *FeedReport) (FeedReport, error) {
	rev, err := c.Ledger.NextRev(ctx)
	if err != nil {
		return *rep, err
	}
	changed := len(rep.Added)+len(rep.Removed) > 0
	oldVersion, oldGood := f.Version, f.GoodUntil
	if changed {
		for i := range next {
			if next[i].rev == 0 {
				next[i].rev = rev
			}
		}
		chunks, err := c.Ledger.putFeedChunks(ctx, f.SK, rev, next)
		if err != nil {
			return *rep, err
		}
		f.Version, f.Chunks, f.Entries = rev, chunks, len(next)
		var cover Coverage
		for _, e := range next {
			cover = cover.Add(e.p)
		}
		f.Cover4, f.Cover6 = cover.V4, cover.V6
	}
	if f.GoodUntil-now.Unix() < f.TTL/2 {
		f.GoodUntil = now.Unix() + f.TTL
	}
	f.Rev = rev
	if err := c.Ledger.putFeed(ctx, f, oldVersion, true); err != nil {
		if changed {
			c.Ledger.deleteFeedChunks(ctx, f.SK, rev)
		}
		return *rep, err
	}
	if changed {
		c.feedCache.Store(f.SK, &feedVersion{version: rev, entries: next})
		c.Ledger.deleteFeedChunks(ctx, f.SK, oldVersion)
	}
	rep.Version, rep.Entries = f.Version, f.Entries
	c.Log.Info("feed version", "feed", f.SK, "rev", rev, "version", f.Version, "entries", f.Entries, "added", len(rep.Added), "removed", len(rep.Removed),
		"good_until", time.Unix(f.GoodUntil, 0).UTC())
	sel, err := ParseSelector(f.Target)
	if err != nil {
		return *rep, err
	}
	rep.Result = &Result{Rev: rev, Selector: sel.String()}
	if f.Mode == FeedSimulate {
		return *rep, c.simulateFeed(ctx, f, rep.Added)
	}
	wait := c.recordAsync(ctx, feedEvents(f, rev, rep)...)
	defer wait()
	if f.GoodUntil != oldGood || len(rep.Added)+len(rep.Removed) > FeedDiffMax {
		rep.Delivery = "sync"
		return *rep, c.SyncTargets(ctx, sel, rep.Result)
	}
	rep.Delivery = "diff"
	return *rep, c.sendFeedDiff(ctx, f, sel, rev, rep)
}

// sendFeedDiff sends the removed entries as one unban message and then the added ones as one ban
// message. A removed entry that another ban or feed still holds is not unbanned (the unban would
// remove that one too: agents hold one entry per prefix); the reconciler settles such overlaps.
// When both go out, the ban message takes a revision of its own, after the unban's: an agent that
// reports it (Result.Rev) has applied both, FIFO being in order.
func (c *Controller) sendFeedDiff(ctx context.Context, f FeedItem, sel *Selector, rev int64, rep *FeedReport) error {
	exp := time.Unix(f.GoodUntil, 0).UTC()
	disc := c.startDiscover(ctx)
	var tombs []proto.Tombstone
	if len(rep.Removed) > 0 {
		view, err := c.readLedger(ctx)
		if err != nil {
			return err
		}
		held := view.heldElsewhere(f.SK, c.Now())
		for _, p := range rep.Removed {
			if !held[p] {
				tombs = append(tombs, proto.Tombstone{ID: proto.BanID(p), Rev: rev, ExpiresAt: exp})
			}
		}
	}
	if len(tombs) > 0 {
		if err := c.fanoutTo(ctx, disc, []*Selector{sel}, &proto.Message{Kind: proto.KindUnban, Rev: rev, Unbans: tombs}, rep.Result); err != nil {
			return err
		}
	}
	if len(rep.Added) == 0 {
		return nil
	}
	msgRev := rev
	if len(tombs) > 0 {
		var err error
		if msgRev, err = c.Ledger.NextRev(ctx); err != nil {
			return err
		}
	}
	bans := make([]proto.Ban, len(rep.Added))
	for i, p := range rep.Added {
		bans[i] = proto.Ban{ID: proto.BanID(p), CIDR: p.String(), ExpiresAt: exp, Source: f.Source(), Reason: "feed " + f.SK, Rev: rev}
	}
	res := &Result{}
	if err := c.fanoutTo(ctx, disc, []*Selector{sel}, &proto.Message{Kind: proto.KindBan, Rev: msgRev, Bans: bans}, res); err != nil {
		return err
	}
	rep.Result.Rev, rep.Result.Instances = msgRev, res.Instances
	return nil
}

// checkReach holds a version that covers more than the feed's cap, whose coverage grew more than
// fourfold (the mirror of the shrink guard), or that would take the feeds and bans together past
// what one instance may hold. That last sum is over every feed and ban whatever their targets: an
// upper bound of what any one instance holds.
func (c *Controller) checkReach(ctx context.Context, f FeedItem, old []feedEntry, cover Coverage, opts FeedOptions) (string, error) {
	cap4, cap6 := cmp.Or(f.MaxCover4, DefaultFeedMaxCoverage), cmp.Or(f.MaxCover6, DefaultFeedMaxCoverage)
	if cover.V4 > cap4 {
		return fmt.Sprintf("the list covers %d IPv4 addresses, more than the feed's cap of %d (feed add --max-addresses)", cover.V4, cap4), nil
	}
	if cover.V6 > cap6 {
		return fmt.Sprintf("the list covers %d IPv6 /64s, more than the feed's cap of %d (feed add --max-v6-64s)", cover.V6, cap6), nil
	}
	var was Coverage
	for _, e := range old {
		was = was.Add(e.p)
	}
	if !opts.AcceptGrowth && f.Version > 0 {
		for _, g := range []struct {
			what     string
			was, now uint64
		}{{"IPv4 addresses", was.V4, cover.V4}, {"IPv6 /64s", was.V6, cover.V6}} {
			if g.now > feedGrowthFloor && g.now > 4*g.was {
				return fmt.Sprintf("the list's coverage grew from %d to %d %s, more than fourfold (a wrong or hijacked list?); apply it with 'bansshee feed sync %s --accept-growth'",
					g.was, g.now, g.what, f.SK), nil
			}
		}
	}
	// Everything else an instance may hold: the other feeds' applied versions and the bans.
	view, err := c.readLedger(ctx)
	if err != nil {
		return "", err
	}
	now := c.Now()
	total := cover
	for _, o := range view.feeds {
		if o.SK != f.SK && o.Active(now) {
			total = total.Plus(Coverage{o.Cover4, o.Cover6})
		}
	}
	for _, b := range view.bans {
		if b.Active(now) {
			if p, err := netip.ParsePrefix(b.CIDR); err == nil {
				total = total.Add(p)
			}
		}
	}
	max4, max6 := cmp.Or(c.MaxInstanceCoverage4, DefaultInstanceMaxCoverage), cmp.Or(c.MaxInstanceCoverage6, DefaultInstanceMaxCoverage)
	if total.V4 > max4 || total.V6 > max6 {
		return fmt.Sprintf("with the other feeds and bans it makes %d IPv4 addresses and %d IPv6 /64s, more than the %d and %d one instance may hold (per instance: --max-instance-addresses)",
			total.V4, total.V6, max4, max6), nil
	}
	return "", nil
}

// screenFeed drops the entries no ban may have (never-ban addresses, hard prefix limits, the admin
// allowlist) and holds the version if an entry covers a VPC CIDR.
func (c *Controller) screenFeed(ctx context.Context, f FeedItem, in []netip.Prefix, rep *FeedReport) (kept []netip.Prefix, held string, err error) {
	var vpcs []netip.Prefix
	if !c.SkipVPCAllow {
		if vpcs, err = c.VPCCIDRs(ctx); err != nil {
			return nil, "", err
		}
	}
	pub, err := c.FleetAddresses(ctx)
	if err != nil {
		return nil, "", err
	}
	allows, holds, err := c.policies(ctx)
	if err != nil {
		return nil, "", err
	}
	kept = in[:0:0]
	var covering []string
entries:
	for _, p := range in {
		if err := c.Limits.CheckPrefix(p); err != nil {
			rep.Dropped = append(rep.Dropped, err.Error())
			continue
		}
		soft := c.SoftMin4
		if p.Addr().Is6() {
			soft = c.SoftMin6
		}
		if !f.Force && p.Bits() < soft {
			rep.Dropped = append(rep.Dropped, fmt.Sprintf("%s is broader than /%d (add the feed with --force to take such entries)", p, soft))
			continue
		}
		for _, a := range c.Admin {
			if p.Overlaps(a) {
				rep.Dropped = append(rep.Dropped, fmt.Sprintf("%s covers allowlisted %s", p, a))
				continue entries
			}
		}
		if a, ok := pub.covered(p); ok {
			rep.Dropped = append(rep.Dropped, fmt.Sprintf("%s covers %s, a public address of the fleet", p, a))
			continue
		}
		if err := policyRefusal(p, allows, holds, false); err != nil {
			rep.Dropped = append(rep.Dropped, err.Error())
			continue
		}
		for _, v := range vpcs {
			if p.Overlaps(v) {
				if f.DropVPCOverlap {
					rep.Dropped = append(rep.Dropped, fmt.Sprintf("%s covers VPC %s", p, v))
					continue entries
				}
				covering = append(covering, fmt.Sprintf("%s covers VPC %s", p, v))
				break
			}
		}
		kept = append(kept, p)
	}
	if len(covering) > 0 {
		held = fmt.Sprintf("%d entries cover a VPC CIDR (first: %s); fix the list, or add the feed with --drop-vpc-overlap to drop such entries", len(covering), covering[0])
	}
	return kept, held, nil
}

func feedReportText(pf ParsedFeed, dropped []string) string {
	var parts []string
	parts = append(parts, fmt.Sprintf("%d entry lines, %d not addresses", pf.Lines, pf.Invalid))
	if len(pf.Examples) > 0 {
		parts = append(parts, "e.g. "+strings.Join(pf.Examples, ", "))
	}
	if len(dropped) > 0 {
		ex := dropped[:min(len(dropped), maxExamples)]
		parts = append(parts, fmt.Sprintf("%d dropped: %s", len(dropped), strings.Join(ex, "; ")))
	}
	return strings.Join(parts, "; ")
}

// SyncTargets sends every instance sel picks a full sync of its desired state now (a new feed, a
// feed's removal or renewal): the reconciler would get there after its lag grace.
func (c *Controller) SyncTargets(ctx context.Context, sel *Selector, res *Result) error {
	all, _, err := c.managedInstances(ctx, mustParse("*"))
	if err != nil {
		return fmt.Errorf("%w: ledger written, but discovery failed (the reconciler will deliver): %w", ErrUndelivered, err)
	}
	view, err := c.readLedger(ctx)
	if err != nil {
		return err
	}
	rev, err := c.Ledger.NextRev(ctx)
	if err != nil {
		return err
	}
	known, err := c.Ledger.Instances(ctx)
	if err != nil {
		return err
	}
	now := c.Now().UTC()
	var targets []Instance
	tags := map[string]map[string]string{}
	for _, in := range all {
		if sel.MatchInstance(in.ID, in.Tags) {
			targets = append(targets, in)
			tags[in.ID] = in.Tags
		}
	}
	ids := make([]string, len(targets))
	for i, in := range targets {
		ids[i] = in.ID
	}
	statuses, err := c.Ledger.Statuses(ctx, ids)
	if err != nil {
		return err
	}
	var memoMu sync.Mutex
	memo := map[string]desired{}
	res.Instances = c.sendAll(ctx, targets, func(ctx context.Context, id, _ string) error {
		key := tagKey(tags[id]) + view.scopedKey(id)
		memoMu.Lock()
		d, ok := memo[key]
		if !ok {
			d = view.forInstance(id, tags[id], now)
			memo[key] = d
		}
		memoMu.Unlock()
		st, reported := statuses[id]
		if err := c.sendSync(ctx, id, rev, d, compressFor(st, reported)); err != nil {
			return err
		}
		rec := known[id]
		if rec.FirstSeen.IsZero() {
			rec.FirstSeen = now
		}
		rec.SK, rec.SyncedRev, rec.SyncedAt, rec.LagSince = id, rev, now, time.Time{}
		return c.Ledger.PutInstance(ctx, rec)
	})
	return nil
}

// feedEvents are a feed version's changes for the history: its first 1 000 added entries as a
// ban, its first 1 000 removed ones as an unban (a list that turned over is not 2 million events).
func feedEvents(f FeedItem, rev int64, rep *FeedReport) []Event {
	var out []Event
	for _, ch := range []struct {
		kind string
		list []netip.Prefix
	}{{EventBan, rep.Added}, {EventUnban, rep.Removed}} {
		if len(ch.list) == 0 {
			continue
		}
		var cidrs []string
		for _, p := range ch.list[:min(len(ch.list), 1000)] {
			cidrs = append(cidrs, p.String())
		}
		// No Trigger (a feed's entry is no offence of a repeat offender) and no Until (the
		// entries' expiry moves with every good fetch: `why` shows the current one).
		out = append(out, Event{Kind: ch.kind, CIDRs: cidrs, Target: f.Target, Who: f.Source(), Source: f.Source(), Rev: rev,
			Reason: fmt.Sprintf("feed %s version %d: %d entries %s", f.SK, f.Version, len(ch.list), map[string]string{EventBan: "added", EventUnban: "removed"}[ch.kind]),
			Cause:  &Cause{Feed: f.SK}})
	}
	return out
}

// simulateFeed records the entries a simulate-mode feed's new version would have banned (the
// first 1 000 of them as events; the metric counts them all).
func (c *Controller) simulateFeed(ctx context.Context, f FeedItem, added []netip.Prefix) error {
	if len(added) == 0 {
		return nil
	}
	c.simulated.Add(int64(len(added)))
	var cidrs []string
	for _, p := range added[:min(len(added), 1000)] {
		cidrs = append(cidrs, p.String())
	}
	c.Log.Info("simulate: feed would ban", "feed", f.SK, "entries", len(added))
	return c.record(ctx, Event{Kind: EventSimulate, CIDRs: cidrs, Target: f.Target, Who: f.Source(), Source: f.Source(),
		Reason: fmt.Sprintf("feed %s (simulate): %d new entries", f.SK, len(added)), Until: time.Unix(f.GoodUntil, 0).UTC(), Cause: &Cause{Feed: f.SK}})
}
