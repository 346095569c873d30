package trigger

import (
	"errors"

	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

func asCCF(err error, target **ddbtypes.ConditionalCheckFailedException) bool {
	return errors.As(err, target)
}
