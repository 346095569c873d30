package cli

import (
	"context"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
)

// Publisher publishes ban notices to SNS (controller.Publisher).
type Publisher struct{ SNS *sns.Client }

// NewPublisher is a Publisher on cfg.
func NewPublisher(cfg aws.Config) *Publisher { return &Publisher{SNS: sns.NewFromConfig(cfg)} }

// Publish sends one message to topic.
func (p *Publisher) Publish(ctx context.Context, topic, subject, message string) error {
	_, err := p.SNS.Publish(ctx, &sns.PublishInput{TopicArn: aws.String(topic), Subject: aws.String(subject), Message: aws.String(message)})
	return err
}
