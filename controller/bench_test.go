package controller

import "testing"

// BenchmarkSelectorMatch: one client-side evaluation, done per instance per fan-out.
func BenchmarkSelectorMatch(b *testing.B) {
	sel, err := ParseSelector("Role in (mail,web),Env!=dev,has(Team)")
	if err != nil {
		b.Fatal(err)
	}
	tags := map[string]string{"Role": "mail", "Env": "prod", "Team": "ops", "Name": "mail-1", "bansshee:managed": "true"}
	b.ReportAllocs()
	for b.Loop() {
		if !sel.Match(tags) {
			b.Fatal("no match")
		}
	}
}
