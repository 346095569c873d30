// Command bansshee-lambda is the Lambda entry point (provided.al2023 "bootstrap"): CloudWatch
// Logs jails, CloudWatch alarms, GuardDuty findings, schedules and direct invokes become bans.
// Run locally: bansshee-lambda invoke --event EVENT.json [--dry-run].
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/wafv2"
	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/controller/trigger"
	"github.com/bansshee/bansshee/internal/cli"
	"github.com/bansshee/bansshee/proto"
)

const usage = `bansshee-lambda: the bansshee Lambda handler.

In AWS Lambda (provided.al2023) it serves events. Locally:

  bansshee-lambda invoke --event EVENT.json [--dry-run] [--endpoint-url URL]

prints the decisions as JSON: {"bans":[...],"ignored":[...]}. With --dry-run nothing is written
and jail counts live only for this run.

The event {"bansshee":"refresh-feeds"} (the stack's feed schedule) refreshes the blocklist feeds
that are due, in an invocation of its own; the 1-minute schedule's passes never fetch feeds.

  bansshee-lambda test-jail --jail NAME --log FILE [--config FILE]

runs one jail on every line of a log file (- for stdin) and prints, per line, the address found
and how many failures it counts, or why not, like fail2ban-regex, then the failures per address
with the file read as one log stream (a failed SSH connection counts once, when it ends; nothing
on a connection that logs in counts). Lines may be syslog (RFC 3164, RFC 3339, RFC 5424), bare
"tag[pid]: msg", journalctl -o short-iso or -o json (fluent-bit's and vector's journald records
too) or Dovecot's own log file. NAME is a configured jail or a built-in one (sshd, dovecot, cyrus,
postfix-sasl, pam-generic).

Configuration (environment):
  BANSSHEE_TABLE                 ledger table (default bansshee)
  BANSSHEE_QUEUE_PREFIX          queue prefix (default bansshee)
  BANSSHEE_KEY_SSM | BANSSHEE_KEY_FILE
                                 signing key: an SSM SecureString parameter name, or a file
  BANSSHEE_TRIGGER_CONFIG | BANSSHEE_TRIGGER_CONFIG_FILE | BANSSHEE_TRIGGER_CONFIG_SSM
                                 jails, alarms, GuardDuty: JSON text, a file, or an SSM parameter
  BANSSHEE_ADMIN_CIDRS           comma-separated CIDRs never to ban (the VPC CIDRs always are)
  BANSSHEE_MANAGED               selector of managed instances (default bansshee:managed=true)
  BANSSHEE_GUARDDUTY_BANS        true|false: ban GuardDuty findings' attackers (overrides the config)
  BANSSHEE_AGENT_ROLE_ID         the agent role's id (AROA...): queues admit only their own instance
  BANSSHEE_NOTICE_TOPIC          SNS topic ARN for ban notices (at most one message per 30 s)
  BANSSHEE_REPEAT                repeat offenders: factor=2,max=7d,forget=30d (the defaults)
  BANSSHEE_HISTORY_RETENTION     how long history events are kept (default 90d)
`

func main() {
	cli.TuneGC(0) // GOGC 400 within three quarters of the function's memory
	log := cli.Logger(envOr("BANSSHEE_LOG_LEVEL", "info"))
	slog.SetDefault(log)
	if len(os.Args) > 1 && os.Args[1] == "invoke" {
		os.Exit(invoke(os.Args[2:], os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == "test-jail" {
		os.Exit(testJail(os.Args[2:], os.Stdout, os.Stderr))
	}
	if os.Getenv("AWS_LAMBDA_RUNTIME_API") == "" {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx := context.Background()
	h, err := build(ctx, log, "", false)
	if err != nil {
		// A bad configuration fails the cold start loudly, not each event quietly.
		log.Error("cold start", "err", err)
		os.Exit(1)
	}
	h.EMF = os.Stdout // CloudWatch embedded metric format: metrics from log lines, no extra calls
	lambda.Start(func(ctx context.Context, raw json.RawMessage) (*trigger.Output, error) {
		return handle(ctx, h, raw)
	})
}

// FeedEvent is the constant input of the stack's feed schedule. Feed refreshes run in an
// invocation of their own, never in a reconcile pass: a feed that fails, hangs or is huge cannot
// stop the passes that create new instances' queues and send repair syncs.
const FeedEvent = `{"bansshee":"refresh-feeds"}`

// handle runs one event: the feed schedule's here, every other through the trigger handler.
func handle(ctx context.Context, h *trigger.Handler, raw json.RawMessage) (*trigger.Output, error) {
	var ev struct {
		Bansshee string `json:"bansshee"`
	}
	if json.Unmarshal(raw, &ev) != nil || ev.Bansshee != "refresh-feeds" {
		return h.Handle(ctx, raw)
	}
	out := &trigger.Output{Kind: "feeds", Bans: []trigger.Decision{}, Ignored: []trigger.Ignored{}}
	c, ok := h.Actor.(*controller.Controller)
	if !ok {
		out.Ignored = append(out.Ignored, trigger.Ignored{Reason: "dry run: feeds were not refreshed"})
		return out, nil
	}
	reps, err := c.RefreshFeeds(ctx, controller.FeedOptions{})
	for _, r := range reps {
		out.Feeds = append(out.Feeds, r.String())
	}
	return out, err
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func invoke(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("invoke", flag.ContinueOnError)
	fs.SetOutput(stderr)
	event := fs.String("event", "", "event JSON file (- for stdin)")
	dry := fs.Bool("dry-run", false, "decide only: write nothing, count in memory")
	endpoint := fs.String("endpoint-url", "", "AWS endpoint override")
	fs.Usage = func() { fmt.Fprint(stderr, usage, "\nflags:\n"); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *event == "" {
		fmt.Fprintln(stderr, "bansshee-lambda invoke: --event is required")
		return 2
	}
	var raw []byte
	var err error
	if *event == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(*event)
	}
	if err != nil {
		fmt.Fprintf(stderr, "bansshee-lambda invoke: %v\n", err)
		return 2
	}
	ctx := context.Background()
	h, err := build(ctx, slog.New(slog.NewTextHandler(stderr, nil)), *endpoint, *dry)
	if err != nil {
		fmt.Fprintf(stderr, "bansshee-lambda invoke: %v\n", err)
		return 2
	}
	out, err := handle(ctx, h, raw)
	if out != nil {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
	}
	if err != nil {
		fmt.Fprintf(stderr, "bansshee-lambda invoke: %v\n", err)
		if errors.Is(err, trigger.ErrUnknownEvent) {
			return 2
		}
		return 1
	}
	return 0
}

// build reads the configuration and wires the handler; dry runs need no AWS at all.
func build(ctx context.Context, log *slog.Logger, endpoint string, dry bool) (*trigger.Handler, error) {
	var cfgText []byte
	var ssmc *ssm.Client
	getSSM := func(name string) (string, error) {
		if ssmc == nil {
			awsCfg, err := cli.AWSConfig(ctx, endpoint, "")
			if err != nil {
				return "", err
			}
			ssmc = ssm.NewFromConfig(awsCfg)
		}
		out, err := ssmc.GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String(name), WithDecryption: aws.Bool(true)})
		if err != nil {
			return "", fmt.Errorf("SSM parameter %s: %w", name, err)
		}
		return aws.ToString(out.Parameter.Value), nil
	}
	switch {
	case os.Getenv("BANSSHEE_TRIGGER_CONFIG") != "":
		cfgText = []byte(os.Getenv("BANSSHEE_TRIGGER_CONFIG"))
	case os.Getenv("BANSSHEE_TRIGGER_CONFIG_FILE") != "":
		b, err := os.ReadFile(os.Getenv("BANSSHEE_TRIGGER_CONFIG_FILE"))
		if err != nil {
			return nil, err
		}
		cfgText = b
	case os.Getenv("BANSSHEE_TRIGGER_CONFIG_SSM") != "":
		v, err := getSSM(os.Getenv("BANSSHEE_TRIGGER_CONFIG_SSM"))
		if err != nil {
			return nil, err
		}
		cfgText = []byte(v)
	}
	tcfg, err := trigger.ParseConfig(cfgText)
	if err != nil {
		return nil, err
	}
	// The stack's GuardDutyBans parameter (one switch) overrides the configuration text.
	switch v := os.Getenv("BANSSHEE_GUARDDUTY_BANS"); v {
	case "true":
		tcfg.GuardDuty.Enabled = true
	case "false":
		tcfg.GuardDuty.Enabled = false
	case "":
	default:
		return nil, fmt.Errorf("BANSSHEE_GUARDDUTY_BANS=%q: want true or false", v)
	}
	h := &trigger.Handler{Cfg: tcfg, Log: log, Counter: &trigger.MemCounter{}}
	if dry {
		return h, nil
	}
	var keyText string
	switch {
	case os.Getenv("BANSSHEE_KEY_SSM") != "":
		if keyText, err = getSSM(os.Getenv("BANSSHEE_KEY_SSM")); err != nil {
			return nil, err
		}
	case os.Getenv("BANSSHEE_KEY_FILE") != "":
		b, err := os.ReadFile(os.Getenv("BANSSHEE_KEY_FILE"))
		if err != nil {
			return nil, err
		}
		keyText = string(b)
	default:
		return nil, errors.New("no signing key: set BANSSHEE_KEY_SSM or BANSSHEE_KEY_FILE (or use --dry-run)")
	}
	signer, err := proto.ParsePrivate(keyText)
	if err != nil {
		return nil, err
	}
	var admin []netip.Prefix
	for _, a := range strings.Split(os.Getenv("BANSSHEE_ADMIN_CIDRS"), ",") {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		p, err := proto.ParseCIDR(a)
		if err != nil {
			return nil, fmt.Errorf("BANSSHEE_ADMIN_CIDRS: %w", err)
		}
		admin = append(admin, p)
	}
	repeat, err := controller.ParseRepeat(os.Getenv("BANSSHEE_REPEAT"))
	if err != nil {
		return nil, fmt.Errorf("BANSSHEE_REPEAT: %w", err)
	}
	var retention time.Duration
	if v := os.Getenv("BANSSHEE_HISTORY_RETENTION"); v != "" {
		if retention, err = controller.ParseDays(v); err != nil {
			return nil, fmt.Errorf("BANSSHEE_HISTORY_RETENTION: %w", err)
		}
	}
	awsCfg, err := cli.AWSConfig(ctx, endpoint, "")
	if err != nil {
		return nil, err
	}
	table := envOr("BANSSHEE_TABLE", "bansshee")
	c, err := controller.New(controller.Config{EC2: ec2.NewFromConfig(awsCfg), SQS: sqs.NewFromConfig(awsCfg), DDB: dynamodb.NewFromConfig(awsCfg),
		Table: table, Prefix: envOr("BANSSHEE_QUEUE_PREFIX", "bansshee"), Signer: signer, Admin: admin,
		Managed: envOr("BANSSHEE_MANAGED", "bansshee:managed=true"), AgentRoleID: os.Getenv("BANSSHEE_AGENT_ROLE_ID"), Log: log,
		NoticeTopic: os.Getenv("BANSSHEE_NOTICE_TOPIC"), SNS: cli.NewPublisher(awsCfg), Repeat: repeat, HistoryRetention: retention,
		FeedsApart: true,                         // the feed schedule's own invocations (handle) refresh feeds
		WAF:        wafv2.NewFromConfig(awsCfg)}) // edges: the scheduled reconcile removes expiries from WAF IP sets
	if err != nil {
		return nil, err
	}
	h.Actor = c
	h.Logs = cloudwatchlogs.NewFromConfig(awsCfg)
	h.Counter = &trigger.LedgerCounter{DDB: c.Ledger.DDB, Table: table}
	return h, nil
}

// testJail is fail2ban-regex for bansshee jails.
func testJail(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("test-jail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("jail", "", "jail name (configured or built-in)")
	logFile := fs.String("log", "", "log file, one line per event (- for stdin)")
	cfgFile := fs.String("config", "", "trigger configuration JSON file (default: BANSSHEE_TRIGGER_CONFIG(_FILE), else the built-in jails)")
	fs.Usage = func() { fmt.Fprint(stderr, usage, "\nflags:\n"); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *name == "" || *logFile == "" {
		fmt.Fprintln(stderr, "bansshee-lambda test-jail: --jail and --log are required")
		return 2
	}
	var text []byte
	var err error
	switch {
	case *cfgFile != "":
		text, err = os.ReadFile(*cfgFile)
	case os.Getenv("BANSSHEE_TRIGGER_CONFIG") != "":
		text = []byte(os.Getenv("BANSSHEE_TRIGGER_CONFIG"))
	case os.Getenv("BANSSHEE_TRIGGER_CONFIG_FILE") != "":
		text, err = os.ReadFile(os.Getenv("BANSSHEE_TRIGGER_CONFIG_FILE"))
	}
	if err != nil {
		fmt.Fprintf(stderr, "bansshee-lambda test-jail: %v\n", err)
		return 2
	}
	cfg, err := trigger.ParseConfig(text)
	if err != nil {
		fmt.Fprintf(stderr, "bansshee-lambda test-jail: %v\n", err)
		return 2
	}
	var jail *trigger.Jail
	for i := range cfg.Jails {
		if cfg.Jails[i].Name == *name {
			jail = &cfg.Jails[i]
		}
	}
	if jail == nil {
		// Not configured: a built-in of that name, with the defaults.
		bcfg, err := trigger.ParseConfig([]byte(fmt.Sprintf(`{"jails":[{"name":%q,"builtin":%q}]}`, *name, *name)))
		if err != nil {
			fmt.Fprintf(stderr, "bansshee-lambda test-jail: no jail %q configured, and %v\n", *name, err)
			return 2
		}
		jail = &bcfg.Jails[0]
	}
	var in io.Reader = os.Stdin
	if *logFile != "-" {
		f, err := os.Open(*logFile)
		if err != nil {
			fmt.Fprintf(stderr, "bansshee-lambda test-jail: %v\n", err)
			return 2
		}
		defer f.Close()
		in = f
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	lines, matched := 0, 0
	shapes := map[string]int{}
	var vs []trigger.Verdict
	for sc.Scan() {
		lines++
		v := jail.Check(sc.Text())
		shapes[v.Rec.Shape]++
		switch {
		case v.Count > 0:
			a := netip.MustParseAddr(v.Addr)
			if err := proto.CheckNeverBan(netip.PrefixFrom(a, a.BitLen())); err != nil {
				fmt.Fprintf(stdout, "%d: %s x%d (%s) NOT BANNABLE: %v\n", lines, v.Addr, v.Count, v.Why, err)
				continue
			}
			matched++
			vs = append(vs, v)
			fmt.Fprintf(stdout, "%d: %s x%d (%s)\n", lines, v.Addr, v.Count, v.Why)
		case v.Kind != trigger.KindNone:
			vs = append(vs, v)
			what := map[trigger.Kind]string{trigger.KindMarker: "a failed connection: one failure, once",
				trigger.KindRefused: "a refused key: one failure if its connection ends without logging in",
				trigger.KindEndUser: "the end of a failed connection: one failure, unless its attempts were counted",
				trigger.KindEnd:     "the end of a connection: one failure if it failed before",
				trigger.KindSuccess: "logged in: nothing on this connection counts"}[v.Kind]
			fmt.Fprintf(stdout, "%d: ~ %s %s [%s] (%s)\n", lines, v.Addr, v.Kind, trigger.ConnKey(v.Rec), what)
		case v.Addr != "":
			fmt.Fprintf(stdout, "%d: - %s: %s\n", lines, v.Addr, v.Why)
		default:
			fmt.Fprintf(stdout, "%d: - %s\n", lines, v.Why)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(stderr, "bansshee-lambda test-jail: read %s: %v\n", *logFile, err)
		return 1
	}
	// The whole file as one log stream: connections are followed across its lines, and end with it.
	t := jail.TallyAll(vs)
	var shapeList []string
	for sh, n := range shapes {
		if sh == "" {
			sh = "no tag"
		}
		shapeList = append(shapeList, fmt.Sprintf("%s %d", sh, n))
	}
	sort.Strings(shapeList)
	fmt.Fprintf(stdout, "\njail %s: %d lines (%s), %d failure lines, %d addresses (maxretry %d)\n", jail.Name, lines, strings.Join(shapeList, ", "), matched, len(t.Order), jail.MaxRetry)
	for _, a := range t.Order {
		mark := ""
		if t.Hits[a] >= jail.MaxRetry {
			mark = "  would be banned"
		}
		fmt.Fprintf(stdout, "  %s: %d failures%s\n", a, t.Hits[a], mark)
	}
	return 0
}
