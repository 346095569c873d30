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

// A line reaches a jail as the whole log line (rsyslog's file format, RFC 3339 or traditional
// timestamps, or the bare "tag[pid]: message" that journald exporters ship). Every built-in
// pattern is anchored at the start of the line on the daemon's own tag and fixed phrase, so no text
// a client controls (a user name, a SASL name, a host name it announces) can stand where the
// pattern looks for the address: that text only ever comes later in the line. Where a client's text
// can follow the address, the pattern takes the last candidate before a fixed end of line
// (sshd, Dovecot's auth process) or the first after a fixed phrase (Cyrus, Postfix, PAM).
const (
	// linePrefix is an optional timestamp and host name before the tag.
	linePrefix = `^(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)? |\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d) )?(?:[-.\w]+ )?`
	// addrRe is where a pattern's address goes; Match keeps only canonical IP addresses.
	addrRe = `(?P<addr>[0-9A-Fa-f.:]+)`
)

// builtinJail is a built-in jail's patterns: failregex lines each count as one failure (or as
// the number their group "n" holds), unless an ignoreregex matches the same line.
type builtinJail struct {
	fail, ignore []string
}

func p(s string) string { return linePrefix + strings.ReplaceAll(s, "<A>", addrRe) }

// Builtin jails, by name. Their patterns are the failure lines Debian's daemons write, captured in
// testdata/real (see docs/TRIGGERS.md for what each covers and leaves out, and why).
var Builtin = map[string]builtinJail{
	// OpenSSH (sshd, and sshd-session since 9.8): one "Failed" line per password or PAM attempt.
	// pam_unix's lines repeat those attempts and "Invalid user"/"Connection closed" lines repeat
	// the connection, so they are not counted (count attempts, not lines).
	"sshd": {fail: []string{
		p(`sshd(?:-session)?\[\d+\]: Failed (?:password|keyboard-interactive/pam) for (?:invalid user )?.* from <A> port \d+(?: ssh2)?$`),
	}},
	// Dovecot: the login process's summary counts the connection's failed attempts ("auth failed,
	// N attempts"); the auth process's verbose lines are counted only without a session id (SASL
	// for Postfix or Exim), since a session's attempts are already in its login line.
	"dovecot": {fail: []string{
		p(`dovecot(?:\[\d+\])?: (?:pop3|imap|submission|managesieve)-login: (?:Disconnected|Aborted login)[^()]*\((?:auth failed, (?P<n>\d+) attempts?|tried to use disallowed plaintext auth)[^()]*\): user=<.*>, (?:method=[-\w]+, )?rip=<A>, lip=`),
		p(`dovecot(?:\[\d+\])?: auth(?:-worker\(\d+\))?: (?:passwd-file|passwd|shadow|pam|sql|ldap|checkpassword|bsdauth)\(.*,<A>\): (?:unknown user|Password mismatch|pam_authenticate\(\) failed: (?:Authentication failure \(password mismatch\?\)|User not known to the underlying authentication module))$`),
	}},
	// Cyrus imapd/pop3d 2.x and 3.x: "badlogin: [host ][addr] MECH user reason"; the address is the
	// first bracket, right after the server's own reverse-DNS name.
	"cyrus": {fail: []string{
		p(`(?:cyrus/)?[-\w]+\[\d+\]: badlogin: (?:[^\s\[\]]+ )?\[<A>\] \S+ .*(?:SASL\(-13\)|SASL\(-20\)|[Aa]uthentication failure|user not found|invalid user)`),
	}},
	// Postfix smtpd, submission and smtps: the client field before ": SASL". A lost connection to
	// the authentication server, Cyrus SASL's "generic failure" (an unreadable sasldb, a broken
	// saslauthd) and an unsupported mechanism are the server's problem or a client's mistake.
	"postfix-sasl": {
		fail:   []string{p(`postfix(?:-[-\w]+)?/(?:[-\w]+/)?smtpd\[\d+\]: warning: [-._\w]+\[<A>\]: SASL [-\w]+ authentication failed: `)},
		ignore: []string{p(`postfix(?:-[-\w]+)?/(?:[-\w]+/)?smtpd\[\d+\]: warning: [-._\w]+\[<A>\]: SASL [-\w]+ authentication failed: (?:Connection lost to authentication server|Invalid authentication mechanism|no mechanism available|generic failure)`)},
	},
	// PAM for services without a jail of their own (not in the defaults: under sshd and Dovecot it
	// repeats what those jails count). pam_unix logs a connection's first failure and PAM sums up
	// the rest ("PAM 5 more authentication failures") when the connection ends.
	"pam-generic": {fail: []string{
		p(`[-\w/.]+(?:\[\d+\])?: pam_unix\([-\w]+:auth\): authentication failure; logname=\S* uid=\d+ euid=\d+ tty=\S* ruser=\S* rhost=<A>(?:\s|$)`),
		p(`[-\w/.]+(?:\[\d+\])?: PAM (?P<n>\d+) more authentication failures?; logname=\S* uid=\d+ euid=\d+ tty=\S* ruser=\S* rhost=<A>(?:\s|$)`),
	}},
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

// compile builds the jail's patterns from its builtin, regex, failregex and ignoreregex.
func (j *Jail) compile() error {
	var fail, ignore []string
	if j.Builtin != "" {
		b, ok := Builtin[j.Builtin]
		if !ok {
			return fmt.Errorf("jail %s: unknown builtin %q (have %s)", j.Name, j.Builtin, BuiltinNames)
		}
		if j.Regex == "" && len(j.FailRegex) == 0 {
			fail = append(fail, b.fail...)
		}
		ignore = append(ignore, b.ignore...)
	}
	if j.Regex != "" {
		fail = append(fail, j.Regex)
	}
	fail = append(fail, j.FailRegex...)
	ignore = append(ignore, j.IgnoreRegex...)
	if len(fail) == 0 {
		return fmt.Errorf("jail %s: regex, failregex or builtin is required", j.Name)
	}
	j.fail, j.ignore = nil, nil
	for _, e := range fail {
		re, err := compilePattern(j.Name, e, true)
		if err != nil {
			return err
		}
		j.fail = append(j.fail, re)
	}
	for _, e := range ignore {
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
	Addr  string // canonical address, when a failure was found
	Count int    // failures the line reports (0: not a failure)
	Why   string // why not, or which pattern
}

// Check runs the jail on one line.
func (j *Jail) Check(line string) Verdict {
	for i, re := range j.fail {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		raw := m[re.SubexpIndex("addr")]
		a, err := proto.ParseAddr(raw)
		if err != nil {
			return Verdict{Why: fmt.Sprintf("failregex %d matched, but %q is not an IP address", i+1, raw)}
		}
		for k, ig := range j.ignore {
			if ig.MatchString(line) {
				return Verdict{Addr: a.String(), Why: fmt.Sprintf("ignoreregex %d matched", k+1)}
			}
		}
		n := 1
		if k := re.SubexpIndex("n"); k >= 0 && m[k] != "" {
			if v, err := strconv.Atoi(m[k]); err == nil && v >= 0 {
				n = min(v, 1000)
			}
		}
		if n == 0 {
			return Verdict{Addr: a.String(), Why: "no failed attempt"}
		}
		return Verdict{Addr: a.String(), Count: n, Why: fmt.Sprintf("failregex %d", i+1)}
	}
	return Verdict{Why: "no failregex matched"}
}

// Match returns the address a line names as failing and how many failures it reports.
func (j *Jail) Match(line string) (string, int, bool) {
	v := j.Check(line)
	return v.Addr, v.Count, v.Count > 0
}
