package controller

import (
	"bytes"
	"encoding/json"
	"fmt"
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

// ParseFeed reads a feed body. A line that is not an address is counted and reported, never
// fatal; a body that is not the format at all (nothing but invalid lines) is an error, as is a
// Spamhaus JSON edition whose metadata record count disagrees with its entries (a truncated
// download).
func ParseFeed(body []byte, format string) (ParsedFeed, error) {
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
	for n, raw := range bytes.Split(body, []byte("\n")) {
		line := strings.TrimSpace(string(raw))
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
		pf.Prefixes = append(pf.Prefixes, p)
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
