package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/wafv2"
	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/internal/cli"
	"github.com/bansshee/bansshee/internal/flagconf"
	"github.com/bansshee/bansshee/proto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
)

type globals struct {
	endpoint, region, table, prefix, keyFile, logLevel, managed string
	agentRoleID, feedCA                                         string
	maxInstanceAddrs                                            uint64
	admin                                                       []string
	noVPCAllow                                                  bool
	concurrency                                                 int
	noticeTopic, repeat, historyRetention                       string
	aws                                                         *aws.Config // set by controller()
}

type usageError struct{ error }

func isUsage(err error) bool {
	var u usageError
	return errors.As(err, &u) || strings.HasPrefix(err.Error(), "unknown flag") || strings.HasPrefix(err.Error(), "unknown command") ||
		strings.Contains(err.Error(), "flag needs an argument") || strings.Contains(err.Error(), "invalid argument") ||
		strings.Contains(err.Error(), "accepts ") || strings.Contains(err.Error(), "requires at least")
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "bansshee",
		Short: "fleet-wide IP bans for Amazon EC2",
		Long: `bansshee bans attacking addresses on every EC2 instance a tag selector picks, within a second,
through a signed message to each instance's SQS queue and the bansshee-agent there.

Selectors: Role=mail   Role=mail,Env=prod   Env!=dev   Role in (mail,web)   has(Team)   *
Every flag can also come from the environment as BANSSHEE_<FLAG> (e.g. BANSSHEE_TABLE); the
standard AWS environment and profiles apply (AWS_PROFILE, AWS_REGION, ...).

Exit codes: 0 done; 1 AWS or runtime error; 2 bad input or refused (nothing written);
3 written, but some instances did not confirm it.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := flagconf.Apply(cmd.Flags(), "BANSSHEE_", ""); err != nil {
				return usageError{err}
			}
			return nil
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&g.endpoint, "endpoint-url", "", "AWS endpoint override, as the AWS CLI's --endpoint-url (an emulator, LocalStack)")
	pf.StringVar(&g.region, "region", "", "AWS region (default: AWS_REGION or the profile)")
	pf.StringVar(&g.table, "table", "bansshee", "DynamoDB ledger table")
	pf.StringVar(&g.prefix, "queue-prefix", "bansshee", "SQS queue name prefix")
	pf.StringVar(&g.keyFile, "key", "", "signing key file (from 'bansshee keys gen'); needed to send bans")
	pf.StringSliceVar(&g.admin, "admin", nil, "admin CIDRs no ban may cover (repeatable)")
	pf.BoolVar(&g.noVPCAllow, "no-vpc-allow", false, "do not allowlist the VPC CIDRs (they are by default: load balancers and NAT speak from them)")
	pf.StringVar(&g.managed, "managed", "bansshee:managed=true", "selector every managed instance matches")
	pf.IntVar(&g.concurrency, "concurrency", 256, "parallel sends during fan-out and reconcile (each is one SQS connection; at 15 ms a request, 256 reach 10 000 queues in about 0.6 s of waiting)")
	pf.StringVar(&g.agentRoleID, "agent-role-id", "", "the agent role's id (stack output AgentRoleId): queues this command creates admit only their own instance")
	pf.StringVar(&g.logLevel, "log-level", "warn", "debug, info, warn or error")
	pf.Uint64Var(&g.maxInstanceAddrs, "max-instance-addresses", controller.DefaultInstanceMaxCoverage, "most IPv4 addresses (and IPv6 /64s) the bans and feeds of one instance may cover together; a feed version that would pass it is held")
	pf.StringVar(&g.feedCA, "feed-ca", "", "PEM file of extra CA certificates trusted for feed URLs (a private mirror)")
	pf.StringVar(&g.repeat, "repeat", "factor=2,max=7d,forget=30d", "repeat offenders: a trigger's n-th ban of an address within forget lasts its TTL x factor^(n-1), at most max")
	pf.StringVar(&g.historyRetention, "history-retention", "90d", "how long history events are kept")
	pf.StringVar(&g.noticeTopic, "notice-topic", "", "SNS topic ARN for ban notices (stack output NoticeTopicArn; empty: none)")
	root.AddCommand(allowCmd(g), whyCmd(g), historyCmd(g), feedCmd(g), edgeCmd(g), banCmd(g), unbanCmd(g), listCmd(g), statusCmd(g), targetsCmd(g), limitCmd(g), unlimitCmd(g), serveCmd(g), keysCmd(), initCmd(g))
	return root
}

func (g *globals) controller(ctx context.Context, needKey bool) (*controller.Controller, error) {
	var admin []netip.Prefix
	for _, a := range g.admin {
		p, err := proto.ParseCIDR(a)
		if err != nil {
			return nil, usageError{fmt.Errorf("--admin: %w", err)}
		}
		admin = append(admin, p)
	}
	var signer proto.Signer
	if needKey {
		if g.keyFile == "" {
			return nil, usageError{errors.New("--key is required to send commands (create one with 'bansshee keys gen')")}
		}
		b, err := os.ReadFile(g.keyFile)
		if err != nil {
			return nil, usageError{fmt.Errorf("--key: %w", err)}
		}
		if signer, err = proto.ParsePrivate(string(b)); err != nil {
			return nil, usageError{fmt.Errorf("--key %s: %w", g.keyFile, err)}
		}
	}
	cfg, err := cli.AWSConfig(ctx, g.endpoint, g.region)
	if err != nil {
		return nil, usageError{err}
	}
	var feedClient *http.Client
	if g.feedCA != "" {
		pem, err := os.ReadFile(g.feedCA)
		if err != nil {
			return nil, usageError{fmt.Errorf("--feed-ca: %w", err)}
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, usageError{fmt.Errorf("--feed-ca %s: no PEM certificate in it", g.feedCA)}
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		feedClient = &http.Client{Transport: tr, Timeout: controller.DefaultFeedTimeout}
	}
	repeat, err := controller.ParseRepeat(g.repeat)
	if err != nil {
		return nil, usageError{fmt.Errorf("--repeat: %w", err)}
	}
	retention, err := controller.ParseDays(g.historyRetention)
	if err != nil {
		return nil, usageError{fmt.Errorf("--history-retention: %w", err)}
	}
	g.aws = &cfg
	return controller.New(controller.Config{EC2: ec2.NewFromConfig(cfg), SQS: sqs.NewFromConfig(cfg), DDB: dynamodb.NewFromConfig(cfg),
		Table: g.table, Prefix: g.prefix, Signer: signer, Managed: g.managed, Admin: admin, SkipVPCAllow: g.noVPCAllow,
		Concurrency: g.concurrency, AgentRoleID: g.agentRoleID, MaxInstanceCoverage4: g.maxInstanceAddrs, MaxInstanceCoverage6: g.maxInstanceAddrs, FeedClient: feedClient, Log: cli.Logger(g.logLevel),
		NoticeTopic: g.noticeTopic, SNS: cli.NewPublisher(cfg), Repeat: repeat, HistoryRetention: retention,
		WAF: wafv2.NewFromConfig(cfg)})
}

func banCmd(g *globals) *cobra.Command {
	var target, reason string
	var ttl, timeout time.Duration
	var wait, force bool
	c := &cobra.Command{
		Use:   "ban CIDR...",
		Short: "ban addresses on every instance the target selects",
		Example: `  bansshee ban 174.132.223.252 --target Role=mail --ttl 2h --reason "pop3 brute force" --wait
  bansshee ban 2001:db8:bad::/48 --ttl 0        # permanent, every managed instance`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, true)
			if err != nil {
				return err
			}
			res, err := c.Ban(ctx, controller.BanRequest{CIDRs: args, Target: target, TTL: ttl, Reason: reason, Source: "cli:" + os.Getenv("USER"), Force: force, Operator: true, Who: g.who(ctx, cmd.ErrOrStderr())})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, u := range res.Unchanged {
				fmt.Fprintf(out, "%s: already banned for at least as long on %s\n", u, res.Selector)
			}
			if res.Written == 0 {
				return nil
			}
			fmt.Fprintf(out, "banned %d at revision %d on %s: sent to %d instances\n", res.Written, res.Rev, res.Selector, len(res.Instances))
			return finish(ctx, cmd.ErrOrStderr(), c, res, wait, timeout)
		},
	}
	f := c.Flags()
	f.StringVarP(&target, "target", "t", "*", "selector of the instances to ban on")
	f.DurationVar(&ttl, "ttl", 2*time.Hour, "how long the ban lasts (0: permanent)")
	f.StringVar(&reason, "reason", "", "why (shown in list and logs)")
	f.BoolVar(&force, "force", false, "allow prefixes broader than /16 (IPv4) or /48 (IPv6), and CIDRs an unban holds; /8 and /32 are never allowed")
	addWait(f, &wait, &timeout)
	return c
}

type flagSet interface {
	BoolVar(p *bool, name string, value bool, usage string)
	DurationVar(p *time.Duration, name string, value time.Duration, usage string)
}

func addWait(f flagSet, wait *bool, timeout *time.Duration) {
	f.BoolVar(wait, "wait", false, "wait until every targeted agent reports the new revision")
	f.DurationVar(timeout, "timeout", 30*time.Second, "with --wait: how long to wait")
}

// finish reports failed deliveries and, with --wait, waits for convergence.
func finish(ctx context.Context, stderr io.Writer, c *controller.Controller, res *controller.Result, wait bool, timeout time.Duration) error {
	var failed []string
	var ids []string
	for _, d := range res.Instances {
		ids = append(ids, d.InstanceID)
		if d.Err != nil {
			failed = append(failed, d.InstanceID)
			fmt.Fprintf(stderr, "  %s: not sent: %v (the reconciler will deliver it)\n", d.InstanceID, d.Err)
		}
	}
	if wait && len(ids) > 0 {
		wctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		pending, err := c.Wait(wctx, ids, res.Rev, func(done, total int) {
			fmt.Fprintf(stderr, "\rwaiting for agents: %d/%d at revision %d", done, total, res.Rev)
		})
		fmt.Fprintln(stderr)
		if err != nil {
			return err
		}
		if len(pending) > 0 {
			return &exitError{exitNotConverged, fmt.Errorf("%d of %d instances did not confirm revision %d within %s: %s", len(pending), len(ids), res.Rev, timeout, strings.Join(pending, ", "))}
		}
		fmt.Fprintf(stderr, "all %d instances at revision %d\n", len(ids), res.Rev)
	}
	if len(failed) > 0 {
		return &exitError{exitNotConverged, fmt.Errorf("could not send to %d instances: %s", len(failed), strings.Join(failed, ", "))}
	}
	return nil
}

func unbanCmd(g *globals) *cobra.Command {
	var wait bool
	var timeout, hold time.Duration
	var reason string
	c := &cobra.Command{Use: "unban CIDR...", Short: "lift bans of these CIDRs, whatever their target; --hold keeps triggers from banning them again",
		Example: `  bansshee unban 198.51.100.7 --reason "customer's NAT, ticket 4411" --hold 24h
  bansshee unban 198.51.100.7 --reason "false positive" --hold 0   # no hold, even after a jail's ban`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, true)
			if err != nil {
				return err
			}
			if !cmd.Flags().Changed("hold") {
				hold = -1
			}
			res, err := c.UnbanWith(ctx, controller.UnbanRequest{CIDRs: args, Reason: reason, Hold: hold, Who: g.who(ctx, cmd.ErrOrStderr())})
			if err != nil && res == nil {
				return err
			}
			out := cmd.OutOrStdout()
			if res.Hold > 0 {
				fmt.Fprintf(out, "held for %s: jails, alarms, GuardDuty, feeds and escalations will not ban %s again (an operator can, with ban --force)\n", res.Hold, strings.Join(args, ", "))
			}
			if res.Written == 0 {
				fmt.Fprintln(out, "nothing to unban: no active ban of those CIDRs")
				return err
			}
			fmt.Fprintf(out, "unbanned %d at revision %d: sent to %d instances\n", res.Written, res.Rev, len(res.Instances))
			if err != nil {
				return err
			}
			return finish(ctx, cmd.ErrOrStderr(), c, res, wait, timeout)
		}}
	c.Flags().StringVar(&reason, "reason", "", "why (kept in the history)")
	c.Flags().DurationVar(&hold, "hold", controller.DefaultHold, "keep triggers from banning these CIDRs again for this long (default: 1h if a trigger made the ban, else none; 0: none)")
	addWait(c.Flags(), &wait, &timeout)
	return c
}

func listCmd(g *globals) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{Use: "list", Short: "list active bans and rate limits", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, false)
			if err != nil {
				return err
			}
			now := time.Now()
			bans, err := c.Ledger.BansToList(ctx, now)
			if err != nil {
				return err
			}
			limits, err := c.Ledger.Limits(ctx)
			if err != nil {
				return err
			}
			type row struct {
				CIDR    string `json:"cidr"`
				Target  string `json:"target"`
				Expires string `json:"expires"`
				Reason  string `json:"reason"`
				Source  string `json:"source"`
				Rev     int64  `json:"rev"`
			}
			var rows []row
			for _, b := range bans {
				if !b.Active(now) {
					continue
				}
				exp := "never"
				if !b.Expires().IsZero() {
					exp = b.Expires().Format(time.RFC3339)
				}
				rows = append(rows, row{b.CIDR, b.Target, exp, b.Reason, b.Source, b.Rev})
			}
			sort.Slice(rows, func(i, j int) bool { return rows[i].CIDR < rows[j].CIDR })
			var lim []proto.Limit
			var limTargets []string
			for _, l := range limits {
				if !l.Deleted {
					lim = append(lim, l.Wire())
					limTargets = append(limTargets, l.Target)
				}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(out).Encode(map[string]any{"bans": rows, "limits": lim})
			}
			w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "CIDR\tTARGET\tEXPIRES\tREASON\tSOURCE\tREV")
			for _, r := range rows {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\n", r.CIDR, r.Target, r.Expires, r.Reason, r.Source, r.Rev)
			}
			if len(lim) > 0 {
				fmt.Fprintln(w, "\nLIMIT\tTARGET\tRULE\t\t\tREV")
				for i, l := range lim {
					fmt.Fprintf(w, "%s\t%s\t%s %v: %d new per %d s, then %s%s\t\t\t%d\n", l.ID, limTargets[i], l.Proto, l.Ports, l.Hits, l.Seconds, l.Action, map[bool]string{true: ", escalate"}[l.Escalate], l.Rev)
				}
			}
			return w.Flush()
		}}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func statusCmd(g *globals) *cobra.Command {
	var target string
	var asJSON, live bool
	c := &cobra.Command{Use: "status", Short: "per instance: applied revision, bans, last heartbeat, lag behind the ledger", Args: cobra.NoArgs,
		Long: `Lists, per managed instance, the revision its agent applied against the one it should have, its
bans, its last heartbeat and its version.

The instances are the reconciler's inventory (what its last pass found, written to the ledger each
pass) when it is under 3 minutes old, and EC2's answer otherwise; the last line says which. An
instance launched since the last pass shows up after the next one. --live asks EC2 now (one
DescribeInstances page per 1 000 instances).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, false)
			if err != nil {
				return err
			}
			fs, err := c.FleetStatus(ctx, target, live)
			if err != nil {
				return err
			}
			sts, rev := fs.Instances, fs.Rev
			out := cmd.OutOrStdout()
			if asJSON {
				m := map[string]any{"ledger_rev": rev, "instances": sts}
				if !fs.InventoryAt.IsZero() {
					m["inventory_at"] = fs.InventoryAt
				}
				return json.NewEncoder(out).Encode(m)
			}
			converged := 0
			w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "INSTANCE\tTAGS\tAPPLIED\tWANT\tBANS\tHEARTBEAT\tVERSION\tSTATE")
			old := 0
			for _, s := range sts {
				state := "converged"
				switch {
				case s.Heartbeat.IsZero():
					state = "no agent report"
				case s.Silent:
					state = "silent"
				case !s.Converged:
					state = fmt.Sprintf("lagging %d revisions", s.WantRev-s.AppliedRev)
				}
				ver := s.Version
				if ver == "" {
					ver = "-"
				}
				if s.OldVersion {
					ver += " (old)"
					old++
				}
				if s.Converged {
					converged++
				}
				if s.LastError != "" {
					state += " (error: " + s.LastError + ")"
				}
				hb := "-"
				if !s.Heartbeat.IsZero() {
					hb = time.Since(s.Heartbeat).Round(time.Second).String() + " ago"
				}
				fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d/%d\t%s\t%s\t%s\n", s.ID, tagString(s.Tags), s.AppliedRev, s.WantRev, s.Bans, s.WantBans, hb, ver, state)
			}
			fmt.Fprintf(w, "\n%d of %d instances converged; ledger revision %d\n", converged, len(sts), rev)
			if fs.InventoryAt.IsZero() {
				fmt.Fprintln(w, "instances: from EC2 now")
			} else {
				fmt.Fprintf(w, "instances: the reconciler's inventory of %s ago (--live asks EC2)\n", time.Since(fs.InventoryAt).Round(time.Second))
			}
			if old > 0 {
				fmt.Fprintf(w, "%d agents run an old version: upgrade them (docs/OPERATIONS.md, \"Upgrade the fleet\")\n", old)
			}
			return w.Flush()
		}}
	c.Flags().StringVarP(&target, "target", "t", "*", "only these instances")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	c.Flags().BoolVar(&live, "live", false, "read the instances from EC2, not from the reconciler's inventory")
	return c
}

func tagString(tags map[string]string) string {
	var parts []string
	for k, v := range tags {
		if strings.HasPrefix(k, "bansshee:") || k == "Name" {
			continue
		}
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func targetsCmd(g *globals) *cobra.Command {
	var exposure bool
	var jails []string
	c := &cobra.Command{Use: "targets SELECTOR [--exposure]", Short: "preview exactly which instances a selector reaches (and, with --exposure, what their security groups open)", Args: cobra.ExactArgs(1),
		Long: `targets lists the managed, running instances a selector picks.

With --exposure it also lists, per instance, the ports its security groups open to the whole
internet (0.0.0.0/0 or ::/0, directly or through a managed prefix list that holds them), and flags
rate limits on ports that no security group opens (they protect nothing), and ports open to the
internet that a jail watches (--jails) without a rate limit.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, false)
			if err != nil {
				return err
			}
			if exposure {
				return printExposure(ctx, cmd.OutOrStdout(), c, args[0], jails)
			}
			ins, err := c.Targets(ctx, args[0])
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "INSTANCE\tPRIVATE IP\tTAGS")
			for _, in := range ins {
				fmt.Fprintf(w, "%s\t%s\t%s\n", in.ID, in.PrivateIP, tagString(in.Tags))
			}
			fmt.Fprintf(w, "\n%d instances match %q\n", len(ins), args[0])
			return w.Flush()
		}}
	c.Flags().BoolVar(&exposure, "exposure", false, "list the ports each instance's security groups open to the internet, and flag limits that miss")
	c.Flags().StringSliceVar(&jails, "jails", []string{"sshd", "dovecot", "cyrus", "postfix-sasl"}, "jails whose daemons' ports should carry a rate limit when open to the internet")
	return c
}

func printExposure(ctx context.Context, out io.Writer, c *controller.Controller, target string, jails []string) error {
	exps, err := c.Exposure(ctx, target, jails)
	if err != nil {
		return err
	}
	flags := 0
	for _, ex := range exps {
		fmt.Fprintf(out, "%s  %s  %s\n", ex.Instance.ID, ex.Instance.PrivateIP, tagString(ex.Instance.Tags))
		if len(ex.Open) == 0 {
			fmt.Fprintln(out, "  open to the internet: nothing")
		}
		for _, o := range ex.Open {
			fmt.Fprintf(out, "  open to the internet: %s\n", o)
		}
		for _, f := range ex.Flags {
			fmt.Fprintf(out, "  ! %s\n", f)
			flags++
		}
	}
	fmt.Fprintf(out, "\n%d instances match %q; %d findings\n", len(exps), target, flags)
	return nil
}

func limitCmd(g *globals) *cobra.Command {
	var l proto.Limit
	var target, ports string
	var wait, escalateFleet bool
	var timeout time.Duration
	c := &cobra.Command{Use: "limit ID", Short: "set a rate limit: each source may open --hits new connections per --seconds",
		Example: `  bansshee limit l-pop3 --port 110 --hits 10 --seconds 60 --target Role=mail   # the classic POP3 'recent' rule`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			l.ID = args[0]
			for _, p := range strings.Split(ports, ",") {
				var n int
				if _, err := fmt.Sscan(strings.TrimSpace(p), &n); err != nil {
					return usageError{fmt.Errorf("--port %q: want port numbers separated by commas", ports)}
				}
				l.Ports = append(l.Ports, n)
			}
			c, err := g.controller(ctx, true)
			if err != nil {
				return err
			}
			if escalateFleet && !l.Escalate {
				return usageError{fmt.Errorf("--escalate-fleet needs --escalate")}
			}
			res, err := c.Limit(ctx, controller.LimitRequest{Limit: l, Target: target, EscalateFleet: escalateFleet})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "limit %s at revision %d on %s: sent to %d instances\n", l.ID, res.Rev, res.Selector, len(res.Instances))
			return finish(ctx, cmd.ErrOrStderr(), c, res, wait, timeout)
		}}
	f := c.Flags()
	f.StringVarP(&target, "target", "t", "*", "selector of the instances")
	f.StringVar(&ports, "port", "", "port or ports, comma separated (required)")
	f.StringVar(&l.Proto, "proto", "tcp", "tcp or udp")
	f.IntVar(&l.Hits, "hits", 10, "new connections allowed per source per window")
	f.IntVar(&l.Seconds, "seconds", 60, "window length")
	f.StringVar(&l.Action, "action", "drop", "drop or reject the excess")
	f.BoolVar(&l.Escalate, "escalate", false, "a source that trips the limit (after a completed TCP handshake) is banned on that instance, and on the whole target once a second instance reports it")
	f.BoolVar(&escalateFleet, "escalate-fleet", false, "with --escalate: ban a tripping source on the whole target at once (one instance's report is enough)")
	f.BoolVar(&l.EscalateUnverified, "escalate-udp", false, "with --escalate on a udp limit: escalate UDP sources too, which anyone can forge")
	_ = c.MarkFlagRequired("port")
	addWait(f, &wait, &timeout)
	return c
}

func unlimitCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "unlimit ID", Short: "remove a rate limit", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, true)
			if err != nil {
				return err
			}
			res, err := c.Unlimit(ctx, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed limit %s at revision %d: sent to %d instances\n", args[0], res.Rev, len(res.Instances))
			return finish(ctx, cmd.ErrOrStderr(), c, res, false, 0)
		}}
}

func serveCmd(g *globals) *cobra.Command {
	var interval time.Duration
	var metrics string
	c := &cobra.Command{Use: "serve", Short: "run the reconciler: discovery, queues, syncs for new and lagging instances, escalations", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, true)
			if err != nil {
				return err
			}
			cli.TuneServeGC() // resident: less heap headroom than a one-shot command's
			log := cli.Logger(g.logLevel)
			m := controller.NewMetrics()
			if metrics != "" {
				srv := &http.Server{Addr: metrics, Handler: promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
				go func() { _ = srv.ListenAndServe() }()
				defer srv.Close()
			}
			log.Info("reconciler started", "interval", interval)
			c.Serve(ctx, interval, func(rep *controller.Report, err error) {
				m.Observe(rep, err)
				if err != nil {
					log.Error("reconcile pass", "err", err)
				}
				if rep != nil {
					log.Info("reconcile pass", "instances", rep.Instances, "synced", len(rep.Synced), "queues_created", len(rep.QueuesCreated), "queues_deleted", len(rep.QueuesDeleted), "escalated", len(rep.Escalated),
						"converged", rep.Fleet.Converged, "lagging", rep.Fleet.Lagging, "silent", rep.Fleet.Silent)
				}
			})
			return nil
		}}
	c.Flags().DurationVar(&interval, "interval", 30*time.Second, "time between passes")
	c.Flags().StringVar(&metrics, "metrics", "", "address for Prometheus /metrics (empty: off)")
	return c
}

func initCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "init", Short: "create the ledger table and the DLQ (idempotent); with --agent-role-id, record the agent role id queues are created with", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, false)
			if err != nil {
				return err
			}
			if err := c.Ledger.CreateTable(ctx); err != nil {
				return err
			}
			if _, err := c.Queues.EnsureDLQ(ctx); err != nil {
				return err
			}
			// Queues are created only with the agent role's id; record it for controllers without it.
			if g.agentRoleID != "" {
				if err := c.Ledger.RecordAgentRoleID(ctx, g.agentRoleID); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "agent role id %s recorded\n", g.agentRoleID)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ledger table %s and queue %s ready\n", g.table, c.Queues.DLQName())
			return nil
		}}
}

// writeNew creates path with mode and writes text, refusing an existing file or a symlink
// (O_EXCL|O_NOFOLLOW: no check-then-write race, and a key is never written through a link).
func writeNew(path, text string, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, mode)
	if errors.Is(err, os.ErrExist) {
		return usageError{fmt.Errorf("%s exists; not overwriting a key", path)}
	}
	if err != nil {
		return err
	}
	if _, err = f.WriteString(text); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

func keysCmd() *cobra.Command {
	keys := &cobra.Command{Use: "keys", Short: "signing keys"}
	var out, kid string
	gen := &cobra.Command{Use: "gen --out FILE", Short: "make an Ed25519 signing key: FILE (private) and FILE.pub (for agents)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if kid == "" {
				// The date says when; the random part keeps two keys made on one day apart.
				var r [3]byte
				if _, err := rand.Read(r[:]); err != nil {
					return err
				}
				kid = time.Now().UTC().Format("2006-01-02") + "-" + hex.EncodeToString(r[:])
			}
			s, err := proto.GenerateKey(kid)
			if err != nil {
				return err
			}
			if err := writeNew(out, s.MarshalPrivate(), 0o600); err != nil {
				return err
			}
			if err := writeNew(out+".pub", s.MarshalPublic(), 0o644); err != nil {
				os.Remove(out)
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "key %s: private %s, public %s.pub\n", kid, out, out)
			return nil
		}}
	gen.Flags().StringVar(&out, "out", "bansshee.key", "private key file")
	gen.Flags().StringVar(&kid, "id", "", "key id (default: today's date and a random suffix)")
	keys.AddCommand(gen)
	return keys
}
