package proto

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"sync"
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
