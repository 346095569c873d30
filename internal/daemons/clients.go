package daemons

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/bansshee/bansshee/internal/netns"
	"golang.org/x/crypto/ssh"
)

// Client logs in to the server's daemons from a lab host, the way brute-force tools and mail
// clients do. Each method makes one connection and tries the passwords in order on it, stopping at
// the first that works; it reports whether one did and how many wrong passwords the server saw.
type Client struct {
	Server *Server
	Host   *netns.Host
	Src    netip.Addr // source address (one of Host's); its family picks the server's
}

// SSH tries passwords for user over one SSH connection (password authentication).
func (c *Client) SSH(user string, passwords ...string) (bool, int, error) {
	conn, err := c.Server.Dial(c.Host, c.Src, SSHPort)
	if err != nil {
		return false, 0, err
	}
	_ = conn.SetDeadline(time.Now().Add(90 * time.Second))
	i := 0
	cfg := &ssh.ClientConfig{User: user, HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second,
		Auth: []ssh.AuthMethod{ssh.RetryableAuthMethod(ssh.PasswordCallback(func() (string, error) {
			if i >= len(passwords) {
				return "", errors.New("no more passwords")
			}
			i++
			return passwords[i-1], nil
		}), len(passwords))}}
	sc, _, _, err := ssh.NewClientConn(conn, conn.RemoteAddr().String(), cfg)
	if err != nil {
		conn.Close()
		// Refused after trying: every password sent was wrong (sshd may cut off at MaxAuthTries).
		if i > 0 && (strings.Contains(err.Error(), "unable to authenticate") || strings.Contains(err.Error(), "Too many authentication failures")) {
			return false, i, nil
		}
		return false, i, err
	}
	sc.Close()
	return true, i - 1, nil
}

// testKey is an Ed25519 key made from a fixed seed, so the captured lines' fingerprints repeat.
func testKey(seed byte) ssh.Signer {
	k := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
	s, err := ssh.NewSignerFromKey(k)
	if err != nil {
		panic(err)
	}
	return s
}

// AdminKey is the honest admin's key, authorised on the key-only sshd.
func AdminKey() ssh.Signer { return testKey(1) }

// WrongKeys are n keys no account authorises (an agent full of other hosts' keys).
func WrongKeys(n int) []ssh.Signer {
	out := make([]ssh.Signer, n)
	for i := range out {
		out[i] = testKey(byte(10 + i))
	}
	return out
}

// SSHKeys offers keys, in order, for user over one connection to the sshd on port (public key
// authentication only, as a key-only server allows). It reports whether one was accepted.
func (c *Client) SSHKeys(port int, user string, keys ...ssh.Signer) (bool, error) {
	conn, err := c.Server.Dial(c.Host, c.Src, port)
	if err != nil {
		return false, err
	}
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	cfg := &ssh.ClientConfig{User: user, HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(keys...)}}
	sc, _, _, err := ssh.NewClientConn(conn, conn.RemoteAddr().String(), cfg)
	if err != nil {
		conn.Close()
		if strings.Contains(err.Error(), "unable to authenticate") || strings.Contains(err.Error(), "Too many authentication failures") {
			return false, nil
		}
		return false, err
	}
	sc.Close()
	return true, nil
}

type textConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *Client) dialText(port int) (*textConn, error) {
	conn, err := c.Server.Dial(c.Host, c.Src, port)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(90 * time.Second))
	t := &textConn{Conn: conn, r: bufio.NewReader(conn)}
	if _, err := t.line(); err != nil { // greeting
		conn.Close()
		return nil, err
	}
	return t, nil
}

func (t *textConn) line() (string, error) {
	l, err := t.r.ReadString('\n')
	return strings.TrimRight(l, "\r\n"), err
}

func (t *textConn) cmd(format string, args ...any) (string, error) {
	if _, err := fmt.Fprintf(t, format+"\r\n", args...); err != nil {
		return "", err
	}
	return t.line()
}

// ehlo greets an SMTP server and reads its multi-line answer.
func (t *textConn) ehlo() error {
	if _, err := fmt.Fprintf(t, "EHLO client.lab.example\r\n"); err != nil {
		return err
	}
	for {
		l, err := t.line()
		if err != nil {
			return err
		}
		if strings.HasPrefix(l, "250 ") {
			return nil
		}
	}
}

// IMAP tries passwords with LOGIN commands on one Dovecot connection.
func (c *Client) IMAP(user string, passwords ...string) (bool, int, error) {
	return c.IMAPAt(IMAPPort, user, passwords...)
}

// IMAPAt is IMAP on another port (the second Dovecot's).
func (c *Client) IMAPAt(port int, user string, passwords ...string) (bool, int, error) {
	t, err := c.dialText(port)
	if err != nil {
		return false, 0, err
	}
	defer t.Close()
	for i, pw := range passwords {
		tag := fmt.Sprintf("a%d", i)
		if _, err := fmt.Fprintf(t, "%s LOGIN %s %s\r\n", tag, imapQuote(user), imapQuote(pw)); err != nil {
			return false, i, err
		}
		for {
			l, err := t.line()
			if err != nil {
				return false, i, err
			}
			if strings.HasPrefix(l, tag+" OK") {
				_, _ = t.cmd("z LOGOUT")
				return true, i, nil
			}
			if strings.HasPrefix(l, tag+" ") {
				break
			}
		}
	}
	_, _ = t.cmd("z LOGOUT")
	return false, len(passwords), nil
}

func imapQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// POP3 tries passwords with USER/PASS on one Cyrus connection.
func (c *Client) POP3(user string, passwords ...string) (bool, int, error) {
	t, err := c.dialText(POP3Port)
	if err != nil {
		return false, 0, err
	}
	defer t.Close()
	for i, pw := range passwords {
		l, err := t.cmd("USER %s", user)
		if err != nil {
			return false, i, err
		}
		if !strings.HasPrefix(l, "+OK") {
			// Cyrus refuses a name it cannot hold before the password and logs it as a
			// failed login ("badlogin: ... invalid user"): one failure, as far as it is concerned.
			_, _ = t.cmd("QUIT")
			return false, i + 1, nil
		}
		l, err = t.cmd("PASS %s", pw)
		if err != nil {
			return false, i, err
		}
		if strings.HasPrefix(l, "+OK") {
			_, _ = t.cmd("QUIT")
			return true, i, nil
		}
	}
	_, _ = t.cmd("QUIT")
	return false, len(passwords), nil
}

// POP3AuthLogin tries passwords with AUTH LOGIN (what hydra's pop3 module does) on one connection.
func (c *Client) POP3AuthLogin(user string, passwords ...string) (bool, int, error) {
	t, err := c.dialText(POP3Port)
	if err != nil {
		return false, 0, err
	}
	defer t.Close()
	b64 := base64.StdEncoding.EncodeToString
	for i, pw := range passwords {
		if l, err := t.cmd("AUTH LOGIN"); err != nil || !strings.HasPrefix(l, "+") {
			return false, i, fmt.Errorf("AUTH LOGIN: %q %v", l, err)
		}
		if _, err := t.cmd("%s", b64([]byte(user))); err != nil {
			return false, i, err
		}
		l, err := t.cmd("%s", b64([]byte(pw)))
		if err != nil {
			return false, i, err
		}
		if strings.HasPrefix(l, "+OK") {
			_, _ = t.cmd("QUIT")
			return true, i, nil
		}
	}
	_, _ = t.cmd("QUIT")
	return false, len(passwords), nil
}

// SMTP tries passwords with AUTH PLAIN on one Postfix connection to port (25 or 587).
func (c *Client) SMTP(port int, user string, passwords ...string) (bool, int, error) {
	t, err := c.dialText(port)
	if err != nil {
		return false, 0, err
	}
	defer t.Close()
	if err := t.ehlo(); err != nil {
		return false, 0, err
	}
	for i, pw := range passwords {
		l, err := t.cmd("AUTH PLAIN %s", base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pw)))
		if err != nil {
			return false, i, err
		}
		if strings.HasPrefix(l, "235") {
			_, _ = t.cmd("QUIT")
			return true, i, nil
		}
	}
	_, _ = t.cmd("QUIT")
	return false, len(passwords), nil
}

// Leave connects and disconnects without logging in (a scanner, or a client that changed its mind).
func (c *Client) Leave(port int) error {
	t, err := c.dialText(port)
	if err != nil {
		return err
	}
	return t.Close()
}

// SMTPMechanism asks Postfix for a SASL mechanism it does not offer, then quits.
func (c *Client) SMTPMechanism(port int, mech string) error {
	t, err := c.dialText(port)
	if err != nil {
		return err
	}
	defer t.Close()
	if err := t.ehlo(); err != nil {
		return err
	}
	l, err := t.cmd("AUTH %s", mech)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(l, "5") {
		return fmt.Errorf("AUTH %s: %q, want a refusal", mech, l)
	}
	_, _ = t.cmd("QUIT")
	return nil
}
