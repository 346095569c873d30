package main

import (
	"fmt"
	"os"
	"slices"
)

// largeFleet is the size of the fleet suite's largest case, run at 15 ms only (a region's round
// trip; loopback at this size says nothing more than at 10 000).
const largeFleet = 30000

// fleetSpecs are the fleet cases, each run in a process of its own: "N:MS" for N instances at MS
// per request, "dynalite:MS" for the list on dynalite. By default 1 000 and 10 000 instances at
// 15 and 0 ms, 30 000 at 15 ms, and the list on dynalite; BANSSHEE_BENCH_FLEET and
// BANSSHEE_BENCH_FLEET_MS pick one size and one latency.
func fleetSpecs() []string {
	var specs []string
	if os.Getenv("BANSSHEE_BENCH_FLEET") != "dynalite" {
		for _, n := range fleetSizes() {
			for _, lat := range fleetLatencies() {
				specs = append(specs, fmt.Sprintf("%d:%d", n, lat.Milliseconds()))
			}
		}
		if ms := os.Getenv("BANSSHEE_BENCH_FLEET_MS"); os.Getenv("BANSSHEE_BENCH_FLEET") == "" && (ms == "" || ms == "15") {
			specs = append(specs, fmt.Sprintf("%d:15", largeFleet))
		}
	}
	for _, lat := range fleetLatencies() {
		specs = append(specs, fmt.Sprintf("dynalite:%d", lat.Milliseconds()))
		if slices.Contains(fleetSizes(), 10000) && lat > 0 {
			specs = append(specs, fmt.Sprintf("why-dynalite:%d", lat.Milliseconds()))
		}
	}
	return specs
}
