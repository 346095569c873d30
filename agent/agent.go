// Package agent is the per-instance daemon: it long-polls its SQS queue, verifies and applies
// commands to the kernel through the firewall, keeps its desired state on disk, repairs drift and
// reports status. It deletes a message only after applying it.
package agent

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/bansshee/bansshee/agent/firewall"
	"github.com/bansshee/bansshee/proto"
)

// Firewall is what the agent needs of the kernel side.
type Firewall interface {
	Apply(ctx context.Context, s firewall.State) (firewall.Result, error)
	Ban(ctx context.Context, bans []firewall.Ban) error
	Unban(ctx context.Context, prefixes []netip.Prefix) error
	// Quick is Apply for periodic reconciles: it may skip comparing every set member.
	Quick(ctx context.Context, s firewall.State) (firewall.Result, error)
	Tripped(ctx context.Context) ([]firewall.Trip, error)
	ClearTripped(ctx context.Context, trips []firewall.Trip) error
}

// Config is everything the agent needs; cmd/bansshee-agent fills it from flags, env and file.
type Config struct {
	InstanceID string
	// Principal keys the status item (proto.StatusPrincipal): "<role id>:<instance id>" on EC2,
	// which the agent role's IAM policy pins; default the instance id.
	Principal   string
	QueuePrefix string // default bansshee
	QueueURL    string // overrides the lookup by name
	Keys        map[string]ed25519.PublicKey
	AdminCIDRs  []netip.Prefix
	// VPCCIDRs are the instance's VPC ranges (from IMDS): load balancers, NAT gateways and
	// bastions live there, and a rate limit must not throttle every client behind them.
	VPCCIDRs []netip.Prefix
	// VPCSource reads the VPC CIDRs (IMDS) when VPCCIDRs is empty: at Restore and then every
	// reconcile pass until it succeeds, so a first read that fails is not the last.
	VPCSource         func(context.Context) ([]netip.Prefix, error)
	StateDir          string
	Table             string // ledger table for the heartbeat; empty: no heartbeat
	ReconcileInterval time.Duration
	// KeepAlive: an unchanged status is written again after this long (default 4 min), so the
	// reconciler can tell a silent agent (SilentAfter, 10 min) from an idle one.
	KeepAlive   time.Duration
	WaitSeconds int32 // long poll (default 20)
	Window      time.Duration
	Limits      proto.Limits
	Version     string
	Log         *slog.Logger
}

// Agent is one running daemon.
type Agent struct {
	cfg      Config
	sqs      *sqs.Client
	ddb      *dynamodb.Client
	fw       Firewall
	verifier *proto.Verifier
	Metrics  *Metrics
	log      *slog.Logger

	mu          sync.Mutex // guards state, the kernel and the state file
	state       *State
	allow       []netip.Prefix
	queueURL    string
	lastErr     string
	kernelDirty bool // a kernel change failed: the next reconcile applies the whole state
	escalations []proto.Escalation
	healthy     time.Time // last successful receive
	passes      int       // reconcile passes
	// rebuilding: the state file was corrupt; the kernel is left as it was until a sync arrives.
	rebuilding bool
	saveErr    error             // the last state-file write failed (the kernel and memory hold the change)
	beatMu     sync.Mutex        // serialises heartbeats (the poll and reconcile loops both write)
	lastBeat   proto.AgentStatus // the last status written

	journalBytes, snapshotBytes int64 // sizes of journal.jsonl and state.json

	fwCounts  [2]int // bans per family the kernel should hold, for the state version and allowlist below
	fwCounted bool
	fwVersion int
	fwAllow   []netip.Prefix
}

// desired returns the kernel form of the state. The bans themselves are built only when a full
// Apply asks for them (firewall.State.Build); what is cached between passes is their number, so
// that an idle agent with a million bans holds them once, compactly, in its state. Bans that
// cover this instance's allowlist (a sync is the whole state and is not refused for one entry)
// stay in the state, so its digest matches the ledger's, but are left out of the kernel and
// counted. Callers hold a.mu.
func (a *Agent) desired() firewall.State {
	if a.fwVersion != a.state.Version() || !slices.Equal(a.fwAllow, a.allow) || !a.fwCounted {
		counts, refused := a.state.BanCounts(), a.state.Overlapping(a.allow)
		counts[0], counts[1] = counts[0]-refused[0], counts[1]-refused[1]
		a.Metrics.Refused.Set(float64(refused[0] + refused[1]))
		a.fwCounts, a.fwVersion, a.fwAllow, a.fwCounted = counts, a.state.Version(), a.allow, true
	}
	fs := a.state.FirewallWithoutBans(a.allow)
	fs.Build = func() []firewall.Ban {
		st := a.state.Firewall(a.allow)
		kept := st.Bans[:0]
		for _, b := range st.Bans {
			if err := firewall.CheckAllow([]firewall.Ban{b}, a.allow); err != nil {
				a.log.Error("not enforcing a ban that covers this instance's allowlist", "err", err)
				continue
			}
			kept = append(kept, b)
		}
		return kept
	}
	fs.BanCounts = a.fwCounts
	return fs
}

// New builds an agent. It touches neither AWS nor the kernel.
func New(cfg Config, sqsc *sqs.Client, ddb *dynamodb.Client, fw Firewall) (*Agent, error) {
	if cfg.InstanceID == "" {
		return nil, errors.New("instance id is required")
	}
	if len(cfg.Keys) == 0 {
		return nil, errors.New("at least one public key is required (--public-key)")
	}
	if cfg.StateDir == "" {
		cfg.StateDir = "/var/lib/bansshee"
	}
	if cfg.QueuePrefix == "" {
		cfg.QueuePrefix = "bansshee"
	}
	if cfg.ReconcileInterval == 0 {
		cfg.ReconcileInterval = 30 * time.Second
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 4 * time.Minute
	}
	if cfg.WaitSeconds == 0 {
		cfg.WaitSeconds = 20
	}
	if cfg.Limits == (proto.Limits{}) {
		cfg.Limits = proto.DefaultLimits()
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	a := &Agent{cfg: cfg, sqs: sqsc, ddb: ddb, fw: fw, Metrics: NewMetrics(), log: cfg.Log.With("instance", cfg.InstanceID),
		verifier: &proto.Verifier{Keys: cfg.Keys, Limits: cfg.Limits, Window: cfg.Window, To: cfg.InstanceID}}
	return a, nil
}

func (a *Agent) statePath() string { return filepath.Join(a.cfg.StateDir, "state.json") }

// Allowlist is what no ban may cover on this instance: proto.NeverBan (loopback, link-local and
// IMDS, multicast, broadcast, EC2's IPv6 services), its own addresses and the admin ranges.
func Allowlist(admin []netip.Prefix) []netip.Prefix {
	var allow []netip.Prefix
	for _, p := range proto.NeverBanPrefixes() {
		// ipset cannot hold a zero address; nothing arrives from 0.0.0.0/8 or :: anyway, and no
		// ban can cover them (the controller and the agent both refuse such bans).
		if !p.Addr().IsUnspecified() {
			allow = append(allow, p)
		}
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, ad := range addrs {
			if ipn, ok := ad.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
					ip = ip.Unmap()
					allow = append(allow, netip.PrefixFrom(ip, ip.BitLen()))
				}
			}
		}
	}
	return append(allow, admin...)
}

// Restore loads the state file and applies it to the kernel: the first thing Run does, before
// any poll, so a reboot brings the bans back without AWS.
func (a *Agent) Restore(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	st, err := a.load()
	if errors.Is(err, ErrCorrupt) {
		// Not a reason to stop protecting the instance (and for systemd to restart us in a
		// loop): keep the file for a post-mortem, leave the kernel's bans in place, and start
		// empty; the heartbeat's digest no longer matches, so the reconciler sends a sync.
		aside := fmt.Sprintf("%s.corrupt-%d", a.statePath(), time.Now().Unix())
		if rerr := os.Rename(a.statePath(), aside); rerr != nil {
			return fmt.Errorf("%w; moving it aside failed: %v", err, rerr)
		}
		a.Metrics.StateCorrupt.Inc()
		a.log.Error("state file corrupt: moved aside; kernel left as it is until a sync arrives", "err", err, "moved_to", aside)
		a.lastErr = "state file corrupt, moved to " + aside + "; waiting for a sync"
		st, err, a.rebuilding = NewState(), nil, true
	}
	if err != nil {
		return err
	}
	st.Prune(time.Now())
	if err := a.loadParts(st); err != nil {
		return err
	}
	a.state = st
	a.allow = a.allowlist()
	if a.rebuilding {
		return nil
	}
	res, err := a.fw.Apply(ctx, st.Firewall(a.allow))
	if err != nil {
		return fmt.Errorf("restore kernel state: %w", err)
	}
	a.setGauges()
	a.log.Info("restored state", "bans", st.BanCount(), "limits", len(st.Limits), "rev", st.AppliedRev, "added", res.Added, "removed", res.Removed)
	return nil
}

func (a *Agent) setGauges() {
	a.Metrics.BansActive.Set(float64(a.state.BanCount()))
	a.Metrics.AppliedRev.Set(float64(a.state.AppliedRev))
}

// Run restores, then polls and reconciles until ctx ends. Rules stay in the kernel when it returns.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.Restore(ctx); err != nil {
		return err
	}
	if err := a.resolveQueue(ctx); err != nil {
		return err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.reconcileLoop(ctx)
	}()
	a.pollLoop(ctx)
	wg.Wait()
	return nil
}

// resolveQueue finds the queue by name, waiting (with backoff) for the reconciler to create it.
func (a *Agent) resolveQueue(ctx context.Context) error {
	if a.cfg.QueueURL != "" {
		a.queueURL = a.cfg.QueueURL
		return nil
	}
	name := a.cfg.QueuePrefix + "-" + a.cfg.InstanceID + ".fifo"
	var b backoff
	for {
		out, err := a.sqs.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(name)})
		if err == nil {
			a.queueURL = aws.ToString(out.QueueUrl)
			a.log.Info("polling queue", "queue", a.queueURL)
			return nil
		}
		var missing *sqstypes.QueueDoesNotExist
		if errors.As(err, &missing) {
			a.log.Warn("queue not found yet; waiting for the reconciler to create it", "queue", name)
		} else {
			a.Metrics.AWSErrors.WithLabelValues("GetQueueUrl").Inc()
			a.log.Warn("cannot reach SQS; backing off", "queue", name, "err", err)
		}
		if !b.wait(ctx) {
			return ctx.Err()
		}
	}
}

// backoff is capped exponential backoff with jitter, 0.5 s to 10 s: short enough that an agent
// is back within seconds of an outage's end.
type backoff struct{ n int }

func (b *backoff) wait(ctx context.Context) bool {
	d := time.Duration(float64(500*time.Millisecond) * float64(uint(1)<<min(b.n, 6)))
	d = min(d, 10*time.Second)
	d = d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
	b.n++
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (b *backoff) reset() { b.n = 0 }

func (a *Agent) pollLoop(ctx context.Context) {
	var b backoff
	for ctx.Err() == nil {
		out, err := a.sqs.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{
			QueueUrl: aws.String(a.queueURL), WaitTimeSeconds: a.cfg.WaitSeconds, MaxNumberOfMessages: 10,
			MessageAttributeNames: []string{"All"},
		})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.Metrics.AWSErrors.WithLabelValues("ReceiveMessage").Inc()
			a.log.Warn("receive failed; backing off", "err", err)
			b.wait(ctx)
			continue
		}
		b.reset()
		a.mu.Lock()
		a.healthy = time.Now()
		a.mu.Unlock()
		for _, m := range out.Messages {
			// A message in hand is finished even if we are asked to stop.
			if !a.handle(context.WithoutCancel(ctx), m) {
				break // keep FIFO order: the rest come back after their visibility timeout
			}
		}
		if len(out.Messages) > 0 {
			a.heartbeat(context.WithoutCancel(ctx)) // so `bansshee ban --wait` sees the new revision now
		}
	}
}

// handle verifies and applies one message and deletes it. It returns false when the message
// could not be applied for a passing reason (it stays in the queue and comes back).
func (a *Agent) handle(ctx context.Context, sm sqstypes.Message) bool {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	attrs := map[string]string{}
	for k, v := range sm.MessageAttributes {
		attrs[k] = aws.ToString(v.StringValue)
	}
	body := []byte(aws.ToString(sm.Body))
	m, err := a.verifier.Decode(body, attrs)
	if errors.Is(err, proto.ErrStale) {
		// Signed by us but older than the replay window: an agent that was down comes back to
		// a queue of these. Skipped, not poisoned (the DLQ is for what must be looked at); the
		// reconciler sends a fresh sync once this agent's heartbeat shows it lagging.
		a.Metrics.Rejected.WithLabelValues("stale").Inc()
		a.log.Warn("skipped a message older than the replay window; a sync will follow", "err", err, "sqs_id", aws.ToString(sm.MessageId))
		a.deleteMessage(ctx, sm, "")
		return true
	}
	if err != nil {
		reason := proto.Reason(err)
		a.Metrics.Rejected.WithLabelValues(reason).Inc()
		a.log.Error("rejected message; it will go to the DLQ", "reason", reason, "err", err, "sqs_id", aws.ToString(sm.MessageId))
		a.poison(ctx, sm)
		return true
	}
	if m.Dropped > 0 {
		a.Metrics.Dropped.Add(float64(m.Dropped))
		a.log.Warn("sync entries dropped (expired in transit, or breaking a rule); applied the rest", "id", m.ID, "dropped", m.Dropped)
	}
	start := time.Now()
	if err := a.apply(ctx, m); err != nil {
		a.mu.Lock()
		a.lastErr = err.Error()
		a.mu.Unlock()
		a.log.Error("apply failed; the message stays in the queue", "id", m.ID, "kind", m.Kind, "err", err)
		return false
	}
	a.Metrics.ApplySeconds.Observe(time.Since(start).Seconds())
	a.Metrics.LagSeconds.Observe(time.Since(m.IssuedAt).Seconds())
	a.Metrics.Applied.WithLabelValues(string(m.Kind)).Inc()
	a.deleteMessage(ctx, sm, m.ID)
	a.log.Info("applied", "id", m.ID, "kind", m.Kind, "rev", m.Rev, "bans", len(m.Bans), "unbans", len(m.Unbans), "limits", len(m.Limits))
	return true
}

func (a *Agent) deleteMessage(ctx context.Context, sm sqstypes.Message, id string) {
	if _, err := a.sqs.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(a.queueURL), ReceiptHandle: sm.ReceiptHandle}); err != nil {
		// Applied but not deleted: it comes back and the revision rule makes it a no-op.
		a.Metrics.AWSErrors.WithLabelValues("DeleteMessage").Inc()
		a.log.Warn("delete failed after apply; a redelivery will be a no-op", "id", id, "err", err)
	}
}

// poison makes a message that can never apply visible again at once, so that it reaches the DLQ
// after maxReceiveCount quick receives instead of blocking the FIFO group for minutes.
func (a *Agent) poison(ctx context.Context, sm sqstypes.Message) {
	_, err := a.sqs.ChangeMessageVisibility(ctx, &sqs.ChangeMessageVisibilityInput{QueueUrl: aws.String(a.queueURL), ReceiptHandle: sm.ReceiptHandle, VisibilityTimeout: 0})
	if err != nil {
		a.Metrics.AWSErrors.WithLabelValues("ChangeMessageVisibility").Inc()
	}
}

// apply changes the desired state, the kernel, then the state file, in that order. On failure the
// in-memory state is reloaded from the file, which still holds the state before this message.
func (a *Agent) apply(ctx context.Context, m *proto.Message) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	ch := a.state.Apply(m, now)
	if m.Kind == proto.KindSync && m.Part != nil && m.Part.Count > 1 {
		if !ch.Full {
			// One part of several: keep it on disk before its message is deleted.
			return a.savePart(m)
		}
	}
	var err error
	if ch.Allows {
		// The allow set changes, and bans it now covers leave the kernel (desired() recounts).
		a.allow = a.allowlist()
		a.log.Info("allowlist", "rev", m.Rev, "entries", len(m.Allows))
	}
	switch {
	case ch.Full || ch.Limits || ch.Allows:
		_, err = a.fw.Apply(ctx, a.desired())
	default:
		if len(ch.Added) > 0 {
			fb := make([]firewall.Ban, 0, len(ch.Added))
			for _, b := range ch.Added {
				// The allowlist may have changed since handle checked (a.mu is held here).
				if firewall.CheckAllow([]firewall.Ban{{Prefix: b.Prefix()}}, a.allow) == nil {
					fb = append(fb, firewall.Ban{Prefix: b.Prefix(), Expires: b.ExpiresAt})
				}
			}
			err = a.fw.Ban(ctx, fb)
		}
		if err == nil && len(ch.Removed) > 0 {
			err = a.fw.Unban(ctx, ch.Removed)
		}
	}
	if err != nil {
		// The kernel refused (a full set, an ipset error). The message is still taken into the
		// state and the state file and then deleted; every reconcile pass retries the kernel from
		// the state until it takes it. Returned to the queue, it and every good message behind it
		// would come back until maxReceiveCount and go to the DLQ.
		a.kernelDirty = true
		a.lastErr = "kernel apply failed, retried every reconcile pass: " + err.Error()
		a.Metrics.KernelErrors.Inc()
		a.log.Error("kernel apply failed; the change is kept and retried every reconcile pass", "id", m.ID, "kind", m.Kind, "err", err)
	}
	if ch.Full {
		a.rebuilding = false
	}
	a.persist(m, ch.Full)
	if ch.Full && a.state.BanCount() > 10000 {
		// A large sync briefly needs tens of MB (parts, JSON, ipset batches); give them back so
		// an idle agent stays small.
		debug.FreeOSMemory()
	}
	if ch.Full && m.Part != nil {
		a.removeParts(m.Part.Set)
	}
	for _, set := range a.state.ExpiredSets() {
		a.removeParts(set)
	}
	a.setGauges()
	return nil
}

// The state on disk is a snapshot (state.json) and a journal of the messages applied since
// (journal.jsonl, one message per line, appended and fsynced): a ban on an agent holding a
// million need not rewrite a 100 MB file. The snapshot is written again, and the journal
// emptied, after a sync and once the journal outgrows an eighth of the snapshot. Replaying a
// message twice is harmless (the revision rule), so a crash between the two writes loses nothing.
func (a *Agent) journalPath() string { return filepath.Join(a.cfg.StateDir, "journal.jsonl") }

// load reads the snapshot and replays the journal over it.
func (a *Agent) load() (*State, error) {
	st, err := Load(a.statePath())
	if err != nil {
		return nil, err
	}
	n, size, err := ReplayJournal(st, a.journalPath(), time.Now())
	if err != nil {
		a.log.Warn("journal replay stopped at an unreadable line; the reconciler's sync repairs what it held", "err", err, "replayed", n)
	}
	a.journalBytes = size
	if fi, err := os.Stat(a.statePath()); err == nil {
		a.snapshotBytes = fi.Size()
	}
	return st, nil
}

// persist records an applied message: appended to the journal, or as a new snapshot after a sync,
// when the journal has grown past an eighth of the snapshot, or when an earlier write failed.
// Callers hold a.mu.
func (a *Agent) persist(m *proto.Message, full bool) {
	if full || a.saveErr != nil || a.journalBytes > max(64<<10, a.snapshotBytes/8) {
		a.save()
		return
	}
	n, err := appendJournal(a.journalPath(), m)
	if err != nil {
		a.noteSave(err)
		return
	}
	a.journalBytes += int64(n)
}

// save writes a snapshot of the state and empties the journal. A failure (a full disk) leaves the
// kernel and the in-memory state as they are, which is what the ledger wants; it is reported
// (metric, log, heartbeat) and retried on every reconcile pass. Callers hold a.mu.
func (a *Agent) save() {
	err := a.state.Save(a.statePath())
	if err == nil {
		if fi, serr := os.Stat(a.statePath()); serr == nil {
			a.snapshotBytes = fi.Size()
		}
		// The snapshot holds everything the journal did: empty it (a crash before this line
		// only replays what the snapshot already has).
		if terr := os.Remove(a.journalPath()); terr != nil && !errors.Is(terr, os.ErrNotExist) {
			err = terr
		} else {
			a.journalBytes = 0
		}
	}
	a.noteSave(err)
}

func (a *Agent) noteSave(err error) {
	switch {
	case err != nil:
		a.Metrics.SaveErrors.Inc()
		if a.saveErr == nil {
			a.log.Error("state file not written; the kernel keeps the change, retrying every reconcile", "err", err)
		}
		a.saveErr = err
		a.lastErr = err.Error()
	case a.saveErr != nil:
		a.log.Info("state file written again")
		a.saveErr, a.lastErr = nil, ""
	}
}

// allowlist is Allowlist with this agent's admin ranges and VPC CIDRs and, with the state, the
// ledger allowlist's entries in force. VPC CIDRs not yet known are read again (VPCSource) until
// they arrive. Callers hold a.mu.
func (a *Agent) allowlist() []netip.Prefix {
	if len(a.cfg.VPCCIDRs) == 0 && a.cfg.VPCSource != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		vpcs, err := a.cfg.VPCSource(ctx)
		cancel()
		if err != nil || len(vpcs) == 0 {
			a.log.Warn("VPC CIDRs unknown: not allowlisted in the kernel yet; read again next reconcile pass", "err", err)
		} else {
			a.cfg.VPCCIDRs = vpcs
			a.log.Info("VPC CIDRs allowlisted", "cidrs", vpcs)
		}
	}
	extra := append(slices.Clone(a.cfg.AdminCIDRs), a.cfg.VPCCIDRs...)
	if a.state != nil {
		extra = append(extra, a.state.ActiveAllows(time.Now())...)
	}
	return Allowlist(extra)
}

func (a *Agent) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.ReconcileInterval)
	defer t.Stop()
	a.heartbeat(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.Reconcile(ctx)
			a.heartbeat(ctx)
		}
	}
}

// Reconcile compares the kernel with the desired state and repairs drift.
func (a *Agent) Reconcile(ctx context.Context) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.state.Prune(time.Now())
	for _, set := range a.state.ExpiredSets() {
		a.removeParts(set)
	}
	a.allow = a.allowlist() // addresses can change (a new ENI)
	if a.saveErr != nil {
		a.save()
	}
	if a.rebuilding {
		return // the state file was corrupt: the kernel stays as it was until a sync arrives
	}
	// Every tenth pass compares every set member; the others only count them (cheap with 100 000).
	a.passes++
	apply, full := a.fw.Quick, a.passes%10 == 1 || a.kernelDirty
	if full {
		apply = a.fw.Apply
	}
	res, err := apply(ctx, a.desired())
	if err != nil {
		a.lastErr = err.Error()
		if a.kernelDirty {
			a.lastErr = "kernel apply failed, retried every reconcile pass: " + err.Error()
		}
		a.log.Error("reconcile failed", "err", err)
		return
	}
	if a.kernelDirty {
		a.kernelDirty, a.lastErr = false, ""
		a.log.Info("the kernel took the changes it had refused")
	}
	for _, r := range res.Repairs {
		a.Metrics.Repairs.WithLabelValues(r).Inc()
	}
	if res.Added+res.Removed > 0 {
		a.Metrics.Repairs.WithLabelValues("set_entries").Add(float64(res.Added + res.Removed))
	}
	if len(res.Repairs) > 0 || res.Added+res.Removed > 0 {
		a.log.Warn("repaired kernel drift", "repairs", res.Repairs, "added", res.Added, "removed", res.Removed)
	}
	a.setGauges()
	a.collectEscalations(ctx)
	if full && a.state.BanCount() > 10000 {
		debug.FreeOSMemory() // a full pass of a large state allocates tens of MB for a moment
	}
}

// MaxEscalations bounds the escalations one heartbeat carries (the status item must stay far
// below DynamoDB's 400 KB, and the controller takes at most 20 per instance per pass anyway).
const MaxEscalations = 100

// collectEscalations reads the verified trips from the kernel and credits each to the escalating
// limit whose rule matched it: the first by id (the rules' order) with its protocol and port.
func (a *Agent) collectEscalations(ctx context.Context) {
	var limits []proto.Limit
	for _, l := range a.state.Limits {
		if l.Escalate {
			limits = append(limits, l)
		}
	}
	if len(limits) == 0 {
		return
	}
	slices.SortFunc(limits, func(x, y proto.Limit) int { return strings.Compare(x.ID, y.ID) })
	tripped, err := a.fw.Tripped(ctx)
	if err != nil || len(tripped) == 0 {
		return
	}
	now := time.Now()
	for _, t := range tripped {
		id := ""
		for _, l := range limits {
			if l.Proto == t.Proto && slices.Contains(l.Ports, t.Port) {
				id = l.ID
				break
			}
		}
		if id == "" {
			continue
		}
		dup := slices.ContainsFunc(a.escalations, func(e proto.Escalation) bool { return e.Addr == t.Addr.String() && e.LimitID == id })
		if dup {
			continue
		}
		if len(a.escalations) >= MaxEscalations {
			a.Metrics.Escalations.WithLabelValues("dropped").Inc()
			continue
		}
		a.Metrics.Escalations.WithLabelValues("reported").Inc()
		a.escalations = append(a.escalations, proto.Escalation{Addr: t.Addr.String(), LimitID: id, Seen: now})
		a.log.Warn("source tripped an escalating rate limit", "addr", t.Addr, "port", t.Port, "limit", id)
	}
	_ = a.fw.ClearTripped(ctx, tripped)
}

// Status is the agent's heartbeat as it would be written now.
func (a *Agent) Status() proto.AgentStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	principal := a.cfg.Principal
	if principal == "" {
		principal = a.cfg.InstanceID
	}
	pk, sk := proto.StatusKey(principal)
	now := time.Now().UTC()
	// Escalations are reported for ten minutes: the reconciler turns them into bans idempotently.
	kept := a.escalations[:0]
	for _, e := range a.escalations {
		if now.Sub(e.Seen) < 10*time.Minute {
			kept = append(kept, e)
		}
	}
	a.escalations = kept
	a.state.Prune(now)
	return proto.AgentStatus{PK: pk, SK: sk, InstanceID: a.cfg.InstanceID, AppliedRev: a.state.AppliedRev, Bans: a.state.BanCount(), Digest: a.state.Digest(),
		Limits: len(a.state.Limits), Heartbeat: now, LastError: a.lastErr, Version: a.cfg.Version,
		Escalations: append([]proto.Escalation(nil), kept...), ExpiresAt: now.Add(24 * time.Hour).Unix(),
		Caps: proto.CapAllow, AllowRev: a.state.AllowRev}
}

// heartbeat writes the status item when it changed (a revision applied, a digest, an error, an
// escalation) or when the keep-alive interval has passed: an idle agent costs one write per
// keep-alive, not one per reconcile pass.
func (a *Agent) heartbeat(ctx context.Context) {
	if a.ddb == nil || a.cfg.Table == "" {
		return
	}
	a.beatMu.Lock()
	defer a.beatMu.Unlock()
	st := a.Status()
	same := st
	same.Heartbeat, same.ExpiresAt = a.lastBeat.Heartbeat, a.lastBeat.ExpiresAt
	if !a.lastBeat.Heartbeat.IsZero() && reflect.DeepEqual(same, a.lastBeat) && st.Heartbeat.Sub(a.lastBeat.Heartbeat) < a.cfg.KeepAlive {
		return
	}
	item, err := attributevalue.MarshalMap(st)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := a.ddb.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(a.cfg.Table), Item: item}); err != nil {
		a.Metrics.AWSErrors.WithLabelValues("PutItem").Inc()
		a.log.Warn("heartbeat failed", "err", err)
		return
	}
	a.lastBeat = st
}

// Heartbeat writes the status item now (after a change an operator waits for).
func (a *Agent) Heartbeat(ctx context.Context) { a.heartbeat(ctx) }

// Healthy reports whether the agent has polled its queue successfully in the last two minutes.
func (a *Agent) Healthy() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state == nil {
		return errors.New("state not restored yet")
	}
	if time.Since(a.healthy) > 2*time.Minute {
		return fmt.Errorf("no successful receive since %s", a.healthy.Format(time.RFC3339))
	}
	return nil
}

// Sync parts live in <state-dir>/sync-<set>-<index>.json until their sync is complete.
func (a *Agent) partPath(set string, index int) string {
	return filepath.Join(a.cfg.StateDir, fmt.Sprintf("sync-%s-%d.json", set, index))
}

func (a *Agent) savePart(m *proto.Message) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	path := a.partPath(m.Part.Set, m.Part.Index)
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("save sync part: %w", err)
	}
	if _, err = f.Write(b); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save sync part: %w", err)
	}
	return nil
}

func (a *Agent) removeParts(set string) {
	files, _ := filepath.Glob(filepath.Join(a.cfg.StateDir, "sync-"+set+"-*.json"))
	for _, f := range files {
		os.Remove(f)
	}
}

// loadParts puts the parts of unfinished syncs back in st; parts older than an hour belong to a
// sync that will never finish (the reconciler has sent a newer one) and are removed.
func (a *Agent) loadParts(st *State) error {
	files, err := filepath.Glob(filepath.Join(a.cfg.StateDir, "sync-*.json"))
	if err != nil {
		return err
	}
	for _, f := range files {
		info, err := os.Stat(f)
		if err != nil || time.Since(info.ModTime()) > time.Hour {
			os.Remove(f)
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		m, err := proto.UnmarshalStored(b)
		if err != nil || m.Part == nil {
			a.log.Warn("dropping an unreadable sync part", "file", f, "err", err)
			os.Remove(f)
			continue
		}
		st.addPart(m, info.ModTime())
	}
	return nil
}
