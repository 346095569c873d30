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
	for _, want := range []string{"10.97.1.2 x1 (rule 1 (attempt))", "- no rule matched", "jail sshd:", "10.97.1.2: 14 failures  would be banned", "rfc3164 139"} {
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

// test-jail reads every shape a line reaches CloudWatch Logs in, and follows key-only SSH
// connections across the file.
func TestTestJailReadsEveryShape(t *testing.T) {
	dir := t.TempDir()
	shapes := map[string]string{
		"rfc3164-padded":   "Jun  8 18:11:13 ip-10-0-0-5 sshd[2211]: Failed password for root from 203.0.113.5 port 51234 ssh2",
		"rfc3164-unpadded": "Jun 8 18:11:13 ip-10-0-0-5 sshd[2211]: Failed password for root from 203.0.113.5 port 51234 ssh2",
		"rfc3339":          "2024-06-08T18:11:13.954167+00:00 ip-10-0-0-5 sshd[2211]: Failed password for root from 203.0.113.5 port 51234 ssh2",
		"rfc3339-plain":    "2024-06-08T18:11:13Z ip-10-0-0-5 sshd[2211]: Failed password for root from 203.0.113.5 port 51234 ssh2",
		"rfc5424":          "<38>1 2019-07-08T17:40:16.954167-04:00 host sshd 2211 - - Failed password for root from 203.0.113.5 port 51234 ssh2",
		"rfc5424-sd":       `<38>1 2019-07-08T17:40:16Z host sshd 2211 - [origin ip="10.0.0.5"] Failed password for root from 203.0.113.5 port 51234 ssh2`,
		"bare":             "sshd[2211]: Failed password for root from 203.0.113.5 port 51234 ssh2",
		"short-iso":        "2024-06-08T18:11:13+0000 ip-10-0-0-5 sshd[2211]: Failed password for root from 203.0.113.5 port 51234 ssh2",
		"journal-json":     `{"SYSLOG_IDENTIFIER":"sshd","_COMM":"sshd","_PID":"2211","MESSAGE":"Failed password for root from 203.0.113.5 port 51234 ssh2"}`,
	}
	for name, line := range shapes {
		t.Run(name, func(t *testing.T) {
			f := filepath.Join(dir, name+".log")
			if err := os.WriteFile(f, []byte(strings.Repeat(line+"\n", 5)), 0o644); err != nil {
				t.Fatal(err)
			}
			var out, errOut bytes.Buffer
			if code := testJail([]string{"--jail", "sshd", "--log", f}, &out, &errOut); code != 0 {
				t.Fatalf("exit %d: %s", code, errOut.String())
			}
			if !strings.Contains(out.String(), "203.0.113.5: 5 failures  would be banned") {
				t.Fatalf("%s:\n%s", name, out.String())
			}
		})
	}
	t.Run("dovecot-file", func(t *testing.T) {
		var out, errOut bytes.Buffer
		if code := testJail([]string{"--jail", "dovecot", "--log", "../../controller/trigger/testdata/real/dovecot-file.log"}, &out, &errOut); code != 0 {
			t.Fatalf("exit %d: %s", code, errOut.String())
		}
		if !strings.Contains(out.String(), "10.97.1.2: 6 failures  would be banned") || !strings.Contains(out.String(), "dovecot-file") {
			t.Fatalf("%s", out.String())
		}
	})
	t.Run("cloudwatch-agent-keyonly", func(t *testing.T) {
		var out, errOut bytes.Buffer
		if code := testJail([]string{"--jail", "sshd", "--log", "../../controller/trigger/testdata/real/extended-syslog.log"}, &out, &errOut); code != 0 {
			t.Fatalf("exit %d: %s", code, errOut.String())
		}
		text := out.String()
		if !strings.Contains(text, "10.97.1.2: 12 failures  would be banned") || strings.Contains(text, "10.97.1.3:") || strings.Contains(text, "198.51.100.") {
			t.Fatalf("%s", text)
		}
	})
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
