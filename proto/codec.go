package proto

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"
)

// Signer signs message bodies with one Ed25519 private key.
type Signer struct {
	KeyID string
	Key   ed25519.PrivateKey
}

// Sign returns the message attributes for body.
func (s Signer) Sign(body []byte) map[string]string {
	return map[string]string{
		AttrVersion:   Version,
		AttrKeyID:     s.KeyID,
		AttrSignature: base64.StdEncoding.EncodeToString(ed25519.Sign(s.Key, body)),
	}
}

// Encode marshals m and signs the exact bytes.
func (s Signer) Encode(m *Message) (body []byte, attrs map[string]string, err error) {
	body, err = json.Marshal(m)
	if err != nil {
		return nil, nil, fmt.Errorf("encode %s message: %w", m.Kind, err)
	}
	if len(body) > MaxBodyBytes {
		return nil, nil, fmt.Errorf("encode %s message: %w: %d bytes, limit %d", m.Kind, ErrTooLarge, len(body), MaxBodyBytes)
	}
	return body, s.Sign(body), nil
}

// Addressed returns an encoder of m for one instance at a time: each call gives the body of m with
// To set to that instance, and its signature. m is marshalled once and each instance id spliced
// into the same bytes, which are byte for byte what Encode gives for that instance (a fan-out to
// 10 000 instances marshals one message, not 10 000). Every body is still signed on its own.
func (s Signer) Addressed(m Message) (func(to string) (body []byte, attrs map[string]string, err error), error) {
	var nonce [12]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, err
	}
	placeholder := fmt.Sprintf("to-%x", nonce)
	m.To = placeholder
	raw, err := json.Marshal(&m)
	if err != nil {
		return nil, fmt.Errorf("encode %s message: %w", m.Kind, err)
	}
	field := []byte(`"to":"` + placeholder + `"`)
	i := bytes.Index(raw, field)
	if i < 0 || bytes.Count(raw, []byte(placeholder)) != 1 {
		return nil, fmt.Errorf("encode %s message: the to field is not where it should be", m.Kind)
	}
	pre, post := raw[:i+len(`"to":"`)], raw[i+len(field)-1:]
	return func(to string) ([]byte, map[string]string, error) {
		if !plainID(to) { // what JSON would escape, or an empty to (omitted): marshal this one
			one := m
			one.To = to
			return s.Encode(&one)
		}
		body := make([]byte, 0, len(pre)+len(to)+len(post))
		body = append(append(append(body, pre...), to...), post...)
		if len(body) > MaxBodyBytes {
			return nil, nil, fmt.Errorf("encode %s message: %w: %d bytes, limit %d", m.Kind, ErrTooLarge, len(body), MaxBodyBytes)
		}
		return body, s.Sign(body), nil
	}, nil
}

// plainID reports whether id is non-empty and made only of characters JSON writes as they are
// (an instance id: i-0123456789abcdef0).
func plainID(id string) bool {
	if id == "" {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// Verifier holds the public keys an agent trusts, by key id (several, for rotation).
type Verifier struct {
	Keys   map[string]ed25519.PublicKey
	Limits Limits
	Window time.Duration // replay window on issued_at (default 15 minutes)
	Now    func() time.Time
	// To is this agent's instance id: messages for any other instance (or none) are refused.
	// Empty: not checked (tools that only read messages).
	To string
}

// Decode verifies, strictly decodes and validates one message. The error wraps one of the
// sentinel errors of this package and names the field at fault.
func (v *Verifier) Decode(body []byte, attrs map[string]string) (*Message, error) {
	if len(body) > MaxBodyBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(body), MaxBodyBytes)
	}
	ver, kid, sig := attrs[AttrVersion], attrs[AttrKeyID], attrs[AttrSignature]
	if kid == "" || sig == "" {
		return nil, fmt.Errorf("%w: attributes %s and %s are required", ErrUnsigned, AttrKeyID, AttrSignature)
	}
	if ver != Version {
		return nil, fmt.Errorf("%w: %s=%q, this agent speaks %q", ErrBadVersion, AttrVersion, ver, Version)
	}
	pub, ok := v.Keys[kid]
	if !ok {
		return nil, fmt.Errorf("%w: key id %q is not among the %d trusted keys", ErrUnknownKey, kid, len(v.Keys))
	}
	rawSig, err := base64.StdEncoding.DecodeString(sig)
	if err != nil || !ed25519.Verify(pub, body, rawSig) {
		return nil, fmt.Errorf("%w: signature does not match the body for key id %q", ErrBadSignature, kid)
	}
	m, err := Unmarshal(body)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if v.Now != nil {
		now = v.Now()
	}
	window := v.Window
	if window == 0 {
		window = 15 * time.Minute
	}
	if v.To != "" && m.To != v.To {
		return nil, fmt.Errorf("%w: to=%q, this is %s", ErrMisdirected, m.To, v.To)
	}
	if err := m.inflate(); err != nil {
		return nil, err
	}
	if age := now.Sub(m.IssuedAt); age > window || age < -window {
		return nil, fmt.Errorf("%w: issued_at %s is %s from now, window is %s", ErrStale, m.IssuedAt.Format(time.RFC3339), age.Round(time.Second), window)
	}
	limits := v.Limits
	if limits == (Limits{}) {
		limits = DefaultLimits()
	}
	if err := m.Validate(limits, now); err != nil {
		return nil, err
	}
	return m, nil
}

// Unmarshal decodes a body strictly: unknown fields, trailing data and oversize bodies are errors.
// It does not validate.
func Unmarshal(body []byte) (*Message, error) {
	if len(body) > MaxBodyBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(body), MaxBodyBytes)
	}
	return unmarshal(body)
}

// UnmarshalStored decodes a message the agent itself stored (a verified sync part, inflated): as
// strict as Unmarshal, without the wire size limit.
func UnmarshalStored(body []byte) (*Message, error) { return unmarshal(body) }

func unmarshal(body []byte) (*Message, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var m Message
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the JSON object", ErrMalformed)
	}
	return &m, nil
}

// SplitSync splits a sync message whose body would pass maxBytes into numbered parts, each a
// valid sync message of its own. Limits travel in the first part.
func SplitSync(m Message, maxBytes int) ([]Message, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(body) <= maxBytes {
		return []Message{m}, nil
	}
	head := m
	head.Bans, head.Part = nil, &Part{Set: m.ID, Index: 999999, Count: 999999}
	base, _ := json.Marshal(head)
	budget := maxBytes - len(base) - 64
	var parts []Message
	cur := Message{ID: m.ID, Kind: KindSync, To: m.To, IssuedAt: m.IssuedAt, Rev: m.Rev, Limits: m.Limits}
	size := 0
	for _, b := range m.Bans {
		bb, _ := json.Marshal(b)
		if size+len(bb)+1 > budget && len(cur.Bans) > 0 {
			parts = append(parts, cur)
			cur = Message{Kind: KindSync, To: m.To, IssuedAt: m.IssuedAt, Rev: m.Rev}
			size = 0
		}
		if len(bb)+1 > budget {
			return nil, fmt.Errorf("split sync: one ban is %d bytes, budget %d", len(bb), budget)
		}
		cur.Bans = append(cur.Bans, b)
		size += len(bb) + 1
	}
	parts = append(parts, cur)
	for i := range parts {
		parts[i].ID = fmt.Sprintf("%s.%d", m.ID, i+1)
		parts[i].Part = &Part{Set: m.ID, Index: i + 1, Count: len(parts)}
	}
	return parts, nil
}

// GenerateKey makes a new signing key with id kid.
func GenerateKey(kid string) (Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Signer{}, err
	}
	return Signer{KeyID: kid, Key: priv}, nil
}

// Key files are one line "KID PRIVATE-OR-PUBLIC-KEY-BASE64". Private key files hold the 32-byte seed.

// MarshalPrivate returns the private key file contents for s.
func (s Signer) MarshalPrivate() string {
	return s.KeyID + " " + base64.StdEncoding.EncodeToString(s.Key.Seed()) + "\n"
}

// MarshalPublic returns the public key line for s.
func (s Signer) MarshalPublic() string {
	return s.KeyID + " " + base64.StdEncoding.EncodeToString(s.Key.Public().(ed25519.PublicKey)) + "\n"
}

// ParsePrivate parses a private key file's contents.
func ParsePrivate(text string) (Signer, error) {
	kid, raw, err := parseKeyLine(strings.TrimSpace(text), ed25519.SeedSize)
	if err != nil {
		return Signer{}, fmt.Errorf("private key: %w", err)
	}
	return Signer{KeyID: kid, Key: ed25519.NewKeyFromSeed(raw)}, nil
}

// ParsePublicKeys parses lines "KID BASE64" (blank lines and # comments ignored).
func ParsePublicKeys(text string) (map[string]ed25519.PublicKey, error) {
	keys := map[string]ed25519.PublicKey{}
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		kid, raw, err := parseKeyLine(line, ed25519.PublicKeySize)
		if err != nil {
			return nil, fmt.Errorf("public key line %d: %w", i+1, err)
		}
		keys[kid] = ed25519.PublicKey(raw)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("no public keys found")
	}
	return keys, nil
}

// LoadPublicKeys reads public key lines from files.
func LoadPublicKeys(paths ...string) (map[string]ed25519.PublicKey, error) {
	all := map[string]ed25519.PublicKey{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		keys, err := ParsePublicKeys(string(b))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		for k, v := range keys {
			all[k] = v
		}
	}
	return all, nil
}

func parseKeyLine(line string, size int) (string, []byte, error) {
	kid, b64, ok := strings.Cut(line, " ")
	if !ok || !idRe.MatchString(kid) {
		return "", nil, fmt.Errorf("want \"KEY-ID BASE64\"")
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(b64))
	if err != nil || len(raw) != size {
		return "", nil, fmt.Errorf("key %q: want %d bytes of base64", kid, size)
	}
	return kid, raw, nil
}
