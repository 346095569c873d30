package proto

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkDecode: verify + strict decode + validate of a 100-ban message, what an agent does per
// message received.
func BenchmarkDecode(b *testing.B) {
	s := testSigner(b, "k1")
	v := &Verifier{Keys: map[string]ed25519PublicKey{"k1": pub(s)}, Now: func() time.Time { return now }}
	m := &Message{ID: "bench", Kind: KindBan, IssuedAt: now, Rev: 9}
	for i := 0; i < 100; i++ {
		m.Bans = append(m.Bans, Ban{CIDR: fmt.Sprintf("198.51.%d.%d", i/250, i%250), ExpiresAt: now.Add(time.Hour), Reason: "bench"})
	}
	body, attrs, err := s.Encode(m)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Decode(body, attrs); err != nil {
			b.Fatal(err)
		}
	}
}
