package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bansshee/bansshee/controller"
	"github.com/spf13/cobra"
)

func edgeCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "edge", Short: "AWS WAF IP sets kept in step with bans, for fleets behind a load balancer or CloudFront",
		Long: `Behind an Application Load Balancer or CloudFront a host sees the load balancer's address, not
the client's, so a host ban cannot drop the client. An edge keeps a pair of WAF IP sets (IPv4 and
IPv6: NAME-v4-0.., NAME-v6-0..) in step with the bans whose target covers the edge's target (the
ban's selector terms are all terms of the edge's: '*' always does). A web ACL rule that blocks
those sets does the rest: the stack adds one (EdgeWebAclArn), or add it yourself.

Bans reach the sets when they are made, unbans too; expiries, allowlist and never-ban entries are
removed by the reconciler ('bansshee serve', the scheduled Lambda, 'bansshee edge sync'). A set
holds at most 10 000 addresses; more bans fill more sets, up to --max-sets per family, and past
that the oldest bans are left out, which 'edge list' says. Writes keep to WAF's rate (one call a
second per action) and honour its LockToken, retrying when another writer came first.

What WAF cannot do: it inspects HTTP(S) through the load balancer or CloudFront only. SSH, POP3,
IMAP, SMTP and any other raw TCP or UDP still need the host agent.`}
	c.AddCommand(edgeAddCmd(g), edgeListCmd(g), edgeSyncCmd(g), edgeRmCmd(g))
	return c
}

func edgeAddCmd(g *globals) *cobra.Command {
	var req controller.EdgeRequest
	c := &cobra.Command{Use: "add NAME --scope REGIONAL|CLOUDFRONT --target SELECTOR [--web-acl ARN]", Short: "add (or change) an edge and fill its WAF IP sets now",
		Example: `  bansshee edge add shop --scope REGIONAL --target Role=web \
      --web-acl arn:aws:wafv2:eu-west-1:123456789012:regional/webacl/shop/0f1e2d3c`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, false)
			if err != nil {
				return err
			}
			req.Name = args[0]
			rep, err := c.AddEdge(ctx, req)
			if err != nil {
				return err
			}
			printEdgeReport(cmd.OutOrStdout(), rep)
			return nil
		}}
	fl := c.Flags()
	fl.StringVar(&req.Scope, "scope", "REGIONAL", "REGIONAL (Application Load Balancer, API Gateway) or CLOUDFRONT (served from us-east-1)")
	fl.StringVarP(&req.Target, "target", "t", "", "selector of the fleet behind the load balancer (required): bans whose target covers it reach the sets")
	fl.StringVar(&req.WebACL, "web-acl", "", "ARN of the web ACL whose rule blocks the sets (recorded; the stack's EdgeWebAclArn adds the rule)")
	fl.IntVar(&req.MaxSets, "max-sets", 5, "IP sets per family at most (10 000 addresses each; 1-25)")
	_ = c.MarkFlagRequired("target")
	return c
}

func printEdgeReport(out io.Writer, rep *controller.EdgeReport) {
	fmt.Fprintf(out, "edge %s: %d IPv4 and %d IPv6 addresses in %s\n", rep.Edge, rep.V4, rep.V6, strings.Join(rep.Sets, ", "))
	if len(rep.Created)+len(rep.Updated) > 0 {
		fmt.Fprintf(out, "  created %d sets, updated %d (%d write calls, %d lock conflicts retried, %.1f s)\n", len(rep.Created), len(rep.Updated), rep.WriteCalls, rep.LockRetries, rep.DurationSeconds)
	}
	if rep.Skipped > 0 {
		fmt.Fprintf(out, "  %d entries skipped: never-ban or allowlisted\n", rep.Skipped)
	}
	if rep.LeftOut > 0 {
		fmt.Fprintf(out, "  %d bans left out: %s\n", rep.LeftOut, rep.Reason)
	}
}

func edgeListCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "list", Short: "the edges, their sets' size and what the last sync left out", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, false)
			if err != nil {
				return err
			}
			edges, err := c.Ledger.Edges(ctx)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "EDGE\tSCOPE\tTARGET\tIPV4\tIPV6\tSYNCED\tNOTE")
			for _, e := range edges {
				note := e.Report
				if e.Error != "" {
					note = "error: " + e.Error
				}
				synced := "never"
				if !e.Synced.IsZero() {
					synced = e.Synced.Format(time.RFC3339)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", e.SK, e.Scope, e.Target, e.V4, e.V6, synced, note)
			}
			return w.Flush()
		}}
}

func edgeSyncCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "sync NAME", Short: "bring an edge's sets to the ledger now (expiries, allowlist)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, false)
			if err != nil {
				return err
			}
			rep, err := c.SyncEdge(ctx, args[0])
			if err != nil {
				return err
			}
			printEdgeReport(cmd.OutOrStdout(), rep)
			return nil
		}}
}

func edgeRmCmd(g *globals) *cobra.Command {
	var deleteSets bool
	c := &cobra.Command{Use: "rm NAME", Short: "forget an edge (and with --delete-sets delete its WAF IP sets)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, false)
			if err != nil {
				return err
			}
			if err := c.RemoveEdge(ctx, args[0], deleteSets); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "edge %s removed\n", args[0])
			return nil
		}}
	c.Flags().BoolVar(&deleteSets, "delete-sets", false, "delete the WAF IP sets too (WAF refuses while a web ACL rule references them)")
	return c
}
