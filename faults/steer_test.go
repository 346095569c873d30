package faults

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/controller/trigger"
	"github.com/bansshee/bansshee/internal/awstest"
	"github.com/bansshee/bansshee/internal/cli"
)

// kernelSet reads a set's members, with their timeouts (0: none), from a node's kernel.
func (r *rig) kernelSet(n interface {
	Run(string, ...string) (string, error)
}, set string) map[string]int {
	r.t.Helper()
	text, err := n.Run("ipset", "save", set)
	if err != nil {
		r.t.Fatal(err)
	}
	out := map[string]int{}
	for _, l := range strings.Split(text, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[0] == "add" {
			timeout := 0
			for i := 3; i+1 < len(f); i++ {
				if f[i] == "timeout" {
					timeout, _ = strconv.Atoi(f[i+1])
				}
			}
			out[f[2]] = timeout
		}
	}
	return out
}

// waitAll polls until cond holds on every node's kernel.
func (r *rig) waitAll(what string, limit time.Duration, cond func(bans map[string]bool) bool) time.Duration {
	r.t.Helper()
	start := time.Now()
	for _, n := range r.Nodes() {
		for !cond(r.kernelBans(n)) {
			if time.Since(start) > limit {
				r.t.Fatalf("%s: %s not within %s; kernel bans %v", n.ID, what, limit, r.kernelBans(n))
			}
			time.Sleep(50 * time.Millisecond) // polling interval
		}
	}
	return time.Since(start)
}

// The operators' steering, end to end: the emulator, the real CLI binary, the trigger handler
// and real agents in network namespaces, every step checked in the kernels.
func TestOperatorsSteerTheBans(t *testing.T) {
	r := newRig(t, 2)
	ctx := t.Context()
	start := time.Now()
	// The in-process controller is the trigger Lambda's. It sees the CLI's writes (another
	// process) within PolicyCache; here at once, so the test need not wait out the cache.
	r.c.PolicyCache = time.Nanosecond

	// Ban notices: an SNS topic with a queue subscribed, through the real SDK clients.
	snsc := sns.NewFromConfig(r.Env.Config(""))
	topic, err := snsc.CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String(awstest.Unique("notices"))})
	if err != nil {
		t.Fatal(err)
	}
	nq, err := r.Clients.SQS.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(awstest.Unique("notices"))})
	if err != nil {
		t.Fatal(err)
	}
	nqa, err := r.Clients.SQS.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: nq.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{"QueueArn"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snsc.Subscribe(ctx, &sns.SubscribeInput{TopicArn: topic.TopicArn, Protocol: aws.String("sqs"), Endpoint: aws.String(nqa.Attributes["QueueArn"]),
		Attributes: map[string]string{"RawMessageDelivery": "true"}}); err != nil {
		t.Fatal(err)
	}
	r.c.NoticeTopic, r.c.SNS = aws.ToString(topic.TopicArn), cli.NewPublisher(r.Env.Config(""))

	// The CLI, built and run as operators run it.
	dir := t.TempDir()
	bin := filepath.Join(dir, "bansshee")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/bansshee/bansshee/cmd/bansshee").CombinedOutput(); err != nil {
		t.Fatalf("build: %v %s", err, out)
	}
	key := filepath.Join(dir, "k")
	if err := os.WriteFile(key, []byte(r.Signer.MarshalPrivate()), 0o600); err != nil {
		t.Fatal(err)
	}
	bansshee := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append(args, "--key", key, "--table", r.table, "--queue-prefix", r.Queues.Prefix, "--endpoint-url", r.Env.URL(),
			"--region", awstest.Region, "--notice-topic", aws.ToString(topic.TopicArn))...)
		cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID=AKIDBANSSHEETEST", "AWS_SECRET_ACCESS_KEY=secret", "AWS_EC2_METADATA_DISABLED=true", "USER=alice")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("bansshee %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	cfg, err := trigger.ParseConfig([]byte(`{"jails":[
		{"name":"cyrus","builtin":"cyrus","maxretry":2,"bantime":"10m","target":"Role=mail"},
		{"name":"imap-trial","builtin":"dovecot","maxretry":1,"bantime":"10m","target":"Role=mail","mode":"simulate"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	h := &trigger.Handler{Cfg: cfg, Counter: &trigger.LedgerCounter{DDB: r.Clients.DynamoDB, Table: r.table}, Actor: r.c}
	fail := func(addr string, n int) *trigger.Output {
		t.Helper()
		var lines []string
		for i := 0; i < n; i++ {
			lines = append(lines, fmt.Sprintf("pop3[%d]: badlogin: host [%s] plaintext user SASL(-13): authentication failure", 4000+i, addr))
		}
		out, err := h.Handle(ctx, trigger.EncodeLogsEvent("/var/log/maillog", lines))
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	const A, B, C, D = "198.51.100.10", "203.0.113.77", "192.0.2.33", "100.64.9.9"
	has := func(cidr string) func(map[string]bool) bool { return func(b map[string]bool) bool { return b[cidr] } }
	lacks := func(cidr string) func(map[string]bool) bool { return func(b map[string]bool) bool { return !b[cidr] } }

	// 1. A jail bans A.
	if out := fail(A, 2); len(out.Bans) != 1 {
		t.Fatalf("jail decisions %+v", out)
	}
	r.waitAll("A banned", 10*time.Second, has(A+"/32"))

	// 2. unban A --hold 1h lifts it; more failures from A within the hour do not ban it again.
	if out := bansshee("unban", A, "--hold", "1h", "--reason", "customer's NAT"); !strings.Contains(out, "held for 1h0m0s") {
		t.Fatalf("unban output:\n%s", out)
	}
	r.waitAll("A lifted", 10*time.Second, lacks(A+"/32"))
	out := fail(A, 3)
	if len(out.Bans) != 0 || !strings.Contains(fmt.Sprint(out.Ignored), "held until") {
		t.Fatalf("a held address was banned again: %+v", out)
	}

	// 3. allow add of a range holding B lifts B's ban (a jail's and a feed's) within 2 s; a feed
	// that lists B does not reach the kernel; the range is in every kernel's allow set.
	var mu sync.Mutex
	body := "# intel\n" + B + "\n198.18.0.1\n"
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		_, _ = w.Write([]byte(body))
	}))
	defer srv.Close()
	r.c.FeedClient = srv.Client()
	if _, err := r.c.AddFeed(ctx, controller.FeedSpec{Name: "intel", URL: srv.URL + "/intel", Target: "Role=mail"}); err != nil {
		t.Fatal(err)
	}
	if rep, err := r.c.SyncFeed(ctx, "intel", controller.FeedOptions{}); err != nil || rep.Err != nil {
		t.Fatalf("feed: %v %s", err, rep)
	}
	fail(B, 2)
	r.waitAll("B banned by the jail and the feed", 10*time.Second, func(b map[string]bool) bool { return b[B+"/32"] && b["198.18.0.1/32"] })
	allowAt := time.Now()
	bansshee("allow", "add", "203.0.113.0/24", "--reason", "partner's mail relays")
	r.waitAll("B lifted", 5*time.Second, lacks(B+"/32"))
	lifted := time.Since(allowAt) // from the command's start: the CLI's own start-up included
	if lifted > 2*time.Second {
		t.Fatalf("allow add lifted B after %s, want within 2 s", lifted)
	}
	t.Logf("allow add: B out of every kernel %s after the command started", lifted.Round(time.Millisecond))
	for _, n := range r.Nodes() {
		deadline := time.Now().Add(5 * time.Second)
		for !hasKey(r.kernelSet(n.Host, "bansshee-allow4"), "203.0.113.0/24") {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the allow entry is not in the kernel allow set: %v", n.ID, r.kernelSet(n.Host, "bansshee-allow4"))
			}
			time.Sleep(50 * time.Millisecond) // polling interval
		}
	}
	mu.Lock()
	body = "# intel\n" + B + "\n198.18.0.1\n198.18.0.2\n"
	mu.Unlock()
	if rep, err := r.c.SyncFeed(ctx, "intel", controller.FeedOptions{Force: true}); err != nil || rep.Err != nil || len(rep.Dropped) != 1 {
		t.Fatalf("feed after allow: %v %s", err, rep)
	}
	r.waitAll("the feed's new entry", 10*time.Second, has("198.18.0.2/32"))
	r.waitAll("B still out", time.Second, lacks(B+"/32"))
	if out := fail(B, 2); len(out.Bans) != 0 {
		t.Fatalf("a jail banned an allowed address: %+v", out)
	}

	// 4. The third offence of C within forget lasts 4 × the base (10 min): in the ledger and in
	// the kernels' timeouts.
	for i := 1; i <= 3; i++ {
		if out := fail(C, 2); len(out.Bans) != 1 {
			t.Fatalf("offence %d: %+v", i, out)
		}
	}
	bans, err := r.c.Ledger.BansToList(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bans {
		if b.CIDR == C+"/32" {
			if d := time.Until(b.Expires()); d < 39*time.Minute || d > 41*time.Minute {
				t.Fatalf("third offence lasts %s, want 40m", d)
			}
		}
	}
	for _, n := range r.Nodes() {
		deadline := time.Now().Add(10 * time.Second)
		for r.kernelSet(n.Host, "bansshee-ban4")[C] < int((39 * time.Minute).Seconds()) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: kernel timeout of %s is %d s, want about 2400", n.ID, C, r.kernelSet(n.Host, "bansshee-ban4")[C])
			}
			time.Sleep(50 * time.Millisecond) // polling interval
		}
	}

	// 5. A simulate-mode jail bans nothing, and shows in why and history.
	simOut, err := h.Handle(ctx, trigger.EncodeLogsEvent("/var/log/maillog", []string{
		"dovecot: imap-login: Disconnected (auth failed, 3 attempts in 10 secs): user=<bob>, method=PLAIN, rip=" + D + ", lip=10.0.0.1, session=<x>"}))
	if err != nil || len(simOut.Simulated) != 1 || len(simOut.Bans) != 0 {
		t.Fatalf("simulate jail: %+v %v", simOut, err)
	}
	r.waitAll("C (a later ban) everywhere", 10*time.Second, has(C+"/32"))
	r.waitAll("D never banned", time.Second, lacks(D+"/32"))
	var why controller.WhyReport
	if err := json.Unmarshal([]byte(bansshee("why", D, "--json")), &why); err != nil {
		t.Fatal(err)
	}
	if len(why.Bans) != 0 || len(why.History) != 1 || why.History[0].Kind != controller.EventSimulate || why.History[0].Who != "jail/imap-trial" {
		t.Fatalf("why %s: %+v", D, why)
	}
	if hist := bansshee("history", D); !strings.Contains(hist, "simulate") || !strings.Contains(hist, "jail/imap-trial") {
		t.Fatalf("history %s:\n%s", D, hist)
	}
	whyC := bansshee("why", C)
	if !strings.Contains(whyC, "applied on 2 of 2") || !strings.Contains(whyC, "stream bansshee, 6 failures") || !strings.Contains(whyC, "by jail/cyrus") {
		t.Fatalf("why %s:\n%s", C, whyC)
	}

	// 6. After every TTL has passed, the history still shows the bans, the unban and who did them.
	later, err := controller.New(controller.Config{EC2: r.Clients.EC2, SQS: r.Clients.SQS, DDB: r.Clients.DynamoDB, Table: r.table, Prefix: r.Queues.Prefix,
		Now: func() time.Time { return time.Now().Add(3 * time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	if active, _ := later.Ledger.BansToList(ctx, later.Now()); len(active) != 0 {
		t.Fatalf("bans still active 3 h later: %+v", active)
	}
	events, err := later.History(ctx, netip.MustParsePrefix(A+"/32"), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, e := range events {
		seen = append(seen, e.Kind+" by "+e.Who)
	}
	if len(events) != 2 || events[0].Kind != controller.EventBan || events[0].Who != "jail/cyrus" || events[1].Kind != controller.EventUnban ||
		!strings.Contains(events[1].Who, "(alice)") || events[1].Reason != "customer's NAT" || events[1].Hold != "1h0m0s" {
		t.Fatalf("history of A 3 h later: %v", seen)
	}
	all, err := later.History(ctx, netip.Prefix{}, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, e := range all {
		kinds[e.Kind]++
	}
	// Bans: A, B, C three times, and the feed's two versions; unbans: A, B by the allow entry, B leaving the feed.
	if kinds[controller.EventBan] != 7 || kinds[controller.EventUnban] != 3 || kinds[controller.EventAllow] != 1 || kinds[controller.EventSimulate] != 1 || kinds[controller.EventExpire] != 1 {
		t.Fatalf("history of everything 3 h later: %v", kinds)
	}

	// 7. The notice topic got batched messages: at least one, at most one per 30 s.
	if _, err := r.c.FlushNotices(ctx); err != nil {
		t.Fatal(err)
	}
	var notices []controller.Notice
	deadline := time.Now().Add(5 * time.Second)
	for len(notices) == 0 && time.Now().Before(deadline) {
		rcv, err := r.Clients.SQS.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: nq.QueueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range rcv.Messages {
			var n controller.Notice
			if err := json.Unmarshal([]byte(aws.ToString(m.Body)), &n); err != nil {
				t.Fatalf("notice %q: %v", aws.ToString(m.Body), err)
			}
			notices = append(notices, n)
		}
	}
	if max := int(time.Since(start)/controller.NoticeInterval) + 1; len(notices) == 0 || len(notices) > max {
		t.Fatalf("%d notices in %s, want 1 to %d", len(notices), time.Since(start).Round(time.Second), max)
	}
	if notices[0].Bans != 1 || len(notices[0].First) != 1 || notices[0].First[0] != "ban "+A+"/32" {
		t.Fatalf("first notice %+v", notices[0])
	}
}

func hasKey(m map[string]int, k string) bool { _, ok := m[k]; return ok }
