package trigger

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// Every shape a failure line reaches CloudWatch Logs in: the jail must find the same address.
func TestLogShapes(t *testing.T) {
	cases := []struct {
		shape, jail, line, addr string
	}{
		{"rfc3164 two-space day", "sshd", "Jun  8 18:11:13 ip-10-0-0-5 sshd[2211]: Failed password for root from 203.0.113.5 port 51234 ssh2", "203.0.113.5"},
		{"rfc3164 one-space day", "sshd", "Jun 8 18:11:13 ip-10-0-0-5 sshd[2211]: Failed password for root from 203.0.113.5 port 51234 ssh2", "203.0.113.5"},
		{"rfc3164 no host", "sshd", "Jun 8 18:11:13 sshd[2211]: Failed password for root from 203.0.113.5 port 51234 ssh2", "203.0.113.5"},
		{"rfc3339 fractions", "sshd", "2024-06-08T18:11:13.954167+00:00 ip-10-0-0-5 sshd[2211]: Failed password for root from 203.0.113.5 port 51234 ssh2", "203.0.113.5"},
		{"rfc3339 no fractions", "sshd", "2024-06-08T18:11:13Z ip-10-0-0-5 sshd[2211]: Failed password for root from 203.0.113.5 port 51234 ssh2", "203.0.113.5"},
		{"journalctl short-iso", "sshd", "2024-06-08T18:11:13+0000 ip-10-0-0-5 sshd[2211]: Failed password for root from 203.0.113.5 port 51234 ssh2", "203.0.113.5"},
		{"rfc5424 no structured data", "sshd", "<38>1 2019-07-08T17:40:16.954167-04:00 host sshd 57915 - - Failed password for root from 203.0.113.5 port 51234 ssh2", "203.0.113.5"},
		{"rfc5424 structured data", "sshd", `<38>1 2019-07-08T17:40:16.954167-04:00 host sshd 57915 - [meta sequenceId="1" note="a \"quoted\] value"] Failed password for root from 203.0.113.5 port 51234 ssh2`, "203.0.113.5"},
		{"rfc5424 no PRI", "sshd", "1 2019-07-08T17:40:16Z host sshd-session 57915 - - Failed password for root from 203.0.113.5 port 51234 ssh2", "203.0.113.5"},
		{"bare tag[pid]", "sshd", "sshd[2211]: Failed password for root from 203.0.113.5 port 51234 ssh2", "203.0.113.5"},
		{"journalctl -o json", "sshd", `{"__REALTIME_TIMESTAMP":"1717870273000000","_HOSTNAME":"ip-10-0-0-5","SYSLOG_IDENTIFIER":"sshd","_COMM":"sshd","_PID":"2211","_UID":"0","MESSAGE":"Failed password for root from 203.0.113.5 port 51234 ssh2"}`, "203.0.113.5"},
		{"journal json, byte-array MESSAGE", "sshd", `{"SYSLOG_IDENTIFIER":"sshd","_COMM":"sshd","_PID":"2211","MESSAGE":[70,97,105,108,101,100,32,112,97,115,115,119,111,114,100,32,102,111,114,32,114,111,111,116,32,102,114,111,109,32,50,48,51,46,48,46,49,49,51,46,53,32,112,111,114,116,32,53,49,50,51,52,32,115,115,104,50]}`, "203.0.113.5"},
		{"vector journald", "sshd", `{"message":"Failed password for root from 203.0.113.5 port 51234 ssh2","SYSLOG_IDENTIFIER":"sshd","_COMM":"sshd-session","_PID":"2211","host":"ip-10-0-0-5"}`, "203.0.113.5"},
		{"dovecot own file", "dovecot", "Jan 29 09:33:58 pop3-login: Info: Aborted login (auth failed, 1 attempts in 2 secs): user=<grace>, method=PLAIN, rip=203.0.113.7, lip=10.0.0.5, session=<x>", "203.0.113.7"},
		{"dovecot own file, rip last", "dovecot", "Jan 29 09:33:58 pop3-login: Info: Aborted login (auth failed, 1 attempts in 2 secs): user=<grace>, method=PLAIN, rip=203.0.113.7", "203.0.113.7"},
		{"dovecot own file, auth worker", "dovecot", "Jan 29 09:33:58 auth-worker(22401): Info: sql(admin@example.de,203.0.113.7): unknown user", "203.0.113.7"},
		{"dovecot journal", "dovecot", `{"SYSLOG_IDENTIFIER":"dovecot","_COMM":"log","_PID":"812","MESSAGE":"imap-login: Login aborted: Connection closed (auth failed, 3 attempts in 16 secs) (auth_failed): user=<a>, method=PLAIN, rip=203.0.113.7, lip=10.0.0.5, session=<s>"}`, "203.0.113.7"},
		{"cloudwatch agent default (file line as is)", "postfix-sasl", "Dec  1 10:00:00 ip-10-0-0-5 postfix/smtpd[3110]: warning: unknown[203.0.113.9]:55729: SASL LOGIN authentication failed: UGFzc3dvcmQ6", "203.0.113.9"},
		{"postfix ends after failed:", "postfix-sasl", "Dec  1 10:00:00 ip-10-0-0-5 postfix/smtpd[3110]: warning: unknown[203.0.113.9]: SASL PLAIN authentication failed:", "203.0.113.9"},
	}
	cfg, err := ParseConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	jails := map[string]*Jail{}
	for i := range cfg.Jails {
		jails[cfg.Jails[i].Name] = &cfg.Jails[i]
	}
	for _, c := range cases {
		t.Run(c.shape, func(t *testing.T) {
			v := jails[c.jail].Check(c.line)
			if v.Addr != c.addr || v.Count < 1 {
				t.Fatalf("got %q x%d (%s; record %+v), want %s", v.Addr, v.Count, v.Why, v.Rec, c.addr)
			}
		})
	}
}

// A line another program wrote under the daemon's name (logger -t sshd) is ignored where journald
// says who wrote it.
func TestJournalCommIsTrusted(t *testing.T) {
	cfg, _ := ParseConfig(nil)
	for i := range cfg.Jails {
		j := &cfg.Jails[i]
		if j.Name != "dovecot" {
			continue
		}
		forged := `{"SYSLOG_IDENTIFIER":"dovecot","_COMM":"logger","_PID":"999","_UID":"1000","MESSAGE":"imap-login: Disconnected (auth failed, 1000 attempts in 2 secs): user=<x>, method=PLAIN, rip=198.51.100.9, lip=10.0.0.1"}`
		if v := j.Check(forged); v.Kind != KindNone || !strings.Contains(v.Why, "logger") {
			t.Fatalf("forged journald line: %+v", v)
		}
	}
}

func keyOnly(pid int, user, addr string, valid bool) []string {
	who := "invalid user " + user
	if valid {
		who = "authenticating user " + user
	}
	var l []string
	if !valid {
		l = append(l, fmt.Sprintf("sshd[%d]: Invalid user %s from %s port 4%d", pid, user, addr, pid))
	}
	return append(l, fmt.Sprintf("sshd[%d]: Connection closed by %s %s port 4%d [preauth]", pid, who, addr, pid))
}

func tallyLines(t *testing.T, j *Jail, prior map[string]ConnState, lines ...string) *Tally {
	t.Helper()
	var vs []Verdict
	for _, l := range lines {
		if v := j.Check(l); v.Kind != KindNone {
			vs = append(vs, v)
		}
	}
	return j.Tally(vs, prior)
}

func sshdJail(t *testing.T) *Jail {
	t.Helper()
	cfg, err := ParseConfig([]byte(`{"jails":[{"name":"sshd","builtin":"sshd"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	return &cfg.Jails[0]
}

// Key-only sshd: a connection is one attempt, never two; a password connection counts its
// attempts; a connection that logs in counts nothing.
func TestSSHConnections(t *testing.T) {
	j := sshdJail(t)
	const a = "203.0.113.5"
	cases := []struct {
		name  string
		lines []string
		want  int
	}{
		{"invalid user, key-only: Invalid user + Connection closed", keyOnly(100, "admin", a, false), 1},
		{"valid user, key-only: Connection closed by authenticating user", keyOnly(101, "root", a, true), 1},
		{"user name holding another address", keyOnly(102, "x from 198.51.100.9 port 1", a, false), 1},
		{"too many keys", []string{
			"sshd[103]: error: maximum authentication attempts exceeded for root from " + a + " port 4103 ssh2 [preauth]",
			"sshd[103]: Disconnecting authenticating user root " + a + " port 4103: Too many authentication failures [preauth]"}, 1},
		{"AllowUsers refuses, then the bot leaves (OpenSSH 7.4's end line)", []string{
			"sshd[104]: User root from " + a + " not allowed because not listed in AllowUsers",
			"sshd[104]: input_userauth_request: invalid user root [preauth]",
			"sshd[104]: Connection closed by " + a + " port 4104 [preauth]"}, 1},
		{"two passwords then close", []string{
			"sshd[105]: Invalid user admin from " + a + " port 4105",
			"sshd[105]: Failed password for invalid user admin from " + a + " port 4105 ssh2",
			"sshd[105]: Failed password for invalid user admin from " + a + " port 4105 ssh2",
			"sshd[105]: Connection closed by invalid user admin " + a + " port 4105 [preauth]"}, 2},
		{"typos then login", []string{
			"sshd[106]: Failed password for alice from " + a + " port 4106 ssh2",
			"sshd[106]: Failed password for alice from " + a + " port 4106 ssh2",
			"sshd[106]: Accepted password for alice from " + a + " port 4106 ssh2"}, 0},
		{"scanner: no user, no marker", []string{
			"sshd[107]: Connection closed by " + a + " port 4107 [preauth]"}, 0},
		{"keyboard-interactive and PAM, once", []string{
			"sshd[108]: error: PAM: Authentication failure for root from " + a,
			"sshd[108]: Failed keyboard-interactive/pam for root from " + a + " port 4108 ssh2",
			"sshd[108]: Connection closed by authenticating user root " + a + " port 4108 [preauth]"}, 1},
		{"OpenSSH 7.4: too many keys, the end line names no address", []string{
			"sshd[110]: error: maximum authentication attempts exceeded for root from " + a + " port 4110 ssh2 [preauth]",
			"sshd[110]: Disconnecting: Too many authentication failures [preauth]"}, 1},
		{"a change of user name: both names are the client's, the address comes from the connection", []string{
			"sshd[111]: Invalid user x from " + a + " port 4111",
			"sshd[111]: Disconnecting invalid user x 198.51.100.9 port 1: Change of username or service not allowed: (y " + a + " port 4111: Change of username or service not allowed: (x 198.51.100.9 port 1: Change of username or service not allowed: (y,ssh-connection) -> (root,ssh-connection) [preauth]"}, 1},
		{"keyboard-interactive: the PAM errors count, the Failed lines repeat them", []string{
			"sshd[112]: error: PAM: Authentication failure for root from " + a,
			"sshd[112]: error: PAM: Authentication failure for root from " + a,
			"sshd[112]: error: PAM: Authentication failure for root from " + a,
			"sshd[112]: error: PAM: Authentication failure for root from " + a,
			"sshd[112]: Failed keyboard-interactive/pam for root from " + a + " port 4112 ssh2",
			"sshd[112]: Connection closed by authenticating user root " + a + " port 4112 [preauth]"}, 4},
		{"bot sends a disconnect", []string{
			"sshd[109]: Invalid user test from " + a + " port 4109",
			"sshd[109]: Received disconnect from " + a + " port 4109:11: Bye Bye [preauth]",
			"sshd[109]: Disconnected from invalid user test " + a + " port 4109 [preauth]"}, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tl := tallyLines(t, j, nil, c.lines...)
			if got := tl.Hits[a]; got != c.want || len(tl.Hits) > 1 {
				t.Fatalf("counted %v, want %s x%d", tl.Hits, a, c.want)
			}
		})
	}
}

// The honest admin whose agent offers four wrong keys before the right one: under LogLevel
// VERBOSE sshd logs every refusal, then the login. Ten sessions count nothing.
func TestHonestMultiKeyAdminNeverCounted(t *testing.T) {
	j := sshdJail(t)
	var lines []string
	for s := 0; s < 10; s++ {
		pid := 500 + s
		for k := 1; k <= 4; k++ {
			lines = append(lines, fmt.Sprintf("sshd[%d]: Failed publickey for admin from 203.0.113.50 port 5%d ssh2: ED25519 SHA256:k%dAbc+/x=", pid, pid, k))
		}
		lines = append(lines, fmt.Sprintf("sshd[%d]: Accepted publickey for admin from 203.0.113.50 port 5%d ssh2: ED25519 SHA256:good", pid, pid))
	}
	if tl := tallyLines(t, j, nil, lines...); len(tl.Hits) != 0 || len(tl.Open) != 0 {
		t.Fatalf("honest admin counted: %v (open %v)", tl.Hits, tl.Open)
	}
}

// A connection split over two batches is still one connection.
func TestSSHConnectionAcrossBatches(t *testing.T) {
	j := sshdJail(t)
	const a = "203.0.113.5"
	first := tallyLines(t, j, nil, "sshd[7]: Invalid user admin from "+a+" port 4007", "sshd[7]: Failed password for invalid user admin from "+a+" port 4007 ssh2")
	if first.Hits[a] != 1 || first.Open["sshd[7]"].Counted != 1 {
		t.Fatalf("first batch: %v open %v", first.Hits, first.Open)
	}
	second := tallyLines(t, j, first.Open, "sshd[7]: Connection closed by invalid user admin "+a+" port 4007 [preauth]")
	if second.Hits[a] != 0 || len(second.Closed) != 1 {
		t.Fatalf("second batch counted the connection again: %v", second.Hits)
	}
	// An invalid user counts at once (it can never log in), and its end in a later batch adds
	// nothing.
	first = tallyLines(t, j, nil, "sshd[8]: Invalid user admin from "+a+" port 4008")
	if first.Hits[a] != 1 {
		t.Fatalf("an invalid user's connection: %v", first.Hits)
	}
	second = tallyLines(t, j, first.Open, "sshd[8]: Connection closed by invalid user admin "+a+" port 4008 [preauth]")
	if second.Hits[a] != 0 {
		t.Fatalf("key-only connection counted again across batches: %v", second.Hits)
	}
	// A refused key waits for the end: the connection may still log in (an admin's agent offers
	// several keys; LogLevel VERBOSE writes every refusal).
	first = tallyLines(t, j, nil, "sshd[10]: Failed publickey for root from "+a+" port 4010 ssh2: ED25519 SHA256:x")
	if first.Hits[a] != 0 {
		t.Fatalf("a refused key counted before its connection ended: %v", first.Hits)
	}
	second = tallyLines(t, j, first.Open, "sshd[10]: Connection closed by "+a+" port 4010 [preauth]")
	if second.Hits[a] != 1 {
		t.Fatalf("refused keys, then the connection ended: %v", second.Hits)
	}
	// A whole log (test-jail, an alarm's window) ends every connection still open in it.
	var vs []Verdict
	for _, l := range []string{"sshd[11]: Failed publickey for root from " + a + " port 4011 ssh2: RSA SHA256:y", "sshd[12]: Invalid user x from " + a + " port 4012"} {
		vs = append(vs, j.Check(l))
	}
	if all := j.TallyAll(vs); all.Hits[a] != 2 {
		t.Fatalf("TallyAll: %v", all.Hits)
	}
	// A marker then a login in the next batch: nothing.
	first = tallyLines(t, j, nil, "sshd[9]: Failed publickey for admin from "+a+" port 4009 ssh2: RSA SHA256:x")
	second = tallyLines(t, j, first.Open, "sshd[9]: Accepted publickey for admin from "+a+" port 4009 ssh2: RSA SHA256:y")
	if first.Hits[a]+second.Hits[a] != 0 {
		t.Fatalf("admin counted across batches")
	}
}

// One forged line claiming 1000 attempts counts as maxretry; a stream's fleet-wide bans are capped
// and past the cap land on its own instance only; with witnesses 2 a ban goes fleet-wide only when
// a second stream reports the address.
func TestForgedLinesAreContained(t *testing.T) {
	forged := func(addr string) string {
		return "dovecot: imap-login: Disconnected (auth failed, 1000 attempts in 2 secs): user=<x>, method=PLAIN, rip=" + addr + ", lip=10.0.0.1"
	}
	t.Run("one line counts at most maxretry", func(t *testing.T) {
		h := dryHandler(t, `{"jails":[{"name":"dovecot","builtin":"dovecot","maxretry":5}]}`)
		j := &h.Cfg.Jails[0]
		if v := j.Check(forged("198.51.100.9")); v.Count != 5 {
			t.Fatalf("counted %d", v.Count)
		}
		h2 := dryHandler(t, `{"jails":[{"name":"dovecot","builtin":"dovecot","maxretry":5000}]}`)
		out, _ := h2.Handle(t.Context(), EncodeLogsEventStream("/mail", "i-0123456789abcdef0", []string{forged("198.51.100.9")}))
		if len(out.Bans) != 0 || !strings.Contains(fmt.Sprint(out.Ignored), "1000 of 5000") {
			t.Fatalf("a 1000-attempt line under maxretry 5000: %+v", out)
		}
	})
	t.Run("stream cap", func(t *testing.T) {
		h := dryHandler(t, `{"jails":[{"name":"dovecot","builtin":"dovecot","target":"Role=mail"}],"stream_fleet_bans_per_hour":2}`)
		const stream = "i-0123456789abcdef0"
		var targets []string
		for i := 1; i <= 4; i++ {
			out, err := h.Handle(t.Context(), EncodeLogsEventStream("/mail", stream, []string{forged(fmt.Sprintf("198.51.100.%d", i))}))
			if err != nil || len(out.Bans) != 1 {
				t.Fatalf("line %d: %+v %v", i, out, err)
			}
			targets = append(targets, out.Bans[0].Target)
			if i > 2 && out.StreamCapped != 1 {
				t.Fatalf("line %d: StreamCapped %d", i, out.StreamCapped)
			}
		}
		want := []string{"Role=mail", "Role=mail", "instance-id=" + stream, "instance-id=" + stream}
		if fmt.Sprint(targets) != fmt.Sprint(want) {
			t.Fatalf("targets %v, want %v", targets, want)
		}
		// A stream that names no instance cannot fall back: nothing is banned, and it says why.
		for i := 0; i < 3; i++ {
			out, _ := h.Handle(t.Context(), EncodeLogsEventStream("/mail", "web-logs", []string{forged(fmt.Sprintf("198.51.100.%d", 50+i))}))
			if i == 2 && (len(out.Bans) != 0 || !strings.Contains(fmt.Sprint(out.Ignored), "names no instance")) {
				t.Fatalf("over the cap without an instance: %+v", out)
			}
		}
	})
	t.Run("witnesses", func(t *testing.T) {
		h := dryHandler(t, `{"jails":[{"name":"dovecot","builtin":"dovecot","witnesses":2,"target":"Role=mail"}]}`)
		out, _ := h.Handle(t.Context(), EncodeLogsEventStream("/mail", "i-0000000000000000a", []string{forged("198.51.100.77")}))
		if len(out.Bans) != 1 || out.Bans[0].Target != "instance-id=i-0000000000000000a" || !strings.Contains(out.Bans[0].Reason, "1 of 2 witnesses") {
			t.Fatalf("first witness: %+v", out.Bans)
		}
		// The same stream again is still one witness.
		out, _ = h.Handle(t.Context(), EncodeLogsEventStream("/mail", "i-0000000000000000a", []string{forged("198.51.100.77")}))
		if len(out.Bans) != 1 || out.Bans[0].Target != "instance-id=i-0000000000000000a" {
			t.Fatalf("same stream twice: %+v", out.Bans)
		}
		out, _ = h.Handle(t.Context(), EncodeLogsEventStream("/mail", "i-0000000000000000b", []string{forged("198.51.100.77")}))
		if len(out.Bans) != 1 || out.Bans[0].Target != "Role=mail" {
			t.Fatalf("second witness: %+v", out.Bans)
		}
	})
	t.Run("streams count apart", func(t *testing.T) {
		h := dryHandler(t, `{"jails":[{"name":"sshd","builtin":"sshd"}]}`)
		line := "sshd[1]: Failed password for root from 198.51.100.20 port 1 ssh2"
		for i := 0; i < 4; i++ {
			out, _ := h.Handle(t.Context(), EncodeLogsEventStream("/auth", fmt.Sprintf("i-00000000000000%02d", i), []string{line}))
			if len(out.Bans) != 0 {
				t.Fatalf("stream %d: one failure each banned: %+v", i, out.Bans)
			}
		}
	})
}

func TestIPv6Prefix(t *testing.T) {
	h := dryHandler(t, `{"jails":[{"name":"sshd","builtin":"sshd","maxretry":3,"ipv6_prefix":64}]}`)
	var lines []string
	for i := 1; i <= 3; i++ {
		lines = append(lines, fmt.Sprintf("sshd[%d]: Failed password for root from 2001:db8:1:2::%x port 1 ssh2", i, i))
	}
	out, err := h.Handle(t.Context(), EncodeLogsEventStream("/auth", "i-0123456789abcdef0", lines))
	if err != nil || len(out.Bans) != 1 || out.Bans[0].CIDR != "2001:db8:1:2::/64" {
		t.Fatalf("%+v %v", out, err)
	}
	def := dryHandler(t, `{"jails":[{"name":"sshd","builtin":"sshd","maxretry":1}]}`)
	out, _ = def.Handle(t.Context(), EncodeLogsEventStream("/auth", "s", lines[:1]))
	if len(out.Bans) != 1 || out.Bans[0].CIDR != "2001:db8:1:2::1/128" {
		t.Fatalf("default: %+v", out.Bans)
	}
	for _, bad := range []string{`32`, `47`, `129`} {
		if _, err := ParseConfig([]byte(`{"jails":[{"name":"sshd","builtin":"sshd","ipv6_prefix":` + bad + `}]}`)); err == nil {
			t.Errorf("ipv6_prefix %s accepted", bad)
		}
	}
}

func TestInstanceOfStream(t *testing.T) {
	for stream, want := range map[string]string{
		"i-0123456789abcdef0": "i-0123456789abcdef0", "i-01234567": "i-01234567",
		"ip-10-0-0-5/i-0123456789abcdef0/secure": "i-0123456789abcdef0",
		"ip-10-0-0-5":                            "", "bansshee": "", "xi-0123456789abcdef0": "", "i-0123456789abcdef0z": "",
	} {
		if got := InstanceOfStream(stream); got != want {
			t.Errorf("%q: %q, want %q", stream, got, want)
		}
	}
}

// FuzzParseRecord: any event text is taken apart without a panic, and whatever a built-in jail
// then finds is a canonical address that the line names.
func FuzzParseRecord(f *testing.F) {
	for _, s := range []string{
		"Jun  8 18:11:13 host sshd[1]: Failed password for root from 203.0.113.5 port 1 ssh2",
		`<38>1 2019-07-08T17:40:16Z host sshd 1 - [a b="\]"] Connection closed by invalid user x 203.0.113.5 port 1 [preauth]`,
		`{"SYSLOG_IDENTIFIER":"dovecot","_COMM":"log","MESSAGE":[105,109,97,112]}`,
		"Jan 29 09:33:58 auth(jdoe,203.0.113.7,sasl:plain): Info: passwd-file: unknown user",
		"<1>1 - - - - - [", "{", "Jan 1 00:00:00 ", "x[1]: ",
	} {
		f.Add(s)
	}
	cfg, err := ParseConfig(nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, line string) {
		rec := ParseRecord(line)
		_ = rec.Canonical()
		for i := range cfg.Jails {
			v := cfg.Jails[i].CheckRecord(rec)
			if v.Addr == "" {
				continue
			}
			if !strings.Contains(line, v.Addr) && !strings.HasPrefix(line, "{") {
				if a, err := netip.ParseAddr(v.Addr); err != nil || a.String() != v.Addr {
					t.Fatalf("jail %s found %q in %q", cfg.Jails[i].Name, v.Addr, line)
				}
			}
		}
	})
}

// Dovecot's auth lines and its login line are one session's attempts twice: the session (its id
// in both) counts the larger of the two, so a lone auth line counts and a pair does not count
// twice, across batches too; a session that logs in counts nothing.
func TestDovecotSessions(t *testing.T) {
	cfg, _ := ParseConfig([]byte(`{"jails":[{"name":"dovecot","builtin":"dovecot"}]}`))
	j := &cfg.Jails[0]
	const a = "203.0.113.7"
	auth := func(sess string) string {
		return "dovecot: auth-worker(22401): Info: sql(admin@example.de," + a + ",<" + sess + ">): unknown user"
	}
	login := func(sess string, n int) string {
		return fmt.Sprintf("dovecot: imap-login: Disconnected: Connection closed (auth failed, %d attempts in 9 secs): user=<admin@example.de>, method=PLAIN, rip=%s, lip=10.0.0.5, TLS, session=<%s>", n, a, sess)
	}
	cases := []struct {
		name  string
		lines []string
		want  int
	}{
		{"a lone auth line (the issue's example)", []string{auth("s1")}, 1},
		{"three auth lines and their login line", []string{auth("s2"), auth("s2"), auth("s2"), login("s2", 3)}, 3},
		{"a login line alone (auth_verbose off, the default)", []string{login("s3", 4)}, 4},
		{"a typo, then a login", []string{auth("s4"), "dovecot: imap-login: Login: user=<admin>, method=PLAIN, rip=" + a + ", lip=10.0.0.5, mpid=9, TLS, session=<s4>"}, 0},
		{"2.4: a typo, then a login", []string{"dovecot: auth(admin," + a + ",sasl:plain)<s5>: passwd-file: Password mismatch", "dovecot: imap-login: Logged in: user=<admin>, method=PLAIN, rip=" + a + ", lip=10.0.0.5, mpid=9, TLS, session=<s5>"}, 0},
		{"two sessions", []string{auth("s6"), auth("s7"), login("s6", 1), login("s7", 2)}, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := tallyLines(t, j, nil, c.lines...).Hits[a]; got != c.want {
				t.Fatalf("counted %d, want %d", got, c.want)
			}
		})
	}
	first := tallyLines(t, j, nil, auth("s8"), auth("s8"))
	second := tallyLines(t, j, first.Open, login("s8", 2))
	if first.Hits[a] != 2 || second.Hits[a] != 0 || len(second.Closed) != 1 {
		t.Fatalf("across batches: %v then %v", first.Hits, second.Hits)
	}
}
