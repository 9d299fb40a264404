package store_test

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/buffdb/buffdbd/store"
)

// TestDB_DiskFullPayloads fills a small tmpfs: a write that does not fit fails with ErrNoSpace (not an
// internal error), leaves no payload file behind, and once a blob is deleted the store takes
// writes again without a restart. Needs root to mount the filesystem.
func TestDB_DiskFullPayloads(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=6m"); err != nil {
		t.Skipf("mount a small tmpfs: %v (needs root)", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	db := openAt(t, dir, store.Options{})
	defer db.Close()
	blob := func(i int) []byte { return bytes.Repeat([]byte{byte(i), byte(i >> 8)}, 512<<10) } // 1 MiB
	var ids []uint64
	var err error
	for i := 1; i <= 20; i++ {
		var id uint64
		if id, err = db.StoreBlob(ctx, "", blob(i), nil); err != nil {
			break
		}
		ids = append(ids, id)
	}
	if !errors.Is(err, store.ErrNoSpace) {
		t.Fatalf("after %d blobs on a 6 MiB disk: err = %v, want ErrNoSpace", len(ids), err)
	}
	t.Logf("after %d blobs: %v", len(ids), err)
	if len(ids) == 0 {
		t.Fatal("not even one blob fit")
	}
	if n := payloadFiles(t, db); n != len(ids) {
		t.Fatalf("%d payload files for %d stored blobs: the failed write left its file", n, len(ids))
	}
	if err := db.DeleteBlob(ctx, "", ids[0]); err != nil {
		t.Fatalf("delete on a full disk: %v", err)
	}
	if _, err := db.StoreBlob(ctx, "", blob(100), nil); err != nil {
		t.Fatalf("store after freeing a blob: %v", err)
	}
	for _, id := range ids[1:] {
		if b, err := db.GetBlob(ctx, "", id); err != nil || len(b.Data) != 1<<20 {
			t.Fatalf("blob %d after the disk filled: %v", id, err)
		}
	}
	if err := os.WriteFile(dir+"/probe", nil, 0o600); err != nil {
		t.Fatal(err)
	}
}
