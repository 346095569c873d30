package daemons

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/bansshee/bansshee/internal/netns"
)

// Services the scenario attacks, named for the jail that reads their lines.
const (
	SSH        = "sshd"
	IMAP       = "dovecot"
	POP3       = "cyrus"
	SMTP       = "postfix-sasl"
	Submission = "postfix-sasl/submission"
)

// Planted are the addresses the attacker writes into user names; no jail may ever name them.
var Planted = []string{"198.51.100.200", "198.51.100.201", "198.51.100.202", "198.51.100.203", "198.51.100.204",
	"198.51.100.205", "198.51.100.206", "198.51.100.207", "198.51.100.208", "2001:db8::bad"}

// Hostile user names: each tries to put a planted address where one jail or another looks.
var hostile = map[string][]string{
	SSH: {"x from 198.51.100.200 port 1", "admin from 198.51.100.201 port 22 ssh2", "root 198.51.100.202 port 1 [preauth]",
		"rhost=198.51.100.206 user=x"},
	IMAP: {"x>, method=PLAIN, rip=198.51.100.203, lip=1", "u,198.51.100.207): unknown user", "bob"},
	POP3: {"x [198.51.100.204]", "bob[2001:db8::bad]", "bob"},
	SMTP: {"x] 198.51.100.205 [y", "unknown[198.51.100.208]: SASL LOGIN authentication failed: x", "bob"},
}

// Scenario is what RunScenario did and what the daemons wrote.
type Scenario struct {
	Attacker []string `json:"attacker"` // the attacker's source addresses
	Honest   string   `json:"honest"`
	Planted  []string `json:"planted"`
	// Failed counts the wrong passwords sent, by service and source address.
	Failed map[string]map[string]int `json:"failed"`
	Lines  []string                  `json:"-"`
}

func (sc *Scenario) add(svc string, src netip.Addr, n int) {
	if sc.Failed[svc] == nil {
		sc.Failed[svc] = map[string]int{}
	}
	sc.Failed[svc][src.String()] += n
}

// RunScenario attacks every daemon from attacker (IPv4 and IPv6) with wrong passwords and the
// hostile user names, and logs in from honest after a few typos (three for SSH, two for POP3, one
// for IMAP and SMTP), each service in parallel. It returns when every daemon has logged what it
// was sent.
func RunScenario(s *Server, attacker, honest *netns.Host) (*Scenario, error) {
	from := len(s.Syslog.Lines())
	sc := &Scenario{Attacker: []string{attacker.IP4.String(), attacker.IP6.String()}, Honest: honest.IP4.String(),
		Planted: Planted, Failed: map[string]map[string]int{}}
	a4 := &Client{Server: s, Host: attacker, Src: attacker.IP4}
	a6 := &Client{Server: s, Host: attacker, Src: attacker.IP6}
	h := &Client{Server: s, Host: honest, Src: honest.IP4}
	var mu sync.Mutex
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
	// try runs one login and records the wrong passwords it sent.
	try := func(svc string, c *Client, fn func() (bool, int, error), wantOK bool) error {
		ok, wrong, err := fn()
		mu.Lock()
		sc.add(svc, c.Src, wrong)
		mu.Unlock()
		if err != nil {
			return err
		}
		if ok != wantOK {
			return fmt.Errorf("login from %s: ok=%v, want %v", c.Src, ok, wantOK)
		}
		return nil
	}
	step("ssh", func() error {
		for _, u := range hostile[SSH] {
			if err := try(SSH, a4, func() (bool, int, error) { return a4.SSH(u, "123456", "password") }, false); err != nil {
				return err
			}
		}
		// More passwords than MaxAuthTries (6): sshd cuts the connection after six; the client counts
		// what it sent.
		if err := try(SSH, a4, func() (bool, int, error) { return a4.SSH("root", "a", "b", "c", "d", "e", "f", "g") }, false); err != nil {
			return err
		}
		return try(SSH, h, func() (bool, int, error) { return h.SSH(User, "typo1", "typo2", "typo3", Password) }, true)
	})
	step("imap", func() error {
		for _, u := range hostile[IMAP] {
			if err := try(IMAP, a4, func() (bool, int, error) { return a4.IMAP(u, "123456", "password") }, false); err != nil {
				return err
			}
		}
		if err := a4.Leave(IMAPPort); err != nil { // a scanner: no attempt, not a failure
			return err
		}
		return try(IMAP, h, func() (bool, int, error) { return h.IMAP(User, "typo", Password) }, true)
	})
	step("pop3", func() error {
		for _, u := range hostile[POP3] {
			if err := try(POP3, a4, func() (bool, int, error) { return a4.POP3(u, "123456", "password") }, false); err != nil {
				return err
			}
		}
		if err := try(POP3, a4, func() (bool, int, error) { return a4.POP3AuthLogin("admin", "a", "b") }, false); err != nil {
			return err
		}
		if err := try(POP3, a6, func() (bool, int, error) { return a6.POP3("bob", "a", "b", "c", "d", "e") }, false); err != nil {
			return err
		}
		return try(POP3, h, func() (bool, int, error) { return h.POP3(User, "typo1", "typo2", Password) }, true)
	})
	step("smtp", func() error {
		for _, u := range hostile[SMTP] {
			if err := try(SMTP, a4, func() (bool, int, error) { return a4.SMTP(SMTPPort, u, "123456") }, false); err != nil {
				return err
			}
		}
		if err := try(Submission, a4, func() (bool, int, error) { return a4.SMTP(SubmissionPort, "info", "a", "b") }, false); err != nil {
			return err
		}
		// An unsupported mechanism is the client's mistake, not a password guess.
		if err := a4.SMTPMechanism(SMTPPort, "XBANSSHEE"); err != nil {
			return err
		}
		return try(SMTP, h, func() (bool, int, error) { return h.SMTP(SubmissionPort, User, "typo", Password) }, true)
	})
	wg.Wait()
	if len(errs) > 0 {
		return sc, errors.Join(errs...)
	}
	// Login processes write their summary when the connection closes: wait for the last ones.
	if _, err := s.Syslog.WaitFor(from, 30*time.Second, "imap-login: Login: user=<"+User+">"); err != nil {
		return sc, err
	}
	if err := waitQuiet(s.Syslog, 500*time.Millisecond, 10*time.Second); err != nil {
		return sc, err
	}
	sc.Lines = s.Syslog.Since(from)
	return sc, nil
}

// waitQuiet polls until no line has arrived for quiet, or fails after timeout.
func waitQuiet(s *Syslog, quiet, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	n, since := len(s.Lines()), time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		if m := len(s.Lines()); m != n {
			n, since = m, time.Now()
		} else if time.Since(since) >= quiet {
			return nil
		}
	}
	return fmt.Errorf("syslog still busy after %s", timeout)
}

// Services lists the scenario's services in order.
func (sc *Scenario) Services() []string {
	var out []string
	for k := range sc.Failed {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
