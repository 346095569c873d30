// Command bansshee-bench runs bansshee's benchmark suites and prints a table, or with --json one
// JSON object per line: {"suite":..,"case":..,"metric":..,"value":..,"unit":..}.
package main

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bansshee/bansshee/internal/cli"
)

// Row is one measured figure.
type Row struct {
	Suite  string  `json:"suite"`
	Case   string  `json:"case"`
	Metric string  `json:"metric"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
}

type suite struct {
	name string
	help string
	run  func(ctx context.Context, emit func(Row)) error
}

var suites = []suite{
	{"firewall", "apply 1k/10k/100k/1M bans (beside the ipset restore floor) vs one iptables process per IP; connection rate with 10k bans, set vs linear chain, and on the forwarded (DNATed) path (root)", runFirewall},
	{"connect", "the firewall suite's connection rates alone: 10k bans on INPUT and on the forwarded (DNATed container) path (root)", runConnect},
	{"fanout", "one ban to 1000 queues; 1000 bans to 50 queues (embedded emulator)", runFanout},
	{"e2e", "N agents in namespaces: latency from ban to the attacker dropped everywhere (root)", runE2E},
	{"agent", "RSS and CPU of an idle agent holding 0 / 100000 / 1000000 bans (BANSSHEE_BENCH_AGENT_BANS; root)", runAgent},
	{"feeds", "a 100000-entry feed to N agents and a one-line change; a 1000000-entry feed to one agent and a new instance synced from the ledger (root)", runFeeds},
	{"fleet", "control plane at 1000 and 10000 instances, 15 ms per AWS request and 0 ms, and 30000 at 15 ms: reconcile, status, list (also on dynalite), one ban, each beside its floor, serve's peak RSS, --wait, requests (embedded emulator; each case its own process; BANSSHEE_BENCH_FLEET=10000|30000|dynalite, BANSSHEE_BENCH_FLEET_MS=15 pick one)", runFleet},
}

func main() {
	if os.Getenv("GOGC") == "" {
		// The controller runs in this process as in the CLI and the Lambda (cli.TuneGC), without
		// their memory limit: the emulator's tables live in this heap too.
		debug.SetGCPercent(cli.ControllerGCPercent)
	}
	fs := flag.NewFlagSet("bansshee-bench", flag.ExitOnError)
	jsonOut := fs.Bool("json", false, "print one JSON object per line instead of a table")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to `FILE` (go tool pprof FILE)")
	fs.StringVar(&profileMetric, "profile-metric", "", "with --cpuprofile: profile only the first timed run of `METRIC` (fleet suite, e.g. list_100000_bans_seconds)")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: bansshee-bench [--json] SUITE...|all\n\nsuites:\n")
		for _, s := range suites {
			fmt.Fprintf(os.Stderr, "  %-9s %s\n", s.name, s.help)
		}
		fmt.Fprintln(os.Stderr, "\nflags:")
		fs.PrintDefaults()
	}
	// Flags may come before or after the suite names.
	var names []string
	args := os.Args[1:]
	for len(args) > 0 {
		_ = fs.Parse(args)
		args = fs.Args()
		if len(args) > 0 {
			names = append(names, args[0])
			args = args[1:]
		}
	}
	if len(names) == 0 {
		fs.Usage()
		os.Exit(2)
	}
	var run []suite
	for _, n := range names {
		found := false
		for _, s := range suites {
			if n == s.name || n == "all" {
				run = append(run, s)
				found = true
			}
		}
		if !found {
			fmt.Fprintf(os.Stderr, "bansshee-bench: unknown suite %q\n", n)
			fs.Usage()
			os.Exit(2)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *cpuProfile != "" && profileMetric != "" {
		profileFile = *cpuProfile
	} else if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "bansshee-bench: cpu profile: %v\n", err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}
	var rows []Row
	emit := func(r Row) {
		rows = append(rows, r)
		if *jsonOut {
			b, _ := json.Marshal(r)
			fmt.Println(string(b))
		} else {
			fmt.Fprintf(os.Stderr, "  %s %s %s = %.6g %s\n", r.Suite, r.Case, r.Metric, r.Value, r.Unit)
		}
	}
	child := os.Getenv("BANSSHEE_BENCH_FLEET_CHILD") != "" // one fleet case for a parent run
	// The machine's speed when the figures were taken: a shared VM's CPU varies by a third from
	// one hour to the next, and every CPU-bound figure with it. Not run in a fleet child process.
	if !child {
		emit(Row{"machine", "calibration", "ed25519_signs_per_second_one_core", calibrate(), "ops/s"})
	}
	failed := false
	for _, s := range run {
		if !child {
			fmt.Fprintf(os.Stderr, "== %s: %s\n", s.name, s.help)
		}
		start := time.Now()
		if err := s.run(ctx, emit); err != nil {
			fmt.Fprintf(os.Stderr, "bansshee-bench: %s: %v\n", s.name, err)
			failed = true
		}
		if !child {
			fmt.Fprintf(os.Stderr, "   (%s in %s)\n", s.name, time.Since(start).Round(time.Millisecond))
		}
	}
	if !*jsonOut {
		printTable(rows)
	}
	if failed {
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

// calibrate counts Ed25519 signatures of a 200-byte message on one core for half a second.
func calibrate() float64 {
	_, key, _ := ed25519.GenerateKey(nil)
	msg := make([]byte, 200)
	n := 0
	start := time.Now()
	for time.Since(start) < 500*time.Millisecond {
		ed25519.Sign(key, msg)
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}

func printTable(rows []Row) {
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].Suite < rows[j].Suite })
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "suite\tcase\tmetric\tvalue\tunit\t")
	fmt.Fprintln(w, strings.Repeat("-", 8)+"\t"+strings.Repeat("-", 8)+"\t"+strings.Repeat("-", 8)+"\t"+strings.Repeat("-", 8)+"\t"+strings.Repeat("-", 4)+"\t")
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%s\t%s\t%.4g\t%s\t\n", r.Suite, r.Case, r.Metric, r.Value, r.Unit)
	}
	w.Flush()
}
