package controller

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"slices"
	"strings"
)

// Feed formats. Every format takes one address or CIDR per line; they differ in comments and in
// what may follow the address.
const (
	FormatAuto     = "auto"     // spamhaus JSON if the first entry line starts with '{', else plain
	FormatPlain    = "plain"    // address or CIDR per line; '#', ';' and '//' start comments
	FormatSpamhaus = "spamhaus" // DROP/EDROP: "CIDR ; SBLnnn" text, or the JSON-lines edition
	FormatFireHOL  = "firehol"  // netset/ipset: address or CIDR per line, '#' comments
)

// FeedFormats lists the accepted --format values.
var FeedFormats = []string{FormatAuto, FormatPlain, FormatSpamhaus, FormatFireHOL}

// ParsedFeed is a feed body read into prefixes.
type ParsedFeed struct {
	Prefixes []netip.Prefix // canonical, sorted, unique
	Lines    int            // entry lines read (comments and blank lines not counted)
	Invalid  int            // entry lines that were not an address or CIDR
	Examples []string       // the first few invalid lines, with their line numbers
}

const maxExamples = 5

// ParseFeed reads a whole feed body (ParseFeedStream without an entry limit).
func ParseFeed(body []byte, format string) (ParsedFeed, error) {
	return ParseFeedStream(bytes.NewReader(body), format, 0)
}

// ErrFeedTooLarge: the list has more entries than a feed may have (ParseFeedStream stops there).
var ErrFeedTooLarge = errors.New("too many entries")

// ParseFeedStream reads a feed as it arrives, a line at a time, and stops with ErrFeedTooLarge
// once it holds more than maxEntries entries (0: no limit): what it keeps is the entries, never
// the body (a 32 MiB body read whole and split took about 246 MB of heap). A line that is not an
// address is counted and reported, never fatal; a body that is not the format at all (nothing
// but invalid lines) is an error, as is a Spamhaus JSON edition whose metadata record count
// disagrees with its entries (a truncated download), and a read error (a body cut short).
func ParseFeedStream(r io.Reader, format string, maxEntries int) (ParsedFeed, error) {
	var pf ParsedFeed
	if !slices.Contains(FeedFormats, format) {
		return pf, fmt.Errorf("unknown feed format %q (want %s)", format, strings.Join(FeedFormats, ", "))
	}
	comments := []string{"#", ";", "//"}
	if format == FormatFireHOL {
		comments = []string{"#"}
	}
	jsonLines := false
	metaRecords := -1
	var blocks [][]netip.Prefix
	var cur []netip.Prefix
	count := 0
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 0; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || hasAnyPrefix(line, comments) {
			continue
		}
		if pf.Lines == 0 && (format == FormatAuto || format == FormatSpamhaus) && line[0] == '{' {
			jsonLines = true
		}
		var field string
		if jsonLines {
			var rec struct {
				CIDR    string `json:"cidr"`
				Type    string `json:"type"`
				Records *int   `json:"records"`
			}
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				pf.Lines++ // an entry line, unreadable: a body of nothing else is not a feed
				pf.invalid(n+1, line)
				continue
			}
			if rec.Type == "metadata" {
				if rec.Records != nil {
					metaRecords = *rec.Records
				}
				continue
			}
			field = rec.CIDR
		} else {
			field = line
			if i := strings.IndexAny(field, " \t;#"); i >= 0 {
				field = field[:i]
			}
		}
		pf.Lines++
		p, err := parseFeedPrefix(field)
		if err != nil {
			pf.invalid(n+1, line)
			continue
		}
		if maxEntries > 0 && count >= maxEntries {
			return pf, fmt.Errorf("%w: the list has more than the %d entries a feed may have (stopped reading at line %d)", ErrFeedTooLarge, maxEntries, n+1)
		}
		// Kept in blocks and joined once at the end: appending to one slice of a million
		// prefixes copies it over and over (five times its size in all).
		if len(cur) == cap(cur) {
			if len(cur) > 0 {
				blocks = append(blocks, cur)
			}
			cur = make([]netip.Prefix, 0, 1<<14)
		}
		cur = append(cur, p)
		count++
	}
	pf.Prefixes = make([]netip.Prefix, 0, count)
	for _, b := range append(blocks, cur) {
		pf.Prefixes = append(pf.Prefixes, b...)
	}
	blocks, cur = nil, nil
	if err := sc.Err(); err != nil {
		return pf, fmt.Errorf("read: body cut short after %d entry lines: %w", pf.Lines, err)
	}
	if pf.Lines > 0 && pf.Invalid == pf.Lines {
		return pf, fmt.Errorf("none of the %d entry lines is an address or CIDR (first: %s): not a %s feed", pf.Lines, pf.Examples[0], format)
	}
	if metaRecords >= 0 && metaRecords != pf.Lines {
		return pf, fmt.Errorf("the feed's metadata says %d records but %d arrived: truncated", metaRecords, pf.Lines)
	}
	slices.SortFunc(pf.Prefixes, comparePrefix)
	pf.Prefixes = slices.Compact(pf.Prefixes)
	return pf, nil
}

// Coverage is how much address space prefixes cover: IPv4 addresses and IPv6 /64 subnets (a
// prefix longer than /64 counts as one). Overlapping entries are counted twice: an upper bound.
type Coverage struct{ V4, V6 uint64 }

// CoverageOf sums the coverage of prefixes.
func CoverageOf(prefixes []netip.Prefix) Coverage {
	var c Coverage
	for _, p := range prefixes {
		c = c.Add(p)
	}
	return c
}

// Add returns c with p's coverage added (saturating).
func (c Coverage) Add(p netip.Prefix) Coverage {
	if p.Addr().Is4() {
		c.V4 = satAdd(c.V4, 1<<(32-p.Bits()))
	} else {
		c.V6 = satAdd(c.V6, 1<<max(64-p.Bits(), 0))
	}
	return c
}

// Plus adds two coverages.
func (c Coverage) Plus(o Coverage) Coverage { return Coverage{satAdd(c.V4, o.V4), satAdd(c.V6, o.V6)} }

func satAdd(a, b uint64) uint64 {
	if a+b < a {
		return math.MaxUint64
	}
	return a + b
}

func (pf *ParsedFeed) invalid(lineNo int, line string) {
	pf.Invalid++
	if len(pf.Examples) < maxExamples {
		if len(line) > 80 {
			line = line[:80] + "..."
		}
		pf.Examples = append(pf.Examples, fmt.Sprintf("line %d: %q", lineNo, line))
	}
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// parseFeedPrefix is proto.ParseCIDR, without its error's allocation on the hot path.
func parseFeedPrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("not an address")
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p.Addr().Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("mapped prefix shorter than /96")
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
