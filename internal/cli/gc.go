package cli

import (
	"os"
	"runtime/debug"
	"strconv"
)

// ControllerGCPercent is the collector setting of a controller process (the CLI, the Lambda, the
// bench that stands in for them). A fan-out allocates about 40 KB per message while its live heap
// stays small, so collection is most of what a larger GOGC saves: at 10 000 queues, GOGC 400
// takes about a tenth off the CPU of a fan-out compared with 200.
const ControllerGCPercent = 400

// TuneGC sets GOGC to ControllerGCPercent and, so that a large live heap (a listing of a million
// bans) cannot grow five-fold unchecked, a soft memory limit: three quarters of the Lambda's
// memory, or memLimit elsewhere. GOGC and GOMEMLIMIT in the environment win.
func TuneGC(memLimit int64) {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(ControllerGCPercent)
	}
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	if mb, err := strconv.ParseInt(os.Getenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), 10, 64); err == nil && mb > 0 {
		memLimit = mb << 20 * 3 / 4
	}
	if memLimit > 0 {
		debug.SetMemoryLimit(memLimit)
	}
}
