package controller

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/bansshee/bansshee/internal/awstest"
)

// queuePolicyRole returns the role id a queue's deny policy names ("" without one).
func queuePolicyRole(t *testing.T, e *env, url string) string {
	t.Helper()
	out, err := e.clients.SQS.GetQueueAttributes(t.Context(), &sqs.GetQueueAttributesInput{QueueUrl: aws.String(url), AttributeNames: []sqstypes.QueueAttributeName{"Policy"}})
	if err != nil {
		t.Fatal(err)
	}
	if out.Attributes["Policy"] == "" {
		return ""
	}
	var doc struct {
		Statement []struct {
			Condition map[string]map[string]string
		}
	}
	if err := json.Unmarshal([]byte(out.Attributes["Policy"]), &doc); err != nil || len(doc.Statement) != 1 {
		t.Fatalf("policy %q: %v", out.Attributes["Policy"], err)
	}
	role, _, _ := strings.Cut(doc.Statement[0].Condition["StringLike"]["aws:userid"], ":")
	return role
}

// Queue isolation cannot silently be off (issue 22, finding 1): a controller without
// --agent-role-id uses the id recorded in the ledger; without one it creates no queue and says
// how to record it; a policy naming another role (a recreated stack) or edited by hand is
// rewritten.
func TestQueuePoliciesComeFromTheLedger(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	c, err := New(Config{EC2: e.clients.EC2, SQS: e.clients.SQS, DDB: e.clients.DynamoDB, Signer: e.c.Signer, Table: awstest.Unique("bansshee"), Prefix: awstest.Unique("bansshee"),
		Now: e.c.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ledger.CreateTable(ctx); err != nil {
		t.Fatal(err)
	}
	id := e.launch(t, "mail1", map[string]string{"Role": "mail"})

	// No role id anywhere: no open queue, an error that says what to do.
	rep, err := c.ReconcileOnce(ctx)
	if len(rep.QueuesCreated) != 0 || !errors.Is(err, ErrNoAgentRole) || !strings.Contains(err.Error(), "--agent-role-id") {
		t.Fatalf("created %v, error %v: want no queue and an error naming --agent-role-id", rep.QueuesCreated, err)
	}
	if _, err := c.Queues.URL(ctx, id); !errors.Is(err, ErrNoQueue) {
		t.Fatalf("a queue without a policy exists: %v", err)
	}
	if res, err := c.Ban(ctx, BanRequest{CIDRs: []string{"198.51.100.1"}}); err != nil || len(res.Failed()) != 1 || !errors.Is(res.Failed()[0].Err, ErrNoAgentRole) {
		t.Fatalf("ban without a role id: %v %+v, want ErrNoAgentRole for the undelivered instance", err, res)
	}

	// The stack's Lambda recorded the role id: a controller without the flag uses it.
	if err := c.Ledger.RecordAgentRoleID(ctx, "AROAOLDSTACK"); err != nil {
		t.Fatal(err)
	}
	cli := func() *Controller {
		c2, err := New(Config{EC2: e.clients.EC2, SQS: e.clients.SQS, DDB: e.clients.DynamoDB, Signer: e.c.Signer, Table: c.Table, Prefix: c.Prefix, Now: e.c.Now})
		if err != nil {
			t.Fatal(err)
		}
		return c2
	}
	if rep, err = cli().ReconcileOnce(ctx); err != nil || len(rep.Errors) > 0 {
		t.Fatal(err, rep.Errors)
	}
	url, err := c.Queues.URL(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if got := queuePolicyRole(t, e, url); got != "AROAOLDSTACK" {
		t.Fatalf("queue policy names %q, want the ledger's AROAOLDSTACK", got)
	}

	// The stack was recreated: its Lambda records a new role id; the next pass rewrites the policy.
	if err := c.Ledger.RecordAgentRoleID(ctx, "AROANEWSTACK"); err != nil {
		t.Fatal(err)
	}
	if rep, err = cli().ReconcileOnce(ctx); err != nil || len(rep.Errors) > 0 {
		t.Fatal(err, rep.Errors)
	}
	if got := queuePolicyRole(t, e, url); got != "AROANEWSTACK" || !slices.Contains(rep.PoliciesRewritten, id) {
		t.Fatalf("after the role changed the policy names %q (rewritten %v)", got, rep.PoliciesRewritten)
	}

	// Someone removes the policy by hand: the live policy is compared at least every hour.
	if _, err := e.clients.SQS.SetQueueAttributes(ctx, &sqs.SetQueueAttributesInput{QueueUrl: aws.String(url), Attributes: map[string]string{"Policy": ""}}); err != nil {
		t.Fatal(err)
	}
	e.advance(PolicyCheckEvery + time.Minute)
	r2 := cli()
	if rep, err = r2.ReconcileOnce(ctx); err != nil || len(rep.Errors) > 0 {
		t.Fatal(err, rep.Errors)
	}
	if got := queuePolicyRole(t, e, url); got != "AROANEWSTACK" {
		t.Fatalf("a policy removed by hand was not restored: %q", got)
	}
	// Within the hour, with the role unchanged, no pass reads the policies again.
	e.aws.ResetOps()
	if _, err := r2.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if n := e.aws.Ops()["sqs:GetQueueAttributes"]; n != 0 {
		t.Fatalf("%d policy reads in a pass right after a check", n)
	}
}
