package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/internal/fleet"
)

// feedServer is a local HTTPS publisher whose list can be changed between fetches.
type feedServer struct {
	*httptest.Server
	mu   sync.Mutex
	body []byte
}

func newFeedServer() *feedServer {
	fs := &feedServer{}
	fs.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fs.mu.Lock()
		body := fs.body
		fs.mu.Unlock()
		etag := fmt.Sprintf(`"%d-%x"`, len(body), fnv(body))
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("ETag", etag)
		_, _ = w.Write(body)
	}))
	return fs
}

func fnv(b []byte) uint32 {
	h := uint32(2166136261)
	for _, c := range b {
		h = (h ^ uint32(c)) * 16777619
	}
	return h
}

// feedBody is n addresses in 100.64.0.0/10, one per line, with the first line replaced by extra.
func feedBody(n int, extra string) []byte {
	var b bytes.Buffer
	b.WriteString("# bench feed\n")
	for i := range n {
		if i == 0 && extra != "" {
			b.WriteString(extra + "\n")
			continue
		}
		fmt.Fprintf(&b, "100.%d.%d.%d\n", 64+i>>16, (i>>8)&255, i&255)
	}
	return b.Bytes()
}

// kernelCount is the number of entries in a node's IPv4 ban set, from the set's header.
func kernelCount(n *fleet.Node) (int, error) {
	out, err := n.Host.Run("ipset", "list", "-t", "bansshee-ban4")
	if err != nil {
		return 0, err
	}
	_, rest, ok := strings.Cut(out, "Number of entries: ")
	if !ok {
		return 0, fmt.Errorf("no entry count in %q", out)
	}
	v, _, _ := strings.Cut(rest, "\n")
	return strconv.Atoi(strings.TrimSpace(v))
}

func waitKernels(ctx context.Context, nodes []*fleet.Node, want int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for _, n := range nodes {
		for {
			got, err := kernelCount(n)
			if err == nil && got == want {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("%s: kernel holds %d entries, want %d (%v)", n.ID, got, want, err)
			}
			time.Sleep(50 * time.Millisecond) // polling interval
		}
	}
	return nil
}

// runFeeds: a feed of 100 000 entries to 20 agents, then a one-line change; a feed of a million
// entries to one agent, then the full sync of a new instance from the ledger.
func runFeeds(ctx context.Context, emit func(Row)) error {
	if err := feeds100k(ctx, emit); err != nil {
		return err
	}
	return feeds1M(ctx, emit)
}

func feeds100k(ctx context.Context, emit func(Row)) error {
	const entries = 100000
	n := e2eAgents
	fmt.Fprintf(os.Stderr, "   starting %d agents ...\n", n)
	f, c, err := benchFleet(ctx, n)
	if err != nil {
		return err
	}
	defer f.Close()
	srv := newFeedServer()
	defer srv.Close()
	c.FeedClient = srv.Client()
	cs := fmt.Sprintf("%d-%dagents", entries, n)
	var ids []string
	for _, node := range f.Nodes() {
		ids = append(ids, node.ID)
	}
	srv.body = feedBody(entries, "")
	if _, err := c.AddFeed(ctx, controller.FeedSpec{Name: "bench", URL: srv.URL + "/list", Target: "Role=mail"}); err != nil {
		return err
	}
	f.Env.ResetOps()
	t0 := time.Now()
	rep, err := c.SyncFeed(ctx, "bench", controller.FeedOptions{})
	if err != nil || rep.Err != nil || rep.Entries != entries {
		return fmt.Errorf("first version: %v %s", err, rep)
	}
	if err := waitRev(ctx, c, ids, rep.Result.Rev, 120*time.Second); err != nil {
		return err
	}
	reach := time.Since(t0)
	if err := waitKernels(ctx, f.Nodes(), entries, 30*time.Second); err != nil {
		return err
	}
	emit(Row{"feeds", cs, "reach_seconds", reach.Seconds(), "s"})
	emit(Row{"feeds", cs, "messages_per_agent", float64(f.Env.Ops()["sqs:SendMessage"]) / float64(n), "msgs"})

	// One line changes upstream, once the agents have finished with the sync (on 2 cores, 20 agents
	// writing 100 000-entry snapshots queue behind each other; on a fleet each has its own CPU).
	if err := waitIdle(ctx, f.Nodes(), 60*time.Second); err != nil {
		return err
	}
	srv.mu.Lock()
	srv.body = feedBody(entries, "198.51.100.1")
	srv.mu.Unlock()
	f.Env.ResetOps()
	t1 := time.Now()
	rep, err = c.SyncFeed(ctx, "bench", controller.FeedOptions{})
	if err != nil || rep.Delivery != "diff" || len(rep.Added) != 1 || len(rep.Removed) != 1 {
		return fmt.Errorf("one-line change: %v %s", err, rep)
	}
	if err := waitRev(ctx, c, ids, rep.Result.Rev, 60*time.Second); err != nil {
		return err
	}
	emit(Row{"feeds", cs, "one_line_seconds", time.Since(t1).Seconds(), "s"})
	if os.Getenv("BANSSHEE_BENCH_VERBOSE") != "" {
		fmt.Fprintf(os.Stderr, "t0=%s t1=%s\n%s\n", t0.Format(time.RFC3339Nano), t1.Format(time.RFC3339Nano), f.Nodes()[0].Log.String())
	}
	emit(Row{"feeds", cs, "one_line_messages_per_agent", float64(f.Env.Ops()["sqs:SendMessage"]) / float64(n), "msgs"})
	for _, node := range f.Nodes() {
		if _, err := node.Host.Run("ipset", "test", "bansshee-ban4", "198.51.100.1"); err != nil {
			return fmt.Errorf("%s: the added line is not in the kernel: %v", node.ID, err)
		}
		if _, err := node.Host.Run("ipset", "test", "bansshee-ban4", "100.64.0.0"); err == nil {
			return fmt.Errorf("%s: the removed line is still in the kernel", node.ID)
		}
	}
	return nil
}

func feeds1M(ctx context.Context, emit func(Row)) error {
	const entries = 1000000
	f, c, err := benchFleet(ctx, 1)
	if err != nil {
		return err
	}
	defer f.Close()
	srv := newFeedServer()
	defer srv.Close()
	c.FeedClient = srv.Client()
	srv.body = feedBody(entries, "")
	cs := "1000000-1agent"
	if _, err := c.AddFeed(ctx, controller.FeedSpec{Name: "big", URL: srv.URL + "/list", Target: "Role=mail", MaxBytes: 64 << 20}); err != nil {
		return err
	}
	t0 := time.Now()
	rep, err := c.SyncFeed(ctx, "big", controller.FeedOptions{})
	if err != nil || rep.Err != nil || rep.Entries != entries {
		return fmt.Errorf("first version: %v %s", err, rep)
	}
	sent := time.Since(t0)
	first := f.Nodes()[0]
	if err := waitRev(ctx, c, []string{first.ID}, rep.Result.Rev, 180*time.Second); err != nil {
		return err
	}
	if err := waitKernels(ctx, []*fleet.Node{first}, entries, 30*time.Second); err != nil {
		return err
	}
	emit(Row{"feeds", cs, "fetch_to_kernel_seconds", time.Since(t0).Seconds(), "s"})
	emit(Row{"feeds", cs, "fetch_store_send_seconds", sent.Seconds(), "s"})

	// A new instance: a controller that has read nothing yet (cold cache) syncs it from the ledger.
	node, err := f.AddNode(ctx, map[string]string{"Role": "mail", "bansshee:managed": "true"})
	if err != nil {
		return err
	}
	cold, err := controller.New(controller.Config{AgentRoleID: fleet.AgentRoleID, EC2: f.Clients.EC2, SQS: f.Clients.SQS, DDB: f.Clients.DynamoDB, Table: c.Table, Prefix: f.Queues.Prefix, Signer: f.Signer})
	if err != nil {
		return err
	}
	t1 := time.Now()
	prep, err := cold.ReconcileOnce(ctx)
	if err != nil {
		return err
	}
	if len(prep.Synced) != 1 || prep.Synced[0] != node.ID {
		return fmt.Errorf("the reconcile pass synced %v, want the new instance %s", prep.Synced, node.ID)
	}
	if err := f.StartAgent(node); err != nil {
		return err
	}
	if err := waitKernels(ctx, []*fleet.Node{node}, entries, 180*time.Second); err != nil {
		return err
	}
	emit(Row{"feeds", cs, "ledger_to_kernel_seconds", time.Since(t1).Seconds(), "s"})
	peak, _ := procStatus(node.Pid(), "VmHWM:")
	emit(Row{"feeds", cs, "agent_peak_rss_bytes", float64(peak), "bytes"})
	return nil
}

// waitIdle polls until the agents together use less than a tenth of a core over half a second.
func waitIdle(ctx context.Context, nodes []*fleet.Node, limit time.Duration) error {
	total := func() time.Duration {
		var sum time.Duration
		for _, n := range nodes {
			c, _ := procCPU(n.Pid())
			sum += c
		}
		return sum
	}
	deadline := time.Now().Add(limit)
	prev := total()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(500 * time.Millisecond) // sampling interval of the CPU counters
		cur := total()
		if cur-prev < 50*time.Millisecond {
			return nil
		}
		prev = cur
	}
	return fmt.Errorf("the agents were still busy after %s", limit)
}

// waitRev waits until every agent of ids reports revision rev.
func waitRev(ctx context.Context, c *controller.Controller, ids []string, rev int64, limit time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	if pending, _ := c.Wait(wctx, ids, rev, nil); len(pending) > 0 {
		return fmt.Errorf("%d of %d agents did not report revision %d in %s", len(pending), len(ids), rev, limit)
	}
	return nil
}
