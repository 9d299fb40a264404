package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/store"
)

func TestDB_BeginCommit(t *testing.T) {
	db := openDB(t, smallOpts)
	db.Set(ctx, "", "k", "old")
	tx, err := db.Begin(ctx, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(tx) < 32 {
		t.Fatalf("tx id %q too short to be unguessable", tx)
	}
	if err := db.Set(ctx, tx, "k", "new"); err != nil {
		t.Fatal(err)
	}
	blobID, err := db.StoreBlob(ctx, tx, make([]byte, 4000), ptr("in tx"))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("SeesOwnWrites", func(t *testing.T) {
		if v, err := db.Get(ctx, tx, "k"); err != nil || v != "new" {
			t.Fatalf("Get in tx = %q, %v", v, err)
		}
		if b, err := db.GetBlob(ctx, tx, blobID); err != nil || len(b.Data) != 4000 {
			t.Fatalf("GetBlob in tx: %v", err)
		}
	})
	t.Run("Isolation", func(t *testing.T) {
		if v, _ := db.Get(ctx, "", "k"); v != "old" {
			t.Fatalf("outside tx k = %q, want old", v)
		}
		if _, err := db.GetBlob(ctx, "", blobID); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("uncommitted blob visible: %v", err)
		}
	})
	t.Run("AutocommitWaitsForTx", func(t *testing.T) {
		done := make(chan error, 1)
		go func() { done <- db.Set(ctx, "", "auto", "1") }()
		select {
		case err := <-done:
			t.Fatalf("autocommit write finished while a write tx was open: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if err := db.Commit(ctx, tx); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
	if v, _ := db.Get(ctx, "", "k"); v != "new" {
		t.Fatalf("after commit k = %q", v)
	}
	if b, err := db.GetBlob(ctx, "", blobID); err != nil || *b.Metadata != "in tx" {
		t.Fatalf("after commit blob: %v", err)
	}
	t.Run("EndedIsNotFound", func(t *testing.T) {
		for _, err := range []error{db.Commit(ctx, tx), db.Rollback(ctx, tx), db.Set(ctx, tx, "a", "b")} {
			if !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("err = %v, want ErrNotFound", err)
			}
		}
		if _, err := db.Get(ctx, "nonsense", "k"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown tx err = %v", err)
		}
	})
}

func TestDB_Rollback(t *testing.T) {
	db := openDB(t, smallOpts)
	id0, _ := db.StoreBlob(ctx, "", []byte("keep"), nil)
	tx, _ := db.Begin(ctx, false, 0)
	db.Set(ctx, tx, "k", "v")
	db.DeleteBlob(ctx, tx, id0)
	db.StoreBlob(ctx, tx, make([]byte, 3000), nil)
	if err := db.Rollback(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Get(ctx, "", "k"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("rolled-back Set visible")
	}
	if _, err := db.GetBlob(ctx, "", id0); err != nil {
		t.Fatalf("rolled-back delete applied: %v", err)
	}
	db.CollectGarbage(ctx)
	if n := payloadFiles(t, db); n != 0 {
		t.Fatalf("rolled-back blob's payload kept: %d files", n)
	}
}

func TestDB_ReadOnlyTx(t *testing.T) {
	db := openDB(t, store.Options{})
	db.Set(ctx, "", "k", "v1")
	tx, err := db.Begin(ctx, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{
		db.Set(ctx, tx, "k", "x"), db.Delete(ctx, tx, "k"),
		func() error { _, err := db.StoreBlob(ctx, tx, nil, nil); return err }(),
		db.DeleteBlob(ctx, tx, 1),
	} {
		if !errors.Is(err, store.ErrReadOnly) {
			t.Fatalf("write in read-only tx err = %v, want ErrReadOnly", err)
		}
	}
	// A read-only tx does not block writers, and keeps its snapshot.
	if err := db.Set(ctx, "", "k", "v2"); err != nil {
		t.Fatal(err)
	}
	if v, _ := db.Get(ctx, tx, "k"); v != "v1" {
		t.Fatalf("snapshot read = %q, want v1", v)
	}
	if err := db.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
}

func TestDB_TxTimeout(t *testing.T) {
	db := openDB(t, store.Options{})
	tx, _ := db.Begin(ctx, false, 30*time.Millisecond)
	db.Set(ctx, tx, "k", "v")
	// The janitor rolls it back; waiting for the autocommit write proves the write lock was freed.
	if err := db.Set(ctx, "", "other", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Get(ctx, "", "k"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("expired tx's write visible")
	}
	err := db.Commit(ctx, tx)
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("commit of expired tx err = %v, want ErrNotFound", err)
	}
}

func TestDB_BeginLimits(t *testing.T) {
	db := openDB(t, store.Options{MaxOpenTx: 2})
	a, _ := db.Begin(ctx, true, 0)
	b, _ := db.Begin(ctx, true, 0)
	if _, err := db.Begin(ctx, true, 0); !errors.Is(err, store.ErrTooLarge) {
		t.Fatalf("third Begin err = %v, want ErrTooLarge", err)
	}
	db.Rollback(ctx, a)
	db.Rollback(ctx, b)
	if _, err := db.Begin(ctx, false, -time.Second); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("negative timeout err = %v", err)
	}
	t.Run("SecondWriterWaitsForCtx", func(t *testing.T) {
		w, err := db.Begin(ctx, false, 0)
		if err != nil {
			t.Fatal(err)
		}
		c, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		defer cancel()
		if _, err := db.Begin(c, false, 0); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("second write Begin err = %v, want DeadlineExceeded", err)
		}
		db.Rollback(ctx, w)
	})
	t.Run("CloseRollsBack", func(t *testing.T) {
		dir := t.TempDir()
		db := openAt(t, dir, store.Options{})
		tx, _ := db.Begin(ctx, false, 0)
		db.Set(ctx, tx, "k", "v")
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		db = openAt(t, dir, store.Options{})
		if _, err := db.Get(ctx, "", "k"); !errors.Is(err, store.ErrNotFound) {
			t.Fatal("open tx's write survived Close")
		}
	})
}

// Close must not wait for an open write transaction's timeout while writes queue behind it.
func TestDB_CloseWithWriteTxAndQueuedWrites(t *testing.T) {
	db := openDB(t, store.Options{})
	tx, _ := db.Begin(ctx, false, time.Hour)
	db.Set(ctx, tx, "in-tx", "x")
	done := make(chan error, 1)
	go func() { done <- db.Set(ctx, "", "queued", "y") }()
	time.Sleep(20 * time.Millisecond) // let the Set queue behind the transaction
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil && !errors.Is(err, store.ErrClosed) {
		t.Fatalf("queued Set: %v", err)
	}
}

// TestDB_TxTimeoutStalledFind: a Find in a transaction whose consumer stops reading (a gRPC client
// that does not read its stream) must not keep the transaction past its deadline: a read-write one
// holds the only writer, and every other write would wait for as long as the client stalls.
func TestDB_TxTimeoutStalledFind(t *testing.T) {
	db := openDB(t, smallOpts)
	w := db.NewWriter()
	for i := range 500 { // more rows than any hand-over buffer
		w.Set("", fmt.Sprintf("k%03d", i), "v")
	}
	w.Close()
	if _, err := db.CreateIndex(ctx, store.IndexDef{Name: "v"}); err != nil {
		t.Fatal(err)
	}
	for _, readOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("ReadOnly=%v", readOnly), func(t *testing.T) {
			// Long enough for the Find below to be stalled in its consumer before the deadline
			// on a loaded machine (at 200 ms it sometimes started after the expiry, and then
			// found no transaction at all).
			tx, err := db.Begin(ctx, readOnly, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			release, stalled := make(chan struct{}), make(chan struct{})
			var once sync.Once
			found := make(chan error, 1)
			go func() {
				found <- db.Find(ctx, tx, "v", "v", 0, nil, func(store.Hit) error {
					once.Do(func() { close(stalled) })
					<-release // the stalled consumer
					return nil
				})
			}()
			select {
			case <-stalled:
			case err := <-found:
				t.Fatalf("Find ended before its consumer stalled: %v", err)
			}
			// Safety net only: before the fix this waited for the stalled consumer forever.
			c, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if err := db.Set(c, "", "after", fmt.Sprint(readOnly)); err != nil {
				t.Fatalf("Set while a Find of an expired transaction stalls: %v", err)
			}
			// The janitor rolls the transaction back (for a read-only one nothing else waits for it).
			for !errors.Is(db.Commit(ctx, tx), store.ErrNotFound) {
				time.Sleep(10 * time.Millisecond)
				if c.Err() != nil {
					t.Fatal("transaction never expired while its Find stalled")
				}
			}
			close(release)
			if err := <-found; !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), "expired") {
				t.Fatalf("Find of the expired transaction: %v, want ErrNotFound saying expired", err)
			}
		})
	}
}
