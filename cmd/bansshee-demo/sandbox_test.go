package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bansshee/bansshee/internal/netns"
)

// The sandbox driven as a user would: the built CLI bans, reports status and unbans against it;
// Ctrl-C removes every namespace it made.
func TestSandboxWithTheCLI(t *testing.T) {
	if err := netns.Available(); err != nil {
		t.Skipf("SKIP (kernel): %v", err)
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "github.com/bansshee/bansshee/cmd/bansshee", "github.com/bansshee/bansshee/cmd/bansshee-demo")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	sb := exec.Command(filepath.Join(bin, "bansshee-demo"), "--sandbox", "--dir", dir)
	var log strings.Builder
	sb.Stdout, sb.Stderr = &log, &log
	if err := sb.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sb.Wait() }()
	t.Cleanup(func() {
		_ = sb.Process.Kill()
		if t.Failed() {
			t.Logf("sandbox output:\n%s", log.String())
		}
	})
	deadline := time.Now().Add(3 * time.Minute) // it builds the agent first
	for {
		if _, err := os.Stat(filepath.Join(dir, "ready")); err == nil {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("sandbox exited: %v\n%s", err, log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox not ready:\n%s", log.String())
		}
		time.Sleep(200 * time.Millisecond) // polling interval
	}
	env := os.Environ()
	f, err := os.Open(filepath.Join(dir, "env.sh"))
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		kv := strings.TrimPrefix(sc.Text(), "export ")
		k, v, _ := strings.Cut(kv, "=")
		env = append(env, k+"="+strings.Trim(v, "'"))
	}
	f.Close()
	cli := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(bin, "bansshee"), args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("bansshee %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if out := cli("ban", "198.51.100.77", "--target", "Role=mail", "--wait", "--timeout", "60s"); !strings.Contains(out, "sent to 2 instances") {
		t.Fatalf("ban: %s", out)
	}
	if out := cli("status"); !strings.Contains(out, "3 of 3 instances converged") {
		t.Fatalf("status: %s", out)
	}
	if out := cli("unban", "198.51.100.77"); !strings.Contains(out, "unbanned 1 at revision") {
		t.Fatalf("unban: %s", out)
	}
	if err := sb.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("sandbox exit: %v\n%s", err, log.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("sandbox did not stop on Ctrl-C")
	}
	out, _ := exec.Command("ip", "netns", "list").CombinedOutput()
	if prefix := netns.NamePrefix + strconv.Itoa(sb.Process.Pid) + "-"; strings.Contains(string(out), prefix) {
		t.Fatalf("namespaces left behind:\n%s", out)
	}
	if !strings.Contains(log.String(), "removed") {
		t.Fatalf("no clean-up message:\n%s", log.String())
	}
}
