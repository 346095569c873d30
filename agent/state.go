package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/bansshee/bansshee/agent/firewall"
	"github.com/bansshee/bansshee/proto"
)

// State is the agent's desired state: what it was told, with the revisions that decide conflicts.
// It is what state.json holds and what the kernel is made to match.
//
// Bans are held compactly, keyed by prefix (a ban's id is proto.BanID of its prefix, which
// proto's validation enforces) in maps without pointers (see banSet): about 30 bytes a ban, so a
// million bans take about 30 MB and cost the garbage collector nothing to scan.
type State struct {
	AppliedRev int64
	// Allows is the ledger allowlist at AllowRev (an allow message replaces it whole); the agent
	// adds it to its kernel allow set.
	Allows     []proto.Allow
	AllowRev   int64
	bans       banSet
	Limits     map[string]proto.Limit
	Tombstones map[string]proto.Tombstone // ban and limit ids removed, until expiry
	// Parts of a sync still arriving, by set id. They are not in state.json: the agent keeps each
	// part in a file of its own as it arrives (see Agent.apply), so a 40-part sync writes 40 parts,
	// not 40 growing copies of them.
	Pending      map[string][]*pendingPart
	pendingMetas map[banMeta]*banMeta // reasons and sources of pending parts, interned
	expired      []string             // pending sets dropped (superseded, expired) whose files remain

	metas    map[banMeta]uint32 // interned reasons and sources: index into metaList
	metaList []banMeta          // [0] is the empty one
	digest   string             // cache of Digest; "" when a change may have altered it
	version  int                // bumped on every change, for caches of derived forms
	nextExp  int64              // no ban expires before this (unix seconds): Prune skips until then
	sum      proto.DigestSum    // the bans' part of the digest, kept with every change
}

type banMeta struct{ reason, source string }

// NewState returns an empty state.
func NewState() *State {
	return &State{bans: newBanSet(0), Limits: map[string]proto.Limit{}, Tombstones: map[string]proto.Tombstone{},
		Pending: map[string][]*pendingPart{}, metas: map[banMeta]uint32{}, metaList: []banMeta{{}}}
}

func (s *State) intern(k banMeta) uint32 {
	if k == (banMeta{}) {
		return 0
	}
	i, ok := s.metas[k]
	if !ok {
		i = uint32(len(s.metaList))
		s.metaList = append(s.metaList, k)
		s.metas[k] = i
	}
	return i
}

func (s *State) entry(b proto.Ban) (netip.Prefix, banVal) {
	e := banVal{rev: b.Rev, meta: s.intern(banMeta{b.Reason, b.Source})}
	if !b.ExpiresAt.IsZero() {
		e.exp = uint32(max(b.ExpiresAt.Unix(), 1))
	}
	return b.Prefix(), e
}

// put stores a ban, keeps the bans' digest sum, and keeps nextExp a lower bound of every expiry.
func (s *State) put(p netip.Prefix, e banVal) {
	id := proto.BanID(p)
	if old, ok := s.bans.get(p); ok {
		s.sum.AddBan(id, old.expires(), -1)
	}
	s.sum.AddBan(id, e.expires(), 1)
	s.bans.set(p, e)
	if e.exp != 0 && (s.nextExp == 0 || e.expires() < s.nextExp) {
		s.nextExp = e.expires()
	}
}

// drop removes a ban and its part of the digest sum.
func (s *State) drop(p netip.Prefix, e banVal) {
	s.sum.AddBan(proto.BanID(p), e.expires(), -1)
	s.bans.del(p)
}

func (s *State) wire(p netip.Prefix, e banVal) proto.Ban {
	b := proto.Ban{ID: proto.BanID(p), CIDR: p.String(), Rev: e.rev}
	if e.exp != 0 {
		b.ExpiresAt = time.Unix(e.expires(), 0).UTC()
	}
	m := s.metaList[e.meta]
	b.Reason, b.Source = m.reason, m.source
	return b
}

// ActiveAllows returns the allowlist entries in force at now.
func (s *State) ActiveAllows(now time.Time) []netip.Prefix {
	var out []netip.Prefix
	for _, a := range s.Allows {
		if a.ExpiresAt.IsZero() || a.ExpiresAt.After(now) {
			out = append(out, a.Prefix())
		}
	}
	return out
}

// BanCount is the number of bans held.
func (s *State) BanCount() int { return s.bans.len() }

// BanCounts is the number of IPv4 and IPv6 bans held.
func (s *State) BanCounts() [2]int { return s.bans.counts() }

// Ban returns the ban held for prefix p.
func (s *State) Ban(p netip.Prefix) (proto.Ban, bool) {
	e, ok := s.bans.get(p)
	if !ok {
		return proto.Ban{}, false
	}
	return s.wire(p, e), true
}

// Bans returns every ban held, in wire form (allocates; for reports and tests).
func (s *State) Bans() []proto.Ban {
	out := make([]proto.Ban, 0, s.bans.len())
	for p, e := range s.bans.all {
		out = append(out, s.wire(p, e))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// tombstoneTTL bounds how long a tombstone without an expiry is kept.
const tombstoneTTL = 7 * 24 * time.Hour

// Change says what applying a message did to the state.
type Change struct {
	Added   []proto.Ban
	Removed []netip.Prefix
	Limits  bool // the limit set changed
	Full    bool // a sync replaced everything
	Allows  bool // the allowlist changed
}

// Empty reports whether nothing changed.
func (c Change) Empty() bool {
	return len(c.Added) == 0 && len(c.Removed) == 0 && !c.Limits && !c.Full && !c.Allows
}

// Apply applies one validated message with DESIGN.md's revision rule: an entry is taken only if
// its revision is newer than what the state holds for that id (entry or tombstone).
func (s *State) Apply(m *proto.Message, now time.Time) Change {
	var c Change
	newer := func(id string, rev int64, have int64, ok bool) bool {
		if t, dead := s.Tombstones[id]; dead && t.Rev >= rev {
			return false
		}
		return !ok || rev > have
	}
	switch m.Kind {
	case proto.KindBan:
		for _, b := range m.Bans {
			p, e := s.entry(b)
			old, ok := s.bans.get(p)
			if newer(b.ID, b.Rev, old.rev, ok) {
				s.put(p, e)
				delete(s.Tombstones, b.ID)
				c.Added = append(c.Added, b)
			}
		}
	case proto.KindUnban:
		for _, t := range m.Unbans {
			p, err := proto.ParseBanID(t.ID)
			if err != nil {
				continue // not a ban id: nothing of ours to remove (validation lets limit ids through)
			}
			old, ok := s.bans.get(p)
			if ok && old.rev < t.Rev {
				s.drop(p, old)
				c.Removed = append(c.Removed, p)
				if t.ExpiresAt.IsZero() && old.exp != 0 {
					t.ExpiresAt = time.Unix(old.expires(), 0)
				}
			}
			s.bury(t, now)
		}
	case proto.KindLimit:
		for _, l := range m.Limits {
			old, ok := s.Limits[l.ID]
			if newer(l.ID, l.Rev, old.Rev, ok) {
				s.Limits[l.ID] = l
				delete(s.Tombstones, l.ID)
				c.Limits = true
			}
		}
	case proto.KindUnlimit:
		for _, t := range m.Unlimits {
			if old, ok := s.Limits[t.ID]; ok && old.Rev < t.Rev {
				delete(s.Limits, t.ID)
				c.Limits = true
			}
			s.bury(t, now)
		}
	case proto.KindAllow:
		if m.Rev > s.AllowRev {
			s.Allows, s.AllowRev = append([]proto.Allow(nil), m.Allows...), m.Rev
			c.Allows = true
		}
	case proto.KindSync:
		parts, done := s.addPart(m, now)
		if !done {
			break
		}
		s.replace(parts, m.Rev)
		s.supersede(m.Rev)
		c.Full = true
	}
	if m.Kind != proto.KindSync || c.Full {
		s.AppliedRev = max(s.AppliedRev, m.Rev)
	}
	if !c.Empty() {
		s.changed()
	}
	s.Prune(now)
	return c
}

func (s *State) bury(t proto.Tombstone, now time.Time) {
	if old, ok := s.Tombstones[t.ID]; ok && old.Rev >= t.Rev {
		return
	}
	if t.ExpiresAt.IsZero() {
		t.ExpiresAt = now.Add(tombstoneTTL)
	}
	s.Tombstones[t.ID] = t
}

// pendingPart is one part of a sync still arriving, its bans held compactly (a million-ban sync
// waits in 34 parts: as wire-form bans they took about 170 MB, compacted about 56).
type pendingPart struct {
	index, count int
	rev          int64
	arrived      time.Time // when this part was received (a set expires PendingTTL after its first)
	bans         []pendingBan
	limits       []proto.Limit
}

type pendingBan struct {
	p    netip.Prefix
	exp  uint32
	rev  int64
	meta *banMeta // interned in State.pendingMetas
}

func (s *State) compactPart(m *proto.Message) *pendingPart {
	pp := &pendingPart{index: 1, count: 1, rev: m.Rev, limits: m.Limits, bans: make([]pendingBan, len(m.Bans))}
	if m.Part != nil {
		pp.index, pp.count = m.Part.Index, m.Part.Count
	}
	if s.pendingMetas == nil {
		s.pendingMetas = map[banMeta]*banMeta{}
	}
	for i, b := range m.Bans {
		pb := pendingBan{p: b.Prefix(), rev: b.Rev}
		if !b.ExpiresAt.IsZero() {
			pb.exp = uint32(max(b.ExpiresAt.Unix(), 1))
		}
		if k := (banMeta{b.Reason, b.Source}); k != (banMeta{}) {
			if pb.meta = s.pendingMetas[k]; pb.meta == nil {
				pb.meta = &k
				s.pendingMetas[k] = pb.meta
			}
		}
		pp.bans[i] = pb
	}
	return pp
}

// addPart keeps one part of a sync (from the queue, or from its file after a restart) and, when it
// completes its set, returns every part in order.
func (s *State) addPart(m *proto.Message, arrived time.Time) ([]*pendingPart, bool) {
	if m.Part == nil || m.Part.Count == 1 {
		return []*pendingPart{s.compactPart(m)}, true
	}
	parts := s.Pending[m.Part.Set]
	for _, p := range parts {
		if p.index == m.Part.Index {
			return nil, false // a duplicate part
		}
	}
	pp := s.compactPart(m)
	pp.arrived = arrived
	parts = append(parts, pp)
	if len(parts) < m.Part.Count {
		s.Pending[m.Part.Set] = parts
		return nil, false
	}
	delete(s.Pending, m.Part.Set)
	if len(s.Pending) == 0 {
		s.pendingMetas = nil
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i].index < parts[j].index })
	return parts, true
}

// PendingTTL is how long the parts of an incomplete sync are kept: a set with a part that never
// comes (refused, sent to the DLQ) would otherwise stay in memory and on disk for ever. The
// reconciler sends a new sync to an agent whose digest still differs.
const PendingTTL = time.Hour

// supersede forgets the pending sets older than a sync that completed at rev: they can only carry
// an older view.
func (s *State) supersede(rev int64) {
	for set, parts := range s.Pending {
		if len(parts) > 0 && parts[0].rev <= rev {
			delete(s.Pending, set)
			s.expired = append(s.expired, set)
		}
	}
	if len(s.Pending) == 0 {
		s.pendingMetas = nil
	}
}

// ExpiredSets returns, and forgets, the ids of the pending sets dropped since the last call, so
// that the agent removes their files.
func (s *State) ExpiredSets() []string {
	out := s.expired
	s.expired = nil
	return out
}

// replace makes the state the ledger's view at sync revision rev, keeping what is newer than rev
// (it arrived after the sync was computed) and honouring tombstones newer than rev. A tombstone at
// or below rev is already reflected in the sync (the ledger holds the unban, or a ban written
// since that still applies): it is dropped, so that it cannot keep out an entry the ledger holds.
func (s *State) replace(parts []*pendingPart, rev int64) {
	n := 0
	for _, pp := range parts {
		n += len(pp.bans)
	}
	old, oldMetas := s.bans, s.metaList
	s.bans, s.nextExp, s.sum = newBanSet(n), 0, proto.DigestSum{}
	s.metas, s.metaList = map[banMeta]uint32{}, []banMeta{{}} // forget reasons no ban uses any more
	for p, e := range old.all {
		if e.rev > rev {
			e.meta = s.intern(oldMetas[e.meta])
			s.put(p, e)
		}
	}
	for _, pp := range parts {
		for _, b := range pp.bans {
			if len(s.Tombstones) > 0 {
				id := proto.BanID(b.p)
				if t, dead := s.Tombstones[id]; dead {
					if t.Rev > rev {
						continue
					}
					delete(s.Tombstones, id)
				}
			}
			if have, ok := s.bans.get(b.p); ok && have.rev >= b.rev {
				continue
			}
			e := banVal{rev: b.rev, exp: b.exp}
			if b.meta != nil {
				e.meta = s.intern(*b.meta)
			}
			s.put(b.p, e)
		}
	}
	var limitsIn []proto.Limit
	for _, pp := range parts {
		limitsIn = append(limitsIn, pp.limits...)
	}
	limits := map[string]proto.Limit{}
	for id, l := range s.Limits {
		if l.Rev > rev {
			limits[id] = l
		}
	}
	for _, l := range limitsIn {
		if t, dead := s.Tombstones[l.ID]; dead {
			if t.Rev > rev {
				continue
			}
			delete(s.Tombstones, l.ID)
		}
		limits[l.ID] = l
	}
	s.Limits = limits
}

// Prune drops expired bans and tombstones. Expired bans need no kernel action: their ipset
// entries time out by themselves.
func (s *State) Prune(now time.Time) {
	sec := now.Unix()
	if s.nextExp != 0 && s.nextExp <= sec {
		// Something expired: one scan removes it and finds the next expiry. Between expiries a
		// prune costs nothing, however many bans there are.
		s.nextExp = 0
		for p, e := range s.bans.all {
			switch {
			case e.exp == 0:
			case e.expires() <= sec:
				s.drop(p, e)
				s.changed()
			case s.nextExp == 0 || e.expires() < s.nextExp:
				s.nextExp = e.expires()
			}
		}
	}
	for id, t := range s.Tombstones {
		if !t.ExpiresAt.After(now) {
			delete(s.Tombstones, id)
		}
	}
	for set, parts := range s.Pending {
		if len(parts) > 0 && now.Sub(parts[0].arrived) > PendingTTL {
			delete(s.Pending, set)
			s.expired = append(s.expired, set)
		}
	}
	if len(s.Pending) == 0 {
		s.pendingMetas = nil
	}
}

// Firewall returns the kernel state for s and the allowlist.
func (s *State) Firewall(allow []netip.Prefix) firewall.State {
	fs := s.FirewallWithoutBans(allow)
	fs.Bans = make([]firewall.Ban, 0, s.bans.len())
	for p, e := range s.bans.all {
		b := firewall.Ban{Prefix: p}
		if e.exp != 0 {
			b.Expires = time.Unix(e.expires(), 0)
		}
		fs.Bans = append(fs.Bans, b)
	}
	return fs
}

// Overlapping counts the bans, IPv4 and IPv6, that overlap a prefix of allow.
func (s *State) Overlapping(allow []netip.Prefix) [2]int {
	var n [2]int
	if len(allow) == 0 {
		return n
	}
	for p := range s.bans.all {
		for _, a := range allow {
			if p.Overlaps(a) {
				if p.Addr().Is6() {
					n[1]++
				} else {
					n[0]++
				}
				break
			}
		}
	}
	return n
}

// FirewallWithoutBans is Firewall with only the limits and the allowlist.
func (s *State) FirewallWithoutBans(allow []netip.Prefix) firewall.State {
	fs := firewall.State{Allow: allow}
	ids := make([]string, 0, len(s.Limits))
	for id := range s.Limits {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		fs.Limits = append(fs.Limits, s.Limits[id])
	}
	return fs
}

// stateFile is state.json: bans as an array of wire-form bans.
type stateFile struct {
	AppliedRev int64                      `json:"applied_rev"`
	Limits     map[string]proto.Limit     `json:"limits"`
	Tombstones map[string]proto.Tombstone `json:"tombstones"`
	Allows     []proto.Allow              `json:"allows,omitempty"`
	AllowRev   int64                      `json:"allow_rev,omitempty"`
	Bans       []proto.Ban                `json:"bans"`
}

// Load reads a state file; a missing file is an empty state.
// ErrCorrupt is returned by Load for a state file that cannot be read as one.
var ErrCorrupt = errors.New("state file is corrupt")

func Load(path string) (*State, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return NewState(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	defer f.Close()
	var sf stateFile
	if err := json.NewDecoder(bufio.NewReader(f)).Decode(&sf); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
	}
	s := NewState()
	s.AppliedRev, s.Allows, s.AllowRev = sf.AppliedRev, sf.Allows, sf.AllowRev
	for k, v := range sf.Limits {
		s.Limits[k] = v
	}
	for k, v := range sf.Tombstones {
		s.Tombstones[k] = v
	}
	for _, b := range sf.Bans {
		if _, err := proto.ParseCIDR(b.CIDR); err != nil {
			return nil, fmt.Errorf("%w: %s: ban %q: %v", ErrCorrupt, path, b.ID, err)
		}
		p, e := s.entry(b)
		s.put(p, e)
	}
	return s, nil
}

// Save writes the state atomically (temp file, fsync, rename, fsync of the directory), streaming
// the bans so that a large state needs no large buffer.
func (s *State) Save(path string) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".state-*.json")
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := s.write(tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("save state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

func (s *State) write(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	head, err := json.Marshal(stateFile{AppliedRev: s.AppliedRev, Limits: s.Limits, Tombstones: s.Tombstones, Allows: s.Allows, AllowRev: s.AllowRev})
	if err != nil {
		return err
	}
	// head ends with `"bans":null}`: replace that with the streamed array.
	head = bytes.TrimSuffix(head, []byte(`null}`))
	bw.Write(head)
	bw.WriteByte('[')
	enc := json.NewEncoder(bw)
	first := true
	for p, e := range s.bans.all {
		if !first {
			bw.WriteByte(',')
		}
		first = false
		if err := enc.Encode(s.wire(p, e)); err != nil {
			return err
		}
	}
	bw.WriteString("]}\n")
	return bw.Flush()
}

func (s *State) changed() {
	s.digest = ""
	s.version++
}

// Version changes whenever the state does.
func (s *State) Version() int { return s.version }

// Digest is proto.DigestV2 of the state's bans and limits: the bans' part is kept up to date with
// every change (no sort of a million entries per heartbeat), the limits' added here.
func (s *State) Digest() string {
	if s.digest == "" {
		d := s.sum
		for _, l := range s.Limits {
			d.AddLimit(l.ID, l.Rev, 1)
		}
		s.digest = d.String()
	}
	return s.digest
}

// appendJournal appends one applied message to the journal and fsyncs it; it returns the bytes
// written.
func appendJournal(path string, m *proto.Message) (int, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return 0, err
	}
	b = append(b, '\n')
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("journal: %w", err)
	}
	if _, err = f.Write(b); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("journal: %w", err)
	}
	return len(b), nil
}

// ReplayJournal applies the journal's messages to st in order and returns how many it applied and
// the journal's size. A missing journal is empty; a last line cut short by a crash is ignored; an
// unreadable line stops the replay with an error (what it held comes back with the next sync).
func ReplayJournal(st *State, path string, now time.Time) (int, int64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("read journal: %w", err)
	}
	n := 0
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			break // a write cut short: it was never acknowledged
		}
		line := b[:i]
		b = b[i+1:]
		m, err := proto.UnmarshalStored(line)
		if err != nil {
			return n, int64(len(b)), fmt.Errorf("journal line %d: %w", n+1, err)
		}
		st.Apply(m, now)
		n++
	}
	fi, err := os.Stat(path)
	if err != nil {
		return n, 0, nil
	}
	return n, fi.Size(), nil
}
