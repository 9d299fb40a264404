package huggingface

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// preallocate gives the partial file its size and, where the filesystem supports fallocate, the
// blocks behind it (parallel direct writes then need no allocation).
func TestPreallocate(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "part"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 8<<20 + 5
	if err := preallocate(f, size); err != nil {
		t.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != size {
		t.Fatalf("size %d, want %d", st.Size(), size)
	}
	if blocks := st.Sys().(*syscall.Stat_t).Blocks * 512; blocks < size {
		t.Fatalf("%d bytes allocated for %d: the file is sparse", blocks, size)
	}
	// Again on a file with data (a resumed download): the data stays.
	if _, err := f.WriteAt([]byte("kept"), 100); err != nil {
		t.Fatal(err)
	}
	if err := preallocate(f, size); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := f.ReadAt(b, 100); err != nil || string(b) != "kept" {
		t.Fatalf("after preallocating again: %q, %v", b, err)
	}
}
