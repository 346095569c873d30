package agent

import (
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/bansshee/bansshee/proto"
)

var t0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// Test bans by name: a is 10.0.0.1, b 10.0.0.2, x 10.0.0.3.
var names = map[string]netip.Prefix{"a": netip.MustParsePrefix("10.0.0.1/32"), "b": netip.MustParsePrefix("10.0.0.2/32"), "x": netip.MustParsePrefix("10.0.0.3/32")}

func ban(name string, rev int64) proto.Ban {
	p := names[name]
	return proto.Ban{ID: proto.BanID(p), CIDR: p.String(), ExpiresAt: t0.Add(time.Hour), Rev: rev}
}

func id(name string) string { return proto.BanID(names[name]) }

func TestRevisionRule(t *testing.T) {
	cases := []struct {
		name string
		msgs []proto.Message
		want []string // ban ids held at the end
		rev  int64
	}{
		{"ban", []proto.Message{{Kind: proto.KindBan, Rev: 1, Bans: []proto.Ban{ban("a", 1)}}}, []string{"a"}, 1},
		{"duplicate", []proto.Message{{Kind: proto.KindBan, Rev: 1, Bans: []proto.Ban{ban("a", 1)}}, {Kind: proto.KindBan, Rev: 1, Bans: []proto.Ban{ban("a", 1)}}}, []string{"a"}, 1},
		{"unban then older ban", []proto.Message{{Kind: proto.KindUnban, Rev: 5, Unbans: []proto.Tombstone{{ID: id("a"), Rev: 5}}}, {Kind: proto.KindBan, Rev: 3, Bans: []proto.Ban{ban("a", 3)}}}, nil, 5},
		{"unban then newer ban", []proto.Message{{Kind: proto.KindUnban, Rev: 5, Unbans: []proto.Tombstone{{ID: id("a"), Rev: 5}}}, {Kind: proto.KindBan, Rev: 7, Bans: []proto.Ban{ban("a", 7)}}}, []string{"a"}, 7},
		{"older unban ignored", []proto.Message{{Kind: proto.KindBan, Rev: 9, Bans: []proto.Ban{ban("a", 9)}}, {Kind: proto.KindUnban, Rev: 4, Unbans: []proto.Tombstone{{ID: id("a"), Rev: 4}}}}, []string{"a"}, 9},
		{"sync replaces", []proto.Message{{Kind: proto.KindBan, Rev: 2, Bans: []proto.Ban{ban("a", 2)}}, {Kind: proto.KindSync, Rev: 3, Bans: []proto.Ban{ban("b", 1)}}}, []string{"b"}, 3},
		{"sync keeps newer", []proto.Message{{Kind: proto.KindBan, Rev: 8, Bans: []proto.Ban{ban("a", 8)}}, {Kind: proto.KindSync, Rev: 6}}, []string{"a"}, 8},
		{"sync in parts", []proto.Message{
			{Kind: proto.KindSync, Rev: 4, Bans: []proto.Ban{ban("a", 1)}, Part: &proto.Part{Set: "s", Index: 1, Count: 2}},
			{Kind: proto.KindSync, Rev: 4, Bans: []proto.Ban{ban("b", 2)}, Part: &proto.Part{Set: "s", Index: 2, Count: 2}},
		}, []string{"a", "b"}, 4},
		{"incomplete sync changes nothing", []proto.Message{{Kind: proto.KindBan, Rev: 1, Bans: []proto.Ban{ban("x", 1)}},
			{Kind: proto.KindSync, Rev: 4, Bans: []proto.Ban{ban("a", 1)}, Part: &proto.Part{Set: "s", Index: 1, Count: 2}}}, []string{"x"}, 1},
		{"expired dropped", []proto.Message{{Kind: proto.KindBan, Rev: 1, Bans: []proto.Ban{{ID: "b-10.0.0.9_32", CIDR: "10.0.0.9/32", ExpiresAt: t0.Add(-time.Second), Rev: 1}}}}, nil, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewState()
			for i := range tc.msgs {
				s.Apply(&tc.msgs[i], t0)
			}
			if s.BanCount() != len(tc.want) {
				t.Fatalf("bans %v, want %v", s.Bans(), tc.want)
			}
			for _, name := range tc.want {
				if _, ok := s.Ban(names[name]); !ok {
					t.Fatalf("missing %s in %v", name, s.Bans())
				}
			}
			if s.AppliedRev != tc.rev {
				t.Fatalf("applied rev %d, want %d", s.AppliedRev, tc.rev)
			}
		})
	}
}

func TestStateFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	s := NewState()
	s.Apply(&proto.Message{Kind: proto.KindBan, Rev: 3, Bans: []proto.Ban{ban("a", 3)}}, t0)
	s.Apply(&proto.Message{Kind: proto.KindLimit, Rev: 4, Limits: []proto.Limit{{ID: "l-pop3", Proto: "tcp", Ports: []int{110}, Hits: 10, Seconds: 60, Rev: 4}}}, t0)
	if err := s.Save(path); err != nil {
		t.Fatal(err)
	}
	back, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if back.AppliedRev != 4 || back.BanCount() != 1 || len(back.Limits) != 1 || back.Digest() != s.Digest() {
		t.Fatalf("loaded %+v", back)
	}
	if got, _ := back.Ban(names["a"]); got != s.Bans()[0] {
		t.Fatalf("ban round trip: %+v != %+v", got, s.Bans()[0])
	}
	missing, err := Load(filepath.Join(t.TempDir(), "none.json"))
	if err != nil || missing.BanCount() != 0 {
		t.Fatalf("missing file: %v", err)
	}
}

func TestDigestFollowsChanges(t *testing.T) {
	s := NewState()
	empty := s.Digest()
	s.Apply(&proto.Message{Kind: proto.KindBan, Rev: 2, Bans: []proto.Ban{ban("a", 2)}}, t0)
	one := s.Digest()
	if one == empty {
		t.Fatal("digest did not change with a ban")
	}
	// An older-revision re-ban of the same id with a later expiry arriving late changes the digest
	// even though neither the count nor the applied revision moves.
	s.Apply(&proto.Message{Kind: proto.KindBan, Rev: 9, Bans: []proto.Ban{ban("b", 9)}}, t0)
	before := s.Digest()
	later := ban("a", 5)
	later.ExpiresAt = t0.Add(3 * time.Hour)
	s.Apply(&proto.Message{Kind: proto.KindBan, Rev: 5, Bans: []proto.Ban{later}}, t0)
	if s.Digest() == before {
		t.Fatal("cached digest went stale")
	}
	if s.Digest() != proto.DigestV2(s.Bans(), nil) {
		t.Fatal("agent digest differs from proto.Digest of the same entries")
	}
}

func TestSyncPartsAreNotInTheStateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	s := NewState()
	s.Apply(&proto.Message{Kind: proto.KindSync, Rev: 4, Bans: []proto.Ban{ban("a", 1)}, Part: &proto.Part{Set: "s", Index: 1, Count: 2}}, t0)
	if err := s.Save(path); err != nil {
		t.Fatal(err)
	}
	back, err := Load(path)
	if err != nil || len(back.Pending) != 0 {
		t.Fatalf("pending parts in the state file: %v %v", back.Pending, err)
	}
}

func TestAllowlistHoldsNeverBan(t *testing.T) {
	allow := Allowlist(nil)
	for _, want := range []string{"127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32", "::1/128", "fe80::/10", "ff00::/8", "fd00:ec2::254/128", "fd00:ec2::253/128", "fd00:ec2::123/128"} {
		if !slices.Contains(allow, netip.MustParsePrefix(want)) {
			t.Errorf("kernel allowlist lacks %s", want)
		}
	}
	for _, p := range allow {
		if p.Addr().IsUnspecified() {
			t.Errorf("allowlist holds %s, which ipset cannot store", p)
		}
	}
}

// A sync is the ledger's view at its revision: a tombstone at or below that revision is already
// reflected in it (issue 22, finding 6). An unban of an address a feed also lists left a
// tombstone newer than the feed entry, and every later sync skipped the entry.
func TestSyncIsAuthoritativeOverOlderTombstones(t *testing.T) {
	s := NewState()
	// The feed entry was added at revision 5 and reached the agent in a sync.
	s.Apply(&proto.Message{Kind: proto.KindSync, Rev: 6, Bans: []proto.Ban{ban("a", 5)}}, t0)
	// An operator unbans the address at revision 7: the operator's ban goes, the feed still lists it.
	s.Apply(&proto.Message{Kind: proto.KindUnban, Rev: 7, Unbans: []proto.Tombstone{{ID: id("a"), Rev: 7, ExpiresAt: t0.Add(7 * 24 * time.Hour)}}}, t0)
	if s.BanCount() != 0 {
		t.Fatalf("unban left %v", s.Bans())
	}
	// The reconciler's next sync (revision 8) still holds the feed's entry at revision 5.
	s.Apply(&proto.Message{Kind: proto.KindSync, Rev: 8, Bans: []proto.Ban{ban("a", 5), ban("b", 2)}}, t0)
	if _, ok := s.Ban(names["a"]); !ok || s.BanCount() != 2 {
		t.Fatalf("sync at 8 skipped the feed entry because of the tombstone at 7: %v", s.Bans())
	}
	if s.Digest() != proto.DigestV2([]proto.Ban{ban("a", 5), ban("b", 2)}, nil) {
		t.Fatal("digest differs from the sync's: the reconciler would sync again every pass")
	}
	// A tombstone newer than the sync still wins (the unban arrived after the sync was computed).
	s.Apply(&proto.Message{Kind: proto.KindUnban, Rev: 12, Unbans: []proto.Tombstone{{ID: id("b"), Rev: 12}}}, t0)
	s.Apply(&proto.Message{Kind: proto.KindSync, Rev: 10, Bans: []proto.Ban{ban("a", 5), ban("b", 2)}}, t0)
	if _, ok := s.Ban(names["b"]); ok {
		t.Fatal("a sync at 10 resurrected a ban unbanned at 12")
	}
}

// The race of finding 6: an unban's tombstone (revision 20) reached the agent, but a ban for
// another target that also covers this instance was written while TombstoneBans ran, and the
// ledger keeps it (revision 19). The next sync carries it and must restore it.
func TestSyncRestoresABanTheUnbanRaceLeft(t *testing.T) {
	s := NewState()
	s.Apply(&proto.Message{Kind: proto.KindBan, Rev: 19, Bans: []proto.Ban{ban("x", 19)}}, t0)
	s.Apply(&proto.Message{Kind: proto.KindUnban, Rev: 20, Unbans: []proto.Tombstone{{ID: id("x"), Rev: 20}}}, t0)
	s.Apply(&proto.Message{Kind: proto.KindSync, Rev: 21, Bans: []proto.Ban{ban("x", 19)}}, t0)
	if _, ok := s.Ban(names["x"]); !ok {
		t.Fatal("the ledger's ban at 19 was not restored by the sync at 21")
	}
}

// Parts of a sync that never completes (one part went to the DLQ, or the reconciler sent a newer
// sync) are forgotten: a newer sync's completion drops older sets, and a set is dropped an hour
// after its first part arrived (issue 22, finding 4).
func TestPendingPartsExpire(t *testing.T) {
	s := NewState()
	s.Apply(&proto.Message{Kind: proto.KindSync, Rev: 4, Bans: []proto.Ban{ban("a", 1)}, Part: &proto.Part{Set: "old", Index: 1, Count: 9}}, t0)
	s.Apply(&proto.Message{Kind: proto.KindSync, Rev: 5, Bans: []proto.Ban{ban("b", 1)}, Part: &proto.Part{Set: "stuck", Index: 1, Count: 3}}, t0)
	if len(s.Pending) != 2 {
		t.Fatalf("pending %d sets, want 2", len(s.Pending))
	}
	// A complete sync at 6 supersedes both.
	s.Apply(&proto.Message{Kind: proto.KindSync, Rev: 6, Bans: []proto.Ban{ban("x", 1)}}, t0)
	if gone := s.ExpiredSets(); len(s.Pending) != 0 || len(gone) != 2 {
		t.Fatalf("a complete sync at 6 left %d older pending sets (files to remove: %v)", len(s.Pending), gone)
	}
	s.Apply(&proto.Message{Kind: proto.KindSync, Rev: 9, Bans: []proto.Ban{ban("a", 1)}, Part: &proto.Part{Set: "late", Index: 1, Count: 2}}, t0)
	s.Prune(t0.Add(59 * time.Minute))
	if len(s.Pending) != 1 {
		t.Fatal("a pending set was dropped before its hour")
	}
	s.Prune(t0.Add(61 * time.Minute))
	if gone := s.ExpiredSets(); len(s.Pending) != 0 || !slices.Equal(gone, []string{"late"}) {
		t.Fatalf("a pending set outlived its hour: %v", s.Pending)
	}
}

// An allow message replaces the allowlist when newer, survives the state file, and its expired
// entries leave the allow set; a sync does not touch it and the digest does not cover it.
func TestAllowlistInState(t *testing.T) {
	s := NewState()
	a := []proto.Allow{{CIDR: "203.0.113.0/24"}, {CIDR: "198.51.100.7/32", ExpiresAt: t0.Add(time.Hour)}}
	digest := s.Digest()
	if ch := s.Apply(&proto.Message{Kind: proto.KindAllow, Rev: 5, Allows: a}, t0); !ch.Allows || s.AllowRev != 5 || s.Digest() != digest {
		t.Fatalf("allow: %+v rev %d, digest %s (was %s)", ch, s.AllowRev, s.Digest(), digest)
	}
	if ch := s.Apply(&proto.Message{Kind: proto.KindAllow, Rev: 4}, t0); ch.Allows || len(s.Allows) != 2 {
		t.Fatalf("an older allow message replaced the list: %+v", s.Allows)
	}
	s.Apply(&proto.Message{Kind: proto.KindSync, Rev: 6, Bans: []proto.Ban{ban("a", 6)}}, t0)
	if len(s.Allows) != 2 {
		t.Fatalf("after a sync: allows %+v", s.Allows)
	}
	path := filepath.Join(t.TempDir(), "state.json")
	if err := s.Save(path); err != nil {
		t.Fatal(err)
	}
	back, err := Load(path)
	if err != nil || back.AllowRev != 5 || !slices.Equal(back.Allows, s.Allows) {
		t.Fatalf("reloaded %+v rev %d: %v", back.Allows, back.AllowRev, err)
	}
	if got := back.ActiveAllows(t0.Add(2 * time.Hour)); len(got) != 1 || got[0].String() != "203.0.113.0/24" {
		t.Fatalf("active after an hour: %v", got)
	}
	s.Apply(&proto.Message{Kind: proto.KindAllow, Rev: 9}, t0)
	if len(s.ActiveAllows(t0)) != 0 || s.AllowRev != 9 {
		t.Fatalf("emptied list: %+v", s.Allows)
	}
}
