// Package faults holds bansshee's fault suite: end-to-end tests that break something (kill an
// agent mid-batch, poison a queue, delete the chain, kill the reconciler mid-fan-out, flood the
// Lambda path) and assert that no ban is lost and none is applied that should not be.
// See docs/RELIABILITY.md for what each proves.
package faults
