package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
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
}

func newFleetRig(ctx context.Context, n int) (*fleetRig, error) {
	env, err := awstest.Start()
	if err != nil {
		return nil, err
	}
	clients := awstest.NewClients(env.Config(""))
	signer, _ := proto.GenerateKey("bench")
	c, err := controller.New(controller.Config{EC2: clients.EC2, SQS: clients.SQS, DDB: clients.DynamoDB, Signer: signer,
		Table: awstest.Unique("bansshee"), Prefix: awstest.Unique("bansshee")}) // the default concurrency, as operators run it
	if err != nil {
		env.Close()
		return nil, err
	}
	r := &fleetRig{env: env, clients: clients, c: c}
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

func (r *fleetRig) close() { r.env.Close() }

// heartbeats writes a converged status for every instance (what n agents would), 25 to a batch.
func (r *fleetRig) heartbeats(ctx context.Context, rev int64, digest string) error {
	var items []ddbtypes.WriteRequest
	now := time.Now().UTC()
	for _, id := range r.ids {
		pk, sk := proto.StatusKey(id)
		item, err := attributevalue.MarshalMap(proto.AgentStatus{PK: pk, SK: sk, InstanceID: id, AppliedRev: rev, Digest: digest, Heartbeat: now, Version: "bench"})
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

func timed(fn func() error) (float64, error) {
	start := time.Now()
	err := fn()
	return time.Since(start).Seconds(), err
}

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

// fleetSizes and fleetLatencies are the cases run; BANSSHEE_BENCH_FLEET (e.g. "10000") and
// BANSSHEE_BENCH_FLEET_MS (e.g. "15") pick one of each for a quicker or profiled run.
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

func runFleet(ctx context.Context, emit func(Row)) error {
	for _, n := range fleetSizes() {
		for _, lat := range fleetLatencies() {
			if err := fleetCase(ctx, emit, n, lat); err != nil {
				return fmt.Errorf("fleet %d at %s: %w", n, lat, err)
			}
		}
	}
	return nil
}

func fleetCase(ctx context.Context, emit func(Row), n int, lat time.Duration) error {
	name := fmt.Sprintf("%d-%dms", n, lat.Milliseconds())
	fmt.Printf("   %d instances, %s per request ...\n", n, lat)
	r, err := newFleetRig(ctx, n)
	if err != nil {
		return err
	}
	defer r.close()
	c := r.c

	// First pass: every instance is new (queue, sync).
	r.env.SetLatency(lat)
	r.env.ResetOps()
	secs, err := timed(func() error {
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
	r.env.SetLatency(lat)
	r.env.ResetOps()
	secs, err = timed(func() error {
		rep, err := c.ReconcileOnce(ctx)
		if err == nil && (len(rep.Synced) != 0 || rep.Fleet.Converged != n) {
			err = fmt.Errorf("steady pass: %d syncs, %d converged", len(rep.Synced), rep.Fleet.Converged)
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
		fmt.Printf("     steady pass requests: %s\n", opsString(steadyOps))
	}

	// status with n agents.
	secs, err = timed(func() error {
		sts, _, err := c.Status(ctx, "*")
		if err == nil && len(sts) != n {
			err = fmt.Errorf("status: %d instances", len(sts))
		}
		return err
	})
	if err != nil {
		return err
	}
	emit(Row{"fleet", name, "status_seconds", secs, "s"})

	// One ban to every queue.
	r.env.ResetOps()
	var res *controller.Result
	secs, err = timed(func() error {
		var err error
		res, err = c.Ban(ctx, controller.BanRequest{CIDRs: []string{"198.51.100.7"}, Target: "Role=mail", TTL: time.Hour, Reason: "bench"})
		if err == nil && (len(res.Instances) != n || len(res.Failed()) > 0) {
			err = fmt.Errorf("ban reached %d of %d (%d failed)", len(res.Instances)-len(res.Failed()), n, len(res.Failed()))
		}
		return err
	})
	if err != nil {
		return err
	}
	banOps := r.env.Ops()
	emit(Row{"fleet", name, "ban_fanout_seconds", secs, "s"})
	emit(Row{"fleet", name, "requests_per_ban_per_1000_instances", float64(sum(banOps)) * 1000 / float64(n), "requests"})
	if lat > 0 {
		fmt.Printf("     one ban's requests: %s\n", opsString(banOps))
	}

	// --wait on 1 000 agents: they answer (all at once, as agents would within a second), and
	// the waiter reads only the statuses it still awaits.
	if n == 1000 {
		r.env.SetLatency(0)
		go func() { _ = r.heartbeats(ctx, res.Rev, "") }()
		r.env.SetLatency(lat)
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		secs, err = timed(func() error {
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
		r.env.SetLatency(0)
		if err := r.bans(ctx, 100000); err != nil {
			return err
		}
		r.env.SetLatency(lat)
		secs, err = timed(func() error {
			bans, err := c.Ledger.BansToList(ctx, time.Now()) // what `bansshee list` reads
			if err == nil {
				_, err = c.Ledger.Limits(ctx)
			}
			if err == nil && len(bans) < 100000 {
				err = fmt.Errorf("list: %d bans", len(bans))
			}
			return err
		})
		if err != nil {
			return err
		}
		emit(Row{"fleet", name, "list_100000_bans_seconds", secs, "s"})
	}

	// Idle cost: an idle instance-hour is its agent's polls and keep-alives plus its share of a
	// steady reconcile pass every minute (the scheduled Lambda).
	perHour := float64(agentPollsPerHour+agentKeepAlivesPerHour) + float64(sum(steadyOps))*60/float64(n)
	emit(Row{"fleet", name, "requests_per_idle_instance_hour", perHour, "requests"})
	emit(Row{"fleet", name, "idle_vs_long_poll_floor", perHour / agentPollsPerHour, "ratio"})
	return nil
}
