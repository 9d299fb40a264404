package store_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/buffdb/buffdbd/store"
)

func TestWriter_Ordering(t *testing.T) {
	db := openDB(t, smallOpts)
	w := db.NewWriter()
	var futs []*store.Future
	for i := 0; i < 1000; i++ {
		futs = append(futs, w.Set("", "k", fmt.Sprint(i)))
	}
	blob := w.StoreBlob("", make([]byte, 5000), nil)
	w.Close()
	for i, f := range futs {
		select {
		case <-f.Done():
		default:
			t.Fatalf("future %d not done after Close", i)
		}
		if _, err := f.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := db.Get(ctx, "", "k"); got != "999" {
		t.Fatalf("last write lost ordering: k = %q", got)
	}
	if id, err := blob.Wait(ctx); err != nil || id == 0 {
		t.Fatalf("StoreBlob future = %d, %v", id, err)
	}
}

func TestWriter_AbortAfterFailure(t *testing.T) {
	db := openDB(t, store.Options{})
	w := db.NewWriter()
	f1 := w.Set("", "a", "1")
	f2 := w.Delete("", "missing") // fails: ErrNotFound
	f3 := w.Set("", "b", "2")     // not applied: ErrAborted
	f4 := w.DeleteBlob("", 1)
	w.Close()
	if _, err := f1.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f2.Wait(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("f2 err = %v, want ErrNotFound", err)
	}
	for _, f := range []*store.Future{f3, f4} {
		if _, err := f.Wait(ctx); !errors.Is(err, store.ErrAborted) {
			t.Fatalf("err = %v, want ErrAborted", err)
		}
	}
	if _, err := db.Get(ctx, "", "b"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("aborted write was applied: %v", err)
	}
	// A new Writer is unaffected.
	if _, err := db.NewWriter().Set("", "b", "2").Wait(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestWriter_Blobs(t *testing.T) {
	db := openDB(t, smallOpts)
	w := db.NewWriter()
	f := w.StoreBlob("", []byte("x"), ptr("m"))
	id, err := f.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := w.UpdateBlob("", id, store.BlobUpdate{Data: make([]byte, 3000)}).Wait(ctx); err != nil || got != id {
		t.Fatalf("UpdateBlob = %d, %v", got, err)
	}
	if got, err := w.DeleteBlob("", id).Wait(ctx); err != nil || got != id {
		t.Fatalf("DeleteBlob = %d, %v", got, err)
	}
	w.Close()
	if n := payloadFiles(t, db); n != 0 {
		t.Fatalf("payload files = %d after delete, want 0", n)
	}
}

// TestDB_GroupCommitConcurrent runs many writers at once; every acknowledged write must be visible.
func TestDB_GroupCommitConcurrent(t *testing.T) {
	db := openDB(t, smallOpts)
	const writers, per = 8, 300
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for g := 0; g < writers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := db.NewWriter()
			var futs []*store.Future
			for i := 0; i < per; i++ {
				futs = append(futs, w.Set("", fmt.Sprintf("g%d/%d", g, i), fmt.Sprint(i)))
				if i%50 == 0 {
					futs = append(futs, w.StoreBlob("", make([]byte, 2000+g), nil))
				}
			}
			// Plain DB writes interleave with the pipelined ones.
			if err := db.Set(ctx, "", fmt.Sprintf("direct%d", g), "x"); err != nil {
				errs <- err
			}
			for _, f := range futs {
				if _, err := f.Wait(ctx); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st, err := db.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Keys != writers*per+writers {
		t.Fatalf("keys = %d, want %d", st.Keys, writers*per+writers)
	}
	if st.Blobs != writers*per/50 || st.PayloadFiles != writers {
		t.Fatalf("blobs = %d (want %d), payload files = %d (want %d)", st.Blobs, writers*per/50, st.PayloadFiles, writers)
	}
}

// Writes carrying a txID run inside the transaction, in order with the Writer's other writes, and an
// earlier failure aborts them too.
func TestWriter_InTx(t *testing.T) {
	db := openDB(t, smallOpts)
	id0, _ := db.StoreBlob(ctx, "", []byte("x"), nil)
	tx, err := db.Begin(ctx, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	w := db.NewWriter()
	futs := []*store.Future{
		w.Set(tx, "a", "1"),
		w.Delete(tx, "a"),
		w.StoreBlob(tx, make([]byte, 3000), ptr("m")),
		w.UpdateBlob(tx, id0, store.BlobUpdate{Data: make([]byte, 2500)}),
		w.DeleteBlob(tx, id0),
	}
	for i, f := range futs {
		if _, err := f.Wait(ctx); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	newID, _ := futs[2].Wait(ctx)
	if _, err := db.GetBlob(ctx, "", newID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("tx write visible before commit: %v", err)
	}
	if err := db.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if b, err := db.GetBlob(ctx, "", newID); err != nil || len(b.Data) != 3000 {
		t.Fatalf("after commit: %v", err)
	}
	if _, err := db.GetBlob(ctx, "", id0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted in tx, still there: %v", err)
	}
	// Unknown transaction: the write fails and later ones abort.
	f1 := w.Set("no-such-tx", "k", "v")
	f2 := w.Set("", "k", "v")
	if _, err := f1.Wait(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown tx err = %v", err)
	}
	if _, err := f2.Wait(ctx); !errors.Is(err, store.ErrAborted) {
		t.Fatalf("after failure err = %v, want ErrAborted", err)
	}
	w.Close()
}

// Large blobs are prepared concurrently but still commit in submission order; a failure among them
// aborts the rest.
func TestWriter_PipelinedBlobsOrder(t *testing.T) {
	db := openDB(t, smallOpts)
	w := db.NewWriter()
	var futs []*store.Future
	for i := 0; i < 20; i++ {
		data := make([]byte, 2000+i*500)
		data[0] = byte(i)
		futs = append(futs, w.StoreBlob("", data, nil))
		futs = append(futs, w.Set("", "after", fmt.Sprint(i))) // small writes interleave
	}
	bad := w.UpdateBlob("", 99999, store.BlobUpdate{Data: make([]byte, 5000)})
	late := w.StoreBlob("", make([]byte, 5000), nil)
	w.Close()
	var last uint64
	for i := 0; i < len(futs); i += 2 {
		id, err := futs[i].Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if id <= last {
			t.Fatalf("blob %d got id %d after %d: out of order", i/2, id, last)
		}
		last = id
	}
	if v, _ := db.Get(ctx, "", "after"); v != "19" {
		t.Fatalf("after = %q, want 19", v)
	}
	if _, err := bad.Wait(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("bad update err = %v", err)
	}
	if _, err := late.Wait(ctx); !errors.Is(err, store.ErrAborted) {
		t.Fatalf("late err = %v, want ErrAborted", err)
	}
	db.CollectGarbage(ctx)
	if st, _ := db.Stats(ctx); st.PayloadFiles != 20 {
		t.Fatalf("payload files = %d, want 20 (aborted blob's file collected)", st.PayloadFiles)
	}
}

func TestWriter_Close(t *testing.T) {
	db := openDB(t, smallOpts)
	w := db.NewWriter()
	w.StoreBlob("", make([]byte, 5000), nil)
	w.Close()
	for _, f := range []*store.Future{w.Set("", "k", "v"), w.StoreBlob("", make([]byte, 5000), nil), w.Set("tx", "k", "v")} {
		if _, err := f.Wait(ctx); !errors.Is(err, store.ErrClosed) {
			t.Fatalf("write after Close err = %v, want ErrClosed", err)
		}
	}
	w.Close() // idempotent
}
