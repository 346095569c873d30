package firewall

// Forwarded traffic: container ports published by Docker (-p), ECS bridge mode, Kubernetes
// NodePorts and hostPorts are DNATed in PREROUTING and cross FORWARD, never INPUT. A second chain
// per family (BANSSHEE-FWD) applies the same allow and ban sets, and the rate limits on the
// connection's original destination port (the published port), to that traffic.
//
// Hooks:
//   - Docker present (FORWARD jumps to DOCKER-USER): a jump at the top of DOCKER-USER, the chain
//     Docker keeps across restarts and never flushes;
//   - otherwise a jump at the top of FORWARD, kept at the top by every Ensure;
//   - Docker installed but not running (dockerd in PATH): DOCKER-USER is created ahead of Docker,
//     holding our jump, so a Docker started after the agent is covered from its first packet
//     (Docker keeps an existing DOCKER-USER and links it at the top of FORWARD).
//
// Both hooks match only connections a local DNAT redirected (conntrack --ctstate DNAT), so a host
// that routes or NATs for others is untouched, unless Config.Forward is "all".

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/bansshee/bansshee/proto"
)

// Forward modes (Config.Forward).
const (
	ForwardDNAT = "dnat" // traffic a local DNAT redirected: published container ports (default)
	ForwardAll  = "all"  // every forwarded packet: the host as router or NAT instance too
	ForwardOff  = "off"  // no forward hooks
)

// dockerUser is Docker's chain for user rules, jumped to from the top of FORWARD.
const dockerUser = "DOCKER-USER"

func checkForward(mode string) error {
	switch mode {
	case "", ForwardDNAT, ForwardAll, ForwardOff:
		return nil
	}
	return fmt.Errorf("forward mode %q: want dnat, all or off", mode)
}

func (f *Firewall) forwardMode() string {
	if f.cfg.Forward == "" {
		return ForwardDNAT
	}
	return f.cfg.Forward
}

func (fam *family) fwdChain() string { return fam.chain + "-FWD" }

// hookTag marks our hook rules; the mode is part of it, so a changed mode is a changed hook.
func hookTag(mode string) string { return "bansshee:hook-" + mode }

// hookSpec is the rule that jumps from FORWARD or DOCKER-USER to our chain.
func (fam *family) hookSpec(mode string) []string {
	var spec []string
	if mode == ForwardDNAT {
		spec = []string{"-m", "conntrack", "--ctstate", "DNAT"}
	}
	return append(spec, "-m", "comment", "--comment", hookTag(mode), "-j", fam.fwdChain())
}

// fwdRules is the forward chain: allow, replies to the host's (and its containers') own
// connections, bans, then one hashlimit rule per limit and port range, matched on the original
// destination port (the published port, before DNAT). A limit's rules share one hashlimit table,
// as its ports do on INPUT. Escalation is not verified here (the trip sets key on the port after
// DNAT): an escalating limit drops over the rate on forwarded traffic.
func (fam *family) fwdRules(limits []proto.Limit) []string {
	rs := []string{
		fmt.Sprintf("-m set --match-set %s src -j RETURN", fam.allowSet),
		fmt.Sprintf("-m set --match-set %s src -m conntrack --ctstate ESTABLISHED --ctdir REPLY -j RETURN", fam.banSet),
		fmt.Sprintf("-m set --match-set %s src -j DROP", fam.banSet),
	}
	sorted := slices.Clone(limits)
	slices.SortFunc(sorted, func(a, b proto.Limit) int { return strings.Compare(a.ID, b.ID) })
	for _, l := range sorted {
		ports := make([]string, len(l.Ports))
		for i, p := range l.Ports {
			ports[i] = strconv.Itoa(p)
		}
		sum := sha256.Sum256([]byte(fmt.Sprint(l.ID, "|", l.Proto, "|", ports, "|", l.Hits, "/", l.Seconds)))
		name := "bsf" + fam.n() + "-" + hex.EncodeToString(sum[:4])
		target := "DROP"
		if l.Action == "reject" && l.Proto == "tcp" {
			target = "REJECT --reject-with tcp-reset"
		} else if l.Action == "reject" {
			target = "REJECT"
		}
		for _, r := range portRanges(l.Ports) {
			rs = append(rs, fmt.Sprintf("-p %s -m conntrack --ctstate NEW --ctorigdstport %s -m hashlimit --hashlimit-above %s --hashlimit-burst %d --hashlimit-mode srcip --hashlimit-name %s --hashlimit-htable-expire %d -j %s",
				l.Proto, r, rate(l.Hits, l.Seconds), l.Hits, name, l.Seconds*1000+1000, target))
		}
	}
	for i, r := range rs {
		sum := sha256.Sum256([]byte(fmt.Sprint(fam.fwdChain(), i, r)))
		rs[i] = fmt.Sprintf("%s -m comment --comment bansshee:%s", r, hex.EncodeToString(sum[:5]))
	}
	return rs
}

// portRanges folds ports into conntrack's single ports and "lo:hi" ranges (it takes no lists).
func portRanges(ports []int) []string {
	ps := slices.Clone(ports)
	slices.Sort(ps)
	ps = slices.Compact(ps)
	var out []string
	for i := 0; i < len(ps); {
		j := i
		for j+1 < len(ps) && ps[j+1] == ps[j]+1 {
			j++
		}
		if j == i {
			out = append(out, strconv.Itoa(ps[i]))
		} else {
			out = append(out, fmt.Sprintf("%d:%d", ps[i], ps[j]))
		}
		i = j + 1
	}
	return out
}

// ensureForward brings the forward chain and its hooks of one family to the mode: it writes the
// chain when it drifted, and puts exactly one hook, first, in DOCKER-USER (Docker present) or
// FORWARD (otherwise). It reports what it repaired.
func (f *Firewall) ensureForward(ctx context.Context, fam *family, limits []proto.Limit) ([]string, error) {
	mode := f.forwardMode()
	if mode == ForwardOff {
		return nil, f.removeForward(fam)
	}
	var repairs []string
	want := fam.fwdRules(limits)
	have, err := fam.ipt.List("filter", fam.fwdChain())
	if err != nil || !sameRules(have, want) {
		if err == nil {
			repairs = append(repairs, "rules:"+fam.fwdChain()+fam.n())
		} else {
			repairs = append(repairs, "chain:"+fam.fwdChain()+fam.n())
		}
		var b bytes.Buffer
		fmt.Fprintf(&b, "*filter\n:%s - [0:0]\n", fam.fwdChain())
		for _, r := range want {
			fmt.Fprintf(&b, "-A %s %s\n", fam.fwdChain(), r)
		}
		b.WriteString("COMMIT\n")
		if _, err := run(ctx, b.Bytes(), fam.restore, "-w", "10", "--noflush"); err != nil {
			return nil, fmt.Errorf("write chain %s: %w", fam.fwdChain(), err)
		}
	}
	docker, err := fam.dockerLinked()
	if err != nil {
		return nil, err
	}
	// Where the hook must be, and where it must not.
	at, not := "FORWARD", dockerUser
	if docker {
		at, not = dockerUser, "FORWARD"
	}
	fixed, err := fam.placeHook(at, mode)
	if err != nil {
		return nil, err
	}
	if fixed {
		repairs = append(repairs, "hook:"+at+fam.n())
	}
	if !docker && dockerInstalled() {
		// Arm DOCKER-USER before Docker starts (it keeps an existing chain); no packet reaches it
		// until Docker links it from FORWARD, so nothing is counted twice meanwhile.
		fixed, err := fam.placeHook(dockerUser, mode)
		if err != nil {
			return nil, err
		}
		if fixed {
			repairs = append(repairs, "hook:"+dockerUser+fam.n())
		}
	} else if _, err := fam.dropHooks(not); err != nil {
		return nil, err
	}
	return repairs, nil
}

// dockerInstalled reports whether Docker's daemon is on this host (it may start after us).
func dockerInstalled() bool {
	_, err := exec.LookPath("dockerd")
	return err == nil
}

// dockerLinked reports whether FORWARD jumps to DOCKER-USER: Docker has set up this family.
func (fam *family) dockerLinked() (bool, error) {
	rules, err := fam.ipt.List("filter", "FORWARD")
	if err != nil {
		return false, fmt.Errorf("list FORWARD: %w", err)
	}
	for _, r := range rules {
		if strings.HasPrefix(r, "-A FORWARD") && strings.HasSuffix(r, "-j "+dockerUser) {
			return true, nil
		}
	}
	return false, nil
}

// placeHook makes our hook for mode the first rule of chain (created if missing), and the only
// one of ours there. It reports whether it changed anything.
func (fam *family) placeHook(chain, mode string) (bool, error) {
	if ok, err := fam.ipt.ChainExists("filter", chain); err != nil {
		return false, fmt.Errorf("check chain %s: %w", chain, err)
	} else if !ok {
		if err := fam.ipt.NewChain("filter", chain); err != nil {
			return false, fmt.Errorf("create chain %s: %w", chain, err)
		}
	}
	rules, err := fam.ipt.List("filter", chain)
	if err != nil {
		return false, fmt.Errorf("list %s: %w", chain, err)
	}
	first, ours := -1, 0
	n := 0
	for _, r := range rules {
		if !strings.HasPrefix(r, "-A ") {
			continue
		}
		if strings.HasSuffix(r, "-j "+fam.fwdChain()) {
			ours++
			if n == 0 && strings.Contains(r, hookTag(mode)) {
				first = 0
			}
		}
		n++
	}
	if first == 0 && ours == 1 {
		return false, nil
	}
	if _, err := fam.dropHooks(chain); err != nil {
		return false, err
	}
	if err := fam.ipt.Insert("filter", chain, 1, fam.hookSpec(mode)...); err != nil {
		return false, fmt.Errorf("insert jump to %s at the top of %s: %w", fam.fwdChain(), chain, err)
	}
	return true, nil
}

// dropHooks removes every jump to our forward chain from chain (a missing chain has none) and
// reports how many it removed.
func (fam *family) dropHooks(chain string) (int, error) {
	if ok, err := fam.ipt.ChainExists("filter", chain); err != nil || !ok {
		return 0, err
	}
	rules, err := fam.ipt.List("filter", chain)
	if err != nil {
		return 0, fmt.Errorf("list %s: %w", chain, err)
	}
	removed := 0
	for _, r := range rules {
		if !strings.HasPrefix(r, "-A ") || !strings.HasSuffix(r, "-j "+fam.fwdChain()) {
			continue
		}
		// Our hooks hold no spaces inside arguments but the comment's quotes, which -S adds.
		spec := strings.Fields(strings.ReplaceAll(r, `"`, ""))[2:]
		if err := fam.ipt.Delete("filter", chain, spec...); err != nil {
			return removed, fmt.Errorf("remove jump to %s from %s: %w", fam.fwdChain(), chain, err)
		}
		removed++
	}
	return removed, nil
}

// removeForward removes the hooks and the forward chain of one family. A DOCKER-USER left empty
// and unreferenced is the one we armed ahead of Docker: it goes too.
func (f *Firewall) removeForward(fam *family) error {
	for _, c := range []string{"FORWARD", dockerUser} {
		if _, err := fam.dropHooks(c); err != nil {
			return err
		}
	}
	if linked, err := fam.dockerLinked(); err == nil && !linked {
		if ok, _ := fam.ipt.ChainExists("filter", dockerUser); ok {
			rules, err := fam.ipt.List("filter", dockerUser)
			if err == nil && len(rules) == 1 { // only "-N DOCKER-USER"
				if err := fam.ipt.DeleteChain("filter", dockerUser); err != nil {
					return fmt.Errorf("delete the %s chain we created: %w", dockerUser, err)
				}
			}
		}
	}
	if ok, _ := fam.ipt.ChainExists("filter", fam.fwdChain()); ok {
		if err := fam.ipt.ClearAndDeleteChain("filter", fam.fwdChain()); err != nil {
			return fmt.Errorf("delete chain %s: %w", fam.fwdChain(), err)
		}
	}
	return nil
}

// Hook is a jump into one of our chains, as the kernel holds it.
type Hook struct {
	Family   string // "ipv4", "ipv6"
	From     string // INPUT, FORWARD, DOCKER-USER
	To       string // BANSSHEE, BANSSHEE-FWD
	Position int    // 1 is the top
	Rule     string // as iptables -S prints it
}

// HookReport says which hooks are in place, and what is missing for the configured mode.
type HookReport struct {
	Mode    string
	Hooks   []Hook
	Docker  map[string]bool // family -> FORWARD jumps to DOCKER-USER
	Missing []string
}

// Hooks reads the jumps into our chains from INPUT, FORWARD and DOCKER-USER. It changes nothing.
func (f *Firewall) Hooks(ctx context.Context) (HookReport, error) {
	rep := HookReport{Mode: f.forwardMode(), Docker: map[string]bool{}}
	for _, fam := range f.fams {
		name := "ipv" + fam.n()
		docker, err := fam.dockerLinked()
		if err != nil {
			return rep, err
		}
		rep.Docker[name] = docker
		found := map[string]bool{}
		for _, chain := range []string{"INPUT", "FORWARD", dockerUser} {
			if ok, err := fam.ipt.ChainExists("filter", chain); err != nil || !ok {
				continue
			}
			rules, err := fam.ipt.List("filter", chain)
			if err != nil {
				return rep, fmt.Errorf("list %s: %w", chain, err)
			}
			pos := 0
			for _, r := range rules {
				if !strings.HasPrefix(r, "-A ") {
					continue
				}
				pos++
				for _, to := range []string{fam.chain, fam.fwdChain()} {
					if strings.HasSuffix(r, "-j "+to) {
						rep.Hooks = append(rep.Hooks, Hook{Family: name, From: chain, To: to, Position: pos, Rule: r})
						found[chain+">"+to] = true
					}
				}
			}
		}
		if !found["INPUT>"+fam.chain] {
			rep.Missing = append(rep.Missing, name+": INPUT -> "+fam.chain)
		}
		if rep.Mode != ForwardOff {
			at := "FORWARD"
			if docker {
				at = dockerUser
			}
			if !found[at+">"+fam.fwdChain()] {
				rep.Missing = append(rep.Missing, name+": "+at+" -> "+fam.fwdChain())
			}
		}
	}
	return rep, nil
}
