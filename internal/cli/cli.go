// Package cli holds what bansshee's commands share: logging set-up and AWS configuration.
package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"golang.org/x/term"
)

// Logger returns a slog logger: text on a terminal, JSON otherwise.
func Logger(level string) *slog.Logger {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	if term.IsTerminal(int(os.Stderr.Fd())) {
		return slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, opts))
}

// AWSConfig loads the standard AWS configuration (environment, profiles, instance role) with an
// optional endpoint and region override, bounded HTTP timeouts and SDK retries with backoff. With
// no region configured (flag, AWS_REGION, profile) it asks the instance metadata service, as an
// agent or a CLI on EC2 expects (the SDK does not unless asked to).
func AWSConfig(ctx context.Context, endpoint, region string) (aws.Config, error) {
	opts := []func(*config.LoadOptions) error{
		// Above the 20 s long poll. A buildable client keeps AWS_CA_BUNDLE working.
		// Keep enough idle connections for a fan-out's concurrency: the SDK's default of 10 per
		// host makes a 64-wide fan-out open (and TLS-handshake) connections all the time.
		config.WithHTTPClient(awshttp.NewBuildableClient().WithTimeout(40 * time.Second).WithTransportOptions(func(t *http.Transport) {
			t.MaxIdleConns, t.MaxIdleConnsPerHost = 512, 256
		})),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) { o.MaxAttempts = 5; o.MaxBackoff = 10 * time.Second })
		}),
	}
	if region != "" {
		opts = append(opts, config.WithRegion(region))
	} else {
		opts = append(opts, config.WithEC2IMDSRegion())
	}
	// Bounded: off EC2 the metadata service does not answer.
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cfg, err := config.LoadDefaultConfig(lctx, opts...)
	if err != nil {
		return cfg, fmt.Errorf("load AWS configuration: %w", err)
	}
	if endpoint != "" {
		cfg.BaseEndpoint = aws.String(endpoint)
	}
	if cfg.Region == "" {
		return cfg, fmt.Errorf("no AWS region: set --region or AWS_REGION (on EC2 the instance metadata service did not answer)")
	}
	return cfg, nil
}
