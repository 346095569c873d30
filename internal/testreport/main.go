// Command testreport reads `go test -json` on stdin and prints what `go test` would (the output of
// failing tests, one line per package), then a summary per suite: how many tests ran, passed,
// failed and skipped, and why each skip happened. A skip is never silent. Under CI=true a skipped
// test fails the run: CI installs everything the kernel, daemon and emulator suites need.
//
//	go test -json ./... | go run ./internal/testreport
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

type suite struct {
	passed, failed, skipped int
	elapsed                 float64
	failedPkg               bool
	skips                   []string
}

func main() {
	code, err := report(os.Stdin, os.Stdout, os.Getenv("CI") == "true")
	if err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		os.Exit(2)
	}
	os.Exit(code)
}

func report(in io.Reader, out io.Writer, ci bool) (int, error) {
	suites := map[string]*suite{}
	outputs := map[string][]string{} // package/test -> its output lines
	get := func(pkg string) *suite {
		if suites[pkg] == nil {
			suites[pkg] = &suite{}
		}
		return suites[pkg]
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if err := json.Unmarshal(line, &ev); err != nil || ev.Action == "" {
			fmt.Fprintln(out, string(line)) // build errors and the like come as plain text
			continue
		}
		key := ev.Package + "/" + ev.Test
		switch ev.Action {
		case "output":
			outputs[key] = append(outputs[key], ev.Output)
		case "pass", "fail", "skip":
			s := get(ev.Package)
			if ev.Test == "" {
				s.elapsed = ev.Elapsed
				if ev.Action == "fail" {
					s.failedPkg = true
					for _, l := range outputs[key] {
						fmt.Fprint(out, l)
					}
				}
				fmt.Fprintf(out, "%-4s %s %.1fs\n", map[string]string{"pass": "ok", "fail": "FAIL", "skip": "?"}[ev.Action], ev.Package, ev.Elapsed)
				continue
			}
			if strings.Contains(ev.Test, "/") {
				continue // a failing subtest's parent fails too: it is printed and counted there
			}
			switch ev.Action {
			case "pass":
				s.passed++
			case "fail":
				s.failed++
				for k, lines := range outputs { // the test's own output and its subtests'
					if k == key || strings.HasPrefix(k, key+"/") {
						for _, l := range lines {
							fmt.Fprint(out, l)
						}
						delete(outputs, k)
					}
				}
			case "skip":
				s.skipped++
				why := ""
				for _, l := range outputs[key] {
					if t := strings.TrimSpace(l); strings.Contains(t, ".go:") {
						why = t
					}
				}
				s.skips = append(s.skips, ev.Test+": "+why)
			}
			delete(outputs, key)
		}
	}
	if err := sc.Err(); err != nil {
		return 2, err
	}
	pkgs := make([]string, 0, len(suites))
	for p := range suites {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	var total suite
	fmt.Fprintf(out, "\n%-52s %6s %6s %6s %6s %8s\n", "SUITE", "RAN", "PASS", "FAIL", "SKIP", "TIME")
	for _, p := range pkgs {
		s := suites[p]
		ran := s.passed + s.failed
		if ran+s.skipped == 0 && !s.failedPkg {
			continue // no tests in the package
		}
		fmt.Fprintf(out, "%-52s %6d %6d %6d %6d %8s\n", strings.TrimPrefix(p, "github.com/bansshee/bansshee/"), ran, s.passed, s.failed, s.skipped, (time.Duration(s.elapsed*1000) * time.Millisecond).String())
		total.passed += s.passed
		total.failed += s.failed
		total.skipped += s.skipped
		if s.failedPkg && s.failed == 0 {
			total.failed++ // a build failure or a panic outside a test
		}
	}
	var skips []string
	for _, p := range pkgs {
		for _, sk := range suites[p].skips {
			skips = append(skips, strings.TrimPrefix(p, "github.com/bansshee/bansshee/")+" "+sk)
		}
	}
	if len(skips) > 0 {
		fmt.Fprintf(out, "\nSKIPPED (%d): these suites did not run here\n", len(skips))
		for _, s := range skips {
			fmt.Fprintln(out, "  "+s)
		}
	}
	fmt.Fprintf(out, "\n%d passed, %d failed, %d skipped\n", total.passed, total.failed, total.skipped)
	switch {
	case total.failed > 0:
		return 1, nil
	case ci && total.skipped > 0:
		fmt.Fprintln(out, "FAIL: CI=true and tests were skipped: CI must run every suite (.ci/deps.sh installs what they need)")
		return 1, nil
	}
	return 0, nil
}
