package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/netip"
	"slices"
	"testing"
)

// An agent whose first IMDS read of the VPC CIDRs fails reads them again every reconcile pass until
// it succeeds (issue 22, finding 10). Before, it ran without them for its whole life.
func TestVPCCIDRsReadAgainUntilTheyArrive(t *testing.T) {
	vpc := netip.MustParsePrefix("172.31.0.0/16")
	calls := 0
	source := func(context.Context) ([]netip.Prefix, error) {
		calls++
		if calls < 3 {
			return nil, errors.New("IMDS: connection refused")
		}
		return []netip.Prefix{vpc}, nil
	}
	pub, _, _ := ed25519.GenerateKey(nil)
	a, err := New(Config{InstanceID: "i-0123456789abcdef0", Keys: map[string]ed25519.PublicKey{"k": pub}, StateDir: t.TempDir(), VPCSource: source}, nil, nil, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Restore(t.Context()); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(a.allow, vpc) {
		t.Fatal("allowlisted before IMDS answered")
	}
	a.Reconcile(t.Context()) // second read: still failing
	if slices.Contains(a.allow, vpc) {
		t.Fatal("allowlisted after a failed read")
	}
	a.Reconcile(t.Context()) // third read: the CIDRs arrive
	if !slices.Contains(a.allow, vpc) {
		t.Fatalf("VPC CIDR not in the kernel allowlist after IMDS answered: %v", a.allow)
	}
	a.Reconcile(t.Context())
	if calls != 3 {
		t.Fatalf("IMDS read %d times; once it answered it should not be asked again", calls)
	}
}
