package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/internal/awstest"
	"github.com/bansshee/bansshee/proto"
)

// The fleet suite: the control plane at 1 000 and 10 000 instances on the emulator, with 15 ms
// added to every AWS request (a region's round trip) and, beside it, at loopback (0 ms). Agents
// are simulated by status items; the set-up runs at 0 ms and is not measured.

// Idle agent requests per hour, from its configuration: one long poll per 20 s (the floor of this
// design) and one keep-alive heartbeat per 4 minutes.
const (
	agentPollsPerHour      = 3600 / 20
	agentKeepAlivesPerHour = 60 / 4
)

type fleetRig struct {
	env     *awstest.Env
	clients awstest.Clients
	c       *controller.Controller
	ids     []string
	dyn     *awstest.Dynalite // DynamoDB, when not kumo's
}

func newFleetRig(ctx context.Context, n int, onDynalite bool) (*fleetRig, error) {
	env, err := awstest.Start()
	if err != nil {
		return nil, err
	}
	var dyn *awstest.Dynalite
	if onDynalite {
		d, err := awstest.StartDynalite()
		if err == nil {
			err = env.UseDynamoDB(d.URL)
		}
		if err != nil {
			env.Close()
			return nil, fmt.Errorf("dynalite: %w", err)
		}
		dyn = d
	}
	clients := awstest.NewClients(env.Config(""))
	signer, _ := proto.GenerateKey("bench")
	c, err := controller.New(controller.Config{AgentRoleID: "AROABENCHAGENTROLE", EC2: clients.EC2, SQS: clients.SQS, DDB: clients.DynamoDB, Signer: signer,
		Table: awstest.Unique("bansshee"), Prefix: awstest.Unique("bansshee")}) // the default concurrency, as operators run it
	r := &fleetRig{env: env, clients: clients, c: c, dyn: dyn}
	if err != nil {
		r.close()
		return nil, err
	}
	if err := c.Ledger.CreateTable(ctx); err != nil {
		r.close()
		return nil, err
	}
	for left := n; left > 0; left -= 100 {
		count := min(left, 100)
		out, err := clients.EC2.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String("ami-0bench"), MinCount: aws.Int32(int32(count)), MaxCount: aws.Int32(int32(count)),
			TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: []ec2types.Tag{
				{Key: aws.String("bansshee:managed"), Value: aws.String("true")}, {Key: aws.String("Role"), Value: aws.String("mail")}}}}})
		if err != nil {
			r.close()
			return nil, err
		}
		for _, in := range out.Instances {
			r.ids = append(r.ids, aws.ToString(in.InstanceId))
		}
	}
	return r, nil
}

func (r *fleetRig) close() {
	r.env.Close()
	if r.dyn != nil {
		r.dyn.Close()
	}
}

// heartbeats writes a converged status for every instance (what n agents would), 25 to a batch.
func (r *fleetRig) heartbeats(ctx context.Context, rev int64, digest string) error {
	var items []ddbtypes.WriteRequest
	now := time.Now().UTC()
	for _, id := range r.ids {
		pk, sk := proto.StatusKey(id)
		// With its TTL a day ahead, as an agent writes it: an item without one (expires_at 0) is
		// reaped by the emulator's TTL sweep, every 30 s, in the middle of a 30 000-instance case.
		item, err := attributevalue.MarshalMap(proto.AgentStatus{PK: pk, SK: sk, InstanceID: id, AppliedRev: rev, Digest: digest, Heartbeat: now, Version: "bench",
			ExpiresAt: now.Add(24 * time.Hour).Unix()})
		if err != nil {
			return err
		}
		items = append(items, ddbtypes.WriteRequest{PutRequest: &ddbtypes.PutRequest{Item: item}})
	}
	return r.batchWrite(ctx, items)
}

func (r *fleetRig) batchWrite(ctx context.Context, items []ddbtypes.WriteRequest) error {
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for i := 0; i < len(items); i += 25 {
		chunk := items[i:min(i+25, len(items))]
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			req := map[string][]ddbtypes.WriteRequest{r.c.Table: chunk}
			for len(req) > 0 {
				out, err := r.clients.DynamoDB.BatchWriteItem(ctx, &dynamodb.BatchWriteItemInput{RequestItems: req})
				if err != nil {
					mu.Lock()
					first = err
					mu.Unlock()
					return
				}
				req = out.UnprocessedItems
			}
		}()
	}
	wg.Wait()
	return first
}

// bans writes n active bans straight into the ledger (the set-up for `list`).
func (r *fleetRig) bans(ctx context.Context, n int) error {
	now := time.Now().UTC()
	items := make([]ddbtypes.WriteRequest, 0, n)
	for i := 0; i < n; i++ {
		cidr := fmt.Sprintf("100.%d.%d.%d/32", 64+i>>16, (i>>8)&255, i&255)
		item, err := attributevalue.MarshalMap(controller.BanItem{PK: controller.BanPK(cidr), SK: cidr + "|Role=web", CIDR: cidr, Target: "Role=web", Reason: "bench",
			Source: "bench", Rev: 1, ExpiresAt: now.Add(time.Hour).Unix(), Created: now, Updated: now})
		if err != nil {
			return err
		}
		items = append(items, ddbtypes.WriteRequest{PutRequest: &ddbtypes.PutRequest{Item: item}})
	}
	return r.batchWrite(ctx, items)
}

// profileMetric and profileFile: --profile-metric profiles one timed section into --cpuprofile.
var profileMetric, profileFile string

// profiled: the profiled metric's first run has been profiled (--profile-metric).
var profiled bool

func timed(metric string, fn func() error) (float64, error) {
	if metric == profileMetric && profileFile != "" && !profiled { // the first run of the metric
		profiled = true
		if f, err := os.Create(profileFile); err == nil && pprof.StartCPUProfile(f) == nil {
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	start := time.Now()
	err := fn()
	return time.Since(start).Seconds(), err
}

// median3 times a read-only case three times and returns the median: on a shared 2-core machine
// one run of a CPU-bound case varies by a quarter.
func median3(metric string, fn func() error) (float64, error) {
	var runs []float64
	for range 3 {
		secs, err := timed(metric, fn)
		if err != nil {
			return 0, err
		}
		runs = append(runs, secs)
	}
	sort.Float64s(runs)
	if os.Getenv("BANSSHEE_BENCH_VERBOSE") != "" {
		fmt.Fprintf(os.Stderr, "     %s runs: %.3f %.3f %.3f\n", metric, runs[0], runs[1], runs[2])
	}
	return runs[1], nil
}

// fleetList writes 100 000 bans into r's ledger and times the real `bansshee list --json` as an
// operator runs it: its own process (its own heap, not the emulator's), from start to the last row
// printed. It also reports the CLI's own CPU, apart from the emulator's: what bansshee costs.
func fleetList(ctx context.Context, emit func(Row), r *fleetRig, name string, lat time.Duration) error {
	r.env.SetLatency(0)
	if err := r.bans(ctx, 100000); err != nil {
		return err
	}
	r.env.SetLatency(lat)
	bin, err := buildCLI(ctx)
	if err != nil {
		return err
	}
	var cliCPU []float64
	floor := listFloor(ctx, r, 100000)
	secs, err := median3With("list_100000_bans_seconds", func() error {
		cmd := exec.CommandContext(ctx, bin, "list", "--json", "--table", r.c.Table, "--queue-prefix", r.c.Queues.Prefix,
			"--endpoint-url", r.env.URL(), "--region", awstest.Region)
		cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID=AKIDBANSSHEETEST", "AWS_SECRET_ACCESS_KEY=secret", "AWS_EC2_METADATA_DISABLED=true")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("bansshee list: %v: %s", err, stderr.String())
		}
		cliCPU = append(cliCPU, (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds())
		if rows := bytes.Count(out, []byte(`"cidr"`)); rows < 100000 {
			return fmt.Errorf("bansshee list printed %d bans, want the 100000 and more", rows)
		}
		return nil
	}, floor)
	if err != nil {
		return err
	}
	emit(Row{"fleet", name, "list_100000_bans_seconds", secs, "s"})
	sort.Float64s(cliCPU)
	emit(Row{"fleet", name, "list_100000_bans_cli_cpu_seconds", cliCPU[len(cliCPU)/2], "s"})
	return floor.emit(emit, name, "list_100000_bans", secs)
}

// fleetListDynalite is the list case with DynamoDB served by dynalite (LevelDB-backed: a Query
// reads its partition's key range), beside kumo (whose Query walks the whole table, every item of
// every partition, for each call): a second DynamoDB's opinion of the same reads.
func fleetListDynalite(ctx context.Context, emit func(Row), lat time.Duration) error {
	if err := awstest.DynaliteAvailable(); err != nil {
		fmt.Fprintf(os.Stderr, "   SKIPPED list on dynalite: %v\n", err)
		return nil
	}
	name := fmt.Sprintf("dynalite-%dms", lat.Milliseconds())
	fmt.Fprintf(os.Stderr, "   list on dynalite, %s per request ...\n", lat)
	r, err := newFleetRig(ctx, 0, true)
	if err != nil {
		return err
	}
	defer r.close()
	return fleetList(ctx, emit, r, name, lat)
}

// buildCLI builds the bansshee command once per run, into a temporary directory.
func buildCLI(ctx context.Context) (string, error) {
	cliOnce.Do(func() {
		if b := os.Getenv("BANSSHEE_BENCH_CLI"); b != "" { // built by the parent process
			cliBin = b
			return
		}
		dir, err := os.MkdirTemp("", "bansshee-bench-cli")
		if err != nil {
			cliErr = err
			return
		}
		cliBin = filepath.Join(dir, "bansshee")
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", cliBin, "github.com/bansshee/bansshee/cmd/bansshee").CombinedOutput(); err != nil {
			cliErr = fmt.Errorf("build bansshee (run from the repository): %v: %s", err, out)
		}
	})
	return cliBin, cliErr
}

var (
	cliOnce sync.Once
	cliBin  string
	cliErr  error
)

func sum(ops map[string]int) int {
	n := 0
	for _, v := range ops {
		n += v
	}
	return n
}

func opsString(ops map[string]int) string {
	keys := make([]string, 0, len(ops))
	for k := range ops {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := ""
	for _, k := range keys {
		s += k + "=" + strconv.Itoa(ops[k]) + " "
	}
	return s
}

// fleetSizes and fleetLatencies are the cases run; BANSSHEE_BENCH_FLEET (e.g. "10000", or
// "dynalite" for only the list on dynalite) and BANSSHEE_BENCH_FLEET_MS (e.g. "15") pick one of
// each for a quicker or profiled run.
func fleetSizes() []int {
	if v := envInt("BANSSHEE_BENCH_FLEET", 0); v > 0 {
		return []int{v}
	}
	return []int{1000, 10000}
}

func fleetLatencies() []time.Duration {
	if v, err := strconv.Atoi(os.Getenv("BANSSHEE_BENCH_FLEET_MS")); err == nil && v >= 0 {
		return []time.Duration{time.Duration(v) * time.Millisecond}
	}
	return []time.Duration{15 * time.Millisecond, 0}
}

// runFleet runs each case in a process of its own: kumo's storage is process-wide and never
// freed (its Close stops the listener, not the services), so a case run after another would carry
// the earlier cases' tables and queues in its heap and its collector's work.
func runFleet(ctx context.Context, emit func(Row)) error {
	if spec := os.Getenv("BANSSHEE_BENCH_FLEET_CHILD"); spec != "" {
		return fleetChild(ctx, emit, spec)
	}
	defer func() {
		if cliBin != "" {
			os.RemoveAll(filepath.Dir(cliBin))
		}
	}()
	bin, err := buildCLI(ctx)
	if err != nil {
		return err
	}
	specs := fleetSpecs()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	for _, spec := range specs {
		args := []string{"--json"}
		if profileFile != "" {
			args = append(args, "--cpuprofile", profileFile, "--profile-metric", profileMetric)
		}
		cmd := exec.CommandContext(ctx, self, append(args, "fleet")...)
		cmd.Env = append(os.Environ(), "BANSSHEE_BENCH_FLEET_CHILD="+spec, "BANSSHEE_BENCH_CLI="+bin)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var row Row
			if line := sc.Bytes(); bytes.HasPrefix(line, []byte(`{"suite"`)) && json.Unmarshal(line, &row) == nil {
				emit(row)
			} else {
				fmt.Fprintln(os.Stderr, string(line)) // not a row: pass it on
			}
		}
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("fleet case %s: %w", spec, err)
		}
	}
	return nil
}

// fleetChild runs one case, "N:MS" or "dynalite:MS", in this process.
func fleetChild(ctx context.Context, emit func(Row), spec string) error {
	what, ms, _ := strings.Cut(spec, ":")
	m, err := strconv.Atoi(ms)
	if err != nil {
		return fmt.Errorf("BANSSHEE_BENCH_FLEET_CHILD=%q: %w", spec, err)
	}
	lat := time.Duration(m) * time.Millisecond
	if what == "dynalite" {
		if err := fleetListDynalite(ctx, emit, lat); err != nil {
			return fmt.Errorf("list on dynalite at %s: %w", lat, err)
		}
		return nil
	}
	if what == "why-dynalite" {
		if err := fleetWhyDynalite(ctx, emit, lat); err != nil {
			return fmt.Errorf("why on dynalite at %s: %w", lat, err)
		}
		return nil
	}
	n, err := strconv.Atoi(what)
	if err != nil {
		return fmt.Errorf("BANSSHEE_BENCH_FLEET_CHILD=%q: %w", spec, err)
	}
	if err := fleetCase(ctx, emit, n, lat); err != nil {
		return fmt.Errorf("fleet %d at %s: %w", n, lat, err)
	}
	return nil
}

func fleetCase(ctx context.Context, emit func(Row), n int, lat time.Duration) error {
	name := fmt.Sprintf("%d-%dms", n, lat.Milliseconds())
	fmt.Fprintf(os.Stderr, "   %d instances, %s per request ...\n", n, lat)
	r, err := newFleetRig(ctx, n, false)
	if err != nil {
		return err
	}
	defer r.close()
	c := r.c

	// First pass: every instance is new (queue, sync).
	r.env.SetLatency(lat)
	r.env.ResetOps()
	secs, err := timed("first_reconcile_seconds", func() error {
		rep, err := c.ReconcileOnce(ctx)
		if err == nil && (len(rep.QueuesCreated) != n || len(rep.Synced) != n) {
			err = fmt.Errorf("first pass: %d queues, %d syncs", len(rep.QueuesCreated), len(rep.Synced))
		}
		return err
	})
	if err != nil {
		return err
	}
	emit(Row{"fleet", name, "first_reconcile_seconds", secs, "s"})

	// Agents answer: converged statuses for all.
	r.env.SetLatency(0)
	rev, err := c.Ledger.CurrentRev(ctx)
	if err != nil {
		return err
	}
	if err := r.heartbeats(ctx, rev, proto.DigestV2(nil, nil)); err != nil {
		return err
	}
	// One pass that sees the agents' first reports (and records which key each writes under, and
	// the inventory with them); the measured pass is the one after it, with nothing changed.
	if _, err := c.ReconcileOnce(ctx); err != nil {
		return err
	}
	r.env.SetLatency(lat)
	r.env.ResetOps()
	secs, err = timed("steady_reconcile_seconds", func() error {
		rep, err := c.ReconcileOnce(ctx)
		if err == nil && (len(rep.Synced) != 0 || rep.Fleet.Converged != n) {
			err = fmt.Errorf("steady pass: %d syncs, %d converged (fleet %+v, errors %v)", len(rep.Synced), rep.Fleet.Converged, rep.Fleet, rep.Errors)
		}
		return err
	})
	if err != nil {
		return err
	}
	steadyOps := r.env.Ops()
	emit(Row{"fleet", name, "steady_reconcile_seconds", secs, "s"})
	emit(Row{"fleet", name, "steady_reconcile_requests", float64(sum(steadyOps)), "requests"})
	if lat > 0 {
		fmt.Fprintf(os.Stderr, "     steady pass requests: %s\n", opsString(steadyOps))
	}

	// status with n agents, each run followed by one of its floor.
	floor := statusFloor(ctx, r)
	secs, err = median3With("status_seconds", func() error {
		fs, err := c.FleetStatus(ctx, "*", false)
		if err == nil && (len(fs.Instances) != n || convergedOf(fs.Instances) != n || fs.InventoryAt.IsZero()) {
			err = fmt.Errorf("status: %d instances, %d converged, inventory at %v", len(fs.Instances), convergedOf(fs.Instances), fs.InventoryAt)
		}
		return err
	}, floor)
	if err != nil {
		return err
	}
	emit(Row{"fleet", name, "status_seconds", secs, "s"})
	if err := floor.emit(emit, name, "status", secs); err != nil {
		return err
	}
	// status --live: the instances from EC2 (DescribeInstances pages), not the inventory.
	secs, err = median3("status_live_seconds", func() error {
		fs, err := c.FleetStatus(ctx, "*", true)
		if err == nil && (len(fs.Instances) != n || convergedOf(fs.Instances) != n || !fs.InventoryAt.IsZero()) {
			err = fmt.Errorf("status --live: %d instances, %d converged", len(fs.Instances), convergedOf(fs.Instances))
		}
		return err
	})
	if err != nil {
		return err
	}
	emit(Row{"fleet", name, "status_live_seconds", secs, "s"})
	if lat > 0 {
		if err := servePeakRSS(ctx, emit, r, name); err != nil {
			return err
		}
	}

	// One ban to every queue, three times, between runs of its floor (floors.go).
	var res *controller.Result
	var banOps map[string]int
	_, err = fanoutWithFloor(ctx, emit, r, name, lat, func(i int) error {
		r.env.ResetOps()
		var err error
		res, err = c.Ban(ctx, controller.BanRequest{CIDRs: []string{fmt.Sprintf("198.51.100.%d", 7+i)}, Target: "Role=mail", TTL: time.Hour, Reason: "bench"})
		if i == 0 {
			banOps = r.env.Ops()
		}
		if err == nil && (len(res.Instances) != n || len(res.Failed()) > 0) {
			err = fmt.Errorf("ban reached %d of %d (%d failed)", len(res.Instances)-len(res.Failed()), n, len(res.Failed()))
		}
		return err
	})
	if err != nil {
		return err
	}
	// With and without the history write, which runs beside the fan-out, alternately and with
	// warm caches (the first ban above also read the VPC CIDRs and the allow entries): the
	// difference of the medians is what history costs a ban.
	var with, without []float64
	for i := range 6 {
		c.NoHistory = i%2 == 1
		secs, err := timed("ban_fanout_warm_seconds", func() error {
			_, err := c.Ban(ctx, controller.BanRequest{CIDRs: []string{fmt.Sprintf("198.51.100.%d", 20+i)}, Target: "Role=mail", TTL: time.Hour, Reason: "bench"})
			return err
		})
		if err != nil {
			c.NoHistory = false
			return err
		}
		if c.NoHistory {
			without = append(without, secs)
		} else {
			with = append(with, secs)
		}
	}
	c.NoHistory = false
	sort.Float64s(with)
	sort.Float64s(without)
	if os.Getenv("BANSSHEE_BENCH_VERBOSE") != "" {
		fmt.Fprintf(os.Stderr, "     warm bans with history: %.3f %.3f %.3f; without: %.3f %.3f %.3f\n", with[0], with[1], with[2], without[0], without[1], without[2])
	}
	emit(Row{"fleet", name, "ban_fanout_warm_seconds", with[1], "s"})
	emit(Row{"fleet", name, "ban_fanout_warm_no_history_seconds", without[1], "s"})

	// A ban from a new process (`bansshee ban`, a cold Lambda): a controller with nothing cached.
	// Its targets, their queue URLs and the fleet's public addresses (the allowlist's own
	// addresses) from the reconciler's inventory, or (InventoryMaxAge < 0, as before the
	// inventory) from EC2 (every instance's page, twice: the public addresses, then discovery)
	// and one GetQueueUrl per instance; alternately.
	rounds := 3
	if n > 10000 {
		rounds = 1
	}
	var coldInv, coldDisc []float64
	var coldOps [2]map[string]int
	for i := range 2 * rounds {
		cfg := c.Config
		if i%2 == 1 {
			cfg.InventoryMaxAge = -1
		}
		cc, err := controller.New(cfg)
		if err != nil {
			return err
		}
		r.env.ResetOps()
		secs, err := timed("ban_fanout_cold_seconds", func() error {
			res, err := cc.Ban(ctx, controller.BanRequest{CIDRs: []string{fmt.Sprintf("198.51.100.%d", 40+i)}, Target: "Role=mail", TTL: time.Hour, Reason: "bench"})
			if err == nil && (len(res.Instances) != n || len(res.Failed()) > 0) {
				err = fmt.Errorf("cold ban reached %d of %d (%d failed)", len(res.Instances)-len(res.Failed()), n, len(res.Failed()))
			}
			return err
		})
		if err != nil {
			return err
		}
		coldOps[i%2] = r.env.Ops()
		if i%2 == 0 {
			coldInv = append(coldInv, secs)
		} else {
			coldDisc = append(coldDisc, secs)
		}
	}
	if verbose() {
		fmt.Fprintf(os.Stderr, "     cold bans from the inventory %.3f, from discovery %.3f\n", coldInv, coldDisc)
	}
	if lat > 0 {
		fmt.Fprintf(os.Stderr, "     a cold ban's requests, from the inventory: %s\n", opsString(coldOps[0]))
		fmt.Fprintf(os.Stderr, "     a cold ban's requests, from discovery: %s\n", opsString(coldOps[1]))
	}
	emit(Row{"fleet", name, "ban_fanout_cold_seconds", median(coldInv), "s"})
	emit(Row{"fleet", name, "ban_fanout_cold_discovery_seconds", median(coldDisc), "s"})
	emit(Row{"fleet", name, "requests_per_ban_per_1000_instances", float64(sum(banOps)) * 1000 / float64(n), "requests"})
	if lat > 0 {
		fmt.Fprintf(os.Stderr, "     one ban's requests: %s\n", opsString(banOps))
	}

	// --wait on 1 000 agents: they answer (all at once, as agents would within a second), and
	// the waiter reads only the statuses it still awaits.
	if n == 1000 {
		r.env.SetLatency(0)
		go func() { _ = r.heartbeats(ctx, res.Rev, "") }()
		r.env.SetLatency(lat)
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		secs, err = timed("wait_1000_agents_seconds", func() error {
			pending, err := c.Wait(wctx, r.ids, res.Rev, nil)
			if err == nil && len(pending) > 0 {
				err = fmt.Errorf("wait: %d pending", len(pending))
			}
			return err
		})
		cancel()
		if err != nil {
			return err
		}
		emit(Row{"fleet", name, "wait_1000_agents_seconds", secs, "s"})
	}

	// list with 100 000 bans in the ledger.
	if n == 1000 {
		if err := fleetList(ctx, emit, r, name, lat); err != nil {
			return err
		}
	}
	// why with 100 000 bans in the ledger and n agents.
	if n == 10000 {
		if err := fleetWhy(ctx, emit, r, name, lat, res.Rev); err != nil {
			return err
		}
	}

	// Idle cost: an idle instance-hour is its agent's polls and keep-alives plus its share of a
	// steady reconcile pass every minute (the scheduled Lambda).
	perHour := float64(agentPollsPerHour+agentKeepAlivesPerHour) + float64(sum(steadyOps))*60/float64(n)
	emit(Row{"fleet", name, "requests_per_idle_instance_hour", perHour, "requests"})
	emit(Row{"fleet", name, "idle_vs_long_poll_floor", perHour / agentPollsPerHour, "ratio"})
	return nil
}

// fleetWhyDynalite is the why case with DynamoDB served by dynalite, whose Query reads its key
// range as DynamoDB's does (kumo's walks the whole table for each of why's 30 queries).
func fleetWhyDynalite(ctx context.Context, emit func(Row), lat time.Duration) error {
	if err := awstest.DynaliteAvailable(); err != nil {
		fmt.Fprintf(os.Stderr, "   SKIPPED why on dynalite: %v\n", err)
		return nil
	}
	fmt.Fprintf(os.Stderr, "   why on dynalite, 10000 instances, %s per request ...\n", lat)
	r, err := newFleetRig(ctx, 10000, true)
	if err != nil {
		return err
	}
	defer r.close()
	if err := fleetStatusDynalite(ctx, emit, r, fmt.Sprintf("dynalite-10000-%dms", lat.Milliseconds()), lat); err != nil {
		return err
	}
	res, err := r.c.Ban(ctx, controller.BanRequest{CIDRs: []string{"198.51.100.7"}, Target: "Role=mail", TTL: time.Hour, Reason: "bench"})
	if err != nil {
		return err
	}
	return fleetWhy(ctx, emit, r, fmt.Sprintf("dynalite-10000-%dms", lat.Milliseconds()), lat, res.Rev)
}

// fleetStatusDynalite is the status case on dynalite, whose Query reads its key range as
// DynamoDB's does (kumo's walks the whole table for each of status's 22 queries): two passes set
// up the queues, the inventory and the agents' key forms, at 0 ms; then status beside its floor.
func fleetStatusDynalite(ctx context.Context, emit func(Row), r *fleetRig, name string, lat time.Duration) error {
	r.env.SetLatency(0)
	if _, err := r.c.ReconcileOnce(ctx); err != nil {
		return err
	}
	rev, err := r.c.Ledger.CurrentRev(ctx)
	if err != nil {
		return err
	}
	if err := r.heartbeats(ctx, rev, proto.DigestV2(nil, nil)); err != nil {
		return err
	}
	if _, err := r.c.ReconcileOnce(ctx); err != nil {
		return err
	}
	r.env.SetLatency(lat)
	defer r.env.SetLatency(0)
	n := len(r.ids)
	floor := statusFloor(ctx, r)
	secs, err := median3With("status_seconds", func() error {
		fs, err := r.c.FleetStatus(ctx, "*", false)
		if err == nil && (len(fs.Instances) != n || convergedOf(fs.Instances) != n || fs.InventoryAt.IsZero()) {
			err = fmt.Errorf("status on dynalite: %d instances, %d converged, inventory at %v", len(fs.Instances), convergedOf(fs.Instances), fs.InventoryAt)
		}
		return err
	}, floor)
	if err != nil {
		return err
	}
	emit(Row{"fleet", name, "status_seconds", secs, "s"})
	return floor.emit(emit, name, "status", secs)
}

// fleetWhy writes 100 000 bans into r's ledger and times the real `bansshee why ADDR --json` for
// the address the fleet case banned: its ban, its history, and which of the n agents applied it
// (half of them, here).
func fleetWhy(ctx context.Context, emit func(Row), r *fleetRig, name string, lat time.Duration, rev int64) error {
	r.env.SetLatency(0)
	if err := r.bans(ctx, 100000); err != nil {
		return err
	}
	half := r.ids
	r.ids = half[:len(half)/2]
	err := r.heartbeats(ctx, rev, "")
	r.ids = half
	if err != nil {
		return err
	}
	r.env.SetLatency(lat)
	bin, err := buildCLI(ctx)
	if err != nil {
		return err
	}
	r.env.ResetOps()
	secs, err := median3("why_100000_bans_seconds", func() error {
		cmd := exec.CommandContext(ctx, bin, "why", "198.51.100.7", "--json", "--table", r.c.Table, "--queue-prefix", r.c.Queues.Prefix,
			"--endpoint-url", r.env.URL(), "--region", awstest.Region)
		cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID=AKIDBANSSHEETEST", "AWS_SECRET_ACCESS_KEY=secret", "AWS_EC2_METADATA_DISABLED=true")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("bansshee why: %v: %s", err, stderr.String())
		}
		var rep controller.WhyReport
		if err := json.Unmarshal(out, &rep); err != nil {
			return err
		}
		if len(rep.Bans) != 1 || rep.Bans[0].Targeted != len(r.ids) || rep.Bans[0].Applied.Applied != len(r.ids)/2 || len(rep.History) == 0 {
			return fmt.Errorf("why: %d bans, %+v, %d events", len(rep.Bans), rep.Bans, len(rep.History))
		}
		return nil
	})
	if err != nil {
		return err
	}
	emit(Row{"fleet", name, "why_100000_bans_seconds", secs, "s"})
	emit(Row{"fleet", name, "why_requests", float64(sum(r.env.Ops())) / 3, "requests"})
	if lat > 0 {
		fmt.Fprintf(os.Stderr, "     one why's requests (x3): %s\n", opsString(r.env.Ops()))
	}
	return nil
}
