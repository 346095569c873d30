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

func benchBans(n int) []Ban {
	bans := make([]Ban, n)
	for i := range bans {
		cidr := fmt.Sprintf("%d.%d.%d.%d/32", 11+i>>24, byte(i>>16), byte(i>>8), byte(i))
		bans[i] = Ban{ID: "b-" + cidr, CIDR: cidr, ExpiresAt: now.Add(time.Hour), Reason: "feed spamhaus-drop", Source: "feed:spamhaus-drop", Rev: 5}
	}
	return bans
}

// BenchmarkSyncPerInstance: the compressed, signed parts of a 100 000-ban sync for one instance,
// split for that instance alone (what every sync cost before templates).
func BenchmarkSyncPerInstance(b *testing.B) {
	s := testSigner(b, "k1")
	m := Message{ID: "01JDZ8K3V7ABCDEFGHJKMNPQRS", Kind: KindSync, To: "i-0123456789abcdef0", IssuedAt: now, Rev: 9, Bans: benchBans(100000)}
	for b.Loop() {
		parts, err := SplitSyncCompressed(m, MaxBodyBytes-AttributeHeadroom)
		if err != nil {
			b.Fatal(err)
		}
		for i := range parts {
			if _, _, err := s.Encode(&parts[i]); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkSyncFromTemplate: the same parts for one more instance from a template split once.
func BenchmarkSyncFromTemplate(b *testing.B) {
	s := testSigner(b, "k1")
	tmpl, err := NewSyncTemplate(benchBans(100000), nil, MaxBodyBytes-AttributeHeadroom, true)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		parts := tmpl.For("01JDZ8K3V7ABCDEFGHJKMNPQRS", "i-0123456789abcdef0", now, 9)
		for i := range parts {
			if _, _, err := s.Encode(&parts[i]); err != nil {
				b.Fatal(err)
			}
		}
	}
}
