package controller

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// Selector chooses instances by their EC2 tags: "Role=mail,Env!=dev", "Role in (mail,web)",
// "has(Team)", "!has(Team)", "*". Terms separated by commas must all hold.
type Selector struct {
	src   string
	terms []term
}

type op int

const (
	opEq op = iota
	opNe
	opIn
	opNotIn
	opHas
	opNotHas
)

type term struct {
	key    string
	op     op
	values []string
}

// SelectorError points at the position of a parse error.
type SelectorError struct {
	Src string
	Pos int // 0-based byte offset
	Msg string
}

func (e *SelectorError) Error() string {
	return fmt.Sprintf("selector %q: at position %d: %s", e.Src, e.Pos+1, e.Msg)
}

// Pointer shows the selector with a caret under the error, for a terminal.
func (e *SelectorError) Pointer() string {
	return "  " + e.Src + "\n  " + strings.Repeat(" ", e.Pos) + "^"
}

// ParseSelector parses a selector. An empty string or "*" selects every managed instance.
func ParseSelector(s string) (*Selector, error) {
	p := &parser{src: s}
	sel := &Selector{src: strings.TrimSpace(s)}
	p.space()
	if p.eof() || (p.peek() == '*' && strings.TrimSpace(s[p.pos+1:]) == "") {
		return sel, nil
	}
	for {
		t, err := p.term()
		if err != nil {
			return nil, err
		}
		sel.terms = append(sel.terms, t)
		p.space()
		if p.eof() {
			return sel, nil
		}
		if p.peek() != ',' {
			return nil, p.errf("expected ',' or end, got %q", p.peek())
		}
		p.pos++
	}
}

// String is the selector as written (or "*").
func (s *Selector) String() string {
	if len(s.terms) == 0 {
		return "*"
	}
	return s.src
}

// InstanceIDKey is the selector key that names instances by id rather than by a tag:
// "instance-id=i-0123456789abcdef0" targets one instance (a jail's ban on the instance that
// logged the failures), "instance-id in (i-1,i-2)" several.
const InstanceIDKey = "instance-id"

// Match evaluates the selector against an instance's tags (an instance-id term sees no id: use
// MatchInstance).
func (s *Selector) Match(tags map[string]string) bool { return s.MatchInstance("", tags) }

// MatchInstance evaluates the selector against an instance: its id for instance-id terms, its
// tags for the rest.
func (s *Selector) MatchInstance(id string, tags map[string]string) bool {
	for _, t := range s.terms {
		v, ok := tags[t.key]
		if t.key == InstanceIDKey {
			v, ok = id, id != ""
		}
		var hit bool
		switch t.op {
		case opEq:
			hit = ok && v == t.values[0]
		case opNe:
			hit = !ok || v != t.values[0]
		case opIn:
			hit = ok && slices.Contains(t.values, v)
		case opNotIn:
			hit = !ok || !slices.Contains(t.values, v)
		case opHas:
			hit = ok
		case opNotHas:
			hit = !ok
		}
		if !hit {
			return false
		}
	}
	return true
}

// Filters returns the EC2 server-side filters for the positive terms. Negative terms can only be
// evaluated client-side (Match), which callers always do too.
func (s *Selector) Filters() []ec2types.Filter {
	var fs []ec2types.Filter
	for _, t := range s.terms {
		switch t.op {
		case opEq, opIn:
			vals := append([]string(nil), t.values...)
			sort.Strings(vals)
			name := "tag:" + t.key
			if t.key == InstanceIDKey {
				name = InstanceIDKey
			}
			fs = append(fs, ec2types.Filter{Name: aws.String(name), Values: vals})
		case opHas:
			fs = append(fs, ec2types.Filter{Name: aws.String("tag-key"), Values: []string{t.key}})
		}
	}
	return fs
}

// Instances returns the instance ids the selector names in instance-id terms, and whether it
// depends on the id some other way (instance-id!=, notin, has(instance-id)): such a selector
// can give every instance its own state.
func (s *Selector) Instances() (ids []string, anyID bool) {
	for _, t := range s.terms {
		if t.key != InstanceIDKey {
			continue
		}
		if t.op == opEq || t.op == opIn {
			ids = append(ids, t.values...)
		} else {
			anyID = true
		}
	}
	return ids, anyID
}

type parser struct {
	src string
	pos int
}

func (p *parser) eof() bool  { return p.pos >= len(p.src) }
func (p *parser) peek() byte { return p.src[p.pos] }
func (p *parser) space() {
	for !p.eof() && (p.peek() == ' ' || p.peek() == '\t') {
		p.pos++
	}
}

func (p *parser) errf(format string, args ...any) error {
	return &SelectorError{Src: p.src, Pos: min(p.pos, len(p.src)), Msg: fmt.Sprintf(format, args...)}
}

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_.:/+@-", c) >= 0
}

func (p *parser) word(what string) (string, error) {
	p.space()
	start := p.pos
	for !p.eof() && isWordByte(p.peek()) {
		p.pos++
	}
	if p.pos == start {
		if p.eof() {
			return "", p.errf("expected %s, got end of selector", what)
		}
		return "", p.errf("expected %s, got %q", what, p.peek())
	}
	if p.pos-start > 128 {
		return "", &SelectorError{Src: p.src, Pos: start, Msg: what + " longer than 128 characters"}
	}
	return p.src[start:p.pos], nil
}

func (p *parser) term() (term, error) {
	p.space()
	neg := false
	if !p.eof() && p.peek() == '!' {
		neg = true
		p.pos++
	}
	key, err := p.word("a tag key")
	if err != nil {
		return term{}, err
	}
	p.space()
	if key == "has" && !p.eof() && p.peek() == '(' {
		p.pos++
		k, err := p.word("a tag key")
		if err != nil {
			return term{}, err
		}
		p.space()
		if p.eof() || p.peek() != ')' {
			return term{}, p.errf("expected ')' after has(%s", k)
		}
		p.pos++
		if neg {
			return term{key: k, op: opNotHas}, nil
		}
		return term{key: k, op: opHas}, nil
	}
	if neg {
		return term{}, p.errf("'!' goes only before has(KEY); use KEY!=VALUE")
	}
	switch {
	case strings.HasPrefix(p.src[p.pos:], "!="):
		p.pos += 2
		v, err := p.word("a value after '!='")
		return term{key: key, op: opNe, values: []string{v}}, err
	case strings.HasPrefix(p.src[p.pos:], "="):
		p.pos++
		if !p.eof() && p.peek() == '=' {
			p.pos++ // accept "=="
		}
		v, err := p.word("a value after '='")
		return term{key: key, op: opEq, values: []string{v}}, err
	case strings.HasPrefix(p.src[p.pos:], "notin") || strings.HasPrefix(p.src[p.pos:], "in"):
		o := opIn
		if strings.HasPrefix(p.src[p.pos:], "notin") {
			o = opNotIn
			p.pos += 5
		} else {
			p.pos += 2
		}
		p.space()
		if p.eof() || p.peek() != '(' {
			return term{}, p.errf("expected '(' after in")
		}
		p.pos++
		var vals []string
		for {
			v, err := p.word("a value")
			if err != nil {
				return term{}, err
			}
			vals = append(vals, v)
			p.space()
			if p.eof() {
				return term{}, p.errf("expected ')' to close the list")
			}
			if p.peek() == ')' {
				p.pos++
				return term{key: key, op: o, values: vals}, nil
			}
			if p.peek() != ',' {
				return term{}, p.errf("expected ',' or ')' in the list, got %q", p.peek())
			}
			p.pos++
		}
	}
	if p.eof() {
		return term{}, p.errf("expected '=', '!=', 'in' or 'notin' after %q", key)
	}
	return term{}, p.errf("expected '=', '!=', 'in' or 'notin' after %q, got %q", key, p.peek())
}
