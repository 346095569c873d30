package controller

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bansshee/bansshee/proto"
	dto "github.com/prometheus/client_model/go"
)

// Every ban the controller writes is one an agent takes (issue 22, finding 4): an operator's
// over-long reason is refused, a machine's truncated, and an old ledger item with a long reason
// still reaches a new instance in a sync the agent accepts whole.
func TestEntryLimitsAtEveryEntry(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	id := e.launch(t, "mail1", map[string]string{"Role": "mail"})
	if _, err := e.c.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	e.drain(t, id)
	long := strings.Repeat("x", 1000)
	before, _ := e.c.Ledger.CurrentRev(ctx)

	_, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"198.51.100.1"}, Reason: long, Operator: true})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "reason") || !strings.Contains(err.Error(), "256") {
		t.Fatalf("operator's 1000-byte reason: %v, want a refusal naming the field and the limit", err)
	}
	if rev, _ := e.c.Ledger.CurrentRev(ctx); rev != before {
		t.Fatalf("the refusal wrote the ledger (rev %d)", rev)
	}

	// A machine's (an alarm's query, a long alarm name): truncated, delivered.
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: []string{"198.51.100.2"}, Reason: long, Source: "lambda:" + long, TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	msgs := e.drain(t, id) // drain fails the test on any message the agent's decoder refuses
	if len(msgs) != 1 || len(msgs[0].Bans) != 1 {
		t.Fatalf("got %+v", msgs)
	}
	if b := msgs[0].Bans[0]; len(b.Reason) > proto.MaxTextBytes || len(b.Source) > proto.MaxTextBytes || !strings.HasSuffix(b.Reason, "...") {
		t.Fatalf("reason %d bytes, source %d bytes", len(b.Reason), len(b.Source))
	}
	bans, err := e.c.Ledger.Bans(ctx, e.c.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bans {
		if len(b.Reason) > proto.MaxTextBytes || len(b.Source) > proto.MaxTextBytes {
			t.Fatalf("ledger holds a %d-byte reason", len(b.Reason))
		}
	}

	// An item an earlier controller wrote: the sync carries it truncated, and nothing is dropped.
	now := e.c.Now()
	rev, err := e.c.Ledger.NextRev(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Ledger.PutBan(ctx, BanItem{CIDR: "198.51.100.3/32", Target: "", Reason: long, Source: long, Rev: rev, Created: now, Updated: now}); err != nil {
		t.Fatal(err)
	}
	late := e.launch(t, "mail2", map[string]string{"Role": "mail"})
	if _, err := e.c.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	msgs = e.drain(t, late)
	if len(msgs) != 1 || msgs[0].Kind != proto.KindSync || len(msgs[0].Bans) != 2 || msgs[0].Dropped != 0 {
		t.Fatalf("new instance's sync: %d messages, first %+v", len(msgs), *msgs[0])
	}
}

// The desired state of one instance is capped at what its agent's sets hold (issue 22, finding 9):
// the reconciler sends no sync that cannot apply, and says why, with a metric.
func TestDesiredStateCappedPerInstance(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.c.MaxInstanceEntries = 5
	var cidrs []string
	for i := range 6 {
		cidrs = append(cidrs, fmt.Sprintf("198.51.100.%d", i+1))
	}
	if _, err := e.c.Ban(ctx, BanRequest{CIDRs: cidrs, Target: "Role=mail", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	id := e.launch(t, "mail1", map[string]string{"Role": "mail"})
	web := e.launch(t, "web1", map[string]string{"Role": "web"})
	rep, err := e.c.ReconcileOnce(ctx)
	if !errors.Is(err, ErrOverCapacity) || !strings.Contains(err.Error(), "6 IPv4 bans, more than the 5") {
		t.Fatalf("err %v, want ErrOverCapacity naming the counts", err)
	}
	if slices.Contains(rep.Synced, id) || !slices.Contains(rep.OverCapacity, id) || !slices.Contains(rep.Synced, web) {
		t.Fatalf("synced %v, over capacity %v", rep.Synced, rep.OverCapacity)
	}
	m := NewMetrics()
	m.Observe(rep, err)
	var pb dto.Metric
	if err := m.OverCapacity.Write(&pb); err != nil {
		t.Fatal(err)
	}
	if got := pb.GetGauge().GetValue(); got != 1 {
		t.Fatalf("bansshee_fleet_instances_over_capacity = %v", got)
	}
}

// A ban of thousands of addresses (a direct invoke, an alarm's query) goes out as several messages
// that each fit SQS's 256 KiB, not as one body SQS refuses (found while testing finding 4's entry
// limits: 3 000 addresses with 200-byte reasons made a 922 377-byte body, delivered nowhere until
// the reconciler's sync). The same holds for unbans.
func TestLargeBanSplitIntoMessagesThatFit(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	id := e.launch(t, "mail1", map[string]string{"Role": "mail"})
	var cidrs []string
	for i := range 3000 {
		cidrs = append(cidrs, fmt.Sprintf("100.%d.%d.%d", 64+i>>16, i>>8&255, i&255))
	}
	res, err := e.c.Ban(ctx, BanRequest{CIDRs: cidrs, TTL: time.Hour, Reason: strings.Repeat("r", 200), Source: strings.Repeat("s", 200)})
	if err != nil || len(res.Failed()) != 0 {
		t.Fatalf("ban: %v, failed %v", err, res.Failed())
	}
	msgs := e.drain(t, id) // decoded as the agent does: each under the size limit, signed
	n := 0
	for _, m := range msgs {
		n += len(m.Bans)
		if m.Rev != res.Rev {
			t.Fatalf("a part has rev %d, the ban %d", m.Rev, res.Rev)
		}
	}
	if len(msgs) < 4 || n != 3000 {
		t.Fatalf("%d messages holding %d bans", len(msgs), n)
	}
	ures, err := e.c.Unban(ctx, cidrs)
	if err != nil || len(ures.Failed()) != 0 {
		t.Fatalf("unban: %v, failed %v", err, ures.Failed())
	}
	n = 0
	for _, m := range e.drain(t, id) {
		n += len(m.Unbans)
	}
	if n != 3000 {
		t.Fatalf("%d tombstones delivered", n)
	}
}
