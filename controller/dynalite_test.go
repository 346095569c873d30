package controller

import (
	"testing"

	"github.com/bansshee/bansshee/internal/awstest"
)

// The ledger and reconciler tests again, with DynamoDB served by dynalite (an implementation
// written from DynamoDB's documentation) instead of kumo: conditional writes, batch reads, paging
// and errors must behave the same on both.
func TestLedgerAndReconcilerOnDynalite(t *testing.T) {
	if err := awstest.DynaliteAvailable(); err != nil {
		awstest.NewWithDynalite(t) // skips (or fails under CI) with the reason
	}
	onDynalite = true
	t.Cleanup(func() { onDynalite = false })
	for _, tc := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"TargetsAndBanReachExactlyTheSelection", TestTargetsAndBanReachExactlyTheSelection},
		{"Refusals", TestRefusals},
		{"NewInstanceGetsSyncAndGoneQueueIsDeleted", TestNewInstanceGetsSyncAndGoneQueueIsDeleted},
		{"RacingBanAndUnbanAgree", TestRacingBanAndUnbanAgree},
		{"ForgedStatusIsIgnored", TestForgedStatusIsIgnored},
		{"EscalationsAreCheckedCappedAndBatched", TestEscalationsAreCheckedCappedAndBatched},
		{"SilentAgentGetsNoSyncStorm", TestSilentAgentGetsNoSyncStorm},
		{"NoScansOnHotPaths", TestNoScansOnHotPaths},
		{"AgentRoleIDFromTheLedger", TestAgentRoleIDFromTheLedger},
		{"SyncPartsFitSQSMessageSize", TestSyncPartsFitSQSMessageSize},
		{"BansToList", TestBansToList},
	} {
		t.Run(tc.name, tc.fn)
	}
}
