package trigger

import (
	"context"
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
}

// MemCounter counts in memory (dry runs, one invocation).
type MemCounter struct {
	mu   sync.Mutex
	m    map[string]memEntry
	seen map[string]time.Time
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
	out, err := c.DDB.UpdateItem(ctx, &dynamodb.UpdateItemInput{TableName: aws.String(c.Table), Key: key,
		UpdateExpression:          aws.String("ADD #c :n"),
		ConditionExpression:       aws.String("attribute_exists(pk) AND #f > :cutoff"),
		ExpressionAttributeNames:  map[string]string{"#c": "count", "#f": "first"},
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":n": num(int64(n)), ":cutoff": num(now.Add(-window).UnixMilli())},
		ReturnValues:              ddbtypes.ReturnValueUpdatedNew})
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
