package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOpenStore_DiskFull starts on a data directory whose filesystem is full: the error names the
// full disk, with its hint, rather than SQLite's "disk I/O error" (which reads as failing
// hardware). Needs root to mount a small tmpfs.
func TestOpenStore_DiskFull(t *testing.T) {
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=2m"); err != nil {
		t.Skipf("mount a small tmpfs: %v (needs root)", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	dir := filepath.Join(mnt, "data")
	run := func(args ...string) (int, string) {
		var stderr bytes.Buffer
		code := execute(context.Background(), append(args, "--config", os.DevNull, "--data-dir", dir),
			strings.NewReader(""), io.Discard, &stderr)
		return code, stderr.String()
	}
	if code, stderr := run("kv", "set", "k", "v"); code != exitOK {
		t.Fatalf("on an empty disk: exit %d, stderr %s", code, stderr)
	}
	// Fill the filesystem to the last byte.
	f, err := os.Create(filepath.Join(mnt, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := f.Write(make([]byte, 64<<10)); err != nil {
			break
		}
	}
	f.Close()
	if free := freeBytes(dir); free != 0 {
		t.Fatalf("%d bytes still free", free)
	}
	code, stderr := run("kv", "get", "k")
	if code != exitError || !strings.Contains(stderr, "no space left on the data directory's disk (0 bytes free)") ||
		!strings.Contains(stderr, "hint: the filesystem holding the data directory is full") {
		t.Fatalf("on a full disk: exit %d, stderr:\n%s", code, stderr)
	}
}
