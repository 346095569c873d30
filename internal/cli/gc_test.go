package cli

import (
	"bufio"
	"strings"
	"testing"
)

// The host's memory bounds a controller's soft memory limit: a cgroup's memory.max when it has
// one ("max" is none), else /proc/meminfo's MemTotal, as the kernel writes them.
func TestHostMemoryParsing(t *testing.T) {
	if n, ok := parseCgroupMax("2147483648\n"); !ok || n != 2<<30 {
		t.Fatalf("memory.max 2 GiB: %d %v", n, ok)
	}
	if _, ok := parseCgroupMax("max\n"); ok {
		t.Fatal(`memory.max "max" read as a limit`)
	}
	meminfo := "MemTotal:        2014276 kB\nMemFree:          176040 kB\nMemAvailable:    1412844 kB\n"
	if n := parseMemTotal(bufio.NewScanner(strings.NewReader(meminfo))); n != 2014276<<10 {
		t.Fatalf("MemTotal: %d", n)
	}
	if n := parseMemTotal(bufio.NewScanner(strings.NewReader("MemFree: 1 kB\n"))); n != 0 {
		t.Fatalf("no MemTotal: %d", n)
	}
	if hostMemory() <= 0 {
		t.Fatal("this machine's memory could not be read")
	}
}
