package netns

import "testing"

// NewLab returns a lab that is removed when the test ends (also when it fails or panics).
// Without root or the tools it skips the test, saying why.
func NewLab(t testing.TB) *Lab {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

// Pair is the classic victim/attacker setup: two hosts on one lab.
type Pair struct {
	Lab      *Lab
	Victim   *Host
	Attacker *Host
}

// NewPair builds a lab with a victim and an attacker host.
func NewPair(t testing.TB) *Pair {
	t.Helper()
	l := NewLab(t)
	v, err := l.AddHost("victim")
	if err != nil {
		t.Fatal(err)
	}
	a, err := l.AddHost("attacker")
	if err != nil {
		t.Fatal(err)
	}
	return &Pair{Lab: l, Victim: v, Attacker: a}
}
