package main

import (
	"strings"
	"testing"
)

func TestCLIEdge(t *testing.T) {
	c := newCLI(t)
	code, _, errOut := c.run(t, "edge", "add", "shop", "--scope", "GLOBAL", "--target", "Role=web")
	if code != exitUsage || !strings.Contains(errOut, "--scope") {
		t.Fatalf("bad scope: %d %q", code, errOut)
	}
	code, out, errOut := c.run(t, "edge", "add", "shop", "--scope", "REGIONAL", "--target", "Role=web")
	if code != 0 || !strings.Contains(out, "edge shop: 0 IPv4 and 0 IPv6 addresses in shop-v4-0, shop-v6-0") {
		t.Fatalf("edge add: %d %q %q", code, out, errOut)
	}
	if code, _, errOut := c.run(t, "ban", "198.51.100.5", "2001:db8::5", "--target", "Role=web"); code != 0 {
		t.Fatalf("ban: %s", errOut)
	}
	got := c.env.WAF.Addresses("REGIONAL", "shop-")
	if len(got["shop-v4-0"]) != 1 || got["shop-v4-0"][0] != "198.51.100.5/32" || len(got["shop-v6-0"]) != 1 {
		t.Fatalf("sets after the ban: %v", got)
	}
	code, out, errOut = c.run(t, "edge", "sync", "shop")
	if code != 0 || !strings.Contains(out, "edge shop: 1 IPv4 and 1 IPv6 addresses") {
		t.Fatalf("edge sync: %d %q %q", code, out, errOut)
	}
	code, out, _ = c.run(t, "edge", "list")
	if code != 0 || !strings.Contains(out, "shop") || !strings.Contains(out, "Role=web") {
		t.Fatalf("edge list: %d %q", code, out)
	}
	if code, out, errOut := c.run(t, "edge", "rm", "shop", "--delete-sets"); code != 0 || !strings.Contains(out, "removed") {
		t.Fatalf("edge rm: %d %q %q", code, out, errOut)
	}
	if got := c.env.WAF.Addresses("REGIONAL", "shop-"); len(got) != 0 {
		t.Fatalf("sets left after rm --delete-sets: %v", got)
	}
}
