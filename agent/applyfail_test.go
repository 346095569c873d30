package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/bansshee/bansshee/agent/firewall"
)

// failing is a recorder whose kernel refuses changes while fail is set (a full set, an ipset error).
type failing struct {
	recorder
	fail bool
}

var errKernel = errors.New("ipset: Hash is full, cannot add more elements")

func (f *failing) Apply(ctx context.Context, s firewall.State) (firewall.Result, error) {
	if f.fail {
		return firewall.Result{}, errKernel
	}
	return f.recorder.Apply(ctx, s)
}
func (f *failing) Quick(ctx context.Context, s firewall.State) (firewall.Result, error) {
	return f.Apply(ctx, s)
}
func (f *failing) Ban(ctx context.Context, b []firewall.Ban) error {
	if f.fail {
		return errKernel
	}
	return f.recorder.Ban(ctx, b)
}

// A message whose kernel change fails is kept in the state and deleted, and the agent retries the
// kernel itself on the next reconcile pass (issue 22, finding 9). Before, apply returned the
// error: the message and every good one behind it in the batch went back to the queue, and
// after five receives to the DLQ.
func TestKernelFailureIsRetriedLocally(t *testing.T) {
	fw := &failing{fail: true}
	pub, _, _ := ed25519.GenerateKey(nil)
	a, err := New(Config{InstanceID: "i-0123456789abcdef0", Keys: map[string]ed25519.PublicKey{"k": pub}, StateDir: t.TempDir()}, nil, nil, fw)
	if err != nil {
		t.Fatal(err)
	}
	fw.fail = false
	if err := a.Restore(t.Context()); err != nil {
		t.Fatal(err)
	}
	fw.fail = true
	if err := a.apply(t.Context(), oneBan(1, "198.51.100.1")); err != nil {
		t.Fatalf("apply returned %v: the message would go back to the queue", err)
	}
	if _, ok := a.state.Ban(netip.MustParsePrefix("198.51.100.1/32")); !ok || a.state.AppliedRev != 1 {
		t.Fatal("the ban is not in the state")
	}
	if !strings.Contains(a.Status().LastError, "Hash is full") {
		t.Fatalf("heartbeat error %q", a.Status().LastError)
	}
	a.Reconcile(t.Context()) // still failing: still reported
	if a.Status().LastError == "" {
		t.Fatal("the error was cleared while the kernel still refuses")
	}
	fw.fail = false
	a.Reconcile(t.Context())
	if fw.bans != 1 || a.Status().LastError != "" {
		t.Fatalf("after the kernel recovered: %d bans in the kernel, error %q", fw.bans, a.Status().LastError)
	}
}
