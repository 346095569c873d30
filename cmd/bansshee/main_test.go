package main

import (
	"bytes"
	"context"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/bansshee/bansshee/internal/awstest"
)

type cliEnv struct {
	env    *awstest.Env
	global []string
}

func newCLI(t *testing.T) *cliEnv {
	t.Helper()
	e, clients := awstest.New(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDBANSSHEETEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	key := filepath.Join(t.TempDir(), "k")
	c := &cliEnv{env: e, global: []string{"--endpoint-url", e.URL(), "--region", awstest.Region, "--table", awstest.Unique("bansshee"), "--queue-prefix", awstest.Unique("bansshee"), "--key", key}}
	if code, _, errOut := c.run(t, "keys", "gen", "--out", key, "--id", "k1"); code != 0 {
		t.Fatalf("keys gen: %s", errOut)
	}
	if code, _, errOut := c.run(t, "init", "--agent-role-id", "AROACLITESTAGENT"); code != 0 {
		t.Fatalf("init: %s", errOut)
	}
	for _, tags := range []map[string]string{
		{"Role": "mail", "Env": "prod"}, {"Role": "mail", "Env": "prod"}, {"Role": "mail", "Env": "dev"},
		{"Role": "web", "Env": "prod"}, {"Role": "web", "Env": "dev"}, {"Role": "db"},
	} {
		tags["bansshee:managed"] = "true"
		if _, err := awstest.Launch(t.Context(), clients.EC2, tags); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func (c *cliEnv) run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), append(args, c.global...), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestCLITargetsAndBan(t *testing.T) {
	c := newCLI(t)
	code, out, errOut := c.run(t, "targets", "Role=mail,Env!=dev")
	if code != 0 || !strings.Contains(out, "2 instances match") {
		t.Fatalf("targets: %d %s %s", code, out, errOut)
	}
	code, out, errOut = c.run(t, "ban", "174.132.223.252", "--target", "Role=mail,Env!=dev", "--reason", "pop3 brute force")
	if code != 0 || !strings.Contains(out, "banned 1 at revision 1 on Role=mail,Env!=dev: sent to 2 instances") {
		t.Fatalf("ban: %d %q %q", code, out, errOut)
	}
	code, out, _ = c.run(t, "list")
	if code != 0 || !strings.Contains(out, "174.132.223.252/32") || !strings.Contains(out, "pop3 brute force") {
		t.Fatalf("list: %d %s", code, out)
	}
	// No agents run here: --wait must fail with exit 3, naming the instances.
	code, _, errOut = c.run(t, "ban", "198.51.100.1", "--target", "Role=db", "--wait", "--timeout", "1s")
	if code != exitNotConverged || !strings.Contains(errOut, "1 of 1 instances did not confirm revision 2") {
		t.Fatalf("ban --wait without agents: %d %q", code, errOut)
	}
	code, out, _ = c.run(t, "status")
	if code != 0 || !strings.Contains(out, "0 of 6 instances converged") {
		t.Fatalf("status: %d %s", code, out)
	}
}

// EC2 fails after the ban is in the ledger: the CLI says so and exits 3 (written, not delivered
// everywhere), not 1; the ban stays listed for the reconciler to deliver.
func TestCLIBanWhenDiscoveryFails(t *testing.T) {
	c := newCLI(t)
	c.env.FailAfter("ec2:DescribeInstances", 1) // the fleet's public addresses are read first
	code, _, errOut := c.run(t, "ban", "198.51.100.77", "--target", "Role=mail", "--reason", "test")
	c.env.Recover()
	if code != exitNotConverged || !strings.Contains(errOut, "ledger written at rev 1, but discovery failed after 0 instances") {
		t.Fatalf("ban with EC2 down: %d %q", code, errOut)
	}
	code, out, _ := c.run(t, "list")
	if code != 0 || !strings.Contains(out, "198.51.100.77/32") {
		t.Fatalf("list: %d %s", code, out)
	}
}

func TestCLIRefusalsWriteNothing(t *testing.T) {
	c := newCLI(t)
	before := c.env.Requests("sqs")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ban", "0.0.0.0/0"}, "0.0.0.0/0 would match every address"},
		{[]string{"ban", "127.0.0.1"}, "never banned: 127.0.0.1/32 is loopback"},
		{[]string{"ban", "169.254.169.254"}, "never banned: 169.254.169.254/32 is link-local"},
		{[]string{"ban", "fd00:ec2::254"}, "never banned: fd00:ec2::254/128 is the EC2 instance metadata service"},
		{[]string{"ban", "224.0.0.1"}, "never banned: 224.0.0.1/32 is multicast"},
		{[]string{"ban", "::/0"}, "would match every address"},
		{[]string{"ban", "172.31.9.9"}, "covers allowlisted 172.31.0.0/16"},
		{[]string{"ban", "10.1.2.3", "--admin", "10.1.0.0/16"}, "covers allowlisted 10.1.0.0/16"},
		{[]string{"ban", "1.2.3.4", "--target", "Role in (mail"}, "expected ')' to close the list"},
		{[]string{"ban", "1.2.3.4", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"ban"}, "requires at least 1 arg"},
	} {
		code, out, errOut := c.run(t, tc.args...)
		first := strings.SplitN(errOut, "\n", 2)[0]
		if code != exitUsage || strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(first, "bansshee: ") || !strings.Contains(errOut, tc.want) || out != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and %q", tc.args, code, out, errOut, tc.want)
		}
	}
	if after := c.env.Requests("sqs"); after != before {
		t.Fatalf("refused commands sent %d SQS requests", after-before)
	}
	code, out, _ := c.run(t, "list", "--json")
	if code != 0 || !strings.Contains(out, `"bans":null`) {
		t.Fatalf("ledger not empty after refusals: %s", out)
	}
}

func TestKeysGenSafeFiles(t *testing.T) {
	dir := t.TempDir()
	run1 := func(args ...string) (int, string) {
		var out, errOut bytes.Buffer
		code := run(context.Background(), args, &out, &errOut)
		return code, out.String() + errOut.String()
	}
	a, b := filepath.Join(dir, "a.key"), filepath.Join(dir, "b.key")
	if code, out := run1("keys", "gen", "--out", a); code != 0 {
		t.Fatal(out)
	}
	if code, out := run1("keys", "gen", "--out", b); code != 0 {
		t.Fatal(out)
	}
	ka, _ := os.ReadFile(a + ".pub")
	kb, _ := os.ReadFile(b + ".pub")
	if strings.Fields(string(ka))[0] == strings.Fields(string(kb))[0] {
		t.Fatalf("two keys made on one day share a key id: %q %q", ka, kb)
	}
	if fi, _ := os.Stat(a); fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode %v", fi.Mode().Perm())
	}
	if code, out := run1("keys", "gen", "--out", a); code != exitUsage || !strings.Contains(out, "exists") {
		t.Fatalf("overwrite: %d %s", code, out)
	}
	// A symlink planted where the key goes is not followed.
	target := filepath.Join(dir, "elsewhere")
	link := filepath.Join(dir, "link.key")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if code, out := run1("keys", "gen", "--out", link); code == 0 {
		t.Fatalf("wrote through a symlink: %s", out)
	}
	if _, err := os.Stat(target); err == nil {
		t.Fatal("the symlink's target was created")
	}
}

func TestHelpShowsBoolFlagsPlain(t *testing.T) {
	var out, errOut bytes.Buffer
	run(context.Background(), []string{"ban", "--help"}, &out, &errOut)
	help := out.String() + errOut.String()
	if !strings.Contains(help, "--wait ") || strings.Contains(help, "[=true|false]") {
		t.Fatalf("ban --help:\n%s", help)
	}
}

func TestCLIFeeds(t *testing.T) {
	c := newCLI(t)
	var mu sync.Mutex
	body, status := "# intel\n198.51.100.1\n198.51.100.2\n2001:db8:bad::/48\nnot an address\n", 200
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if status != 200 {
			http.Error(w, "down", status)
			return
		}
		etag := fmt.Sprintf(`"%d"`, len(body))
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("ETag", etag)
		_, _ = io.WriteString(w, body)
	}))
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := c.run(t, "feed", "add", "intel", "--url", srv.URL+"/intel.txt", "--target", "Role=mail")
	if code != 1 || !strings.Contains(errOut, "certificate") {
		t.Fatalf("an untrusted certificate was accepted: %d %s %s", code, out, errOut)
	}
	code, out, errOut = c.run(t, "feed", "sync", "intel", "--feed-ca", ca)
	if code != 0 || !strings.Contains(out, "version 1, 3 entries, +3 -0 (sent as sync); 1 lines not addresses") || !strings.Contains(out, "sent to 3 instances") {
		t.Fatalf("feed sync: %d %q %q", code, out, errOut)
	}
	code, out, errOut = c.run(t, "feed", "sync", "intel", "--feed-ca", ca)
	if code != 0 || !strings.Contains(out, "not modified") {
		t.Fatalf("feed sync, unchanged: %d %q %q", code, out, errOut)
	}
	mu.Lock()
	status = 500
	mu.Unlock()
	code, out, errOut = c.run(t, "feed", "sync", "intel", "--feed-ca", ca)
	if code != 1 || !strings.Contains(out, "FAILED (fetch: HTTP 500 Internal Server Error); version 1 (3 entries) stays") {
		t.Fatalf("feed sync, 500: %d %q %q", code, out, errOut)
	}
	code, out, _ = c.run(t, "feed", "list")
	if code != 0 || !regexp.MustCompile(`intel\s+Role=mail\s+3\s+1h0m0s\s+\S+\s+\S+\s+FAILING: fetch: HTTP 500`).MatchString(out) {
		t.Fatalf("feed list: %d %q", code, out)
	}
	code, out, errOut = c.run(t, "feed", "add", "bad", "--url", "http://"+srv.Listener.Addr().String(), "--target", "*")
	if code != 2 || !strings.Contains(errOut, "want an https:// URL") {
		t.Fatalf("http feed: %d %q %q", code, out, errOut)
	}
	code, out, errOut = c.run(t, "feed", "rm", "intel")
	if code != 0 || !strings.Contains(out, "a sync sent to 3 instances") {
		t.Fatalf("feed rm: %d %q %q", code, out, errOut)
	}
	if code, out, _ = c.run(t, "feed", "list", "--json"); code != 0 || strings.TrimSpace(out) != "null" {
		t.Fatalf("feed list after rm: %d %q", code, out)
	}
}

// The steering commands as an operator types them: allow add (refusals included), allow list,
// unban --hold, why and history, with who from sts:GetCallerIdentity.
func TestCLISteering(t *testing.T) {
	c := newCLI(t)
	t.Setenv("USER", "alice")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"allow", "add", "198.51.100.0/24"}, "--reason is required"},
		{[]string{"allow", "add", "10.0.0.0/9", "--reason", "x"}, "give --force"},
		{[]string{"allow", "add", "10.0.0.0/7", "--reason", "x", "--force"}, "broader than the minimum /8"},
		{[]string{"allow", "rm", "198.51.100.0/24"}, "no allow entry 198.51.100.0/24"},
		{[]string{"history", "--since", "yesterday"}, "--since \"yesterday\""},
		{[]string{"why", "not-an-ip"}, "not an IP address"},
	} {
		code, _, errOut := c.run(t, tc.args...)
		if code != exitUsage || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d %q, want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
	if code, out, errOut := c.run(t, "ban", "198.51.100.7", "203.0.113.9", "--target", "Role=mail", "--reason", "brute force"); code != 0 {
		t.Fatalf("ban: %d %s %s", code, out, errOut)
	}
	code, out, errOut := c.run(t, "allow", "add", "198.51.100.0/24", "--reason", "partner relays", "--ttl", "72h")
	if code != 0 || !strings.Contains(out, "allowed 198.51.100.0/24 at revision 2; lifted 1 bans, sent to 3 instances") {
		t.Fatalf("allow add: %d %q %q", code, out, errOut)
	}
	code, out, errOut = c.run(t, "unban", "203.0.113.9", "--reason", "ticket 12", "--hold", "24h")
	if code != 0 || !strings.Contains(out, "held for 24h0m0s") || !strings.Contains(out, "unbanned 1 at revision 3") {
		t.Fatalf("unban --hold: %d %q %q", code, out, errOut)
	}
	code, out, _ = c.run(t, "allow", "list")
	if code != 0 || !regexp.MustCompile(`allow\s+198.51.100.0/24\s+\S+\s+partner relays\s+\S+ \(alice\)\s+2`).MatchString(out) ||
		!regexp.MustCompile(`hold\s+203.0.113.9/32\s+\S+\s+ticket 12`).MatchString(out) {
		t.Fatalf("allow list:\n%s", out)
	}
	code, _, errOut = c.run(t, "ban", "203.0.113.9", "--target", "Role=mail")
	if code != exitUsage || !strings.Contains(errOut, "held until") {
		t.Fatalf("ban of a held address: %d %q", code, errOut)
	}
	if code, _, errOut = c.run(t, "ban", "203.0.113.9", "--target", "Role=mail", "--force", "--reason", "it is back"); code != 0 {
		t.Fatalf("ban --force of a held address: %d %q", code, errOut)
	}
	code, out, _ = c.run(t, "why", "203.0.113.9")
	for _, want := range []string{"ban 203.0.113.9/32 on Role=mail, revision 4", "by arn:", "(alice)", "applied on 0 of 3 targeted instances", "hold 203.0.113.9/32 until", "unban"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("why: %d, no %q in\n%s", code, want, out)
		}
	}
	code, out, _ = c.run(t, "history", "198.51.100.7", "--since", "1d")
	if code != 0 || strings.Count(out, "\n") != 3 || !strings.Contains(out, "allow") || !strings.Contains(out, "lifted by allow entry 198.51.100.0/24") {
		t.Fatalf("history:\n%s", out)
	}
	code, out, _ = c.run(t, "history", "--json")
	if code != 0 || strings.Count(out, `"kind":`) != 6 {
		t.Fatalf("history --json: %s", out)
	}
}
