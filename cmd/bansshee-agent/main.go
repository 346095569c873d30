// Command bansshee-agent is the per-instance daemon: run, check, uninstall.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/bansshee/bansshee/agent"
	"github.com/bansshee/bansshee/agent/firewall"
	"github.com/bansshee/bansshee/internal/cli"
	"github.com/bansshee/bansshee/internal/flagconf"
	"github.com/bansshee/bansshee/proto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
)

var version = "dev"

type options struct {
	instanceID, queuePrefix, queueURL string
	publicKeys, allow                 []string
	stateDir, table, metricsAddr      string
	endpoint, region, configFile      string
	logLevel, iptablesMode, forward   string
	reconcile, window, keepAlive      time.Duration
	pollWait                          int
}

func main() {
	o := &options{}
	root := &cobra.Command{
		Use:   "bansshee-agent",
		Short: "bansshee's per-instance daemon: applies fleet-wide bans to this instance's firewall",
		Long: `bansshee-agent long-polls this instance's SQS queue (bansshee-<instance-id>.fifo), verifies each
command's Ed25519 signature, and applies bans and rate limits to its own iptables chain (BANSSHEE)
and ipset sets. Bans stay in the kernel when the agent stops, and come back from its state file
before the first poll after a reboot.

Every flag can also be set by environment (BANSSHEE_<FLAG>, e.g. BANSSHEE_STATE_DIR) or in the YAML
file given by --config (flag names as keys). Flags win over environment over file.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	run := &cobra.Command{Use: "run", Short: "restore the saved bans, then poll the queue and keep the kernel in line", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAgent(cmd.Context(), o) }}
	f := run.Flags()
	f.StringVar(&o.instanceID, "instance-id", "", "this instance's id (default: from IMDSv2)")
	f.StringVar(&o.queuePrefix, "queue-prefix", "bansshee", "queue name prefix: the queue is <prefix>-<instance-id>.fifo")
	f.StringVar(&o.queueURL, "queue-url", "", "queue URL, instead of looking it up by name")
	f.StringSliceVar(&o.publicKeys, "public-key", nil, "file of trusted public keys, lines \"KEY-ID BASE64\" (repeatable; several keys for rotation)")
	f.StringSliceVar(&o.allow, "allow", nil, "admin CIDRs that no ban may cover (repeatable); own addresses, loopback and link-local are always allowed")
	f.StringVar(&o.table, "table", "bansshee", "ledger table for the status heartbeat (empty: none)")
	f.DurationVar(&o.reconcile, "reconcile-interval", 30*time.Second, "how often the kernel is compared with the desired state and repaired")
	f.DurationVar(&o.keepAlive, "heartbeat-keepalive", 4*time.Minute, "an unchanged status is written again after this long (changes are written at once)")
	f.IntVar(&o.pollWait, "poll-wait", 20, "long-poll wait in seconds (1-20); new messages arrive at once either way")
	f.DurationVar(&o.window, "replay-window", 15*time.Minute, "messages issued longer ago than this (or that far in the future) are refused")
	f.StringVar(&o.metricsAddr, "metrics-addr", "127.0.0.1:9749", "address of /metrics and /healthz (empty: off)")
	f.StringVar(&o.endpoint, "endpoint-url", "", "AWS endpoint override (an emulator)")
	f.StringVar(&o.region, "region", "", "AWS region (default: from the environment, profile or IMDS)")
	for _, c := range []*cobra.Command{run} {
		c.Flags().StringVar(&o.configFile, "config", "", "YAML file with options (keys are flag names)")
	}
	for _, c := range []*cobra.Command{run, uninstallCmd(o), checkCmd(o)} {
		c.Flags().StringVar(&o.stateDir, "state-dir", "/var/lib/bansshee", "where state.json lives")
		c.Flags().StringVar(&o.iptablesMode, "iptables-mode", "", "force the iptables backend: nft or legacy (default: detect)")
		c.Flags().StringVar(&o.forward, "forward", firewall.ForwardDNAT, "forwarded traffic the bans and limits also cover: dnat (connections a local DNAT sent on: published container ports, NodePorts), all (the host as router or NAT too), or off")
		c.Flags().StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
		c.PreRunE = func(cmd *cobra.Command, _ []string) error {
			return flagconf.Apply(cmd.Flags(), "BANSSHEE_", o.configFile)
		}
		root.AddCommand(c)
	}
	root.AddCommand(&cobra.Command{Use: "version", Short: "print the version", Run: func(*cobra.Command, []string) { fmt.Println(version) }})
	root.Version = version
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "bansshee-agent: %v\n", err)
		os.Exit(1)
	}
}

func parseCIDRs(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		p, err := proto.ParseCIDR(s)
		if err != nil {
			return nil, fmt.Errorf("--allow: %w", err)
		}
		if p.Bits() == 0 {
			// Allowing everything would switch every ban and rate limit off without a word.
			return nil, fmt.Errorf("--allow %s: would allow every address, and so disable every ban", s)
		}
		out = append(out, p)
	}
	return out, nil
}

func runAgent(ctx context.Context, o *options) error {
	log := cli.Logger(o.logLevel)
	if os.Getenv("GOGC") == "" {
		// The agent is idle almost always and holds one large map: trade a little GC work for a
		// heap that stays close to what it holds (set GOGC to override).
		debug.SetGCPercent(50)
	}
	if o.pollWait < 1 || o.pollWait > 20 {
		return fmt.Errorf("--poll-wait %d: want 1 to 20 seconds", o.pollWait)
	}
	if len(o.publicKeys) == 0 {
		return errors.New("--public-key is required: the agent applies only signed commands")
	}
	keys, err := proto.LoadPublicKeys(o.publicKeys...)
	if err != nil {
		return err
	}
	admin, err := parseCIDRs(o.allow)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.stateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	cfg, err := cli.AWSConfig(ctx, o.endpoint, o.region) // on EC2 without a region: IMDS's
	if err != nil {
		return err
	}
	var vpcSource func(context.Context) ([]netip.Prefix, error)
	if o.instanceID == "" {
		if o.instanceID, err = instanceFromIMDS(ctx, imds.NewFromConfig(cfg)); err != nil {
			return err
		}
		// On EC2: the VPC's ranges join the kernel allowlist, as they do the controller's; the
		// agent reads them (again, each reconcile pass, until IMDS answers).
		imdsc := imds.NewFromConfig(cfg)
		vpcSource = func(ctx context.Context) ([]netip.Prefix, error) { return vpcFromIMDS(ctx, imdsc) }
	}
	// What IAM knows this agent as (aws:userid): its status item is keyed by it, which the agent
	// role's policy allows for its own principal only.
	principal := o.instanceID
	{
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		id, err := sts.NewFromConfig(cfg).GetCallerIdentity(sctx, &sts.GetCallerIdentityInput{})
		cancel()
		if err != nil {
			log.Warn("caller identity unknown; status keyed by instance id", "err", err)
		} else {
			principal = proto.StatusPrincipal(aws.ToString(id.UserId), o.instanceID)
		}
	}
	fw, err := firewall.New(firewall.Config{Mode: o.iptablesMode, Forward: o.forward, Log: log})
	if err != nil {
		return err
	}
	log.Info("starting", "version", version, "instance", o.instanceID, "iptables", fw.Mode(), "keys", len(keys))
	table := o.table
	a, err := agent.New(agent.Config{InstanceID: o.instanceID, Principal: principal, QueuePrefix: o.queuePrefix, QueueURL: o.queueURL, Keys: keys,
		AdminCIDRs: admin, VPCSource: vpcSource, StateDir: o.stateDir, Table: table, ReconcileInterval: o.reconcile, KeepAlive: o.keepAlive, WaitSeconds: int32(o.pollWait), Window: o.window, Version: version, Log: log},
		sqs.NewFromConfig(cfg), dynamodb.NewFromConfig(cfg), fw)
	if err != nil {
		return err
	}
	if o.metricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(a.Metrics.Registry, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if err := a.Healthy(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		srv := &http.Server{Addr: o.metricsAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server", "err", err)
			}
		}()
		defer srv.Close()
	}
	err = a.Run(ctx)
	log.Info("stopped; rules stay in the kernel")
	return err
}

// instanceFromIMDS asks IMDSv2 (session token, then the instance id) with a deadline.
func instanceFromIMDS(ctx context.Context, c *imds.Client) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := c.GetMetadata(ctx, &imds.GetMetadataInput{Path: "instance-id"})
	if err != nil {
		return "", fmt.Errorf("instance id from IMDSv2 (give --instance-id off EC2): %w", err)
	}
	defer out.Content.Close()
	b, err := io.ReadAll(io.LimitReader(out.Content, 64))
	if err != nil {
		return "", fmt.Errorf("instance id from IMDSv2: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if !strings.HasPrefix(id, "i-") {
		return "", fmt.Errorf("IMDSv2 returned %q, not an instance id", id)
	}
	return id, nil
}

// vpcFromIMDS reads the VPC CIDR blocks (IPv4 and IPv6) of every network interface.
func vpcFromIMDS(ctx context.Context, c *imds.Client) ([]netip.Prefix, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	get := func(path string) (string, error) {
		out, err := c.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
		if err != nil {
			return "", err
		}
		defer out.Content.Close()
		b, err := io.ReadAll(io.LimitReader(out.Content, 64<<10))
		return string(b), err
	}
	macs, err := get("network/interfaces/macs/")
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, mac := range strings.Fields(macs) {
		mac = strings.TrimSuffix(mac, "/")
		for _, key := range []string{"vpc-ipv4-cidr-blocks", "vpc-ipv6-cidr-blocks"} {
			text, err := get("network/interfaces/macs/" + mac + "/" + key)
			if err != nil {
				continue // an interface without IPv6 has no such key
			}
			for _, f := range strings.Fields(text) {
				p, err := proto.ParseCIDR(f)
				if err != nil || p.Bits() == 0 {
					return nil, fmt.Errorf("IMDS %s of %s: %q is not a VPC CIDR", key, mac, f)
				}
				if !slices.Contains(out, p) {
					out = append(out, p)
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("IMDS lists no VPC CIDR block")
	}
	return out, nil
}

func uninstallCmd(o *options) *cobra.Command {
	return &cobra.Command{Use: "uninstall", Short: "remove every trace: jumps, chains, sets and the state file", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fw, err := firewall.New(firewall.Config{Mode: o.iptablesMode, Forward: o.forward})
			if err != nil {
				return err
			}
			if err := fw.Uninstall(cmd.Context()); err != nil {
				return err
			}
			if err := os.Remove(filepath.Join(o.stateDir, "state.json")); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			fmt.Println("bansshee removed: chains, jumps, sets and state file")
			return nil
		}}
}

// sqsMessage is a message as `aws sqs receive-message` prints it.
type sqsMessage struct {
	Body              string
	MessageAttributes map[string]struct{ StringValue string }
}

func checkCmd(o *options) *cobra.Command {
	var file string
	var keyFiles []string
	var hooks bool
	c := &cobra.Command{Use: "check --file MSG.json --public-key KEYS", Short: "verify and validate one message and print what it would change",
		Long: `check reads one message as 'aws sqs receive-message' prints it (an object with Body and
MessageAttributes, or the whole {"Messages":[...]} answer), verifies its signature, decodes and
validates it, and prints what applying it to the state in --state-dir would change. It exits 1
with a one-line reason for a message the agent would refuse.

check --hooks instead lists the jumps into bansshee's chains: INPUT -> BANSSHEE, and for forwarded
traffic (containers, NodePorts) DOCKER-USER -> BANSSHEE-FWD when Docker is present, else
FORWARD -> BANSSHEE-FWD. It exits 1 naming the hooks that --forward needs and that are missing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if hooks {
				return printHooks(cmd.Context(), o, cmd.OutOrStdout())
			}
			if file == "" || len(keyFiles) == 0 {
				return errors.New("check needs --file and --public-key (or --hooks)")
			}
			raw, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			var wrap struct{ Messages []sqsMessage }
			var msg sqsMessage
			if json.Unmarshal(raw, &wrap) == nil && len(wrap.Messages) > 0 {
				msg = wrap.Messages[0]
			} else if err := json.Unmarshal(raw, &msg); err != nil || msg.Body == "" {
				return fmt.Errorf("%s: want a message with Body and MessageAttributes", file)
			}
			keys, err := proto.LoadPublicKeys(keyFiles...)
			if err != nil {
				return err
			}
			attrs := map[string]string{}
			for k, v := range msg.MessageAttributes {
				attrs[k] = v.StringValue
			}
			m, err := (&proto.Verifier{Keys: keys}).Decode([]byte(msg.Body), attrs)
			if err != nil {
				return fmt.Errorf("refused (%s): %w", proto.Reason(err), err)
			}
			st, err := agent.Load(filepath.Join(o.stateDir, "state.json"))
			if err != nil {
				return err
			}
			ch := st.Apply(m, time.Now())
			fmt.Printf("message %s: kind %s, rev %d: valid\n", m.ID, m.Kind, m.Rev)
			var lines []string
			for _, b := range ch.Added {
				lines = append(lines, fmt.Sprintf("  + ban %s until %s (%s)", b.CIDR, expiry(b.ExpiresAt), b.Reason))
			}
			for _, p := range ch.Removed {
				lines = append(lines, fmt.Sprintf("  - ban %s", p))
			}
			sort.Strings(lines)
			if ch.Full {
				lines = append(lines, fmt.Sprintf("  = sync: %d bans, %d limits", st.BanCount(), len(st.Limits)))
			}
			if ch.Limits {
				lines = append(lines, fmt.Sprintf("  ~ rate limits: %d policies", len(st.Limits)))
			}
			if len(lines) == 0 {
				lines = append(lines, "  (no change: the state already holds this revision or newer)")
			}
			for _, l := range lines {
				fmt.Println(l)
			}
			return nil
		}}
	c.Flags().StringVar(&file, "file", "", "the message file (required unless --hooks)")
	c.Flags().StringSliceVar(&keyFiles, "public-key", nil, "file of trusted public keys (required unless --hooks)")
	c.Flags().BoolVar(&hooks, "hooks", false, "report the jumps into bansshee's chains (INPUT, FORWARD, DOCKER-USER) instead; exit 1 if one is missing")
	return c
}

// printHooks prints the jumps into our chains and exits non-zero when one the mode needs is missing.
func printHooks(ctx context.Context, o *options, w io.Writer) error {
	fw, err := firewall.New(firewall.Config{Mode: o.iptablesMode, Forward: o.forward})
	if err != nil {
		return err
	}
	rep, err := fw.Hooks(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "iptables backend %s, forward mode %s\n", fw.Mode(), rep.Mode)
	for _, fam := range []string{"ipv4", "ipv6"} {
		docker := "no Docker"
		if rep.Docker[fam] {
			docker = "Docker present (FORWARD jumps to DOCKER-USER)"
		}
		fmt.Fprintf(w, "%s: %s\n", fam, docker)
		for _, h := range rep.Hooks {
			if h.Family == fam {
				fmt.Fprintf(w, "  %s rule %d -> %s: %s\n", h.From, h.Position, h.To, h.Rule)
			}
		}
	}
	if len(rep.Missing) > 0 {
		return fmt.Errorf("hooks missing: %s", strings.Join(rep.Missing, "; "))
	}
	fmt.Fprintln(w, "all hooks in place")
	return nil
}

func expiry(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Format(time.RFC3339)
}
