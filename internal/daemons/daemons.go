package daemons

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/bansshee/bansshee/internal/netns"
	"golang.org/x/crypto/ssh"
)

// Packages are the Debian packages the daemons come from (.ci/run installs them).
var Packages = []string{"openssh-server", "dovecot-core", "dovecot-imapd", "cyrus-pop3d", "cyrus-common", "sasl2-bin", "libsasl2-modules", "postfix"}

// Binaries are what Available looks for, one per package that matters.
var Binaries = []string{"/usr/sbin/sshd", "/usr/sbin/dovecot", "/usr/sbin/cyrmaster", "/usr/lib/postfix/sbin/master", "/usr/sbin/saslpasswd2", "/usr/bin/unshare", "/usr/sbin/useradd", "/usr/sbin/chpasswd"}

// Available reports why the daemons cannot run here, or nil.
func Available() error {
	if err := netns.Available(); err != nil {
		return err
	}
	var missing []string
	for _, b := range Binaries {
		if _, err := os.Stat(b); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s (apt-get install %s)", strings.Join(missing, ", "), strings.Join(Packages, " "))
	}
	return nil
}

// The one honest account every daemon knows, and its password.
const (
	User     = "bansshee-honest"
	Password = "correct-horse-7"
)

// Ports the daemons listen on (inside the server namespace).
const (
	SSHPort        = 22
	IMAPPort       = 143
	POP3Port       = 110
	SMTPPort       = 25
	SubmissionPort = 587
	// The extended set: key-only sshd, a Dovecot with its own log file, Postfix logging ports.
	KeyOnlySSHPort = 2222
	IMAP2Port      = 1143
	PortLogPort    = 2525
)

// Server is the four daemons running in one namespace, logging to one captured syslog.
type Server struct {
	Host   *netns.Host
	Dir    string
	Syslog *Syslog

	lab *netns.Lab
}

// devLogMu guards the /dev/log placeholder that bind mounts need on hosts without a syslog daemon.
var devLogMu sync.Mutex

// Start runs sshd, Dovecot (IMAP), Cyrus pop3d and Postfix smtpd (with Cyrus SASL) on host,
// each with /dev/log bind-mounted to the returned Syslog in a private mount namespace, and waits
// until every port answers. The lab's Close stops them; call the returned cleanup as well.
func Start(lab *netns.Lab, host *netns.Host) (*Server, func(), error) {
	if err := Available(); err != nil {
		return nil, nil, err
	}
	// Not a test's TempDir: the daemons' own users must be able to reach their files.
	dir, err := os.MkdirTemp("", "bansshee-daemons-")
	if err != nil {
		return nil, nil, err
	}
	s := &Server{Host: host, Dir: dir, lab: lab}
	cleanups := []func(){func() { _ = os.RemoveAll(dir) }}
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	fail := func(err error) (*Server, func(), error) {
		cleanup()
		return nil, nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return fail(err)
	}
	var sl *Syslog
	devLogMu.Lock()
	if _, err := os.Lstat("/dev/log"); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile("/dev/log", nil, 0o644); err != nil {
			devLogMu.Unlock()
			return fail(fmt.Errorf("placeholder /dev/log: %w", err))
		}
		cleanups = append(cleanups, func() { _ = os.Remove("/dev/log") })
	}
	devLogMu.Unlock()
	sl, err = ListenSyslog(filepath.Join(dir, "log.sock"), "mail1")
	if err != nil {
		return fail(err)
	}
	s.Syslog = sl
	cleanups = append(cleanups, func() { _ = sl.Close() })
	if err := ensureUser(); err != nil {
		return fail(err)
	}
	for _, step := range []func() error{s.writeConfigs, s.startSSHD, s.startDovecot, s.startCyrus, s.startPostfix, s.startKeyOnlySSHD, s.startDovecot2} {
		if err := step(); err != nil {
			return fail(err)
		}
	}
	for _, port := range []int{SSHPort, IMAPPort, POP3Port, SMTPPort, SubmissionPort, KeyOnlySSHPort, IMAP2Port, PortLogPort} {
		if err := s.waitPort(port, 20*time.Second); err != nil {
			return fail(fmt.Errorf("%w; syslog so far:\n%s", err, strings.Join(sl.Lines(), "\n")))
		}
	}
	return s, cleanup, nil
}

// ensureUser creates the honest system account (sshd authenticates through PAM and shadow).
func ensureUser() error {
	if _, err := exec.Command("id", User).CombinedOutput(); err != nil {
		if out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/bin/sh", User).CombinedOutput(); err != nil {
			return fmt.Errorf("useradd %s: %w: %s", User, err, out)
		}
	}
	cmd := exec.Command("chpasswd")
	cmd.Stdin = strings.NewReader(User + ":" + Password + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("chpasswd: %w: %s", err, out)
	}
	return nil
}

// start runs argv in the server namespace with /dev/log bound to the captured socket.
func (s *Server) start(name string, argv ...string) error {
	script := `mount --bind "$0" /dev/log && exec "$@"`
	cmd := exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "sh", "-c", script, s.Syslog.Path}, argv...)...)
	out, err := os.Create(filepath.Join(s.Dir, name+".out"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := s.lab.Start(&s.Host.NS, cmd); err != nil {
		out.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	return nil
}

func (s *Server) waitPort(port int, timeout time.Duration) error {
	dst := netip.AddrPortFrom(s.Host.IP4, uint16(port))
	deadline := time.Now().Add(timeout)
	for {
		c, err := netns.Dial(&s.Host.NS, netip.Addr{}, dst, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("port %d did not open within %s: %w", port, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *Server) path(p ...string) string { return filepath.Join(append([]string{s.Dir}, p...)...) }

func (s *Server) writeConfigs() error {
	data := map[string]any{"Dir": s.Dir, "IP4": s.Host.IP4.String(), "IP6": s.Host.IP6.String(),
		"User": User}
	for _, d := range []string{"ssh", "dovecot/run", "dovecot/state", "mail", "cyrus/conf", "cyrus/spool", "cyrus/run", "postfix/conf/sasl", "postfix/data", "dovecot2/run", "dovecot2/state"} {
		if err := os.MkdirAll(s.path(d), 0o755); err != nil {
			return err
		}
	}
	for name, text := range configs {
		t := template.Must(template.New(name).Parse(text))
		f, err := os.Create(s.path(name))
		if err != nil {
			return err
		}
		err = t.Execute(f, data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("config %s: %w", name, err)
		}
	}
	return nil
}

func run(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func (s *Server) startSSHD() error {
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return err
	}
	if err := run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", s.path("ssh", "host_ed25519")); err != nil {
		return err
	}
	return s.start("sshd", "/usr/sbin/sshd", "-D", "-f", s.path("ssh", "sshd_config"))
}

// startKeyOnlySSHD runs a second sshd that takes keys only, with the honest account's key
// (AdminKey) authorised.
func (s *Server) startKeyOnlySSHD() error {
	pub := ssh.MarshalAuthorizedKey(AdminKey().PublicKey())
	if err := os.WriteFile(s.path("ssh", "authorized_keys_"+User), pub, 0o644); err != nil {
		return err
	}
	return s.start("sshd-keyonly", "/usr/sbin/sshd", "-D", "-f", s.path("ssh", "sshd_keyonly_config"))
}

func (s *Server) startDovecot2() error {
	for _, d := range []string{"dovecot2", "dovecot2/run", "dovecot2/state"} {
		if err := os.Chmod(s.path(d), 0o755); err != nil {
			return err
		}
	}
	return s.start("dovecot2", "/usr/sbin/dovecot", "-F", "-c", s.path("dovecot2", "dovecot.conf"))
}

// Dovecot2Log is the second Dovecot's own log file, a line each.
func (s *Server) Dovecot2Log() []string {
	b, _ := os.ReadFile(s.path("dovecot2", "dovecot.log"))
	text := strings.TrimRight(string(b), "\n")
	if text == "" {
		return nil
	}
	return strings.Split(text, "\n")
}

func (s *Server) startDovecot() error {
	pw := fmt.Sprintf("%s:{PLAIN}%s::::::\n", User, Password)
	if err := os.WriteFile(s.path("dovecot", "passwd"), []byte(pw), 0o644); err != nil {
		return err
	}
	for _, d := range []string{"dovecot/run", "dovecot/state"} {
		if err := os.Chmod(s.path(d), 0o755); err != nil {
			return err
		}
	}
	return s.start("dovecot", "/usr/sbin/dovecot", "-F", "-c", s.path("dovecot", "dovecot.conf"))
}

func (s *Server) startCyrus() error {
	cmd := exec.Command("saslpasswd2", "-c", "-p", "-f", s.path("cyrus", "sasldb2"), "-u", "mail1", User)
	cmd.Stdin = strings.NewReader(Password)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("saslpasswd2: %w: %s", err, out)
	}
	if err := run("chown", "-R", "cyrus:mail", s.path("cyrus")); err != nil {
		return err
	}
	return s.start("cyrus", "/usr/sbin/cyrmaster", "-C", s.path("cyrus", "imapd.conf"), "-M", s.path("cyrus", "cyrus.conf"), "-p", s.path("cyrus", "run", "master.pid"))
}

func (s *Server) startPostfix() error {
	cmd := exec.Command("saslpasswd2", "-c", "-p", "-f", s.path("postfix", "sasldb2"), "-u", "mail1", User)
	cmd.Stdin = strings.NewReader(Password)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("saslpasswd2: %w: %s", err, out)
	}
	if err := run("chown", "-R", "postfix:postfix", s.path("postfix", "data"), s.path("postfix", "sasldb2")); err != nil {
		return err
	}
	// The run's own queue directory, laid out as postinst lays out the package's ("postfix
	// check" creates what is missing, with its owners).
	if err := os.MkdirAll(s.path("postfix", "queue"), 0o755); err != nil {
		return err
	}
	// In the server's namespace: check resolves inet_interfaces, which only exist there.
	if out, err := s.Host.Run("/usr/sbin/postfix", "-c", s.path("postfix", "conf"), "check"); err != nil {
		return fmt.Errorf("postfix check: %w: %s", err, out)
	}
	return s.start("postfix", "/usr/lib/postfix/sbin/master", "-d", "-c", s.path("postfix", "conf"))
}

// Dial connects from client (from src, if valid) to one of the server's ports.
func (s *Server) Dial(client *netns.Host, src netip.Addr, port int) (net.Conn, error) {
	dst := s.Host.IP4
	if src.Is6() {
		dst = s.Host.IP6
	}
	return netns.Dial(&client.NS, src, netip.AddrPortFrom(dst, uint16(port)), 5*time.Second)
}

// Run is exec with a deadline, for callers that drive clients as commands.
func Run(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}
