package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/proto"
	"github.com/spf13/cobra"
)

// who is the caller's identity for the history: the ARN STS answers (the operator's role
// session or user), with the local user name. Called after controller().
func (g *globals) who(ctx context.Context, stderr io.Writer) string {
	user := os.Getenv("USER")
	if g.aws == nil {
		return "cli:" + user
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := sts.NewFromConfig(*g.aws).GetCallerIdentity(sctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		fmt.Fprintf(stderr, "bansshee: warning: sts:GetCallerIdentity failed (%v); the history records you as cli:%s\n", err, user)
		return "cli:" + user
	}
	if user != "" {
		return aws.ToString(out.Arn) + " (" + user + ")"
	}
	return aws.ToString(out.Arn)
}

func allowCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "allow", Short: "the ledger allowlist: sources no ban, jail, alarm, GuardDuty finding, feed or escalation may drop",
		Long: `An allow entry is obeyed everywhere: every ban path refuses what it covers, adding it lifts the
bans and feed entries it covers on every instance, and every agent puts it in its kernel allow set,
so even a stale ban cannot drop an allowed source. --admin (here) and the agents' --allow flags
add to it. An entry broader than /16 (IPv4) or /48 (IPv6) needs --force; /8 and /32 are the limit.`}
	c.AddCommand(allowAddCmd(g), allowRmCmd(g), allowListCmd(g))
	return c
}

func allowAddCmd(g *globals) *cobra.Command {
	var reason string
	var ttl time.Duration
	var force bool
	c := &cobra.Command{Use: "add CIDR --reason R", Short: "allow a source everywhere and lift what bans it",
		Example: `  bansshee allow add 203.0.113.0/24 --reason "payment provider webhooks"
  bansshee allow add 198.51.100.7 --reason "pen test, ticket 881" --ttl 72h`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, true)
			if err != nil {
				return err
			}
			res, err := c.Allow(ctx, controller.AllowRequest{CIDR: args[0], Reason: reason, TTL: ttl, Force: force, Who: g.who(ctx, cmd.ErrOrStderr())})
			if res == nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "allowed %s at revision %d; lifted %d bans, sent to %d instances\n", args[0], res.Rev, len(res.Tombstoned), len(res.Instances))
			if err != nil {
				return err
			}
			return finish(ctx, cmd.ErrOrStderr(), c, res, false, 0)
		}}
	c.Flags().StringVar(&reason, "reason", "", "why (required)")
	c.Flags().DurationVar(&ttl, "ttl", 0, "how long the entry lasts (0: until 'allow rm')")
	c.Flags().BoolVar(&force, "force", false, "allow a prefix broader than /16 (IPv4) or /48 (IPv6)")
	return c
}

func allowRmCmd(g *globals) *cobra.Command {
	var reason string
	c := &cobra.Command{Use: "rm CIDR", Short: "remove an allow entry (feed entries it kept out come back with the next reconcile pass)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, true)
			if err != nil {
				return err
			}
			res, err := c.RemoveAllow(ctx, args[0], g.who(ctx, cmd.ErrOrStderr()), reason)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed allow entry %s at revision %d\n", args[0], res.Rev)
			return nil
		}}
	c.Flags().StringVar(&reason, "reason", "", "why (kept in the history)")
	return c
}

func allowListCmd(g *globals) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{Use: "list", Short: "list the allow entries and the holds in force", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, false)
			if err != nil {
				return err
			}
			now := time.Now()
			allows, err := c.Ledger.Allows(ctx, now)
			if err != nil {
				return err
			}
			holds, err := c.Ledger.Holds(ctx, now)
			if err != nil {
				return err
			}
			type row struct {
				Kind    string `json:"kind"`
				CIDR    string `json:"cidr"`
				Expires string `json:"expires"`
				Reason  string `json:"reason"`
				Who     string `json:"who"`
				Rev     int64  `json:"rev"`
			}
			rows := []row{}
			for kind, list := range map[string][]controller.PolicyItem{"allow": allows, "hold": holds} {
				for _, p := range list {
					if p.Active(now) {
						rows = append(rows, row{kind, p.SK, expiry(p.Expires()), p.Reason, p.Who, p.Rev})
					}
				}
			}
			sortRows(rows, func(r row) string { return r.Kind + " " + r.CIDR })
			out := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(out).Encode(rows)
			}
			w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "KIND\tCIDR\tEXPIRES\tREASON\tWHO\tREV")
			for _, r := range rows {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\n", r.Kind, r.CIDR, r.Expires, r.Reason, r.Who, r.Rev)
			}
			return w.Flush()
		}}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func sortRows[T any](rows []T, key func(T) string) {
	for i := 1; i < len(rows); i++ {
		for j := i; j > 0 && key(rows[j]) < key(rows[j-1]); j-- {
			rows[j], rows[j-1] = rows[j-1], rows[j]
		}
	}
}

func expiry(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Format(time.RFC3339)
}

func whyCmd(g *globals) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{Use: "why ADDR", Short: "every ban, feed entry, allow entry and hold that covers an address, what caused it, and its history",
		Example: `  bansshee why 198.51.100.7
  bansshee why 2001:db8::7 --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.controller(ctx, false)
			if err != nil {
				return err
			}
			rep, err := c.Why(ctx, args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(out).Encode(rep)
			}
			return printWhy(out, rep)
		}}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func printWhy(out io.Writer, rep *controller.WhyReport) error {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "%s\n", rep.Addr)
	if len(rep.Bans)+len(rep.Feeds)+len(rep.Allows)+len(rep.Holds) == 0 {
		fmt.Fprintln(w, "  no ban, feed entry, allow entry or hold covers it")
	}
	for _, b := range rep.Bans {
		fmt.Fprintf(w, "  ban %s on %s, revision %d, expires %s: %s\n", b.CIDR, b.Target, b.Rev, expiry(b.Expires), b.Reason)
		fmt.Fprintf(w, "    by %s (source %s)\n", orDash(b.Who), b.Source)
		if b.Cause != nil {
			fmt.Fprintf(w, "    cause: %s\n", b.Cause)
		}
		fmt.Fprintf(w, "    applied on %d of %d targeted instances%s\n", b.Applied.Applied, b.Targeted, pending(b.Pending))
	}
	for _, f := range rep.Feeds {
		mode := ""
		if f.Mode != "" {
			mode = " (" + f.Mode + ": not enforced)"
		}
		fmt.Fprintf(w, "  feed %s lists %s on %s, revision %d, expires %s%s\n", f.Feed, f.CIDR, f.Target, f.Rev, expiry(f.Expires), mode)
		if f.Lifted != "" {
			fmt.Fprintf(w, "    kept off the agents: %s\n", f.Lifted)
		} else if f.Mode == "" {
			fmt.Fprintf(w, "    applied on %d of %d targeted instances%s\n", f.Applied.Applied, f.Targeted, pending(f.Pending))
		}
	}
	for _, a := range rep.Allows {
		fmt.Fprintf(w, "  allow %s, revision %d, expires %s: %s (by %s)\n", a.CIDR, a.Rev, expiry(a.Expires), a.Reason, a.Who)
	}
	for _, h := range rep.Holds {
		fmt.Fprintf(w, "  hold %s until %s: %s (by %s)\n", h.CIDR, expiry(h.Expires), orDash(h.Reason), h.Who)
	}
	fmt.Fprintln(w, "\nhistory:")
	printEvents(w, rep.History)
	return w.Flush()
}

func pending(ids []string) string {
	if len(ids) == 0 {
		return ""
	}
	return "; not yet: " + strings.Join(ids, ", ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printEvents(w io.Writer, events []controller.Event) {
	if len(events) == 0 {
		fmt.Fprintln(w, "  (none)")
	}
	for _, e := range events {
		cidrs := strings.Join(e.CIDRs[:min(len(e.CIDRs), 5)], ",")
		if len(e.CIDRs) > 5 {
			cidrs += fmt.Sprintf(" and %d more", len(e.CIDRs)-5)
		}
		var detail []string
		if e.Target != "" {
			detail = append(detail, "on "+e.Target)
		}
		if e.TTL != "" && e.Kind != controller.EventExpire {
			detail = append(detail, "ttl "+e.TTL)
		}
		if e.Hold != "" {
			detail = append(detail, "hold "+e.Hold)
		}
		if e.Rev != 0 {
			detail = append(detail, "rev "+strconv.FormatInt(e.Rev, 10))
		}
		if e.Reason != "" {
			detail = append(detail, strconv.Quote(e.Reason))
		}
		if e.Cause != nil {
			detail = append(detail, "cause: "+e.Cause.String())
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\tby %s\t%s\n", e.Time.Format(time.RFC3339), e.Kind, cidrs, orDash(e.Who), strings.Join(detail, "; "))
	}
}

// parseSince reads "7d", "36h", "90m" or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n < 0 {
			return time.Time{}, fmt.Errorf("--since %q: want 7d, 36h or an RFC 3339 time", s)
		}
		return now.Add(-time.Duration(n) * 24 * time.Hour), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("--since %q: want 7d, 36h or an RFC 3339 time", s)
	}
	return now.Add(-d), nil
}

func historyCmd(g *globals) *cobra.Command {
	var since string
	var asJSON bool
	c := &cobra.Command{Use: "history [ADDR|CIDR]", Short: "bans, unbans, allow changes, holds, expiries and simulate verdicts, and who made them",
		Example: `  bansshee history 198.51.100.7            # everything that covered it, for 90 days
  bansshee history 198.51.100.0/24 --since 7d
  bansshee history --since 1d --json        # everything`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			from, err := parseSince(since, time.Now())
			if err != nil {
				return usageError{err}
			}
			var p netip.Prefix
			if len(args) == 1 {
				if p, err = proto.ParseCIDR(args[0]); err != nil {
					return usageError{fmt.Errorf("history %s: %w", args[0], err)}
				}
				if p.Addr().Is4() && p.Bits() < 8 {
					return usageError{fmt.Errorf("history %s: broader than /8", p)}
				}
			}
			c, err := g.controller(ctx, false)
			if err != nil {
				return err
			}
			events, err := c.History(ctx, p, from)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				if events == nil {
					events = []controller.Event{}
				}
				return json.NewEncoder(out).Encode(events)
			}
			w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			printEvents(w, events)
			return w.Flush()
		}}
	c.Flags().StringVar(&since, "since", "90d", "only events after this (7d, 36h, or an RFC 3339 time)")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}
