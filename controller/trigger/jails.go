package trigger

import (
	"errors"
	"fmt"
	"regexp"
	"regexp/syntax"
	"strconv"
	"strings"

	"github.com/bansshee/bansshee/proto"
)

// A jail reads a Record (see ParseRecord): the tag tells which daemon wrote the line, the message
// is matched by the built-in rules, each anchored at the start of the message on the daemon's own
// fixed phrase. No text a client controls (a user name, a SASL name, a host name it announces) can
// stand where a rule looks for the address: that text only ever comes later in the line, and
// where it can come before the address the rule takes the last candidate before a fixed end of
// line (sshd, Dovecot's auth process) or the first after a fixed phrase (Cyrus, Postfix, PAM).
// See docs/TRIGGERS.md for the lines, the daemon versions that write them and their source files.

// addrRe is where a rule's address goes; Check keeps only canonical IP addresses.
const addrRe = `(?P<addr>[0-9A-Fa-f.:]+)`

// Kind is what a matched line says about a connection.
type Kind int

const (
	// KindNone: not a failure.
	KindNone Kind = iota
	// KindAttempt: one failed attempt (or the number the rule's group "n" holds), counted at once.
	KindAttempt
	// KindMarker: the connection failed to authenticate without a counted attempt (an invalid
	// user, a user AllowUsers refuses, too many attempts): one failure for the connection,
	// counted at once and never twice.
	KindMarker
	// KindEndUser: the connection ended before authentication, naming an invalid or
	// authenticating user: a marker and an end in one line.
	KindEndUser
	// KindEnd: the connection ended before authentication; one failure if it had a marker or a
	// refused key.
	KindEnd
	// KindSuccess: the connection logged in; nothing on it is counted (in the same batch).
	KindSuccess
	// KindRefused: a refused key or method ("Failed publickey"): honest clients offer several
	// keys before the right one, so it counts (once) only when the connection ends without
	// logging in.
	KindRefused
	// KindSessAttempt: one attempt of a session whose login line sums them up (Dovecot's auth
	// process): not counted on its own line; the session counts the larger of its attempt lines
	// and its login line's count.
	KindSessAttempt
)

func (k Kind) String() string {
	return map[Kind]string{KindNone: "none", KindAttempt: "attempt", KindMarker: "marker", KindEndUser: "end",
		KindEnd: "end", KindSuccess: "success", KindRefused: "refused", KindSessAttempt: "session attempt"}[k]
}

type ruleSpec struct {
	kind Kind
	re   string
}

type rule struct {
	kind Kind
	re   *regexp.Regexp
}

// builtinJail is a built-in jail: the tags its daemon writes under, the journald _COMM names of
// the processes that may write them, and the rules for its messages (lines that match an ignore
// rule are not failures).
type builtinJail struct {
	// bySession: connections are followed by the session id a rule's group "sess" holds (Dovecot,
	// whose lines all come from its log process), not by pid (sshd).
	bySession bool
	tag       string   // the whole tag, as a regexp
	comms     []string // journald _COMM values of the daemon's processes (15 characters at most)
	rules     []ruleSpec
	ignore    []string
}

func r(kind Kind, re string) ruleSpec {
	return ruleSpec{kind, "^" + strings.ReplaceAll(re, "<A>", addrRe)}
}

// Builtin jails, by name. Every rule names the daemon source that writes the line in
// docs/TRIGGERS.md; the lines are in testdata/real (captured from the real daemons) and
// testdata/formats (one line per format string and version).
var Builtin = map[string]builtinJail{
	// OpenSSH 7.4 to 10.0: sshd, sshd-session (9.8+) and sshd-auth (10.0+, relayed through
	// sshd-session's monitor, so one connection's lines share a pid). A password or PAM attempt is
	// one failure; a connection that fails without one (key-only servers: an invalid user, a
	// refused key, a user AllowUsers refuses) is one failure when it ends; a connection that logs
	// in is none.
	"sshd": {
		tag:   `sshd(?:-session|-auth)?`,
		comms: []string{"sshd", "sshd-session", "sshd-auth"},
		rules: []ruleSpec{
			r(KindAttempt, `Failed password for (?:invalid user )?.* from <A> port \d+(?: ssh2)?$`),
			// PAM conversations (keyboard-interactive): auth-pam.c logs every failure at ERROR;
			// the "Failed keyboard-interactive/pam" line repeats it (and reaches INFO only from the
			// MaxAuthTries/2-th failure), so it marks the connection and is not counted again.
			r(KindAttempt, `(?:error: )?PAM: [^()]* for (?:illegal user )?.* from <A>$`),
			r(KindSuccess, `Accepted [-\w/@.]+ for .* from <A> port \d+(?: ssh2)?(?:: .*)?$`),
			r(KindMarker, `Failed (?:keyboard-interactive/pam|keyboard-interactive) for (?:invalid user )?.* from <A> port \d+(?: ssh2)?$`),
			r(KindRefused, `Failed (?:publickey|hostbased|none|gssapi-with-mic|gssapi-keyex) for (?:invalid user )?.* from <A> port \d+(?: ssh2)?(?:: [-\w@.]+ [-\w:+/=]+(?: ID \S+ \(serial \d+\) CA [-\w@.]+ [-\w:+/=]+)?)?$`),
			r(KindMarker, `[Ii]nvalid user .* from <A>(?: port \d+)?$`),
			r(KindMarker, `User .* from <A> not allowed because [^()]+$`),
			r(KindMarker, `ROOT LOGIN REFUSED FROM <A> port \d+(?: \[preauth\])?$`),
			r(KindMarker, `(?:error: )?maximum authentication attempts exceeded for (?:invalid user )?.* from <A> port \d+(?: ssh2)?(?: \[preauth\])?$`),
			r(KindMarker, `pam_unix\(sshd:auth\): authentication failure; logname=\S* uid=\d+ euid=\d+ tty=\S* ruser=\S* rhost=<A>(?:\s|$)`),
			r(KindEndUser, `(?:Connection (?:closed|reset) by|Disconnected from) (?:invalid|authenticating) user .* <A> port \d+ \[preauth\]$`),
			r(KindEndUser, `Disconnecting (?:invalid|authenticating) user .* <A> port \d+: Too many authentication failures(?: \[preauth\])?$`),
			r(KindEndUser, `Connection from (?:invalid|authenticating) user .* <A> port \d+ timed out(?: \[preauth\])?$`),
			r(KindEnd, `(?:Connection (?:closed|reset) by|Disconnected from) <A> port \d+ \[preauth\]$`),
			r(KindEnd, `Connection from <A> port \d+ timed out(?: \[preauth\])?$`),
			// The connection's own process timing out (8.5 to 9.7). The listener's 9.8+ line
			// ("for connection from X to Y, pid = N") is another process, and 9.8 swapped X and Y.
			r(KindEnd, `(?:fatal: )?Timeout before authentication for <A> port \d+$`),
			// Lines that name no address (or only after client-written text), which count through
			// their connection (the pid's earlier lines name the source): OpenSSH 7.4's
			// "Disconnecting: Too many authentication failures", the shell checks, a change of
			// user name in mid-connection (both names are the client's).
			r(KindEndUser, `Disconnecting: (?:Too many authentication failures|Change of username or service not allowed: .*)(?: \[preauth\])?$`),
			r(KindEndUser, `Disconnecting (?:invalid|authenticating) user .* port \d+: Change of username or service not allowed: .* \[preauth\]$`),
			r(KindMarker, `User \S+ not allowed because (?:shell \S+ (?:does not exist|is not executable)|account is locked)$`),
		},
	},
	// Dovecot 2.2 to 2.4: the login process's summary counts the connection's failed attempts
	// ("auth failed, N attempts"); the auth process's verbose lines are counted only without a
	// session id (SASL for Postfix or Exim), since a session's attempts are already in its login
	// line. Syslog writes "dovecot: imap-login: ...", Dovecot's own file "imap-login: Info: ...".
	"dovecot": {
		tag:       `dovecot(?:[-\w]+)?`, // instance_name changes the syslog ident
		comms:     []string{"dovecot", "log", "imap-login", "pop3-login", "submission-logi", "managesieve-log", "auth", "auth-worker"},
		bySession: true,
		rules: []ruleSpec{
			// The login process's summary of a connection: its failed attempts, and its session.
			r(KindAttempt, `(?:pop3|imap|submission|managesieve|lmtp)-login: (?:(?:Info|Warning|Error): )?(?:Disconnected|Aborted login|Login aborted)[^()]*(?:\([^()]*\)[^()]*)*?\((?:auth failed|tried to use disallowed (?:plaintext|cleartext) auth)(?:, (?P<n>\d+) attempts?)?[^()]*\)(?: \([a-z_]+\))?: user=<.*>, (?:method=[-\w]+, )?rip=<A>(?:(?:, lip=[^,]*)?(?:, [^<>]*)?, session=<(?P<sess>[-\w+/=]{1,64})>|, lip=|$)`),
			r(KindSuccess, `(?:pop3|imap|submission|managesieve|lmtp)-login: (?:(?:Info|Warning|Error): )?(?:Login|Logged in): user=<.*>, (?:method=[-\w]+, )?rip=<A>, lip=[^,]*, (?:[^<>]*, )?session=<(?P<sess>[-\w+/=]{1,64})>`),
			// The auth process (auth_verbose): one line per attempt. With a session id it is one of
			// the login line's attempts (the session joins them: the larger count wins); without
			// one (SASL for Postfix or Exim) it counts on its own.
			// 2.2 and 2.3: "auth: DRIVER(user,rip[,<session>]): ..." (auth-worker lines may carry a
			// "conn unix:auth-worker (...): auth-worker<N>: " prefix from 2.3.13).
			r(KindAttempt, `auth(?:-worker(?:\(\d+\))?)?: (?:(?:Info|Warning|Error): )?(?:conn unix:[^ ]* \([^()]*\): )?(?:auth-worker<\d+>: )?(?:request \[\d+\]: )?(?:passwd-file|passwd|shadow|pam|sql|ldap|checkpassword|bsdauth|vpopmail|lua|static|imap|oauth2)\(.*,<A>\): (?:unknown user|Password mismatch|pam_authenticate\(\) failed: (?:Authentication failure \([Pp]assword mismatch\?\)|User not known to the underlying authentication module))(?: \((?:SHA\d* )?of given password: [0-9a-f]+\))?$`),
			r(KindSessAttempt, `auth(?:-worker(?:\(\d+\))?)?: (?:(?:Info|Warning|Error): )?(?:conn unix:[^ ]* \([^()]*\): )?(?:auth-worker<\d+>: )?(?:request \[\d+\]: )?(?:passwd-file|passwd|shadow|pam|sql|ldap|checkpassword|bsdauth|vpopmail|lua|static|imap|oauth2)\(.*,<A>,<(?P<sess>[-\w+/=]{1,64})>\): (?:unknown user|Password mismatch|pam_authenticate\(\) failed: (?:Authentication failure \([Pp]assword mismatch\?\)|User not known to the underlying authentication module))(?: \((?:SHA\d* )?of given password: [0-9a-f]+\))?$`),
			// 2.4: the user and address moved into the prefix: "auth(user,rip,sasl:MECH)[<session>]:
			// DRIVER: ...", "auth-worker(user,rip)<pid>[<session>]: request [N]: DRIVER: ...".
			r(KindAttempt, `auth\(.*,<A>,[-\w:]*\): (?:(?:Info|Warning|Error): )?(?:passwd-file|passwd|shadow|pam|sql|ldap|checkpassword|bsdauth|vpopmail|lua|static|imap|oauth2): (?:unknown user|Password mismatch|pam_authenticate\(\) failed: (?:Authentication failure \([Pp]assword mismatch\?\)|User not known to the underlying authentication module))(?: \((?:SHA\d* )?of given password: [0-9a-f]+\))?$`),
			r(KindSessAttempt, `auth\(.*,<A>,[-\w:]*\)<(?P<sess>[-\w+/=]{1,64})>: (?:(?:Info|Warning|Error): )?(?:passwd-file|passwd|shadow|pam|sql|ldap|checkpassword|bsdauth|vpopmail|lua|static|imap|oauth2): (?:unknown user|Password mismatch|pam_authenticate\(\) failed: (?:Authentication failure \([Pp]assword mismatch\?\)|User not known to the underlying authentication module))(?: \((?:SHA\d* )?of given password: [0-9a-f]+\))?$`),
			r(KindAttempt, `auth-worker\(.*,<A>\)<\d+>: (?:request \[\d+\]: )?(?:(?:Info|Warning|Error): )?(?:passwd-file|passwd|shadow|pam|sql|ldap|checkpassword|bsdauth|vpopmail|lua|static|imap|oauth2): (?:unknown user|Password mismatch|pam_authenticate\(\) failed: (?:Authentication failure \([Pp]assword mismatch\?\)|User not known to the underlying authentication module))(?: \((?:SHA\d* )?of given password: [0-9a-f]+\))?$`),
			r(KindSessAttempt, `auth-worker\(.*,<A>\)<\d+><(?P<sess>[-\w+/=]{1,64})>: (?:request \[\d+\]: )?(?:(?:Info|Warning|Error): )?(?:passwd-file|passwd|shadow|pam|sql|ldap|checkpassword|bsdauth|vpopmail|lua|static|imap|oauth2): (?:unknown user|Password mismatch|pam_authenticate\(\) failed: (?:Authentication failure \([Pp]assword mismatch\?\)|User not known to the underlying authentication module))(?: \((?:SHA\d* )?of given password: [0-9a-f]+\))?$`),
		},
	},
	// Cyrus imapd/pop3d 2.4 to 3.10: "badlogin: [host ][addr] MECH user reason"; the address is the
	// first bracket, right after the server's own reverse-DNS name.
	"cyrus": {
		tag:   `(?:[-\w.]+/)?[-\w]+`, // [syslog_prefix/]service: cyrus/imap, pop3d, imaps
		comms: []string{"imapd", "pop3d", "imap", "pop3", "cyrmaster", "master"},
		rules: []ruleSpec{
			r(KindAttempt, `badlogin: (?:[^\s\[\]]+ )?\[<A>\] \S+ .*(?:SASL\(-13\)|SASL\(-20\)|[Aa]uthentication failure|user not found|invalid user|login incorrect)`),
		},
	},
	// Postfix 2.10 to 3.10 smtpd, submission and smtps: the client field before ": SASL" (with the
	// port after it under smtpd_client_port_logging). A lost connection to the authentication
	// server, Cyrus SASL's "generic failure" (an unreadable sasldb, a broken saslauthd) and an
	// unsupported mechanism are the server's problem or a client's mistake.
	"postfix-sasl": {
		tag:   `[-\w.]+(?:/[-\w.]+)*/smtpd`, // syslog_name/smtpd: postfix, postfix/submission, postfix-INSTANCE, an admin's own
		comms: []string{"smtpd"},
		rules: []ruleSpec{
			r(KindAttempt, `warning: [-._\w]+\[<A>\](?::\d+)?: SASL [-\w]+ authentication failed:(?: |$)`),
		},
		ignore: []string{`^warning: [-._\w]+\[[0-9A-Fa-f.:]+\](?::\d+)?: SASL [-\w]+ authentication failed: (?:Connection lost to authentication server|Can't connect to authentication server|remote authentication server unavailable|Authentication backend error|generic failure|Invalid authentication mechanism|no mechanism available|Invalid base64 data in initial response|bad protocol / cancel)`},
	},
	// PAM for services without a jail of their own (not in the defaults: under sshd and Dovecot it
	// repeats what those jails count). pam_unix logs a connection's first failure and PAM sums up
	// the rest ("PAM 5 more authentication failures") when the connection ends.
	"pam-generic": {
		tag: `[-\w/.]+`,
		rules: []ruleSpec{
			r(KindAttempt, `pam_unix\([-\w]+:auth\): authentication failure; logname=\S* uid=\d+ euid=\d+ tty=\S* ruser=\S* rhost=<A>(?:\s|$)`),
			r(KindAttempt, `PAM (?P<n>\d+) more authentication failures?; logname=\S* uid=\d+ euid=\d+ tty=\S* ruser=\S* rhost=<A>(?:\s|$)`),
		},
	},
}

// BuiltinNames lists the built-in jails, for messages.
const BuiltinNames = "cyrus, dovecot, sshd, postfix-sasl, pam-generic"

// fail2ban's address tags, as RE2 groups.
var hostTags = strings.NewReplacer(
	"<HOST>", addrRe, "<ADDR>", addrRe,
	"<IP4>", `(?P<addr>\d{1,3}(?:\.\d{1,3}){3})`,
	"<IP6>", `(?P<addr>[0-9A-Fa-f:]*:[0-9A-Fa-f.:]*)`,
	"%(__prefix_line)s", `(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)? |\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d) )?(?:[-.\w]+ )?(?:[-\w/.]+(?:\[\d+\])?:\s+)?`,
)

// compilePattern compiles one failregex or ignoreregex, accepting fail2ban's <HOST>, <ADDR>, <IP4>,
// <IP6> and %(__prefix_line)s. An error names the construct RE2 lacks.
func compilePattern(jail, expr string, needAddr bool) (*regexp.Regexp, error) {
	if tags := strings.Count(expr, "<HOST>") + strings.Count(expr, "<ADDR>") + strings.Count(expr, "<IP4>") + strings.Count(expr, "<IP6>"); tags > 1 {
		return nil, fmt.Errorf("jail %s: pattern %q names the address more than once: use one <HOST>", jail, expr)
	}
	re, err := regexp.Compile(hostTags.Replace(expr))
	if err != nil {
		return nil, fmt.Errorf("jail %s: %s", jail, explainRE2(expr, err))
	}
	if needAddr && re.SubexpIndex("addr") < 0 {
		return nil, fmt.Errorf("jail %s: pattern %q has no address: use <HOST> (or (?P<addr>...))", jail, expr)
	}
	return re, nil
}

var backref = regexp.MustCompile(`\\[1-9]|\(\?P=\w+\)`)

func explainRE2(expr string, err error) string {
	switch {
	case strings.Contains(expr, "(?<=") || strings.Contains(expr, "(?<!"):
		return fmt.Sprintf("pattern %q uses a look-behind ((?<= or (?<!), which RE2 does not support: match the text before the address instead", expr)
	case strings.Contains(expr, "(?=") || strings.Contains(expr, "(?!"):
		return fmt.Sprintf("pattern %q uses a look-ahead ((?= or (?!), which RE2 does not support: put what it excludes in ignoreregex", expr)
	case backref.MatchString(expr):
		return fmt.Sprintf("pattern %q uses a back-reference (\\1 or (?P=name)), which RE2 does not support", expr)
	}
	var se *syntax.Error
	if errors.As(err, &se) {
		return fmt.Sprintf("pattern %q: %s in %q", expr, se.Code, se.Expr)
	}
	return fmt.Sprintf("pattern %q: %v", expr, err)
}

// compile builds the jail's rules from its builtin, and its patterns from regex, failregex and
// ignoreregex. Custom patterns match the whole line (or, for shapes that are not syslog text,
// the record as "tag[pid]: msg"); every match is one attempt (or group "n").
func (j *Jail) compile() error {
	var fail []string
	j.rules, j.ignore, j.fail, j.msgIgnore, j.tag, j.comms, j.conns, j.bySession = nil, nil, nil, nil, nil, nil, false, false
	if j.Builtin != "" {
		b, ok := Builtin[j.Builtin]
		if !ok {
			return fmt.Errorf("jail %s: unknown builtin %q (have %s)", j.Name, j.Builtin, BuiltinNames)
		}
		j.tag = regexp.MustCompile("^(?:" + b.tag + ")$")
		j.comms = b.comms
		if j.Regex == "" && len(j.FailRegex) == 0 {
			for _, rs := range b.rules {
				j.rules = append(j.rules, rule{rs.kind, regexp.MustCompile(rs.re)})
				j.conns = j.conns || rs.kind != KindAttempt
			}
			j.bySession = b.bySession
		}
		for _, ig := range b.ignore {
			j.msgIgnore = append(j.msgIgnore, regexp.MustCompile(ig))
		}
	}
	if j.Regex != "" {
		fail = append(fail, j.Regex)
	}
	fail = append(fail, j.FailRegex...)
	if len(fail) == 0 && len(j.rules) == 0 {
		return fmt.Errorf("jail %s: regex, failregex or builtin is required", j.Name)
	}
	for _, e := range fail {
		re, err := compilePattern(j.Name, e, true)
		if err != nil {
			return err
		}
		j.fail = append(j.fail, re)
	}
	for _, e := range j.IgnoreRegex {
		re, err := compilePattern(j.Name, e, false)
		if err != nil {
			return err
		}
		j.ignore = append(j.ignore, re)
	}
	return nil
}

// Verdict is what a jail makes of one line.
type Verdict struct {
	Addr  string // canonical address, when the line names one
	Kind  Kind
	Count int    // failures the line reports on its own (attempts only; 0: not an attempt)
	Why   string // why not, or which rule
	Rec   Record
	Sess  string // the session id the line names (Dovecot), if any
}

// Check runs the jail on one line.
func (j *Jail) Check(line string) Verdict { return j.CheckRecord(ParseRecord(line)) }

// CheckRecord runs the jail on one parsed line.
func (j *Jail) CheckRecord(rec Record) Verdict {
	v := Verdict{Rec: rec}
	if len(j.rules) > 0 {
		if rec.Tag == "" {
			v.Why = "no syslog tag found"
			return v
		}
		if !j.tag.MatchString(rec.Tag) {
			v.Why = fmt.Sprintf("tag %q is not this jail's daemon", rec.Tag)
			return v
		}
	}
	if rec.Comm != "" && len(j.comms) > 0 && !commAllowed(rec.Comm, j.comms) {
		v.Why = fmt.Sprintf("written by %q (journald _COMM), not by the daemon: ignored", rec.Comm)
		return v
	}
	var m []string
	var re *regexp.Regexp
	var which string
	for i, ru := range j.rules {
		if m = ru.re.FindStringSubmatch(rec.Msg); m != nil {
			re, v.Kind, which = ru.re, ru.kind, fmt.Sprintf("rule %d (%s)", i+1, ru.kind)
			break
		}
	}
	if m == nil {
		text := rec.Line
		for i, fre := range j.fail {
			m = fre.FindStringSubmatch(text)
			if m == nil && rec.Shape != "" && rec.Shape != "rfc3164" && rec.Shape != "rfc3339" && rec.Shape != "bare" {
				m = fre.FindStringSubmatch(rec.Canonical())
			}
			if m != nil {
				re, v.Kind, which = fre, KindAttempt, fmt.Sprintf("failregex %d", i+1)
				break
			}
		}
	}
	if m == nil {
		v.Why = "no failregex matched"
		if len(j.rules) > 0 {
			v.Why = "no rule matched"
		}
		return v
	}
	if re.SubexpIndex("addr") < 0 {
		// A rule for a line that names no address: it counts through its connection.
		v.Why = which + ", no address: counts through its connection"
		return v
	}
	raw := m[re.SubexpIndex("addr")]
	a, err := proto.ParseAddr(raw)
	if err != nil {
		return Verdict{Rec: rec, Why: fmt.Sprintf("%s matched, but %q is not an IP address", which, raw)}
	}
	v.Addr = a.String()
	if k := re.SubexpIndex("sess"); k >= 0 {
		v.Sess = m[k]
	}
	for k, ig := range j.msgIgnore {
		if ig.MatchString(rec.Msg) {
			v.Kind, v.Why = KindNone, fmt.Sprintf("ignore rule %d matched", k+1)
			return v
		}
	}
	for k, ig := range j.ignore {
		if ig.MatchString(rec.Line) {
			v.Kind, v.Why = KindNone, fmt.Sprintf("ignoreregex %d matched", k+1)
			return v
		}
	}
	v.Why = which
	if v.Kind != KindAttempt {
		return v
	}
	n := 1
	if k := re.SubexpIndex("n"); k >= 0 && m[k] != "" {
		// One line counts for at most maxretry: a forged "1000 attempts" is one ban's worth.
		if c, err := strconv.Atoi(m[k]); err == nil && c >= 0 {
			n = min(c, max(j.MaxRetry, 1))
		} else if err != nil {
			n = max(j.MaxRetry, 1)
		}
	}
	if n == 0 {
		v.Kind, v.Why = KindNone, "no failed attempt"
		return v
	}
	v.Count = n
	return v
}

// commAllowed reports whether journald's _COMM (the kernel's 15-character process name) is one of
// the daemon's processes.
func commAllowed(comm string, comms []string) bool {
	for _, c := range comms {
		if comm == c || len(c) > 15 && comm == c[:15] {
			return true
		}
	}
	return false
}

// Match returns the address a line names as failing and how many attempts the line counts on its
// own. A connection's markers and ends count only through Tally, which sees the whole connection.
func (j *Jail) Match(line string) (string, int, bool) {
	v := j.Check(line)
	return v.Addr, v.Count, v.Count > 0
}
