package controller

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/oklog/ulid/v2"
	"golang.org/x/sync/errgroup"
)

// The inventory is the reconciler's last discovery, kept in the ledger: every managed running
// instance with its tags, private address, security groups and queue URL. A ban, an unban, a
// limit, a feed's fan-out, `status` and `why` take their instances from it when it is fresh
// (DefaultInventoryMaxAge), instead of paging DescribeInstances (ten 1 000-instance pages for
// 10 000 instances, each 0.3-1 s against a real region) and, in a new process (the CLI, a cold
// Lambda), one GetQueueUrl per instance before its send. The reconciler itself always discovers
// live: the inventory is what it found, and what it repairs.
//
// A stale inventory misses what changed since the last pass: an instance launched since gets
// its first sync from the next pass (as before, a new instance starts with a full sync), one whose
// tags changed gets its new state from the next pass's digest check, one that is gone keeps its
// queue for QueueGrace, so a send to it still succeeds and is never read. Older than the maximum
// age (the reconciler has stopped), unreadable or incomplete, it is not used: discovery is.
//
// Layout, under pk "inventory": a head (sk "head": generation, parts, count, digest, when) and
// the generation's parts (sk "part#<generation>#<n>": gzipped JSON, invDoc, cut into pieces of
// up to inventoryPartBytes; 10 000 instances that share their tags are about 100 KB). A new generation's parts are written before its head,
// and the parts of other generations are deleted after it; a pass that found the same fleet only
// moves the head's time. A reader takes the head and its parts from one Query and checks the
// digest, so a read that races a write sees the old generation, the new one, or falls back.

// DefaultInventoryMaxAge is how old an inventory may be and still give a fan-out its instances:
// three passes of `serve` (every 30 s), or of the Lambda's schedule (every minute), plus slack.
const DefaultInventoryMaxAge = 3 * time.Minute

const (
	inventoryPK        = "inventory"
	inventoryPartBytes = 300 << 10 // under DynamoDB's 400 KB item limit
)

// invDoc is the inventory's content: instances refer to tag and group sets by index (a fleet's
// instances mostly share a few), and a queue URL that is the common prefix followed by the
// instance's queue name (every one SQS returns, in practice) is not repeated.
type invDoc struct {
	V      int                 `json:"v"`
	Prefix string              `json:"qp,omitempty"`
	Tags   []map[string]string `json:"ts"`
	Groups [][]string          `json:"gs,omitempty"`
	List   []invEntry          `json:"l"`
	// Public is the fleet's public addresses (FleetAddresses: every instance's, managed or not,
	// the Elastic IPs, the NAT gateways'), as the pass read them (at most a minute old then); nil
	// when the pass could not read them.
	Public []string `json:"pub,omitempty"`
}

// invEntry is one instance: Tags and Groups index the document's sets (Groups from 1; 0 is
// none), Queue is given only when it is not Prefix followed by the queue's name.
type invEntry struct {
	ID     string `json:"i"`
	Queue  string `json:"q,omitempty"`
	IP     string `json:"p,omitempty"`
	Tags   int    `json:"t"`
	Groups int    `json:"g,omitempty"`
	Key    uint8  `json:"k,omitempty"` // the key form its agent's status was found under
}

// Inventory is a read inventory: the instances, sorted by id, and when the reconciler found them.
type Inventory struct {
	At        time.Time
	Instances []Instance
	prefix    string            // the queue URLs' common prefix
	queues    map[string]string // queue URLs that are not prefix + queue name
	keyForms  map[string]uint8  // the key form each agent's status was found under
	public    fleetAddrs        // the fleet's public addresses; nil when the pass had none
}

// queueURL is an instance's queue URL as the inventory gives it ("" when it has none).
func (inv *Inventory) queueURL(id, name string) string {
	if u, ok := inv.queues[id]; ok {
		return u
	}
	if inv.prefix == "" {
		return ""
	}
	return inv.prefix + name
}

// encodeInventory is the inventory's parts and the digest of what they hold; name is the queue
// name of an instance.
func encodeInventory(instances []Instance, queues map[string]string, forms map[string]uint8, public fleetAddrs, name func(string) string) ([][]byte, string, error) {
	sorted := instances // Discover's order; a copy only when it is not sorted
	if !sort.SliceIsSorted(sorted, func(i, j int) bool { return sorted[i].ID < sorted[j].ID }) {
		sorted = append([]Instance(nil), instances...)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i].ID < sorted[j].ID })
	}
	// The most common prefix of the queue URLs.
	prefixes := map[string]int{}
	for id, u := range queues {
		if p, ok := strings.CutSuffix(u, name(id)); ok {
			prefixes[p]++
		}
	}
	doc := invDoc{V: 1, Tags: []map[string]string{}, List: make([]invEntry, len(sorted))}
	if public != nil {
		doc.Public = make([]string, len(public))
		for i, a := range public {
			doc.Public[i] = a.String()
		}
	}
	for p, k := range prefixes {
		if k > prefixes[doc.Prefix] || k == prefixes[doc.Prefix] && p < doc.Prefix {
			doc.Prefix = p
		}
	}
	tagIdx, groupIdx := map[string]int{}, map[string]int{}
	for i, in := range sorted {
		e := invEntry{ID: in.ID, IP: in.PrivateIP, Key: forms[in.ID]}
		if u, ok := queues[in.ID]; ok && (doc.Prefix == "" || u != doc.Prefix+name(in.ID)) {
			e.Queue = u
		}
		tk := tagKey(in.Tags)
		k, ok := tagIdx[tk]
		if !ok {
			k = len(doc.Tags)
			tagIdx[tk] = k
			doc.Tags = append(doc.Tags, in.Tags)
		}
		e.Tags = k
		if len(in.Groups) > 0 {
			gk := strings.Join(in.Groups, ",")
			k, ok := groupIdx[gk]
			if !ok {
				doc.Groups = append(doc.Groups, in.Groups)
				k = len(doc.Groups)
				groupIdx[gk] = k
			}
			e.Groups = k
		}
		doc.List[i] = e
	}
	// Encoded straight into the digest and the compressor (30 000 instances are megabytes of
	// JSON a pass that serve would otherwise hold). Map keys are sorted: the same fleet encodes
	// the same.
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	h := sha256.New()
	if err := json.NewEncoder(io.MultiWriter(h, zw)).Encode(doc); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	sum := h.Sum(nil)
	var parts [][]byte
	for b := buf.Bytes(); len(b) > 0; {
		k := min(len(b), inventoryPartBytes)
		parts = append(parts, b[:k])
		b = b[k:]
	}
	return parts, hex.EncodeToString(sum[:]), nil
}

// decodeInventory joins parts, checks them against digest and rebuilds the instances.
func decodeInventory(parts [][]byte, digest string) (*Inventory, error) {
	zr, err := gzip.NewReader(bytes.NewReader(bytes.Join(parts, nil)))
	if err != nil {
		return nil, err
	}
	raw, err := io.ReadAll(io.LimitReader(zr, 1<<30))
	if err != nil {
		return nil, err
	}
	if sum := sha256.Sum256(raw); hex.EncodeToString(sum[:]) != digest {
		return nil, errors.New("digest does not match its head")
	}
	var doc invDoc
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	if doc.V != 1 {
		return nil, fmt.Errorf("version %d", doc.V)
	}
	inv := &Inventory{Instances: make([]Instance, 0, len(doc.List)), prefix: doc.Prefix, queues: map[string]string{}, keyForms: map[string]uint8{}}
	if doc.Public != nil {
		inv.public = make(fleetAddrs, 0, len(doc.Public))
		for _, s := range doc.Public {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("public address %q: %w", s, err)
			}
			inv.public = append(inv.public, a.Unmap())
		}
		slices.SortFunc(inv.public, netip.Addr.Compare)
	}
	for _, e := range doc.List {
		if e.ID == "" || e.Tags < 0 || e.Tags >= len(doc.Tags) || e.Groups < 0 || e.Groups > len(doc.Groups) {
			return nil, fmt.Errorf("entry %q refers to a set it does not have", e.ID)
		}
		in := Instance{ID: e.ID, Tags: doc.Tags[e.Tags], PrivateIP: e.IP}
		if in.Tags == nil {
			in.Tags = map[string]string{}
		}
		if e.Groups > 0 {
			in.Groups = doc.Groups[e.Groups-1]
		}
		inv.Instances = append(inv.Instances, in)
		if e.Queue != "" {
			inv.queues[e.ID] = e.Queue
		}
		if e.Key == keyFormInstance || e.Key == keyFormRole {
			inv.keyForms[e.ID] = e.Key
		}
	}
	return inv, nil
}

func partSK(gen string, i int) string { return fmt.Sprintf("part#%s#%04d", gen, i) }

// WriteInventory records what a reconcile pass discovered (queues: instance id -> queue URL;
// forms: the key form each agent's status was found under). When the fleet is the one last
// written, only the head's time moves.
func (l *Ledger) WriteInventory(ctx context.Context, instances []Instance, queues map[string]string, forms map[string]uint8, public fleetAddrs, name func(string) string, now time.Time) error {
	// What the pass found is compared by a hash of it, without encoding it: a pass that found
	// the same fleet (nearly every pass) allocates nothing much here, which keeps serve's heap,
	// and so its peak memory, what it was.
	fp := inventoryPrint(instances, queues, forms, public)
	at := s(now.UTC().Format(time.RFC3339Nano))
	head := map[string]ddbtypes.AttributeValue{"pk": s(inventoryPK), "sk": s("head")}
	l.invMu.Lock()
	last := l.invWritten
	l.invMu.Unlock()
	if last.fp == "" {
		// A new process: the head in the ledger may already hold this fleet.
		out, err := l.DDB.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(l.Table), Key: head, ConsistentRead: aws.Bool(true)})
		if err != nil {
			return fmt.Errorf("inventory: %w", err)
		}
		if g, ok := out.Item["gen"].(*ddbtypes.AttributeValueMemberS); ok {
			if f, ok := out.Item["fp"].(*ddbtypes.AttributeValueMemberS); ok {
				last = invHead{gen: g.Value, fp: f.Value}
			}
		}
	}
	if last.fp == fp {
		_, err := l.DDB.UpdateItem(ctx, &dynamodb.UpdateItemInput{TableName: aws.String(l.Table), Key: head,
			UpdateExpression: aws.String("SET #at = :at"), ConditionExpression: aws.String("gen = :gen AND fp = :fp"),
			ExpressionAttributeNames:  map[string]string{"#at": "at"},
			ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":at": at, ":gen": s(last.gen), ":fp": s(fp)}})
		if err == nil {
			l.invMu.Lock()
			l.invWritten = last
			l.invMu.Unlock()
			return nil
		}
		if !isConditionFailed(err) {
			return fmt.Errorf("inventory: %w", err)
		}
		// Another writer moved the head: write this generation in full.
	}
	parts, digest, err := encodeInventory(instances, queues, forms, public, name)
	if err != nil {
		return fmt.Errorf("inventory: %w", err)
	}
	gen := ulid.Make().String()
	var g errgroup.Group
	g.SetLimit(8)
	for i, p := range parts {
		g.Go(func() error {
			_, err := l.DDB.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(l.Table), Item: map[string]ddbtypes.AttributeValue{
				"pk": s(inventoryPK), "sk": s(partSK(gen, i)), "data": &ddbtypes.AttributeValueMemberB{Value: p}}})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("inventory: %w", err)
	}
	item := map[string]ddbtypes.AttributeValue{"pk": s(inventoryPK), "sk": s("head"), "gen": s(gen), "parts": n(int64(len(parts))),
		"count": n(int64(len(instances))), "digest": s(digest), "fp": s(fp), "at": at}
	if _, err := l.DDB.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(l.Table), Item: item}); err != nil {
		return fmt.Errorf("inventory: %w", err)
	}
	l.invMu.Lock()
	l.invWritten = invHead{gen: gen, fp: fp}
	l.invMu.Unlock()
	// Every other generation's parts go: the one this replaced, and any a writer that stopped
	// half-way left.
	keys, err := l.queryKeys(ctx, inventoryPK, "part#")
	if err != nil {
		return fmt.Errorf("inventory: old parts: %w", err)
	}
	var del []ddbtypes.WriteRequest
	for _, sk := range keys {
		if !strings.HasPrefix(sk, "part#"+gen+"#") {
			del = append(del, ddbtypes.WriteRequest{DeleteRequest: &ddbtypes.DeleteRequest{Key: map[string]ddbtypes.AttributeValue{"pk": s(inventoryPK), "sk": s(sk)}}})
		}
	}
	for len(del) > 0 {
		k := min(len(del), 25)
		if err := l.writeRequests(ctx, del[:k]); err != nil {
			return fmt.Errorf("inventory: old parts: %w", err)
		}
		del = del[k:]
	}
	return nil
}

// invHead is a head as its writer knows it: its generation and the print of what it holds.
type invHead struct{ gen, fp string }

// inventoryPrint is a hash of what an inventory would hold (FNV-1a, 128 bits): equal prints, the
// same inventory.
func inventoryPrint(instances []Instance, queues map[string]string, forms map[string]uint8, public fleetAddrs) string {
	h := fnv.New128a()
	var buf []byte
	var keys []string
	str := func(s string) { // length-prefixed: no two inventories print the same bytes
		buf = binary.AppendUvarint(buf, uint64(len(s)))
		buf = append(buf, s...)
	}
	for _, in := range instances {
		buf = buf[:0]
		str(in.ID)
		str(in.PrivateIP)
		str(queues[in.ID])
		buf = append(buf, forms[in.ID])
		buf = binary.AppendUvarint(buf, uint64(len(in.Groups)))
		for _, g := range in.Groups {
			str(g)
		}
		keys = keys[:0]
		for k := range in.Tags {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		buf = binary.AppendUvarint(buf, uint64(len(keys)))
		for _, k := range keys {
			str(k)
			str(in.Tags[k])
		}
		h.Write(buf)
	}
	buf = buf[:0]
	if public == nil {
		buf = append(buf, 0)
	} else {
		buf = binary.AppendUvarint(append(buf, 1), uint64(len(public)))
		for _, a := range public {
			b, _ := a.MarshalBinary()
			buf = binary.AppendUvarint(buf, uint64(len(b)))
			buf = append(buf, b...)
		}
	}
	h.Write(buf)
	return hex.EncodeToString(h.Sum(nil))
}

// ReadInventory reads the inventory in one Query. It returns nil (and no error) when there is
// none, or when what was read is incomplete or does not match its digest: a write was under way,
// and the caller discovers instead.
func (l *Ledger) ReadInventory(ctx context.Context) (*Inventory, error) {
	in := &dynamodb.QueryInput{TableName: aws.String(l.Table), KeyConditionExpression: aws.String("pk = :pk"),
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":pk": s(inventoryPK)}}
	var head map[string]ddbtypes.AttributeValue
	partsBySK := map[string][]byte{}
	p := dynamodb.NewQueryPaginator(l.DDB, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("inventory: %w", err)
		}
		for _, it := range page.Items {
			sk, _ := it["sk"].(*ddbtypes.AttributeValueMemberS)
			if sk == nil {
				continue
			}
			if sk.Value == "head" {
				head = it
			} else if d, ok := it["data"].(*ddbtypes.AttributeValueMemberB); ok {
				partsBySK[sk.Value] = d.Value
			}
		}
	}
	if head == nil {
		return nil, nil
	}
	str := func(k string) string {
		if v, ok := head[k].(*ddbtypes.AttributeValueMemberS); ok {
			return v.Value
		}
		return ""
	}
	num := func(k string) int {
		if v, ok := head[k].(*ddbtypes.AttributeValueMemberN); ok {
			i, _ := strconv.Atoi(v.Value)
			return i
		}
		return -1
	}
	at, err := time.Parse(time.RFC3339Nano, str("at"))
	if err != nil {
		return nil, nil
	}
	nparts, gen := num("parts"), str("gen")
	if nparts < 1 || nparts > 4096 || gen == "" {
		return nil, nil
	}
	parts := make([][]byte, nparts)
	for i := range parts {
		if parts[i] = partsBySK[partSK(gen, i)]; parts[i] == nil {
			return nil, nil // the generation is being written or was replaced while this read
		}
	}
	inv, err := decodeInventory(parts, str("digest"))
	if err != nil {
		return nil, nil
	}
	inv.At = at
	return inv, nil
}

// queryKeys is the sort keys of a partition under a prefix, read without the items' data.
func (l *Ledger) queryKeys(ctx context.Context, pk, skPrefix string) ([]string, error) {
	in := &dynamodb.QueryInput{TableName: aws.String(l.Table), ConsistentRead: aws.Bool(true),
		KeyConditionExpression:    aws.String("pk = :pk AND begins_with(sk, :sk)"),
		ProjectionExpression:      aws.String("sk"),
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":pk": s(pk), ":sk": s(skPrefix)}}
	var out []string
	p := dynamodb.NewQueryPaginator(l.DDB, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, it := range page.Items {
			if v, ok := it["sk"].(*ddbtypes.AttributeValueMemberS); ok {
				out = append(out, v.Value)
			}
		}
	}
	return out, nil
}

// writeRequests writes up to 25 requests, retrying what DynamoDB leaves unprocessed (history,
// the inventory's old parts).
func (l *Ledger) writeRequests(ctx context.Context, reqs []ddbtypes.WriteRequest) error {
	req := map[string][]ddbtypes.WriteRequest{l.Table: reqs}
	for attempt := 0; len(req[l.Table]) > 0; attempt++ {
		if attempt > 8 {
			return fmt.Errorf("batch write: %d items still unprocessed after 8 retries", len(req[l.Table]))
		}
		if attempt > 0 {
			select {
			case <-time.After(time.Duration(attempt*attempt) * 20 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		out, err := l.DDB.BatchWriteItem(ctx, &dynamodb.BatchWriteItemInput{RequestItems: req})
		if err != nil {
			return fmt.Errorf("batch write: %w", err)
		}
		req = out.UnprocessedItems
	}
	return nil
}

// inventory is the ledger's inventory when it is fresh enough to stand in for discovery, or nil.
// Its queue URLs seed the URL cache, so that a new process does not ask SQS for each.
func (c *Controller) inventory(ctx context.Context) *Inventory {
	maxAge := c.InventoryMaxAge
	if maxAge < 0 {
		return nil
	}
	if maxAge == 0 {
		maxAge = DefaultInventoryMaxAge
	}
	inv, err := c.Ledger.ReadInventory(ctx)
	if err != nil {
		c.Log.Warn("inventory not read; discovering instances instead", "err", err)
		return nil
	}
	if inv == nil {
		return nil
	}
	if age := c.Now().Sub(inv.At); age > maxAge || age < -maxAge {
		c.Log.Info("inventory too old; discovering instances instead", "age", age.Round(time.Second).String(), "max", maxAge.String())
		return nil
	}
	for _, in := range inv.Instances {
		// A URL is used only for the queue its instance's name gives (a damaged entry cannot send
		// one instance's message to another's queue; the message names its instance anyway).
		name := c.Queues.QueueName(in.ID)
		if u := inv.queueURL(in.ID, name); u != "" && strings.HasSuffix(u, "/"+name) {
			if _, ok := c.urls.Load(in.ID); !ok {
				c.urls.Store(in.ID, u)
			}
		}
	}
	return inv
}

// managedPages calls each with the managed running instances matching sel, from a fresh
// inventory or else from discovery; it returns the inventory used, or nil.
func (c *Controller) managedPages(ctx context.Context, sel *Selector, each func([]Instance)) (*Inventory, error) {
	return c.managedPagesFrom(ctx, sel, func(page []Instance, _ *Inventory) { each(page) })
}

// managedPagesFrom is managedPages telling each the inventory its page came from (nil: discovery).
func (c *Controller) managedPagesFrom(ctx context.Context, sel *Selector, each func([]Instance, *Inventory)) (*Inventory, error) {
	if inv := c.inventory(ctx); inv != nil {
		var page []Instance
		for _, in := range inv.Instances {
			if c.managed.Match(in.Tags) && sel.MatchInstance(in.ID, in.Tags) {
				page = append(page, in)
			}
		}
		if len(page) > 0 {
			each(page, inv)
		}
		return inv, nil
	}
	return nil, c.discoverPages(ctx, sel, func(page []Instance) { each(page, nil) })
}

// managedInstances is managedPages gathered and sorted by id: Discover, from a fresh inventory
// when there is one.
func (c *Controller) managedInstances(ctx context.Context, sel *Selector) ([]Instance, *Inventory, error) {
	var out []Instance
	inv, err := c.managedPages(ctx, sel, func(page []Instance) { out = append(out, page...) })
	if err != nil {
		return nil, nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, inv, nil
}
