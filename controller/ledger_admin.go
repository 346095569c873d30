package controller

// Table administration: only `bansshee init` and tests call this; the Lambda and the reconciler
// never do, and their IAM does not allow it (infra/iam_test.go excludes this file for them).

import (
	"context"
	"errors"
	"fmt"
	"github.com/aws/smithy-go"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// CreateTable creates the ledger table (on-demand, TTL on expires_at) if it does not exist.
func (l *Ledger) CreateTable(ctx context.Context) error {
	_, err := l.DDB.CreateTable(ctx, &dynamodb.CreateTableInput{TableName: aws.String(l.Table), BillingMode: ddbtypes.BillingModePayPerRequest,
		AttributeDefinitions: []ddbtypes.AttributeDefinition{{AttributeName: aws.String("pk"), AttributeType: ddbtypes.ScalarAttributeTypeS}, {AttributeName: aws.String("sk"), AttributeType: ddbtypes.ScalarAttributeTypeS}},
		KeySchema:            []ddbtypes.KeySchemaElement{{AttributeName: aws.String("pk"), KeyType: ddbtypes.KeyTypeHash}, {AttributeName: aws.String("sk"), KeyType: ddbtypes.KeyTypeRange}}})
	var inUse *ddbtypes.ResourceInUseException
	if err != nil && !errors.As(err, &inUse) {
		return fmt.Errorf("create table %s: %w", l.Table, err)
	}
	_, err = l.DDB.UpdateTimeToLive(ctx, &dynamodb.UpdateTimeToLiveInput{TableName: aws.String(l.Table),
		TimeToLiveSpecification: &ddbtypes.TimeToLiveSpecification{AttributeName: aws.String("expires_at"), Enabled: aws.Bool(true)}})
	var api smithy.APIError
	if err != nil && errors.As(err, &api) && api.ErrorCode() == "UnknownOperationException" {
		// An implementation without TTL (dynalite predates it): nothing expires by itself, but
		// every read filters on expires_at, so expired items only take space.
		return nil
	}
	if err != nil && !strings.Contains(err.Error(), "already enabled") {
		return fmt.Errorf("enable TTL on %s: %w", l.Table, err)
	}
	return nil
}
