package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestInvokeDryRunPrintsDecisions(t *testing.T) {
	t.Setenv("BANSSHEE_TRIGGER_CONFIG", `{"guardduty":{"enabled":true}}`)
	var out, errOut bytes.Buffer
	code := invoke([]string{"--event", "../../controller/trigger/testdata/guardduty.json", "--dry-run"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	var got struct {
		Bans []struct {
			CIDR, Target, TTL, Reason, Trigger string
		} `json:"bans"`
		Ignored []struct{ Reason string } `json:"ignored"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out.String())
	}
	if len(got.Bans) != 1 || got.Bans[0].CIDR != "198.51.100.23/32" || !strings.HasPrefix(got.Bans[0].Trigger, "guardduty/") || got.Bans[0].TTL != "24h0m0s" {
		t.Fatalf("decisions %+v", got)
	}
	out.Reset()
	errOut.Reset()
	if code := invoke([]string{"--event", "../../controller/trigger/testdata/other-shape.json", "--dry-run"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "unrecognised event") {
		t.Fatalf("other shape: exit %d %s", code, errOut.String())
	}
	t.Setenv("BANSSHEE_TRIGGER_CONFIG", `{"jails":[{"name":"x","regex":"("}]}`)
	if code := invoke([]string{"--event", "../../controller/trigger/testdata/guardduty.json", "--dry-run"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "jail x: pattern") {
		t.Fatalf("bad config: exit %d %s", code, errOut.String())
	}
}

func TestTestJailOnCapturedLines(t *testing.T) {
	var out, errOut bytes.Buffer
	code := testJail([]string{"--jail", "sshd", "--log", "../../controller/trigger/testdata/real/syslog.log"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	text := out.String()
	for _, want := range []string{"10.97.1.2 x1 (failregex 1)", "- no failregex matched", "jail sshd:", "10.97.1.2: 14 failures  would be banned", "10.97.1.3: 3 failures\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "198.51.100.") {
		t.Errorf("a planted address was found:\n%s", text)
	}
	errOut.Reset()
	if code := testJail([]string{"--jail", "nope", "--log", "-"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "unknown builtin") {
		t.Fatalf("unknown jail: exit %d %s", code, errOut.String())
	}
}

func TestInvokeNeverBanIgnored(t *testing.T) {
	t.Setenv("BANSSHEE_TRIGGER_CONFIG", "")
	event := filepath.Join(t.TempDir(), "ev.json")
	if err := os.WriteFile(event, []byte(`{"ban":{"cidrs":["127.0.0.1","169.254.169.254","fd00:ec2::254","224.0.0.1","198.51.100.9"]}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := invoke([]string{"--event", event, "--dry-run"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	var got struct {
		Bans    []struct{ CIDR string }   `json:"bans"`
		Ignored []struct{ Reason string } `json:"ignored"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Bans) != 1 || got.Bans[0].CIDR != "198.51.100.9/32" || len(got.Ignored) != 4 {
		t.Fatalf("%s", out.String())
	}
	for _, ig := range got.Ignored {
		if !strings.Contains(ig.Reason, "never banned") {
			t.Errorf("ignored %q", ig.Reason)
		}
	}
}

// The feed schedule's event is its own kind (issue 22, finding 8): the trigger handler, which
// runs the reconcile pass, never sees it.
func TestFeedEventRunsApart(t *testing.T) {
	t.Setenv("BANSSHEE_TRIGGER_CONFIG", "")
	event := filepath.Join(t.TempDir(), "feeds.json")
	if err := os.WriteFile(event, []byte(FeedEvent), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := invoke([]string{"--event", event, "--dry-run"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	var got struct {
		Kind       string `json:"kind"`
		Reconciled bool   `json:"reconciled"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || got.Kind != "feeds" || got.Reconciled {
		t.Fatalf("%v %s", err, out.String())
	}
	b, err := os.ReadFile("../../infra/cloudformation/bansshee.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "Input: '"+FeedEvent+"'") {
		t.Fatalf("the stack has no feed schedule sending %s", FeedEvent)
	}
}
