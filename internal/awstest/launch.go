package awstest

import (
	"context"
	"sort"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

func launch(ctx context.Context, c *ec2.Client, tags map[string]string, groups ...string) (string, error) {
	var ts []types.Tag
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ts = append(ts, types.Tag{Key: aws.String(k), Value: aws.String(tags[k])})
	}
	out, err := c.RunInstances(ctx, &ec2.RunInstancesInput{
		ImageId: aws.String("ami-0bansshee"), InstanceType: types.InstanceTypeT3Micro, MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeInstance, Tags: ts}},
		SecurityGroupIds:  groups,
	})
	if err != nil {
		return "", err
	}
	return aws.ToString(out.Instances[0].InstanceId), nil
}

// LaunchInGroups is Launch with the instance in security groups (ids).
func LaunchInGroups(ctx context.Context, c *ec2.Client, tags map[string]string, groups ...string) (string, error) {
	return launch(ctx, c, tags, groups...)
}
