package trigger

import (
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
)

// Record is one log event taken apart: the program that wrote it (its syslog tag), its pid and the
// message. Jails match the message of a record whose tag is their daemon's; the shape of the line
// around it (which timestamp, which host, syslog or journald or Dovecot's own file) does not
// matter to them.
type Record struct {
	Line  string // the event as it arrived
	Shape string // rfc3164, rfc3339, rfc5424, bare, journal-json, dovecot-file, or "" (no tag found)
	Tag   string // the program: "sshd", "postfix/smtpd", "dovecot"
	PID   string // "" when the line carries none
	Msg   string // the message after "tag[pid]: "
	// Comm is journald's _COMM, the kernel's name of the process that wrote the line (set by
	// journald, not by the writer); "" when the shape does not carry it.
	Comm string
}

// Canonical is the record as a bare "tag[pid]: msg" line, for patterns written for syslog lines.
func (r Record) Canonical() string {
	if r.Tag == "" {
		return r.Line
	}
	if r.PID != "" {
		return r.Tag + "[" + r.PID + "]: " + r.Msg
	}
	return r.Tag + ": " + r.Msg
}

var (
	// A traditional (RFC 3164) timestamp, with either day padding ("Jun  8" or "Jun 8"), or an
	// RFC 3339 one (rsyslog's high-precision format, journalctl -o short-iso, with or without
	// fractions, "T" or a space, "Z" or an offset with or without its colon).
	tsRe = regexp.MustCompile(`^(?:[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d(?:\.\d+)?|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?) +`)
	// tag[pid]: at the start of what follows; a tag is what syslog(3) and journald allow in an
	// identifier (no space, no colon, no bracket), Dovecot's "auth-worker(22401)" included.
	tagRe = regexp.MustCompile(`^([^\s\[\]:]{1,64})(?:\[(\d{1,10})\])?: `)
	// A host name as syslog writes it.
	hostRe = regexp.MustCompile(`^[-.\w%]{1,255} `)
	// Dovecot writing its own log file (log_path): "pop3-login: Info: ...", "auth-worker(123): Info: ...",
	// 2.4's "auth(user,rip,sasl:plain): Info: ..." (a colon inside the parentheses) and
	// "auth-worker(user,rip)<pid>: request [1]: Info: ...".
	dovecotFileLineRe = regexp.MustCompile(`^((?:[a-z0-9]+-login|auth|auth-worker|imap|pop3|lmtp|submission|managesieve|master|config|log|anvil|director|doveadm|lda)(?:\([^()]*\))?(?:<[^<>]*>)*): (?:request \[\d+\]: )?(?:Info|Warning|Error|Fatal|Panic|Debug): `)
	dovecotFileRe     = regexp.MustCompile(`^(?:[a-z0-9]+-login|auth|auth-worker(?:\(\d+\))?|master|config|log|anvil|director|doveadm|imap|pop3|lmtp|submission|managesieve)(?:\(.*\))?(?:<\d+>)?(?:<[^>]*>)?$`)
	// The severities Dovecot writes before a message in its own files.
	dovecotLevelRe = regexp.MustCompile(`^(?:Info|Warning|Error|Fatal|Panic|Debug): `)
)

// ParseRecord takes a log event apart. It understands RFC 3164 and RFC 3339 syslog lines (with
// or without a host), RFC 5424 (with or without structured data), bare "tag[pid]: msg" lines,
// journald's JSON (journalctl -o json, fluent-bit's and vector's journald records) and Dovecot's
// own log files. A line it cannot take apart has an empty Tag.
func ParseRecord(line string) Record {
	r := Record{Line: line}
	s := strings.TrimRight(line, "\r\n")
	if strings.HasPrefix(s, "{") {
		parseJournalJSON(s, &r)
		return r
	}
	if parse5424(s, &r) {
		return r
	}
	shape := "bare"
	if m := tsRe.FindString(s); m != "" {
		shape = "rfc3164"
		if m[0] >= '0' && m[0] <= '9' {
			shape = "rfc3339"
		}
		s = s[len(m):]
		if dovecotFileLineRe.MatchString(s) {
			// Dovecot's own file: the process name stands where syslog puts the tag. Such a
			// file is written by Dovecot's log process alone.
			r.Shape, r.Tag, r.Msg = "dovecot-file", "dovecot", s
			return r
		}
		if m := tagRe.FindStringSubmatch(s); m == nil || !tagFollows(s, m) {
			// Not "tag: " straight after the timestamp: a host name first.
			if h := hostRe.FindString(s); h != "" {
				s = s[len(h):]
			}
		}
	}
	m := tagRe.FindStringSubmatch(s)
	if m == nil {
		return r
	}
	r.Shape, r.Tag, r.PID, r.Msg = shape, m[1], m[2], s[len(m[0]):]
	if m[2] == "" && dovecotFileRe.MatchString(m[1]) && dovecotLevelRe.MatchString(r.Msg) {
		// Dovecot's own file: the process name stands where syslog puts the tag. Such a file is
		// written by Dovecot's log process alone.
		r.Shape, r.Tag, r.Msg = "dovecot-file", "dovecot", m[1]+": "+r.Msg
	}
	return r
}

// tagFollows tells "tag: msg" from "host tag: msg" right after a timestamp: a host name is
// followed by another tag, a tag by its message. "mail1 sshd[1]: x" is a host; "sshd[1]: x" and
// Dovecot's "pop3-login: Info: x" are tags.
func tagFollows(s string, m []string) bool {
	if m[2] != "" {
		return true
	}
	rest := s[len(m[0]):]
	if dovecotFileRe.MatchString(m[1]) && dovecotLevelRe.MatchString(rest) {
		return true
	}
	// "host: msg" never happens; "tag: msg" does (no pid: Dovecot, the kernel, bare tags). A host
	// name would be followed by a tag, so prefer the reading in which a tag follows the host.
	if h := hostRe.FindString(s); h != "" && tagRe.MatchString(s[len(h):]) {
		return false
	}
	return true
}

// parse5424 reads "<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG" (PRI optional, as files
// written with rsyslog's RSYSLOG_SyslogProtocol23Format may drop it).
func parse5424(s string, r *Record) bool {
	rest := s
	if strings.HasPrefix(rest, "<") {
		end := strings.IndexByte(rest, '>')
		if end < 2 || end > 4 {
			return false
		}
		if _, err := strconv.Atoi(rest[1:end]); err != nil {
			return false
		}
		rest = rest[end+1:]
	}
	if !strings.HasPrefix(rest, "1 ") {
		return false
	}
	rest = rest[2:]
	var f [5]string // TIMESTAMP HOST APP PROCID MSGID
	for i := range f {
		sp := strings.IndexByte(rest, ' ')
		if sp <= 0 {
			return false
		}
		f[i], rest = rest[:sp], rest[sp+1:]
	}
	if f[0] != "-" && !(len(f[0]) >= 19 && f[0][4] == '-' && f[0][10] == 'T') {
		return false
	}
	// Structured data: "-" or one or more [id param="value"...] elements, values escaping \" \\ \].
	switch {
	case strings.HasPrefix(rest, "-"):
		rest = rest[1:]
	case strings.HasPrefix(rest, "["):
		i, inQuote := 0, false
		for ; i < len(rest); i++ {
			c := rest[i]
			if inQuote {
				if c == '\\' {
					i++
				} else if c == '"' {
					inQuote = false
				}
				continue
			}
			if c == '"' {
				inQuote = true
			} else if c == ']' && (i+1 == len(rest) || rest[i+1] != '[') {
				i++
				break
			}
		}
		if i > len(rest) {
			return false
		}
		rest = rest[i:]
	default:
		return false
	}
	rest = strings.TrimPrefix(rest, " ")
	rest = strings.TrimPrefix(rest, "\ufeff")
	r.Shape, r.Msg = "rfc5424", rest
	if f[2] != "-" {
		r.Tag = f[2]
	}
	if f[3] != "-" {
		r.PID = f[3]
	}
	return r.Tag != ""
}

// parseJournalJSON reads one journald entry as JSON: journalctl -o json writes MESSAGE,
// SYSLOG_IDENTIFIER, _COMM and _PID; vector's journald source writes "message"; a MESSAGE that is
// not valid UTF-8 arrives as an array of bytes.
func parseJournalJSON(s string, r *Record) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return
	}
	str := func(keys ...string) string {
		for _, k := range keys {
			raw, ok := m[k]
			if !ok {
				continue
			}
			var v string
			if json.Unmarshal(raw, &v) == nil {
				return v
			}
			var b []byte
			var ints []int
			if json.Unmarshal(raw, &ints) == nil {
				for _, c := range ints {
					b = append(b, byte(c))
				}
				return string(b)
			}
			var n json.Number
			if json.Unmarshal(raw, &n) == nil {
				return n.String()
			}
		}
		return ""
	}
	msg := str("MESSAGE", "message")
	tag := str("SYSLOG_IDENTIFIER", "syslog_identifier")
	comm := str("_COMM", "_comm")
	if tag == "" {
		tag = comm
	}
	if msg == "" || tag == "" {
		return
	}
	pid := str("_PID", "_pid", "SYSLOG_PID") // _PID is journald's own
	if _, err := strconv.Atoi(pid); err != nil {
		pid = ""
	}
	r.Shape, r.Tag, r.PID, r.Msg, r.Comm = "journal-json", tag, pid, strings.TrimRight(msg, "\n"), comm
}
