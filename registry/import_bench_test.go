package registry_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/trace"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/internal/cpustat"
	"github.com/buffdb/buffdbd/internal/directio"
	"github.com/buffdb/buffdbd/registry"
)

// BenchmarkService_Import imports one file of $BUFFDBD_BENCH_IMPORT_MIB MiB (default 256) the way
// the Hugging Face fetcher does (read with direct I/O, file hash vouched for by the download), and
// reports MB/s next to sha256 of the same bytes measured in the same run: an import must hash every
// chunk, so one sha256 pass is its floor on one core.
func BenchmarkService_Import(b *testing.B) {
	mib := 256
	if v := os.Getenv("BUFFDBD_BENCH_IMPORT_MIB"); v != "" {
		if _, err := fmt.Sscan(v, &mib); err != nil {
			b.Fatal(err)
		}
	}
	size := int64(mib) << 20
	dir := b.TempDir()
	path := filepath.Join(dir, "model.bin")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	r := rand.NewChaCha8([32]byte{7})
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), r, size); err != nil {
		b.Fatal(err)
	}
	if err := f.Sync(); err != nil { // its writeback must not run into the measurements
		b.Fatal(err)
	}
	f.Close()
	var sum [32]byte
	h.Sum(sum[:0])

	t0 := time.Now()
	in, _ := os.Open(path)
	// 1 MiB reads (a bare io.Copy would use the File's WriteTo, reading 32 KiB at a time).
	io.CopyBuffer(sha256.New(), struct{ io.Reader }{in}, make([]byte, 1<<20))
	in.Close()
	shaRate := float64(size) / 1e6 / time.Since(t0).Seconds()

	for i := 0; b.Loop(); i++ {
		s := openService(b, registry.Options{})
		if p := os.Getenv("BUFFDBD_BENCH_TRACE"); p != "" {
			tf, _ := os.Create(p)
			trace.Start(tf)
		}
		t0, c0 := time.Now(), cpustat.Read()
		err := s.Import(context.Background(), registry.ImportRequest{Info: registry.ModelInfo{Name: "bench", Version: fmt.Sprint(i)},
			Files: []registry.ImportFile{{Path: "model.bin", Size: size, SHA256: sum, Verified: true,
				Open: func() (io.ReadCloser, error) { return directio.Open(path) }}}})
		rate := float64(size) / 1e6 / time.Since(t0).Seconds()
		cores := c0.CoresSince()
		trace.Stop()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(rate, "import_MB/s")
		b.ReportMetric(rate/shaRate, "import/sha256")
		b.ReportMetric(cores, "import_cores")
	}
	b.ReportMetric(shaRate, "sha256_MB/s")
}
