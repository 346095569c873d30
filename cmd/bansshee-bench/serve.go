package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/bansshee/bansshee/internal/awstest"
)

// servePasses is how many reconcile passes `bansshee serve` runs before its peak RSS is read.
const servePasses = 3

// servePeakRSS runs the real `bansshee serve` (its own process: its heap is not the emulator's)
// against r's converged fleet until it has made servePasses reconcile passes, and reports its
// peak resident memory (VmHWM) and how long the passes took, start to last pass logged.
func servePeakRSS(ctx context.Context, emit func(Row), r *fleetRig, name string) error {
	bin, err := buildCLI(ctx)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "bansshee-bench-serve")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte(r.c.Signer.MarshalPrivate()), 0o600); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(sctx, bin, "serve", "--interval", "1s", "--log-level", "info", "--key", key, "--table", r.c.Table,
		"--queue-prefix", r.c.Queues.Prefix, "--endpoint-url", r.env.URL(), "--region", awstest.Region)
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID=AKIDBANSSHEETEST", "AWS_SECRET_ACCESS_KEY=secret", "AWS_EC2_METADATA_DISABLED=true")
	logs, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	passes := 0
	var last string
	sc := bufio.NewScanner(logs)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for passes < servePasses && sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, `"reconcile pass"`) || strings.Contains(line, "msg=\"reconcile pass\"") {
			if strings.Contains(line, `"level":"ERROR"`) {
				return fmt.Errorf("bansshee serve: %s", line)
			}
			passes++
			last = line
		}
	}
	if passes < servePasses {
		return fmt.Errorf("bansshee serve ended after %d passes (%v)", passes, sctx.Err())
	}
	elapsed := time.Since(start)
	hwm, err := procStatus(cmd.Process.Pid, "VmHWM:")
	if err != nil {
		return err
	}
	emit(Row{"fleet", name, "serve_peak_rss_bytes", float64(hwm), "bytes"})
	if verbose() {
		fmt.Fprintf(os.Stderr, "     serve: %d passes in %s, peak RSS %.1f MB; last: %s\n", passes, elapsed.Round(time.Millisecond), float64(hwm)/1e6, last)
	}
	return nil
}
