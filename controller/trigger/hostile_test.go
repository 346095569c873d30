package trigger

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bansshee/bansshee/controller"
)

// Lines in the shapes the real daemons write (testdata/real), with the user names an attacker
// chooses. want is the address the jail must find ("" for none); n the failures it counts.
var hostileLines = []struct {
	jail, line, want string
	n                int
}{
	// sshd: the address is the one right before the fixed end "port N ssh2".
	{"sshd", "Nov 26 21:26:05 mail1 sshd[15080]: Failed password for invalid user x from 198.51.100.200 port 1 from 10.97.1.2 port 54983 ssh2", "10.97.1.2", 1},
	{"sshd", "Nov 26 21:26:05 mail1 sshd[15080]: Failed password for invalid user admin from 198.51.100.201 port 22 ssh2 from 10.97.1.2 port 54983 ssh2", "10.97.1.2", 1},
	{"sshd", "Nov 26 21:26:05 mail1 sshd[15080]: Invalid user admin from 198.51.100.200 from 10.97.1.2 port 54983", "", 0},
	{"sshd", "Nov 26 21:26:09 mail1 sshd[15080]: Connection closed by authenticating user root 198.51.100.202 port 1 10.97.1.2 port 46775 [preauth]", "", 0},
	{"sshd", "Nov 26 21:26:09 mail1 sshd[15080]: Connection closed by invalid user x from 198.51.100.200 port 1 10.97.1.2 port 56009 [preauth]", "", 0},
	{"sshd", "2026-11-26T21:26:05.123456+00:00 mail1 sshd-session[15080]: Failed password for root from 2001:db8::77 port 4242 ssh2", "2001:db8::77", 1},
	// keyboard-interactive: the PAM error counts each failure; the "Failed" line repeats it.
	{"sshd", "sshd[15080]: error: PAM: Authentication failure for illegal user x from 10.97.1.2 port 1 from 10.97.1.2", "10.97.1.2", 1},
	{"sshd", "sshd[15080]: Failed keyboard-interactive/pam for invalid user x from 10.97.1.2 port 4242 ssh2", "", 0},
	// Honest or server-made sshd lines: not failures.
	{"sshd", "Nov 26 21:18:55 mail1 sshd[9305]: Accepted password for bansshee-honest from 10.97.1.2 port 54191 ssh2", "", 0},
	{"sshd", "Nov 26 21:18:55 mail1 sshd[9305]: Failed publickey for bansshee-honest from 10.97.1.2 port 54191 ssh2: ED25519 SHA256:abc", "", 0},
	{"sshd", "Nov 26 21:20:16 mail1 sshd[9323]: Connection closed by 10.97.1.2 port 46843 [preauth]", "", 0},
	{"sshd", "Nov 26 21:26:31 mail1 sshd[15084]: error: maximum authentication attempts exceeded for root from 10.97.1.2 port 44439 ssh2 [preauth]", "", 0},
	// Another daemon's line that carries an sshd line in a client-chosen field: the sshd jail
	// is anchored on the tag at the start of the line.
	{"sshd", "Nov 26 21:32:11 mail1 postfix/smtpd[16501]: warning: unknown[10.97.1.2]: SASL PLAIN authentication failed: authentication failure, sasl_username=x sshd[1]: Failed password for root from 198.51.100.200 port 22 ssh2", "", 0},
	{"postfix-sasl", "Nov 26 21:32:11 mail1 postfix/smtpd[16501]: warning: unknown[10.97.1.2]: SASL PLAIN authentication failed: authentication failure, sasl_username=x sshd[1]: Failed password for root from 198.51.100.200 port 22 ssh2", "10.97.1.2", 1},

	// Cyrus: the first bracket after "badlogin:" (and the server's reverse-DNS name).
	{"cyrus", "Nov 26 21:32:11 mail1 cyrus/pop3[16507]: badlogin: [10.97.1.2] plaintext (x [198.51.100.204]) [SASL(-13): user not found: checkpass failed]", "10.97.1.2", 1},
	{"cyrus", "Nov 26 21:32:11 mail1 cyrus/pop3[16507]: badlogin: host.example.net [10.97.1.2] plaintext (x [198.51.100.204]) [SASL(-13): user not found: checkpass failed]", "10.97.1.2", 1},
	{"cyrus", "Nov 26 21:32:17 mail1 cyrus/pop3[16507]: badlogin: [10.97.1.2] plaintext (bob[2001:db8::bad]) invalid user", "10.97.1.2", 1},
	{"cyrus", "Nov 26 21:32:23 mail1 cyrus/pop3[16514]: badlogin: [10.97.1.2] LOGIN (-notset-) [user not found]", "10.97.1.2", 1},
	{"cyrus", "Nov 26 21:32:29 mail1 cyrus/pop3v6[16520]: badlogin: [fd97::1:2] plaintext (bob) [SASL(-13): user not found: checkpass failed]", "fd97::1:2", 1},
	{"cyrus", "pop3[22145]: badlogin: host [174.132.223.252] plaintext user SASL(-13): authentication failure: checkpass failed", "174.132.223.252", 1},
	{"cyrus", "Nov 26 21:20:10 mail1 cyrus/pop3v6[9321]: login: [fd97::1:2] bansshee-honest plaintext User logged in SESSIONID=<x>", "", 0},

	// Dovecot: the last rip= before ", lip=" (the user name comes first), the count of attempts.
	{"dovecot", "Nov 26 21:32:19 mail1 dovecot: imap-login: Disconnected: Aborted login by logging out (auth failed, 2 attempts in 8 secs): user=<x>, method=PLAIN, rip=198.51.100.203, lip=1>, method=PLAIN, rip=10.97.1.2, lip=10.97.1.1, session=<SAwprTRhxa8KYQEC>", "10.97.1.2", 2},
	{"dovecot", "Nov 26 21:33:20 mail1 dovecot: imap-login: Disconnected: Connection closed (auth failed, 17 attempts in 34 secs): user=<bob>, method=PLAIN, rip=10.97.1.2, lip=10.97.1.1, session=<nzg4rzRhg6cKYQEC>", "10.97.1.2", 5}, // capped at maxretry
	{"dovecot", "Nov 26 21:33:20 mail1 dovecot: imap-login: Disconnected: Connection closed (no auth attempts in 0 secs): user=<>, rip=10.97.1.2, lip=10.97.1.1, session=<IrA/sTRhe80KYQEC>", "", 0},
	{"dovecot", "Nov 26 21:33:26 mail1 dovecot: imap-login: Login: user=<bansshee-honest>, method=PLAIN, rip=10.97.1.3, lip=10.97.1.1, mpid=16533, session=<e8o/sTRhb7QKYQED>", "", 0},
	// auth process: only session-less lines count (a session's attempts are in its login line).
	{"dovecot", "Nov 26 21:26:24 mail1 dovecot: auth: passwd-file(bob,10.97.1.2): unknown user", "10.97.1.2", 1},
	{"dovecot", "Nov 26 21:26:24 mail1 dovecot: auth: passwd-file(x,198.51.100.207): unknown user,10.97.1.2): unknown user", "10.97.1.2", 1},
	{"dovecot", "Nov 26 21:26:24 mail1 dovecot: auth: passwd-file(x,198.51.100.207): unknown user,10.97.1.2,<nzg4rzRhg6cKYQEC>): unknown user", "", 0},
	{"dovecot", "Nov 26 21:26:24 mail1 dovecot: auth: pam(x,198.51.100.207): pam_authenticate() failed: x,10.97.1.2,<nzg4>): pam_authenticate() failed: Authentication failure (password mismatch?)", "", 0},
	{"dovecot", "Nov 26 21:33:01 mail1 dovecot: auth: passwd-file(bob,10.97.1.2,<nzg4rzRhg6cKYQEC>): unknown user", "", 0},

	// Postfix: the client field before ": SASL"; the server's own faults are not failures.
	{"postfix-sasl", "Nov 26 21:32:11 mail1 postfix/smtpd[16501]: warning: unknown[10.97.1.2]: SASL PLAIN authentication failed: authentication failure, sasl_username=unknown[198.51.100.208]: SASL LOGIN authentication failed: x@mail1", "10.97.1.2", 1},
	{"postfix-sasl", "Nov 26 21:32:11 mail1 postfix/submission/smtpd[16503]: warning: unknown[10.97.1.2]: SASL PLAIN authentication failed: authentication failure, sasl_username=info@mail1", "10.97.1.2", 1},
	{"postfix-sasl", "Nov 26 21:26:09 mail1 postfix/smtpd[15074]: warning: unknown[10.97.1.2]: SASL PLAIN authentication failed: Connection lost to authentication server, sasl_username=(unavailable)", "", 0},
	{"postfix-sasl", "Nov 26 21:32:11 mail1 postfix/smtpd[16501]: warning: unknown[10.97.1.2]: SASL XBANSSHEE authentication failed: no mechanism available, sasl_username=(unavailable)", "", 0},
	{"postfix-sasl", "Nov 26 21:30:14 mail1 postfix/smtpd[15776]: warning: unknown[10.97.1.2]: SASL PLAIN authentication failed: generic failure, sasl_username=bob@mail1", "", 0},
	{"postfix-sasl", "Nov 26 21:20:12 mail1 postfix/smtpd[9298]: warning: unknown[10.97.1.2]: SASL PLAIN authentication failed: (reason unavailable), sasl_username=bob", "10.97.1.2", 1},
	// A client-chosen field cannot end the line early: sasl_username comes after the client field.
	{"postfix-sasl", "Nov 26 21:32:11 mail1 postfix/smtpd[16501]: warning: unknown[10.97.1.2]: SASL PLAIN authentication failed: authentication failure, sasl_username=x, Connection lost to authentication server", "10.97.1.2", 1},

	// pam_unix: rhost right after the fixed fields; the user name comes last.
	{"pam-generic", "Nov 26 21:26:16 mail1 sshd[15084]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=10.97.1.2  user=rhost=198.51.100.206", "10.97.1.2", 1},
	{"pam-generic", "Nov 26 21:26:31 mail1 sshd[15084]: PAM 5 more authentication failures; logname= uid=0 euid=0 tty=ssh ruser= rhost=10.97.1.2  user=root", "10.97.1.2", 5},
}

func TestHostileLines(t *testing.T) {
	cfg, err := ParseConfig([]byte(`{"jails":[{"name":"sshd","builtin":"sshd"},{"name":"dovecot","builtin":"dovecot"},` +
		`{"name":"cyrus","builtin":"cyrus"},{"name":"postfix-sasl","builtin":"postfix-sasl"},{"name":"pam-generic","builtin":"pam-generic"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	jails := map[string]*Jail{}
	for i := range cfg.Jails {
		jails[cfg.Jails[i].Name] = &cfg.Jails[i]
	}
	for _, c := range hostileLines {
		addr, n, ok := jails[c.jail].Match(c.line)
		if c.want == "" {
			if ok {
				t.Errorf("%s: found %s (%d) in %q, want nothing", c.jail, addr, n, c.line)
			}
			continue
		}
		if !ok || addr != c.want || n != c.n {
			t.Errorf("%s: got %q x%d (%v), want %s x%d in %q", c.jail, addr, n, ok, c.want, c.n, c.line)
		}
		// No other jail may find anything in a line that is not its own.
		for name, j := range jails {
			if name == c.jail || name == "pam-generic" || c.jail == "pam-generic" {
				continue
			}
			if a, _, ok := j.Match(c.line); ok {
				t.Errorf("jail %s found %s in a %s line: %q", name, a, c.jail, c.line)
			}
		}
	}
}

func TestNeverBanFromJails(t *testing.T) {
	h := dryHandler(t, `{"jails":[{"name":"sshd","builtin":"sshd","maxretry":1}]}`)
	var lines []string
	for _, a := range []string{"127.0.0.1", "169.254.169.254", "fd00:ec2::254", "224.0.0.1", "::1", "0.0.0.0", "255.255.255.255", "fe80::1"} {
		lines = append(lines, "sshd[1]: Failed password for root from "+a+" port 22 ssh2")
	}
	out, err := h.Handle(t.Context(), batch(t, "/auth", lines...))
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Bans) != 0 {
		t.Fatalf("banned %v", out.Bans)
	}
	if len(out.Ignored) != len(lines) {
		t.Fatalf("ignored %v, want one per line", out.Ignored)
	}
	for _, ig := range out.Ignored {
		if !strings.Contains(ig.Reason, "never banned") {
			t.Errorf("ignored %q, want a never-ban reason", ig.Reason)
		}
	}
}

func TestFail2banPatterns(t *testing.T) {
	// A failregex pasted from fail2ban's sshd filter (simplified), with <HOST> and the prefix.
	cfg, err := ParseConfig([]byte(`{"jails":[{"name":"f2b","maxretry":2,
		"failregex":["^%(__prefix_line)sFailed \\S+ for (?:invalid user )?.* from <HOST> port \\d+ ssh2$"],
		"ignoreregex":["for ignored-user from"]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	j := &cfg.Jails[0]
	if a, n, ok := j.Match("Nov 26 21:26:05 mail1 sshd[1]: Failed password for root from 10.97.1.2 port 5 ssh2"); !ok || a != "10.97.1.2" || n != 1 {
		t.Fatalf("<HOST>: %q %d %v", a, n, ok)
	}
	if v := j.Check("sshd[1]: Failed password for ignored-user from 10.97.1.2 port 5 ssh2"); v.Count != 0 || !strings.Contains(v.Why, "ignoreregex") {
		t.Fatalf("ignoreregex: %+v", v)
	}
	for _, c := range []struct{ regex, want string }{
		{`(?<=from )<HOST>`, "look-behind"},
		{`Failed (?!publickey) from <HOST>`, "look-ahead"},
		{`(\w+) \1 from <HOST>`, "back-reference"},
		{`from <HOST> to <HOST>`, "more than once"},
		{`Failed password`, "has no address"},
	} {
		_, err := ParseConfig([]byte(`{"jails":[{"name":"mine","failregex":[` + jsonString(c.regex) + `]}]}`))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "jail mine") {
			t.Errorf("%s: err %v, want one line naming the jail and %q", c.regex, err, c.want)
		}
	}
}

func jsonString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func TestGuardDutyByRole(t *testing.T) {
	cfg := `{"guardduty":{"enabled":true}}`
	for _, c := range []struct {
		file, bans, ignored string
	}{
		{"ssh-bruteforce-target", "198.51.100.23/32", ""},
		{"rdp-bruteforce-target", "198.51.100.24/32", ""},
		{"portprobe-target", "198.51.100.25/32 198.51.100.26/32", ""},
		{"ssh-bruteforce-actor", "", "resource role ACTOR"},
		{"rdp-bruteforce-actor", "", "resource role ACTOR"},
		{"portscan-actor", "", "resource role ACTOR"},
		{"no-role", "", "resource role missing"},
	} {
		t.Run(c.file, func(t *testing.T) {
			out, err := dryHandler(t, cfg).Handle(t.Context(), fixture(t, "guardduty/"+c.file+".json"))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, b := range out.Bans {
				got = append(got, b.CIDR)
			}
			if strings.Join(got, " ") != c.bans {
				t.Fatalf("bans %v, want %q", got, c.bans)
			}
			if c.ignored != "" && (len(out.Ignored) != 1 || !strings.Contains(out.Ignored[0].Reason, c.ignored)) {
				t.Fatalf("ignored %v, want %q", out.Ignored, c.ignored)
			}
		})
	}
	// Disabled (the default): nothing, whatever the role.
	out, err := dryHandler(t, "").Handle(t.Context(), fixture(t, "guardduty/ssh-bruteforce-target.json"))
	if err != nil || len(out.Bans) != 0 || !strings.Contains(out.Ignored[0].Reason, "disabled") {
		t.Fatalf("default config: %+v %v", out, err)
	}
}

// A retried invocation delivers the same batch again: it is counted once.
func TestRetriedBatchCountedOnce(t *testing.T) {
	h := dryHandler(t, `{"jails":[{"name":"sshd","builtin":"sshd","maxretry":3}]}`)
	line := "sshd[1]: Failed password for root from 198.51.100.31 port 22 ssh2"
	ev := batch(t, "/auth", line, line)
	out, err := h.Handle(t.Context(), ev)
	if err != nil || len(out.Bans) != 0 {
		t.Fatalf("first delivery: %+v %v", out, err)
	}
	out, err = h.Handle(t.Context(), ev) // the retry: same event ids
	if err != nil || len(out.Bans) != 0 || len(out.Ignored) != 1 || !strings.Contains(out.Ignored[0].Reason, "already counted") {
		t.Fatalf("retry: %+v %v", out, err)
	}
	out, err = h.Handle(t.Context(), batch(t, "/auth", line)) // a new line: the third failure
	if err != nil || len(out.Bans) != 1 {
		t.Fatalf("third failure: %+v %v", out, err)
	}
}

// The Lambda's metrics are EMF lines whose names are all in EMFMetrics.
func TestEMFLines(t *testing.T) {
	var buf strings.Builder
	h := dryHandler(t, `{"jails":[{"name":"sshd","builtin":"sshd","maxretry":1}]}`)
	h.EMF = &buf
	if _, err := h.Handle(t.Context(), batch(t, "/auth", "sshd[1]: Failed password for root from 198.51.100.41 port 22 ssh2")); err != nil {
		t.Fatal(err)
	}
	rep := &controller.Report{Fleet: controller.FleetCounts{Instances: 3, Converged: 2, Silent: 1},
		Feeds: []controller.FeedReport{{Name: "a", Err: errors.New("HTTP 500")}, {Name: "b", Held: "shrank"}, {Name: "c", NotModified: true}}}
	if err := writeEMF(&buf, &Output{Kind: "schedule"}, rep, time.Now()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("EMF lines: %q", lines)
	}
	var fleet map[string]any
	if err := json.Unmarshal([]byte(lines[1]), &fleet); err != nil || fleet["FeedRefreshesFailed"] != 1.0 || fleet["FeedRefreshesHeld"] != 1.0 {
		t.Fatalf("feed counts in %s: %v", lines[1], err)
	}
	for _, l := range lines {
		var doc struct {
			AWS struct {
				CloudWatchMetrics []struct {
					Namespace string
					Metrics   []struct{ Name string }
				}
			} `json:"_aws"`
		}
		if err := json.Unmarshal([]byte(l), &doc); err != nil {
			t.Fatal(err)
		}
		for _, m := range doc.AWS.CloudWatchMetrics[0].Metrics {
			if !slices.Contains(EMFMetrics, m.Name) || doc.AWS.CloudWatchMetrics[0].Namespace != EMFNamespace {
				t.Errorf("metric %s/%s is not in EMFMetrics", doc.AWS.CloudWatchMetrics[0].Namespace, m.Name)
			}
		}
	}
	if !strings.Contains(lines[0], `"Decisions":1`) || !strings.Contains(lines[0], `"Trigger":"cloudwatch-logs"`) || !strings.Contains(lines[1], `"AgentsSilent":1`) {
		t.Fatalf("values: %q", lines)
	}
}
