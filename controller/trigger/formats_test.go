package trigger

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// testdata/formats holds one line per log format string of each daemon version in
// docs/TRIGGERS.md's table, rendered from the daemon's own source at that release tag (the file
// and line are in the table), with the address a jail must find and what it must count. The
// real daemons' own lines are in testdata/real; these cover the versions this machine cannot run.
type formatRow struct {
	file, version, scenario, jail, addr, want, line string
	lineNo                                          int
}

func readFormats(t *testing.T) []formatRow {
	t.Helper()
	var rows []formatRow
	files, _ := filepath.Glob("testdata/formats/*.tsv")
	if len(files) == 0 {
		t.Fatal("no testdata/formats/*.tsv")
	}
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		n := 0
		for sc.Scan() {
			n++
			c := strings.Split(sc.Text(), "\t")
			if len(c) < 5 || strings.HasPrefix(c[0], "#") {
				continue
			}
			r := formatRow{file: filepath.Base(f), lineNo: n}
			switch filepath.Base(f) {
			case "postfix-cyrus.tsv": // daemon, version, scenario, address, count, line
				r.jail = map[string]string{"postfix-smtpd": "postfix-sasl", "cyrus-imapd": "cyrus", "cyrus-pop3d": "cyrus"}[c[0]]
				r.version, r.scenario, r.addr, r.want, r.line = c[1], c[2], c[3], c[4], strings.Join(c[5:], "\t")
			case "dovecot.tsv": // version, scenario, address, count, line
				r.jail, r.version, r.scenario, r.addr, r.want, r.line = "dovecot", c[0], c[1], c[2], c[3], strings.Join(c[4:], "\t")
			case "openssh.tsv": // version, scenario, address, attempt|conn|none|success, line
				r.jail, r.version, r.scenario, r.addr, r.want, r.line = "sshd", c[0], c[1], c[2], c[3], strings.Join(c[4:], "\t")
			default:
				t.Fatalf("%s: unknown corpus", f)
			}
			rows = append(rows, r)
		}
		fh.Close()
	}
	return rows
}

func TestFormatsFromSource(t *testing.T) {
	cfg, err := ParseConfig([]byte(`{"jails":[{"name":"sshd","builtin":"sshd"},{"name":"dovecot","builtin":"dovecot"},{"name":"cyrus","builtin":"cyrus"},{"name":"postfix-sasl","builtin":"postfix-sasl"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	jails := map[string]*Jail{}
	for i := range cfg.Jails {
		jails[cfg.Jails[i].Name] = &cfg.Jails[i]
	}
	found, failures, bad := 0, 0, 0
	for _, r := range readFormats(t) {
		v := jails[r.jail].Check(r.line)
		want := r.want
		// Where this project counts differently from the research's per-line recommendation, on
		// purpose (docs/TRIGGERS.md): a refused key is one failure per connection, not per key
		// (an admin's agent offers several), and "Failed keyboard-interactive/pam" repeats the
		// PAM error line that counts the attempt.
		if r.jail == "sshd" && (strings.Contains(r.line, ": Failed publickey for ") || strings.Contains(r.line, ": Failed keyboard-interactive/pam for ")) {
			want = "conn"
		}
		// A change of user name in mid-connection writes both client-chosen names after the
		// address, so the address is taken from the connection's earlier lines, not this one.
		if r.jail == "sshd" && strings.Contains(r.line, "Change of username or service not allowed") && want == "conn" {
			r.addr = "-"
		}
		var ok bool
		switch want {
		case "attempt":
			ok = v.Kind == KindAttempt && v.Addr == r.addr
		case "conn":
			ok = (v.Kind == KindMarker || v.Kind == KindRefused || v.Kind == KindEndUser || v.Kind == KindEnd) && (v.Addr == r.addr || r.addr == "-" && v.Addr == "")
		case "success":
			ok = v.Kind == KindSuccess && v.Addr == r.addr
		case "none", "0":
			ok = v.Count == 0 && v.Kind != KindMarker && v.Kind != KindRefused && v.Kind != KindEndUser
		default:
			n, err := strconv.Atoi(want)
			if err != nil {
				t.Fatalf("%s:%d: want %q", r.file, r.lineNo, r.want)
			}
			ok = v.Addr == r.addr && v.Count == min(n, 5)
		}
		if want != "none" && want != "0" && want != "success" {
			failures++
			if ok {
				found++
			}
		}
		if !ok {
			bad++
			t.Errorf("%s:%d %s %s (%s): want %s %s, got %q %s x%d (%s)\n\t%s", r.file, r.lineNo, r.jail, r.version, r.scenario, r.addr, r.want, v.Addr, v.Kind, v.Count, v.Why, r.line)
		}
	}
	t.Logf("failure lines found: %d of %d; rows wrong: %d", found, failures, bad)
	if found*100 < failures*100 {
		t.Errorf("found %s", fmt.Sprintf("%d of %d", found, failures))
	}
}
