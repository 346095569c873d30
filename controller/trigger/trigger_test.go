package trigger

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/internal/awstest"
)

var jailLines = map[string]string{
	"cyrus":        "pop3[22145]: badlogin: host [%s] plaintext user SASL(-13): authentication failure",
	"dovecot":      "dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<info>, method=PLAIN, rip=%s, lip=10.0.0.5, session=<x>",
	"sshd":         "sshd[812]: Failed password for invalid user admin from %s port 4242 ssh2",
	"postfix-sasl": "postfix/smtpd[1234]: warning: unknown[%s]: SASL LOGIN authentication failed: UGFzc3dvcmQ6",
}

func batch(t testing.TB, group string, lines ...string) []byte {
	t.Helper()
	return EncodeLogsEvent(group, lines)
}

func dryHandler(t *testing.T, cfg string) *Handler {
	t.Helper()
	c, err := ParseConfig([]byte(cfg))
	if err != nil {
		t.Fatal(err)
	}
	return &Handler{Cfg: c, Counter: &MemCounter{}}
}

func TestJailsBanAtMaxRetryNotBefore(t *testing.T) {
	for jail, format := range jailLines {
		t.Run(jail, func(t *testing.T) {
			h := dryHandler(t, "")
			addr := "174.132.223.252"
			line := fmt.Sprintf(format, addr)
			// 4 failures in a first invocation, then 1 more: the ban comes on the 5th (maxretry 5).
			out, err := h.Handle(t.Context(), batch(t, "/mail", line, line, line, line, "unrelated line"))
			if err != nil || len(out.Bans) != 0 {
				t.Fatalf("after 4: bans %v err %v", out.Bans, err)
			}
			if len(out.Ignored) != 1 || !strings.Contains(out.Ignored[0].Reason, "4 of 5 failures") {
				t.Fatalf("after 4: ignored %v", out.Ignored)
			}
			out, err = h.Handle(t.Context(), batch(t, "/mail", line))
			if err != nil || len(out.Bans) != 1 {
				t.Fatalf("after 5: %+v %v", out, err)
			}
			d := out.Bans[0]
			if d.CIDR != addr+"/32" || d.Trigger != "jail/"+jail || d.TTL != "2h0m0s" || d.Target != "*" {
				t.Fatalf("decision %+v", d)
			}
		})
	}
}

func TestJailV6AndConfig(t *testing.T) {
	h := dryHandler(t, `{"jails":[{"name":"pop3","builtin":"cyrus","maxretry":2,"bantime":"30m","target":"Role=mail"}]}`)
	line := fmt.Sprintf(jailLines["cyrus"], "2001:db8::bad")
	out, err := h.Handle(t.Context(), batch(t, "/mail", line, line))
	if err != nil || len(out.Bans) != 1 || out.Bans[0].CIDR != "2001:db8::bad/128" || out.Bans[0].Target != "Role=mail" || out.Bans[0].TTL != "30m0s" {
		t.Fatalf("%+v %v", out, err)
	}
	for _, bad := range []string{`{"jails":[{"name":"x"}]}`, `{"jails":[{"name":"x","regex":"("}]}`, `{"jails":[{"name":"x","regex":"no group"}]}`,
		`{"jails":[{"name":"x","builtin":"nope"}]}`, `{"unknown":1}`} {
		if _, err := ParseConfig([]byte(bad)); err == nil {
			t.Errorf("config %s accepted", bad)
		}
	}
}

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFixtures(t *testing.T) {
	cfg := `{"alarms":{"pop3-failures-by-source":{"target":"Role=mail","ttl":"1h"},"ssh-failures-by-source":{}},"guardduty":{"enabled":true}}`
	cases := []struct {
		file    string
		kind    string
		bans    []string
		ignored string
	}{
		{"sns-alarm.json", "sns", []string{"174.132.223.252/32 Role=mail 1h0m0s"}, ""},
		{"sns-alarm-ok.json", "sns", nil, "state OK, nothing to do"},
		{"eventbridge-alarm.json", "eventbridge-alarm", []string{"2001:db8:bad::7/128 * 2h0m0s"}, ""},
		{"guardduty.json", "guardduty", []string{"198.51.100.23/32 * 24h0m0s"}, ""},
		{"guardduty-low.json", "guardduty", nil, "severity 2.0 below 4.0"},
		{"schedule.json", "schedule", nil, "dry run"},
		{"direct-ban.json", "direct-ban", []string{"192.0.2.66/32 Role=mail 30m0s", "2001:db8:66::/64 Role=mail 30m0s"}, ""},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			out, err := dryHandler(t, cfg).Handle(t.Context(), fixture(t, c.file))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, b := range out.Bans {
				got = append(got, b.CIDR+" "+b.Target+" "+b.TTL)
			}
			if out.Kind != c.kind || strings.Join(got, ";") != strings.Join(c.bans, ";") {
				t.Fatalf("kind %s bans %v, want %s %v", out.Kind, got, c.kind, c.bans)
			}
			if c.ignored != "" && (len(out.Ignored) == 0 || !strings.Contains(out.Ignored[0].Reason, c.ignored)) {
				t.Fatalf("ignored %v, want %q", out.Ignored, c.ignored)
			}
		})
	}
}

func TestMalformedEvents(t *testing.T) {
	h := dryHandler(t, "")
	notGzip, _ := json.Marshal(map[string]any{"awslogs": map[string]string{"data": base64.StdEncoding.EncodeToString([]byte("plain text"))}})
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	zw.Write([]byte("[1,2,3]"))
	zw.Close()
	wrongJSON, _ := json.Marshal(map[string]any{"awslogs": map[string]string{"data": base64.StdEncoding.EncodeToString(zb.Bytes())}})
	// A 6 MB batch of random (incompressible) lines, the Lambda payload limit.
	noise := make([]byte, 3<<20)
	rand.Read(noise)
	var lines []string
	for i := 0; i+1000 <= len(noise); i += 1000 {
		lines = append(lines, base64.StdEncoding.EncodeToString(noise[i:i+1000]))
	}
	big := batch(t, "/big", lines...)
	if len(big) < 4<<20 {
		t.Fatalf("big batch only %d bytes", len(big))
	}
	for _, c := range []struct {
		name    string
		event   []byte
		errIs   error
		ignored string
	}{
		{"bad base64", []byte(`{"awslogs":{"data":"!!!not base64"}}`), nil, "not base64"},
		{"bad gzip", notGzip, nil, "not gzip"},
		{"JSON of another shape inside", wrongJSON, nil, "not CloudWatch Logs JSON"},
		{"JSON of another shape", fixture(t, "other-shape.json"), ErrUnknownEvent, ""},
		{"not JSON", []byte("hello"), ErrUnknownEvent, ""},
		{"6 MB batch", big, nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := h.Handle(t.Context(), c.event)
			if c.errIs != nil {
				if !errors.Is(err, c.errIs) {
					t.Fatalf("err %v, want %v", err, c.errIs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(out.Bans) != 0 {
				t.Fatalf("banned from garbage: %v", out.Bans)
			}
			if c.ignored != "" && (len(out.Ignored) != 1 || !strings.Contains(out.Ignored[0].Reason, c.ignored)) {
				t.Fatalf("ignored %v, want %q", out.Ignored, c.ignored)
			}
		})
	}
}

func FuzzJailMatch(f *testing.F) {
	for _, l := range jailLines {
		f.Add(fmt.Sprintf(l, "174.132.223.252"))
		f.Add(fmt.Sprintf(l, "2001:db8::1"))
	}
	f.Add("pop3[1]: badlogin: [0.0.0.0] x SASL(-13)")
	cfg, err := ParseConfig(nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, line string) {
		for i := range cfg.Jails {
			addr, _, ok := cfg.Jails[i].Match(line)
			if !ok {
				continue
			}
			if a, err := netip.ParseAddr(addr); err != nil || a.String() != addr {
				t.Fatalf("jail %s matched %q, not a canonical address, out of %q", cfg.Jails[i].Name, addr, line)
			}
		}
	})
}

func TestLedgerCounterSpansInvocations(t *testing.T) { ledgerCounterSpansInvocations(t, awstest.New) }

// The same on dynalite, a second DynamoDB: the counter is conditional writes and atomic ADDs.
func TestLedgerCounterOnDynalite(t *testing.T) {
	ledgerCounterSpansInvocations(t, awstest.NewWithDynalite)
}

func ledgerCounterSpansInvocations(t *testing.T, newAWS func(testing.TB) (*awstest.Env, awstest.Clients)) {
	env, clients := newAWS(t)
	table := awstest.Unique("bansshee")
	l := &controller.Ledger{DDB: clients.DynamoDB, Table: table}
	if err := l.CreateTable(t.Context()); err != nil {
		t.Fatal(err)
	}
	c := &LedgerCounter{DDB: clients.DynamoDB, Table: table}
	now := time.Now()
	ctx := context.Background()
	for i, want := range []int{3, 5, 6} {
		n := []int{3, 2, 1}[i]
		got, err := c.Add(ctx, "cyrus", "1.2.3.4", n, 10*time.Minute, now.Add(time.Duration(i)*time.Minute))
		if err != nil || got != want {
			t.Fatalf("step %d: %d %v, want %d", i, got, err, want)
		}
	}
	// A batch key is recorded once (a conditional put): the retry sees it.
	if dup, err := c.Seen(ctx, "batch#abc", time.Hour, now); err != nil || dup {
		t.Fatalf("first Seen: %v %v", dup, err)
	}
	if dup, err := c.Seen(ctx, "batch#abc", time.Hour, now.Add(time.Minute)); err != nil || !dup {
		t.Fatalf("second Seen: %v %v", dup, err)
	}
	// A new source is one request (the latency of a jail's ban is a chain of requests).
	env.ResetOps()
	if got, err := c.Add(ctx, "cyrus", "1.2.3.99", 2, 10*time.Minute, now); err != nil || got != 2 {
		t.Fatalf("new source: %d %v", got, err)
	}
	if ops := env.Ops(); ops["dynamodb:UpdateItem"] != 1 || ops["dynamodb:PutItem"] != 0 {
		t.Fatalf("a new source's count took %v", ops)
	}
	// After the window the count starts again.
	got, err := c.Add(ctx, "cyrus", "1.2.3.4", 1, 10*time.Minute, now.Add(20*time.Minute))
	if err != nil || got != 1 {
		t.Fatalf("after the window: %d %v", got, err)
	}
	// Open connections: kept per jail and stream, closed ones forgotten, expired ones not read.
	open := map[string]ConnState{"sshd[7]": {Addr: "1.2.3.4", Attempts: 2, Marker: true, Counted: 2}, "sshd[8]": {Addr: "1.2.3.5", Marker: true}}
	if err := c.SaveConns(ctx, "sshd", "i-0123456789abcdef0", open, nil, now); err != nil {
		t.Fatal(err)
	}
	if err := c.SaveConns(ctx, "sshd", "i-0123456789abcdef0", nil, []string{"sshd[8]"}, now); err != nil {
		t.Fatal(err)
	}
	conns, err := c.Conns(ctx, "sshd", "i-0123456789abcdef0", now.Add(time.Minute))
	if err != nil || len(conns) != 1 || conns["sshd[7]"] != open["sshd[7]"] {
		t.Fatalf("conns %+v %v", conns, err)
	}
	if conns, _ := c.Conns(ctx, "sshd", "i-0123456789abcdef0", now.Add(time.Hour)); len(conns) != 0 {
		t.Fatalf("expired conns read: %+v", conns)
	}
	// Witnesses: distinct streams, the same stream twice is one.
	for i, st := range []string{"i-a", "i-a", "i-b"} {
		w, err := c.Witness(ctx, "dovecot", "1.2.3.4", st, 10*time.Minute, now)
		if want := []int{1, 1, 2}[i]; err != nil || w != want {
			t.Fatalf("witness %d: %d %v, want %d", i, w, err, want)
		}
	}
	if w, _ := c.Witness(ctx, "dovecot", "1.2.3.4", "i-c", 10*time.Minute, now.Add(time.Hour)); w != 1 {
		t.Fatalf("witnesses after the window: %d", w)
	}
	// A budget of 2 an hour.
	for i, want := range []bool{true, true, false} {
		if ok, err := c.Take(ctx, "stream#i-a", 2, time.Hour, now); err != nil || ok != want {
			t.Fatalf("take %d: %v %v", i, ok, err)
		}
	}
	// Pending bans of a failed invocation: kept with the batch record, taken once.
	if err := c.SetPending(ctx, "batch#abc", []Decision{{CIDR: "1.2.3.4/32", Target: "*", TTL: "2h0m0s", Trigger: "jail/sshd"}}, time.Hour, now); err != nil {
		t.Fatal(err)
	}
	if p, err := c.Pending(ctx, "batch#abc"); err != nil || len(p) != 1 || p[0].CIDR != "1.2.3.4/32" {
		t.Fatalf("pending %+v %v", p, err)
	}
	if p, err := c.Pending(ctx, "batch#abc"); err != nil || len(p) != 0 {
		t.Fatalf("pending taken twice: %+v %v", p, err)
	}
	if p, err := c.Pending(ctx, "batch#never"); err != nil || len(p) != 0 {
		t.Fatalf("pending of an unknown batch: %+v %v", p, err)
	}
}

// flakyActor fails its first Ban, as a throttled controller would.
type flakyActor struct {
	fails int
	bans  []controller.BanRequest
}

func (a *flakyActor) FilterCIDRs(_ context.Context, cidrs []string) ([]netip.Prefix, map[string]error, error) {
	return nil, map[string]error{}, nil
}
func (a *flakyActor) Ban(_ context.Context, req controller.BanRequest) (*controller.Result, error) {
	if a.fails > 0 {
		a.fails--
		return nil, errors.New("ThrottlingException")
	}
	a.bans = append(a.bans, req)
	return &controller.Result{Rev: 1}, nil
}
func (a *flakyActor) Unban(context.Context, []string) (*controller.Result, error) { return nil, nil }
func (a *flakyActor) ReconcileOnce(context.Context) (*controller.Report, error)   { return nil, nil }

// Lambda retries a failed invocation with the same batch: its failures are not counted twice,
// and the bans the failed invocation decided are carried out by the retry.
func TestRetriedInvocationKeepsItsBans(t *testing.T) {
	c, _ := ParseConfig(nil)
	actor := &flakyActor{fails: 1}
	h := &Handler{Cfg: c, Counter: &MemCounter{}, Actor: actor}
	line := "sshd[1]: Failed password for root from 198.51.100.30 port 1 ssh2"
	ev := EncodeLogsEventStream("/auth", "i-0123456789abcdef0", []string{line, line, line, line, line})
	if _, err := h.Handle(t.Context(), ev); err == nil {
		t.Fatal("the throttled Ban did not fail the invocation")
	}
	out, err := h.Handle(t.Context(), ev)
	if err != nil || len(actor.bans) != 1 || actor.bans[0].CIDRs[0] != "198.51.100.30/32" {
		t.Fatalf("retry: %+v %v, bans %+v", out, err, actor.bans)
	}
	if _, err := h.Handle(t.Context(), ev); err != nil || len(actor.bans) != 1 {
		t.Fatalf("a third delivery banned again: %+v", actor.bans)
	}
}
