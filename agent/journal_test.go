package agent

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bansshee/bansshee/agent/firewall"
	"github.com/bansshee/bansshee/proto"
)

// recorder is a Firewall that only records (the journal's logic, not the kernel, is under test;
// the kernel side is tested in agent/firewall and the e2e tests).
type recorder struct{ bans int }

func (r *recorder) Apply(_ context.Context, s firewall.State) (firewall.Result, error) {
	if s.Build != nil && s.Bans == nil {
		s.Bans = s.Build()
	}
	r.bans = len(s.Bans)
	return firewall.Result{}, nil
}
func (r *recorder) Ban(context.Context, []firewall.Ban) error   { r.bans++; return nil }
func (r *recorder) Unban(context.Context, []netip.Prefix) error { r.bans--; return nil }
func (r *recorder) Quick(ctx context.Context, s firewall.State) (firewall.Result, error) {
	return r.Apply(ctx, s)
}
func (r *recorder) Tripped(context.Context) ([]firewall.Trip, error) { return nil, nil }
func (r *recorder) ClearTripped(context.Context, []firewall.Trip) error {
	return nil
}

func journalAgent(t *testing.T, dir string) *Agent {
	t.Helper()
	pub, _, _ := ed25519.GenerateKey(nil)
	a, err := New(Config{InstanceID: "i-0123456789abcdef0", Keys: map[string]ed25519.PublicKey{"k": pub}, StateDir: dir}, nil, nil, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Restore(t.Context()); err != nil {
		t.Fatal(err)
	}
	return a
}

func oneBan(rev int64, a string) *proto.Message {
	return &proto.Message{ID: fmt.Sprint("m", rev), Kind: proto.KindBan, IssuedAt: time.Now(), Rev: rev,
		Bans: []proto.Ban{{ID: proto.BanID(netip.MustParsePrefix(a + "/32")), CIDR: a + "/32", ExpiresAt: time.Now().Add(time.Hour).Truncate(time.Second), Rev: rev}}}
}

// A ban on an agent holding many appends one journal line instead of rewriting the snapshot, and
// a restart (a new agent on the same directory) holds exactly what the old one did.
func TestJournalKeepsSmallChangesSmall(t *testing.T) {
	dir := t.TempDir()
	a := journalAgent(t, dir)
	sync := &proto.Message{ID: "s", Kind: proto.KindSync, IssuedAt: time.Now(), Rev: 10}
	for i := range 20000 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), 32)
		sync.Bans = append(sync.Bans, proto.Ban{ID: proto.BanID(p), CIDR: p.String(), Rev: 10})
	}
	if err := a.apply(t.Context(), sync); err != nil {
		t.Fatal(err)
	}
	snap, _ := os.Stat(filepath.Join(dir, "state.json"))
	for i := range 50 {
		if err := a.apply(t.Context(), oneBan(int64(11+i), fmt.Sprintf("198.51.100.%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	unban := &proto.Message{ID: "u", Kind: proto.KindUnban, IssuedAt: time.Now(), Rev: 70, Unbans: []proto.Tombstone{{ID: proto.BanID(netip.MustParsePrefix("100.64.0.5/32")), Rev: 70}}}
	if err := a.apply(t.Context(), unban); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(filepath.Join(dir, "state.json"))
	if !after.ModTime().Equal(snap.ModTime()) || after.Size() != snap.Size() {
		t.Fatalf("51 small changes rewrote the %d-byte snapshot", snap.Size())
	}
	j, err := os.Stat(filepath.Join(dir, "journal.jsonl"))
	if err != nil || j.Size() > 51*400 {
		t.Fatalf("journal: %v, %d bytes for 51 messages", err, j.Size())
	}
	// A crash in the middle of a journal write leaves a line without its newline: ignored.
	f, _ := os.OpenFile(filepath.Join(dir, "journal.jsonl"), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"id":"torn","kind":"ban","issued_at":"2026-`)
	f.Close()
	b := journalAgent(t, dir)
	if got, want := b.state.Digest(), a.state.Digest(); got != want || b.state.BanCount() != 20000+50-1 || b.state.AppliedRev != 70 {
		t.Fatalf("after restart: %d bans at rev %d, digest %s; want %d at 70, digest %s", b.state.BanCount(), b.state.AppliedRev, got, a.state.BanCount(), want)
	}
	// Once the journal outgrows an eighth of the snapshot, the snapshot is written again and the
	// journal emptied.
	for i := 0; b.journalBytes != 0 && i < 10000; i++ {
		if err := b.apply(t.Context(), oneBan(int64(100+i), netip.AddrFrom4([4]byte{203, 0, byte(113 + i>>8), byte(i)}).String())); err != nil {
			t.Fatal(err)
		}
	}
	if b.journalBytes != 0 {
		t.Fatal("the journal was never compacted")
	}
	if _, err := os.Stat(filepath.Join(dir, "journal.jsonl")); !os.IsNotExist(err) {
		t.Fatalf("journal still there after compaction: %v", err)
	}
	c := journalAgent(t, dir)
	if c.state.Digest() != b.state.Digest() {
		t.Fatal("the compacted snapshot differs from the state")
	}
}
