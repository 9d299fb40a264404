package store_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/store"
)

// walSize is the size of dir's write-ahead log.
func walSize(tb testing.TB, dir string) int64 {
	tb.Helper()
	fi, err := os.Stat(filepath.Join(dir, "buffdb.sqlite-wal"))
	if err != nil {
		tb.Fatal(err)
	}
	return fi.Size()
}

// writeKV writes n new values of size bytes and waits until they are committed.
func writeKV(tb testing.TB, db *store.DB, prefix string, n, size int) {
	tb.Helper()
	w := db.NewWriter()
	defer w.Close()
	var last *store.Future
	val := strings.Repeat("v", size)
	for i := 0; i < n; i++ {
		last = w.Set("", fmt.Sprintf("%s%06d", prefix, i), val)
	}
	if _, err := last.Wait(ctx); err != nil {
		tb.Fatal(err)
	}
}

func TestDB_StalledRead(t *testing.T) {
	// A streaming read whose consumer stops taking rows pins its snapshot, and SQLite cannot
	// checkpoint the WAL past it: every write meanwhile grows the WAL, without bound. Past
	// StalledReadWALBytes the read ends, and the WAL is reused again.
	store.SetStallCheckInterval(t, 10*time.Millisecond)
	const limit = 1 << 20
	reads := map[string]func(db *store.DB, fn func() error) error{
		"Query": func(db *store.DB, fn func() error) error {
			return db.Query(ctx, "SELECT key FROM kv", func([]string, []any) error { return fn() })
		},
		"FindRange": func(db *store.DB, fn func() error) error {
			return db.FindRange(ctx, "", "whole", store.Range{}, func(store.Hit) error { return fn() })
		},
		"Find": func(db *store.DB, fn func() error) error {
			return db.Find(ctx, "", "whole", "vvvvvvvv", 0, nil, func(store.Hit) error { return fn() })
		},
	}
	for name, read := range reads {
		t.Run(name+"/ErrAborted", func(t *testing.T) {
			if raceDetector {
				// ~100 s each under -race (SQLite's translated C is instrumented on every
				// write); the reader goroutine's hand-over runs under -race in TestDB_Query.
				t.Skip("writes megabytes of WAL: too slow under the race detector")
			}
			dir := t.TempDir()
			db := openAt(t, dir, store.Options{Durability: store.DurabilityProcess, StalledReadWALBytes: limit})
			if _, err := db.CreateIndex(ctx, store.IndexDef{Name: "whole", Type: store.IndexBTree, KeyPrefix: "seed"}); err != nil {
				t.Fatal(err)
			}
			// More rows than the read takes ahead, so it is still reading when its consumer stalls.
			writeKV(t, db, "seed", 2000, 8)
			ended := make(chan struct{})
			store.OnStalledRead(t, func() { close(ended) })
			release := make(chan struct{})
			got := 0
			done := make(chan error, 1)
			go func() {
				done <- read(db, func() error {
					if got++; got == 1 {
						<-release
					}
					return nil
				})
			}()
			// Write until the WAL passes the limit; the read then ends while its consumer still
			// waits, so the WAL is checkpointed and reused instead of growing on.
			for walSize(t, dir) <= limit {
				writeKV(t, db, "w", 1000, 1024)
			}
			select {
			case <-ended:
			case <-time.After(time.Minute): // a hang guard, not a timing assertion
				t.Fatal("the stalled read was not ended")
			}
			peak := walSize(t, dir)
			// Small transactions (50 KiB), so the WAL can be reset often (a big group commit
			// fills it whole): ~peak of new values, at least 3×peak more of WAL if it cannot be
			// reused. Batches of 50 rather than single Sets keep this quick under -race.
			for i := int64(0); i < peak>>10; i += 50 {
				writeKV(t, db, fmt.Sprintf("x%06d-", i), 50, 1024)
			}
			if after := walSize(t, dir); after > 2*peak {
				t.Errorf("WAL grew from %d to %d bytes after the stalled read ended", peak, after)
			}
			close(release)
			err := <-done
			if !errors.Is(err, store.ErrAborted) || !strings.Contains(err.Error(), "store.stalled_read_wal_bytes") {
				t.Fatalf("read err = %v, want ErrAborted naming the limit", err)
			}
			if got == 0 || got >= 2000 {
				t.Fatalf("consumer got %d rows, want those handed over before the read ended", got)
			}
		})
	}
	t.Run("SlowConsumerIdleStore", func(t *testing.T) {
		// A consumer that is slow while nothing is written costs nothing: never cut off.
		db := openDB(t, store.Options{StalledReadWALBytes: limit})
		writeKV(t, db, "k", 600, 8)
		n := 0
		err := db.Query(ctx, "SELECT key FROM kv", func([]string, []any) error {
			if n++; n%200 == 1 {
				time.Sleep(30 * time.Millisecond) // several WAL checks while the read waits
			}
			return nil
		})
		if err != nil || n != 600 {
			t.Fatalf("slow consumer: %d rows, %v", n, err)
		}
	})
	t.Run("SlowConsumerIdleStoreLargeWAL", func(t *testing.T) {
		// A WAL left larger than the limit by earlier writes (a big transaction, an earlier
		// stalled read) while no read was open is not this read's doing: on an idle store it
		// does not grow, so a slow consumer is not cut off.
		dir := t.TempDir()
		db := openAt(t, dir, store.Options{Durability: store.DurabilityProcess, StalledReadWALBytes: limit})
		for walSize(t, dir) <= limit {
			writeKV(t, db, "big", 4000, 1024)
		}
		n := 0
		err := db.Query(ctx, "SELECT key FROM kv", func([]string, []any) error {
			if n++; n%1000 == 1 {
				time.Sleep(30 * time.Millisecond) // several WAL checks while the read waits
			}
			return nil
		})
		if err != nil || n == 0 {
			t.Fatalf("slow consumer on an idle store with a %d-byte WAL: %d rows, %v", walSize(t, dir), n, err)
		}
	})
}
