package controller

import (
	"errors"
	"strings"
	"testing"
)

func TestSelectorMatch(t *testing.T) {
	mailProd := map[string]string{"Role": "mail", "Env": "prod", "Team": "x"}
	mailDev := map[string]string{"Role": "mail", "Env": "dev"}
	web := map[string]string{"Role": "web"}
	cases := []struct {
		sel  string
		want [3]bool
	}{
		{"Role=mail", [3]bool{true, true, false}},
		{"Role=mail,Env=prod", [3]bool{true, false, false}},
		{"Role=mail,Env!=dev", [3]bool{true, false, false}},
		{"Env!=dev", [3]bool{true, false, true}},
		{"Role in (mail, web)", [3]bool{true, true, true}},
		{"Role notin (web)", [3]bool{true, true, false}},
		{"has(Team)", [3]bool{true, false, false}},
		{"!has(Env)", [3]bool{false, false, true}},
		{"*", [3]bool{true, true, true}},
		{"", [3]bool{true, true, true}},
	}
	for _, c := range cases {
		s, err := ParseSelector(c.sel)
		if err != nil {
			t.Fatalf("%q: %v", c.sel, err)
		}
		for i, tags := range []map[string]string{mailProd, mailDev, web} {
			if got := s.Match(tags); got != c.want[i] {
				t.Errorf("%q on %v = %v, want %v", c.sel, tags, got, c.want[i])
			}
		}
	}
}

func TestSelectorErrors(t *testing.T) {
	for _, c := range []struct{ sel, msg string }{
		{"Role=", "at position 6: expected a value after '=', got end of selector"},
		{"Role", "at position 5: expected '=', '!=', 'in' or 'notin' after \"Role\""},
		{"Role=mail;Env=dev", "at position 10: expected ',' or end, got ';'"},
		{"Role in (mail", "expected ')' to close the list"},
		{"!Role=mail", "'!' goes only before has(KEY)"},
		{"has(Team", "expected ')' after has(Team"},
	} {
		_, err := ParseSelector(c.sel)
		var se *SelectorError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%q: error %v, want %q", c.sel, err, c.msg)
		}
	}
}

func TestSelectorFilters(t *testing.T) {
	s, _ := ParseSelector("Role in (web,mail),Env!=dev,has(Team)")
	fs := s.Filters()
	if len(fs) != 2 || *fs[0].Name != "tag:Role" || strings.Join(fs[0].Values, ",") != "mail,web" || *fs[1].Name != "tag-key" {
		t.Fatalf("filters %+v", fs)
	}
}

func FuzzSelector(f *testing.F) {
	for _, s := range []string{"Role=mail,Env!=dev", "Role in (mail,web)", "has(Team)", "!has(X)", "*", "a=b,c notin (d)", "=", "in(", "has("} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := ParseSelector(s)
		if err != nil {
			var se *SelectorError
			if !errors.As(err, &se) || se.Pos < 0 || se.Pos > len(s) {
				t.Fatalf("bad error for %q: %v", s, err)
			}
			return
		}
		sel.Match(map[string]string{"Role": "mail"})
		_ = sel.Filters()
		// What parses must parse the same way again from its own text.
		if _, err := ParseSelector(sel.String()); err != nil {
			t.Fatalf("%q parsed, its String %q does not: %v", s, sel.String(), err)
		}
	})
}

func TestSelectorInstanceID(t *testing.T) {
	s, err := ParseSelector("instance-id=i-0123456789abcdef0")
	if err != nil {
		t.Fatal(err)
	}
	tags := map[string]string{"instance-id": "i-0123456789abcdef0"} // a tag of that name is not the id
	if s.MatchInstance("i-0aaaaaaaaaaaaaaa0", tags) || !s.MatchInstance("i-0123456789abcdef0", nil) || s.Match(tags) {
		t.Fatal("instance-id must match the instance's id, never a tag")
	}
	if f := s.Filters(); len(f) != 1 || *f[0].Name != "instance-id" {
		t.Fatalf("filters %+v", f)
	}
	if ids, any := s.Instances(); len(ids) != 1 || any {
		t.Fatalf("instances %v %v", ids, any)
	}
	n, _ := ParseSelector("Role=mail,instance-id!=i-1")
	if _, any := n.Instances(); !any || n.MatchInstance("i-1", map[string]string{"Role": "mail"}) || !n.MatchInstance("i-2", map[string]string{"Role": "mail"}) {
		t.Fatal("instance-id!=")
	}
}
