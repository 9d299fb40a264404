package store_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/store"
)

// smallOpts makes payload files appear at 1 KiB so tests stay small.
var smallOpts = store.Options{InlineMax: 1024}

func payloadFiles(t *testing.T, db *store.DB) int {
	t.Helper()
	n := 0
	filepath.WalkDir(filepath.Join(db.Dir(), "payloads"), func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return nil
	})
	return n
}

func TestDB_StoreBlob(t *testing.T) {
	db := openDB(t, smallOpts)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1000) // 16 000 bytes: a payload file
	cases := []struct {
		name string
		data []byte
		meta *string
	}{
		{"InlineNoMetadata", []byte("hello"), nil},
		{"InlineEmptyMetadata", []byte("hello"), ptr("")},
		{"InlineMetadata", []byte("x"), ptr("m")},
		{"Empty", []byte{}, nil},
		{"Nil", nil, ptr("nil data")},
		{"External", big, ptr("big")},
	}
	var last uint64
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id, err := db.StoreBlob(ctx, "", c.data, c.meta)
			if err != nil {
				t.Fatal(err)
			}
			if id <= last {
				t.Fatalf("id %d not increasing after %d", id, last)
			}
			last = id
			b, err := db.GetBlob(ctx, "", id)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b.Data, c.data) || b.Data == nil {
				t.Fatalf("data = %q (nil=%v), want %q", b.Data, b.Data == nil, c.data)
			}
			if (b.Metadata == nil) != (c.meta == nil) || (c.meta != nil && *b.Metadata != *c.meta) {
				t.Fatalf("metadata = %v, want %v", b.Metadata, c.meta)
			}
			info, err := db.StatBlob(ctx, "", id)
			if err != nil {
				t.Fatal(err)
			}
			if info.Size != int64(len(c.data)) || info.SHA256 != sha256.Sum256(c.data) || info.ID != id {
				t.Fatalf("StatBlob = %+v", info)
			}
		})
	}
	t.Run("FirstIDIsOne", func(t *testing.T) {
		db := openDB(t, store.Options{})
		id, err := db.StoreBlob(ctx, "", []byte("x"), nil)
		if err != nil || id != 1 {
			t.Fatalf("first id = %d, %v; want 1", id, err)
		}
	})
}

func TestDB_GetBlob(t *testing.T) {
	db := openDB(t, smallOpts)
	for _, id := range []uint64{0, 1, 99, 1 << 63, ^uint64(0)} {
		if _, err := db.GetBlob(ctx, "", id); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("GetBlob(%d) err = %v, want ErrNotFound", id, err)
		}
		if _, err := db.StatBlob(ctx, "", id); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("StatBlob(%d) err = %v, want ErrNotFound", id, err)
		}
	}
	t.Run("ErrCorruptBytes", func(t *testing.T) {
		// Same size, one flipped byte: bit rot, not a lost file.
		data := bytes.Repeat([]byte{8}, 5000)
		id, _ := db.StoreBlob(ctx, "", data, nil)
		sum := sha256.Sum256(data)
		path := filepath.Join(db.Dir(), "payloads", hexs(sum[:1]), hexs(sum[:]))
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte{9}, 4000)
		f.Close()
		if _, err := db.GetBlob(ctx, "", id); !errors.Is(err, store.ErrCorrupt) || !strings.Contains(err.Error(), "does not match its sha256") {
			t.Fatalf("err = %v, want ErrCorrupt naming the mismatch", err)
		}
		if err := db.DeleteBlob(ctx, "", id); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("ErrCorrupt", func(t *testing.T) {
		data := bytes.Repeat([]byte{7}, 5000)
		id, _ := db.StoreBlob(ctx, "", data, nil)
		sum := sha256.Sum256(data)
		os.Remove(filepath.Join(db.Dir(), "payloads", hexs(sum[:1]), hexs(sum[:])))
		if _, err := db.GetBlob(ctx, "", id); !errors.Is(err, store.ErrCorrupt) {
			t.Fatalf("err = %v, want ErrCorrupt", err)
		}
		var bad []uint64
		if err := db.VerifyPayloads(ctx, func(b store.BlobInfo, err error) {
			if !errors.Is(err, store.ErrCorrupt) {
				t.Errorf("verify err = %v", err)
			}
			bad = append(bad, b.ID)
		}); err != nil {
			t.Fatal(err)
		}
		if len(bad) != 1 || bad[0] != id {
			t.Fatalf("VerifyPayloads reported %v, want [%d]", bad, id)
		}
		db.DeleteBlob(ctx, "", id)
	})
}

func hexs(b []byte) string {
	const d = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, d[c>>4], d[c&15])
	}
	return string(out)
}

func TestDB_UpdateBlob(t *testing.T) {
	db := openDB(t, smallOpts)
	big := bytes.Repeat([]byte("B"), 4000)
	id, _ := db.StoreBlob(ctx, "", []byte("old"), ptr("meta"))
	check := func(t *testing.T, data []byte, meta *string) {
		t.Helper()
		b, err := db.GetBlob(ctx, "", id)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b.Data, data) || (b.Metadata == nil) != (meta == nil) || (meta != nil && *b.Metadata != *meta) {
			t.Fatalf("blob = %q/%v, want %q/%v", b.Data, b.Metadata, data, meta)
		}
	}
	t.Run("DataOnly", func(t *testing.T) {
		if err := db.UpdateBlob(ctx, "", id, store.BlobUpdate{Data: []byte("new")}); err != nil {
			t.Fatal(err)
		}
		check(t, []byte("new"), ptr("meta"))
	})
	t.Run("MetadataToEmpty", func(t *testing.T) {
		db.UpdateBlob(ctx, "", id, store.BlobUpdate{SetMetadata: true, Metadata: ptr("")})
		check(t, []byte("new"), ptr(""))
	})
	t.Run("MetadataToNull", func(t *testing.T) {
		db.UpdateBlob(ctx, "", id, store.BlobUpdate{SetMetadata: true})
		check(t, []byte("new"), nil)
	})
	t.Run("ToExternalAndBack", func(t *testing.T) {
		if err := db.UpdateBlob(ctx, "", id, store.BlobUpdate{Data: big, SetMetadata: true, Metadata: ptr("m2")}); err != nil {
			t.Fatal(err)
		}
		check(t, big, ptr("m2"))
		if n := payloadFiles(t, db); n != 1 {
			t.Fatalf("payload files = %d, want 1", n)
		}
		if err := db.UpdateBlob(ctx, "", id, store.BlobUpdate{Data: []byte{}}); err != nil {
			t.Fatal(err)
		}
		check(t, []byte{}, ptr("m2"))
		if n := payloadFiles(t, db); n != 0 {
			t.Fatalf("payload files after replacing = %d, want 0", n)
		}
	})
	t.Run("NoOp", func(t *testing.T) {
		if err := db.UpdateBlob(ctx, "", id, store.BlobUpdate{}); err != nil {
			t.Fatal(err)
		}
		check(t, []byte{}, ptr("m2"))
	})
	t.Run("ErrNotFound", func(t *testing.T) {
		for _, u := range []store.BlobUpdate{{Data: []byte("x")}, {SetMetadata: true, Metadata: ptr("x")}, {}} {
			if err := db.UpdateBlob(ctx, "", 999, u); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("UpdateBlob(%+v) err = %v, want ErrNotFound", u, err)
			}
		}
	})
	t.Run("MissingMetadataToNullOK", func(t *testing.T) {
		if err := db.UpdateBlob(ctx, "", 999, store.BlobUpdate{SetMetadata: true}); err != nil {
			t.Fatalf("err = %v, want nil (BuffDB's exception)", err)
		}
	})
}

func TestDB_DeleteBlob(t *testing.T) {
	db := openDB(t, smallOpts)
	id, _ := db.StoreBlob(ctx, "", []byte("x"), nil)
	if err := db.DeleteBlob(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteBlob(ctx, "", id); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second delete err = %v, want ErrNotFound", err)
	}
	if _, err := db.GetBlob(ctx, "", id); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get after delete err = %v", err)
	}
}

func TestDB_BlobIDsNeverReused(t *testing.T) {
	dir := t.TempDir()
	db := openAt(t, dir, smallOpts)
	var ids []uint64
	for i := 0; i < 3; i++ {
		id, _ := db.StoreBlob(ctx, "", []byte{byte(i)}, nil)
		ids = append(ids, id)
	}
	for _, id := range ids {
		db.DeleteBlob(ctx, "", id)
	}
	db.Close()
	db = openAt(t, dir, store.Options{InlineMax: 1024, QueryWrites: true})
	if _, err := db.Execute(ctx, "VACUUM"); err != nil {
		t.Fatalf("VACUUM: %v", err)
	}
	id, err := db.StoreBlob(ctx, "", []byte("after"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if id <= ids[2] {
		t.Fatalf("new id %d reuses an id <= %d", id, ids[2])
	}
}

func TestDB_BlobDedupe(t *testing.T) {
	db := openDB(t, smallOpts)
	data := bytes.Repeat([]byte("dedupe"), 1000)
	a, _ := db.StoreBlob(ctx, "", data, nil)
	b, _ := db.StoreBlob(ctx, "", data, ptr("second"))
	if n := payloadFiles(t, db); n != 1 {
		t.Fatalf("two identical blobs: %d payload files, want 1", n)
	}
	if err := db.DeleteBlob(ctx, "", a); err != nil {
		t.Fatal(err)
	}
	if n := payloadFiles(t, db); n != 1 {
		t.Fatalf("after deleting one: %d payload files, want 1", n)
	}
	got, err := db.GetBlob(ctx, "", b)
	if err != nil || !bytes.Equal(got.Data, data) {
		t.Fatalf("remaining blob: %v", err)
	}
	db.DeleteBlob(ctx, "", b)
	if _, err := db.CollectGarbage(ctx); err != nil {
		t.Fatal(err)
	}
	if n := payloadFiles(t, db); n != 0 {
		t.Fatalf("after deleting both: %d payload files, want 0", n)
	}
}

func TestDB_OpenBlob(t *testing.T) {
	db := openDB(t, smallOpts)
	for _, size := range []int{10, 100_000} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i * 7)
		}
		id, _ := db.StoreBlob(ctx, "", data, nil)
		r, err := db.OpenBlob(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if r.Info().Size != int64(size) || r.Info().SHA256 != sha256.Sum256(data) {
			t.Fatalf("Info = %+v", r.Info())
		}
		// Deleting the blob while it is open must not break the reader.
		db.DeleteBlob(ctx, "", id)
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("ReadAll: %v (len %d)", err, len(got))
		}
		buf := make([]byte, 5)
		if _, err := r.ReadAt(buf, 3); err != nil || !bytes.Equal(buf, data[3:8]) {
			t.Fatalf("ReadAt: %v %v", err, buf)
		}
		if _, err := r.Seek(1, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		r.Close()
		if _, err := db.OpenBlob(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("OpenBlob deleted err = %v", err)
		}
	}
}

// TestDB_FailedStoreLeavesNoPayload: the payload file of a write that did not commit is removed at
// once, not left for the next garbage collection (on a full disk, that space is what the next
// write needs).
func TestDB_FailedStoreLeavesNoPayload(t *testing.T) {
	db := openDB(t, smallOpts)
	blob := func(i byte) []byte { return bytes.Repeat([]byte{i}, 4096) }
	shared := blob(9)
	keep, err := db.StoreBlob(ctx, "", shared, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("RolledBackTransaction", func(t *testing.T) {
		tx, err := db.Begin(ctx, false, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		for i := byte(1); i <= 3; i++ {
			if _, err := db.StoreBlob(ctx, tx, blob(i), nil); err != nil {
				t.Fatal(err)
			}
		}
		db.StoreBlob(ctx, tx, shared, nil) // deduplicated against the committed blob
		if n := payloadFiles(t, db); n != 4 {
			t.Fatalf("%d payload files inside the transaction, want 4", n)
		}
		if err := db.Rollback(ctx, tx); err != nil {
			t.Fatal(err)
		}
		if n := payloadFiles(t, db); n != 1 {
			t.Fatalf("%d payload files after rollback, want 1 (the committed blob's)", n)
		}
	})
	t.Run("AbortedOnWriter", func(t *testing.T) {
		// An earlier write on a Writer fails (a unique index), so the Stores after it are aborted.
		if _, err := db.CreateIndex(ctx, store.IndexDef{Name: "u", Type: store.IndexHash, Kind: store.KindString, Unique: true}); err != nil {
			t.Fatal(err)
		}
		db.Set(ctx, "", "a", "same")
		w := db.NewWriter()
		bad := w.Set("", "b", "same")
		var later []*store.Future
		for i := byte(4); i <= 6; i++ {
			later = append(later, w.StoreBlob("", blob(i), nil))
		}
		later = append(later, w.StoreBlob("", shared, nil))
		w.Close()
		if _, err := bad.Wait(ctx); !errors.Is(err, store.ErrExists) {
			t.Fatalf("unique violation: %v", err)
		}
		for _, f := range later {
			if _, err := f.Wait(ctx); !errors.Is(err, store.ErrAborted) {
				t.Fatalf("Store after a failed write: %v, want ErrAborted", err)
			}
		}
		if n := payloadFiles(t, db); n != 1 {
			t.Fatalf("%d payload files after aborted Stores, want 1", n)
		}
	})
	if got, err := db.GetBlob(ctx, "", keep); err != nil || !bytes.Equal(got.Data, shared) {
		t.Fatalf("the committed blob sharing content with failed writes: %v", err)
	}
}
