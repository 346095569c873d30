// Package firewall is the kernel side of the agent: one iptables chain per family (BANSSHEE), jumped
// to from the top of INPUT, backed by ipset sets whose entries carry their own timeouts. It owns
// those chains and sets and nothing else. It knows nothing of SQS, signatures or the ledger.
package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bansshee/bansshee/proto"
	"github.com/coreos/go-iptables/iptables"
)

// Ban is one banned prefix. A zero Expires never expires.
type Ban struct {
	Prefix  netip.Prefix
	Expires time.Time
}

// State is what the kernel should hold.
type State struct {
	Bans   []Ban
	Limits []proto.Limit
	Allow  []netip.Prefix
	// Build, when Bans is nil, makes the bans on demand, and BanCounts says how many IPv4 and
	// IPv6 bans it would make: Quick compares only counts, so an agent holding a million bans
	// builds them in this form only when a full Apply needs them.
	Build     func() []Ban
	BanCounts [2]int
}

// bans returns s's bans, built if need be.
func (s *State) bans() []Ban {
	if s.Bans == nil && s.Build != nil {
		s.Bans = s.Build()
	}
	return s.Bans
}

// Result says what an Apply changed.
type Result struct {
	Added, Removed, Refreshed int
	// Repairs names drift found and fixed: "jump4", "chain6", "set:bansshee-ban4", "rules4".
	Repairs []string
}

// Config names what the firewall owns. The zero value uses the names of DESIGN.md.
type Config struct {
	// NoNetlink makes every set change go through `ipset restore` (small changes use ipset's
	// netlink interface by default).
	NoNetlink bool
	Chain     string // default BANSSHEE
	SetPrefix string // default bansshee
	// Mode forces the iptables backend ("nft" or "legacy"); empty detects it.
	Mode   string
	MaxSet int // maxelem of the ban sets (default 1<<20)
	// FloodTable is the number of sources each hashlimit table and the suspect and trip sets
	// hold (default FloodTableSize of the host's memory).
	FloodTable int
	Log        *slog.Logger
	// Now is the clock (tests).
	Now func() time.Time

	// Forward is what forwarded traffic the chains also cover (forward.go): "dnat" (default,
	// connections a local DNAT sent to a container), "all", or "off".
	Forward string
}

// MaxTimeout is ipset's largest per-entry timeout (about 24.8 days). Longer bans are set to it and
// refreshed by Apply.
const MaxTimeout = 2147483

// Firewall is the iptables + ipset backend. It is safe for concurrent use.
type Firewall struct {
	cfg  Config
	mode string
	fams [2]*family

	mu     sync.Mutex
	allow  []netip.Prefix
	limits []proto.Limit
	sized  bool // resizeFloodSets has run

	fallbacks atomic.Int64 // set changes netlink refused, made through `ipset restore` instead
}

// NetlinkFallbacks counts the set changes that went through an `ipset restore` process because
// the netlink path failed (a missing set, a kernel that refuses the batch).
func (f *Firewall) NetlinkFallbacks() int64 { return f.fallbacks.Load() }

type family struct {
	v6        bool
	ipt       *iptables.IPTables
	restore   string // iptables-restore binary of the chosen backend
	save      string
	chain     string
	tripChain string
	banSet    string
	allowSet  string
	tripSet   string // hash:ip,port: sources that tripped an escalating limit, verified
	suspect   string // hash:ip,port: sources over an escalating limit, not yet verified
	legacy    string // the hash:ip trip set of earlier versions, removed by Uninstall
	inet      string // ipset family
	flood     int    // hashlimit table size (Config.FloodTable)
}

// ErrAllowlisted is wrapped by the error of a ban that would cover an allowlisted address.
var ErrAllowlisted = errors.New("ban covers an allowlisted address")

// New detects the iptables backend in use (nf_tables or legacy) and returns a firewall for it.
// It changes nothing in the kernel.
func New(cfg Config) (*Firewall, error) {
	if cfg.Chain == "" {
		cfg.Chain = "BANSSHEE"
	}
	if cfg.SetPrefix == "" {
		cfg.SetPrefix = "bansshee"
	}
	if cfg.MaxSet == 0 {
		cfg.MaxSet = 1 << 20
	}
	if cfg.FloodTable == 0 {
		cfg.FloodTable = FloodTableSize(totalMemory())
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if _, err := exec.LookPath("ipset"); err != nil {
		return nil, fmt.Errorf("ipset not found: install the ipset package: %w", err)
	}
	if err := checkForward(cfg.Forward); err != nil {
		return nil, err
	}
	mode, err := detectMode(cfg.Mode)
	if err != nil {
		return nil, err
	}
	f := &Firewall{cfg: cfg, mode: mode}
	for i, v6 := range []bool{false, true} {
		fam, err := newFamily(cfg, mode, v6)
		if err != nil {
			return nil, err
		}
		f.fams[i] = fam
	}
	return f, nil
}

// Mode is the iptables backend in use: "nft" or "legacy".
func (f *Firewall) Mode() string { return f.mode }

func newFamily(cfg Config, mode string, v6 bool) (*family, error) {
	base, n, inet, proto := "iptables", "4", "inet", iptables.ProtocolIPv4
	if v6 {
		base, n, inet, proto = "ip6tables", "6", "inet6", iptables.ProtocolIPv6
	}
	bin := func(suffix string) string {
		// Prefer the backend-specific name (iptables-nft-restore); fall back to the plain one,
		// which is what a host with a single backend has.
		if p, err := exec.LookPath(base + "-" + mode + suffix); err == nil {
			return p
		}
		return base + suffix
	}
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Path(bin("")), iptables.Timeout(10))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", base, err)
	}
	return &family{v6: v6, ipt: ipt, restore: bin("-restore"), save: bin("-save"),
		chain: cfg.Chain, tripChain: cfg.Chain + "-TRIP",
		banSet: cfg.SetPrefix + "-ban" + n, allowSet: cfg.SetPrefix + "-allow" + n, tripSet: cfg.SetPrefix + "-trip" + n,
		suspect: cfg.SetPrefix + "-suspect" + n, legacy: cfg.SetPrefix + "-tripped" + n,
		inet: inet, flood: cfg.FloodTable}, nil
}

// detectMode picks the backend: forced, else the one whose tables hold rules (as kube's
// iptables-wrapper does), else what plain `iptables -V` says.
func detectMode(forced string) (string, error) {
	switch forced {
	case "nft", "legacy":
		return forced, nil
	case "":
	default:
		return "", fmt.Errorf("iptables mode %q: want nft or legacy", forced)
	}
	out, err := exec.Command("iptables", "-V").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("iptables not usable (install iptables): %w: %s", err, bytes.TrimSpace(out))
	}
	mode := "legacy"
	if strings.Contains(string(out), "nf_tables") {
		mode = "nft"
	}
	count := func(bin string) int {
		if _, err := exec.LookPath(bin); err != nil {
			return -1
		}
		out, err := exec.Command(bin).Output()
		if err != nil {
			return -1
		}
		return strings.Count(string(out), "\n-A ")
	}
	nft, legacy := count("iptables-nft-save"), count("iptables-legacy-save")
	if legacy > 0 && legacy > nft {
		return "legacy", nil
	}
	if nft > 0 && nft > legacy {
		return "nft", nil
	}
	return mode, nil
}

func run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

func (f *Firewall) famOf(p netip.Prefix) *family {
	if p.Addr().Is6() {
		return f.fams[1]
	}
	return f.fams[0]
}

// CheckBans returns an error wrapping ErrAllowlisted that names every ban covering an address of
// the allowlist (as last applied, plus extra), and the allow entry it covers.
func (f *Firewall) CheckBans(bans []Ban, extra ...netip.Prefix) error {
	f.mu.Lock()
	allow := append(append([]netip.Prefix(nil), f.allow...), extra...)
	f.mu.Unlock()
	return CheckAllow(bans, allow)
}

// CheckAllow is CheckBans against an explicit allowlist.
func CheckAllow(bans []Ban, allow []netip.Prefix) error {
	var errs []error
	for _, b := range bans {
		for _, a := range allow {
			if b.Prefix.Overlaps(a) {
				errs = append(errs, fmt.Errorf("ban %s: %w %s", b.Prefix, ErrAllowlisted, a))
				break
			}
		}
	}
	return errors.Join(errs...)
}
