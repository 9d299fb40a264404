package store_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/store"
)

// BenchmarkWriter_Set measures pipelined small KV writes on one Writer (one client stream) with
// durable group commit (DurabilitySync: every commit fsyncs). Target: ≥100k ops/s.
func BenchmarkWriter_Set(b *testing.B) {
	for _, d := range []store.Durability{store.DurabilitySync, store.DurabilityProcess} {
		b.Run(d.String(), func(b *testing.B) {
			db := openDB(b, store.Options{Durability: d})
			w := db.NewWriter()
			value := "v-0123456789abcdef0123456789abcdef" // a typical small value
			b.ResetTimer()
			var last *store.Future
			for i := 0; i < b.N; i++ {
				last = w.Set("", fmt.Sprintf("key/%09d", i), value)
			}
			if _, err := last.Wait(ctx); err != nil {
				b.Fatal(err)
			}
			w.Close()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}

// BenchmarkDB_Get measures autocommit point reads.
func BenchmarkDB_Get(b *testing.B) {
	db := openDB(b, store.Options{})
	w := db.NewWriter()
	const keys = 10000
	for i := 0; i < keys; i++ {
		w.Set("", fmt.Sprintf("key/%09d", i), "value")
	}
	w.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := db.Get(ctx, "", fmt.Sprintf("key/%09d", i%keys)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkDB_StoreBlob1MiB stores distinct 1 MiB blobs and, in the same run, writes the same bytes
// to plain files with one fsync each: "x-raw" is the store's throughput as a fraction of that raw
// write (target ≥0.5). The two alternate in blocks of 16 so both see the same load on a shared
// machine. "pipelined" submits through a Writer, as the gRPC Store stream does.
func BenchmarkDB_StoreBlob1MiB(b *testing.B) {
	const size, block = 1 << 20, 16
	for _, mode := range []string{"sequential", "pipelined"} {
		b.Run(mode, func(b *testing.B) {
			db := openDB(b, store.Options{})
			data := make([]byte, size)
			for i := range data {
				data[i] = byte(i * 31)
			}
			base := uint64(time.Now().UnixNano())
			distinct := func(i int) []byte { // distinct content, so dedupe does not skip the write
				d := append([]byte(nil), data...)
				binary.LittleEndian.PutUint64(d, uint64(i)+base)
				return d
			}
			rawDir := b.TempDir()
			var raw, stored time.Duration
			b.SetBytes(size)
			b.ResetTimer()
			for done := 0; done < b.N; {
				n := min(block, b.N-done)
				bufs := make([][]byte, n)
				for j := range bufs {
					bufs[j] = distinct(done + j)
				}
				start := time.Now()
				for j := 0; j < n; j++ {
					f, err := os.Create(filepath.Join(rawDir, fmt.Sprint(done+j)))
					if err != nil {
						b.Fatal(err)
					}
					f.Write(bufs[j])
					if err := f.Sync(); err != nil {
						b.Fatal(err)
					}
					f.Close()
				}
				raw += time.Since(start)
				start = time.Now()
				if mode == "sequential" {
					for j := 0; j < n; j++ {
						if _, err := db.StoreBlob(ctx, "", bufs[j], nil); err != nil {
							b.Fatal(err)
						}
					}
				} else {
					w := db.NewWriter()
					var last *store.Future
					for j := 0; j < n; j++ {
						last = w.StoreBlob("", bufs[j], nil)
					}
					if _, err := last.Wait(ctx); err != nil {
						b.Fatal(err)
					}
					w.Close()
				}
				stored += time.Since(start)
				done += n
			}
			b.StopTimer()
			mb := float64(b.N) * size / 1e6
			b.ReportMetric(mb/raw.Seconds(), "raw-MB/s")
			b.ReportMetric(mb/stored.Seconds(), "store-MB/s")
			b.ReportMetric(raw.Seconds()/stored.Seconds(), "x-raw")
		})
	}
}

// BenchmarkDB_WritePayload streams 64 MiB payloads (a registry chunk stream) and, alternating with
// it in the same run, writes the same bytes to a plain file with one fsync ("x-raw" = store/raw).
func BenchmarkDB_WritePayload(b *testing.B) {
	const size = 64 << 20
	db := openDB(b, store.Options{})
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 13)
	}
	rawDir := b.TempDir()
	base := uint64(time.Now().UnixNano())
	var raw, stored time.Duration
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		binary.LittleEndian.PutUint64(data, uint64(i)+base)
		start := time.Now()
		f, err := os.Create(filepath.Join(rawDir, fmt.Sprint(i)))
		if err != nil {
			b.Fatal(err)
		}
		f.Write(data)
		f.Sync()
		f.Close()
		raw += time.Since(start)
		start = time.Now()
		p, err := db.WritePayload(ctx, bytes.NewReader(data), nil)
		if err != nil {
			b.Fatal(err)
		}
		stored += time.Since(start)
		p.Release()
	}
	mb := float64(b.N) * size / 1e6
	b.ReportMetric(mb/raw.Seconds(), "raw-MB/s")
	b.ReportMetric(mb/stored.Seconds(), "store-MB/s")
	b.ReportMetric(raw.Seconds()/stored.Seconds(), "x-raw")
}
