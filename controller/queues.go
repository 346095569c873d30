package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/bansshee/bansshee/proto"
)

// Queues names, creates, finds and deletes the per-instance FIFO queues and the shared DLQ.
type Queues struct {
	SQS    *sqs.Client
	Prefix string // default "bansshee"
	// VisibilityTimeout of instance queues, seconds (default 30).
	VisibilityTimeout int
	// AgentRoleID is the agent role's unique id (AROA...; the stack's AgentRoleId output). Each
	// queue gets a resource policy that lets only its own instance's session read it. Empty: RoleID
	// is asked (the controller reads the id the stack's Lambda recorded in the ledger); without
	// either, no queue is created (ErrNoAgentRole), since an open queue would let any instance
	// read and delete another's bans.
	AgentRoleID string
	RoleID      func(context.Context) string
	// MaxReceiveCount before a message moves to the DLQ (default 5).
	MaxReceiveCount int

	dlqMu  sync.Mutex // EnsureDLQ runs from many reconcile goroutines at once
	dlqArn string
}

// TagInstance is the queue tag that names the instance a queue belongs to.
const TagInstance = "bansshee:instance-id"

func (q *Queues) prefix() string {
	if q.Prefix == "" {
		return "bansshee"
	}
	return q.Prefix
}

// QueueName is the queue of an instance: <prefix>-<instance-id>.fifo.
func (q *Queues) QueueName(instanceID string) string {
	return q.prefix() + "-" + instanceID + ".fifo"
}

// DLQName is the shared dead-letter queue: <prefix>-dlq.fifo.
func (q *Queues) DLQName() string { return q.prefix() + "-dlq.fifo" }

// EnsureDLQ creates the shared DLQ if needed and remembers its ARN.
func (q *Queues) EnsureDLQ(ctx context.Context) (string, error) {
	q.dlqMu.Lock()
	defer q.dlqMu.Unlock()
	if q.dlqArn != "" {
		return q.dlqArn, nil
	}
	// The stack creates the DLQ; only a controller without one (tests, `bansshee init`) makes it,
	// so the Lambda needs no CreateQueue permission on it.
	url := ""
	if got, err := q.SQS.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(q.DLQName())}); err == nil {
		url = aws.ToString(got.QueueUrl)
	} else {
		out, err := q.SQS.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(q.DLQName()),
			Attributes: map[string]string{"FifoQueue": "true", "MessageRetentionPeriod": "1209600", "MaximumMessageSize": strconv.Itoa(proto.MaxBodyBytes)}})
		if err != nil {
			return "", fmt.Errorf("create DLQ %s: %w", q.DLQName(), err)
		}
		url = aws.ToString(out.QueueUrl)
	}
	attrs, err := q.SQS.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: aws.String(url),
		AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn}})
	if err != nil {
		return "", fmt.Errorf("read DLQ ARN: %w", err)
	}
	q.dlqArn = attrs.Attributes["QueueArn"]
	return q.dlqArn, nil
}

// queuePolicy is the queue's resource policy: it denies reading the queue to every session of the
// agent role but the one of this instance. An instance-profile session's aws:userid is
// "<role id>:<instance id>" (IAM User Guide, "IAM policy elements: Variables and tags", request
// information table), so the policy needs no policy variable; the explicit deny wins over the
// agent role's Allow on every instance queue.
func (q *Queues) queuePolicyFor(instanceID, role string) string {
	doc := map[string]any{"Version": "2012-10-17", "Statement": []any{map[string]any{
		"Sid": "OnlyThisInstanceReads", "Effect": "Deny", "Principal": "*",
		"Action":    []string{"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"},
		"Resource":  "*",
		"Condition": map[string]any{"StringLike": map[string]string{"aws:userid": role + ":*"}, "StringNotEquals": map[string]string{"aws:userid": role + ":" + instanceID}},
	}}}
	b, _ := json.Marshal(doc)
	return string(b)
}

// ErrNoAgentRole is returned when a queue would be created without the agent role's id, so
// without the policy that keeps other instances out of it.
var ErrNoAgentRole = errors.New("no agent role id: record the stack's AgentRoleId output once with `bansshee init --agent-role-id AROA...` (or run with --agent-role-id / BANSSHEE_AGENT_ROLE_ID); the stack's Lambda records it by itself")

// Role returns the agent role id queue policies name: AgentRoleID, else RoleID's.
func (q *Queues) Role(ctx context.Context) string {
	if q.AgentRoleID != "" || q.RoleID == nil {
		return q.AgentRoleID
	}
	return q.RoleID(ctx)
}

// samePolicy compares two policy documents as JSON values (SQS may return them reformatted).
func samePolicy(a, b string) bool {
	var x, y any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

// CheckPolicy compares an instance's queue policy with the one for role and rewrites it when it
// differs (a recreated stack's new role id, a hand edit). It reports whether it rewrote it.
func (q *Queues) CheckPolicy(ctx context.Context, instanceID, url, role string) (bool, error) {
	out, err := q.SQS.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: aws.String(url),
		AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNamePolicy}})
	if err != nil {
		return false, fmt.Errorf("read queue policy of %s: %w", instanceID, err)
	}
	want := q.queuePolicyFor(instanceID, role)
	if samePolicy(out.Attributes["Policy"], want) {
		return false, nil
	}
	if _, err := q.SQS.SetQueueAttributes(ctx, &sqs.SetQueueAttributesInput{QueueUrl: aws.String(url), Attributes: map[string]string{"Policy": want}}); err != nil {
		return false, fmt.Errorf("rewrite queue policy of %s: %w", instanceID, err)
	}
	return true, nil
}

// Ensure creates an instance's queue (FIFO, tagged, redrive to the DLQ, the deny policy) if
// needed and returns its URL. CreateQueue is idempotent for identical attributes.
func (q *Queues) Ensure(ctx context.Context, instanceID string) (string, error) {
	role := q.Role(ctx)
	if role == "" {
		return "", fmt.Errorf("create queue for %s: %w", instanceID, ErrNoAgentRole)
	}
	dlq, err := q.EnsureDLQ(ctx)
	if err != nil {
		return "", err
	}
	attrs := map[string]string{
		"FifoQueue":              "true",
		"MessageRetentionPeriod": "345600",
		"MaximumMessageSize":     strconv.Itoa(proto.MaxBodyBytes), // explicit: what SplitSync sizes parts for
	}
	attrs["Policy"] = q.queuePolicyFor(instanceID, role)
	vis, maxRecv := q.VisibilityTimeout, q.MaxReceiveCount
	if vis == 0 {
		vis = 30
	}
	if maxRecv == 0 {
		maxRecv = 5
	}
	out, err := q.SQS.CreateQueue(ctx, &sqs.CreateQueueInput{
		QueueName: aws.String(q.QueueName(instanceID)),
		Attributes: func() map[string]string {
			attrs["VisibilityTimeout"] = strconv.Itoa(vis)
			attrs["RedrivePolicy"] = fmt.Sprintf(`{"deadLetterTargetArn":"%s","maxReceiveCount":"%d"}`, dlq, maxRecv)
			return attrs
		}(),
		Tags: map[string]string{TagInstance: instanceID, "bansshee:managed": "true"},
	})
	if err != nil {
		return "", fmt.Errorf("create queue for %s: %w", instanceID, err)
	}
	return aws.ToString(out.QueueUrl), nil
}

// URL finds an instance's queue. It returns ErrNoQueue when the queue does not exist.
func (q *Queues) URL(ctx context.Context, instanceID string) (string, error) {
	out, err := q.SQS.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(q.QueueName(instanceID))})
	if err != nil {
		var nq *sqstypes.QueueDoesNotExist
		if errors.As(err, &nq) || strings.Contains(err.Error(), "NonExistentQueue") {
			return "", fmt.Errorf("%w: %s", ErrNoQueue, q.QueueName(instanceID))
		}
		return "", err
	}
	return aws.ToString(out.QueueUrl), nil
}

// ErrNoQueue is returned by URL for an instance without a queue.
var ErrNoQueue = errors.New("queue does not exist")

// List returns the instance ids that have a queue, from queue names.
func (q *Queues) List(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	p := sqs.NewListQueuesPaginator(q.SQS, &sqs.ListQueuesInput{QueueNamePrefix: aws.String(q.prefix() + "-i-"), MaxResults: aws.Int32(1000)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list queues: %w", err)
		}
		for _, u := range page.QueueUrls {
			name := u[strings.LastIndex(u, "/")+1:]
			id := strings.TrimSuffix(strings.TrimPrefix(name, q.prefix()+"-"), ".fifo")
			if strings.HasPrefix(id, "i-") {
				out[id] = u
			}
		}
	}
	return out, nil
}

// Delete removes a queue by URL.
func (q *Queues) Delete(ctx context.Context, url string) error {
	_, err := q.SQS.DeleteQueue(ctx, &sqs.DeleteQueueInput{QueueUrl: aws.String(url)})
	return err
}

// Send signs m and sends it to queueURL, in the one FIFO group "bans", deduplicated by message id.
func Send(ctx context.Context, c *sqs.Client, signer proto.Signer, queueURL string, m *proto.Message) error {
	body, attrs, err := signer.Encode(m)
	if err != nil {
		return err
	}
	return SendRaw(ctx, c, queueURL, m.ID, body, attrs)
}

// SendRaw sends an already encoded body with its attributes.
func SendRaw(ctx context.Context, c *sqs.Client, queueURL, dedupID string, body []byte, attrs map[string]string) error {
	ma := make(map[string]sqstypes.MessageAttributeValue, len(attrs))
	for k, v := range attrs {
		ma[k] = sqstypes.MessageAttributeValue{DataType: aws.String("String"), StringValue: aws.String(v)}
	}
	_, err := c.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: aws.String(queueURL), MessageBody: aws.String(string(body)),
		MessageAttributes: ma, MessageGroupId: aws.String("bans"), MessageDeduplicationId: aws.String(dedupID)})
	if err != nil {
		return fmt.Errorf("send to %s: %w", queueURL, err)
	}
	return nil
}
