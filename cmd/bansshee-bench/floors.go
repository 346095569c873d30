package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime/metrics"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/proto"
	"github.com/oklog/ulid/v2"
	"golang.org/x/sync/errgroup"
)

// Floors of the fleet suite: for each fleet figure, the AWS calls it cannot do without, made
// through the same SDK client, emulator, latency and concurrency, in the same process and run,
// with none of bansshee's own work around them. The figure over its floor is what bansshee adds;
// the floor itself is the emulator, the SDK and the machine at that moment (on a shared 2-core
// VM the floor moves with the hour; the ratio less, though still by a third from run to run when
// the process's share of the cores changes: PERFORMANCE.md, fleet floors).
//
// Each floor also reports the process's CPU (user + system) while it ran: the floor's calls are
// served by the emulator in this same process, so a CPU close to two cores' worth of the wall
// time means the floor is the machine's CPU (mostly the emulator's; see PERFORMANCE.md for the
// profiles), not the 15 ms round trips.

// cpuTime is this process's user + system CPU so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// floorRun times fn as metric (profiled with --profile-metric like any fleet figure) and the
// process CPU it used.
func floorRun(metric string, fn func() error) (wall, cpu float64, err error) {
	c0 := cpuTime()
	wall, err = timed(metric, fn)
	return wall, (cpuTime() - c0).Seconds(), err
}

// emitFloor prints a floor beside the figure it bounds and their ratio.
func emitFloor(emit func(Row), name, figure string, secs, floor, floorCPU float64) {
	emit(Row{"fleet", name, figure + "_floor_seconds", floor, "s"})
	emit(Row{"fleet", name, figure + "_floor_cpu_seconds", floorCPU, "s"})
	emit(Row{"fleet", name, figure + "_vs_floor", secs / floor, "ratio"})
	if verbose() {
		fmt.Fprintf(os.Stderr, "     %s %.3f s, floor %.3f s (CPU %.3f s: %.2f cores), %.2fx\n", figure, secs, floor, floorCPU, floorCPU/floor, secs/floor)
	}
}

// gcCPU is the CPU seconds the collector has used in this process (runtime/metrics).
func gcCPU() float64 {
	s := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64 {
		return 0
	}
	return s[0].Value.Float64()
}

func verbose() bool { return os.Getenv("BANSSHEE_BENCH_VERBOSE") != "" }

// fanoutFloor is ban_fanout_floor_seconds: one SendMessage to each of the n queues, with a fixed
// body and attributes built once (a ban message of the same size, signed once), through the
// controller's SQS client, with as many sends in flight as the controller's fan-out, on workers
// that live for the run as its send pool's do. No ledger, no discovery, no per-message signing,
// and the queue URLs known beforehand.
type fanoutFloor struct {
	urls  []string
	body  []byte
	attrs map[string]string
}

func newFanoutFloor(ctx context.Context, r *fleetRig, lat time.Duration) (*fanoutFloor, error) {
	r.env.SetLatency(0)
	defer r.env.SetLatency(lat)
	byID, err := r.c.Queues.List(ctx)
	if err != nil {
		return nil, err
	}
	f := &fanoutFloor{}
	for _, id := range r.ids {
		u, ok := byID[id]
		if !ok {
			return nil, fmt.Errorf("fan-out floor: no queue for %s", id)
		}
		f.urls = append(f.urls, u)
	}
	now := time.Now().UTC()
	m := proto.Message{ID: ulid.Make().String(), Kind: proto.KindBan, To: r.ids[0], IssuedAt: now, Rev: 1 << 20,
		Bans: []proto.Ban{{ID: proto.BanID(netip.MustParsePrefix("198.51.100.7/32")), CIDR: "198.51.100.7/32", ExpiresAt: now.Add(time.Hour).Truncate(time.Second), Rev: 1 << 20, Reason: "bench"}}}
	f.body, f.attrs, err = r.c.Signer.Encode(&m)
	return f, err
}

// run sends the fixed message to every queue, under a fresh deduplication id.
func (f *fanoutFloor) run(ctx context.Context, r *fleetRig) error {
	dedup := ulid.Make().String()
	jobs := make(chan string, 1024)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for range min(max(r.c.Concurrency, 1), len(f.urls)) {
		wg.Go(func() {
			for u := range jobs {
				if err := controller.SendRaw(ctx, r.c.Queues.SQS, u, dedup, f.body, f.attrs); err != nil {
					mu.Lock()
					first = err
					mu.Unlock()
				}
			}
		})
	}
	for _, u := range f.urls {
		jobs <- u
	}
	close(jobs)
	wg.Wait()
	return first
}

// fanoutRounds is how many bans the fleet suite times, each between two runs of the floor.
const fanoutRounds = 5

// fanoutWithFloor times fanoutRounds bans to every queue (ban(i) is the i-th, a fresh address
// each), interleaved with fanoutRounds+1 runs of the floor (F B F B F B F: the machine's speed
// drifts within a minute, and on a shared VM by half), and emits the median of each.
func fanoutWithFloor(ctx context.Context, emit func(Row), r *fleetRig, name string, lat time.Duration, ban func(i int) error) (float64, error) {
	f, err := newFanoutFloor(ctx, r, lat)
	if err != nil {
		return 0, err
	}
	var bans, floors, cpus []float64
	// The process's CPU and its collector's CPU in each run (verbose): the emulator's storage is
	// in this heap, so each collection marks it, and a run that allocates more pays for more of them.
	var runsCPU, runsGC []string
	for i := 0; i <= fanoutRounds; i++ {
		g0 := gcCPU()
		secs, cpu, err := floorRun("ban_fanout_floor_seconds", func() error { return f.run(ctx, r) })
		if err != nil {
			return 0, fmt.Errorf("fan-out floor: %w", err)
		}
		floors, cpus = append(floors, secs), append(cpus, cpu)
		runsCPU, runsGC = append(runsCPU, fmt.Sprintf("F %.2f", cpu)), append(runsGC, fmt.Sprintf("F %.2f", gcCPU()-g0))
		if i == fanoutRounds {
			break
		}
		g0, c0 := gcCPU(), cpuTime()
		secs, err = timed("ban_fanout_seconds", func() error { return ban(i) })
		if err != nil {
			return 0, err
		}
		bans = append(bans, secs)
		runsCPU, runsGC = append(runsCPU, fmt.Sprintf("B %.2f", (cpuTime()-c0).Seconds())), append(runsGC, fmt.Sprintf("B %.2f", gcCPU()-g0))
	}
	if verbose() {
		fmt.Fprintf(os.Stderr, "     fan-out runs %.3f, floor runs %.3f\n", bans, floors)
		fmt.Fprintf(os.Stderr, "     CPU seconds of each run, in order: %s; of it the collector's: %s\n", strings.Join(runsCPU, ", "), strings.Join(runsGC, ", "))
	}
	secs := median(bans)
	emit(Row{"fleet", name, "ban_fanout_seconds", secs, "s"})
	emitFloor(emit, name, "ban_fanout", secs, median(floors), median(cpus))
	// Each ban over the floor runs just before and after it, then the median: the machine's
	// speed drifts within a minute, and a ban is compared with the floor of its own moment.
	var ratios []float64
	for i, b := range bans {
		ratios = append(ratios, b/((floors[i]+floors[i+1])/2))
	}
	emit(Row{"fleet", name, "ban_fanout_vs_adjacent_floors", median(ratios), "ratio"})
	if verbose() {
		fmt.Fprintf(os.Stderr, "     each ban over its adjacent floors: %.2f\n", ratios)
	}
	return secs, nil
}

// banPartitionKeys are the partitions `bansshee list` reads (controller.Ledger.BansToList): the
// legacy "ban" partition and the BanShards spread ones.
func banPartitionKeys() []string {
	out := []string{"ban"}
	for i := range controller.BanShards {
		out = append(out, fmt.Sprintf("ban#%02d", i))
	}
	return out
}

// floorRuns are the runs of one floor, made alternately with the runs of its figure
// (median3With): on a shared VM the speed moves by half within a minute, and a floor measured
// after its figure's three runs bounded a different machine.
type floorRuns struct {
	metric    string
	fn        func() error
	wall, cpu []float64
}

func (f *floorRuns) run() error {
	wall, cpu, err := floorRun(f.metric, f.fn)
	f.wall, f.cpu = append(f.wall, wall), append(f.cpu, cpu)
	return err
}

// emit prints the floor's median beside the figure it bounds.
func (f *floorRuns) emit(emit func(Row), name, figure string, secs float64) error {
	if verbose() {
		fmt.Fprintf(os.Stderr, "     %s runs: %.3f\n", f.metric, f.wall)
	}
	emitFloor(emit, name, figure, secs, median(f.wall), median(f.cpu))
	return nil
}

// median3With is median3 with a run of floor after each run of fn.
func median3With(metric string, fn func() error, floor *floorRuns) (float64, error) {
	var runs []float64
	for range 3 {
		secs, err := timed(metric, fn)
		if err != nil {
			return 0, err
		}
		runs = append(runs, secs)
		if err := floor.run(); err != nil {
			return 0, err
		}
	}
	if verbose() {
		fmt.Fprintf(os.Stderr, "     %s runs: %.3f\n", metric, runs)
	}
	return median(runs), nil
}

// listFloor is list_floor_seconds: the paginated Query calls `bansshee list` makes, of the same
// partitions, with the same filter and projection and as many in flight (8), and nothing decoded
// past the SDK's own unmarshalling of the responses.
func listFloor(ctx context.Context, r *fleetRig, want int) *floorRuns {
	return &floorRuns{metric: "list_floor_seconds", fn: func() error {
		var mu sync.Mutex
		items := 0
		var g errgroup.Group
		g.SetLimit(8)
		for _, pk := range banPartitionKeys() {
			g.Go(func() error {
				p := dynamodb.NewQueryPaginator(r.clients.DynamoDB, &dynamodb.QueryInput{TableName: aws.String(r.c.Table), KeyConditionExpression: aws.String("pk = :pk"),
					FilterExpression:         aws.String("attribute_not_exists(deleted) OR deleted = :false"),
					ProjectionExpression:     aws.String("sk, expires_at, reason, #s, rev"),
					ExpressionAttributeNames: map[string]string{"#s": "source"},
					ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":pk": &ddbtypes.AttributeValueMemberS{Value: pk},
						":false": &ddbtypes.AttributeValueMemberBOOL{Value: false}}})
				for p.HasMorePages() {
					page, err := p.NextPage(ctx)
					if err != nil {
						return err
					}
					mu.Lock()
					items += len(page.Items)
					mu.Unlock()
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return fmt.Errorf("list floor: %w", err)
		}
		if items < want {
			return fmt.Errorf("list floor: %d items, want %d and more", items, want)
		}
		return nil
	}}
}

// statusFloor is status_floor_seconds: the BatchGetItem calls `status` makes for r's agents (100
// keys a call, 16 in flight, eventually consistent, unprocessed keys retried), with nothing
// decoded past the SDK.
func statusFloor(ctx context.Context, r *fleetRig) *floorRuns {
	var keys []map[string]ddbtypes.AttributeValue
	for _, id := range r.ids {
		pk, sk := proto.StatusKey(id)
		keys = append(keys, map[string]ddbtypes.AttributeValue{"pk": &ddbtypes.AttributeValueMemberS{Value: pk}, "sk": &ddbtypes.AttributeValueMemberS{Value: sk}})
	}
	return &floorRuns{metric: "status_floor_seconds", fn: func() error {
		var mu sync.Mutex
		items := 0
		var g errgroup.Group
		g.SetLimit(16)
		for i := 0; i < len(keys); i += 100 {
			chunk := keys[i:min(i+100, len(keys))]
			g.Go(func() error {
				req := map[string]ddbtypes.KeysAndAttributes{r.c.Table: {Keys: chunk, ConsistentRead: aws.Bool(false)}}
				for len(req) > 0 {
					res, err := r.clients.DynamoDB.BatchGetItem(ctx, &dynamodb.BatchGetItemInput{RequestItems: req})
					if err != nil {
						return err
					}
					mu.Lock()
					items += len(res.Responses[r.c.Table])
					mu.Unlock()
					req = res.UnprocessedKeys
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return fmt.Errorf("status floor: %w", err)
		}
		if items != len(keys) {
			return fmt.Errorf("status floor: %d statuses of %d", items, len(keys))
		}
		return nil
	}}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

// convergedOf counts the converged instances of a status answer (every one, in the fleet cases:
// the check that a faster status still reads every agent's status).
func convergedOf(sts []controller.InstanceStatus) int {
	n := 0
	for _, st := range sts {
		if st.Converged {
			n++
		}
	}
	return n
}
