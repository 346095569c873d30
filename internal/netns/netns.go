// Package netns builds small labs of Linux network namespaces for tests, the demo and benchmarks:
// a bridge namespace ("lan") and hosts joined to it by veth pairs, real servers and clients inside.
// It needs root and iproute2; it never changes the root namespace, and it removes what it made.
package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Available reports why labs cannot be built here, or nil.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root")
	}
	for _, bin := range []string{"ip", "iptables", "ipset"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s not found in PATH (apt-get install iproute2 iptables ipset)", bin)
		}
	}
	return nil
}

// NS is one network namespace, named under /run/netns.
type NS struct{ Name string }

// Do runs fn with the calling goroutine's OS thread inside the namespace. Sockets fn opens and
// processes it starts belong to the namespace.
func (n *NS) Do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own netns: %w", err)
	}
	defer unix.Close(orig)
	target, err := unix.Open("/run/netns/"+n.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", n.Name, err)
	}
	defer unix.Close(target)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", n.Name, err)
	}
	defer func() {
		// A thread we cannot put back stays locked, so the runtime retires it with the goroutine.
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return fn()
}

// Command returns cmd run inside the namespace (ip netns exec).
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs a command inside the namespace and returns its combined output.
func (n *NS) Run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := n.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), n.Name, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// Host is a namespace on the lab's bridge.
type Host struct {
	NS
	Index int
	IP4   netip.Addr
	IP6   netip.Addr
}

// Lab is a bridge namespace and the hosts on it. Hosts are 10.97.0.0/16 and fd97::/64; the
// bridge itself is 10.97.0.1 and fd97::1 (a place to run shared services such as the AWS emulator).
type Lab struct {
	prefix string
	Lan    *NS
	LanIP4 netip.Addr
	LanIP6 netip.Addr

	mu    sync.Mutex
	hosts []*Host
	procs []*exec.Cmd
	named []string
}

var labSeq atomic.Int64

// NamePrefix is how every namespace the harness makes starts; Sweep removes stale ones by it.
const NamePrefix = "bsh-"

// New creates an empty lab. Close removes it.
func New() (*Lab, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	Sweep()
	l := &Lab{
		prefix: fmt.Sprintf("%s%d-%d-", NamePrefix, os.Getpid(), labSeq.Add(1)),
		LanIP4: netip.MustParseAddr("10.97.0.1"),
		LanIP6: netip.MustParseAddr("fd97::1"),
	}
	l.Lan = &NS{Name: l.prefix + "lan"}
	if err := l.addNS(l.Lan.Name); err != nil {
		return nil, err
	}
	steps := [][]string{
		{"-n", l.Lan.Name, "link", "set", "lo", "up"},
		{"-n", l.Lan.Name, "link", "add", "br0", "type", "bridge"},
		{"-n", l.Lan.Name, "addr", "add", "10.97.0.1/16", "dev", "br0"},
		{"-n", l.Lan.Name, "addr", "add", "fd97::1/64", "dev", "br0", "nodad"},
		{"-n", l.Lan.Name, "link", "set", "br0", "up"},
	}
	if err := ipAll(steps); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// AddHost adds a namespace joined to the bridge with the next free addresses, loopback up.
func (l *Lab) AddHost(role string) (*Host, error) {
	l.mu.Lock()
	idx := len(l.hosts) + 1
	l.mu.Unlock()
	if idx > 250 {
		return nil, errors.New("lab is full (250 hosts)")
	}
	h := &Host{NS: NS{Name: l.prefix + role}, Index: idx,
		IP4: netip.AddrFrom4([4]byte{10, 97, 1, byte(idx)}),
		IP6: netip.MustParseAddr(fmt.Sprintf("fd97::1:%x", idx))}
	if err := l.addNS(h.Name); err != nil {
		return nil, err
	}
	port := "p" + strconv.Itoa(idx)
	steps := [][]string{
		{"-n", l.Lan.Name, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.Name},
		{"-n", l.Lan.Name, "link", "set", port, "master", "br0", "up"},
		{"-n", h.Name, "link", "set", "lo", "up"},
		{"-n", h.Name, "addr", "add", h.IP4.String() + "/16", "dev", "eth0"},
		{"-n", h.Name, "addr", "add", h.IP6.String() + "/64", "dev", "eth0", "nodad"},
		{"-n", h.Name, "link", "set", "eth0", "up"},
	}
	if err := ipAll(steps); err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.hosts = append(l.hosts, h)
	l.mu.Unlock()
	return h, nil
}

// AddAddr gives host h one more address (for example a second attacker source), on the bridge's subnet.
func (l *Lab) AddAddr(h *Host, addr netip.Addr) error {
	bits := 16
	if addr.Is6() {
		bits = 64
	}
	args := []string{"-n", h.Name, "addr", "add", fmt.Sprintf("%s/%d", addr, bits), "dev", "eth0"}
	if addr.Is6() {
		args = append(args, "nodad")
	}
	return ipAll([][]string{args})
}

// Start starts a long-running command inside ns; Close kills it.
func (l *Lab) Start(ns *NS, cmd *exec.Cmd) error {
	full := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, cmd.Args...)...)
	full.Path, _ = exec.LookPath("ip")
	full.Env, full.Stdout, full.Stderr, full.Dir = cmd.Env, cmd.Stdout, cmd.Stderr, cmd.Dir
	full.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := full.Start(); err != nil {
		return err
	}
	*cmd = *full
	l.mu.Lock()
	l.procs = append(l.procs, cmd)
	l.mu.Unlock()
	return nil
}

// Close kills what runs inside the lab and deletes every namespace it made. It is safe to call twice.
func (l *Lab) Close() {
	l.mu.Lock()
	procs, named := l.procs, l.named
	l.procs, l.named = nil, nil
	l.mu.Unlock()
	for _, p := range procs {
		if p.Process != nil && p.ProcessState == nil {
			_ = syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
			_ = p.Wait()
		}
	}
	for i := len(named) - 1; i >= 0; i-- {
		deleteNS(named[i])
	}
}

func (l *Lab) addNS(name string) error {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	l.mu.Lock()
	l.named = append(l.named, name)
	l.mu.Unlock()
	return nil
}

func deleteNS(name string) {
	if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	_ = exec.Command("ip", "netns", "delete", name).Run()
}

// Sweep deletes namespaces left behind by harness processes that no longer run (a killed test).
func Sweep() {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), NamePrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == nil {
			continue // its owner still runs
		}
		deleteNS(e.Name())
	}
}

func ipAll(steps [][]string) error {
	for _, s := range steps {
		if out, err := exec.Command("ip", s...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(s, " "), err, bytes.TrimSpace(out))
		}
	}
	return nil
}
