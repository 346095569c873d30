package controller

// An edge's WAF IP sets: reading them, changing them with LockToken and retries, and pacing the
// writes to WAF's documented rate. What the sets should hold is decided in edge.go.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/wafv2"
	waftypes "github.com/aws/aws-sdk-go-v2/service/wafv2/types"
)

// wafFor returns the WAF client for an edge's scope: CLOUDFRONT is served from us-east-1 only.
func (c *Controller) wafFor(e EdgeItem) *wafv2.Client {
	if e.Scope != "CLOUDFRONT" || c.WAF.Options().Region == "us-east-1" {
		return c.WAF
	}
	return wafv2.New(c.WAF.Options(), func(o *wafv2.Options) { o.Region = "us-east-1" })
}

// wafPacer spaces the calls of each WAF write action: WAF allows one call a second per action,
// account and Region to any Create, Put or Update action.
type wafPacer struct {
	mu   sync.Mutex
	next map[string]time.Time
}

var errPaceCancelled = errors.New("cancelled while pacing WAF writes")

func (c *Controller) wafPace(ctx context.Context, op string) error {
	every := c.WAFWriteInterval
	if every <= 0 {
		every = time.Second
	}
	c.pacer.mu.Lock()
	if c.pacer.next == nil {
		c.pacer.next = map[string]time.Time{}
	}
	now := time.Now()
	at := c.pacer.next[op]
	if at.Before(now) {
		at = now
	}
	c.pacer.next[op] = at.Add(every)
	c.pacer.mu.Unlock()
	if wait := time.Until(at); wait > 0 {
		t := time.NewTimer(wait) // the rate WAF documents, not a synchronisation
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", errPaceCancelled, ctx.Err())
		}
	}
	return nil
}

// wafSet is one of an edge's IP sets as read.
type wafSet struct {
	name, id, lock string
	index          int
	addrs          []string
}

func edgeSetName(edge string, v6 bool, i int) string {
	if v6 {
		return fmt.Sprintf("%s-v6-%d", edge, i)
	}
	return fmt.Sprintf("%s-v4-%d", edge, i)
}

// edgeSets lists and reads an edge's sets, by family (0: IPv4) and index.
func (c *Controller) edgeSets(ctx context.Context, e EdgeItem) ([2][]wafSet, error) {
	var out [2][]wafSet
	waf := c.wafFor(e)
	in := &wafv2.ListIPSetsInput{Scope: waftypes.Scope(e.Scope), Limit: aws.Int32(100)}
	for {
		page, err := waf.ListIPSets(ctx, in)
		if err != nil {
			return out, fmt.Errorf("list WAF IP sets: %w", err)
		}
		for _, sum := range page.IPSets {
			name := aws.ToString(sum.Name)
			for fi, fam := range []string{"-v4-", "-v6-"} {
				rest, ok := strings.CutPrefix(name, e.SK+fam)
				if !ok {
					continue
				}
				i, err := strconv.Atoi(rest)
				if err != nil || i < 0 || edgeSetName(e.SK, fi == 1, i) != name {
					continue
				}
				got, err := waf.GetIPSet(ctx, &wafv2.GetIPSetInput{Name: sum.Name, Id: sum.Id, Scope: waftypes.Scope(e.Scope)})
				if err != nil {
					return out, fmt.Errorf("read WAF IP set %s: %w", name, err)
				}
				out[fi] = append(out[fi], wafSet{name: name, id: aws.ToString(sum.Id), lock: aws.ToString(got.LockToken), index: i, addrs: got.IPSet.Addresses})
			}
		}
		if page.NextMarker == nil || len(page.IPSets) == 0 {
			break
		}
		in.NextMarker = page.NextMarker
	}
	for fi := range out {
		sort.Slice(out[fi], func(a, b int) bool { return out[fi][a].index < out[fi][b].index })
	}
	return out, nil
}

// edgeWant computes a family's new contents from its current ones.
type edgeWant func(fam int, current []netip.Prefix) (want []netip.Prefix, reason string)

// changeEdge brings an edge's sets to what want says, family by family: addresses stay in the set
// that holds them, new ones fill sets with room in order, then new sets (up to MaxSets); past the
// quota the tail of want is left out. A set written by someone else between our read and our
// write (WAFOptimisticLockException) is read again and the change recomputed.
func (c *Controller) changeEdge(ctx context.Context, e EdgeItem, want edgeWant) (*EdgeReport, error) {
	start := time.Now()
	rep := &EdgeReport{Edge: e.SK}
	waf := c.wafFor(e)
	for attempt := 0; ; attempt++ {
		sets, err := c.edgeSets(ctx, e)
		if err != nil {
			return rep, err
		}
		conflict := false
		rep.V4, rep.V6, rep.Sets, rep.LeftOut, rep.Added, rep.Removed = 0, 0, nil, 0, 0, 0
		for fi := range sets {
			var cur []netip.Prefix
			for _, s := range sets[fi] {
				for _, a := range s.addrs {
					if p, err := netip.ParsePrefix(a); err == nil {
						cur = append(cur, p.Masked())
					}
				}
			}
			w, reason := want(fi, cur)
			capacity := e.MaxSets * WAFSetMax
			if len(w) > capacity {
				rep.LeftOut += len(w) - capacity
				rep.Reason = fmt.Sprintf("%d sets of %d addresses per family (--max-sets): %s", e.MaxSets, WAFSetMax, reason)
				w = w[:capacity]
			}
			keep := make(map[netip.Prefix]bool, len(w))
			for _, p := range w {
				keep[p] = true
			}
			placed := map[netip.Prefix]bool{}
			contents := make([][]string, len(sets[fi]))
			for i, s := range sets[fi] {
				contents[i] = []string{}
				for _, a := range s.addrs {
					p, err := netip.ParsePrefix(a)
					if err == nil && keep[p.Masked()] && !placed[p.Masked()] {
						contents[i] = append(contents[i], p.Masked().String())
						placed[p.Masked()] = true
					} else {
						rep.Removed++
					}
				}
			}
			var rest []string
			for _, p := range w {
				if !placed[p] {
					rest = append(rest, p.String())
					placed[p] = true
				}
			}
			rep.Added += len(rest)
			for i := range contents {
				n := min(WAFSetMax-len(contents[i]), len(rest))
				if n > 0 {
					contents[i] = append(contents[i], rest[:n]...)
					rest = rest[n:]
				}
			}
			for i, s := range sets[fi] {
				if sameAddrs(s.addrs, contents[i]) {
					continue
				}
				if err := c.wafPace(ctx, "UpdateIPSet"); err != nil {
					return rep, err
				}
				rep.WriteCalls++
				_, err := waf.UpdateIPSet(ctx, &wafv2.UpdateIPSetInput{Name: aws.String(s.name), Id: aws.String(s.id), Scope: waftypes.Scope(e.Scope),
					LockToken: aws.String(s.lock), Addresses: contents[i], Description: aws.String(edgeDescription(e))})
				if lockErr := (*waftypes.WAFOptimisticLockException)(nil); errors.As(err, &lockErr) {
					conflict = true
					break
				}
				if err != nil {
					return rep, fmt.Errorf("update WAF IP set %s: %w", s.name, err)
				}
				rep.Updated = append(rep.Updated, s.name)
			}
			if conflict {
				break
			}
			next := 0
			for _, s := range sets[fi] {
				next = max(next, s.index+1)
			}
			// The first set of each family always exists (the web ACL rule references it).
			var created []string
			for len(sets[fi])+len(created) < e.MaxSets && (len(rest) > 0 || (len(sets[fi]) == 0 && next == 0)) {
				n := min(WAFSetMax, len(rest))
				name := edgeSetName(e.SK, fi == 1, next)
				next++
				if err := c.wafPace(ctx, "CreateIPSet"); err != nil {
					return rep, err
				}
				rep.WriteCalls++
				version := waftypes.IPAddressVersionIpv4
				if fi == 1 {
					version = waftypes.IPAddressVersionIpv6
				}
				_, err := waf.CreateIPSet(ctx, &wafv2.CreateIPSetInput{Name: aws.String(name), Scope: waftypes.Scope(e.Scope), IPAddressVersion: version,
					Addresses: append([]string{}, rest[:n]...), Description: aws.String(edgeDescription(e))})
				if err != nil {
					return rep, fmt.Errorf("create WAF IP set %s: %w", name, err)
				}
				rep.Created = append(rep.Created, name)
				created = append(created, name)
				contents = append(contents, rest[:n])
				rest = rest[n:]
			}
			total := 0
			for i, cts := range contents {
				total += len(cts)
				if i < len(sets[fi]) {
					rep.Sets = append(rep.Sets, sets[fi][i].name)
				}
			}
			rep.Sets = append(rep.Sets, created...)
			if fi == 0 {
				rep.V4 = total
			} else {
				rep.V6 = total
			}
		}
		if !conflict {
			break
		}
		rep.LockRetries++
		if attempt >= 8 {
			return rep, fmt.Errorf("edge %s: the IP sets kept changing under us (%d lock conflicts)", e.SK, rep.LockRetries)
		}
	}
	rep.DurationSeconds = time.Since(start).Seconds()
	return rep, nil
}

func edgeDescription(e EdgeItem) string {
	return "bansshee edge " + e.SK + ": bans targeting " + e.Target
}

func sameAddrs(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	x, y := slices.Clone(a), slices.Clone(b)
	sort.Strings(x)
	sort.Strings(y)
	return slices.Equal(x, y)
}
