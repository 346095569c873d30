package trigger

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/bansshee/bansshee/internal/daemons"
	"github.com/bansshee/bansshee/internal/netns"
)

var capture = flag.Bool("capture", false, "rewrite testdata/real from the real daemons (make fixtures)")

const realDir = "testdata/real"

// TestRealDaemons runs Debian's OpenSSH, Dovecot, Cyrus pop3d and Postfix in a namespace, attacks
// them with wrong passwords and hostile user names, lets an honest client log in after typos, and
// puts the lines the daemons wrote through the Lambda handler.
func TestRealDaemons(t *testing.T) {
	if err := daemons.Available(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("real daemons unavailable under CI: %v", err)
		}
		t.Skipf("SKIP (real daemons): %v", err)
	}
	lab := netns.NewLab(t)
	srv, err := lab.AddHost("mail")
	if err != nil {
		t.Fatal(err)
	}
	att, err := lab.AddHost("attacker")
	if err != nil {
		t.Fatal(err)
	}
	hon, err := lab.AddHost("honest")
	if err != nil {
		t.Fatal(err)
	}
	s, cleanup, err := daemons.Start(lab, srv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cleanup)
	sc, err := daemons.RunScenario(s, att, hon)
	if err != nil {
		t.Fatalf("%v\nsyslog:\n%s", err, strings.Join(s.Syslog.Lines(), "\n"))
	}
	if *capture {
		writeFixtures(t, sc)
	}
	checkScenario(t, sc)

	ext, err := daemons.RunExtended(s, att, hon)
	if err != nil {
		t.Fatalf("%v\nsyslog:\n%s", err, strings.Join(s.Syslog.Lines(), "\n"))
	}
	if *capture {
		writeExtFixtures(t, ext)
	}
	checkExtended(t, ext)
}

// TestRealDaemonExtendedFixtures checks the captured lines of the extended scenario (no root).
func TestRealDaemonExtendedFixtures(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(realDir, "extended.json"))
	if err != nil {
		t.Fatal(err)
	}
	var sc daemons.ExtScenario
	if err := json.Unmarshal(raw, &sc); err != nil {
		t.Fatal(err)
	}
	sc.Lines = readLines(t, "extended-syslog.log")
	sc.DovecotFile = readLines(t, "dovecot-file.log")
	checkExtended(t, &sc)
}

func readLines(t *testing.T, name string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(realDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
}

func writeExtFixtures(t *testing.T, sc *daemons.ExtScenario) {
	t.Helper()
	meta, _ := json.MarshalIndent(sc, "", "  ")
	for name, text := range map[string]string{"extended.json": string(meta), "extended-syslog.log": strings.Join(sc.Lines, "\n"),
		"dovecot-file.log": strings.Join(sc.DovecotFile, "\n")} {
		if err := os.WriteFile(filepath.Join(realDir, name), []byte(text+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("wrote %d syslog and %d Dovecot file lines", len(sc.Lines), len(sc.DovecotFile))
}

// checkExtended: the key-only attacker is one failure per connection (12), the honest admin's
// ten sessions of four refused keys each count nothing; Dovecot's own file and Postfix's
// port-logging lines are counted as their syslog twins are; and through the handler (one
// instance's stream, batches of seven) the attacker is banned by all three jails, the honest
// client by none, and no planted address appears anywhere.
func checkExtended(t *testing.T, sc *daemons.ExtScenario) {
	t.Helper()
	cfg, err := ParseConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	all := append(slices.Clone(sc.Lines), sc.DovecotFile...)
	want := map[string]map[string]int{
		"sshd":         {sc.Attacker: sc.Failed[daemons.KeyOnlySSH][sc.Attacker], sc.Honest: 0},
		"dovecot":      {sc.Attacker: sc.Failed[daemons.IMAPFile][sc.Attacker], sc.Honest: 0},
		"postfix-sasl": {sc.Attacker: sc.Failed[daemons.PortLog][sc.Attacker], sc.Honest: sc.Failed[daemons.PortLog][sc.Honest]},
	}
	var table []string
	for i := range cfg.Jails {
		j := &cfg.Jails[i]
		var vs []Verdict
		for _, l := range all {
			if v := j.Check(l); v.Kind != KindNone {
				vs = append(vs, v)
			}
		}
		got := j.Tally(vs, nil).Hits
		for addr := range got {
			if slices.Contains(sc.Planted, addr) {
				t.Errorf("jail %s counted planted address %s", j.Name, addr)
			} else if addr != sc.Attacker && addr != sc.Honest {
				t.Errorf("jail %s counted %s, which sent nothing", j.Name, addr)
			}
		}
		for src, n := range want[j.Name] {
			if got[src] != n {
				t.Errorf("jail %s, source %s: counted %d, want %d", j.Name, src, got[src], n)
			}
			table = append(table, fmt.Sprintf("| %s | %s | %d | %d |", j.Name, src, n, got[src]))
		}
	}
	sort.Strings(table)
	t.Logf("jail | source | failures sent | counted\n%s", strings.Join(table, "\n"))
	if sc.Failed[daemons.KeyOnlySSH][sc.Attacker] != 12 || sc.Sessions != 10 || sc.WrongKeysPerSession != 4 {
		t.Fatalf("scenario %+v", sc)
	}
	h := dryHandler(t, "")
	banned := map[string][]string{}
	feed := func(group string, lines []string) {
		for i := 0; i < len(lines); i += 7 {
			out, err := h.Handle(t.Context(), EncodeLogsEventStream(group, "i-0123456789abcdef0", lines[i:min(i+7, len(lines))]))
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range out.Bans {
				if !slices.Contains(banned[d.CIDR], d.Trigger) {
					banned[d.CIDR] = append(banned[d.CIDR], d.Trigger)
				}
			}
			text, _ := json.Marshal(out)
			for _, pl := range sc.Planted {
				if strings.Contains(string(text), pl) {
					t.Errorf("planted address %s appears in the handler's output: %s", pl, text)
				}
			}
		}
	}
	feed("/var/log/syslog", sc.Lines)
	feed("/var/log/dovecot.log", sc.DovecotFile)
	for k := range banned {
		sort.Strings(banned[k])
	}
	wantBans := map[string][]string{sc.Attacker + "/32": {"jail/dovecot", "jail/postfix-sasl", "jail/sshd"}}
	if fmt.Sprint(banned) != fmt.Sprint(wantBans) {
		t.Errorf("bans %v, want %v (the honest admin %s is never banned)", banned, wantBans, sc.Honest)
	}
}

// TestRealDaemonFixtures checks the captured lines (no root needed).
func TestRealDaemonFixtures(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(realDir, "scenario.json"))
	if err != nil {
		t.Fatal(err)
	}
	var sc daemons.Scenario
	if err := json.Unmarshal(raw, &sc); err != nil {
		t.Fatal(err)
	}
	lines, err := os.ReadFile(filepath.Join(realDir, "syslog.log"))
	if err != nil {
		t.Fatal(err)
	}
	sc.Lines = strings.Split(strings.TrimRight(string(lines), "\n"), "\n")
	checkScenario(t, &sc)
}

func writeFixtures(t *testing.T, sc *daemons.Scenario) {
	t.Helper()
	if err := os.MkdirAll(realDir, 0o755); err != nil {
		t.Fatal(err)
	}
	meta, _ := json.MarshalIndent(sc, "", "  ")
	if err := os.WriteFile(filepath.Join(realDir, "scenario.json"), append(meta, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(realDir, "syslog.log"), []byte(strings.Join(sc.Lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d lines to %s", len(sc.Lines), realDir)
}

// expectedFailures is what each jail should count for a source: the wrong passwords sent to the
// services whose lines it reads .
func expectedFailures(sc *daemons.Scenario, jail, src string) int {
	f := func(svc string) int { return sc.Failed[svc][src] }
	switch jail {
	case "postfix-sasl":
		return f(daemons.SMTP) + f(daemons.Submission)
	case "sshd", "cyrus", "dovecot":
		return f(jail)
	}
	return 0
}

func checkScenario(t *testing.T, sc *daemons.Scenario) {
	t.Helper()
	cfg, err := ParseConfig([]byte(`{"jails":[{"name":"sshd","builtin":"sshd"},{"name":"dovecot","builtin":"dovecot"},` +
		`{"name":"cyrus","builtin":"cyrus"},{"name":"postfix-sasl","builtin":"postfix-sasl"},{"name":"pam-generic","builtin":"pam-generic"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	// Every jail on every line: count per address.
	var table []string
	for i := range cfg.Jails {
		j := &cfg.Jails[i]
		counted := map[string]int{}
		for _, l := range sc.Lines {
			if addr, n, ok := j.Match(l); ok {
				counted[addr] += n
			}
		}
		for addr := range counted {
			if slices.Contains(sc.Planted, addr) {
				t.Errorf("jail %s counted planted address %s: a hostile user name won", j.Name, addr)
			} else if !slices.Contains(sc.Attacker, addr) && addr != sc.Honest {
				t.Errorf("jail %s counted %s, which sent nothing", j.Name, addr)
			}
		}
		if j.Name == "pam-generic" { // the PAM lines of sshd's attempts: the same counts
			for _, src := range append(slices.Clone(sc.Attacker), sc.Honest) {
				if sent := sc.Failed[daemons.SSH][src]; counted[src] > sent || counted[src] < sent && src != sc.Honest {
					t.Errorf("jail pam-generic, source %s: counted %d failures, sshd saw %d", src, counted[src], sent)
				}
			}
			table = append(table, fmt.Sprintf("| pam-generic (sshd's PAM lines) | %v |", counted))
			continue
		}
		for _, src := range append(slices.Clone(sc.Attacker), sc.Honest) {
			want := expectedFailures(sc, j.Name, src)
			got := counted[src]
			// Every attacker's failure counts once. An honest user's typos may go uncounted
			// (Dovecot reports only failed sessions), never over-counted.
			if got > want || got < want && src != sc.Honest {
				t.Errorf("jail %s, source %s: counted %d failures, sent %d", j.Name, src, got, want)
			}
			if want > 0 || got > 0 {
				table = append(table, fmt.Sprintf("| %s | %s | %d | %d | %d |", j.Name, src, want, min(got, want), max(got-want, 0)))
			}
		}
	}
	sort.Strings(table)
	t.Logf("jail | source | failures sent | counted | over-counted\n%s", strings.Join(table, "\n"))

	// The lines through the handler, in batches of 7 as a subscription might cut them.
	h := dryHandler(t, "")
	banned := map[string][]string{}
	for i := 0; i < len(sc.Lines); i += 7 {
		out, err := h.Handle(t.Context(), batch(t, "/var/log/syslog", sc.Lines[i:min(i+7, len(sc.Lines))]...))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range out.Bans {
			if !slices.Contains(banned[d.CIDR], d.Trigger) {
				banned[d.CIDR] = append(banned[d.CIDR], d.Trigger)
			}
		}
		text, _ := json.Marshal(out)
		for _, pl := range sc.Planted {
			if strings.Contains(string(text), pl) {
				t.Errorf("planted address %s appears in the handler's output: %s", pl, text)
			}
		}
	}
	want := map[string][]string{
		sc.Attacker[0] + "/32":  {"jail/cyrus", "jail/dovecot", "jail/postfix-sasl", "jail/sshd"},
		sc.Attacker[1] + "/128": {"jail/cyrus"},
	}
	for k := range banned {
		sort.Strings(banned[k])
	}
	if fmt.Sprint(banned) != fmt.Sprint(want) {
		t.Errorf("bans %v, want %v (the honest client %s is never banned)", banned, want, sc.Honest)
	}
}
