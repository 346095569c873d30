package cli

import (
	"bufio"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// ControllerGCPercent is the collector setting of a controller process (the CLI, the Lambda, the
// bench that stands in for them). A fan-out allocates about 40 KB per message while its live heap
// stays small, so collection is most of what a larger GOGC saves: at 10 000 queues, GOGC 400
// takes about a tenth off the CPU of a fan-out compared with 200.
const ControllerGCPercent = 400

// ServeGCPercent is the collector setting of `bansshee serve`, a process that stays resident:
// its heap peaks at about (1 + GOGC/100) times what a pass holds live (every instance's tags,
// status and queue URL, and the SDK's decoded pages), so at 30 000 instances GOGC 400 let the peak
// reach 340-420 MB (bansshee-bench fleet). At 200 it measured 223-225 MB, and three passes took
// as long (18-20 s against 17-21 s): a pass a minute is a small share of the process's CPU.
const ServeGCPercent = 200

// TuneServeGC sets GOGC to ServeGCPercent unless GOGC is in the environment.
func TuneServeGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(ServeGCPercent)
	}
}

// TuneGC sets GOGC to ControllerGCPercent and, so that a large live heap (a listing of a million
// bans, `serve` holding a million-entry feed) cannot grow five-fold unchecked, a soft memory limit:
// three quarters of the Lambda's memory; elsewhere memLimit, or half of the host's memory (its
// cgroup's limit, else MemTotal) when that is less. GOGC and GOMEMLIMIT in the environment win.
func TuneGC(memLimit int64) {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(ControllerGCPercent)
	}
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	if mb, err := strconv.ParseInt(os.Getenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), 10, 64); err == nil && mb > 0 {
		memLimit = mb << 20 * 3 / 4
	} else if host := hostMemory(); host > 0 && host/2 < memLimit {
		memLimit = host / 2
	}
	if memLimit > 0 {
		debug.SetMemoryLimit(memLimit)
	}
}

// hostMemory is the memory this process may use: its cgroup's memory.max, else the machine's
// MemTotal; 0 when neither can be read.
func hostMemory() int64 {
	if b, err := os.ReadFile("/sys/fs/cgroup/memory.max"); err == nil {
		if n, ok := parseCgroupMax(string(b)); ok {
			return n
		}
	}
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	return parseMemTotal(bufio.NewScanner(f))
}

// parseCgroupMax reads a cgroup v2 memory.max: a byte count, or "max" (no limit: not ok).
func parseCgroupMax(s string) (int64, bool) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	return n, err == nil && n > 0
}

// parseMemTotal finds "MemTotal: <kB> kB" in /proc/meminfo.
func parseMemTotal(sc *bufio.Scanner) int64 {
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}
