package main

import (
	"bytes"
	"encoding/json"
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
	if code := invoke([]string{"--event", "../../controller/trigger/testdata/guardduty.json", "--dry-run"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "jail x: regex") {
		t.Fatalf("bad config: exit %d %s", code, errOut.String())
	}
}
