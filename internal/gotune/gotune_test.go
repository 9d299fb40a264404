package gotune

import (
	"math"
	"runtime"
	"runtime/debug"
	"testing"
)

func TestLimitMemoryAndRelaxGC(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Setenv("GOMEMLIMIT", "")
	t.Setenv("GOGC", "")
	debug.SetMemoryLimit(math.MaxInt64)
	LimitMemory(DefaultMemoryLimit)
	if got := debug.SetMemoryLimit(-1); got != DefaultMemoryLimit {
		t.Fatalf("soft memory limit %d, want %d", got, DefaultMemoryLimit)
	}
	RelaxGC(DefaultMemoryLimit)
	if got := debug.SetGCPercent(100); got != DaemonGCPercent {
		t.Fatalf("GOGC %d under a memory limit, want %d", got, DaemonGCPercent)
	}
	LimitMemory(0) // disabled: leaves the limit and GOGC alone
	RelaxGC(0)
	if got := debug.SetMemoryLimit(-1); got != DefaultMemoryLimit {
		t.Fatalf("memory_limit 0 changed the limit to %d", got)
	}
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("memory_limit 0 changed GOGC to %d", got)
	}
	t.Setenv("GOMEMLIMIT", "1GiB") // the runtime applied it at start; the setting must not override it
	t.Setenv("GOGC", "150")
	debug.SetMemoryLimit(1 << 30)
	LimitMemory(32 << 20)
	RelaxGC(32 << 20)
	if got := debug.SetMemoryLimit(-1); got != 1<<30 {
		t.Fatalf("memory_limit overrode GOMEMLIMIT: %d", got)
	}
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("RelaxGC overrode GOGC: %d", got)
	}
}

func TestRaiseProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(3))
	t.Setenv("GOMAXPROCS", "")
	RaiseProcs()
	if got := runtime.GOMAXPROCS(0); got != 6 {
		t.Fatalf("GOMAXPROCS %d after raising 3, want 6", got)
	}
	t.Setenv("GOMAXPROCS", "3")
	RaiseProcs()
	if got := runtime.GOMAXPROCS(0); got != 6 {
		t.Fatalf("RaiseProcs changed GOMAXPROCS %d although the environment sets it", got)
	}
}
