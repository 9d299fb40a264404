package cpustat

import (
	"crypto/sha256"
	"runtime"
	"testing"
	"time"
)

// A goroutine spinning for a while keeps at least part of a core busy; an idle wait does not make
// the figure exceed the machine's cores.
func TestCoresSince(t *testing.T) {
	if Read() == (Sample{}) {
		t.Skip("no /proc/stat")
	}
	s := Read()
	buf := make([]byte, 1<<20)
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); {
		sha256.Sum256(buf)
	}
	c := s.CoresSince()
	if c < 0.3 || c > float64(runtime.NumCPU())+0.01 {
		t.Fatalf("%.2f cores busy while one goroutine hashed, of %d", c, runtime.NumCPU())
	}
}
