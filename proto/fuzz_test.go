package proto

import (
	"encoding/json"
	"testing"
	"time"
)

// FuzzDecode feeds arbitrary bodies through decode and validation: nothing may panic, and what is
// accepted must survive a second round trip unchanged.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		`{"id":"01JDZ8K3V7","kind":"ban","issued_at":"2026-11-24T12:00:00Z","rev":1042,"bans":[{"id":"b-174.132.223.252_32","cidr":"174.132.223.252/32","expires_at":"2026-11-24T14:00:00Z","reason":"pop3 brute force","source":"lambda:jail/pop3","rev":1042}]}`,
		`{"id":"u1","kind":"unban","issued_at":"2026-11-24T12:00:00Z","rev":7,"unbans":[{"id":"b-1.2.3.4_32","rev":7}]}`,
		`{"id":"l1","kind":"limit","issued_at":"2026-11-24T12:00:00Z","rev":3,"limits":[{"id":"l-pop3","proto":"tcp","ports":[110],"hits":10,"seconds":60,"action":"drop"}]}`,
		`{"id":"s1","kind":"sync","issued_at":"2026-11-24T12:00:00Z","rev":3,"bans":[{"cidr":"2001:db8::/64","rev":1}],"part":{"set":"s1","index":1,"count":2}}`,
		`{"id":"x","kind":"ban","issued_at":"2026-11-24T12:00:00Z","rev":1,"bans":[{"cidr":"0.0.0.0/0"}]}`,
		`{"kind":"ban"}`, `[]`, `null`, `{"id":1}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := Unmarshal(body)
		if err != nil {
			return
		}
		if err := m.Validate(DefaultLimits(), now); err != nil {
			if Reason(err) == "other" {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := Unmarshal(again)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if err := m2.Validate(DefaultLimits(), now.Add(-time.Nanosecond)); err != nil {
			t.Fatalf("canonical form rejected: %v\n%s", err, again)
		}
	})
}
