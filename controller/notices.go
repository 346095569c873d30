package controller

// Ban notices: ban and unban events go to an SNS topic (Config.NoticeTopic), at most one message
// per NoticeInterval per topic, across every process that bans (CLI, Lambda, reconciler). Events
// are added to a pending item in the ledger (pk "notice", sk = topic); whoever finds the last
// message older than the interval claims the pending counts in one conditional update (which
// also empties them, so nothing is counted twice or lost) and publishes. The reconciler's pass
// flushes what is left.

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// NoticeInterval is the shortest time between two notices to one topic.
const NoticeInterval = 30 * time.Second

// NoticeAddrs is how many addresses a notice lists.
const NoticeAddrs = 20

// Publisher sends a message to an SNS topic (the SNS client's Publish, wrapped).
type Publisher interface {
	Publish(ctx context.Context, topic, subject, message string) error
}

// Notice is the JSON body of a notice.
type Notice struct {
	Bans    int       `json:"bans"`
	Unbans  int       `json:"unbans"`
	Allows  int       `json:"allows,omitempty"`
	First   []string  `json:"first"` // the first NoticeAddrs addresses, "ban 192.0.2.1/32"
	Since   time.Time `json:"since"`
	Until   time.Time `json:"until"`
	Partial bool      `json:"more,omitempty"` // more addresses than First lists
}

type noticeItem struct {
	Bans   int      `dynamodbav:"bans"`
	Unbans int      `dynamodbav:"unbans"`
	Allows int      `dynamodbav:"allows"`
	Addrs  []string `dynamodbav:"addrs,stringset"`
	Since  int64    `dynamodbav:"since"`
	SentAt int64    `dynamodbav:"sent_at"`
}

// notify adds a ban, unban or allow to the topic's pending notice and sends it if one is due.
// A failure is logged: notices never fail a ban.
func (c *Controller) notify(ctx context.Context, kind string, res *Result) {
	if c.NoticeTopic == "" || c.SNS == nil || res == nil {
		return
	}
	var addrs []string
	count := 0
	switch kind {
	case "ban":
		count = len(res.banned)
	case "unban", "allow":
		count = len(res.Tombstoned)
	}
	if count == 0 {
		return
	}
	// Addresses are a string set (a set ADD is atomic where a list append would need a read),
	// each prefixed with when it came, so that the notice lists the first ones; a call adds at
	// most NoticeAddrs, so a flood's pending item stays small.
	at := c.Now().UnixNano()
	add := func(what string) {
		if len(addrs) < NoticeAddrs {
			addrs = append(addrs, fmt.Sprintf("%019d %s %s", at+int64(len(addrs)), kind, what))
		}
	}
	for _, b := range res.Tombstoned {
		add(b.CIDR)
	}
	for _, cidr := range res.banned {
		add(cidr)
	}
	ctx = context.WithoutCancel(ctx)
	field := map[string]string{"ban": "bans", "unban": "unbans", "allow": "allows"}[kind]
	_, err := c.Ledger.DDB.UpdateItem(ctx, &dynamodb.UpdateItemInput{TableName: aws.String(c.Table),
		Key:                       map[string]ddbtypes.AttributeValue{"pk": s("notice"), "sk": s(c.NoticeTopic)},
		UpdateExpression:          aws.String("ADD #f :n, addrs :a SET since = if_not_exists(since, :now)"),
		ExpressionAttributeNames:  map[string]string{"#f": field},
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":n": n(int64(count)), ":a": &ddbtypes.AttributeValueMemberSS{Value: addrs}, ":now": n(c.Now().Unix())}})
	if err != nil {
		c.Log.Warn("ban notice not queued", "topic", c.NoticeTopic, "err", err)
		return
	}
	if _, err := c.FlushNotices(ctx); err != nil {
		c.Log.Warn("ban notice not sent", "topic", c.NoticeTopic, "err", err)
	}
}

// FlushNotices sends the pending notice if there is one and the last was sent at least
// NoticeInterval ago. It reports whether it sent one.
func (c *Controller) FlushNotices(ctx context.Context) (bool, error) {
	if c.NoticeTopic == "" || c.SNS == nil {
		return false, nil
	}
	now := c.Now()
	// Claim: empty the pending counts, if there are any and the last notice is old enough. The
	// old item says what to send.
	out, err := c.Ledger.DDB.UpdateItem(ctx, &dynamodb.UpdateItemInput{TableName: aws.String(c.Table),
		Key:                 map[string]ddbtypes.AttributeValue{"pk": s("notice"), "sk": s(c.NoticeTopic)},
		UpdateExpression:    aws.String("SET sent_at = :now, bans = :zero, unbans = :zero, allows = :zero REMOVE since, addrs"),
		ConditionExpression: aws.String("attribute_exists(since) AND (attribute_not_exists(sent_at) OR sent_at <= :due)"),
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":now": n(now.Unix()), ":zero": n(0),
			":due": n(now.Add(-NoticeInterval).Unix())},
		ReturnValues: ddbtypes.ReturnValueAllOld})
	if isConditionFailed(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("claim notice: %w", err)
	}
	var it noticeItem
	if err := attributevalue.UnmarshalMap(out.Attributes, &it); err != nil {
		return false, err
	}
	nt := Notice{Bans: it.Bans, Unbans: it.Unbans, Allows: it.Allows, Since: time.Unix(it.Since, 0).UTC(), Until: now.UTC()}
	sort.Strings(it.Addrs)
	for _, a := range it.Addrs[:min(len(it.Addrs), NoticeAddrs)] {
		_, what, _ := strings.Cut(a, " ")
		nt.First = append(nt.First, what)
	}
	nt.Partial = it.Bans+it.Unbans+it.Allows > len(nt.First)
	body, _ := json.Marshal(nt)
	subject := "bansshee: " + strconv.Itoa(it.Bans) + " bans, " + strconv.Itoa(it.Unbans) + " unbans"
	if err := c.SNS.Publish(ctx, c.NoticeTopic, subject, string(body)); err != nil {
		return false, fmt.Errorf("publish notice to %s: %w", c.NoticeTopic, err)
	}
	return true, nil
}
