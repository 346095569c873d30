package awstest

import "testing"

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
