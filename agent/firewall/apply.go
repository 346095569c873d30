package firewall

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/vishvananda/netlink/nl"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bansshee/bansshee/proto"
)

// Ensure creates what the firewall owns if it is missing: sets, chains, chain rules (with the
// limits last applied) and the jump at the top of INPUT, for IPv4 and IPv6. It reports what it had
// to recreate.
func (f *Firewall) Ensure(ctx context.Context) (repairs []string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ensure(ctx, f.limits)
}

func (f *Firewall) ensure(ctx context.Context, limits []proto.Limit) ([]string, error) {
	var repairs []string
	existing, err := f.listSets(ctx)
	if err != nil {
		return nil, err
	}
	for _, fam := range f.fams {
		for _, name := range []string{fam.allowSet, fam.banSet, fam.tripSet, fam.suspect} {
			if !existing[name] {
				repairs = append(repairs, "set:"+name)
			}
		}
	}
	if !f.sized {
		if err := f.resizeFloodSets(ctx, existing); err != nil {
			return nil, err
		}
		f.sized = true
	}
	if len(repairs) > 0 {
		if err := f.ipsetRestore(ctx, nil); err != nil {
			return nil, fmt.Errorf("create sets: %w", err)
		}
	}
	for _, fam := range f.fams {
		r, err := f.syncRules(ctx, fam, limits)
		if err != nil {
			return nil, err
		}
		repairs = append(repairs, r...)
		ok, err := fam.ipt.Exists("filter", "INPUT", "-j", fam.chain)
		if err != nil {
			return nil, fmt.Errorf("check jump to %s: %w", fam.chain, err)
		}
		if !ok {
			if err := fam.ipt.Insert("filter", "INPUT", 1, "-j", fam.chain); err != nil {
				return nil, fmt.Errorf("insert jump to %s at the top of INPUT: %w", fam.chain, err)
			}
			repairs = append(repairs, "jump"+fam.n())
		}
		r, err = f.ensureForward(ctx, fam, limits) // forward.go: container traffic
		if err != nil {
			return nil, err
		}
		repairs = append(repairs, r...)
	}
	return repairs, nil
}

func (fam *family) n() string {
	if fam.v6 {
		return "6"
	}
	return "4"
}

// rules returns the chains' desired rules. Each carries a comment with a hash of its position
// and text, so drift (a rule removed, added or changed by hand) is found by comparing comments.
//
// Order: the allowlist; then packets that answer a connection this host opened (an agent whose
// AWS endpoint is banned must still hear the unban); then the ban set, which drops everything a
// banned address starts, established connections included; then the rate limits.
//
// Escalation is verified: a source over an escalating TCP limit only becomes a suspect (its SYN is
// dropped); it trips, and is reported, when a packet of an established connection from it arrives
// at that port, which a spoofed source cannot produce. Both sets key on address and port, so the
// agent credits the limit that tripped.
func (fam *family) rules(limits []proto.Limit) (main, trip []string) {
	main = []string{
		fmt.Sprintf("-m set --match-set %s src -j RETURN", fam.allowSet),
		// The set first: the connection-state lookup happens only for banned sources.
		fmt.Sprintf("-m set --match-set %s src -m conntrack --ctstate ESTABLISHED --ctdir REPLY -j RETURN", fam.banSet),
		fmt.Sprintf("-m set --match-set %s src -j DROP", fam.banSet),
	}
	sorted := slices.Clone(limits)
	slices.SortFunc(sorted, func(a, b proto.Limit) int { return strings.Compare(a.ID, b.ID) })
	for _, l := range sorted {
		if l.Escalate && l.Proto == "tcp" {
			main = append(main, fmt.Sprintf("-p tcp -m set --match-set %s src,dst -m conntrack --ctstate ESTABLISHED --ctdir ORIGINAL -j SET --add-set %s src,dst --exist", fam.suspect, fam.tripSet))
			break
		}
	}
	for _, l := range sorted {
		main = append(main, fam.limitRule(l))
	}
	trip = []string{
		fmt.Sprintf("-p udp -j SET --add-set %s src,dst --exist", fam.tripSet), // only limits with escalate_unverified jump here with udp
		fmt.Sprintf("-j SET --add-set %s src,dst --exist", fam.suspect),
		"-j DROP",
	}
	tag := func(rs []string, chain string) []string {
		for i, r := range rs {
			sum := sha256.Sum256([]byte(fmt.Sprint(chain, i, r)))
			rs[i] = fmt.Sprintf("%s -m comment --comment bansshee:%s", r, hex.EncodeToString(sum[:5]))
		}
		return rs
	}
	return tag(main, fam.chain), tag(trip, fam.tripChain)
}

// limitRule is one hashlimit rule: each source may open Hits new connections per Seconds; the
// rest are dropped (or rejected, or sent to the TRIP chain when the policy escalates). The
// hashlimit name hashes the rate and the table size too: the kernel keeps a name's first settings
// for as long as any rule uses it, so a limit changed under the same id must get a new name to
// take effect.
func (fam *family) limitRule(l proto.Limit) string {
	ports := make([]string, len(l.Ports))
	for i, p := range l.Ports {
		ports[i] = strconv.Itoa(p)
	}
	sum := sha256.Sum256([]byte(fmt.Sprint(l.ID, "|", l.Proto, "|", ports, "|", l.Hits, "/", l.Seconds, "|", fam.flood)))
	name := "bsh" + fam.n() + "-" + hex.EncodeToString(sum[:4]) // hashlimit names are at most 15 bytes
	target := "DROP"
	switch {
	case l.Escalate && (l.Proto == "tcp" || l.EscalateUnverified):
		target = fam.tripChain
	case l.Action == "reject" && l.Proto == "tcp":
		target = "REJECT --reject-with tcp-reset"
	case l.Action == "reject":
		target = "REJECT"
	}
	// The table is sized explicitly (see FloodTableSize): the kernel drops the packets of a source
	// it cannot add, so a full table would shut out every new client.
	return fmt.Sprintf("-p %s -m multiport --dports %s -m conntrack --ctstate NEW -m hashlimit --hashlimit-above %s --hashlimit-burst %d --hashlimit-mode srcip --hashlimit-name %s --hashlimit-htable-size %d --hashlimit-htable-max %d --hashlimit-htable-expire %d -j %s",
		l.Proto, strings.Join(ports, ","), rate(l.Hits, l.Seconds), l.Hits, name, max(fam.flood/8, 1024), fam.flood, l.Seconds*1000+1000, target)
}

// rate expresses hits per seconds in the smallest hashlimit unit that keeps it exact.
func rate(hits, seconds int) string {
	for _, u := range []struct {
		name string
		secs int
	}{{"second", 1}, {"minute", 60}, {"hour", 3600}, {"day", 86400}} {
		if hits*u.secs%seconds == 0 {
			return fmt.Sprintf("%d/%s", hits*u.secs/seconds, u.name)
		}
	}
	// Not exact in any unit: round the hourly rate up (a little more lenient, never stricter).
	return fmt.Sprintf("%d/hour", int(math.Ceil(float64(hits)*3600/float64(seconds))))
}

// syncRules rewrites our chains in one iptables-restore --noflush call when they differ from the
// desired rules. Declaring a chain in restore input flushes only that chain.
func (f *Firewall) syncRules(ctx context.Context, fam *family, limits []proto.Limit) ([]string, error) {
	main, trip := fam.rules(limits)
	var repairs []string
	for _, c := range []struct {
		chain string
		want  []string
	}{{fam.tripChain, trip}, {fam.chain, main}} {
		have, err := fam.ipt.List("filter", c.chain)
		if err == nil && sameRules(have, c.want) {
			continue
		}
		if err == nil {
			repairs = append(repairs, "rules:"+c.chain+fam.n())
		} else {
			repairs = append(repairs, "chain:"+c.chain+fam.n())
		}
		var b bytes.Buffer
		fmt.Fprintf(&b, "*filter\n:%s - [0:0]\n:%s - [0:0]\n", fam.tripChain, fam.chain)
		for _, r := range trip {
			fmt.Fprintf(&b, "-A %s %s\n", fam.tripChain, r)
		}
		for _, r := range main {
			fmt.Fprintf(&b, "-A %s %s\n", fam.chain, r)
		}
		b.WriteString("COMMIT\n")
		if _, err := run(ctx, b.Bytes(), fam.restore, "-w", "10", "--noflush"); err != nil {
			return nil, fmt.Errorf("write chain %s: %w", fam.chain, err)
		}
		break // both chains were written
	}
	return repairs, nil
}

// sameRules compares `iptables -S CHAIN` output with the desired rules by their comments.
func sameRules(have []string, want []string) bool {
	var rules []string
	for _, h := range have {
		if strings.HasPrefix(h, "-A ") {
			rules = append(rules, h)
		}
	}
	if len(rules) != len(want) {
		return false
	}
	for i, w := range want {
		tag := w[strings.LastIndex(w, "bansshee:"):]
		if !strings.Contains(rules[i], tag) {
			return false
		}
	}
	return true
}

// Apply makes the kernel hold exactly s: it ensures everything exists, rewrites the chains if
// they drifted, and brings the sets to s with one ipset batch of the differences. Bans past their
// expiry are left out. Bans are not checked against the allowlist here (use CheckBans first); the
// allow set is matched before the ban set, so an allowlisted address is never dropped.
func (f *Firewall) Apply(ctx context.Context, s State) (Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var res Result
	repairs, err := f.ensure(ctx, s.Limits)
	if err != nil {
		return res, err
	}
	res.Repairs = repairs
	f.limits = slices.Clone(s.Limits)
	f.allow = slices.Clone(s.Allow)
	s.bans()

	now := f.cfg.Now()
	var batch bytes.Buffer
	// The ban sets' changes, kept apart: they go over netlink (see netlink.go), the rest (the
	// allow sets, or everything if netlink fails) through one `ipset restore`.
	type change struct {
		set      string
		add, del []setEntry
	}
	// What each family's ban set should hold, as sorted compact entries; the bans in their
	// State form are let go before the sets are read (a million of them are 56 MB).
	var wants [2][]setEntry
	for _, b := range s.Bans {
		t, ok := timeout(b.Expires, now)
		if !ok {
			continue
		}
		i := 0
		if b.Prefix.Addr().Is6() {
			i = 1
		}
		wants[i] = append(wants[i], newSetEntry(b.Prefix, t))
	}
	s.Bans = nil
	var changes []change
	for fi, fam := range f.fams {
		ch := change{set: fam.banSet}
		// Both sides as sorted compact entries, compared in one walk: a million bans are two
		// slices of 32-byte values, not two maps keyed by netip.Prefix (a third of the time).
		cur, err := f.readSetSorted(ctx, fam.banSet)
		if err != nil {
			return res, err
		}
		want := wants[fi]
		if fam.v6 != (fi == 1) {
			return res, fmt.Errorf("family order: %s", fam.banSet)
		}
		sortEntries(want)
		want = slices.CompactFunc(want, func(a, b setEntry) bool { return a.key == b.key }) // the longest of duplicates comes first
		if len(cur) == 0 {
			ch.add, res.Added = want, res.Added+len(want) // a fresh set: every entry, no copy
		} else {
			i := 0
			for _, w := range want {
				for i < len(cur) && cur[i].key.less(w.key) {
					ch.del = append(ch.del, cur[i])
					res.Removed++
					i++
				}
				if i < len(cur) && cur[i].key == w.key {
					c := cur[i]
					i++
					if !needsRefresh(c.t, w.t) {
						continue
					}
					res.Refreshed++
				} else {
					res.Added++
				}
				ch.add = append(ch.add, w)
			}
			for ; i < len(cur); i++ {
				ch.del = append(ch.del, cur[i])
				res.Removed++
			}
		}
		changes = append(changes, ch)
		curAllow, err := f.readSet(ctx, fam.allowSet)
		if err != nil {
			return res, err
		}
		wantAllow := map[netip.Prefix]bool{}
		for _, a := range s.Allow {
			if f.famOf(a) == fam {
				wantAllow[a.Masked()] = true
			}
		}
		for a := range wantAllow {
			if _, ok := curAllow[a]; !ok {
				fmt.Fprintf(&batch, "add %s %s\n", fam.allowSet, a)
			}
		}
		for a := range curAllow {
			if !wantAllow[a] {
				fmt.Fprintf(&batch, "del %s %s\n", fam.allowSet, a)
			}
		}
	}
	viaNetlink := !f.cfg.NoNetlink
	for _, ch := range changes {
		if !viaNetlink {
			break
		}
		// Deletions first: a change that replaces entries of a nearly full set fits whenever
		// its final state does.
		err := ipsetEntries(nl.IPSET_CMD_DEL, ch.set, ch.del, false)
		if err == nil {
			err = ipsetEntries(nl.IPSET_CMD_ADD, ch.set, ch.add, true)
		}
		if err != nil {
			f.fallbacks.Add(1)
			viaNetlink = false
		}
	}
	if !viaNetlink { // all of it again as text: adds and dels are idempotent under -exist
		for _, ch := range changes {
			for _, e := range ch.del {
				fmt.Fprintf(&batch, "del %s %s\n", ch.set, e.prefix())
			}
			for _, e := range ch.add {
				writeAdd(&batch, ch.set, e.prefix(), e.t)
			}
		}
	}
	if batch.Len() > 0 {
		if err := f.ipsetRestore(ctx, batch.Bytes()); err != nil {
			return res, fmt.Errorf("update sets: %w", err)
		}
	}
	return res, nil
}

// Quick is the cheap form of Apply for periodic reconciles of large states: it ensures chains,
// jumps, rules and sets exist (and repairs them), then compares only the number of entries in the
// ban sets with the desired state; it falls back to a full Apply when they differ. A swap of one
// entry for another by hand is found by the next full Apply (the agent runs one every few passes).
func (f *Firewall) Quick(ctx context.Context, s State) (Result, error) {
	f.mu.Lock()
	repairs, err := f.ensure(ctx, s.Limits)
	if err != nil {
		f.mu.Unlock()
		return Result{}, err
	}
	now := f.cfg.Now()
	want := s.BanCounts // desired entries per family; the agent's bans are unique by prefix
	if s.Bans != nil || s.Build == nil {
		want = [2]int{}
		for _, b := range s.Bans {
			if _, ok := timeout(b.Expires, now); ok {
				if b.Prefix.Addr().Is6() {
					want[1]++
				} else {
					want[0]++
				}
			}
		}
	}
	same := true
	for i, fam := range f.fams {
		n, err := f.countSet(ctx, fam.banSet)
		if err != nil || n != want[i] {
			same = false
			break
		}
	}
	f.mu.Unlock()
	if same && len(repairs) == 0 && slices.Equal(f.allowSnapshot(), s.Allow) {
		return Result{}, nil
	}
	res, err := f.Apply(ctx, s)
	res.Repairs = append(repairs, res.Repairs...)
	return res, err
}

func (f *Firewall) allowSnapshot() []netip.Prefix {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.allow
}

// countSet reads the number of entries of a set from its header (no members are listed).
func (f *Firewall) countSet(ctx context.Context, name string) (int, error) {
	out, err := run(ctx, nil, "ipset", "list", "-t", name)
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "Number of entries: "); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("ipset list -t %s: no entry count", name)
}

// timeout is the ipset timeout for a ban expiring at exp: 0 for never, capped at MaxTimeout;
// ok is false when the ban has already expired.
func timeout(exp, now time.Time) (int, bool) {
	if exp.IsZero() {
		return 0, true
	}
	left := exp.Sub(now)
	if left <= 0 {
		return 0, false
	}
	return min(int(math.Ceil(left.Seconds())), MaxTimeout), true
}

// needsRefresh reports whether a kernel entry with timeout have should be re-added for want.
func needsRefresh(have, want int) bool {
	if (have == 0) != (want == 0) {
		return true
	}
	if want == MaxTimeout {
		return want-have > 86400 // a capped ban is topped up once a day
	}
	d := have - want
	return d > 5 || d < -5
}

// writeAdd appends one ipset add line (appends, not Fprintf: 100 000 of them per large apply).
func writeAdd(b *bytes.Buffer, set string, p netip.Prefix, t int) {
	var tmp [64]byte
	line := append(tmp[:0], "add "...)
	line = append(line, set...)
	line = append(line, ' ')
	line = p.AppendTo(line)
	if t != 0 {
		line = append(line, " timeout "...)
		line = strconv.AppendInt(line, int64(t), 10)
	}
	b.Write(append(line, '\n'))
}

// Ban adds bans at once (one ipset process), after checking them against the allowlist. It does
// not touch chains; Apply does.
func (f *Firewall) Ban(ctx context.Context, bans []Ban) error {
	if err := f.CheckBans(bans); err != nil {
		return err
	}
	now := f.cfg.Now()
	var live []Ban
	var timeouts []int
	for _, ban := range bans {
		if t, ok := timeout(ban.Expires, now); ok {
			live, timeouts = append(live, ban), append(timeouts, t)
		}
	}
	if len(live) == 0 {
		return nil
	}
	if !f.cfg.NoNetlink {
		if f.netlinkAdd(live, timeouts) == nil {
			return nil
		}
		f.fallbacks.Add(1)
	}
	var b bytes.Buffer
	for i, ban := range live {
		writeAdd(&b, f.famOf(ban.Prefix).banSet, ban.Prefix, timeouts[i])
	}
	if err := f.ipsetRestore(ctx, b.Bytes()); err != nil {
		return fmt.Errorf("add %d bans: %w", len(bans), err)
	}
	return nil
}

// Unban removes prefixes from the ban sets at once; prefixes not banned are ignored.
func (f *Firewall) Unban(ctx context.Context, prefixes []netip.Prefix) error {
	if len(prefixes) > 0 && !f.cfg.NoNetlink {
		if f.netlinkDel(prefixes) == nil {
			return nil
		}
		f.fallbacks.Add(1)
	}
	var b bytes.Buffer
	for _, p := range prefixes {
		fmt.Fprintf(&b, "del %s %s\n", f.famOf(p).banSet, p)
	}
	if b.Len() == 0 {
		return nil
	}
	if err := f.ipsetRestore(ctx, b.Bytes()); err != nil {
		return fmt.Errorf("remove %d bans: %w", len(prefixes), err)
	}
	return nil
}

// SetLimits replaces the rate-limit policies (rewrites our chains in one call per family).
func (f *Firewall) SetLimits(ctx context.Context, limits []proto.Limit) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.ensure(ctx, limits); err != nil {
		return err
	}
	f.limits = slices.Clone(limits)
	return nil
}

// Snapshot is what the kernel holds now.
type Snapshot struct {
	Bans  []Ban
	Allow []netip.Prefix
	Rules map[string][]string // chain+family ("BANSSHEE4") -> iptables -S lines
}

// Snapshot reads the sets and chains back from the kernel.
func (f *Firewall) Snapshot(ctx context.Context) (Snapshot, error) {
	snap := Snapshot{Rules: map[string][]string{}}
	now := f.cfg.Now()
	for _, fam := range f.fams {
		bans, err := f.readSet(ctx, fam.banSet)
		if err != nil {
			return snap, err
		}
		for p, t := range bans {
			b := Ban{Prefix: p}
			if t > 0 {
				b.Expires = now.Add(time.Duration(t) * time.Second)
			}
			snap.Bans = append(snap.Bans, b)
		}
		allow, err := f.readSet(ctx, fam.allowSet)
		if err != nil {
			return snap, err
		}
		for p := range allow {
			snap.Allow = append(snap.Allow, p)
		}
		for _, c := range []string{fam.chain, fam.tripChain, fam.fwdChain()} {
			rules, err := fam.ipt.List("filter", c)
			if err == nil {
				snap.Rules[c+fam.n()] = rules
			}
		}
	}
	slices.SortFunc(snap.Bans, func(a, b Ban) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
	return snap, nil
}

// Trip is a source that tripped an escalating limit, with the port (and protocol) it tripped on.
type Trip struct {
	Addr  netip.Addr
	Proto string
	Port  int
}

// Tripped returns the sources that tripped an escalating rate limit (and are still in the sets).
func (f *Firewall) Tripped(ctx context.Context) ([]Trip, error) {
	var out []Trip
	for _, fam := range f.fams {
		raw, err := run(ctx, nil, "ipset", "save", fam.tripSet)
		if err != nil {
			if strings.Contains(err.Error(), "does not exist") {
				continue
			}
			return nil, fmt.Errorf("read set %s: %w", fam.tripSet, err)
		}
		for _, line := range strings.Split(string(raw), "\n") {
			f := strings.Fields(line)
			if len(f) < 3 || f[0] != "add" {
				continue
			}
			if t, ok := parseTrip(f[2]); ok {
				out = append(out, t)
			}
		}
	}
	return out, nil
}

// parseTrip reads a hash:ip,port member: "10.0.0.1,tcp:110" or "2001:db8::1,udp:53".
func parseTrip(s string) (Trip, bool) {
	i := strings.LastIndexByte(s, ',')
	if i < 0 {
		return Trip{}, false
	}
	a, err := netip.ParseAddr(s[:i])
	if err != nil {
		return Trip{}, false
	}
	proto, port, ok := strings.Cut(s[i+1:], ":")
	n, err := strconv.Atoi(port)
	if !ok || err != nil {
		return Trip{}, false
	}
	return Trip{Addr: a.Unmap(), Proto: proto, Port: n}, true
}

// ClearTripped removes trips once they have been reported (and their suspect entries).
func (f *Firewall) ClearTripped(ctx context.Context, trips []Trip) error {
	var b bytes.Buffer
	for _, t := range trips {
		fam := f.fams[0]
		if t.Addr.Is6() {
			fam = f.fams[1]
		}
		fmt.Fprintf(&b, "del %s %s,%s:%d\n", fam.tripSet, t.Addr, t.Proto, t.Port)
		fmt.Fprintf(&b, "del %s %s,%s:%d\n", fam.suspect, t.Addr, t.Proto, t.Port)
	}
	if b.Len() == 0 {
		return nil
	}
	return f.ipsetRestore(ctx, b.Bytes())
}

// Uninstall removes the jumps, chains and sets, and nothing else.
func (f *Firewall) Uninstall(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, fam := range f.fams {
		for {
			ok, err := fam.ipt.Exists("filter", "INPUT", "-j", fam.chain)
			if err != nil || !ok {
				break
			}
			if err := fam.ipt.Delete("filter", "INPUT", "-j", fam.chain); err != nil {
				return fmt.Errorf("remove jump to %s: %w", fam.chain, err)
			}
		}
		if err := f.removeForward(fam); err != nil { // forward.go
			return err
		}
		for _, c := range []string{fam.chain, fam.tripChain} {
			if ok, _ := fam.ipt.ChainExists("filter", c); ok {
				if err := fam.ipt.ClearChain("filter", c); err != nil {
					return err
				}
			}
		}
		for _, c := range []string{fam.chain, fam.tripChain} {
			if ok, _ := fam.ipt.ChainExists("filter", c); ok {
				if err := fam.ipt.DeleteChain("filter", c); err != nil {
					return fmt.Errorf("delete chain %s: %w", c, err)
				}
			}
		}
	}
	existing, err := f.listSets(ctx)
	if err != nil {
		return err
	}
	for _, fam := range f.fams {
		for _, s := range []string{fam.banSet, fam.allowSet, fam.tripSet, fam.suspect, fam.legacy} {
			if existing[s] {
				if _, err := run(ctx, nil, "ipset", "destroy", s); err != nil {
					return err
				}
			}
		}
	}
	f.allow, f.limits = nil, nil
	return nil
}

func (f *Firewall) listSets(ctx context.Context) (map[string]bool, error) {
	out, err := run(ctx, nil, "ipset", "list", "-n")
	if err != nil {
		return nil, fmt.Errorf("list sets: %w", err)
	}
	sets := map[string]bool{}
	for _, l := range strings.Fields(string(out)) {
		sets[l] = true
	}
	return sets, nil
}

// readSet returns a set's members and their remaining timeouts (0: none). A missing set is empty.
func (f *Firewall) readSet(ctx context.Context, name string) (map[netip.Prefix]int, error) {
	es, err := f.readEntries(ctx, name)
	m := make(map[netip.Prefix]int, len(es))
	for _, e := range es {
		m[e.prefix()] = e.t
	}
	return m, err
}

// readEntries returns a set's members with their remaining timeouts (0: none), read with a
// netlink dump, or through `ipset save` if the dump fails (counted as a fallback). A missing set
// has none.
func (f *Firewall) readEntries(ctx context.Context, name string) ([]setEntry, error) {
	var out []setEntry
	if !f.cfg.NoNetlink {
		err := ipsetDump(name, func(p netip.Prefix, t int) { out = append(out, newSetEntry(p, t)) })
		if err == nil || missingSet(err) {
			return out, nil
		}
		f.fallbacks.Add(1)
		out = out[:0] // a dump cut short: read it all again
	}
	text, err := run(ctx, nil, "ipset", "save", name)
	if err != nil {
		if missingSet(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("read set %s: %w", name, err)
	}
	// Lines are "add SET MEMBER [timeout N] ...": parsed by hand, it is a million of them.
	for len(text) > 0 {
		var line []byte
		if i := bytes.IndexByte(text, '\n'); i >= 0 {
			line, text = text[:i], text[i+1:]
		} else {
			line, text = text, nil
		}
		rest, ok := bytes.CutPrefix(line, []byte("add "))
		if !ok {
			continue
		}
		_, rest, _ = bytes.Cut(rest, []byte(" ")) // the set name
		member, rest, _ := bytes.Cut(rest, []byte(" "))
		p, err := parseMember(string(member))
		if err != nil {
			return nil, fmt.Errorf("read set %s: %w", name, err)
		}
		t := 0
		if i := bytes.Index(rest, []byte("timeout ")); i >= 0 {
			v, _, _ := bytes.Cut(rest[i+len("timeout "):], []byte(" "))
			t, _ = strconv.Atoi(string(v))
		}
		out = append(out, newSetEntry(p, t))
	}
	return out, nil
}

func missingSet(err error) bool {
	return errors.Is(err, syscall.ENOENT) || strings.Contains(err.Error(), "does not exist")
}

// setKey is a set member without netip's pointer: the address as two big-endian halves (an IPv4
// address in lo) and the prefix length. Its order is the order of the addresses.
type setKey struct {
	hi, lo uint64
	bits   uint8
}

func (a setKey) less(b setKey) bool {
	if a.hi != b.hi {
		return a.hi < b.hi
	}
	if a.lo != b.lo {
		return a.lo < b.lo
	}
	return a.bits < b.bits
}

// setEntry is a member and its timeout (0: none).
type setEntry struct {
	key setKey
	v6  bool
	t   int
}

func newSetEntry(p netip.Prefix, t int) setEntry {
	if p.Addr().Is4() {
		a := p.Addr().As4()
		return setEntry{key: setKey{lo: uint64(binary.BigEndian.Uint32(a[:])), bits: uint8(p.Bits())}, t: t}
	}
	a := p.Addr().As16()
	return setEntry{key: setKey{hi: binary.BigEndian.Uint64(a[:8]), lo: binary.BigEndian.Uint64(a[8:]), bits: uint8(p.Bits())}, v6: true, t: t}
}

func (e setEntry) prefix() netip.Prefix {
	if !e.v6 {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], uint32(e.key.lo))
		return netip.PrefixFrom(netip.AddrFrom4(a), int(e.key.bits))
	}
	var a [16]byte
	binary.BigEndian.PutUint64(a[:8], e.key.hi)
	binary.BigEndian.PutUint64(a[8:], e.key.lo)
	return netip.PrefixFrom(netip.AddrFrom16(a), int(e.key.bits))
}

// sortEntries sorts by key and, for one key, the longest timeout first (0, none, is longest).
func sortEntries(es []setEntry) {
	slices.SortFunc(es, func(a, b setEntry) int {
		switch {
		case a.key.less(b.key):
			return -1
		case b.key.less(a.key):
			return 1
		}
		ta, tb := a.t, b.t
		if ta == 0 {
			ta = math.MaxInt
		}
		if tb == 0 {
			tb = math.MaxInt
		}
		return tb - ta
	})
}

// readSetSorted is readEntries, sorted.
func (f *Firewall) readSetSorted(ctx context.Context, name string) ([]setEntry, error) {
	out, err := f.readEntries(ctx, name)
	sortEntries(out)
	return out, err
}

// parseMember reads an ipset member: a prefix, or an address (ipset omits /32 and /128).
func parseMember(s string) (netip.Prefix, error) {
	if strings.IndexByte(s, '/') < 0 {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	return p.Masked(), err
}

// ipsetRestore runs one `ipset restore -exist` of body, preceded by the create lines of every set
// we own. Besides creating missing sets, the create lines spare ipset a type lookup per line for
// sets made by an earlier process: 100 000 adds take 0.5 s with them and 1.3 s without.
func (f *Firewall) ipsetRestore(ctx context.Context, body []byte) error {
	var b bytes.Buffer
	b.Grow(len(body) + 512)
	for _, fam := range f.fams {
		fmt.Fprintf(&b, "create %s hash:net family %s maxelem 65536\n", fam.allowSet, fam.inet)
		fmt.Fprintf(&b, "create %s hash:net family %s hashsize 4096 maxelem %d timeout 0\n", fam.banSet, fam.inet, f.cfg.MaxSet)
		// Filled from the packet path, where a hash cannot grow: created at their full hash size.
		fmt.Fprintf(&b, "create %s hash:ip,port family %s hashsize %d maxelem %d timeout 3600\n", fam.tripSet, fam.inet, f.cfg.FloodTable, f.cfg.FloodTable)
		fmt.Fprintf(&b, "create %s hash:ip,port family %s hashsize %d maxelem %d timeout 3600\n", fam.suspect, fam.inet, f.cfg.FloodTable, f.cfg.FloodTable)
	}
	b.Write(body)
	_, err := run(ctx, b.Bytes(), "ipset", "restore", "-exist")
	return err
}
