package proto

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var now = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

func testSigner(t testing.TB, kid string) Signer {
	t.Helper()
	s, err := GenerateKey(kid)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func banMsg(cidr string, exp time.Time) *Message {
	return &Message{ID: "01JDZ8K3V7", Kind: KindBan, IssuedAt: now, Rev: 1042,
		Bans: []Ban{{CIDR: cidr, ExpiresAt: exp, Reason: "pop3 brute force", Source: "lambda:jail/pop3"}}}
}

func TestDecodeRejects(t *testing.T) {
	good := testSigner(t, "k1")
	other := testSigner(t, "k1") // same id, different key
	unknown := testSigner(t, "k9")
	ver := &Verifier{Now: func() time.Time { return now }}
	ver.Keys = map[string]ed25519PublicKey{}
	ver.Keys["k1"] = pub(good)

	later := now.Add(time.Hour)
	sign := func(s Signer, m *Message) ([]byte, map[string]string) {
		b, _ := json.Marshal(m)
		return b, s.Sign(b)
	}
	raw := func(s Signer, body string) ([]byte, map[string]string) { return []byte(body), s.Sign([]byte(body)) }
	big := strings.Repeat(" ", 300*1024)

	cases := []struct {
		name  string
		body  func() ([]byte, map[string]string)
		want  error
		field string // substring the error must contain
	}{
		{"all of v4", func() ([]byte, map[string]string) { return sign(good, banMsg("0.0.0.0/0", later)) }, ErrInvalid, "bans[0].cidr: 0.0.0.0/0 would match every address"},
		{"all of v6", func() ([]byte, map[string]string) { return sign(good, banMsg("::/0", later)) }, ErrInvalid, "bans[0].cidr: ::/0 would match every address"},
		{"too broad", func() ([]byte, map[string]string) { return sign(good, banMsg("10.0.0.0/4", later)) }, ErrInvalid, "prefix /4 of 0.0.0.0/4 is broader than the minimum /8"},
		{"bad address", func() ([]byte, map[string]string) { return sign(good, banMsg("300.1.1.1", later)) }, ErrInvalid, `bans[0].cidr: "300.1.1.1" is not an IP address`},
		{"expired", func() ([]byte, map[string]string) { return sign(good, banMsg("1.2.3.4", now.Add(-time.Minute))) }, ErrInvalid, "bans[0].expires_at: 2026-11-24T11:59:00Z is in the past"},
		{"unknown field", func() ([]byte, map[string]string) {
			return raw(good, `{"id":"x1","kind":"ban","issued_at":"2026-11-24T12:00:00Z","rev":1,"bans":[{"cidr":"1.2.3.4","rev":1}],"evil":true}`)
		}, ErrMalformed, `unknown field "evil"`},
		{"unknown kind", func() ([]byte, map[string]string) {
			m := banMsg("1.2.3.4", later)
			m.Kind = "nuke"
			return sign(good, m)
		}, ErrInvalid, `kind: unknown kind "nuke"`},
		{"wrong signature", func() ([]byte, map[string]string) { return sign(other, banMsg("1.2.3.4", later)) }, ErrBadSignature, `key id "k1"`},
		{"unknown key id", func() ([]byte, map[string]string) { return sign(unknown, banMsg("1.2.3.4", later)) }, ErrUnknownKey, `key id "k9"`},
		{"replay", func() ([]byte, map[string]string) {
			m := banMsg("1.2.3.4", later)
			m.IssuedAt = now.Add(-16 * time.Minute)
			return sign(good, m)
		}, ErrStale, "window is 15m0s"},
		{"300 KiB body", func() ([]byte, map[string]string) { return raw(good, big) }, ErrTooLarge, "limit 262144"},
		{"unsigned", func() ([]byte, map[string]string) {
			b, _ := json.Marshal(banMsg("1.2.3.4", later))
			return b, map[string]string{AttrVersion: "1"}
		}, ErrUnsigned, "required"},
		{"version 2", func() ([]byte, map[string]string) {
			b, a := sign(good, banMsg("1.2.3.4", later))
			a[AttrVersion] = "2"
			return b, a
		}, ErrBadVersion, `"2"`},
		{"trailing data", func() ([]byte, map[string]string) {
			b, _ := json.Marshal(banMsg("1.2.3.4", later))
			return raw(good, string(b)+"{}")
		}, ErrMalformed, "after the JSON object"},
		{"bad port", func() ([]byte, map[string]string) {
			return sign(good, &Message{ID: "x", Kind: KindLimit, IssuedAt: now, Rev: 3, Limits: []Limit{{ID: "l-pop3", Proto: "tcp", Ports: []int{70000}, Hits: 10, Seconds: 60}}})
		}, ErrInvalid, "limits[0].ports[0]: 70000 is not in 1-65535"},
		{"v6 too broad", func() ([]byte, map[string]string) { return sign(good, banMsg("2001:db8::/16", later)) }, ErrInvalid, "broader than the minimum /32"},
		{"ttl too long", func() ([]byte, map[string]string) { return sign(good, banMsg("1.2.3.4", now.Add(400*24*time.Hour))) }, ErrInvalid, "maximum TTL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body, attrs := tc.body()
			m, err := ver.Decode(body, attrs)
			if err == nil {
				t.Fatalf("accepted: %+v", m)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %q does not wrap %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %q does not mention %q", err, tc.field)
			}
		})
	}
}

func TestRoundTripCanonicalises(t *testing.T) {
	s := testSigner(t, "k1")
	s2 := testSigner(t, "k2")
	ver := &Verifier{Keys: map[string]ed25519PublicKey{"k1": pub(s), "k2": pub(s2)}, Now: func() time.Time { return now }}
	for _, signer := range []Signer{s, s2} { // both keys of a rotation are accepted
		m := banMsg("174.132.223.252", now.Add(2*time.Hour))
		m.Bans = append(m.Bans, Ban{CIDR: "2001:db8:1:2::5/64"}, Ban{CIDR: "::ffff:10.1.2.3/120"})
		body, attrs, err := signer.Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ver.Decode(body, attrs)
		if err != nil {
			t.Fatal(err)
		}
		want := []struct{ id, cidr string }{{"b-174.132.223.252_32", "174.132.223.252/32"}, {"b-2001:db8:1:2::_64", "2001:db8:1:2::/64"}, {"b-10.1.2.0_24", "10.1.2.0/24"}}
		for i, w := range want {
			if got.Bans[i].ID != w.id || got.Bans[i].CIDR != w.cidr || got.Bans[i].Rev != 1042 {
				t.Errorf("ban %d = %+v, want id %s cidr %s rev 1042", i, got.Bans[i], w.id, w.cidr)
			}
		}
	}
}

func TestSplitSync(t *testing.T) {
	s := testSigner(t, "k1")
	ver := &Verifier{Keys: map[string]ed25519PublicKey{"k1": pub(s)}, Now: func() time.Time { return now }}
	m := Message{ID: "sync1", Kind: KindSync, IssuedAt: now, Rev: 9, Limits: []Limit{{ID: "l-pop3", Proto: "tcp", Ports: []int{110}, Hits: 10, Seconds: 60, Rev: 2}}}
	for i := 0; i < 6000; i++ {
		m.Bans = append(m.Bans, Ban{CIDR: "10.0.0.1/32", Reason: strings.Repeat("r", 40), Rev: 5})
	}
	parts, err := SplitSync(m, MaxBodyBytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) < 2 {
		t.Fatalf("want several parts, got %d", len(parts))
	}
	total := 0
	for i, p := range parts {
		body, attrs, err := s.Encode(&p)
		if err != nil {
			t.Fatalf("part %d: %v", i, err)
		}
		got, err := ver.Decode(body, attrs)
		if err != nil {
			t.Fatalf("part %d: %v", i, err)
		}
		if got.Part.Index != i+1 || got.Part.Count != len(parts) || got.Part.Set != "sync1" {
			t.Fatalf("part %d numbered %+v", i, got.Part)
		}
		total += len(got.Bans)
	}
	if total != 6000 {
		t.Fatalf("parts carry %d bans, want 6000", total)
	}
	if len(parts[0].Limits) != 1 {
		t.Fatal("limits must travel in the first part")
	}
}

func TestKeyFiles(t *testing.T) {
	s := testSigner(t, "2026-11")
	back, err := ParsePrivate(s.MarshalPrivate())
	if err != nil || !back.Key.Equal(s.Key) || back.KeyID != "2026-11" {
		t.Fatalf("private round trip: %v", err)
	}
	keys, err := ParsePublicKeys("# comment\n" + s.MarshalPublic())
	if err != nil || !keys["2026-11"].Equal(pub(s)) {
		t.Fatalf("public round trip: %v", err)
	}
	if _, err := ParsePublicKeys("k1 notbase64"); err == nil {
		t.Fatal("bad public key accepted")
	}
}

func TestReason(t *testing.T) {
	if r := Reason(&FieldError{Field: "x", Msg: "y"}); r != "invalid" {
		t.Fatal(r)
	}
	if r := Reason(errors.New("x")); r != "other" {
		t.Fatal(r)
	}
}

func TestBanIDRoundTrip(t *testing.T) {
	for _, c := range []string{"174.132.223.252/32", "10.1.2.0/24", "2001:db8:1:2::/64", "::1/128"} {
		p, _ := ParseCIDR(c)
		back, err := ParseBanID(BanID(p))
		if err != nil || back != p {
			t.Errorf("%s: %v %v", c, back, err)
		}
	}
	for _, bad := range []string{"l-pop3", "b-", "b-1.2.3.4", "b-1.2.3.4_33", "b-1.2.3.5_24"} {
		if _, err := ParseBanID(bad); err == nil {
			t.Errorf("%q parsed as a ban id", bad)
		}
	}
}

func TestSyncDropsEntriesExpiredInTransit(t *testing.T) {
	s := testSigner(t, "k1")
	ver := &Verifier{Keys: map[string]ed25519PublicKey{"k1": pub(s)}, Now: func() time.Time { return now }}
	m := &Message{ID: "01SYNC", Kind: KindSync, IssuedAt: now.Add(-time.Minute), Rev: 7, Bans: []Ban{
		{CIDR: "1.2.3.4", ExpiresAt: now.Add(-time.Second), Rev: 3}, // expired while queued
		{CIDR: "5.6.7.8", ExpiresAt: now.Add(time.Hour), Rev: 4},    // still good
		{CIDR: "127.0.0.1", ExpiresAt: now.Add(time.Hour), Rev: 5},  // an old ledger item: kept, the agent holds it unenforced
		{CIDR: "9.9.9.0/24", Rev: 6},                                // permanent
	}}
	body, attrs, err := s.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ver.Decode(body, attrs)
	if err != nil {
		t.Fatalf("sync refused whole: %v", err)
	}
	var cidrs []string
	for _, b := range got.Bans {
		cidrs = append(cidrs, b.CIDR)
	}
	if strings.Join(cidrs, " ") != "5.6.7.8/32 127.0.0.1/32 9.9.9.0/24" || got.Dropped != 1 {
		t.Fatalf("kept %v, dropped %d", cidrs, got.Dropped)
	}
	// The same entries in a ban message: refused (an operator's ban must be valid whole).
	m.Kind, m.ID = KindBan, "01BAN"
	m.Bans = m.Bans[2:3]
	body, attrs, _ = s.Encode(m)
	if _, err := ver.Decode(body, attrs); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "never banned: 127.0.0.1/32 is loopback") {
		t.Fatalf("never-ban ban: %v", err)
	}
}

func TestNeverBanList(t *testing.T) {
	for _, c := range []string{"127.0.0.1", "169.254.169.254", "fd00:ec2::254", "fd00:ec2::253", "fd00:ec2::123", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "ff02::1", "0.0.0.0", "0.0.0.0/0", "::/0", "126.0.0.0/7"} {
		p, err := ParseCIDR(c)
		if err != nil {
			t.Fatal(err)
		}
		if CheckNeverBan(p) == nil {
			t.Errorf("%s may be banned", c)
		}
	}
	for _, c := range []string{"198.51.100.7", "10.1.2.3", "2001:db8::1", "fd00:ec2::1"} {
		if err := CheckNeverBan(netip.MustParsePrefix(c + map[bool]string{true: "/128", false: "/32"}[strings.Contains(c, ":")])); err != nil {
			t.Errorf("%s: %v", c, err)
		}
	}
}

func TestCompressedSyncParts(t *testing.T) {
	s := testSigner(t, "k1")
	ver := &Verifier{Keys: map[string]ed25519PublicKey{"k1": pub(s)}, Now: func() time.Time { return now }, To: "i-1"}
	for _, n := range []int{0, 10, 100000, 1000000} {
		m := Message{ID: "01SYNC", Kind: KindSync, To: "i-1", IssuedAt: now, Rev: 7, Limits: []Limit{{ID: "l1", Proto: "tcp", Ports: []int{110}, Hits: 5, Seconds: 60, Rev: 3}}}
		for i := 0; i < n; i++ {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(11 + i>>24), byte(i >> 16), byte(i >> 8), byte(i)}), 32)
			m.Bans = append(m.Bans, Ban{ID: BanID(p), CIDR: p.String(), ExpiresAt: now.Add(time.Hour), Rev: 5})
		}
		parts, err := SplitSyncCompressed(m, MaxBodyBytes-AttributeHeadroom)
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for i := range parts {
			body, attrs, err := s.Encode(&parts[i])
			if err != nil {
				t.Fatal(err)
			}
			size := len(body)
			for k, v := range attrs {
				size += len(k) + len("String") + len(v)
			}
			if size > MaxBodyBytes {
				t.Fatalf("%d bans: part %d is %d bytes with its attributes", n, i+1, size)
			}
			d, err := ver.Decode(body, attrs)
			if err != nil {
				t.Fatalf("%d bans: part %d: %v", n, i+1, err)
			}
			got += len(d.Bans)
			if i == 0 && len(d.Limits) != 1 {
				t.Fatalf("limits not in the first part")
			}
		}
		if got != n {
			t.Fatalf("%d bans came back as %d", n, got)
		}
		t.Logf("%d bans: %d messages", n, len(parts))
		if n == 1000000 && len(parts) > 60 {
			t.Fatalf("a sync of a million bans takes %d messages", len(parts))
		}
	}
}

func TestCompressedBansBounded(t *testing.T) {
	s := testSigner(t, "k1")
	ver := &Verifier{Keys: map[string]ed25519PublicKey{"k1": pub(s)}, Now: func() time.Time { return now }}
	var zb bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&zb, gzip.BestCompression)
	zw.Write([]byte("["))
	zw.Write(bytes.Repeat([]byte(" "), MaxInflatedBytes+10)) // a bomb: tiny compressed, huge inflated
	zw.Close()
	bomb := base64.StdEncoding.EncodeToString(zb.Bytes())
	for _, c := range []struct {
		m    *Message
		want error
	}{
		{&Message{ID: "z1", Kind: KindSync, IssuedAt: now, Rev: 2, BansZ: bomb}, ErrTooLarge},
		{&Message{ID: "z2", Kind: KindBan, IssuedAt: now, Rev: 2, BansZ: "H4sIAAAAAAAA/4qOBQQAAP//AwAAAAAAAAA="}, ErrMalformed},
		{&Message{ID: "z3", Kind: KindSync, IssuedAt: now, Rev: 2, BansZ: "not base64!"}, ErrMalformed},
	} {
		body, attrs, err := s.Encode(c.m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ver.Decode(body, attrs); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.m.ID, err, c.want)
		}
	}
}

// DigestV2 is order-free and can be kept one entry at a time; Matches compares a reported digest
// with the digest of its own kind, so agents of both kinds are judged right.
func TestDigestV2(t *testing.T) {
	exp := time.Unix(1800000000, 0)
	bans := []Ban{{ID: "b-198.51.100.1_32", ExpiresAt: exp}, {ID: "b-2001:db8::_48"}, {ID: "b-203.0.113.0_24", ExpiresAt: exp}}
	limits := []Limit{{ID: "l-pop3", Rev: 7}}
	d := DigestV2(bans, limits)
	if !strings.HasPrefix(d, DigestV2Prefix) || d != DigestV2([]Ban{bans[2], bans[0], bans[1]}, limits) {
		t.Fatal("DigestV2 depends on order")
	}
	var sum DigestSum
	sum.AddBan("b-198.51.100.9_32", 5, 1) // added and removed again
	for _, b := range bans {
		sum.AddBan(b.ID, expUnix(b.ExpiresAt), 1)
	}
	sum.AddBan("b-198.51.100.9_32", 5, -1)
	sum.AddLimit("l-pop3", 7, 1)
	if sum.String() != d {
		t.Fatalf("incremental %s, whole %s", sum.String(), d)
	}
	for _, changed := range [][]Ban{bans[:2], {bans[0], bans[1], {ID: bans[2].ID, ExpiresAt: exp.Add(time.Second)}}} {
		if DigestV2(changed, limits) == d {
			t.Fatalf("a changed state has the same digest: %v", changed)
		}
	}
	if !Matches(d, bans, limits) || !Matches(Digest(bans, limits), bans, limits) || Matches(Digest(bans[:1], nil), bans, limits) {
		t.Fatal("Matches does not tell the kinds apart")
	}
}

// A fan-out marshals its message once and splices each instance in: every body is byte for byte
// what Encode gives for that instance, is signed on its own, and verifies only for its instance.
// A reason that spells a "to" field, or an id JSON would escape, changes nothing.
func TestAddressedEqualsEncode(t *testing.T) {
	s := testSigner(t, "k1")
	m := banMsg("174.132.223.252", now.Add(2*time.Hour))
	m.Bans[0].Reason = `x","to":"i-0evil","y":"<&>`
	enc, err := s.Addressed(*m)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"i-0123456789abcdef0", "i-1", `i-"quoted"`, "i-<html>", ""} {
		got, gotAttrs, err := enc(id)
		if err != nil {
			t.Fatal(err)
		}
		one := *m
		one.To = id
		want, _, err := s.Encode(&one)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("to %q:\n got %s\nwant %s", id, got, want)
		}
		if !strings.HasPrefix(id, "i-0") && id != "i-1" {
			continue // not an instance id: Decode refuses it whatever the signature
		}
		ver := &Verifier{Keys: map[string]ed25519PublicKey{"k1": pub(s)}, Now: func() time.Time { return now }, To: id}
		dec, err := ver.Decode(got, gotAttrs)
		if err != nil || dec.To != id {
			t.Fatalf("to %q: decode %v, %+v", id, err, dec)
		}
		ver.To = "i-other"
		if _, err := ver.Decode(got, gotAttrs); err == nil {
			t.Fatalf("to %q: verified for another instance", id)
		}
	}
	// Too large after the splice: refused as Encode refuses.
	big := *m
	big.Bans = nil
	for len(big.Bans) < 2000 {
		big.Bans = append(big.Bans, Ban{CIDR: "198.51.100.7/32", Reason: strings.Repeat("r", 120)})
	}
	enc, err = s.Addressed(big)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := enc("i-0123456789abcdef0"); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversize body: %v", err)
	}
}

// A sync template split once serves every instance: each instance's parts are within SQS's limit
// with their attributes, verify for that instance only, carry every ban once and the limits in the
// first part, and are numbered as SplitSync numbers them, compressed or not.
func TestSyncTemplateServesEveryInstance(t *testing.T) {
	s := testSigner(t, "k1")
	for _, compress := range []bool{true, false} {
		for _, n := range []int{0, 3, 20000} {
			var bans []Ban
			for i := 0; i < n; i++ {
				p := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(11 + i>>24), byte(i >> 16), byte(i >> 8), byte(i)}), 32)
				bans = append(bans, Ban{ID: BanID(p), CIDR: p.String(), ExpiresAt: now.Add(time.Hour), Reason: "a reason of some length", Source: "feed:x", Rev: 5})
			}
			limits := []Limit{{ID: "l1", Proto: "tcp", Ports: []int{110}, Hits: 5, Seconds: 60, Rev: 3}}
			tmpl, err := NewSyncTemplate(bans, limits, MaxBodyBytes-AttributeHeadroom, compress)
			if err != nil {
				t.Fatal(err)
			}
			for _, to := range []string{"i-0123456789abcdef0", "i-1"} {
				ver := &Verifier{Keys: map[string]ed25519PublicKey{"k1": pub(s)}, Now: func() time.Time { return now }, To: to}
				parts := tmpl.For("01JDZ8K3V7ABCDEFGHJKMNPQRS", to, now, 9)
				got := 0
				for i := range parts {
					body, attrs, err := s.Encode(&parts[i])
					if err != nil {
						t.Fatal(err)
					}
					size := len(body)
					for k, v := range attrs {
						size += len(k) + len("String") + len(v)
					}
					if size > MaxBodyBytes {
						t.Fatalf("compress %v, %d bans: part %d is %d bytes with its attributes", compress, n, i+1, size)
					}
					d, err := ver.Decode(body, attrs)
					if err != nil {
						t.Fatalf("compress %v, %d bans, to %s: part %d: %v", compress, n, to, i+1, err)
					}
					if d.Rev != 9 || (i == 0) != (len(d.Limits) == 1) {
						t.Fatalf("part %d: rev %d, %d limits", i+1, d.Rev, len(d.Limits))
					}
					if len(parts) > 1 && (d.Part == nil || d.Part.Index != i+1 || d.Part.Count != len(parts) || d.ID != fmt.Sprintf("01JDZ8K3V7ABCDEFGHJKMNPQRS.%d", i+1)) {
						t.Fatalf("part %d numbered %+v, id %s", i+1, d.Part, d.ID)
					}
					got += len(d.Bans)
					ver2 := *ver
					ver2.To = "i-0fffffffffffffff0"
					if _, err := ver2.Decode(body, attrs); err == nil {
						t.Fatalf("a part for %s verified for another instance", to)
					}
				}
				if got != n {
					t.Fatalf("compress %v: %d bans came back as %d", compress, n, got)
				}
			}
		}
	}
}

// A sync is the whole state: one entry the agent cannot take (a reason over the limit, a bad
// id) must not refuse the rest (issue 22, finding 4). It is dropped and counted.
func TestSyncDropsOneBadEntryAndKeepsTheRest(t *testing.T) {
	s := testSigner(t, "k1")
	ver := &Verifier{Keys: map[string]ed25519PublicKey{"k1": pub(s)}, Now: func() time.Time { return now }}
	long := strings.Repeat("r", MaxTextBytes+1)
	m := &Message{ID: "01SYNC", Kind: KindSync, IssuedAt: now, Rev: 9, Bans: []Ban{
		{CIDR: "1.2.3.4", Reason: long, Rev: 3},
		{CIDR: "5.6.7.8", Rev: 4},
		{CIDR: "5.6.7.9", Source: long, Rev: 4},
		{ID: "b-9.9.9.9_32", CIDR: "9.9.9.8", Rev: 5},
		{CIDR: "9.9.9.0/24", Rev: 6},
	}}
	body, attrs, err := s.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ver.Decode(body, attrs)
	if err != nil {
		t.Fatalf("sync refused whole: %v", err)
	}
	var cidrs []string
	for _, b := range got.Bans {
		cidrs = append(cidrs, b.CIDR)
	}
	if strings.Join(cidrs, " ") != "5.6.7.8/32 9.9.9.0/24" || got.Dropped != 3 {
		t.Fatalf("kept %v, dropped %d", cidrs, got.Dropped)
	}
	// In a ban message the same entry refuses the message: a ban is valid whole.
	m.Kind, m.ID, m.Bans = KindBan, "01BAN", m.Bans[:1]
	body, attrs, _ = s.Encode(m)
	if _, err := ver.Decode(body, attrs); !errors.Is(err, ErrInvalid) {
		t.Fatalf("long reason in a ban message: %v", err)
	}
}

func TestTruncateText(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"abcdefghij", 8, "abcde..."},
		{"ééééé", 7, "éé..."}, // never cuts a rune in half
	} {
		if got := TruncateText(tc.in, tc.n); got != tc.want || len(got) > tc.n {
			t.Errorf("TruncateText(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

// An allow message carries only allows (possibly none: the last entry was removed), each within
// the prefix limits; no other kind carries allows.
func TestAllowMessageValidation(t *testing.T) {
	now := time.Now()
	l := DefaultLimits()
	base := func(kind Kind, allows ...Allow) *Message {
		return &Message{ID: "m1", Kind: kind, IssuedAt: now, Rev: 7, Allows: allows}
	}
	ok := base(KindAllow, Allow{CIDR: "198.51.100.9/24"}, Allow{CIDR: "2001:db8::/48", ExpiresAt: now.Add(time.Hour)})
	if err := ok.Validate(l, now); err != nil || ok.Allows[0].CIDR != "198.51.100.0/24" {
		t.Fatalf("valid allow message: %v %+v", err, ok.Allows)
	}
	if err := base(KindAllow).Validate(l, now); err != nil {
		t.Fatalf("empty allowlist: %v", err)
	}
	for _, c := range []struct {
		m    *Message
		want string
	}{
		{base(KindAllow, Allow{CIDR: "10.0.0.0/4"}), "allows[0].cidr"},
		{base(KindAllow, Allow{CIDR: "nonsense"}), "allows[0].cidr"},
		{&Message{ID: "m1", Kind: KindAllow, IssuedAt: now, Rev: 7, Bans: []Ban{{CIDR: "192.0.2.1/32"}}}, "not allowed in an allow message"},
		{&Message{ID: "m1", Kind: KindBan, IssuedAt: now, Rev: 7, Bans: []Ban{{CIDR: "192.0.2.1/32"}}, Allows: []Allow{{CIDR: "192.0.2.0/24"}}}, "only allow messages"},
		{base(KindAllow, make([]Allow, MaxAllows+1)...), "exceed"},
	} {
		if err := c.m.Validate(l, now); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s with %d allows: %v, want %q", c.m.Kind, len(c.m.Allows), err, c.want)
		}
	}
}
