package firewall

import (
	"context"
	"fmt"
	"math/bits"
	"regexp"
	"strconv"

	"golang.org/x/sys/unix"
)

// Flood tables: what a flood of forged sources can fill. Each hashlimit rule keeps one entry per
// source in a kernel table, and the kernel drops the packets of a source it cannot add: left at
// its default (65 536 entries on hosts over 1 GB), 65 536 forged SYN sources per expiry window
// shut every new client out of a limited port. The suspect and trip sets (filled from the packet
// path, where ipset cannot grow a hash) have the same problem at their initial hash size.
// So each is sized explicitly, from memory.
const (
	// floodEntryBytes is what one hashlimit entry costs (struct dsthash_ent in its slab, rounded up).
	floodEntryBytes = 128
	// floodMemoryShare: one full table may take this fraction of the host's memory.
	floodMemoryShare = 64
	minFloodTable    = 65536
	maxFloodTable    = 1 << 20 // the kernel's cap on a hashlimit table (HASHLIMIT_MAX_SIZE)
)

// FloodTableSize is the number of sources each hashlimit table and the suspect and trip sets
// hold on a host with mem bytes of memory: a 64th of it at 128 bytes an entry, between 65 536
// and 1 048 576, rounded down to a power of two. A 2 GB host holds 262 144 sources per limit, 16 MB when full; 8 GB and more
// hold 1 048 576 (128 MB when full, which only a flood of a million sources in one minute fills).
func FloodTableSize(mem uint64) int {
	n := min(max(mem/floodMemoryShare/floodEntryBytes, minFloodTable), maxFloodTable)
	// A power of two: ipset rounds a hash size up to one, and the sizes are compared on start.
	return 1 << (bits.Len64(n) - 1)
}

// totalMemory is the host's memory in bytes (0 if unknown).
func totalMemory() uint64 {
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) != nil {
		return 0
	}
	return uint64(si.Totalram) * uint64(si.Unit)
}

var setHeader = regexp.MustCompile(`hashsize (\d+) maxelem (\d+)`)

// resizeFloodSets replaces a suspect or trip set made with other sizes (by an earlier version)
// with one of the configured size: `ipset restore -exist` refuses a create line that differs from
// the existing set, and a set referenced by rules cannot be destroyed, so the new set is swapped
// in. Their entries are transient (an hour) and are not carried over.
func (f *Firewall) resizeFloodSets(ctx context.Context, existing map[string]bool) error {
	for _, fam := range f.fams {
		for _, name := range []string{fam.suspect, fam.tripSet} {
			if !existing[name] {
				continue
			}
			out, err := run(ctx, nil, "ipset", "list", "-t", name)
			if err != nil {
				return err
			}
			m := setHeader.FindSubmatch(out)
			if m != nil && string(m[1]) == strconv.Itoa(f.cfg.FloodTable) && string(m[2]) == strconv.Itoa(f.cfg.FloodTable) {
				continue
			}
			tmp := name + "-new"
			script := fmt.Sprintf("create %s hash:ip,port family %s hashsize %d maxelem %d timeout 3600\nswap %s %s\ndestroy %s\n",
				tmp, fam.inet, f.cfg.FloodTable, f.cfg.FloodTable, name, tmp, tmp)
			if _, err := run(ctx, []byte(script), "ipset", "restore"); err != nil {
				return fmt.Errorf("resize %s to %d entries: %w", name, f.cfg.FloodTable, err)
			}
			f.cfg.Log.Info("flood set resized", "set", name, "entries", f.cfg.FloodTable)
		}
	}
	return nil
}
