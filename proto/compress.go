package proto

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"time"
)

// A sync part may carry its bans compressed: bans_z is the base64 of the gzip of the JSON array of
// bans. The signature covers the body as sent, compressed field included; a verified message is
// inflated before it is validated, and what it inflates to is bounded (MaxInflatedBytes) so a small
// body cannot become a large allocation. 100 000 bans take 5 messages this way instead of 39.

// MaxInflatedBytes bounds what one message's bans_z may inflate to.
const MaxInflatedBytes = 64 << 20

// inflate replaces bans_z by the bans it holds.
func (m *Message) inflate() error {
	if m.BansZ == "" {
		return nil
	}
	if m.Kind != KindSync || len(m.Bans) > 0 {
		return fmt.Errorf("%w: bans_z only in a sync message, and not with bans", ErrMalformed)
	}
	z, err := base64.StdEncoding.DecodeString(m.BansZ)
	if err != nil {
		return fmt.Errorf("%w: bans_z: %v", ErrMalformed, err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(z))
	if err != nil {
		return fmt.Errorf("%w: bans_z: %v", ErrMalformed, err)
	}
	raw, err := io.ReadAll(io.LimitReader(zr, MaxInflatedBytes+1))
	if err != nil {
		return fmt.Errorf("%w: bans_z: %v", ErrMalformed, err)
	}
	if len(raw) > MaxInflatedBytes {
		return fmt.Errorf("%w: bans_z inflates past %d bytes", ErrTooLarge, MaxInflatedBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var bans []Ban
	if err := dec.Decode(&bans); err != nil || dec.More() {
		return fmt.Errorf("%w: bans_z: not a JSON array of bans (%v)", ErrMalformed, err)
	}
	m.Bans, m.BansZ = bans, ""
	return nil
}

func deflate(bans []Ban) (string, error) {
	raw, err := json.Marshal(bans)
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	zw := gzipWriters.Get().(*gzip.Writer)
	defer gzipWriters.Put(zw)
	zw.Reset(&b)
	if _, err := zw.Write(raw); err != nil {
		return "", err
	}
	if err := zw.Close(); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b.Bytes()), nil
}

// gzipWriters are reused: a new writer allocates about 1 MB, which was half of all the memory a
// first reconcile pass allocated (one sync per new instance).
var gzipWriters = sync.Pool{New: func() any {
	zw, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed)
	return zw
}}

// SplitSyncCompressed is SplitSync with each part's bans compressed (bans_z), parts filled close
// to maxBytes: a part's size decides the next one's count, shrunk until it fits.
func SplitSyncCompressed(m Message, maxBytes int) ([]Message, error) {
	head := m
	head.Bans, head.Part = nil, &Part{Set: m.ID, Index: 999999, Count: 999999}
	base, _ := json.Marshal(head)
	budget := maxBytes - len(base) - 64
	if budget < 1024 {
		return nil, fmt.Errorf("split sync: %d bytes left for bans", budget)
	}
	var parts []Message
	bans := m.Bans
	n := 2000 // a first guess; each part's compressed size per ban sets the next guess
	for first := true; first || len(bans) > 0; first = false {
		k := min(n, len(bans))
		var z string
		for {
			var err error
			if z, err = deflate(bans[:k]); err != nil {
				return nil, err
			}
			if len(z)+16 <= budget || k == 1 {
				break
			}
			k = max(1, k*9/10)
		}
		if len(z)+16 > budget {
			return nil, fmt.Errorf("split sync: one ban compresses to %d bytes, budget %d", len(z), budget)
		}
		p := Message{Kind: KindSync, To: m.To, IssuedAt: m.IssuedAt, Rev: m.Rev}
		if first {
			p.Limits = m.Limits
		}
		if k > 0 {
			p.BansZ = z
		}
		parts = append(parts, p)
		if k > 0 {
			n = max(1, int(float64(k)*float64(budget)/float64(len(z)+16)*0.97))
		}
		bans = bans[k:]
	}
	for i := range parts {
		parts[i].ID = fmt.Sprintf("%s.%d", m.ID, i+1)
		parts[i].Part = &Part{Set: m.ID, Index: i + 1, Count: len(parts)}
	}
	if len(parts) == 1 {
		parts[0].ID, parts[0].Part = m.ID, nil
	}
	return parts, nil
}

// SyncTemplate is a sync's bans and limits split into parts once, to be addressed to any number of
// instances (For): instances with the same tags share their desired state, and splitting it (JSON
// and gzip of every ban) is what a sync costs. At 100 000 bans that is about a tenth of a second
// of CPU per instance without a template, once per desired state with one.
type SyncTemplate struct{ parts []Message }

// NewSyncTemplate splits bans and limits as SplitSyncCompressed (compress) or SplitSync does, with
// parts sized for the widest envelope a sync can have (a ULID, an instance id of up to 64
// characters, any time and revision), so that every instance's parts fit maxBytes.
func NewSyncTemplate(bans []Ban, limits []Limit, maxBytes int, compress bool) (*SyncTemplate, error) {
	widest := Message{ID: strings.Repeat("Z", 26), Kind: KindSync, To: "i-" + strings.Repeat("f", 62),
		IssuedAt: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), Rev: math.MaxInt64, Bans: bans, Limits: limits}
	split := SplitSync
	if compress {
		split = SplitSyncCompressed
	}
	parts, err := split(widest, maxBytes)
	if err != nil {
		return nil, err
	}
	for i := range parts {
		parts[i].ID, parts[i].To, parts[i].IssuedAt, parts[i].Rev, parts[i].Part = "", "", time.Time{}, 0, nil
	}
	return &SyncTemplate{parts: parts}, nil
}

// For returns the template's parts as the sync id for instance to, at rev: numbered "<id>.<n>"
// with their Part when there are several, as SplitSync numbers them.
func (t *SyncTemplate) For(id, to string, issuedAt time.Time, rev int64) []Message {
	parts := make([]Message, len(t.parts))
	for i, p := range t.parts {
		p.ID, p.To, p.IssuedAt, p.Rev = id, to, issuedAt, rev
		if len(t.parts) > 1 {
			p.ID = fmt.Sprintf("%s.%d", id, i+1)
			p.Part = &Part{Set: id, Index: i + 1, Count: len(t.parts)}
		}
		parts[i] = p
	}
	return parts
}
