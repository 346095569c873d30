package trigger

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// Counter counts a jail's failures per address over a window that starts at the first failure.
type Counter interface {
	Add(ctx context.Context, jail, addr string, n int, window time.Duration, now time.Time) (int, error)
	// Seen records key and reports whether it was already recorded within ttl.
	Seen(ctx context.Context, key string, ttl time.Duration, now time.Time) (bool, error)
	// Conns returns the connections a jail left open in a log stream, by connection key;
	// SaveConns records the ones still open and forgets the closed ones.
	Conns(ctx context.Context, jail, stream string, now time.Time) (map[string]ConnState, error)
	SaveConns(ctx context.Context, jail, stream string, open map[string]ConnState, closed []string, now time.Time) error
	// Witness records that stream reported addr to jail and returns how many distinct streams
	// have within window.
	Witness(ctx context.Context, jail, addr, stream string, window time.Duration, now time.Time) (int, error)
	// SetPending keeps the bans a failed invocation of a recorded batch decided; Pending takes
	// them (once) for the retry.
	SetPending(ctx context.Context, key string, bans []Decision, ttl time.Duration, now time.Time) error
	Pending(ctx context.Context, key string) ([]Decision, error)
	// Take takes one from a budget of limit per window, reporting false when none is left.
	Take(ctx context.Context, key string, limit int, window time.Duration, now time.Time) (bool, error)
}

// MemCounter counts in memory (dry runs, one invocation).
type MemCounter struct {
	mu      sync.Mutex
	m       map[string]memEntry
	seen    map[string]time.Time
	conns   map[string]map[string]memConn
	witness map[string]*memWitness
	budget  map[string]*memBudget
	pending map[string][]Decision
}

// SetPending implements Counter.
func (c *MemCounter) SetPending(_ context.Context, key string, bans []Decision, _ time.Duration, _ time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending == nil {
		c.pending = map[string][]Decision{}
	}
	c.pending[key] = append([]Decision(nil), bans...)
	return nil
}

// Pending implements Counter.
func (c *MemCounter) Pending(_ context.Context, key string) ([]Decision, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.pending[key]
	delete(c.pending, key)
	return p, nil
}

// Seen implements Counter.
func (c *MemCounter) Seen(_ context.Context, key string, ttl time.Duration, now time.Time) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil {
		c.seen = map[string]time.Time{}
	}
	if t, ok := c.seen[key]; ok && now.Sub(t) < ttl {
		return true, nil
	}
	c.seen[key] = now
	return false, nil
}

type memWitness struct {
	first   time.Time
	streams map[string]bool
}

type memBudget struct {
	first time.Time
	n     int
}

// Conns implements Counter.
func (c *MemCounter) Conns(_ context.Context, jail, stream string, now time.Time) (map[string]ConnState, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]ConnState{}
	for k, e := range c.conns[jail+"|"+stream] {
		if now.Before(e.until) {
			out[k] = e.st
		}
	}
	return out, nil
}

// SaveConns implements Counter.
func (c *MemCounter) SaveConns(_ context.Context, jail, stream string, open map[string]ConnState, closed []string, now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conns == nil {
		c.conns = map[string]map[string]memConn{}
	}
	m := c.conns[jail+"|"+stream]
	if m == nil {
		m = map[string]memConn{}
		c.conns[jail+"|"+stream] = m
	}
	for _, k := range closed {
		delete(m, k)
	}
	for k, st := range open {
		m[k] = memConn{st: st, until: now.Add(connTTL)}
	}
	return nil
}

type memConn struct {
	st    ConnState
	until time.Time
}

// Witness implements Counter.
func (c *MemCounter) Witness(_ context.Context, jail, addr, stream string, window time.Duration, now time.Time) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.witness == nil {
		c.witness = map[string]*memWitness{}
	}
	k := jail + "|" + addr
	w := c.witness[k]
	if w == nil || now.Sub(w.first) > window {
		w = &memWitness{first: now, streams: map[string]bool{}}
		c.witness[k] = w
	}
	w.streams[stream] = true
	return len(w.streams), nil
}

// Take implements Counter.
func (c *MemCounter) Take(_ context.Context, key string, limit int, window time.Duration, now time.Time) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.budget == nil {
		c.budget = map[string]*memBudget{}
	}
	b := c.budget[key]
	if b == nil || now.Sub(b.first) > window {
		b = &memBudget{first: now}
		c.budget[key] = b
	}
	if b.n >= limit {
		return false, nil
	}
	b.n++
	return true, nil
}

type memEntry struct {
	first time.Time
	count int
}

// Add implements Counter.
func (c *MemCounter) Add(_ context.Context, jail, addr string, n int, window time.Duration, now time.Time) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]memEntry{}
	}
	k := jail + "|" + addr
	e := c.m[k]
	if e.first.IsZero() || now.Sub(e.first) > window {
		e = memEntry{first: now}
	}
	e.count += n
	c.m[k] = e
	return e.count, nil
}

// LedgerCounter keeps counts in the ledger table (pk "jail#<name>", sk the address) with a TTL, so
// a slow brute force spread over many invocations is still caught.
type LedgerCounter struct {
	DDB   *dynamodb.Client
	Table string
}

func num(v int64) ddbtypes.AttributeValue {
	return &ddbtypes.AttributeValueMemberN{Value: strconv.FormatInt(v, 10)}
}

// Add implements Counter with an atomic ADD while the window is open, and a fresh item otherwise.
func (c *LedgerCounter) Add(ctx context.Context, jail, addr string, n int, window time.Duration, now time.Time) (int, error) {
	key := map[string]ddbtypes.AttributeValue{"pk": &ddbtypes.AttributeValueMemberS{Value: "jail#" + jail}, "sk": &ddbtypes.AttributeValueMemberS{Value: addr}}
	exp := now.Add(window).Unix() + 60
	// One request for a new source or one within its window (the item is created with its
	// window's start); a window that has passed fails the condition and is started again below.
	out, err := c.DDB.UpdateItem(ctx, &dynamodb.UpdateItemInput{TableName: aws.String(c.Table), Key: key,
		UpdateExpression:         aws.String("SET #f = if_not_exists(#f, :now), expires_at = if_not_exists(expires_at, :exp) ADD #c :n"),
		ConditionExpression:      aws.String("attribute_not_exists(pk) OR #f > :cutoff"),
		ExpressionAttributeNames: map[string]string{"#c": "count", "#f": "first"},
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":n": num(int64(n)), ":cutoff": num(now.Add(-window).UnixMilli()),
			":now": num(now.UnixMilli()), ":exp": num(exp)},
		ReturnValues: ddbtypes.ReturnValueUpdatedNew})
	if err == nil {
		var v struct {
			Count int `dynamodbav:"count"`
		}
		err = attributevalue.UnmarshalMap(out.Attributes, &v)
		return v.Count, err
	}
	var ccf *ddbtypes.ConditionalCheckFailedException
	if !asCCF(err, &ccf) {
		return 0, err
	}
	item := map[string]ddbtypes.AttributeValue{"pk": key["pk"], "sk": key["sk"], "count": num(int64(n)), "first": num(now.UnixMilli()), "expires_at": num(exp)}
	if _, err := c.DDB.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(c.Table), Item: item}); err != nil {
		return 0, err
	}
	return n, nil
}

// Seen implements Counter with a conditional put of pk "seen#<key>": the first writer wins.
func (c *LedgerCounter) Seen(ctx context.Context, key string, ttl time.Duration, now time.Time) (bool, error) {
	item := map[string]ddbtypes.AttributeValue{"pk": &ddbtypes.AttributeValueMemberS{Value: "seen#" + key}, "sk": &ddbtypes.AttributeValueMemberS{Value: "-"},
		"at": num(now.UnixMilli()), "expires_at": num(now.Add(ttl).Unix())}
	_, err := c.DDB.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(c.Table), Item: item,
		ConditionExpression:       aws.String("attribute_not_exists(pk) OR #at < :cutoff"),
		ExpressionAttributeNames:  map[string]string{"#at": "at"},
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":cutoff": num(now.Add(-ttl).UnixMilli())}})
	if err == nil {
		return false, nil
	}
	var ccf *ddbtypes.ConditionalCheckFailedException
	if asCCF(err, &ccf) {
		return true, nil
	}
	return false, err
}

func str(v string) ddbtypes.AttributeValue { return &ddbtypes.AttributeValueMemberS{Value: v} }

// Conns implements Counter: one Query of the stream's partition "conn#<jail>#<stream>".
func (c *LedgerCounter) Conns(ctx context.Context, jail, stream string, now time.Time) (map[string]ConnState, error) {
	out := map[string]ConnState{}
	p := dynamodb.NewQueryPaginator(c.DDB, &dynamodb.QueryInput{TableName: aws.String(c.Table),
		KeyConditionExpression:    aws.String("pk = :pk"),
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":pk": str("conn#" + jail + "#" + stream)}})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, it := range page.Items {
			var v struct {
				SK        string `dynamodbav:"sk"`
				ExpiresAt int64  `dynamodbav:"expires_at"`
				ConnState
			}
			if err := attributevalue.UnmarshalMap(it, &v); err != nil {
				return nil, err
			}
			if v.ExpiresAt > now.Unix() {
				out[v.SK] = v.ConnState
			}
		}
	}
	return out, nil
}

// SaveConns implements Counter: a put per open connection, a delete per closed one.
func (c *LedgerCounter) SaveConns(ctx context.Context, jail, stream string, open map[string]ConnState, closed []string, now time.Time) error {
	pk := str("conn#" + jail + "#" + stream)
	for _, k := range closed {
		if _, still := open[k]; still {
			continue
		}
		if _, err := c.DDB.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: aws.String(c.Table),
			Key: map[string]ddbtypes.AttributeValue{"pk": pk, "sk": str(k)}}); err != nil {
			return err
		}
	}
	for k, st := range open {
		item, err := attributevalue.MarshalMap(st)
		if err != nil {
			return err
		}
		item["pk"], item["sk"], item["expires_at"] = pk, str(k), num(now.Add(connTTL).Unix())
		if _, err := c.DDB.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(c.Table), Item: item}); err != nil {
			return err
		}
	}
	return nil
}

// Witness implements Counter: a string set of streams on "witness#<jail>", sk the address, reset
// when its window has passed.
func (c *LedgerCounter) Witness(ctx context.Context, jail, addr, stream string, window time.Duration, now time.Time) (int, error) {
	key := map[string]ddbtypes.AttributeValue{"pk": str("witness#" + jail), "sk": str(addr)}
	out, err := c.DDB.UpdateItem(ctx, &dynamodb.UpdateItemInput{TableName: aws.String(c.Table), Key: key,
		UpdateExpression:          aws.String("ADD #s :s"),
		ConditionExpression:       aws.String("attribute_exists(pk) AND #f > :cutoff"),
		ExpressionAttributeNames:  map[string]string{"#s": "streams", "#f": "first"},
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":s": &ddbtypes.AttributeValueMemberSS{Value: []string{stream}}, ":cutoff": num(now.Add(-window).UnixMilli())},
		ReturnValues:              ddbtypes.ReturnValueUpdatedNew})
	if err == nil {
		if ss, ok := out.Attributes["streams"].(*ddbtypes.AttributeValueMemberSS); ok {
			return len(ss.Value), nil
		}
		return 1, nil
	}
	var ccf *ddbtypes.ConditionalCheckFailedException
	if !asCCF(err, &ccf) {
		return 0, err
	}
	item := map[string]ddbtypes.AttributeValue{"pk": key["pk"], "sk": key["sk"], "streams": &ddbtypes.AttributeValueMemberSS{Value: []string{stream}},
		"first": num(now.UnixMilli()), "expires_at": num(now.Add(window).Unix() + 60)}
	if _, err := c.DDB.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(c.Table), Item: item}); err != nil {
		return 0, err
	}
	return 1, nil
}

// Take implements Counter: an atomic counter on "budget#<key>", sk the window's start, that
// refuses to pass limit.
func (c *LedgerCounter) Take(ctx context.Context, key string, limit int, window time.Duration, now time.Time) (bool, error) {
	start := now.Truncate(window)
	_, err := c.DDB.UpdateItem(ctx, &dynamodb.UpdateItemInput{TableName: aws.String(c.Table),
		Key:                       map[string]ddbtypes.AttributeValue{"pk": str("budget#" + key), "sk": str(strconv.FormatInt(start.Unix(), 10))},
		UpdateExpression:          aws.String("ADD #n :one SET expires_at = :exp"),
		ConditionExpression:       aws.String("attribute_not_exists(#n) OR #n < :limit"),
		ExpressionAttributeNames:  map[string]string{"#n": "n"},
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":one": num(1), ":limit": num(int64(limit)), ":exp": num(start.Add(2 * window).Unix())}})
	if err == nil {
		return true, nil
	}
	var ccf *ddbtypes.ConditionalCheckFailedException
	if asCCF(err, &ccf) {
		return false, nil
	}
	return false, err
}

// SetPending implements Counter: the decisions as JSON on the batch's "seen#<key>" item.
func (c *LedgerCounter) SetPending(ctx context.Context, key string, bans []Decision, ttl time.Duration, now time.Time) error {
	b, err := json.Marshal(bans)
	if err != nil {
		return err
	}
	_, err = c.DDB.UpdateItem(ctx, &dynamodb.UpdateItemInput{TableName: aws.String(c.Table),
		Key:                       map[string]ddbtypes.AttributeValue{"pk": str("seen#" + key), "sk": str("-")},
		UpdateExpression:          aws.String("SET pending = :p, expires_at = :exp"),
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":p": &ddbtypes.AttributeValueMemberB{Value: b}, ":exp": num(now.Add(ttl).Unix())}})
	return err
}

// Pending implements Counter: it removes the pending decisions and returns what was there.
func (c *LedgerCounter) Pending(ctx context.Context, key string) ([]Decision, error) {
	out, err := c.DDB.UpdateItem(ctx, &dynamodb.UpdateItemInput{TableName: aws.String(c.Table),
		Key:                 map[string]ddbtypes.AttributeValue{"pk": str("seen#" + key), "sk": str("-")},
		UpdateExpression:    aws.String("REMOVE pending"),
		ConditionExpression: aws.String("attribute_exists(pk)"),
		ReturnValues:        ddbtypes.ReturnValueAllOld})
	if err != nil {
		var ccf *ddbtypes.ConditionalCheckFailedException
		if asCCF(err, &ccf) {
			return nil, nil
		}
		return nil, err
	}
	p, ok := out.Attributes["pending"].(*ddbtypes.AttributeValueMemberB)
	if !ok {
		return nil, nil
	}
	var ds []Decision
	if err := json.Unmarshal(p.Value, &ds); err != nil {
		return nil, err
	}
	return ds, nil
}
