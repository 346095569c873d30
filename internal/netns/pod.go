package netns

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Pod is a namespace behind a host, joined to it by its own veth pair (as a CNI bridge or Docker
// joins a container): the host forwards for it. Its address is Addr; the host's side is Gateway.
type Pod struct {
	NS
	Addr    netip.Addr
	Gateway netip.Addr
}

// AddPod adds a namespace behind host h on net (an IPv4 /24: the host takes .1, the pod .2),
// turns forwarding on in h, and routes the pod's traffic through h.
func (l *Lab) AddPod(h *Host, role string, net netip.Prefix) (*Pod, error) {
	if !net.Addr().Is4() || net.Bits() != 24 {
		return nil, fmt.Errorf("pod network %s: want an IPv4 /24", net)
	}
	a := net.Masked().Addr().As4()
	gw, addr := a, a
	gw[3], addr[3] = 1, 2
	p := &Pod{NS: NS{Name: l.prefix + role}, Addr: netip.AddrFrom4(addr), Gateway: netip.AddrFrom4(gw)}
	if err := l.addNS(p.Name); err != nil {
		return nil, err
	}
	hostEnd := "v" + role
	if len(hostEnd) > 15 {
		hostEnd = hostEnd[:15]
	}
	steps := [][]string{
		{"-n", h.Name, "link", "add", hostEnd, "type", "veth", "peer", "name", "eth0", "netns", p.Name},
		{"-n", h.Name, "addr", "add", p.Gateway.String() + "/24", "dev", hostEnd},
		{"-n", h.Name, "link", "set", hostEnd, "up"},
		{"-n", p.Name, "link", "set", "lo", "up"},
		{"-n", p.Name, "addr", "add", p.Addr.String() + "/24", "dev", "eth0"},
		{"-n", p.Name, "link", "set", "eth0", "up"},
		{"-n", p.Name, "route", "add", "default", "via", p.Gateway.String()},
	}
	if err := ipAll(steps); err != nil {
		return nil, err
	}
	if _, err := h.Run("sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		return nil, err
	}
	return p, nil
}

// Route adds a route in h to dst through via (an attacker that reaches a pod network directly,
// through the host as a router).
func (l *Lab) Route(h *Host, dst netip.Prefix, via netip.Addr) error {
	return ipAll([][]string{{"-n", h.Name, "route", "add", dst.String(), "via", via.String()}})
}

// HTTPGet fetches / from dst over HTTP/1.0 from ns (from src, if valid) and returns the body. A
// connection that does not complete within timeout returns an error wrapping ErrBlocked.
func HTTPGet(ns *NS, src netip.Addr, dst netip.AddrPort, timeout time.Duration) (string, error) {
	c, err := dial(ns, src, dst, timeout)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return "", fmt.Errorf("http %s -> %s: %w", src, dst, ErrBlocked)
		}
		return "", fmt.Errorf("http %s -> %s: %w", src, dst, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", dst); err != nil {
		return "", err
	}
	r := bufio.NewReader(c)
	status, err := r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("http %s: read status: %w", dst, err)
	}
	if !strings.Contains(status, " 200 ") {
		return "", fmt.Errorf("http %s: %s", dst, strings.TrimSpace(status))
	}
	for { // headers
		line, err := r.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("http %s: read headers: %w", dst, err)
		}
		if strings.TrimSpace(line) == "" {
			break
		}
	}
	body, err := io.ReadAll(r)
	return string(body), err
}

// StartDaemon starts a long-running command in ns's network namespace only (nsenter --net), so
// that it shares the host's mounts and cgroups, which dockerd needs ('ip netns exec' remounts
// /sys). Close kills it; stop it earlier with a signal to cmd.Process.
func (l *Lab) StartDaemon(ns *NS, cmd *exec.Cmd) error {
	args := append([]string{"--net=/run/netns/" + ns.Name, "--"}, cmd.Args...)
	full := exec.Command("nsenter", args...)
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
