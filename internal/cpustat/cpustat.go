// Package cpustat samples machine-wide CPU use for the benchmarks, which report how many cores a
// transfer kept busy: on a small machine where client, server and kernel share the cores, a rate
// reached with all of them busy is CPU-bound, and core-seconds per GB say what each byte costs.
package cpustat

import (
	"os"
	"runtime"
	"strconv"
	"strings"
)

// Sample is the machine's cumulative CPU time (in clock ticks) from /proc/stat; zero where that is
// unavailable.
type Sample struct{ busy, total float64 }

// Read takes a sample.
func Read() Sample {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return Sample{}
	}
	line, _, _ := strings.Cut(string(b), "\n") // "cpu  user nice system idle iowait irq softirq steal ..."
	fields := strings.Fields(line)
	if len(fields) < 5 || fields[0] != "cpu" {
		return Sample{}
	}
	var s Sample
	for i, f := range fields[1:] {
		v, _ := strconv.ParseFloat(f, 64)
		s.total += v
		if i != 3 && i != 4 { // idle, iowait
			s.busy += v
		}
	}
	return s
}

// CoresSince is how many cores were busy on average since s (0 when unknown).
func (s Sample) CoresSince() float64 {
	now := Read()
	if s.total == 0 || now.total <= s.total {
		return 0
	}
	return (now.busy - s.busy) / (now.total - s.total) * float64(runtime.NumCPU())
}
