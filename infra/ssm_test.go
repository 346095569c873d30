package infra

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// installScript is the shell of the stack's Run Command document, with its parameters filled in
// the way SSM does ({{ Name }} replaced by the value).
func installScript(t *testing.T, params map[string]string) string {
	t.Helper()
	b, err := os.ReadFile("cloudformation/bansshee.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Resources map[string]struct {
			Properties struct {
				Content struct {
					Parameters map[string]any `yaml:"parameters"`
					MainSteps  []struct {
						Inputs struct {
							RunCommand []string `yaml:"runCommand"`
						} `yaml:"inputs"`
					} `yaml:"mainSteps"`
				} `yaml:"Content"`
			} `yaml:"Properties"`
		} `yaml:"Resources"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	c := doc.Resources["AgentDocument"].Properties.Content
	if len(c.MainSteps) != 1 || len(c.MainSteps[0].Inputs.RunCommand) < 5 {
		t.Fatalf("document steps: %+v", c.MainSteps)
	}
	script := strings.Join(c.MainSteps[0].Inputs.RunCommand, "\n") + "\n"
	for name, spec := range c.Parameters {
		v, ok := params[name]
		if !ok {
			t.Fatalf("no value for document parameter %s", name)
		}
		// SSM refuses a value its allowedPattern does not match, before anything runs.
		if m, _ := spec.(map[string]any); m != nil {
			if p, _ := m["allowedPattern"].(string); p != "" && !regexp.MustCompile(p).MatchString(v) {
				t.Fatalf("SSM would refuse %s=%q (allowedPattern %s)", name, v, p)
			}
		}
		script = strings.ReplaceAll(script, "{{ "+name+" }}", v)
	}
	if strings.Contains(script, "{{") {
		t.Fatalf("unfilled parameter in:\n%s", script)
	}
	return script
}

// The document installs a package, then upgrades it; the upgrade keeps the agent's bans in the
// kernel (its pre-remove script uninstalls only on removal).
func TestSSMDocumentInstallsAndUpgrades(t *testing.T) {
	host, ctx := packageHost(t, "ssm")
	repo := t.TempDir()
	var sums []string
	for _, v := range []string{"1.0.0", "1.1.0~rc1"} {
		deb := buildDeb(ctx, t, v)
		if err := os.Rename(deb, filepath.Join(repo, filepath.Base(deb))); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(repo, filepath.Base(deb)))
		if err != nil {
			t.Fatal(err)
		}
		sums = append(sums, fmt.Sprintf("%x", sha256.Sum256(b)))
	}
	t.Cleanup(func() { _, _ = host.Run("dpkg", "--purge", "bansshee-agent") })
	runDoc := func(version string) string {
		t.Helper()
		script := filepath.Join(t.TempDir(), "run.sh")
		os.WriteFile(script, []byte(installScript(t, map[string]string{"BaseUrl": repo + "/", "Version": version, "Sha256": strings.Join(sums, ",")})), 0o755)
		out, err := host.Run("bash", script)
		if err != nil {
			t.Fatalf("document for %s: %v\n%s", version, err, out)
		}
		return out
	}
	if out := runDoc("1.0.0"); !strings.Contains(out, "installed: bansshee-agent version 1.0.0") {
		t.Fatalf("install: %s", out)
	}
	// The installed agent's chain (what a running agent has in place).
	if out, err := host.Run("bansshee-agent", "--help"); err != nil {
		t.Fatal(out)
	}
	if _, err := host.Run("iptables", "-N", "BANSSHEE"); err != nil {
		t.Fatal(err)
	}
	if out := runDoc("1.1.0~rc1"); !strings.Contains(out, "installed: bansshee-agent version 1.1.0-rc1") {
		t.Fatalf("upgrade: %s", out)
	}
	if out, _ := host.Run("iptables", "-S"); !strings.Contains(out, "-N BANSSHEE") {
		t.Fatalf("the upgrade removed the agent's chain:\n%s", out)
	}
	// A version that is not there fails loudly.
	script := filepath.Join(t.TempDir(), "bad.sh")
	os.WriteFile(script, []byte(installScript(t, map[string]string{"BaseUrl": repo + "/", "Version": "7.7.7", "Sha256": strings.Join(sums, ",")})), 0o755)
	if out, err := host.Run("bash", script); err == nil {
		t.Fatalf("a missing package did not fail the document:\n%s", out)
	}
	// A package whose SHA-256 is not among those given is not installed (issue 22, finding 12).
	script = filepath.Join(t.TempDir(), "tampered.sh")
	os.WriteFile(script, []byte(installScript(t, map[string]string{"BaseUrl": repo + "/", "Version": "1.0.0", "Sha256": sums[1]})), 0o755)
	if out, err := host.Run("bash", script); err == nil || !strings.Contains(out, "is not one of the Sha256 given") {
		t.Fatalf("a package with another SHA-256 was installed:\n%s", out)
	}
	if out, _ := host.Run("bansshee-agent", "--version"); !strings.Contains(out, "1.1.0-rc1") {
		t.Fatalf("the refused package replaced the installed one: %s", out)
	}
}
