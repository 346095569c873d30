package main

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bansshee/bansshee/agent"
	"github.com/bansshee/bansshee/agent/firewall"
	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/internal/awstest"
	"github.com/bansshee/bansshee/internal/fleet"
	"github.com/bansshee/bansshee/internal/netns"
	"github.com/bansshee/bansshee/proto"
)

// realWorld: network namespaces, real agents, real packets.
type realWorld struct {
	f     *fleet.Fleet
	c     *controller.Controller
	table string
	atk2  netip.Addr
	once  sync.Once
}

type realHost struct{ n *fleet.Node }

func (h realHost) ID() string              { return h.n.ID }
func (h realHost) Tags() map[string]string { return h.n.Tags }

func newRealWorld(ctx context.Context) (*realWorld, error) {
	table := awstest.Unique("bansshee")
	fmt.Println("   building bansshee-agent and starting the emulator ...")
	f, err := fleet.New(ctx, fleet.Options{Table: table})
	if err != nil {
		return nil, err
	}
	w := &realWorld{f: f, table: table, atk2: netip.MustParseAddr("10.97.200.2")}
	if err := f.Lab.AddAddr(f.Attacker, w.atk2); err != nil {
		f.Close()
		return nil, err
	}
	w.c, err = controller.New(controller.Config{AgentRoleID: fleet.AgentRoleID, EC2: f.Clients.EC2, SQS: f.Clients.SQS, DDB: f.Clients.DynamoDB, Table: table, Prefix: f.Queues.Prefix, Signer: f.Signer, VisibilityTimeout: 5})
	if err == nil {
		err = w.c.Ledger.CreateTable(ctx)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return w, nil
}

func (w *realWorld) AddInstance(ctx context.Context, tags map[string]string) (host, error) {
	n, err := w.f.AddNode(ctx, tags)
	if err != nil {
		return nil, err
	}
	return realHost{n}, nil
}

func (w *realWorld) StartAgent(h host) error { return w.f.StartAgent(h.(realHost).n) }

func (w *realWorld) Attempt(ctx context.Context, h host, src netip.Addr, n int) int {
	got, _ := netns.BruteForce(ctx, &w.f.Attacker.NS, src, netip.AddrPortFrom(h.(realHost).n.Host.IP4, 110), n, 500*time.Millisecond)
	return got
}

func (w *realWorld) Reachable(h host, src netip.Addr) bool {
	return w.f.Reachable(h.(realHost).n, src, 300*time.Millisecond)
}

func (w *realWorld) Attacker() (netip.Addr, netip.Addr) { return w.f.Attacker.IP4, w.atk2 }
func (w *realWorld) Controller() *controller.Controller { return w.c }
func (w *realWorld) Table() string                      { return w.table }
func (w *realWorld) Clients() awstest.Clients           { return w.f.Clients }
func (w *realWorld) Close()                             { w.once.Do(w.f.Close) }
func (w *realWorld) Logs() string {
	var b strings.Builder
	for _, n := range w.f.Nodes() {
		fmt.Fprintf(&b, "== %s\n%s\n", n.ID, n.Log.String())
	}
	return b.String()
}

// dryWorld: the same agents in-process with a firewall that only records; reachability is
// computed from what it holds.
type dryWorld struct {
	env     *awstest.Env
	clients awstest.Clients
	c       *controller.Controller
	signer  proto.Signer
	table   string
	prefix  string
	mu      sync.Mutex
	once    sync.Once
	dirs    []string
	cancels []context.CancelFunc
	wg      sync.WaitGroup
}

type dryHost struct {
	id   string
	tags map[string]string
	fw   *dryFirewall
}

func (h *dryHost) ID() string              { return h.id }
func (h *dryHost) Tags() map[string]string { return h.tags }

func newDryWorld(ctx context.Context) (*dryWorld, error) {
	env, err := awstest.Start()
	if err != nil {
		return nil, err
	}
	w := &dryWorld{env: env, clients: awstest.NewClients(env.Config("")), table: awstest.Unique("bansshee"), prefix: awstest.Unique("bansshee")}
	if w.signer, err = proto.GenerateKey("demo"); err != nil {
		return nil, err
	}
	w.c, err = controller.New(controller.Config{AgentRoleID: fleet.AgentRoleID, EC2: w.clients.EC2, SQS: w.clients.SQS, DDB: w.clients.DynamoDB, Table: w.table, Prefix: w.prefix, Signer: w.signer, VisibilityTimeout: 5})
	if err == nil {
		err = w.c.Ledger.CreateTable(ctx)
	}
	if err != nil {
		env.Close()
		return nil, err
	}
	return w, nil
}

func (w *dryWorld) AddInstance(ctx context.Context, tags map[string]string) (host, error) {
	id, err := awstest.Launch(ctx, w.clients.EC2, tags)
	if err != nil {
		return nil, err
	}
	return &dryHost{id: id, tags: tags, fw: &dryFirewall{bans: map[netip.Prefix]time.Time{}, conns: map[netip.Addr][]time.Time{}}}, nil
}

func (w *dryWorld) StartAgent(h host) error {
	dh := h.(*dryHost)
	dir, err := os.MkdirTemp("", "bansshee-demo-agent-")
	if err != nil {
		return err
	}
	a, err := agent.New(agent.Config{InstanceID: dh.id, QueuePrefix: w.prefix,
		Keys: map[string]ed25519.PublicKey{w.signer.KeyID: w.signer.Key.Public().(ed25519.PublicKey)}, StateDir: dir, Table: w.table,
		ReconcileInterval: 2 * time.Second, WaitSeconds: 2, Log: slog.New(slog.DiscardHandler)}, w.clients.SQS, w.clients.DynamoDB, dh.fw)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.mu.Lock()
	w.cancels = append(w.cancels, cancel)
	w.dirs = append(w.dirs, dir)
	w.mu.Unlock()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		_ = a.Run(ctx)
	}()
	return nil
}

func (w *dryWorld) Attempt(_ context.Context, h host, src netip.Addr, n int) int {
	got := 0
	for i := 0; i < n; i++ {
		if !h.(*dryHost).fw.connect(src) {
			break
		}
		got++
	}
	return got
}

func (w *dryWorld) Reachable(h host, src netip.Addr) bool {
	fw := h.(*dryHost).fw
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return !fw.bannedLocked(src)
}

func (w *dryWorld) Attacker() (netip.Addr, netip.Addr) {
	return netip.MustParseAddr("198.51.100.66"), netip.MustParseAddr("198.51.100.67")
}
func (w *dryWorld) Controller() *controller.Controller { return w.c }
func (w *dryWorld) Table() string                      { return w.table }
func (w *dryWorld) Clients() awstest.Clients           { return w.clients }
func (w *dryWorld) Logs() string                       { return "(agents run in-process in a dry run)" }
func (w *dryWorld) Close()                             { w.once.Do(w.close) }

func (w *dryWorld) close() {
	w.mu.Lock()
	for _, c := range w.cancels {
		c()
	}
	w.mu.Unlock()
	w.wg.Wait()
	for _, d := range w.dirs {
		os.RemoveAll(d)
	}
	w.env.Close()
}

// dryFirewall records what an agent would put in the kernel and answers connection attempts the
// way the BANSSHEE chain would: allow, then ban (with expiry), then rate limits.
type dryFirewall struct {
	mu     sync.Mutex
	bans   map[netip.Prefix]time.Time
	allow  []netip.Prefix
	limits []proto.Limit
	conns  map[netip.Addr][]time.Time
}

func (f *dryFirewall) Apply(_ context.Context, s firewall.State) (firewall.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bans = map[netip.Prefix]time.Time{}
	for _, b := range s.Bans {
		f.bans[b.Prefix] = b.Expires
	}
	f.allow, f.limits = s.Allow, s.Limits
	return firewall.Result{}, nil
}

func (f *dryFirewall) Quick(ctx context.Context, s firewall.State) (firewall.Result, error) {
	return f.Apply(ctx, s)
}

func (f *dryFirewall) Ban(_ context.Context, bans []firewall.Ban) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range bans {
		f.bans[b.Prefix] = b.Expires
	}
	return nil
}

func (f *dryFirewall) Unban(_ context.Context, ps []netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range ps {
		delete(f.bans, p)
	}
	return nil
}

func (f *dryFirewall) Tripped(context.Context) ([]firewall.Trip, error)    { return nil, nil }
func (f *dryFirewall) ClearTripped(context.Context, []firewall.Trip) error { return nil }

func (f *dryFirewall) bannedLocked(src netip.Addr) bool {
	for _, a := range f.allow {
		if a.Contains(src) {
			return false
		}
	}
	now := time.Now()
	for p, exp := range f.bans {
		if p.Contains(src) && (exp.IsZero() || exp.After(now)) {
			return true
		}
	}
	return false
}

// connect is one new connection to port 110 from src.
func (f *dryFirewall) connect(src netip.Addr) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.bannedLocked(src) {
		return false
	}
	now := time.Now()
	for _, l := range f.limits {
		if !slices.Contains(l.Ports, 110) {
			continue
		}
		var recent []time.Time
		for _, t := range f.conns[src] {
			if now.Sub(t) < time.Duration(l.Seconds)*time.Second {
				recent = append(recent, t)
			}
		}
		if len(recent) >= l.Hits {
			f.conns[src] = recent
			return false
		}
		f.conns[src] = append(recent, now)
	}
	return true
}
