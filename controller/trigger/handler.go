package trigger

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/proto"
	"golang.org/x/sync/errgroup"
)

// Decision is one ban the handler decided on.
type Decision struct {
	CIDR    string `json:"cidr"`
	Target  string `json:"target"`
	TTL     string `json:"ttl"`
	Reason  string `json:"reason"`
	Trigger string `json:"trigger"`
	Cause   *Cause `json:"cause,omitempty"`
	ttl     time.Duration
}

// Cause is what made a jail decide: where the lines came from and how many.
type Cause struct {
	LogGroup  string `json:"log_group,omitempty"`
	LogStream string `json:"log_stream,omitempty"`
	Failures  int    `json:"failures"`
	Lines     int    `json:"lines"`
	Window    string `json:"window,omitempty"`
	Finding   string `json:"finding,omitempty"` // a GuardDuty finding's id
}

// Ignored is something the handler saw and did not act on, with why.
type Ignored struct {
	Reason string `json:"reason"`
}

// Output is the handler's answer (and what `bansshee-lambda invoke` prints).
type Output struct {
	Kind       string     `json:"kind"`
	Bans       []Decision `json:"bans"`
	Unbans     []string   `json:"unbans,omitempty"`
	Ignored    []Ignored  `json:"ignored"`
	Reconciled bool       `json:"reconciled,omitempty"`
	Feeds      []string   `json:"feeds,omitempty"` // a schedule's feed refreshes, a line each
	Rev        int64      `json:"rev,omitempty"`
	// StreamCapped counts bans a log stream could not make fleet-wide (over its hourly cap).
	StreamCapped int `json:"stream_capped,omitempty"`
	// Simulated is what simulate-mode triggers would have banned (and did not).
	Simulated []string `json:"simulated,omitempty"`

	batchKey string                            // the log batch's dedupe key
	after    []func(ctx context.Context) error // writes that run beside the bans (connection state)
}

// Actor carries decisions out: the controller. Nil means dry run.
type Actor interface {
	FilterCIDRs(ctx context.Context, cidrs []string) ([]netip.Prefix, map[string]error, error)
	Ban(ctx context.Context, req controller.BanRequest) (*controller.Result, error)
	Unban(ctx context.Context, cidrs []string) (*controller.Result, error)
	ReconcileOnce(ctx context.Context) (*controller.Report, error)
}

// LogsReader reads log events (the CloudWatch Logs client).
type LogsReader interface {
	FilterLogEvents(ctx context.Context, in *cloudwatchlogs.FilterLogEventsInput, opts ...func(*cloudwatchlogs.Options)) (*cloudwatchlogs.FilterLogEventsOutput, error)
}

// Handler recognises an event, decides, and (unless dry-run) acts.
type Handler struct {
	Cfg     *Config
	Counter Counter
	Actor   Actor
	Logs    LogsReader // for alarm queries; nil: such alarms are ignored with a reason
	Log     *slog.Logger
	Now     func() time.Time
	// EMF receives the embedded-metric-format lines (the Lambda's stdout); nil: none.
	EMF io.Writer
}

// ErrUnknownEvent is returned for JSON that is none of the shapes the handler knows.
var ErrUnknownEvent = errors.New("unrecognised event")

type probe struct {
	AWSLogs *struct {
		Data string `json:"data"`
	} `json:"awslogs"`
	Records []struct {
		EventSource string `json:"EventSource"`
		Sns         struct {
			Message string `json:"Message"`
		} `json:"Sns"`
	} `json:"Records"`
	Source     string          `json:"source"`
	DetailType string          `json:"detail-type"`
	Detail     json.RawMessage `json:"detail"`
	Ban        *DirectBan      `json:"ban"`
	Unban      *DirectUnban    `json:"unban"`
}

// DirectBan is the {"ban": {...}} invoke other tools use.
type DirectBan struct {
	CIDRs  []string `json:"cidrs"`
	Target string   `json:"target"`
	TTL    Duration `json:"ttl"`
	Reason string   `json:"reason"`
}

// DirectUnban is the {"unban": {...}} invoke.
type DirectUnban struct {
	CIDRs []string `json:"cidrs"`
}

// Handle processes one event.
func (h *Handler) Handle(ctx context.Context, raw []byte) (*Output, error) {
	if h.Log == nil {
		h.Log = slog.New(slog.DiscardHandler)
	}
	if h.Now == nil {
		h.Now = time.Now
	}
	var p probe
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("%w: not a JSON object: %v", ErrUnknownEvent, err)
	}
	out := &Output{Bans: []Decision{}, Ignored: []Ignored{}}
	var err error
	switch {
	case p.AWSLogs != nil:
		out.Kind = "cloudwatch-logs"
		err = h.logs(ctx, p.AWSLogs.Data, out)
	case len(p.Records) > 0 && p.Records[0].EventSource == "aws:sns":
		out.Kind = "sns"
		for _, r := range p.Records {
			if err := h.snsAlarm(ctx, r.Sns.Message, out); err != nil {
				return out, err
			}
		}
	case p.Source == "aws.cloudwatch" && p.DetailType == "CloudWatch Alarm State Change":
		out.Kind = "eventbridge-alarm"
		err = h.eventBridgeAlarm(ctx, p.Detail, out)
	case p.Source == "aws.guardduty" && p.DetailType == "GuardDuty Finding":
		out.Kind = "guardduty"
		h.guardDuty(p.Detail, out)
	case p.Source == "aws.events" && p.DetailType == "Scheduled Event":
		out.Kind = "schedule"
		if h.Actor != nil {
			rep, err := h.Actor.ReconcileOnce(ctx)
			if rep != nil {
				for _, f := range rep.Feeds {
					out.Feeds = append(out.Feeds, f.String())
				}
				h.Log.Info("reconcile pass", "instances", rep.Instances, "synced", len(rep.Synced), "escalated", len(rep.Escalated),
					"converged", rep.Fleet.Converged, "lagging", rep.Fleet.Lagging, "silent", rep.Fleet.Silent)
				h.emf(out, rep)
			}
			out.Reconciled = err == nil
			return out, err
		}
		out.Ignored = append(out.Ignored, Ignored{"dry run: the reconcile pass was not run"})
		return out, nil
	case p.Ban != nil:
		out.Kind = "direct-ban"
		ttl := time.Duration(p.Ban.TTL)
		if ttl == 0 {
			ttl = time.Duration(h.Cfg.DefaultTTL)
		}
		target := p.Ban.Target
		if target == "" {
			target = h.Cfg.DefaultTarget
		}
		for _, c := range p.Ban.CIDRs {
			h.decide(out, c, target, ttl, p.Ban.Reason, "invoke")
		}
	case p.Unban != nil:
		out.Kind = "direct-unban"
		out.Unbans = p.Unban.CIDRs
		if h.Actor != nil && len(p.Unban.CIDRs) > 0 {
			res, err := h.Actor.Unban(ctx, p.Unban.CIDRs)
			if err != nil {
				return out, err
			}
			out.Rev = res.Rev
		}
		return out, nil
	default:
		return nil, fmt.Errorf("%w: not a CloudWatch Logs batch, SNS alarm, EventBridge alarm, GuardDuty finding, schedule or ban/unban invoke", ErrUnknownEvent)
	}
	if err != nil {
		return out, err
	}
	var after errgroup.Group
	for _, fn := range out.after {
		after.Go(func() error { return fn(ctx) })
	}
	err = h.act(ctx, out)
	err = errors.Join(err, after.Wait())
	if err != nil && out.batchKey != "" {
		// The batch is recorded as counted, so Lambda's retry will not decide these bans again:
		// keep them with the record for the retry to carry out.
		if perr := h.Counter.SetPending(ctx, out.batchKey, out.Bans, time.Hour, h.Now()); perr != nil {
			h.Log.Error("bans of a failed invocation not kept for its retry", "err", perr, "bans", len(out.Bans))
		}
	}
	h.emf(out, nil)
	return out, err
}

func (h *Handler) emf(out *Output, rep *controller.Report) {
	if h.EMF == nil {
		return
	}
	if err := writeEMF(h.EMF, out, rep, h.Now()); err != nil {
		h.Log.Warn("metrics (EMF) not written", "err", err)
	}
}

// decide adds a ban decision, or an ignored entry for an address that can never be banned.
func (h *Handler) decide(out *Output, addr, target string, ttl time.Duration, reason, trigger string) {
	h.decideCause(out, addr, target, ttl, reason, trigger, nil)
}

func (h *Handler) decideCause(out *Output, addr, target string, ttl time.Duration, reason, trigger string, cause *Cause) {
	p, err := proto.ParseCIDR(addr)
	if err == nil {
		err = proto.DefaultLimits().CheckPrefix(p)
	}
	if err != nil {
		out.Ignored = append(out.Ignored, Ignored{fmt.Sprintf("%s: %s: %v", trigger, addr, err)})
		return
	}
	for _, d := range out.Bans {
		if d.CIDR == p.String() && d.Target == target {
			return
		}
	}
	out.Bans = append(out.Bans, Decision{CIDR: p.String(), Target: target, TTL: ttl.String(), Reason: reason, Trigger: trigger, Cause: cause, ttl: ttl})
}

// act carries out the decisions: allowlisted addresses become ignored entries; the rest are
// banned in one call per target and TTL.
func (h *Handler) act(ctx context.Context, out *Output) error {
	if len(out.Bans) == 0 {
		return nil
	}
	for _, d := range out.Bans {
		h.Log.Info("decision", "cidr", d.CIDR, "target", d.Target, "ttl", d.TTL, "trigger", d.Trigger, "reason", d.Reason, "dry_run", h.Actor == nil)
	}
	if h.Actor == nil {
		return nil
	}
	all := make([]string, len(out.Bans))
	for i, d := range out.Bans {
		all[i] = d.CIDR
	}
	_, refused, err := h.Actor.FilterCIDRs(ctx, all)
	if err != nil {
		return err
	}
	type key struct {
		target   string
		ttl      time.Duration
		simulate bool
	}
	groups := map[key][]Decision{}
	var kept []Decision
	for _, d := range out.Bans {
		if e, bad := refused[d.CIDR]; bad {
			out.Ignored = append(out.Ignored, Ignored{fmt.Sprintf("%s: not banned: %v", d.Trigger, e)})
			h.Log.Warn("refused", "cidr", d.CIDR, "trigger", d.Trigger, "err", e)
			continue
		}
		k := key{d.Target, d.ttl, h.mode(d.Trigger) == Simulate}
		groups[k] = append(groups[k], d)
		if !k.simulate {
			kept = append(kept, d) // a simulate-mode decision is reported in Simulated, not Bans
		}
	}
	out.Bans = kept
	keys := make([]key, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return fmt.Sprint(keys[i].target, keys[i].ttl, keys[i].simulate) < fmt.Sprint(keys[j].target, keys[j].ttl, keys[j].simulate)
	})
	var errs []error
	for _, k := range keys {
		ds := groups[k]
		cidrs := make([]string, len(ds))
		var triggers []string
		causes := map[string]controller.Cause{}
		for i, d := range ds {
			cidrs[i] = d.CIDR
			if !slices.Contains(triggers, d.Trigger) {
				triggers = append(triggers, d.Trigger)
			}
			causes[d.CIDR] = controllerCause(d)
		}
		reason := ds[0].Reason
		if len(ds) > 1 {
			reason = "lambda: " + strings.Join(triggers, ", ")
		}
		req := controller.BanRequest{CIDRs: cidrs, Target: k.target, TTL: k.ttl, Reason: reason, Source: "lambda:" + strings.Join(triggers, ","),
			Who: strings.Join(triggers, ","), Causes: causes, Simulate: k.simulate}
		if !slices.Contains(triggers, "invoke") {
			req.Trigger = strings.Join(triggers, ",") // its bans count as offences (repeat offenders)
		}
		res, err := h.Actor.Ban(ctx, req)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out.Simulated = append(out.Simulated, res.Simulated...)
		out.Rev = max(out.Rev, res.Rev)
	}
	return errors.Join(errs...)
}

// mode is the mode of the jail, alarm action or GuardDuty setting that made a decision.
func (h *Handler) mode(trigger string) string {
	kind, name, _ := strings.Cut(trigger, "/")
	switch kind {
	case "jail":
		for _, j := range h.Cfg.Jails {
			if j.Name == name {
				return j.Mode
			}
		}
	case "alarm":
		if a, ok := h.alarmAction(name); ok {
			return a.Mode
		}
	case "guardduty":
		return h.Cfg.GuardDuty.Mode
	}
	return ""
}

// controllerCause is a decision's cause as the controller records it (history, `bansshee why`).
func controllerCause(d Decision) controller.Cause {
	var c controller.Cause
	if d.Cause != nil {
		c = controller.Cause{LogGroup: d.Cause.LogGroup, LogStream: d.Cause.LogStream, Count: d.Cause.Failures, Window: d.Cause.Window, Finding: d.Cause.Finding}
	}
	switch kind, name, _ := strings.Cut(d.Trigger, "/"); kind {
	case "jail":
		c.Jail = name
	case "alarm":
		c.Alarm = name
	}
	return c
}

// logs decodes a subscription batch (base64, gzip, bounded) and runs every jail on every line.
func (h *Handler) logs(ctx context.Context, data string, out *Output) error {
	zipped, err := base64.StdEncoding.DecodeString(data)
	if err != nil {
		out.Ignored = append(out.Ignored, Ignored{"awslogs.data is not base64: " + err.Error()})
		return nil
	}
	zr, err := gzip.NewReader(bytes.NewReader(zipped))
	if err != nil {
		out.Ignored = append(out.Ignored, Ignored{"awslogs.data is not gzip: " + err.Error()})
		return nil
	}
	plain, err := io.ReadAll(io.LimitReader(zr, int64(h.Cfg.MaxBatchBytes)+1))
	if err != nil {
		out.Ignored = append(out.Ignored, Ignored{"awslogs.data: bad gzip stream: " + err.Error()})
		return nil
	}
	if len(plain) > h.Cfg.MaxBatchBytes {
		out.Ignored = append(out.Ignored, Ignored{fmt.Sprintf("log batch larger than %d bytes decompressed: not read", h.Cfg.MaxBatchBytes)})
		return nil
	}
	var batch events.CloudwatchLogsData
	if err := json.Unmarshal(plain, &batch); err != nil {
		out.Ignored = append(out.Ignored, Ignored{"log batch is not CloudWatch Logs JSON: " + err.Error()})
		return nil
	}
	if batch.MessageType == "CONTROL_MESSAGE" {
		out.Ignored = append(out.Ignored, Ignored{"control message"})
		return nil
	}
	now := h.Now()
	// The lines are read first (CPU only), so that the batch's dedupe write and the reads of the
	// streams' open connections go out together: each is a round trip on a ban's path.
	recs := make([]Record, len(batch.LogEvents))
	for i, ev := range batch.LogEvents {
		recs[i] = ParseRecord(ev.Message)
	}
	type jailRun struct {
		j     *Jail
		vs    []Verdict
		prior map[string]ConnState
	}
	var runs []*jailRun
	for i := range h.Cfg.Jails {
		j := &h.Cfg.Jails[i]
		var vs []Verdict
		for _, rec := range recs {
			if v := j.CheckRecord(rec); v.Kind != KindNone {
				vs = append(vs, v)
			}
		}
		if len(vs) > 0 {
			runs = append(runs, &jailRun{j: j, vs: vs})
		}
	}
	key := batchKey(&batch)
	var dup bool
	var g errgroup.Group
	if key != "" {
		g.Go(func() error {
			var err error
			if dup, err = h.Counter.Seen(ctx, key, time.Hour, now); err != nil {
				return fmt.Errorf("log batch: dedupe: %w", err)
			}
			return nil
		})
	}
	for _, r := range runs {
		if r.j.NeedsConns(r.vs) {
			g.Go(func() error {
				var err error
				if r.prior, err = h.Counter.Conns(ctx, r.j.Name, batch.LogStream, now); err != nil {
					return fmt.Errorf("jail %s: connections of %s: %w", r.j.Name, batch.LogStream, err)
				}
				return nil
			})
		}
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if dup {
		out.Ignored = append(out.Ignored, Ignored{fmt.Sprintf("log batch of %d events already counted (a retried invocation)", len(batch.LogEvents))})
		// Its failures are counted; the bans a failed invocation decided are carried out now.
		pending, err := h.Counter.Pending(ctx, key)
		if err != nil {
			return fmt.Errorf("log batch: pending bans: %w", err)
		}
		for _, d := range pending {
			if ttl, err := time.ParseDuration(d.TTL); err == nil {
				d.ttl = ttl
				out.Bans = append(out.Bans, d)
			}
		}
		return nil
	}
	out.batchKey = key
	for _, r := range runs {
		if err := h.jail(ctx, r.j, batch.LogGroup, batch.LogStream, r.vs, r.prior, now, out); err != nil {
			return err
		}
	}
	return nil
}

// jail runs one jail over one log stream's batch: failures are counted per stream (so one stream
// cannot add to another's count), a connection's lines count as one connection, and an address
// that reaches maxretry is banned on the jail's target, or only on the stream's own instance while
// it lacks witnesses or the stream is over its hourly cap of fleet-wide bans.
func (h *Handler) jail(ctx context.Context, j *Jail, group, stream string, vs []Verdict, prior map[string]ConnState, now time.Time, out *Output) error {
	t := j.Tally(vs, prior)
	if len(t.Open) > 0 || len(t.Closed) > 0 {
		// Off the ban's path: written while the bans are (Handle waits for both).
		out.after = append(out.after, func(ctx context.Context) error {
			if err := h.Counter.SaveConns(ctx, j.Name, stream, t.Open, t.Closed, now); err != nil {
				return fmt.Errorf("jail %s: connections of %s: %w", j.Name, stream, err)
			}
			return nil
		})
	}
	// Sources by the unit the jail bans: the address, or its IPv6 prefix.
	hits, lines := map[string]int{}, map[string]int{}
	var order []string
	for _, addr := range t.Order {
		k := j.banUnit(addr)
		if hits[k] == 0 {
			order = append(order, k)
		}
		hits[k] += t.Hits[addr]
		lines[k] += t.Lines[addr]
	}
	for _, k := range order {
		p, err := proto.ParseCIDR(k)
		if err == nil {
			err = proto.CheckNeverBan(p)
		}
		if err != nil {
			out.Ignored = append(out.Ignored, Ignored{fmt.Sprintf("jail/%s: %s: %v", j.Name, k, err)})
			continue
		}
		count, err := h.Counter.Add(ctx, j.Name, stream+"|"+k, hits[k], time.Duration(j.FindTime), now)
		if err != nil {
			return fmt.Errorf("jail %s: count %s: %w", j.Name, k, err)
		}
		if count < j.MaxRetry {
			out.Ignored = append(out.Ignored, Ignored{fmt.Sprintf("jail/%s: %s: %d of %d failures (stream %s)", j.Name, k, count, j.MaxRetry, stream)})
			continue
		}
		if err := h.jailBan(ctx, j, group, stream, k, count, lines[k], now, out); err != nil {
			return err
		}
	}
	return nil
}

// banUnit is what a jail counts and bans for an address: the address, or with ipv6_prefix its
// IPv6 prefix.
func (j *Jail) banUnit(addr string) string {
	a, err := netip.ParseAddr(addr)
	if err != nil || !a.Is6() || j.IPv6Prefix >= 128 || j.IPv6Prefix == 0 {
		return addr
	}
	return netip.PrefixFrom(a, j.IPv6Prefix).Masked().String()
}

// jailBan decides where an address that reached maxretry in one stream is banned.
func (h *Handler) jailBan(ctx context.Context, j *Jail, group, stream, unit string, count, lines int, now time.Time, out *Output) error {
	instance := InstanceOfStream(stream)
	fleet, why := true, ""
	if j.Witnesses > 1 {
		w, err := h.Counter.Witness(ctx, j.Name, unit, stream, time.Duration(j.FindTime), now)
		if err != nil {
			return fmt.Errorf("jail %s: witnesses of %s: %w", j.Name, unit, err)
		}
		if fleet = w >= j.Witnesses; !fleet {
			why = fmt.Sprintf("%d of %d witnesses", w, j.Witnesses)
		}
	}
	if fleet && h.Cfg.StreamFleetBans > 0 {
		ok, err := h.Counter.Take(ctx, "stream#"+stream, h.Cfg.StreamFleetBans, time.Hour, now)
		if err != nil {
			return fmt.Errorf("jail %s: stream budget of %s: %w", j.Name, stream, err)
		}
		if !ok {
			fleet, why = false, fmt.Sprintf("stream over its cap of %d fleet-wide bans an hour", h.Cfg.StreamFleetBans)
			out.StreamCapped++
			h.Log.Warn("log stream over its cap of fleet-wide bans: banning on its own instance only", "stream", stream, "group", group, "jail", j.Name, "cidr", unit, "cap", h.Cfg.StreamFleetBans)
		}
	}
	target := j.Target
	if !fleet {
		if instance == "" {
			out.Ignored = append(out.Ignored, Ignored{fmt.Sprintf("jail/%s: %s: %s, and stream %q names no instance to ban it on (name streams {instance_id})", j.Name, unit, why, stream)})
			return nil
		}
		target = "instance-id=" + instance
	}
	reason := fmt.Sprintf("%d failures in %s (%s %s)", count, time.Duration(j.FindTime), group, stream)
	if why != "" {
		reason = fmt.Sprintf("%d failures in %s: on its instance only, %s (%s %s)", count, time.Duration(j.FindTime), why, group, stream)
	}
	if len(reason) > 200 { // the agent refuses reasons over 256 bytes; a stream name can be 512
		reason = reason[:200]
	}
	h.decideCause(out, unit, target, time.Duration(j.BanTime), reason, "jail/"+j.Name,
		&Cause{LogGroup: group, LogStream: stream, Failures: count, Lines: lines, Window: time.Duration(j.FindTime).String()})
	return nil
}

// batchKey names a subscription batch by its log group, stream and event ids (CloudWatch Logs
// gives every event a unique id), so a retried invocation of the same batch is counted once.
func batchKey(b *events.CloudwatchLogsData) string {
	if len(b.LogEvents) == 0 {
		return ""
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00", b.LogGroup, b.LogStream)
	for _, ev := range b.LogEvents {
		fmt.Fprintf(h, "%s\x00", ev.ID)
	}
	return "batch#" + hex.EncodeToString(h.Sum(nil)[:16])
}

func (h *Handler) alarmAction(name string) (AlarmAction, bool) {
	if a, ok := h.Cfg.Alarms[name]; ok {
		return a, true
	}
	a, ok := h.Cfg.Alarms["*"]
	return a, ok
}

func (h *Handler) snsAlarm(ctx context.Context, msg string, out *Output) error {
	var a events.CloudWatchAlarmSNSPayload
	if err := json.Unmarshal([]byte(msg), &a); err != nil || a.AlarmName == "" {
		out.Ignored = append(out.Ignored, Ignored{"SNS message is not a CloudWatch alarm"})
		return nil
	}
	dims := map[string][]string{}
	for _, d := range a.Trigger.Dimensions {
		dims[d.Name] = append(dims[d.Name], d.Value)
	}
	for _, m := range a.Trigger.Metrics {
		for _, d := range m.MetricStat.Metric.Dimensions {
			dims[d.Name] = append(dims[d.Name], d.Value)
		}
	}
	return h.alarm(ctx, a.AlarmName, a.NewStateValue, dims, out)
}

func (h *Handler) eventBridgeAlarm(ctx context.Context, detail json.RawMessage, out *Output) error {
	var d struct {
		AlarmName string `json:"alarmName"`
		State     struct {
			Value string `json:"value"`
		} `json:"state"`
		Configuration struct {
			Metrics []struct {
				MetricStat struct {
					Metric struct {
						Dimensions map[string]string `json:"dimensions"`
					} `json:"metric"`
				} `json:"metricStat"`
			} `json:"metrics"`
		} `json:"configuration"`
	}
	if err := json.Unmarshal(detail, &d); err != nil || d.AlarmName == "" {
		out.Ignored = append(out.Ignored, Ignored{"EventBridge alarm without an alarm name"})
		return nil
	}
	dims := map[string][]string{}
	for _, m := range d.Configuration.Metrics {
		for k, v := range m.MetricStat.Metric.Dimensions {
			dims[k] = append(dims[k], v)
		}
	}
	return h.alarm(ctx, d.AlarmName, d.State.Value, dims, out)
}

func (h *Handler) alarm(ctx context.Context, name, state string, dims map[string][]string, out *Output) error {
	if state != "ALARM" {
		out.Ignored = append(out.Ignored, Ignored{fmt.Sprintf("alarm %s: state %s, nothing to do", name, state)})
		return nil
	}
	act, ok := h.alarmAction(name)
	if !ok {
		out.Ignored = append(out.Ignored, Ignored{fmt.Sprintf("alarm %s: no action configured", name)})
		return nil
	}
	if act.Query != nil {
		return h.queryLogs(ctx, name, act, out)
	}
	found := false
	for _, dim := range act.Dimensions {
		for _, v := range dims[dim] {
			found = true
			h.decide(out, v, act.Target, time.Duration(act.TTL), "alarm "+name, "alarm/"+name)
		}
	}
	if !found {
		out.Ignored = append(out.Ignored, Ignored{fmt.Sprintf("alarm %s: no dimension %v holds an address", name, act.Dimensions)})
	}
	return nil
}

// queryLogs reads the alarm's log group over its window, counts the jail's matches per address and
// decides bans for the top sources at or above the threshold.
func (h *Handler) queryLogs(ctx context.Context, name string, act AlarmAction, out *Output) error {
	q := act.Query
	if h.Logs == nil {
		out.Ignored = append(out.Ignored, Ignored{fmt.Sprintf("alarm %s: log queries need AWS (not in a dry run)", name)})
		return nil
	}
	now := h.Now()
	in := &cloudwatchlogs.FilterLogEventsInput{LogGroupName: aws.String(q.LogGroup),
		StartTime: aws.Int64(now.Add(-time.Duration(q.Window)).UnixMilli()), EndTime: aws.Int64(now.UnixMilli())}
	if q.Filter != "" {
		in.FilterPattern = aws.String(q.Filter)
	}
	counts := map[string]int{}
	byStream := map[string][]Verdict{}
	read := 0
	p := cloudwatchlogs.NewFilterLogEventsPaginator(h.Logs, in)
	for p.HasMorePages() && read < q.MaxEvents {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("alarm %s: read %s: %w", name, q.LogGroup, err)
		}
		for _, ev := range page.Events {
			read++
			if v := q.jail.Check(aws.ToString(ev.Message)); v.Kind != KindNone {
				st := aws.ToString(ev.LogStreamName)
				byStream[st] = append(byStream[st], v)
			}
		}
	}
	// Each stream's connections are its own (a pid means nothing across instances).
	for _, vs := range byStream {
		t := q.jail.TallyAll(vs)
		for addr, n := range t.Hits {
			counts[q.jail.banUnit(addr)] += n
		}
	}
	type hit struct {
		addr string
		n    int
	}
	var hits []hit
	for a, n := range counts {
		hits = append(hits, hit{a, n})
	}
	sort.Slice(hits, func(i, j int) bool {
		return hits[i].n > hits[j].n || hits[i].n == hits[j].n && hits[i].addr < hits[j].addr
	})
	banned, skipped := 0, 0
	for _, x := range hits {
		if x.n < q.Threshold || banned == q.Top {
			if skipped++; skipped <= 20 {
				out.Ignored = append(out.Ignored, Ignored{fmt.Sprintf("alarm %s: %s: %d lines (threshold %d, top %d)", name, x.addr, x.n, q.Threshold, q.Top)})
			}
			continue
		}
		h.decide(out, x.addr, act.Target, time.Duration(act.TTL), fmt.Sprintf("alarm %s: %d lines in %s of %s", name, x.n, time.Duration(q.Window), q.LogGroup), "alarm/"+name)
		banned++
	}
	if skipped > 20 {
		out.Ignored = append(out.Ignored, Ignored{fmt.Sprintf("alarm %s: %d more sources below the threshold", name, skipped-20)})
	}
	if len(hits) == 0 {
		out.Ignored = append(out.Ignored, Ignored{fmt.Sprintf("alarm %s: %d events in %s, none matched jail %s", name, read, q.LogGroup, q.jail.Name)})
	}
	return nil
}

func (h *Handler) guardDuty(detail json.RawMessage, out *Output) {
	var d struct {
		Severity float64 `json:"severity"`
		Type     string  `json:"type"`
		ID       string  `json:"id"`
		Service  struct {
			ResourceRole string `json:"resourceRole"`
		} `json:"service"`
	}
	if err := json.Unmarshal(detail, &d); err != nil || d.Type == "" {
		out.Ignored = append(out.Ignored, Ignored{"GuardDuty finding without a type"})
		return
	}
	if !h.Cfg.GuardDuty.Enabled {
		out.Ignored = append(out.Ignored, Ignored{"GuardDuty bans are disabled (guardduty.enabled)"})
		return
	}
	// Only a finding in which our instance is the TARGET names an attacker. Where it is the ACTOR
	// (it brute-forced or scanned someone: compromised, or a misbehaving job), the remote address
	// is the victim, and banning it fleet-wide would help the attack.
	if role := d.Service.ResourceRole; role != "TARGET" {
		if role == "" {
			role = "missing"
		}
		out.Ignored = append(out.Ignored, Ignored{fmt.Sprintf("finding %s: resource role %s: the instance is not the target, the remote address is not banned", d.Type, role)})
		return
	}
	if d.Severity < h.Cfg.GuardDuty.MinSeverity {
		out.Ignored = append(out.Ignored, Ignored{fmt.Sprintf("finding %s: severity %.1f below %.1f", d.Type, d.Severity, h.Cfg.GuardDuty.MinSeverity)})
		return
	}
	var tree any
	_ = json.Unmarshal(detail, &tree)
	addrs := remoteIPs(tree, false, nil)
	if len(addrs) == 0 {
		out.Ignored = append(out.Ignored, Ignored{fmt.Sprintf("finding %s: no remote address", d.Type)})
		return
	}
	for _, a := range addrs {
		h.decideCause(out, a, h.Cfg.GuardDuty.Target, time.Duration(h.Cfg.GuardDuty.TTL), fmt.Sprintf("GuardDuty %s (severity %.1f)", d.Type, d.Severity), "guardduty/"+d.Type,
			&Cause{Finding: d.ID})
	}
}

// remoteIPs collects ipAddressV4/V6 values found under any remoteIpDetails object: GuardDuty puts
// them in a different place for each action type.
func remoteIPs(v any, inRemote bool, acc []string) []string {
	switch t := v.(type) {
	case map[string]any:
		for k, child := range t {
			if inRemote && (k == "ipAddressV4" || k == "ipAddressV6") {
				if s, ok := child.(string); ok && !slices.Contains(acc, s) {
					acc = append(acc, s)
				}
				continue
			}
			acc = remoteIPs(child, inRemote || k == "remoteIpDetails", acc)
		}
	case []any:
		for _, child := range t {
			acc = remoteIPs(child, inRemote, acc)
		}
	}
	sort.Strings(acc)
	return acc
}
