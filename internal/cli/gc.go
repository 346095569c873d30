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
