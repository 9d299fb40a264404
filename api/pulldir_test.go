package api_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/buffdb/buffdbd/registry"
)

// TestClient_PullIntoSymlinkedDir: a pull into a directory named through a symbolic link reuses the
// files there like any other directory (it walked the link itself, found nothing, and transferred
// the whole version again).
func TestClient_PullIntoSymlinkedDir(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	data := randBytes(401, 4<<20)
	pushOneFile(t, e, "m", "A", data)
	real := t.TempDir()
	if _, err := e.client.Pull(context.Background(), "m:A", real, registry.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "current")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	res, err := e.client.Pull(context.Background(), "m:A", link, registry.PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.BytesReceived != 0 {
		t.Errorf("pull into a symlinked directory holding the version received %d bytes, want 0", res.BytesReceived)
	}
	assertTree(t, real, map[string][]byte{"m.bin": data})
}
