// Package infra holds bansshee's deployable infrastructure (CloudFormation, systemd, cloud-init)
// and the tests that keep the IAM policies in step with the AWS calls the code makes.
package infra
