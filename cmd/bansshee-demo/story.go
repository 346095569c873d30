package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/controller/trigger"
	"github.com/bansshee/bansshee/internal/awstest"
	"github.com/bansshee/bansshee/internal/netns"
	"github.com/bansshee/bansshee/proto"
)

// world is what the story needs of the fleet: real namespaces as root, a dry run otherwise.
type world interface {
	AddInstance(ctx context.Context, tags map[string]string) (host, error)
	StartAgent(h host) error
	// Attempt makes n failed POP3 logins from the attacker (src: which of its addresses) and
	// returns how many reached the server.
	Attempt(ctx context.Context, h host, src netip.Addr, n int) int
	Reachable(h host, src netip.Addr) bool
	Attacker() (primary, second netip.Addr)
	Controller() *controller.Controller
	Table() string
	Clients() awstest.Clients
	Close()
	Logs() string
}

type host interface {
	ID() string
	Tags() map[string]string
}

const banTTL = 12 * time.Second

func (d *demo) run(ctx context.Context) error {
	var w world
	var err error
	if netns.Available() == nil {
		fmt.Println("bansshee demo: embedded AWS emulator, one network namespace per EC2 instance, real agents, a real attacker.")
		w, err = newRealWorld(ctx)
	} else {
		fmt.Printf("bansshee demo: %v, so this run keeps the firewall in DRY-RUN:\n", netns.Available())
		fmt.Println("agents apply to an in-memory firewall and 'reachable' is computed from the rules they hold. Run as root for the real thing.")
		w, err = newDryWorld(ctx)
	}
	if err != nil {
		return err
	}
	defer func() {
		if d.verbose {
			fmt.Println("\n--- agent logs\n" + w.Logs())
		}
		w.Close() // safe twice
	}()
	c := w.Controller()

	d.say("A fleet: 3 x Role=mail, 2 x Role=web, 1 x Role=mail,Env=dev, each with a POP3 server and a bansshee-agent.")
	var hosts []host
	for _, tags := range []map[string]string{
		{"Role": "mail", "Env": "prod"}, {"Role": "mail", "Env": "prod"}, {"Role": "mail", "Env": "prod"},
		{"Role": "web", "Env": "prod"}, {"Role": "web", "Env": "prod"}, {"Role": "mail", "Env": "dev"},
	} {
		tags["bansshee:managed"] = "true"
		h, err := w.AddInstance(ctx, tags)
		if err != nil {
			return err
		}
		hosts = append(hosts, h)
	}
	rep, err := c.ReconcileOnce(ctx)
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	fmt.Printf("   reconciler: %d instances, %d queues created, %d synced\n", rep.Instances, len(rep.QueuesCreated), len(rep.Synced))
	for _, h := range hosts {
		if err := w.StartAgent(h); err != nil {
			return err
		}
	}
	ids := make([]string, len(hosts))
	for i, h := range hosts {
		ids[i] = h.ID()
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	pending, _ := c.Wait(wctx, ids, 1, nil)
	cancel()
	d.expect(len(pending) == 0, "all 6 agents up and reporting (%d pending)", len(pending))

	atk, atk2 := w.Attacker()
	d.say("The attacker (%s) brute-forces POP3 on every host, as in the seed's logs.", atk)
	through := 0
	for _, h := range hosts {
		through += w.Attempt(ctx, h, atk, 3)
	}
	d.expect(through == 18, "all 18 failed logins reached the servers (%d did)", through)

	d.say("A burst of failed logins on mail-1 becomes a CloudWatch Logs batch; the Lambda handler's cyrus jail (10 in 10 min) bans on Role=mail.")
	n := w.Attempt(ctx, hosts[0], atk, 12)
	var lines []string
	for i := 0; i < n; i++ {
		lines = append(lines, fmt.Sprintf("pop3[%d]: badlogin: host [%s] plaintext user SASL(-13): authentication failure", 22145+i, atk))
	}
	cfg, err := trigger.ParseConfig([]byte(fmt.Sprintf(`{"jails":[{"name":"cyrus","builtin":"cyrus","maxretry":10,"findtime":"10m","bantime":"%s","target":"Role=mail"}]}`, banTTL)))
	if err != nil {
		return err
	}
	h := &trigger.Handler{Cfg: cfg, Counter: &trigger.LedgerCounter{DDB: w.Clients().DynamoDB, Table: w.Table()}, Actor: c}
	t0 := time.Now()
	out, err := h.Handle(ctx, trigger.EncodeLogsEvent("/var/log/maillog", lines))
	if err != nil {
		return fmt.Errorf("lambda handler: %w", err)
	}
	d.expect(len(out.Bans) == 1 && out.Bans[0].CIDR == netip.PrefixFrom(atk, 32).String(), "the handler decided one ban: %s on %s for %s (%d lines)", joinBans(out), "Role=mail", banTTL, len(lines))

	d.say("The attacker is dropped on every Role=mail host (dev included) and still reaches the web hosts.")
	handled := time.Since(t0)
	slowest := waitAllDropped(w, hosts, atk, t0)
	for _, h := range hosts {
		mail := h.Tags()["Role"] == "mail"
		d.expect(w.Reachable(h, atk) != mail, "%s (%s): attacker reachable = %s", h.ID(), tagString(h.Tags()), yesNo(!mail))
	}
	fmt.Printf("   handler (ledger + fan-out) took %s; the last mail host dropped the attacker %s after the batch arrived\n", handled.Round(time.Millisecond), slowest.Round(time.Millisecond))

	d.say("The seed's rate limit (port 110, 10 new connections per 60 s per source) goes to Role=mail; a second attacker (%s) opens 12.", atk2)
	res, err := c.Limit(ctx, controller.LimitRequest{Limit: proto.Limit{ID: "l-pop3", Proto: "tcp", Ports: []int{110}, Hits: 10, Seconds: 60, Action: "drop"}, Target: "Role=mail"})
	if err != nil {
		return err
	}
	wctx, cancel = context.WithTimeout(ctx, 10*time.Second)
	pending, _ = c.Wait(wctx, idsOf(hosts, "mail"), res.Rev, nil)
	cancel()
	d.expect(len(pending) == 0, "every mail agent applied the limit (revision %d)", res.Rev)
	got := w.Attempt(ctx, hosts[1], atk2, 12)
	d.expect(got == 10, "mail-2 answered %d of 12 connections from %s (want 10: then throttled)", got, atk2)
	d.expect(w.Attempt(ctx, hosts[3], atk2, 12) == 12, "web-1 has no limit: all 12 answered")

	d.say("A new Role=mail instance launches; the reconciler gives it a queue and a sync with the active ban.")
	late, err := w.AddInstance(ctx, map[string]string{"Role": "mail", "Env": "prod", "bansshee:managed": "true"})
	if err != nil {
		return err
	}
	hosts = append(hosts, late)
	rep, err = c.ReconcileOnce(ctx)
	if err != nil {
		return err
	}
	d.expect(len(rep.Synced) == 1 && rep.Synced[0] == late.ID(), "reconciler synced the new instance %s", late.ID())
	if err := w.StartAgent(late); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for w.Reachable(late, atk) && time.Now().Before(deadline) {
	}
	d.expect(!w.Reachable(late, atk), "%s drops the attacker too", late.ID())

	d.table(ctx, c, w, hosts, atk)

	d.say("The ban was for %s: the kernel expires it by itself and traffic returns.", banTTL)
	deadline = t0.Add(banTTL + 10*time.Second)
	back := false
	for time.Now().Before(deadline) && !back {
		back = w.Reachable(hosts[0], atk)
	}
	d.expect(back, "mail-1 answers the attacker again %s after the ban", time.Since(t0).Round(time.Second))
	d.say("Clean-up: agents stopped, namespaces (with their chains and sets) removed, emulator stopped.")
	w.Close()
	left, _ := filepath.Glob("/run/netns/" + netns.NamePrefix + fmt.Sprint(os.Getpid()) + "-*")
	d.expect(len(left) == 0, "no namespace left behind (%d found)", len(left))
	return nil
}

// waitAllDropped probes every mail host at once until each drops atk (or 5 s pass) and returns
// when the last one did, measured from t0.
func waitAllDropped(w world, hosts []host, atk netip.Addr, t0 time.Time) time.Duration {
	var mu sync.Mutex
	var slowest time.Duration
	var wg sync.WaitGroup
	for _, h := range hosts {
		if h.Tags()["Role"] != "mail" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := time.Now().Add(5 * time.Second)
			for w.Reachable(h, atk) && time.Now().Before(deadline) {
			}
			mu.Lock()
			slowest = max(slowest, time.Since(t0))
			mu.Unlock()
		}()
	}
	wg.Wait()
	return slowest
}

func idsOf(hosts []host, role string) []string {
	var out []string
	for _, h := range hosts {
		if h.Tags()["Role"] == role {
			out = append(out, h.ID())
		}
	}
	return out
}

func joinBans(out *trigger.Output) string {
	var s []string
	for _, b := range out.Bans {
		s = append(s, b.CIDR)
	}
	return strings.Join(s, ",")
}

func (d *demo) table(ctx context.Context, c *controller.Controller, w world, hosts []host, atk netip.Addr) {
	sts, _, _ := c.Status(ctx, "*")
	bans := map[string]int{}
	for _, s := range sts {
		bans[s.ID] = s.Bans
	}
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "   INSTANCE\tTAGS\tBANS\tREACHABLE BY ATTACKER")
	for _, h := range hosts {
		fmt.Fprintf(tw, "   %s\t%s\t%d\t%s\n", h.ID(), tagString(h.Tags()), bans[h.ID()], yesNo(w.Reachable(h, atk)))
	}
	tw.Flush()
}
