package agent

import (
	"encoding/json"
	"errors"
	"fmt"
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
type State struct {
	AppliedRev int64                      `json:"applied_rev"`
	Bans       map[string]proto.Ban       `json:"bans"`
	Limits     map[string]proto.Limit     `json:"limits"`
	Tombstones map[string]proto.Tombstone `json:"tombstones"` // ban and limit ids removed, until expiry
	// Parts of a sync still arriving, by set id.
	Pending map[string][]proto.Message `json:"pending,omitempty"`

	digest  string // cache of Digest; "" when a change may have altered it
	version int    // bumped on every change, for caches of derived forms
}

// NewState returns an empty state.
func NewState() *State {
	return &State{Bans: map[string]proto.Ban{}, Limits: map[string]proto.Limit{}, Tombstones: map[string]proto.Tombstone{}, Pending: map[string][]proto.Message{}}
}

// tombstoneTTL bounds how long a tombstone without an expiry is kept.
const tombstoneTTL = 7 * 24 * time.Hour

// Change says what applying a message did to the state.
type Change struct {
	Added   []proto.Ban
	Removed []netip.Prefix
	Limits  bool // the limit set changed
	Full    bool // a sync replaced everything
}

// Empty reports whether nothing changed.
func (c Change) Empty() bool { return len(c.Added) == 0 && len(c.Removed) == 0 && !c.Limits && !c.Full }

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
			old, ok := s.Bans[b.ID]
			if newer(b.ID, b.Rev, old.Rev, ok) {
				s.Bans[b.ID] = b
				delete(s.Tombstones, b.ID)
				c.Added = append(c.Added, b)
			}
		}
	case proto.KindUnban:
		for _, t := range m.Unbans {
			old, ok := s.Bans[t.ID]
			if ok && old.Rev < t.Rev {
				delete(s.Bans, t.ID)
				c.Removed = append(c.Removed, old.Prefix())
				if t.ExpiresAt.IsZero() {
					t.ExpiresAt = old.ExpiresAt
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
	case proto.KindSync:
		whole, done := s.collect(m)
		if !done {
			break
		}
		s.replace(whole)
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

// collect gathers the parts of a sync; done when all have arrived.
func (s *State) collect(m *proto.Message) (proto.Message, bool) {
	if m.Part == nil || m.Part.Count == 1 {
		return *m, true
	}
	parts := s.Pending[m.Part.Set]
	for _, p := range parts {
		if p.Part.Index == m.Part.Index {
			return proto.Message{}, false // a duplicate part
		}
	}
	parts = append(parts, *m)
	if len(parts) < m.Part.Count {
		s.Pending[m.Part.Set] = parts
		return proto.Message{}, false
	}
	delete(s.Pending, m.Part.Set)
	sort.Slice(parts, func(i, j int) bool { return parts[i].Part.Index < parts[j].Part.Index })
	whole := proto.Message{ID: m.Part.Set, Kind: proto.KindSync, IssuedAt: parts[0].IssuedAt, Rev: parts[0].Rev}
	for _, p := range parts {
		whole.Bans = append(whole.Bans, p.Bans...)
		whole.Limits = append(whole.Limits, p.Limits...)
	}
	return whole, true
}

// replace makes the state the ledger's view at sync revision R, keeping what is newer than R
// (it arrived after the sync was computed) and honouring newer tombstones.
func (s *State) replace(m proto.Message) {
	bans := map[string]proto.Ban{}
	for id, b := range s.Bans {
		if b.Rev > m.Rev {
			bans[id] = b
		}
	}
	for _, b := range m.Bans {
		if t, dead := s.Tombstones[b.ID]; dead && t.Rev >= b.Rev {
			continue
		}
		if old, ok := bans[b.ID]; ok && old.Rev >= b.Rev {
			continue
		}
		bans[b.ID] = b
	}
	limits := map[string]proto.Limit{}
	for id, l := range s.Limits {
		if l.Rev > m.Rev {
			limits[id] = l
		}
	}
	for _, l := range m.Limits {
		if t, dead := s.Tombstones[l.ID]; dead && t.Rev >= l.Rev {
			continue
		}
		limits[l.ID] = l
	}
	s.Bans, s.Limits = bans, limits
}

// Prune drops expired bans and tombstones. Expired bans need no kernel action: their ipset
// entries time out by themselves.
func (s *State) Prune(now time.Time) {
	for id, b := range s.Bans {
		if !b.ExpiresAt.IsZero() && !b.ExpiresAt.After(now) {
			delete(s.Bans, id)
			s.changed()
		}
	}
	for id, t := range s.Tombstones {
		if !t.ExpiresAt.After(now) {
			delete(s.Tombstones, id)
		}
	}
}

// Firewall returns the kernel state for s and the allowlist.
func (s *State) Firewall(allow []netip.Prefix) firewall.State {
	fs := firewall.State{Allow: allow}
	for _, b := range s.Bans {
		fs.Bans = append(fs.Bans, firewall.Ban{Prefix: b.Prefix(), Expires: b.ExpiresAt})
	}
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

// Load reads a state file; a missing file is an empty state.
func Load(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return NewState(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	s := NewState()
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("state file %s is corrupt: %w (move it away to start empty; the controller's next sync restores it)", path, err)
	}
	if s.Bans == nil {
		s.Bans = map[string]proto.Ban{}
	}
	if s.Limits == nil {
		s.Limits = map[string]proto.Limit{}
	}
	if s.Tombstones == nil {
		s.Tombstones = map[string]proto.Tombstone{}
	}
	if s.Pending == nil {
		s.Pending = map[string][]proto.Message{}
	}
	return s, nil
}

// Save writes the state atomically: temp file, fsync, rename, fsync of the directory.
func (s *State) Save(path string) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".state-*.json")
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
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

func (s *State) changed() {
	s.digest = ""
	s.version++
}

// Version changes whenever the state does.
func (s *State) Version() int { return s.version }

// Digest is proto.Digest of the state's bans and limits, cached until the next change.
func (s *State) Digest() string {
	if s.digest == "" {
		s.digest = s.digestNow()
	}
	return s.digest
}

func (s *State) digestNow() string {
	bans := make([]proto.Ban, 0, len(s.Bans))
	for _, b := range s.Bans {
		bans = append(bans, b)
	}
	limits := make([]proto.Limit, 0, len(s.Limits))
	for _, l := range s.Limits {
		limits = append(limits, l)
	}
	return proto.Digest(bans, limits)
}
