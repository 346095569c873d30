package awstest

import (
	"os"
	"testing"
)

// New starts an emulator for one test and stops it when the test ends.
func New(t testing.TB) (*Env, Clients) {
	t.Helper()
	e, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e, NewClients(e.Config(""))
}

// NewWithDynalite is New with DynamoDB served by a dynalite process of the test's own. Without
// dynalite it skips the test, saying why (and fails it under CI=true, where .ci/deps.sh installs it).
func NewWithDynalite(t testing.TB) (*Env, Clients) {
	t.Helper()
	if err := DynaliteAvailable(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("dynalite unavailable under CI: %v", err)
		}
		t.Skipf("SKIP (dynalite): %v", err)
	}
	d, err := StartDynalite()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	e, clients := New(t)
	if err := e.UseDynamoDB(d.URL); err != nil {
		t.Fatal(err)
	}
	return e, clients
}
