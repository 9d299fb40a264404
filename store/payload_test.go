package store_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/internal/directio"
	"github.com/buffdb/buffdbd/store"
)

func TestDB_WritePayload(t *testing.T) {
	db := openDB(t, smallOpts)
	for _, size := range []int{0, 10, 1024, 1025, 3 << 20} {
		data := bytes.Repeat([]byte{byte(size)}, size)
		p, err := db.WritePayload(ctx, bytes.NewReader(data), nil)
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		want := store.Payload{SHA256: sha256.Sum256(data), Size: int64(size)}
		if p.Payload() != want {
			t.Fatalf("size %d: payload %+v, want %+v", size, p.Payload(), want)
		}
		id, err := payloadBlob(db, p, ptr("m"))
		if err != nil {
			t.Fatalf("size %d: StorePayloadBlob: %v", size, err)
		}
		b, err := db.GetBlob(ctx, "", id)
		if err != nil || !bytes.Equal(b.Data, data) || *b.Metadata != "m" {
			t.Fatalf("size %d: GetBlob: %v", size, err)
		}
		if ok, err := db.HasPayload(ctx, want.SHA256); !ok || err != nil {
			t.Fatalf("size %d: HasPayload = %v, %v", size, ok, err)
		}
	}
	// Sizes ≤ 1024 were inlined; 1025 and 3 MiB became files.
	if n := payloadFiles(t, db); n != 2 {
		t.Fatalf("payload files = %d, want 2", n)
	}
	t.Run("ErrCorrupt", func(t *testing.T) {
		for _, size := range []int{5, 5000} {
			wrong := sha256.Sum256([]byte("other"))
			data := bytes.Repeat([]byte("q"), size)
			if _, err := db.WritePayload(ctx, bytes.NewReader(data), &wrong); !errors.Is(err, store.ErrCorrupt) {
				t.Fatalf("err = %v, want ErrCorrupt", err)
			}
			if ok, _ := db.HasPayload(ctx, sha256.Sum256(data)); ok {
				t.Fatal("mismatched payload was kept")
			}
		}
		if n := payloadFiles(t, db); n != 2 {
			t.Fatalf("payload files = %d, want 2 (nothing kept)", n)
		}
		tmp, _ := os.ReadDir(filepath.Join(db.Dir(), "tmp"))
		if len(tmp) != 0 {
			t.Fatalf("temp files left: %d", len(tmp))
		}
	})
	t.Run("WantMatches", func(t *testing.T) {
		data := []byte(strings.Repeat("w", 3000))
		sum := sha256.Sum256(data)
		p, err := db.WritePayload(ctx, bytes.NewReader(data), &sum)
		if err != nil {
			t.Fatal(err)
		}
		p.Release()
	})
	t.Run("Known", func(t *testing.T) {
		// The sum is the caller's word: stored as given, never recomputed (which is what makes a
		// known payload cheaper), so a wrong sum is not caught here.
		for _, size := range []int{7, 4 << 20} {
			data := bytes.Repeat([]byte("k"), size)
			claimed := sha256.Sum256([]byte("not these bytes"))
			if size > 7 {
				claimed = sha256.Sum256(data)
			}
			p, err := db.WriteKnownPayload(ctx, bytes.NewReader(data), claimed)
			if err != nil {
				t.Fatal(err)
			}
			if p.Payload() != (store.Payload{SHA256: claimed, Size: int64(size)}) {
				t.Fatalf("size %d: payload %+v", size, p.Payload())
			}
			id, err := payloadBlob(db, p, nil)
			if err != nil {
				t.Fatal(err)
			}
			if b, err := db.GetBlob(ctx, "", id); err != nil || !bytes.Equal(b.Data, data) {
				t.Fatalf("size %d: GetBlob: %v", size, err)
			}
		}
	})
	t.Run("KnownBytes", func(t *testing.T) {
		// Written from the caller's memory, aligned or not, inline or a file; the caller reuses
		// its buffer right after, so nothing may keep pointing into it.
		buf := directio.AlignedBuffer(4<<20 + 1)
		for _, r := range [][2]int{{0, 9}, {0, 4 << 20}, {1, 3<<20 + 1}} {
			data := buf[r[0]:r[1]]
			for i := range data {
				data[i] = byte(i*7 + r[0] + r[1])
			}
			want := bytes.Clone(data)
			p, err := db.WriteKnownPayloadBytes(ctx, data, sha256.Sum256(want))
			if err != nil {
				t.Fatal(err)
			}
			clear(buf)
			id, err := payloadBlob(db, p, nil)
			if err != nil {
				t.Fatal(err)
			}
			if b, err := db.GetBlob(ctx, "", id); err != nil || !bytes.Equal(b.Data, want) {
				t.Fatalf("bytes [%d:%d]: GetBlob: %v", r[0], r[1], err)
			}
		}
	})
	t.Run("Rewrite", func(t *testing.T) {
		data := bytes.Repeat([]byte("r"), 9000)
		sum := sha256.Sum256(data)
		p, err := db.WritePayload(ctx, bytes.NewReader(data), &sum)
		if err != nil {
			t.Fatal(err)
		}
		p.Release()
		var path string
		filepath.WalkDir(filepath.Join(db.Dir(), "payloads"), func(pth string, d os.DirEntry, err error) error {
			if err == nil && d.Name() == fmt.Sprintf("%x", sum) {
				path = pth
			}
			return nil
		})
		damaged := bytes.Repeat([]byte("x"), len(data)) // same size: WritePayload keeps it
		if err := os.WriteFile(path, damaged, 0o600); err != nil {
			t.Fatal(err)
		}
		if p, err := db.WritePayload(ctx, bytes.NewReader(data), &sum); err != nil {
			t.Fatal(err)
		} else {
			p.Release()
		}
		if b, _ := os.ReadFile(path); !bytes.Equal(b, damaged) {
			t.Fatal("WritePayload replaced an existing payload file")
		}
		// Wrong bytes are refused and leave the file alone; the right ones replace it.
		if _, err := db.RewritePayload(ctx, bytes.NewReader(damaged), sum); !errors.Is(err, store.ErrCorrupt) {
			t.Fatalf("rewrite with other bytes: %v, want ErrCorrupt", err)
		}
		p, err = db.RewritePayload(ctx, bytes.NewReader(data), sum)
		if err != nil {
			t.Fatal(err)
		}
		p.Release()
		if b, _ := os.ReadFile(path); !bytes.Equal(b, data) {
			t.Fatal("RewritePayload left the damaged file")
		}
	})
	t.Run("UnknownPayload", func(t *testing.T) {
		err := db.Update(ctx, func(tx *store.Tx) error {
			_, err := tx.StorePayloadBlob(store.Payload{SHA256: sha256.Sum256([]byte("nope")), Size: 4}, nil)
			return err
		})
		if !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
	})
	t.Run("HasPayloadMissing", func(t *testing.T) {
		if ok, err := db.HasPayload(ctx, sha256.Sum256([]byte("never"))); ok || err != nil {
			t.Fatalf("HasPayload = %v, %v", ok, err)
		}
	})
}

func TestDB_CollectGarbage(t *testing.T) {
	dir := t.TempDir()
	db := openAt(t, dir, smallOpts)
	data := bytes.Repeat([]byte("pinned"), 1000)
	p, err := db.WritePayload(ctx, bytes.NewReader(data), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("PendingIsKept", func(t *testing.T) {
		res, err := db.CollectGarbage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if res.Files != 0 || payloadFiles(t, db) != 1 {
			t.Fatalf("GC removed a pinned payload: %+v", res)
		}
	})
	t.Run("ReleasedOrphanIsRemoved", func(t *testing.T) {
		p.Release()
		res, err := db.CollectGarbage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if res.Files != 1 || res.Bytes != int64(len(data)) || payloadFiles(t, db) != 0 {
			t.Fatalf("GC = %+v, files left %d", res, payloadFiles(t, db))
		}
	})
	t.Run("AtOpen", func(t *testing.T) {
		// Simulate a crash: a payload file never committed, and a temp file mid-write.
		p, _ := db.WritePayload(ctx, bytes.NewReader(bytes.Repeat([]byte("orphan"), 1000)), nil)
		_ = p // never released nor committed: the process "dies"
		db.Close()
		os.WriteFile(filepath.Join(dir, "tmp", "payload-123"), []byte("partial"), 0o600)
		db = openAt(t, dir, smallOpts)
		if n := payloadFiles(t, db); n != 0 {
			t.Fatalf("orphan survived Open: %d files", n)
		}
		if tmp, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmp) != 0 {
			t.Fatalf("temp files survived Open: %d", len(tmp))
		}
	})
}

func TestOpen_Locked(t *testing.T) {
	dir := t.TempDir()
	openAt(t, dir, store.Options{})
	if _, err := store.Open(ctx, dir, store.Options{}); !errors.Is(err, store.ErrLocked) {
		t.Fatalf("second Open err = %v, want ErrLocked", err)
	}
}

func TestDB_Closed(t *testing.T) {
	db := openDB(t, store.Options{})
	db.Close()
	if err := db.Set(ctx, "", "k", "v"); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Set after Close: %v", err)
	}
	if _, err := db.Get(ctx, "", "k"); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
	if _, err := db.NewWriter().Set("", "k", "v").Wait(ctx); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Writer.Set after Close: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestDB_Janitor(t *testing.T) {
	db := openDB(t, store.Options{InlineMax: 16, GCInterval: 10 * time.Millisecond})
	p, err := db.WritePayload(ctx, bytes.NewReader(make([]byte, 100)), nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Release() // abandoned: never referenced
	for payloadFiles(t, db) != 0 {
		time.Sleep(5 * time.Millisecond) // the janitor removes it; the test times out if it never does
	}
}

// A payload stored and deleted within one transaction is unlinked at commit, not left for GC.
func TestDB_StoreDeleteSameTx(t *testing.T) {
	db := openDB(t, smallOpts)
	err := db.Update(ctx, func(tx *store.Tx) error {
		id, err := tx.StoreBlob(make([]byte, 5000), nil)
		if err != nil {
			return err
		}
		return tx.DeleteBlob(id)
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := payloadFiles(t, db); n != 0 {
		t.Fatalf("Update: %d payload files left, want 0", n)
	}
	tx, _ := db.Begin(ctx, false, 0)
	id, err := db.StoreBlob(ctx, tx, make([]byte, 6000), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteBlob(ctx, tx, id); err != nil {
		t.Fatal(err)
	}
	if err := db.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if n := payloadFiles(t, db); n != 0 {
		t.Fatalf("client tx: %d payload files left, want 0", n)
	}
}

type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, errors.New("connection reset")
	}
	k := min(len(p), r.n)
	r.n -= k
	return k, nil
}

// A stream that breaks or is cancelled mid-way keeps nothing and leaves no temp file.
func TestDB_WritePayloadInterrupted(t *testing.T) {
	db := openDB(t, smallOpts)
	if _, err := db.WritePayload(ctx, &failingReader{n: 3 << 20}, nil); err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("err = %v, want the reader's error", err)
	}
	c, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := db.WritePayload(c, bytes.NewReader(make([]byte, 3<<20)), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled err = %v", err)
	}
	if tmp, _ := os.ReadDir(filepath.Join(db.Dir(), "tmp")); len(tmp) != 0 {
		t.Fatalf("%d temp files left", len(tmp))
	}
	if n := payloadFiles(t, db); n != 0 {
		t.Fatalf("%d payload files kept", n)
	}
}

// TestOpen_RemovesRepairScratch: a crash between a repair's link and its rename leaves
// <sha>.replace beside the payload; opening the store removes it and keeps the payload.
func TestOpen_RemovesRepairScratch(t *testing.T) {
	dir := t.TempDir()
	db := openAt(t, dir, smallOpts)
	data := bytes.Repeat([]byte("r"), 5000)
	id, err := db.StoreBlob(ctx, "", data, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	sum := sha256.Sum256(data)
	final := filepath.Join(dir, "payloads", hexs(sum[:1]), hexs(sum[:]))
	scratch := final + ".replace"
	other := filepath.Join(dir, "payloads", hexs(sum[:1]), "notes.txt") // not the store's: left alone
	os.WriteFile(scratch, data, 0o600)
	os.WriteFile(other, []byte("x"), 0o600)
	db = openAt(t, dir, smallOpts)
	if _, err := os.Stat(scratch); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("repair scratch after open: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("a file that is not the store's was removed: %v", err)
	}
	if b, err := db.GetBlob(ctx, "", id); err != nil || !bytes.Equal(b.Data, data) {
		t.Fatalf("the payload after open: %v", err)
	}
}
