package awstest

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/wafv2"
	waftypes "github.com/aws/aws-sdk-go-v2/service/wafv2/types"
)

// The real wafv2 client against the emulator: create, get, update with lock tokens, list with
// paging, quota and validation errors as typed SDK errors, delete.
func TestWAFIPSetsWithTheSDK(t *testing.T) {
	e, c := New(t)
	ctx := t.Context()
	created, err := c.WAF.CreateIPSet(ctx, &wafv2.CreateIPSetInput{Name: aws.String("edge-v4-0"), Scope: waftypes.ScopeRegional,
		IPAddressVersion: waftypes.IPAddressVersionIpv4, Addresses: []string{"192.0.2.0/24", "198.51.100.7/32"}})
	if err != nil {
		t.Fatal(err)
	}
	sum := created.Summary
	if aws.ToString(sum.Id) == "" || aws.ToString(sum.LockToken) == "" || aws.ToString(sum.ARN) == "" {
		t.Fatalf("summary %+v", sum)
	}
	_, err = c.WAF.CreateIPSet(ctx, &wafv2.CreateIPSetInput{Name: aws.String("edge-v4-0"), Scope: waftypes.ScopeRegional,
		IPAddressVersion: waftypes.IPAddressVersionIpv4, Addresses: []string{}})
	if dup := (*waftypes.WAFDuplicateItemException)(nil); !errors.As(err, &dup) {
		t.Fatalf("duplicate name: %v", err)
	}
	got, err := c.WAF.GetIPSet(ctx, &wafv2.GetIPSetInput{Name: sum.Name, Id: sum.Id, Scope: waftypes.ScopeRegional})
	if err != nil || !slices.Equal(got.IPSet.Addresses, []string{"192.0.2.0/24", "198.51.100.7/32"}) || got.IPSet.IPAddressVersion != waftypes.IPAddressVersionIpv4 {
		t.Fatalf("get: %+v %v", got, err)
	}
	up, err := c.WAF.UpdateIPSet(ctx, &wafv2.UpdateIPSetInput{Name: sum.Name, Id: sum.Id, Scope: waftypes.ScopeRegional,
		LockToken: got.LockToken, Addresses: []string{"203.0.113.9/32"}})
	if err != nil || aws.ToString(up.NextLockToken) == aws.ToString(got.LockToken) {
		t.Fatalf("update: %+v %v", up, err)
	}
	// The old token is stale now.
	_, err = c.WAF.UpdateIPSet(ctx, &wafv2.UpdateIPSetInput{Name: sum.Name, Id: sum.Id, Scope: waftypes.ScopeRegional,
		LockToken: got.LockToken, Addresses: []string{}})
	if lock := (*waftypes.WAFOptimisticLockException)(nil); !errors.As(err, &lock) {
		t.Fatalf("stale lock token: %v, want WAFOptimisticLockException", err)
	}
	// Quota and validation.
	big := make([]string, WAFMaxAddresses+1)
	for i := range big {
		big[i] = fmt.Sprintf("10.%d.%d.%d/32", i>>16, (i>>8)&255, i&255)
	}
	_, err = c.WAF.UpdateIPSet(ctx, &wafv2.UpdateIPSetInput{Name: sum.Name, Id: sum.Id, Scope: waftypes.ScopeRegional, LockToken: up.NextLockToken, Addresses: big})
	if lim := (*waftypes.WAFLimitsExceededException)(nil); !errors.As(err, &lim) {
		t.Fatalf("10 001 addresses: %v, want WAFLimitsExceededException", err)
	}
	if _, err = c.WAF.UpdateIPSet(ctx, &wafv2.UpdateIPSetInput{Name: sum.Name, Id: sum.Id, Scope: waftypes.ScopeRegional, LockToken: up.NextLockToken, Addresses: big[:WAFMaxAddresses]}); err != nil {
		t.Fatalf("10 000 addresses: %v", err)
	}
	for _, bad := range [][]string{{"0.0.0.0/0"}, {"2001:db8::/32"}, {"not-an-address"}} {
		_, err := c.WAF.CreateIPSet(ctx, &wafv2.CreateIPSetInput{Name: aws.String("bad"), Scope: waftypes.ScopeRegional, IPAddressVersion: waftypes.IPAddressVersionIpv4, Addresses: bad})
		if inv := (*waftypes.WAFInvalidParameterException)(nil); !errors.As(err, &inv) {
			t.Errorf("addresses %v: %v, want WAFInvalidParameterException", bad, err)
		}
	}
	// Listing pages; CLOUDFRONT is a scope of its own.
	for i := 1; i <= 4; i++ {
		if _, err := c.WAF.CreateIPSet(ctx, &wafv2.CreateIPSetInput{Name: aws.String(fmt.Sprintf("edge-v6-%d", i)), Scope: waftypes.ScopeRegional,
			IPAddressVersion: waftypes.IPAddressVersionIpv6, Addresses: []string{"2001:db8::1/128"}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.WAF.CreateIPSet(ctx, &wafv2.CreateIPSetInput{Name: aws.String("cf"), Scope: waftypes.ScopeCloudfront,
		IPAddressVersion: waftypes.IPAddressVersionIpv4, Addresses: []string{}}); err != nil {
		t.Fatal(err)
	}
	var names []string
	p := wafv2.ListIPSetsInput{Scope: waftypes.ScopeRegional, Limit: aws.Int32(2)}
	for pages := 0; ; pages++ {
		out, err := c.WAF.ListIPSets(ctx, &p)
		if err != nil || pages > 5 {
			t.Fatalf("list: %v after %d pages", err, pages)
		}
		for _, s := range out.IPSets {
			names = append(names, aws.ToString(s.Name))
		}
		if out.NextMarker == nil {
			break
		}
		p.NextMarker = out.NextMarker
	}
	if want := []string{"edge-v4-0", "edge-v6-1", "edge-v6-2", "edge-v6-3", "edge-v6-4"}; !slices.Equal(names, want) {
		t.Fatalf("listed %v, want %v", names, want)
	}
	cur, _ := c.WAF.GetIPSet(ctx, &wafv2.GetIPSetInput{Name: sum.Name, Id: sum.Id, Scope: waftypes.ScopeRegional})
	if _, err := c.WAF.DeleteIPSet(ctx, &wafv2.DeleteIPSetInput{Name: sum.Name, Id: sum.Id, Scope: waftypes.ScopeRegional, LockToken: cur.LockToken}); err != nil {
		t.Fatal(err)
	}
	_, err = c.WAF.GetIPSet(ctx, &wafv2.GetIPSetInput{Name: sum.Name, Id: sum.Id, Scope: waftypes.ScopeRegional})
	if gone := (*waftypes.WAFNonexistentItemException)(nil); !errors.As(err, &gone) {
		t.Fatalf("get after delete: %v", err)
	}
	if n := len(e.WAF.Writes()); n != 9 { // 1 + 2 updates + 4 + 1 creates + 1 delete
		t.Fatalf("%d writes recorded, want 9", n)
	}
}
