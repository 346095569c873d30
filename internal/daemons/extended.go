package daemons

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/bansshee/bansshee/internal/netns"
)

// Services of the extended scenario, named for the jail that reads their lines.
const (
	KeyOnlySSH = "sshd-keyonly"
	IMAPFile   = "dovecot-file"
	PortLog    = "postfix-portlog"
)

// PlantedExt are the addresses the extended scenario's attacker writes into user names.
var PlantedExt = []string{"198.51.100.210", "198.51.100.211", "198.51.100.212", "198.51.100.213", "198.51.100.214"}

// ExtScenario is what RunExtended did and what the daemons wrote.
type ExtScenario struct {
	Attacker string   `json:"attacker"`
	Honest   string   `json:"honest"`
	Planted  []string `json:"planted"`
	// Failed counts, by service and source: failed connections to the key-only sshd (each one
	// attempt), wrong passwords to the others.
	Failed map[string]map[string]int `json:"failed"`
	// Sessions is how many times the honest admin logged in to the key-only sshd, each after
	// WrongKeysPerSession refused keys.
	Sessions            int      `json:"sessions"`
	WrongKeysPerSession int      `json:"wrong_keys_per_session"`
	Lines               []string `json:"-"` // syslog
	DovecotFile         []string `json:"-"` // the second Dovecot's own log file
}

// RunExtended attacks the key-only sshd (12 connections with hostile and common user names, two
// wrong keys each), the Dovecot that writes its own log file and the Postfix service that logs
// client ports, and has the honest admin log in to the key-only sshd ten times, each after four
// wrong keys, and to the others after one typo.
func RunExtended(s *Server, attacker, honest *netns.Host) (*ExtScenario, error) {
	from := len(s.Syslog.Lines())
	fileFrom := len(s.Dovecot2Log())
	sc := &ExtScenario{Attacker: attacker.IP4.String(), Honest: honest.IP4.String(), Planted: PlantedExt,
		Failed: map[string]map[string]int{}, Sessions: 10, WrongKeysPerSession: 4}
	a := &Client{Server: s, Host: attacker, Src: attacker.IP4}
	h := &Client{Server: s, Host: honest, Src: honest.IP4}
	var mu sync.Mutex
	add := func(svc, src string, n int) {
		mu.Lock()
		defer mu.Unlock()
		if sc.Failed[svc] == nil {
			sc.Failed[svc] = map[string]int{}
		}
		sc.Failed[svc][src] += n
	}
	var errs []error
	var wg sync.WaitGroup
	step := func(name string, fn func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				mu.Unlock()
			}
		}()
	}
	step("ssh key-only", func() error {
		users := []string{"admin", "x from 198.51.100.210 port 1", "oracle 198.51.100.211 port 22 [preauth]", "ubuntu", "test",
			"git", "root", "root", "root", "root", User, User}
		for _, u := range users {
			ok, err := a.SSHKeys(KeyOnlySSHPort, u, WrongKeys(2)...)
			if err != nil {
				return err
			}
			if ok {
				return fmt.Errorf("attacker logged in as %q", u)
			}
			add(KeyOnlySSH, a.Src.String(), 1)
		}
		for i := 0; i < sc.Sessions; i++ {
			ok, err := h.SSHKeys(KeyOnlySSHPort, User, append(WrongKeys(sc.WrongKeysPerSession), AdminKey())...)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("honest admin session %d refused", i+1)
			}
		}
		return nil
	})
	step("imap (own log file)", func() error {
		for _, u := range []string{"bob", "x>, method=PLAIN, rip=198.51.100.212, lip=1", "admin"} {
			ok, wrong, err := a.IMAPAt(IMAP2Port, u, "123456", "password")
			add(IMAPFile, a.Src.String(), wrong)
			if err != nil || ok {
				return fmt.Errorf("attacker as %q: ok=%v err=%v", u, ok, err)
			}
		}
		ok, wrong, err := h.IMAPAt(IMAP2Port, User, "typo", Password)
		add(IMAPFile, h.Src.String(), wrong)
		if err != nil || !ok {
			return fmt.Errorf("honest login: ok=%v err=%v", ok, err)
		}
		return nil
	})
	step("smtp (client ports logged)", func() error {
		for _, u := range []string{"info", "x]:1: SASL LOGIN authentication failed: 198.51.100.213", "unknown[198.51.100.214]:25: y", "sales", "bob"} {
			ok, wrong, err := a.SMTP(PortLogPort, u, "123456")
			add(PortLog, a.Src.String(), wrong)
			if err != nil || ok {
				return fmt.Errorf("attacker as %q: ok=%v err=%v", u, ok, err)
			}
		}
		ok, wrong, err := h.SMTP(PortLogPort, User, "typo", Password)
		add(PortLog, h.Src.String(), wrong)
		if err != nil || !ok {
			return fmt.Errorf("honest login: ok=%v err=%v", ok, err)
		}
		return nil
	})
	wg.Wait()
	if len(errs) > 0 {
		return sc, errors.Join(errs...)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		lines := s.Dovecot2Log()[fileFrom:]
		if strings.Contains(strings.Join(lines, "\n"), "Login: user=<"+User+">") {
			break
		}
		if time.Now().After(deadline) {
			return sc, fmt.Errorf("the second Dovecot never logged the honest login; its log:\n%s", strings.Join(lines, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := waitQuiet(s.Syslog, 500*time.Millisecond, 10*time.Second); err != nil {
		return sc, err
	}
	sc.Lines = s.Syslog.Since(from)
	sc.DovecotFile = s.Dovecot2Log()[fileFrom:]
	return sc, nil
}
