// Package gotune is buffdbd's one setting of the Go runtime: how many Ps, the soft memory limit and
// the GC pace. The binary applies it; the benchmarks apply the same, so their figures are the
// binary's. Environment variables the Go runtime reads (GOMAXPROCS, GOMEMLIMIT, GOGC) always win.
package gotune

import (
	"os"
	"runtime"
	"runtime/debug"
)

// DefaultMemoryLimit is memory_limit's default. Transfers allocate a buffer per gRPC message and per
// chunk; at hundreds of MB/s the default GC pacing (collect when the heap doubles) lets that garbage
// push RSS past 100 MiB on a device with little RAM. A soft limit makes the GC collect earlier, at a
// small CPU cost; the live heap of a busy daemon stays well under it.
const DefaultMemoryLimit = 64 << 20

// DaemonGCPercent is the daemon's GOGC under a memory limit (see RelaxGC).
const DaemonGCPercent = 400

// RaiseProcs runs Go code on twice as many Ps as the runtime chose (GOMAXPROCS, which follows the
// CPU count or cgroup quota).
//
// Why: buffdbd's writes block in fsync and O_DIRECT syscalls for milliseconds, many at a time
// (payload files, chunks, downloads). A goroutine in a blocking syscall keeps its P until the
// runtime's monitor takes it back, up to 10 ms later, and meanwhile runnable goroutines (the gRPC
// transport, hashing) wait although cores are idle. Measured on the 2-core benchmark VM: a blob
// Store stream kept 1.1-1.4 cores busy at 450-570 MB/s with 2 Ps, and 1.8-1.9 cores at 650-720 MB/s
// with 4. The extra Ps cost nothing when nothing blocks: there is no more work to run on them.
func RaiseProcs() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(2 * runtime.GOMAXPROCS(0))
	}
}

// LimitMemory sets the soft memory limit to limit bytes (memory_limit; 0 leaves it alone).
func LimitMemory(limit int64) {
	if limit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(limit)
	}
}

// RelaxGC makes the daemon's garbage collector run less often (GOGC 400 instead of 100) when a
// memory limit (limit > 0) bounds the heap anyway: collecting at every doubling of its small live
// heap cost small-request workloads a sixth of their throughput on the 2-core VM (KV Get 95-99k ->
// 105-111k ops/s, Set 162-188k -> 184-203k). CLI transfers keep the default: they gain nothing
// from it, and their RSS would grow to the limit.
func RelaxGC(limit int64) {
	if limit > 0 && os.Getenv("GOGC") == "" {
		debug.SetGCPercent(DaemonGCPercent)
	}
}
