package infra

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bansshee/bansshee/internal/netns"
	"github.com/bansshee/bansshee/proto"
)

// The agent's .deb on this machine: dpkg installs it (inside a network namespace, so its scripts
// act on that namespace's firewall), the agent runs and puts its chains and sets in place, and
// removing the package leaves no chain, set or file behind.
func TestDebInstallRemove(t *testing.T) {
	host, ctx := packageHost(t, "pkg")
	deb := buildDeb(ctx, t, "9.9.9~test")
	in := func(args ...string) string {
		t.Helper()
		out, err := host.Run(args[0], args[1:]...)
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	t.Cleanup(func() { _, _ = host.Run("dpkg", "--purge", "bansshee-agent") })
	in("dpkg", "-i", deb)
	if v := in("bansshee-agent", "--version"); !strings.Contains(v, "9.9.9-test") {
		t.Fatalf("--version: %q", v)
	}
	for _, f := range []string{"/usr/bin/bansshee-agent", "/lib/systemd/system/bansshee-agent.service", "/etc/bansshee/agent.yaml"} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("package did not install %s: %v", f, err)
		}
	}
	if fi, err := os.Stat("/var/lib/bansshee"); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir: %v %v", fi, err)
	}
	// check: verify one signed message with the installed binary.
	dir := t.TempDir()
	s, _ := proto.GenerateKey("k1")
	keys := filepath.Join(dir, "keys.pub")
	os.WriteFile(keys, []byte(s.MarshalPublic()), 0o644)
	m := &proto.Message{ID: "m1", Kind: proto.KindBan, IssuedAt: time.Now().UTC(), Rev: 3, Bans: []proto.Ban{{CIDR: "198.51.100.7", ExpiresAt: time.Now().Add(time.Hour)}}}
	body, attrs, _ := s.Encode(m)
	msg := `{"Body":` + jsonString(string(body)) + `,"MessageAttributes":{` +
		`"bansshee-v":{"StringValue":"` + attrs[proto.AttrVersion] + `"},"bansshee-kid":{"StringValue":"` + attrs[proto.AttrKeyID] + `"},` +
		`"bansshee-sig":{"StringValue":"` + attrs[proto.AttrSignature] + `"}}}`
	os.WriteFile(filepath.Join(dir, "m.json"), []byte(msg), 0o644)
	if out := in("bansshee-agent", "check", "--file", filepath.Join(dir, "m.json"), "--public-key", keys, "--state-dir", dir); !strings.Contains(out, "valid") {
		t.Fatalf("check: %s", out)
	}
	// The agent as the unit runs it: it restores into the kernel before it needs AWS.
	run := host.Command(ctx, "bansshee-agent", "run", "--public-key", keys, "--state-dir", "/var/lib/bansshee", "--config", "/etc/bansshee/agent.yaml",
		"--instance-id", "i-0123456789abcdef0", "--region", "us-east-1", "--endpoint-url", "http://127.0.0.1:9")
	run.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID=x", "AWS_SECRET_ACCESS_KEY=x", "AWS_EC2_METADATA_DISABLED=true")
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(in("iptables", "-S"), "-j BANSSHEE") {
		if time.Now().After(deadline) {
			t.Fatal("the installed agent did not install its chain")
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
	_ = run.Process.Kill()
	_ = run.Wait()
	in("dpkg", "-r", "bansshee-agent")
	for _, cmd := range [][]string{{"iptables", "-S"}, {"ip6tables", "-S"}, {"ipset", "list", "-n"}} {
		if out := in(cmd...); strings.Contains(strings.ToLower(out), "bansshee") {
			t.Fatalf("left behind after removal (%s):\n%s", strings.Join(cmd, " "), out)
		}
	}
	if _, err := os.Stat("/usr/bin/bansshee-agent"); err == nil {
		t.Fatal("binary left behind")
	}
	if _, err := os.Stat("/var/lib/bansshee/state.json"); err == nil {
		t.Fatal("state file left behind")
	}
	in("dpkg", "--purge", "bansshee-agent")
	if _, err := os.Stat("/etc/bansshee/agent.yaml"); err == nil {
		t.Fatal("purge left the configuration behind")
	}
}

// packageHost is a namespace to install packages in (dpkg's scripts then act on its firewall),
// and a deadline for the test; it skips, saying why, where dpkg cannot run or the package is
// already installed on this machine.
func packageHost(t *testing.T, name string) (*netns.Host, context.Context) {
	t.Helper()
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Skipf("SKIP (dpkg): %v", err)
	}
	if out, err := exec.Command("dpkg", "-s", "bansshee-agent").CombinedOutput(); err == nil {
		t.Skipf("SKIP: bansshee-agent is installed on this machine already:\n%s", out)
	}
	host, err := netns.NewLab(t).AddHost(name)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	t.Cleanup(cancel)
	return host, ctx
}

func jsonString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s) + `"`
}

// buildDeb builds the agent and its .deb for this machine's architecture, as make dist does.
func buildDeb(ctx context.Context, t *testing.T, version string) string {
	t.Helper()
	dir := t.TempDir()
	root, _ := filepath.Abs("..")
	arch := strings.TrimSpace(goEnv(t, "GOARCH"))
	bin := filepath.Join(dir, "bansshee-agent")
	build := exec.CommandContext(ctx, "go", "build", "-ldflags", "-X main.version="+strings.ReplaceAll(version, "~", "-"), "-o", bin, "./cmd/bansshee-agent")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cfg, err := os.ReadFile(filepath.Join(root, "infra/package/nfpm.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "nfpm.yaml")
	os.WriteFile(conf, []byte(strings.ReplaceAll(string(cfg), "src: infra/package/stage/bansshee-agent", "src: "+bin)), 0o644)
	pkg := exec.CommandContext(ctx, "go", "tool", "nfpm", "package", "--config", conf, "--packager", "deb", "--target", dir)
	pkg.Dir = root
	pkg.Env = append(os.Environ(), "ARCH="+arch, "VERSION="+version)
	if out, err := pkg.CombinedOutput(); err != nil {
		t.Fatalf("nfpm: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
	if len(debs) != 1 {
		t.Fatalf("built %v", debs)
	}
	return debs[0]
}

func goEnv(t *testing.T, name string) string {
	out, err := exec.Command("go", "env", name).Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
