#!/bin/bash
# Runs inside the LocalStack container when it is ready: the ledger table, the DLQ, and a small
# tagged fleet (3 x Role=mail, 2 x Role=web, 1 x Role=mail,Env=dev).
set -euo pipefail
awslocal dynamodb create-table --table-name bansshee \
  --attribute-definitions AttributeName=pk,AttributeType=S AttributeName=sk,AttributeType=S \
  --key-schema AttributeName=pk,KeyType=HASH AttributeName=sk,KeyType=RANGE \
  --billing-mode PAY_PER_REQUEST
awslocal dynamodb update-time-to-live --table-name bansshee \
  --time-to-live-specification Enabled=true,AttributeName=expires_at
awslocal sqs create-queue --queue-name bansshee-dlq.fifo --attributes FifoQueue=true
launch() {
  awslocal ec2 run-instances --image-id ami-bansshee --count 1 --instance-type t3.micro \
    --tag-specifications "ResourceType=instance,Tags=[{Key=bansshee:managed,Value=true},$1]" \
    --query 'Instances[0].InstanceId' --output text
}
for i in 1 2 3; do launch "{Key=Role,Value=mail},{Key=Env,Value=prod}"; done
for i in 1 2; do launch "{Key=Role,Value=web},{Key=Env,Value=prod}"; done
launch "{Key=Role,Value=mail},{Key=Env,Value=dev}"
echo "bansshee: table, DLQ and 6 tagged instances ready"
