package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/bansshee/bansshee/internal/awstest"
	"github.com/bansshee/bansshee/proto"
)

// An allow entry lifts the bans it covers on every instance that held them, and no ban path
// (operator, trigger, forced) can ban what it covers afterwards; too broad an entry needs --force,
// and broader than /8 none is taken.
func TestAllowLiftsBansAndRefusesEveryPath(t *testing.T) {
	e := newEnv(t)
	e.fleet6(t)
	ctx := t.Context()
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"198.51.100.7", "198.51.100.200"}, Target: "Role=mail", TTL: time.Hour, Reason: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"198.51.100.9"}, Target: "Role=web", TTL: time.Hour, Reason: "y"}); err != nil {
		t.Fatal(err)
	}
	for _, id := range e.ids {
		e.drain(t, id)
	}
	for _, c := range []struct {
		req  AllowRequest
		want string
	}{
		{AllowRequest{CIDR: "198.51.100.0/25"}, "--reason is required"},
		{AllowRequest{CIDR: "10.0.0.0/12", Reason: "r"}, "give --force"},
		{AllowRequest{CIDR: "10.0.0.0/7", Reason: "r", Force: true}, "broader than the minimum /8"},
		{AllowRequest{CIDR: "not-an-address", Reason: "r"}, "not an IP address"},
	} {
		if _, err := e.c.Allow(ctx, c.req); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("allow %+v: %v, want a refusal saying %q", c.req, err, c.want)
		}
	}
	res, err := e.c.Allow(ctx, AllowRequest{CIDR: "198.51.100.0/25", Reason: "partner NAT", Who: "arn:aws:iam::1:user/alice"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Tombstoned) != 2 {
		t.Fatalf("lifted %+v, want the two bans inside the /25", res.Tombstoned)
	}
	for name, id := range e.ids {
		msgs := e.drain(t, id)
		var unbans []string
		for _, m := range msgs {
			if m.Kind == proto.KindUnban {
				for _, u := range m.Unbans {
					unbans = append(unbans, u.ID)
				}
			}
		}
		want := ""
		if strings.HasPrefix(name, "mail") {
			want = "b-198.51.100.7_32"
		} else if strings.HasPrefix(name, "web") {
			want = "b-198.51.100.9_32"
		}
		if (want == "") != (len(unbans) == 0) || want != "" && !strings.Contains(strings.Join(unbans, ","), want) {
			t.Errorf("%s got unbans %v, want %q", name, unbans, want)
		}
	}
	bans, err := e.c.Ledger.BansToList(ctx, e.c.Now())
	if err != nil || len(bans) != 1 || bans[0].CIDR != "198.51.100.200/32" {
		t.Fatalf("ledger after allow: %+v %v", bans, err)
	}
	// Every path refuses what it covers: the CLI's (with --force too), the triggers'.
	for _, force := range []bool{false, true} {
		if _, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"198.51.100.7"}, Target: "*", TTL: time.Hour, Force: force}); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "allow entry 198.51.100.0/25") {
			t.Errorf("ban (force %v) of an allowed address: %v", force, err)
		}
	}
	ok, refused, err := e.c.FilterCIDRs(ctx, []string{"198.51.100.0/24", "198.51.100.201"})
	if err != nil || len(ok) != 1 || ok[0].String() != "198.51.100.201/32" || refused["198.51.100.0/24"] == nil {
		t.Fatalf("filter: %v %v %v", ok, refused, err)
	}
	// Removing it lets bans through again; both changes are in the history with who made them.
	if _, err := e.c.RemoveAllow(ctx, "198.51.100.0/25", "arn:aws:iam::1:user/bob", "contract ended"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.RemoveAllow(ctx, "198.51.100.0/25", "bob", ""); !errors.Is(err, ErrRefused) {
		t.Fatalf("second removal: %v", err)
	}
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"198.51.100.7"}, Target: "*", TTL: time.Hour}); err != nil {
		t.Fatalf("ban after allow rm: %v", err)
	}
	events, err := e.c.History(ctx, netip.MustParsePrefix("198.51.100.7/32"), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, ev := range events {
		kinds = append(kinds, ev.Kind+":"+ev.Who)
	}
	want := "ban:,allow:arn:aws:iam::1:user/alice,unban:arn:aws:iam::1:user/alice,allow-rm:arn:aws:iam::1:user/bob,ban:"
	if strings.Join(kinds, ",") != want {
		t.Fatalf("history %v, want %s", kinds, want)
	}
}

// An unban of a trigger's ban holds the CIDR for an hour by default: triggers cannot ban it
// again, an operator can with --force, and after the hold anyone can.
func TestUnbanHoldsAgainstTriggers(t *testing.T) {
	e := newEnv(t)
	e.fleet6(t)
	ctx := t.Context()
	jail := BanRequest{CIDRs: []string{"192.0.2.50"}, Target: "Role=mail", TTL: time.Hour, Reason: "5 failures", Source: "lambda:jail/sshd", Trigger: "jail/sshd", Who: "jail/sshd"}
	if _, err := e.c.Ban(ctx, jail); err != nil {
		t.Fatal(err)
	}
	res, err := e.c.UnbanWith(ctx, UnbanRequest{CIDRs: []string{"192.0.2.50"}, Hold: -1, Who: "alice", Reason: "customer"})
	if err != nil || res.Written != 1 || res.Hold != DefaultHold {
		t.Fatalf("unban: %+v %v", res, err)
	}
	if _, refused, _ := e.c.FilterCIDRs(ctx, []string{"192.0.2.50"}); refused["192.0.2.50"] == nil || !strings.Contains(refused["192.0.2.50"].Error(), "held until") {
		t.Fatalf("a trigger may ban a held CIDR: %v", refused)
	}
	if _, err := e.c.Ban(ctx, jail); !errors.Is(err, ErrRefused) {
		t.Fatalf("trigger ban of a held CIDR: %v", err)
	}
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"192.0.2.50"}, Target: "Role=mail", TTL: time.Hour}); !errors.Is(err, ErrRefused) {
		t.Fatalf("operator ban of a held CIDR without --force: %v", err)
	}
	if r, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"192.0.2.50"}, Target: "Role=mail", TTL: time.Hour, Force: true}); err != nil || r.Written != 1 {
		t.Fatalf("operator ban with --force: %+v %v", r, err)
	}
	// An operator's ban lifted without --hold leaves none; --hold 0 none either.
	if r, err := e.c.UnbanWith(ctx, UnbanRequest{CIDRs: []string{"192.0.2.60"}, Hold: -1}); err != nil || r.Hold != 0 {
		t.Fatalf("unban of nothing: %+v %v", r, err)
	}
	e.advance(DefaultHold + time.Minute)
	e.c.invalidatePolicies()
	if _, refused, _ := e.c.FilterCIDRs(ctx, []string{"192.0.2.50"}); len(refused) != 0 {
		t.Fatalf("hold outlived its hour: %v", refused)
	}
	// An explicit hold is exact, and the unban says who and why in the history.
	if _, err := e.c.UnbanWith(ctx, UnbanRequest{CIDRs: []string{"192.0.2.50"}, Hold: 24 * time.Hour, Who: "bob", Reason: "ticket 9"}); err != nil {
		t.Fatal(err)
	}
	holds, _ := e.c.Ledger.Holds(ctx, e.c.Now())
	if len(holds) != 1 || holds[0].Expires().Sub(e.c.Now()) < 23*time.Hour || holds[0].Who != "bob" {
		t.Fatalf("holds %+v", holds)
	}
	events, _ := e.c.History(ctx, netip.MustParsePrefix("192.0.2.50/32"), time.Time{})
	last := events[len(events)-1]
	if last.Kind != EventUnban || last.Who != "bob" || last.Reason != "ticket 9" || last.Hold != "24h0m0s" {
		t.Fatalf("last event %+v", last)
	}
}

// The n-th trigger ban of an address within Forget lasts base × 2^(n-1), at most Max; an
// operator's TTL is exact; simulate bans nothing and counts no offence.
func TestRepeatOffendersAndSimulate(t *testing.T) {
	e := newEnv(t)
	e.fleet6(t)
	ctx := t.Context()
	base := 10 * time.Minute
	jail := func() *Result {
		t.Helper()
		r, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"192.0.2.77"}, Target: "Role=mail", TTL: base, Source: "lambda:jail/sshd", Trigger: "jail/sshd",
			Cause: &Cause{Jail: "sshd", LogGroup: "/var/log/secure", LogStream: "i-1", Count: 5, Window: "10m0s"}})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	expiry := func() time.Duration {
		bans, err := e.c.Ledger.BansToList(ctx, e.c.Now())
		if err != nil || len(bans) != 1 {
			t.Fatalf("bans %+v %v", bans, err)
		}
		return bans[0].Expires().Sub(e.c.Now().Truncate(time.Second))
	}
	sim, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"192.0.2.77"}, Target: "Role=mail", TTL: base, Source: "lambda:jail/sim", Trigger: "jail/sim", Simulate: true})
	if err != nil || len(sim.Simulated) != 1 || sim.Written != 0 {
		t.Fatalf("simulate: %+v %v", sim, err)
	}
	if bans, _ := e.c.Ledger.BansToList(ctx, e.c.Now()); len(bans) != 0 {
		t.Fatalf("simulate wrote %+v", bans)
	}
	for n, want := range []time.Duration{base, 2 * base, 4 * base} {
		jail()
		if got := expiry(); got < want-time.Second || got > want+time.Second {
			t.Fatalf("offence %d: ban lasts %s, want %s", n+1, got, want)
		}
		e.advance(time.Hour) // the ban expires before the next offence
	}
	e.c.Repeat.Max = 30 * time.Minute
	jail()
	if got := expiry(); got > 30*time.Minute+time.Second {
		t.Fatalf("offence 4 lasts %s, more than Max", got)
	}
	e.advance(time.Hour)
	// An operator's TTL stays exact.
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"192.0.2.77"}, Target: "Role=mail", TTL: base}); err != nil {
		t.Fatal(err)
	}
	if got := expiry(); got > base+time.Second {
		t.Fatalf("operator's ban lasts %s, want %s", got, base)
	}
	e.advance(time.Hour)
	// After Forget, the count starts again.
	e.advance(e.c.Repeat.Forget)
	jail()
	if got := expiry(); got > base+time.Second {
		t.Fatalf("first offence after forget lasts %s", got)
	}
	// why and history show the simulate verdict, the bans' causes and their expiries.
	rep, err := e.c.Why(ctx, "192.0.2.77")
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Bans) != 1 || rep.Bans[0].Cause == nil || rep.Bans[0].Cause.LogStream != "i-1" || rep.Bans[0].Trigger != "jail/sshd" || rep.Bans[0].Targeted != 4 {
		t.Fatalf("why bans %+v", rep.Bans)
	}
	kinds := map[string]int{}
	for _, ev := range rep.History {
		kinds[ev.Kind]++
	}
	if kinds[EventSimulate] != 1 || kinds[EventBan] != 6 || kinds[EventExpire] != 5 {
		t.Fatalf("history kinds %v", kinds)
	}
}

// The history of an address includes the bans of the prefixes that cover it, and broad prefixes.
func TestHistoryCoversPrefixes(t *testing.T) {
	e := newEnv(t)
	e.fleet6(t)
	ctx := t.Context()
	for _, c := range []string{"198.18.5.0/24", "198.18.5.9", "198.18.6.1"} {
		if _, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{c}, Target: "*", TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"198.0.0.0/11"}, Target: "*", TTL: time.Hour, Force: true}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		q    string
		want int
	}{{"198.18.5.9/32", 3}, {"198.18.6.0/24", 2}, {"198.16.0.0/12", 4}, {"203.0.113.1/32", 0}} {
		events, err := e.c.History(ctx, netip.MustParsePrefix(c.q), time.Time{})
		if err != nil || len(events) != c.want {
			t.Errorf("history %s: %d events (%v), want %d", c.q, len(events), err, c.want)
		}
	}
	all, err := e.c.History(ctx, netip.Prefix{}, e.c.Now().Add(-time.Hour))
	if err != nil || len(all) != 4 {
		t.Fatalf("all history: %d %v", len(all), err)
	}
}

// snsPublisher is the CLI's and the Lambda's publisher, in the test's package.
type snsPublisher struct{ c *sns.Client }

func (p snsPublisher) Publish(ctx context.Context, topic, subject, message string) error {
	_, err := p.c.Publish(ctx, &sns.PublishInput{TopicArn: aws.String(topic), Subject: aws.String(subject), Message: aws.String(message)})
	return err
}

// noticeQueue makes an SNS topic with an SQS queue subscribed (the real SDK clients against the
// emulator), and returns the topic and a function that reads what reached the queue.
func noticeQueue(t *testing.T, e *env) (string, func() []Notice) {
	t.Helper()
	ctx := t.Context()
	topic, err := e.clients.SNS.CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String(awstest.Unique("notices"))})
	if err != nil {
		t.Fatal(err)
	}
	q, err := e.clients.SQS.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(awstest.Unique("notices"))})
	if err != nil {
		t.Fatal(err)
	}
	qa, err := e.clients.SQS.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: q.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{"QueueArn"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.clients.SNS.Subscribe(ctx, &sns.SubscribeInput{TopicArn: topic.TopicArn, Protocol: aws.String("sqs"), Endpoint: aws.String(qa.Attributes["QueueArn"]),
		Attributes: map[string]string{"RawMessageDelivery": "true"}}); err != nil {
		t.Fatal(err)
	}
	read := func() []Notice {
		t.Helper()
		var out []Notice
		r, err := e.clients.SQS.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: q.QueueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range r.Messages {
			body := aws.ToString(m.Body)
			var env struct{ Message string }
			if json.Unmarshal([]byte(body), &env) == nil && env.Message != "" {
				body = env.Message // not raw: the SNS envelope
			}
			var n Notice
			if err := json.Unmarshal([]byte(body), &n); err != nil {
				t.Fatalf("notice %q: %v", body, err)
			}
			out = append(out, n)
			_, _ = e.clients.SQS.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: q.QueueUrl, ReceiptHandle: m.ReceiptHandle})
		}
		return out
	}
	return aws.ToString(topic.TopicArn), read
}

// Ban and unban notices reach the SNS topic batched: the first at once, the rest at most one
// per 30 s, with the counts and the first addresses; nothing is counted twice or lost.
func TestNoticesAreBatched(t *testing.T) {
	e := newEnv(t)
	e.fleet6(t)
	ctx := t.Context()
	topic, read := noticeQueue(t, e)
	e.c.NoticeTopic, e.c.SNS = topic, snsPublisher{e.clients.SNS}
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"192.0.2.1"}, Target: "*", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	first := read()
	if len(first) != 1 || first[0].Bans != 1 || len(first[0].First) != 1 || first[0].First[0] != "ban 192.0.2.1/32" {
		t.Fatalf("first notice %+v", first)
	}
	var cidrs []string
	for i := 0; i < 30; i++ {
		cidrs = append(cidrs, fmt.Sprintf("192.0.2.%d", 100+i))
	}
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: cidrs, Target: "*", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.UnbanWith(ctx, UnbanRequest{CIDRs: []string{"192.0.2.1"}, Hold: 0}); err != nil {
		t.Fatal(err)
	}
	if got := read(); len(got) != 0 {
		t.Fatalf("a second notice within 30 s: %+v", got)
	}
	if sent, err := e.c.FlushNotices(ctx); sent || err != nil {
		t.Fatalf("flush within 30 s: %v %v", sent, err)
	}
	e.advance(NoticeInterval)
	if sent, err := e.c.FlushNotices(ctx); !sent || err != nil {
		t.Fatalf("flush after 30 s: %v %v", sent, err)
	}
	second := read()
	if len(second) != 1 || second[0].Bans != 30 || second[0].Unbans != 1 || len(second[0].First) != NoticeAddrs || !second[0].Partial {
		t.Fatalf("second notice %+v", second)
	}
	if sent, _ := e.c.FlushNotices(ctx); sent {
		t.Fatal("an empty notice was sent")
	}
}

func TestParseRepeat(t *testing.T) {
	r, err := ParseRepeat("factor=3, forget=10d")
	if err != nil || r.Factor != 3 || r.Max != 7*24*time.Hour || r.Forget != 240*time.Hour {
		t.Fatalf("%+v %v", r, err)
	}
	if r.TTL(time.Hour, 3) != 9*time.Hour || r.TTL(time.Hour, 10) != r.Max || r.TTL(10*24*time.Hour, 2) != 10*24*time.Hour {
		t.Fatalf("TTLs %s %s %s", r.TTL(time.Hour, 3), r.TTL(time.Hour, 10), r.TTL(10*24*time.Hour, 2))
	}
	for spec, want := range map[string]string{"factor=0.5": "not between 1 and 100", "max=-1h": "positive", "forget=x": "want a positive duration",
		"speed=2": "unknown setting", "factor": "want factor=F"} {
		if _, err := ParseRepeat(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", spec, err, want)
		}
	}
}
