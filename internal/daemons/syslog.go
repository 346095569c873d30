// Package daemons runs the real daemons that bansshee's built-in jails read (Debian's OpenSSH,
// Dovecot, Cyrus pop3d and Postfix smtpd with SASL) inside a lab namespace, with their syslog
// captured as the lines rsyslog writes to /var/log/auth.log and mail.log. It is a test harness,
// not a way to run mail servers.
package daemons

import (
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Syslog receives syslog(3) datagrams on a unix socket (what /dev/log is) and keeps each as
// rsyslog's traditional file format writes it: "Nov 26 21:00:00 HOST tag[pid]: message".
type Syslog struct {
	Path string
	Host string

	conn *net.UnixConn
	wg   sync.WaitGroup
	mu   sync.Mutex
	// lines in arrival order
	lines []string
}

// ListenSyslog listens on path (removed first if it exists).
func ListenSyslog(path, host string) (*Syslog, error) {
	_ = os.Remove(path)
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("syslog socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		c.Close()
		return nil, err
	}
	s := &Syslog{Path: path, Host: host, conn: c}
	s.wg.Add(1)
	go s.loop()
	return s, nil
}

// glibc's syslog(3) sends "<PRI>Mmm dd hh:mm:ss tag[pid]: message".
var datagram = regexp.MustCompile(`^<\d+>([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (.*)$`)

func (s *Syslog) loop() {
	defer s.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, _, err := s.conn.ReadFromUnix(buf)
		if err != nil {
			return
		}
		msg := strings.TrimRight(string(buf[:n]), "\n\x00")
		line := msg
		if m := datagram.FindStringSubmatch(msg); m != nil {
			line = m[1] + " " + s.Host + " " + m[2]
		}
		s.mu.Lock()
		s.lines = append(s.lines, line)
		s.mu.Unlock()
	}
}

// Lines returns a copy of every line received so far.
func (s *Syslog) Lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

// Since returns the lines after the first n.
func (s *Syslog) Since(n int) []string {
	all := s.Lines()
	if n > len(all) {
		return nil
	}
	return all[n:]
}

// WaitFor polls until a line after the first `from` contains every one of subs, or the deadline passes.
func (s *Syslog) WaitFor(from int, timeout time.Duration, subs ...string) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		for _, l := range s.Since(from) {
			ok := true
			for _, sub := range subs {
				if !strings.Contains(l, sub) {
					ok = false
					break
				}
			}
			if ok {
				return l, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no syslog line with %q within %s (have %d lines)", subs, timeout, len(s.Lines()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Close stops listening.
func (s *Syslog) Close() error {
	err := s.conn.Close()
	s.wg.Wait()
	return errors.Join(err, os.Remove(s.Path))
}
