package awstest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go/logging"
)

func TestSQSFIFOSmoke(t *testing.T) {
	_, c := New(t)
	ctx := t.Context()
	q, err := c.SQS.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String("bansshee-i-1.fifo"),
		Attributes: map[string]string{"FifoQueue": "true", "VisibilityTimeout": "30"}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		_, err := c.SQS.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: q.QueueUrl, MessageBody: aws.String(fmt.Sprint("m", i)),
			MessageGroupId: aws.String("bans"), MessageDeduplicationId: aws.String(fmt.Sprint("d", i)),
			MessageAttributes: map[string]sqstypes.MessageAttributeValue{"bansshee-v": {DataType: aws.String("String"), StringValue: aws.String("1")}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	// A duplicate deduplication id is dropped by FIFO.
	_, _ = c.SQS.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: q.QueueUrl, MessageBody: aws.String("dup"), MessageGroupId: aws.String("bans"), MessageDeduplicationId: aws.String("d0")})
	var got []string
	for deadline := time.Now().Add(10 * time.Second); len(got) < 3 && time.Now().Before(deadline); {
		out, err := c.SQS.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: q.QueueUrl, WaitTimeSeconds: 1, MaxNumberOfMessages: 10, MessageAttributeNames: []string{"All"}})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range out.Messages {
			got = append(got, aws.ToString(m.Body))
			if v := m.MessageAttributes["bansshee-v"]; aws.ToString(v.StringValue) != "1" {
				t.Errorf("attribute lost: %+v", m.MessageAttributes)
			}
			if _, err := c.SQS.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: q.QueueUrl, ReceiptHandle: m.ReceiptHandle}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if fmt.Sprint(got) != "[m0 m1 m2]" {
		t.Fatalf("received %v, want [m0 m1 m2] in order", got)
	}
	out, err := c.SQS.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: q.QueueUrl, WaitTimeSeconds: 1})
	if err != nil || len(out.Messages) != 0 {
		t.Fatalf("queue not empty after deletes: %d messages, %v", len(out.Messages), err)
	}
}

func TestSQSRedriveToDLQ(t *testing.T) {
	_, c := New(t)
	ctx := t.Context()
	dlq, err := c.SQS.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String("bansshee-dlq.fifo"), Attributes: map[string]string{"FifoQueue": "true"}})
	if err != nil {
		t.Fatal(err)
	}
	attrs, err := c.SQS.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: dlq.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{"QueueArn"}})
	if err != nil {
		t.Fatal(err)
	}
	q, err := c.SQS.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String("bansshee-i-2.fifo"), Attributes: map[string]string{
		"FifoQueue": "true", "VisibilityTimeout": "0",
		"RedrivePolicy": fmt.Sprintf(`{"deadLetterTargetArn":"%s","maxReceiveCount":"2"}`, attrs.Attributes["QueueArn"])}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.SQS.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: q.QueueUrl, MessageBody: aws.String("poison"), MessageGroupId: aws.String("bans"), MessageDeduplicationId: aws.String("p")})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		_, _ = c.SQS.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: q.QueueUrl, WaitTimeSeconds: 0})
		out, err := c.SQS.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: dlq.QueueUrl, WaitTimeSeconds: 0})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Messages) == 1 && aws.ToString(out.Messages[0].Body) == "poison" {
			return
		}
	}
	t.Fatal("message never reached the DLQ")
}

func TestEC2TagsFiltersPagination(t *testing.T) {
	_, c := New(t)
	ctx := t.Context()
	var ids []string
	for i := 0; i < 12; i++ {
		role := "mail"
		if i%3 == 0 {
			role = "web"
		}
		id, err := Launch(ctx, c.EC2, map[string]string{"Role": role, "bansshee:managed": "true"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if _, err := c.EC2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: ids[:2], Tags: []ec2types.Tag{{Key: aws.String("Env"), Value: aws.String("dev")}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.EC2.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: ids[1:2]}); err != nil {
		t.Fatal(err)
	}
	p := ec2.NewDescribeInstancesPaginator(c.EC2, &ec2.DescribeInstancesInput{MaxResults: aws.Int32(5), Filters: []ec2types.Filter{
		{Name: aws.String("tag:Role"), Values: []string{"mail"}},
		{Name: aws.String("instance-state-name"), Values: []string{"running"}},
	}})
	var found, pages, devTagged int
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, r := range out.Reservations {
			for _, in := range r.Instances {
				found++
				for _, tag := range in.Tags {
					if aws.ToString(tag.Key) == "Env" {
						devTagged++
					}
				}
			}
		}
	}
	// 8 mail instances, one of them (ids[1], Env=dev) terminated.
	if found != 7 || pages != 2 || devTagged != 0 {
		t.Fatalf("found %d running mail instances on %d pages (%d dev-tagged), want 7 on 2 pages", found, pages, devTagged)
	}
	vpcs, err := c.EC2.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{})
	if err != nil || len(vpcs.Vpcs) != 1 || aws.ToString(vpcs.Vpcs[0].CidrBlockAssociationSet[0].CidrBlock) != "172.31.0.0/16" {
		t.Fatalf("DescribeVpcs: %+v %v", vpcs, err)
	}
	_, err = c.EC2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []ec2types.Filter{{Name: aws.String("bogus"), Values: []string{"x"}}}})
	if err == nil {
		t.Fatal("unknown filter accepted")
	}
}

func TestDynamoDBConditionalWrite(t *testing.T) {
	_, c := New(t)
	ctx := t.Context()
	_, err := c.DynamoDB.CreateTable(ctx, &dynamodb.CreateTableInput{TableName: aws.String("bansshee"), BillingMode: ddbtypes.BillingModePayPerRequest,
		AttributeDefinitions: []ddbtypes.AttributeDefinition{{AttributeName: aws.String("pk"), AttributeType: ddbtypes.ScalarAttributeTypeS}, {AttributeName: aws.String("sk"), AttributeType: ddbtypes.ScalarAttributeTypeS}},
		KeySchema:            []ddbtypes.KeySchemaElement{{AttributeName: aws.String("pk"), KeyType: ddbtypes.KeyTypeHash}, {AttributeName: aws.String("sk"), KeyType: ddbtypes.KeyTypeRange}}})
	if err != nil {
		t.Fatal(err)
	}
	item := map[string]ddbtypes.AttributeValue{"pk": &ddbtypes.AttributeValueMemberS{Value: "ban"}, "sk": &ddbtypes.AttributeValueMemberS{Value: "x"}}
	put := func() error {
		_, err := c.DynamoDB.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String("bansshee"), Item: item, ConditionExpression: aws.String("attribute_not_exists(pk)")})
		return err
	}
	if err := put(); err != nil {
		t.Fatal(err)
	}
	var ccf *ddbtypes.ConditionalCheckFailedException
	if err := put(); !errors.As(err, &ccf) {
		t.Fatalf("second conditional put: %v, want ConditionalCheckFailedException", err)
	}
}

// DynamoDB answers carry X-Amz-Crc32 of their body, as DynamoDB's do, and the SDK's check of it
// passes: no checksum warning from the SDK's logger, and a body changed in transit would fail it.
func TestDynamoDBResponsesCarryTheirCRC32(t *testing.T) {
	e, _ := New(t)
	var logged []string
	cfg := e.Config("")
	cfg.Logger = logging.LoggerFunc(func(_ logging.Classification, format string, v ...any) {
		logged = append(logged, fmt.Sprintf(format, v...))
	})
	ddb := dynamodb.NewFromConfig(cfg)
	ctx := t.Context()
	if _, err := ddb.CreateTable(ctx, &dynamodb.CreateTableInput{TableName: aws.String("crc"), BillingMode: ddbtypes.BillingModePayPerRequest,
		AttributeDefinitions: []ddbtypes.AttributeDefinition{{AttributeName: aws.String("pk"), AttributeType: ddbtypes.ScalarAttributeTypeS}},
		KeySchema:            []ddbtypes.KeySchemaElement{{AttributeName: aws.String("pk"), KeyType: ddbtypes.KeyTypeHash}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ddb.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String("crc"), Item: map[string]ddbtypes.AttributeValue{"pk": &ddbtypes.AttributeValueMemberS{Value: "a"}}}); err != nil {
		t.Fatal(err)
	}
	out, err := ddb.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String("crc"), Key: map[string]ddbtypes.AttributeValue{"pk": &ddbtypes.AttributeValueMemberS{Value: "a"}}})
	if err != nil || out.Item == nil {
		t.Fatalf("get: %v %v", out, err)
	}
	for _, l := range logged {
		if strings.Contains(l, "checksum") {
			t.Fatalf("the SDK's CRC32 check failed: %s", l)
		}
	}
}

func TestStopResume(t *testing.T) {
	e, c := New(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if _, err := c.SQS.ListQueues(ctx, &sqs.ListQueuesInput{}); err != nil {
		t.Fatal(err)
	}
	e.Stop()
	short, cancel2 := context.WithTimeout(ctx, 2*time.Second)
	defer cancel2()
	if _, err := c.SQS.ListQueues(short, &sqs.ListQueuesInput{}); err == nil {
		t.Fatal("request succeeded while stopped")
	}
	if err := e.Resume(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SQS.ListQueues(ctx, &sqs.ListQueuesInput{}); err != nil {
		t.Fatalf("after resume: %v", err)
	}
}

func TestRunInstancesIsIdempotentByClientToken(t *testing.T) {
	_, c := New(t)
	in := &ec2.RunInstancesInput{ImageId: aws.String("ami-1"), MinCount: aws.Int32(2), MaxCount: aws.Int32(2), ClientToken: aws.String("tok-1")}
	a, err := c.EC2.RunInstances(t.Context(), in)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.EC2.RunInstances(t.Context(), in)
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(a.Instances[0].InstanceId) != aws.ToString(b.Instances[0].InstanceId) {
		t.Fatal("a retry with the same ClientToken launched new instances")
	}
	out, err := c.EC2.DescribeInstances(t.Context(), &ec2.DescribeInstancesInput{})
	if err != nil || len(out.Reservations) != 2 {
		t.Fatalf("%d instances, want 2 (%v)", len(out.Reservations), err)
	}
}

// The front server refuses what SQS refuses: body and attributes together over 256 KiB. A
// message at the limit, and one whose request is long only from JSON escaping, pass.
func TestSQSMessageSizeLimit(t *testing.T) {
	_, c := New(t)
	ctx := t.Context()
	q, err := c.SQS.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String("bansshee-i-size.fifo"), Attributes: map[string]string{"FifoQueue": "true"}})
	if err != nil {
		t.Fatal(err)
	}
	attrs := map[string]sqstypes.MessageAttributeValue{"bansshee-sig": {DataType: aws.String("String"), StringValue: aws.String(strings.Repeat("s", 88))}}
	attrSize := len("bansshee-sig") + len("String") + 88
	send := func(body string) error {
		_, err := c.SQS.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: q.QueueUrl, MessageBody: aws.String(body), MessageAttributes: attrs,
			MessageGroupId: aws.String("bans"), MessageDeduplicationId: aws.String(fmt.Sprint(len(body), body[:1]))})
		return err
	}
	if err := send(strings.Repeat("a", MaxMessageSize-attrSize)); err != nil {
		t.Fatalf("a message at the limit: %v", err)
	}
	// Quotes are escaped in the request (2 bytes each): the request passes the limit, the message does not.
	if err := send(strings.Repeat(`"`, MaxMessageSize-attrSize)); err != nil {
		t.Fatalf("a message at the limit, escaped: %v", err)
	}
	err = send(strings.Repeat("b", MaxMessageSize-attrSize+1))
	if err == nil || !strings.Contains(err.Error(), "shorter than 262144") {
		t.Fatalf("a message one byte over the limit (attributes counted): %v", err)
	}
}

// The CLI's identity for the history (sts:GetCallerIdentity) and the ban notices (sns:Publish to
// a topic an SQS queue subscribes to), through the real SDK clients.
func TestSTSIdentityAndSNSToSQS(t *testing.T) {
	e, c := New(t)
	ctx := t.Context()
	stsc := sts.NewFromConfig(e.Config(""))
	id, err := stsc.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil || aws.ToString(id.Arn) == "" {
		t.Fatalf("default identity: %+v %v", id, err)
	}
	e.SetPrincipal("AKIDBANSSHEETEST", "AROAEXAMPLE:alice")
	if id, err = stsc.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{}); err != nil || !strings.HasSuffix(aws.ToString(id.Arn), "/AROAEXAMPLE:alice") {
		t.Fatalf("set identity: %+v %v", id, err)
	}
	topic, err := c.SNS.CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String(Unique("notices"))})
	if err != nil {
		t.Fatal(err)
	}
	q, err := c.SQS.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(Unique("notices"))})
	if err != nil {
		t.Fatal(err)
	}
	qa, err := c.SQS.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: q.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{"QueueArn"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.SNS.Subscribe(ctx, &sns.SubscribeInput{TopicArn: topic.TopicArn, Protocol: aws.String("sqs"), Endpoint: aws.String(qa.Attributes["QueueArn"]),
		Attributes: map[string]string{"RawMessageDelivery": "true"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SNS.Publish(ctx, &sns.PublishInput{TopicArn: topic.TopicArn, Subject: aws.String("bansshee"), Message: aws.String(`{"bans":3}`)}); err != nil {
		t.Fatal(err)
	}
	r, err := c.SQS.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: q.QueueUrl, WaitTimeSeconds: 2})
	if err != nil || len(r.Messages) != 1 || aws.ToString(r.Messages[0].Body) != `{"bans":3}` {
		t.Fatalf("published message in the queue: %+v %v", r.Messages, err)
	}
}
