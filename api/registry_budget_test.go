package api_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buffdb/buffdbd/registry"
)

// TestRegistry_PushLargerThanBudget: a version whose distinct chunks alone are more than the disk
// budget can never be published, whatever is evicted. The push fails RESOURCE_EXHAUSTED as soon
// as its chunks pass the budget, not after every byte crossed the (slow) link, and keeps no
// session pinning what it sent.
func TestRegistry_PushLargerThanBudget(t *testing.T) {
	const budget = 6 << 20
	e := startRegistry(t, registry.Options{MaxBytes: budget})
	ctx := context.Background()
	src := t.TempDir()
	const size = 48 << 20
	writeFiles(t, src, map[string][]byte{"m.bin": randBytes(7, size)})
	res, err := e.client.Push(ctx, src, registry.PushOptions{Info: registry.ModelInfo{Name: "m", Version: "v1"}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("push over budget: %v, want ResourceExhausted", err)
	}
	if res.BytesSent >= size/2 {
		t.Fatalf("sent %d of %d bytes before being told a version over the %d-byte budget cannot fit", res.BytesSent, size, budget)
	}
	st, err := e.reg.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.SessionsOpen != 0 || st.Chunks != 0 {
		t.Fatalf("after the failed push: %d sessions, %d chunks kept, want none", st.SessionsOpen, st.Chunks)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.dir, "uploads")); len(ents) != 0 {
		t.Fatalf("after the failed push: %d upload directories kept", len(ents))
	}
	// A version within the budget still publishes.
	small := t.TempDir()
	writeFiles(t, small, map[string][]byte{"m.bin": randBytes(8, 2<<20)})
	push(t, e, small, "m", "v2")
}
