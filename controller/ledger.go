package controller

import (
	"context"
	"errors"
	"fmt"
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

// Ledger is the DynamoDB table of record. Key schema (both strings):
//
//	pk="meta"      sk="revision"        n: the revision counter (atomic ADD)
//	pk="meta"      sk="config"          agent_role_id: what agents' status keys start with
//	pk="ban#NN"    sk="<cidr>|<target>" a ban (deleted=true: a tombstone until expires_at), in one of
//	                                    16 partitions by a hash of the CIDR; "ban" holds bans written
//	                                    before the split, still read and tombstoned
//	pk="feed"      sk="<name>"          a blocklist feed (feed.go); pk="feedv#<name>": its entries
//	pk="limit"     sk="<limit id>"      a rate-limit policy (deleted=true: tombstone)
//	pk="instance"  sk="<instance id>"   what the reconciler knows of an instance
//	pk="agent#<id>" sk="status"         the agent's heartbeat (proto.AgentStatus)
//	pk="jail#..."  sk="<addr>"          Lambda jail counters
//	pk="allow"     sk="<cidr>"          a ledger allow entry (policy.go); pk="hold": an unban's hold
//	pk="hist#<bucket>", pk="hday#<date>" history events (history.go)
//	pk="notice"    sk="<topic ARN>"     ban notices not yet sent (notices.go)
//
// expires_at (epoch seconds) is the TTL attribute; reads filter on it since TTL deletes late.
type Ledger struct {
	DDB   *dynamodb.Client
	Table string
	// AgentRoleID: agents with instance-profile credentials key their status by it (see
	// Statuses). Empty: read from the ledger (pk "meta", sk "config"), where a controller that
	// has it (the stack's Lambda) records it.
	AgentRoleID string

	roleMu      sync.Mutex
	roleChecked time.Time

	invMu      sync.Mutex
	invWritten invHead // the inventory head this process last wrote or found (inventory.go)
}

// agentRoleID returns the configured agent role id, or the one recorded in the ledger (read at
// most once a minute).
func (l *Ledger) agentRoleID(ctx context.Context) string {
	l.roleMu.Lock()
	defer l.roleMu.Unlock()
	if l.AgentRoleID != "" || time.Since(l.roleChecked) < time.Minute {
		return l.AgentRoleID
	}
	l.roleChecked = time.Now()
	out, err := l.DDB.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(l.Table), Key: map[string]ddbtypes.AttributeValue{"pk": s("meta"), "sk": s("config")}})
	if err == nil {
		if v, ok := out.Item["agent_role_id"].(*ddbtypes.AttributeValueMemberS); ok {
			l.AgentRoleID = v.Value
		}
	}
	return l.AgentRoleID
}

// RecordAgentRoleID writes the agent role id into the ledger for controllers that lack it.
func (l *Ledger) RecordAgentRoleID(ctx context.Context, id string) error {
	_, err := l.DDB.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(l.Table), Item: map[string]ddbtypes.AttributeValue{
		"pk": s("meta"), "sk": s("config"), "agent_role_id": s(id)}})
	return err
}

// BanItem is one ban in the ledger.
type BanItem struct {
	PK string `dynamodbav:"pk"`
	SK string `dynamodbav:"sk"`
	// CIDR and Target are the sort key's two halves (<cidr>|<target>), not attributes of their
	// own: an item is 8 attributes (9 for a tombstone), and a jail's ban 183 bytes instead of
	// 225, for every reconcile pass to read. Items earlier controllers wrote with them still
	// read the same.
	CIDR      string    `dynamodbav:"-"`
	Target    string    `dynamodbav:"-"`
	Reason    string    `dynamodbav:"reason"`
	Source    string    `dynamodbav:"source"`
	Rev       int64     `dynamodbav:"rev"`
	ExpiresAt int64     `dynamodbav:"expires_at,omitempty"` // 0: permanent
	Created   time.Time `dynamodbav:"created"`
	Updated   time.Time `dynamodbav:"updated"`
	Deleted   bool      `dynamodbav:"deleted,omitempty"`
}

// fromKey fills CIDR and Target from the sort key (a CIDR has no "|").
func (b *BanItem) fromKey() { b.CIDR, b.Target, _ = strings.Cut(b.SK, "|") }

// Active reports whether the ban is in force at now.
func (b BanItem) Active(now time.Time) bool {
	return !b.Deleted && (b.ExpiresAt == 0 || b.ExpiresAt > now.Unix())
}

// Expires is the ban's expiry (zero: never).
func (b BanItem) Expires() time.Time {
	if b.ExpiresAt == 0 {
		return time.Time{}
	}
	return time.Unix(b.ExpiresAt, 0).UTC()
}

// Wire is the ban as agents receive it.
func (b BanItem) Wire() proto.Ban {
	p, _ := proto.ParseCIDR(b.CIDR)
	// Items written before the controller enforced the agent's limits may carry longer text.
	return proto.Ban{ID: proto.BanID(p), CIDR: p.String(), ExpiresAt: b.Expires(), Rev: b.Rev,
		Reason: proto.TruncateText(b.Reason, proto.MaxTextBytes), Source: proto.TruncateText(b.Source, proto.MaxTextBytes)}
}

// LimitItem is a rate-limit policy in the ledger.
type LimitItem struct {
	PK       string `dynamodbav:"pk"`
	SK       string `dynamodbav:"sk"`
	Target   string `dynamodbav:"target"`
	Proto    string `dynamodbav:"proto"`
	Ports    []int  `dynamodbav:"ports"`
	Hits     int    `dynamodbav:"hits"`
	Seconds  int    `dynamodbav:"seconds"`
	Action   string `dynamodbav:"action"`
	Escalate bool   `dynamodbav:"escalate"`
	// EscalateUnverified: see proto.Limit.
	EscalateUnverified bool `dynamodbav:"escalate_unverified,omitempty"`
	// EscalateFleet bans a tripping source on the whole target at once; without it, on the
	// reporting instance until a second instance reports the source.
	EscalateFleet bool      `dynamodbav:"escalate_fleet,omitempty"`
	Rev           int64     `dynamodbav:"rev"`
	Updated       time.Time `dynamodbav:"updated"`
	Deleted       bool      `dynamodbav:"deleted"`
}

// Wire is the policy as agents receive it.
func (l LimitItem) Wire() proto.Limit {
	return proto.Limit{ID: l.SK, Proto: l.Proto, Ports: l.Ports, Hits: l.Hits, Seconds: l.Seconds, Action: l.Action, Escalate: l.Escalate, EscalateUnverified: l.EscalateUnverified, Rev: l.Rev}
}

// InstanceItem is the reconciler's memory of an instance.
type InstanceItem struct {
	PK        string    `dynamodbav:"pk"`
	SK        string    `dynamodbav:"sk"`
	FirstSeen time.Time `dynamodbav:"first_seen"`
	SyncedRev int64     `dynamodbav:"synced_rev"`
	SyncedAt  time.Time `dynamodbav:"synced_at,omitempty"`
	GoneSince time.Time `dynamodbav:"gone_since,omitempty"`
	LagSince  time.Time `dynamodbav:"lag_since,omitempty"`
	// The agent role id the queue's policy was last found or written with, and when.
	PolicyRole    string    `dynamodbav:"policy_role,omitempty"`
	PolicyChecked time.Time `dynamodbav:"policy_checked,omitempty"`
}

func s(v string) ddbtypes.AttributeValue { return &ddbtypes.AttributeValueMemberS{Value: v} }
func n(v int64) ddbtypes.AttributeValue {
	return &ddbtypes.AttributeValueMemberN{Value: strconv.FormatInt(v, 10)}
}

// NextRev atomically takes the next ledger revision.
func (l *Ledger) NextRev(ctx context.Context) (int64, error) {
	out, err := l.DDB.UpdateItem(ctx, &dynamodb.UpdateItemInput{TableName: aws.String(l.Table),
		Key:                       map[string]ddbtypes.AttributeValue{"pk": s("meta"), "sk": s("revision")},
		UpdateExpression:          aws.String("ADD n :one"),
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":one": n(1)},
		ReturnValues:              ddbtypes.ReturnValueUpdatedNew})
	if err != nil {
		return 0, fmt.Errorf("next revision: %w", err)
	}
	var v struct {
		N int64 `dynamodbav:"n"`
	}
	if err := attributevalue.UnmarshalMap(out.Attributes, &v); err != nil {
		return 0, err
	}
	return v.N, nil
}

// CurrentRev reads the revision counter.
func (l *Ledger) CurrentRev(ctx context.Context) (int64, error) {
	out, err := l.DDB.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(l.Table), ConsistentRead: aws.Bool(true),
		Key: map[string]ddbtypes.AttributeValue{"pk": s("meta"), "sk": s("revision")}})
	if err != nil {
		return 0, fmt.Errorf("read revision: %w", err)
	}
	var v struct {
		N int64 `dynamodbav:"n"`
	}
	err = attributevalue.UnmarshalMap(out.Item, &v)
	return v.N, err
}

func isConditionFailed(err error) bool {
	var ccf *ddbtypes.ConditionalCheckFailedException
	return errors.As(err, &ccf)
}

// BanShards is the number of partitions bans are spread over: reads of every ban run in parallel
// (100 000 bans are 16 queries of 6 000), and DynamoDB's per-partition write limit is not one
// partition's for a flood of bans.
const BanShards = 16

// legacyBanPK is the one partition bans were written to before they were spread; what is there is
// still read, and tombstoned by an unban, until it expires.
const legacyBanPK = "ban"

// BanPK is the partition of a ban on cidr.
func BanPK(cidr string) string {
	h := uint32(2166136261)
	for i := 0; i < len(cidr); i++ {
		h = (h ^ uint32(cidr[i])) * 16777619
	}
	return fmt.Sprintf("ban#%02d", h%BanShards)
}

// banPartitions are every partition that may hold bans.
func banPartitions() []string {
	out := []string{legacyBanPK}
	for i := range BanShards {
		out = append(out, fmt.Sprintf("ban#%02d", i))
	}
	return out
}

// PutBan writes a ban unless the ledger holds the same CIDR and target at a newer revision or
// already in force for longer: a re-ban extends, never shortens, and never duplicates.
// It reports whether the item was written.
func (l *Ledger) PutBan(ctx context.Context, b BanItem) (bool, error) {
	b.PK, b.SK = BanPK(b.CIDR), b.CIDR+"|"+b.Target
	item, err := attributevalue.MarshalMap(b)
	if err != nil {
		return false, err
	}
	cond := "attribute_not_exists(pk) OR (rev < :rev AND (deleted = :true OR attribute_not_exists(expires_at) AND :perm = :true OR expires_at < :exp))"
	exp := b.ExpiresAt
	if exp == 0 {
		exp = 1 << 62
	}
	_, err = l.DDB.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(l.Table), Item: item, ConditionExpression: aws.String(cond),
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":rev": n(b.Rev), ":exp": n(exp),
			":true": &ddbtypes.AttributeValueMemberBOOL{Value: true}, ":perm": &ddbtypes.AttributeValueMemberBOOL{Value: b.ExpiresAt == 0}}})
	if isConditionFailed(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("write ban %s: %w", b.CIDR, err)
	}
	return true, nil
}

// TombstoneBans marks every ban of cidr (any target) deleted at rev, where the ledger holds an
// older revision. It returns the bans it removed.
func (l *Ledger) TombstoneBans(ctx context.Context, cidr string, rev int64, now time.Time) ([]BanItem, error) {
	all, err := l.query(ctx, BanPK(cidr), cidr+"|")
	if err != nil {
		return nil, err
	}
	legacy, err := l.query(ctx, legacyBanPK, cidr+"|")
	if err != nil {
		return nil, err
	}
	all = append(all, legacy...)
	var removed []BanItem
	for _, raw := range all {
		var b BanItem
		if err := attributevalue.UnmarshalMap(raw, &b); err != nil {
			return nil, err
		}
		b.fromKey()
		if b.Deleted || b.Rev >= rev {
			continue
		}
		exp := b.ExpiresAt
		if exp == 0 {
			exp = now.Add(7 * 24 * time.Hour).Unix()
		}
		_, err := l.DDB.UpdateItem(ctx, &dynamodb.UpdateItemInput{TableName: aws.String(l.Table),
			Key:                       map[string]ddbtypes.AttributeValue{"pk": s(b.PK), "sk": s(b.SK)},
			UpdateExpression:          aws.String("SET deleted = :true, rev = :rev, expires_at = :exp, updated = :now"),
			ConditionExpression:       aws.String("rev < :rev"),
			ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":true": &ddbtypes.AttributeValueMemberBOOL{Value: true}, ":rev": n(rev), ":exp": n(exp), ":now": s(now.UTC().Format(time.RFC3339Nano))}})
		if isConditionFailed(err) {
			continue // a newer write won the race
		}
		if err != nil {
			return removed, fmt.Errorf("unban %s: %w", cidr, err)
		}
		b.Deleted, b.Rev, b.ExpiresAt = true, rev, exp
		removed = append(removed, b)
	}
	return removed, nil
}

// Bans returns every ban item, tombstones included, that has not expired at now.
func (l *Ledger) Bans(ctx context.Context, now time.Time) ([]BanItem, error) {
	return l.readBans(ctx, now, func(pk string) *dynamodb.QueryInput {
		return &dynamodb.QueryInput{TableName: aws.String(l.Table), ConsistentRead: aws.Bool(true), KeyConditionExpression: aws.String("pk = :pk"),
			ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":pk": s(pk)}}
	})
}

// BansToList is Bans for `bansshee list`: the bans in force, with only what it prints. Tombstones
// are filtered out by DynamoDB and the CIDR and target come from the sort key, so each item
// carries 5 attributes; eventually consistent (a listing a second stale is still a
// listing). At 100 000 bans this halves what is encoded, sent and decoded.
func (l *Ledger) BansToList(ctx context.Context, now time.Time) ([]BanItem, error) {
	return l.readBans(ctx, now, func(pk string) *dynamodb.QueryInput {
		return &dynamodb.QueryInput{TableName: aws.String(l.Table), KeyConditionExpression: aws.String("pk = :pk"),
			FilterExpression:         aws.String("attribute_not_exists(deleted) OR deleted = :false"),
			ProjectionExpression:     aws.String("sk, expires_at, reason, #s, rev"),
			ExpressionAttributeNames: map[string]string{"#s": "source"},
			ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":pk": s(pk),
				":false": &ddbtypes.AttributeValueMemberBOOL{Value: false}}}
	})
}

// readBans queries every ban partition in parallel and keeps the items that have not expired.
func (l *Ledger) readBans(ctx context.Context, now time.Time, query func(pk string) *dynamodb.QueryInput) ([]BanItem, error) {
	parts := banPartitions()
	got := make([][]BanItem, len(parts))
	var g errgroup.Group
	g.SetLimit(8)
	for i, pk := range parts {
		g.Go(func() error {
			p := dynamodb.NewQueryPaginator(l.DDB, query(pk))
			for p.HasMorePages() {
				page, err := p.NextPage(ctx)
				if err != nil {
					return fmt.Errorf("query bans (%s): %w", pk, err)
				}
				var items []BanItem
				if err := attributevalue.UnmarshalListOfMaps(page.Items, &items); err != nil {
					return err
				}
				for _, b := range items {
					b.fromKey()
					if b.ExpiresAt == 0 || b.ExpiresAt > now.Unix() {
						got[i] = append(got[i], b)
					}
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var out []BanItem
	for _, g := range got {
		out = append(out, g...)
	}
	return out, nil
}

// PutLimit writes a policy unless the ledger holds it at a newer revision.
func (l *Ledger) PutLimit(ctx context.Context, it LimitItem) (bool, error) {
	it.PK = "limit"
	item, err := attributevalue.MarshalMap(it)
	if err != nil {
		return false, err
	}
	_, err = l.DDB.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(l.Table), Item: item,
		ConditionExpression:       aws.String("attribute_not_exists(pk) OR rev < :rev"),
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":rev": n(it.Rev)}})
	if isConditionFailed(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("write limit %s: %w", it.SK, err)
	}
	return true, nil
}

// Limits returns every policy, tombstones included.
func (l *Ledger) Limits(ctx context.Context) ([]LimitItem, error) {
	return queryItems[LimitItem](ctx, l, "limit")
}

// queryItems reads a whole partition as items of type T.
func queryItems[T any](ctx context.Context, l *Ledger, pk string) ([]T, error) {
	raws, err := l.query(ctx, pk, "")
	if err != nil {
		return nil, err
	}
	var out []T
	err = attributevalue.UnmarshalListOfMaps(raws, &out)
	return out, err
}

// Instances returns the reconciler's instance records.
func (l *Ledger) Instances(ctx context.Context) (map[string]InstanceItem, error) {
	raws, err := l.query(ctx, "instance", "")
	if err != nil {
		return nil, err
	}
	var list []InstanceItem
	if err := attributevalue.UnmarshalListOfMaps(raws, &list); err != nil {
		return nil, err
	}
	out := make(map[string]InstanceItem, len(list))
	for _, it := range list {
		out[it.SK] = it
	}
	return out, nil
}

// PutInstance writes an instance record.
func (l *Ledger) PutInstance(ctx context.Context, it InstanceItem) error {
	it.PK = "instance"
	item, err := attributevalue.MarshalMap(it)
	if err != nil {
		return err
	}
	_, err = l.DDB.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(l.Table), Item: item})
	return err
}

// DeleteInstance forgets an instance.
func (l *Ledger) DeleteInstance(ctx context.Context, id string) error {
	_, err := l.DDB.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: aws.String(l.Table), Key: map[string]ddbtypes.AttributeValue{"pk": s("instance"), "sk": s(id)}})
	return err
}

// Statuses returns the heartbeats of the instances ids, read by key (BatchGetItem, 100 keys a
// call, 16 calls in flight), never by scanning the table: the cost follows the instances asked
// about, not the size of the ledger. An instance's item is under agent#<instance id>, or, for an
// instance-profile session, agent#<agent role id>:<instance id> (see proto.StatusKey); the id is
// taken from the key, which IAM lets an agent write only for itself, and an item whose
// instance_id attribute disagrees with its key is skipped.
func (l *Ledger) Statuses(ctx context.Context, ids []string) (map[string]proto.AgentStatus, error) {
	return l.statuses(ctx, ids, "")
}

// appliedOnly is the projection of a status that says which revision it applied (`why`).
const appliedOnly = "pk, sk, instance_id, applied_rev, heartbeat"

// statuses is Statuses reading only the attributes of projection (all if empty).
func (l *Ledger) statuses(ctx context.Context, ids []string, projection string) (map[string]proto.AgentStatus, error) {
	return l.statusesOf(ctx, ids, nil, projection)
}

// Status key forms: which of an instance's two possible status keys its agent writes.
const (
	keyFormUnknown  uint8 = iota
	keyFormInstance       // agent#<instance id>
	keyFormRole           // agent#<role id>:<instance id>
)

// hintStale is how old a heartbeat read under an agent's known key may be before its other key is
// read too: agents write one at least every 4 minutes (a keep-alive), so an older one means the
// agent writes elsewhere now, or is down.
const hintStale = 5 * time.Minute

// keyFormOf is the form of the key a status was read under.
func keyFormOf(st proto.AgentStatus) uint8 {
	if strings.Contains(st.PK, ":") {
		return keyFormRole
	}
	return keyFormInstance
}

// StatusesHinted is Statuses reading, for an instance whose agent's key form is known (forms:
// from the reconciler's last pass, through the inventory), only that key: half the reads of a
// fleet on instance profiles. An instance whose hinted read finds nothing, or a heartbeat older
// than stale, has its other key read too (its agent changed credentials), and the newer wins.
func (l *Ledger) StatusesHinted(ctx context.Context, ids []string, forms map[string]uint8, stale time.Time) (map[string]proto.AgentStatus, error) {
	return l.statusesHinted(ctx, ids, forms, stale, "")
}

// statusesHinted is StatusesHinted reading only the attributes of projection (all if empty).
func (l *Ledger) statusesHinted(ctx context.Context, ids []string, forms map[string]uint8, stale time.Time, projection string) (map[string]proto.AgentStatus, error) {
	out, err := l.statusesOf(ctx, ids, forms, projection)
	if err != nil || len(forms) == 0 || l.agentRoleID(ctx) == "" {
		return out, err
	}
	var again []string
	other := map[string]uint8{}
	for _, id := range ids {
		f := forms[id]
		if f == keyFormUnknown {
			continue
		}
		if st, ok := out[id]; !ok || st.Heartbeat.Before(stale) {
			again = append(again, id)
			other[id] = keyFormInstance + keyFormRole - f
		}
	}
	if len(again) == 0 {
		return out, nil
	}
	more, err := l.statusesOf(ctx, again, other, projection)
	if err != nil {
		return nil, err
	}
	for id, st := range more {
		if prev, ok := out[id]; !ok || st.Heartbeat.After(prev.Heartbeat) {
			out[id] = st
		}
	}
	return out, nil
}

// statusesOf reads the status keys of ids: both forms, or only the one forms gives.
func (l *Ledger) statusesOf(ctx context.Context, ids []string, forms map[string]uint8, projection string) (map[string]proto.AgentStatus, error) {
	keys := statusKeys(ids, forms, l.agentRoleID(ctx))
	out := make(map[string]proto.AgentStatus, len(ids))
	var mu sync.Mutex
	var g errgroup.Group
	g.SetLimit(16)
	for i := 0; i < len(keys); i += 100 {
		chunk := keys[i:min(i+100, len(keys))]
		g.Go(func() error {
			items, err := l.batchGet(ctx, chunk, projection)
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			for _, raw := range items {
				var st proto.AgentStatus
				if err := attributevalue.UnmarshalMap(raw, &st); err != nil || st.SK != "status" {
					continue
				}
				id, ok := proto.InstanceOfStatusKey(st.PK)
				if !ok || st.InstanceID != id {
					continue
				}
				if prev, dup := out[id]; !dup || st.Heartbeat.After(prev.Heartbeat) {
					out[id] = st
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("read agent statuses: %w", err)
	}
	return out, nil
}

// statusKeys is the keys of ids' statuses: both forms (the second only with a role id), or only
// the one forms gives.
func statusKeys(ids []string, forms map[string]uint8, role string) []map[string]ddbtypes.AttributeValue {
	keys := make([]map[string]ddbtypes.AttributeValue, 0, 2*len(ids))
	for _, id := range ids {
		var principals []string
		f := forms[id]
		if f != keyFormRole || role == "" {
			principals = append(principals, id)
		}
		if role != "" && f != keyFormInstance {
			principals = append(principals, role+":"+id)
		}
		for _, p := range principals {
			pk, sk := proto.StatusKey(p)
			keys = append(keys, map[string]ddbtypes.AttributeValue{"pk": s(pk), "sk": s(sk)})
		}
	}
	return keys
}

// batchGet reads up to 100 keys, retrying what DynamoDB leaves unprocessed.
func (l *Ledger) batchGet(ctx context.Context, keys []map[string]ddbtypes.AttributeValue, projection string) ([]map[string]ddbtypes.AttributeValue, error) {
	var out []map[string]ddbtypes.AttributeValue
	// Eventually consistent: half the read units (a heartbeat a second stale changes nothing), and
	// the reconciler reads every status every pass.
	ka := ddbtypes.KeysAndAttributes{Keys: keys, ConsistentRead: aws.Bool(false)}
	if projection != "" {
		ka.ProjectionExpression = aws.String(projection)
	}
	req := map[string]ddbtypes.KeysAndAttributes{l.Table: ka}
	for attempt := 0; len(req) > 0; attempt++ {
		if attempt > 0 {
			select { // backoff for unprocessed keys (throttling), as the SDK documents
			case <-time.After(time.Duration(attempt*attempt) * 20 * time.Millisecond):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if attempt > 8 {
			return nil, errors.New("batch get: keys still unprocessed after 8 retries")
		}
		res, err := l.DDB.BatchGetItem(ctx, &dynamodb.BatchGetItemInput{RequestItems: req})
		if err != nil {
			return nil, err
		}
		out = append(out, res.Responses[l.Table]...)
		req = res.UnprocessedKeys
	}
	return out, nil
}

func (l *Ledger) query(ctx context.Context, pk, skPrefix string) ([]map[string]ddbtypes.AttributeValue, error) {
	in := &dynamodb.QueryInput{TableName: aws.String(l.Table), ConsistentRead: aws.Bool(true),
		KeyConditionExpression:    aws.String("pk = :pk"),
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":pk": s(pk)}}
	if skPrefix != "" {
		in.KeyConditionExpression = aws.String("pk = :pk AND begins_with(sk, :sk)")
		in.ExpressionAttributeValues[":sk"] = s(skPrefix)
	}
	var out []map[string]ddbtypes.AttributeValue
	p := dynamodb.NewQueryPaginator(l.DDB, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("query %s: %w", pk, err)
		}
		out = append(out, page.Items...)
	}
	return out, nil
}
