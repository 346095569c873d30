// Package controller is bansshee's control plane as a library: tag selectors, EC2 discovery, the
// DynamoDB ledger, per-instance SQS queues, fan-out and the reconciler. The CLI, the Lambda and
// `bansshee serve` all use it; there is no server a ban depends on.
package controller
