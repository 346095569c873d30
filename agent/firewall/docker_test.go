package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bansshee/bansshee/internal/netns"
	"github.com/bansshee/bansshee/proto"
)

// dockerd is a Docker daemon of the test's own, in one lab namespace, with its own data root,
// exec root and socket: it never touches the machine's Docker or its iptables.
type dockerd struct {
	lab  *netns.Lab
	ns   *netns.NS
	dir  string
	cmd  *exec.Cmd
	logf *os.File
}

// needDocker returns docker.io's binaries or skips (which fails the suite under CI=true), saying
// what to install.
func needDocker(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"dockerd", "docker", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("skipping the real Docker test: %s not found (apt-get install docker.io busybox-static, or make deps)", bin)
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("skipping the real Docker test: /bin/busybox not found (apt-get install busybox-static, or make deps)")
	}
}

func startDockerd(t *testing.T, lab *netns.Lab, ns *netns.NS) *dockerd {
	t.Helper()
	dir, err := os.MkdirTemp("", "bsh-dk-") // short: containerd's socket path lives under it
	if err != nil {
		t.Fatal(err)
	}
	d := &dockerd{lab: lab, ns: ns, dir: dir}
	t.Cleanup(d.cleanup)
	if d.logf, err = os.Create(filepath.Join(dir, "dockerd.log")); err != nil {
		t.Fatal(err)
	}
	d.start(t)
	return d
}

func (d *dockerd) sock() string { return "unix://" + filepath.Join(d.dir, "sock") }

func (d *dockerd) start(t *testing.T) {
	t.Helper()
	d.cmd = exec.Command("dockerd", "--data-root", filepath.Join(d.dir, "data"), "--exec-root", filepath.Join(d.dir, "exec"),
		"--pidfile", filepath.Join(d.dir, "pid"), "-H", d.sock(), "--storage-driver", "overlay2")
	d.cmd.Stdout, d.cmd.Stderr = d.logf, d.logf
	if err := d.lab.StartDaemon(d.ns, d.cmd); err != nil {
		t.Fatalf("start dockerd: %v", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := d.docker("info"); err == nil {
			return
		}
		if d.cmd.ProcessState != nil || time.Now().After(deadline) {
			t.Fatalf("dockerd did not come up within 60 s; its log:\n%s", d.log())
		}
	}
}

// stop ends dockerd as its service would (SIGTERM) and waits for it.
func (d *dockerd) stop(t *testing.T) {
	t.Helper()
	if d.cmd == nil || d.cmd.Process == nil || d.cmd.ProcessState != nil {
		return
	}
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-done
		t.Errorf("dockerd did not stop within 60 s of SIGTERM")
	}
}

func (d *dockerd) log() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "dockerd.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func (d *dockerd) docker(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", append([]string{"-H", d.sock()}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// cleanup removes containers, stops dockerd and unmounts what it left under its data root.
func (d *dockerd) cleanup() {
	if d.cmd != nil && d.cmd.ProcessState == nil {
		_, _ = d.docker("rm", "-f", "web")
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = d.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	if b, err := os.ReadFile("/proc/mounts"); err == nil {
		var mounts []string
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], d.dir+"/") {
				mounts = append(mounts, f[1])
			}
		}
		slices.Sort(mounts)
		for i := len(mounts) - 1; i >= 0; i-- {
			_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
		}
	}
	if d.logf != nil {
		d.logf.Close()
	}
	_ = os.RemoveAll(d.dir)
}

// importBusybox makes the image bansshee-busybox from the host's static busybox: no registry.
func (d *dockerd) importBusybox(t *testing.T) {
	t.Helper()
	root := filepath.Join(d.dir, "rootfs")
	for _, p := range []string{"bin", "www"} {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"sh", "httpd"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", l)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "www", "index.html"), []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
	tar := exec.Command("tar", "-C", root, "-c", ".")
	imp := exec.Command("docker", "-H", d.sock(), "import", "-", "bansshee-busybox")
	pipe, err := tar.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	imp.Stdin = pipe
	var out bytes.Buffer
	imp.Stdout, imp.Stderr = &out, &out
	if err := tar.Start(); err != nil {
		t.Fatal(err)
	}
	if err := imp.Run(); err != nil {
		t.Fatalf("docker import: %v: %s", err, out.String())
	}
	if err := tar.Wait(); err != nil {
		t.Fatalf("tar rootfs: %v", err)
	}
}

const page = "hello from a bansshee container\n"

// get fetches the container's page through the published port from src in the attacker namespace.
func (l *lab) get(src netip.Addr, port int) error {
	body, err := netns.HTTPGet(&l.Attacker.NS, src, netip.AddrPortFrom(l.Victim.IP4, uint16(port)), 500*time.Millisecond)
	if err == nil && body != page {
		return fmt.Errorf("page %q, want %q", body, page)
	}
	return err
}

// waitPage polls until src gets the page (a container that just started, or restarted).
func (l *lab) waitPage(t *testing.T, d *dockerd, src netip.Addr) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := l.get(src, 8080)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			ps, _ := d.docker("ps", "-a")
			t.Fatalf("%s never got the page on :8080: %v\n%s\ndockerd log:\n%s", src, err, ps, d.log())
		}
	}
}

func (l *lab) mustBeDropped(t *testing.T, src netip.Addr, port int, what string) {
	t.Helper()
	if err := l.get(src, port); !errors.Is(err, netns.ErrBlocked) {
		t.Fatalf("%s: %s on :%d got %v, want dropped", what, src, port, err)
	}
}

// dockerChains is Docker's part of the kernel: every filter and nat line but ours.
func dockerChains(t *testing.T, ns *netns.NS) string {
	t.Helper()
	var b strings.Builder
	for _, table := range []string{"filter", "nat"} {
		out, err := ns.Run("iptables", "-t", table, "-S")
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(out, "\n") {
			if !strings.Contains(l, "BANSSHEE") {
				b.WriteString(table + " " + l + "\n")
			}
		}
	}
	return b.String()
}

// The real thing: Debian's dockerd started after the agent, a busybox httpd published with
// -p 8080:80. Bans and limits on the published port, dockerd restarted, uninstall.
func TestDockerPublishedPort(t *testing.T) {
	needDocker(t)
	l := newLab(t)
	banned := netip.PrefixFrom(l.src1, 32)
	// The agent first, as on a host whose Docker starts later (or is restarted).
	l.apply(t, State{})
	d := startDockerd(t, l.Lab, &l.Victim.NS)
	d.importBusybox(t)
	if _, err := d.docker("run", "-d", "--name", "web", "--restart", "always", "--stop-signal", "KILL", "-p", "8080:80",
		"bansshee-busybox", "/bin/httpd", "-f", "-p", "80", "-h", "/www"); err != nil {
		t.Fatal(err)
	}
	l.waitPage(t, d, l.src1)

	// Docker started after the agent: the DOCKER-USER armed ahead of it already holds our jump,
	// so a ban (sets only, no Ensure in between) drops the published port at once.
	l.do(t, func() error { return l.fw.Ban(t.Context(), []Ban{{Prefix: banned}}) })
	l.mustBeDropped(t, l.src1, 8080, "banned before any Ensure")

	limit := proto.Limit{ID: "l-web", Proto: "tcp", Ports: []int{8080}, Hits: 3, Seconds: 60, Action: "drop", Rev: 1}
	want := State{Bans: []Ban{{Prefix: banned}}, Limits: []proto.Limit{limit}}
	l.apply(t, want)
	rep := l.hooks(t, l.fw)
	if !rep.Docker["ipv4"] {
		t.Fatalf("Docker not detected: %+v", rep)
	}
	if pos := hookAt(rep, "ipv4", dockerUser, "BANSSHEE-FWD"); pos != 1 {
		t.Fatalf("DOCKER-USER hook at %d, want 1: %+v", pos, rep.Hooks)
	}
	if pos := hookAt(rep, "ipv4", "FORWARD", "BANSSHEE-FWD"); pos != 0 {
		t.Fatalf("a FORWARD hook is left at %d beside DOCKER-USER's (would count twice)", pos)
	}
	l.mustBeDropped(t, l.src1, 8080, "banned")
	if err := l.get(l.src2, 8080); err != nil {
		t.Fatalf("unbanned source: %v", err)
	}
	// The limit is on the published port, 8080 (the container listens on 80).
	for i := 1; i <= 3; i++ {
		if err := l.get(l.oth, 8080); err != nil {
			t.Fatalf("connection %d of 3 within the limit: %v", i, err)
		}
	}
	l.mustBeDropped(t, l.oth, 8080, "4th connection over the limit")

	// dockerd restarted: Docker keeps DOCKER-USER and relinks it; our hook stays first.
	d.stop(t)
	d.start(t)
	l.waitPage(t, d, l.src2)
	rep = l.hooks(t, l.fw)
	if pos := hookAt(rep, "ipv4", dockerUser, "BANSSHEE-FWD"); pos != 1 || len(rep.Missing) != 0 {
		t.Fatalf("after a dockerd restart: DOCKER-USER hook at %d, missing %v", pos, rep.Missing)
	}
	l.mustBeDropped(t, l.src1, 8080, "banned, after the dockerd restart")
	var repairs []string
	l.do(t, func() error {
		var err error
		repairs, err = l.fw.Ensure(t.Context())
		return err
	})
	if len(repairs) != 0 {
		t.Fatalf("Ensure after the dockerd restart repaired %v, want nothing", repairs)
	}

	// Uninstall takes our jump out of DOCKER-USER and leaves every Docker rule as it was.
	dockerOnly := dockerChains(t, &l.Victim.NS)
	l.do(t, func() error { return l.fw.Uninstall(t.Context()) })
	if after := dockerChains(t, &l.Victim.NS); after != dockerOnly {
		t.Fatalf("uninstall changed Docker's chains:\n--- before (ours left out)\n%s\n--- after\n%s", dockerOnly, after)
	}
	out, err := l.Victim.Run("iptables", "-S", dockerUser)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out); got != "-N DOCKER-USER\n-A DOCKER-USER -j RETURN" {
		t.Fatalf("DOCKER-USER after uninstall:\n%s", got)
	}
	if err := l.get(l.src1, 8080); err != nil {
		t.Fatalf("after uninstall the formerly banned source: %v", err)
	}
}
