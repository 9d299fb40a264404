package registry

import (
	"context"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/store"
)

// Received bytes wait for the file hasher within hashBudget: with the budget taken (as if 32 MiB
// of earlier chunks still waited to be hashed), Write holds the stream back instead of queueing
// more, and goes on once the hasher frees room. Without the bound a client faster than the hasher
// filled the daemon's memory with finished chunks (168 MiB peak RSS on a 4 GiB push).
func TestUpload_WriteWaitsForTheFileHasher(t *testing.T) {
	ctx := context.Background()
	db, err := store.Open(ctx, t.TempDir(), store.Options{Migrations: Migrations})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s, err := New(db, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u, err := s.OpenUpload(ctx, ModelInfo{Name: "m", Version: "v1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 13)
	}
	if err := u.BeginFile("f", int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if need, err := u.Offer(ctx, sha256.Sum256(data), int64(len(data))); err != nil || !need {
		t.Fatalf("offer = %v, %v", need, err)
	}
	if err := u.hashWait.Acquire(ctx, hashBudget); err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() { wrote <- u.Write(data) }()
	select {
	case err := <-wrote:
		t.Fatalf("Write returned (%v) while the hasher's budget was taken", err)
	case <-time.After(200 * time.Millisecond):
	}
	u.hashWait.Release(hashBudget)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if err := u.EndFileHashed(); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	vi, err := s.Show(ctx, Ref{Name: "m", Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if want := Digest(sha256.Sum256(data)); len(vi.Files) != 1 || vi.Files[0].SHA256 != want {
		t.Fatalf("published files %+v, want one with sha256 %s", vi.Files, want)
	}
}
