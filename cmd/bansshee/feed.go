package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bansshee/bansshee/controller"
	"github.com/spf13/cobra"
)

func feedCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "feed", Short: "blocklist feeds (Spamhaus DROP, FireHOL, your own) banned on a selector and refreshed on a schedule",
		Long: `A feed is a list of addresses and CIDRs at an https:// URL, banned on every instance its target
selects and fetched again every --refresh by 'bansshee serve' and the stack's scheduled Lambda
(conditionally: ETag and If-Modified-Since). Agents get the difference from the last version.

What a feed may not do: entries on the never-ban list (loopback, link-local, the metadata
service, ...), broader than /16 (IPv4) or /48 (IPv6) unless the feed was added with --force (never
broader than /8 or /32), or covering an --admin CIDR are dropped and reported. A version of more
than 1 000 000 entries is held. A version with an entry that covers a VPC CIDR, or that shrank by more than half, is
held, not applied: the last good version stays, as it does when a fetch fails (HTTP error,
timeout, a body cut short or over --max-bytes). The entries expire --ttl after the last good fetch.`}
	c.AddCommand(feedAddCmd(g), feedListCmd(g), feedRmCmd(g), feedSyncCmd(g))
	return c
}

func feedAddCmd(g *globals) *cobra.Command {
	var spec controller.FeedSpec
	var noSync bool
	c := &cobra.Command{Use: "add NAME --url URL --target SELECTOR", Short: "add (or change) a feed, then fetch it once",
		Example: `  bansshee feed add spamhaus-drop --url https://www.spamhaus.org/drop/drop_v4.json --target '*' --refresh 1h
  bansshee feed add firehol1 --url https://iplists.firehol.org/files/firehol_level1.netset \
      --target Role=mail --format firehol --drop-vpc-overlap`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, true)
			if err != nil {
				return err
			}
			spec.Name = args[0]
			f, err := c.AddFeed(ctx, spec)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "feed %s: %s on %s, every %s, entries last %s after a good fetch\n", f.SK, f.URL, f.Target,
				time.Duration(f.Refresh)*time.Second, time.Duration(f.TTL)*time.Second)
			if noSync {
				return nil
			}
			rep, err := c.SyncFeed(ctx, f.SK, controller.FeedOptions{})
			return feedOutcome(cmd.OutOrStdout(), rep, err)
		}}
	fl := c.Flags()
	fl.StringVar(&spec.URL, "url", "", "where the list is (https://)")
	fl.StringVarP(&spec.Target, "target", "t", "", "selector of the instances to ban on (required; '*' for every managed instance)")
	fl.StringVar(&spec.Format, "format", "auto", "auto, plain, spamhaus (text or JSON lines) or firehol")
	fl.DurationVar(&spec.Refresh, "refresh", time.Hour, "how often to fetch it again (at least 1m)")
	fl.DurationVar(&spec.TTL, "ttl", 0, "how long entries stay after the last good fetch (default: 48h or three refreshes, whichever is longer)")
	fl.Int64Var(&spec.MaxBytes, "max-bytes", controller.DefaultFeedMaxBytes, "largest body accepted; a larger one is a failed fetch")
	fl.StringVar(&spec.Mode, "mode", "enforce", "enforce, or simulate: fetch and record what the feed would ban (history, why), ban nothing")
	fl.BoolVar(&spec.Force, "force", false, "take entries broader than /16 (IPv4) or /48 (IPv6); without it they are dropped and reported (/8 and /32 are never taken)")
	fl.Uint64Var(&spec.MaxCoverage4, "max-addresses", controller.DefaultFeedMaxCoverage, "most IPv4 addresses a version may cover in all (default a /8's worth); a version covering more is held")
	fl.Uint64Var(&spec.MaxCoverage6, "max-v6-64s", controller.DefaultFeedMaxCoverage, "most IPv6 /64 subnets a version may cover in all (default a /40's worth)")
	fl.BoolVar(&spec.DropVPCOverlap, "drop-vpc-overlap", false, "drop entries that cover a VPC CIDR instead of holding the version (FireHOL level 1 lists the private ranges)")
	fl.BoolVar(&noSync, "no-sync", false, "only record the feed; the next scheduled pass fetches it")
	_ = c.MarkFlagRequired("url")
	_ = c.MarkFlagRequired("target")
	return c
}

// feedOutcome prints a refresh's report; a failed or held refresh is exit 1.
func feedOutcome(out io.Writer, rep controller.FeedReport, err error) error {
	if err != nil {
		return err
	}
	fmt.Fprintln(out, rep.String())
	if rep.Result != nil && len(rep.Result.Instances) > 0 {
		failed := 0
		for _, d := range rep.Result.Instances {
			if d.Err != nil {
				failed++
			}
		}
		fmt.Fprintf(out, "sent to %d instances at revision %d", len(rep.Result.Instances), rep.Result.Rev)
		if failed > 0 {
			fmt.Fprintf(out, " (%d failed: the reconciler will deliver)", failed)
		}
		fmt.Fprintln(out)
	}
	switch {
	case rep.Err != nil:
		return &exitError{exitFailure, fmt.Errorf("feed %s not refreshed: %w", rep.Name, rep.Err)}
	case rep.Held != "":
		return &exitError{exitFailure, fmt.Errorf("feed %s held: %s", rep.Name, rep.Held)}
	}
	return nil
}

func feedSyncCmd(g *globals) *cobra.Command {
	var opts controller.FeedOptions
	c := &cobra.Command{Use: "sync NAME", Short: "fetch a feed now and send what changed", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, true)
			if err != nil {
				return err
			}
			rep, err := c.SyncFeed(ctx, args[0], opts)
			return feedOutcome(cmd.OutOrStdout(), rep, err)
		}}
	c.Flags().BoolVar(&opts.Force, "force", false, "fetch the whole list (no If-None-Match / If-Modified-Since)")
	c.Flags().BoolVar(&opts.AcceptShrink, "accept-shrink", false, "apply the list even if it shrank by more than half")
	c.Flags().BoolVar(&opts.AcceptGrowth, "accept-growth", false, "apply the list even if its coverage grew more than fourfold")
	return c
}

func feedRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "rm NAME", Short: "remove a feed: its entries leave every instance", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, true)
			if err != nil {
				return err
			}
			res, err := c.RemoveFeed(ctx, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "feed %s removed at revision %d: a sync sent to %d instances\n", args[0], res.Rev, len(res.Instances))
			return finish(ctx, cmd.ErrOrStderr(), c, res, false, 0)
		}}
}

func feedListCmd(g *globals) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{Use: "list", Short: "feeds with their state: entries, last good fetch, errors, held versions", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, false)
			if err != nil {
				return err
			}
			feeds, err := c.Ledger.Feeds(ctx)
			if err != nil {
				return err
			}
			type row struct {
				Name      string    `json:"name"`
				URL       string    `json:"url"`
				Target    string    `json:"target"`
				Format    string    `json:"format"`
				Refresh   string    `json:"refresh"`
				Entries   int       `json:"entries"`
				Version   int64     `json:"version"`
				LastOK    time.Time `json:"last_ok,omitzero"`
				GoodUntil time.Time `json:"good_until,omitzero"`
				Error     string    `json:"error,omitempty"`
				Held      string    `json:"held,omitempty"`
				Report    string    `json:"report,omitempty"`
				Mode      string    `json:"mode,omitempty"`
			}
			var rows []row
			for _, f := range feeds {
				if f.Deleted {
					continue
				}
				r := row{Name: f.SK, URL: f.URL, Target: f.Target, Format: f.Format, Refresh: (time.Duration(f.Refresh) * time.Second).String(),
					Entries: f.Entries, Version: f.Version, LastOK: f.OK, Error: f.Error, Held: f.Held, Report: f.Report, Mode: f.Mode}
				if f.GoodUntil > 0 {
					r.GoodUntil = time.Unix(f.GoodUntil, 0).UTC()
				}
				rows = append(rows, r)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(out).Encode(rows)
			}
			w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "FEED\tTARGET\tENTRIES\tREFRESH\tLAST GOOD\tUNTIL\tSTATE")
			for _, r := range rows {
				state := "ok"
				switch {
				case r.Held != "":
					state = "HELD: " + r.Held
				case r.Error != "":
					state = "FAILING: " + r.Error
				case r.Version == 0:
					state = "not fetched yet"
				}
				if r.Mode != "" {
					state = r.Mode + ", " + state // recorded, not banned
				}
				last, until := "never", "-"
				if !r.LastOK.IsZero() {
					last = r.LastOK.Format(time.RFC3339)
				}
				if !r.GoodUntil.IsZero() {
					until = r.GoodUntil.Format(time.RFC3339)
				}
				fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.Name, r.Target, r.Entries, r.Refresh, last, until, strings.ReplaceAll(state, "\t", " "))
			}
			return w.Flush()
		}}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}
