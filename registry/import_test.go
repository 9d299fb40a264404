package registry_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/registry"
	"github.com/buffdb/buffdbd/store"
)

func openService(t testing.TB, opts registry.Options) *registry.Service {
	t.Helper()
	s, _, _ := openServiceDir(t, opts)
	return s
}

// openServiceDir is openService that also returns the store and its data directory, for tests that
// look at (or damage) the files.
func openServiceDir(t testing.TB, opts registry.Options) (*registry.Service, *store.DB, string) {
	t.Helper()
	dir := t.TempDir()
	db, err := store.Open(context.Background(), dir, store.Options{Migrations: registry.Migrations})
	if err != nil {
		t.Fatal(err)
	}
	s, err := registry.New(db, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		db.Close()
	})
	return s, db, dir
}

// payloadPath is where the store keeps the bytes of chunk c.
func payloadPath(dir string, c registry.Digest) string {
	return filepath.Join(dir, "payloads", hex.EncodeToString(c[:1]), hex.EncodeToString(c[:]))
}

func file(path string, data []byte) registry.ImportFile {
	return registry.ImportFile{Path: path, Size: int64(len(data)), SHA256: sha256.Sum256(data),
		Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }}
}

func TestService_Import(t *testing.T) {
	ctx := context.Background()
	s := openService(t, registry.Options{MaxBytes: 20 << 20})
	weights := randomBytes(1, 9<<20)
	info := registry.ModelInfo{Name: "hf/model", Version: "abc123", Framework: "safetensors"}
	st, err := s.ImportStats(ctx, registry.ImportRequest{Info: info, Aliases: []string{"main"},
		Files: []registry.ImportFile{file("config.json", []byte(`{}`)), file("model.safetensors", weights)}})
	if err != nil {
		t.Fatal(err)
	}
	if st.BytesReceived != int64(len(weights))+2 {
		t.Errorf("received %d bytes, want %d", st.BytesReceived, len(weights)+2)
	}
	if v, err := s.ResolveAlias(ctx, "hf/model", "main"); err != nil || v != "abc123" {
		t.Fatalf("main -> %q, %v", v, err)
	}
	if ok, err := s.HasContent(ctx, sha256.Sum256(weights)); !ok || err != nil {
		t.Fatalf("HasContent = %v, %v", ok, err)
	}

	t.Run("ReuseStored", func(t *testing.T) {
		f := file("model.safetensors", weights)
		f.Open = nil // reuse the stored copy
		st, err := s.ImportStats(ctx, registry.ImportRequest{Info: registry.ModelInfo{Name: "hf/model", Version: "def456"},
			Aliases: []string{"main"}, Files: []registry.ImportFile{f}})
		if err != nil || st.BytesReceived != 0 || st.BytesReused != int64(len(weights)) {
			t.Fatalf("reuse import: %+v, %v", st, err)
		}
		if v, _ := s.ResolveAlias(ctx, "hf/model", "main"); v != "def456" {
			t.Fatalf("main -> %q after moving it", v)
		}
	})
	t.Run("Verified", func(t *testing.T) {
		// The file hash is taken on the caller's word; every chunk is still stored under the hash
		// of its own bytes (Verify re-hashes them), and the version pulls back byte for byte.
		data := append(randomBytes(4, 7<<20), weights[:2<<20]...) // partly shared with abc123
		f := file("model.safetensors", data)
		f.Verified = true
		if err := s.Import(ctx, registry.ImportRequest{Info: registry.ModelInfo{Name: "hf/verified", Version: "v1"},
			Files: []registry.ImportFile{f}}); err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		var m *registry.Manifest
		_, err := s.Pull(ctx, registry.PullRequest{Ref: registry.Ref{Name: "hf/verified", Version: "v1"}}, registry.PullSink{
			Manifest: func(_ registry.ModelInfo, mm *registry.Manifest) error { m = mm; return nil },
			Data:     func(_ int, _ int64, p []byte) error { got.Write(p); return nil },
		})
		if err != nil || !bytes.Equal(got.Bytes(), data) {
			t.Fatalf("pulled %d bytes (want %d identical): %v", got.Len(), len(data), err)
		}
		if len(m.Files) != 1 || m.Files[0].SHA256 != sha256.Sum256(data) || len(m.Files[0].Chunks) < 2 {
			t.Fatalf("manifest %+v", m.Files)
		}
		res, err := s.Verify(ctx, &registry.Ref{Name: "hf/verified", Version: "v1"}, nil)
		if err != nil || len(res.Corrupt) != 0 || res.Bytes != int64(len(data)) {
			t.Fatalf("verify: %+v, %v", res, err)
		}
	})
	t.Run("SumAtEOF", func(t *testing.T) {
		// The fetcher knows a file's sha256 only once its reader has ended (the download verifies
		// as it goes): Sum is asked for then, and the manifest records what it says.
		data := randomBytes(5, 1<<20)
		r := &eofReader{r: bytes.NewReader(data)}
		f := registry.ImportFile{Path: "w.bin", Size: int64(len(data)), Verified: true,
			Open: func() (io.ReadCloser, error) { return io.NopCloser(r), nil },
			Sum: func() [32]byte {
				if !r.eof {
					t.Error("Sum called before the reader returned io.EOF")
				}
				return sha256.Sum256(data)
			}}
		if err := s.Import(ctx, registry.ImportRequest{Info: registry.ModelInfo{Name: "hf/sum", Version: "v1"},
			Files: []registry.ImportFile{f}}); err != nil {
			t.Fatal(err)
		}
		_, m, err := s.Manifest(ctx, registry.Ref{Name: "hf/sum", Version: "v1"})
		if err != nil || len(m.Files) != 1 || m.Files[0].SHA256 != sha256.Sum256(data) {
			t.Fatalf("manifest %+v, %v", m, err)
		}
	})
	t.Run("WriteChunkSize", func(t *testing.T) {
		u, err := s.OpenUpload(ctx, registry.ModelInfo{Name: "hf/wc", Version: "v1"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		data := randomBytes(6, 1<<20)
		if err := u.BeginFile("x", int64(len(data))); err != nil {
			t.Fatal(err)
		}
		if need, err := u.Offer(ctx, sha256.Sum256(data), int64(len(data))); !need || err != nil {
			t.Fatalf("offer: %v, %v", need, err)
		}
		released := 0
		if err := u.WriteChunk(data[1:], func() { released++ }); !errors.Is(err, registry.ErrInvalid) {
			t.Fatalf("a short whole chunk: %v, want ErrInvalid", err)
		}
		if released != 1 {
			t.Fatalf("release called %d times, want 1", released)
		}
	})
	t.Run("PullOwned", func(t *testing.T) {
		// An Owned sink keeps pieces after returning and releases them late, out of order: the
		// pull must not reuse a buffer before its release, and must release-wait, not deadlock.
		type held struct {
			p, copy []byte
			release func()
		}
		var hold []held
		var got bytes.Buffer
		check := func(h held) {
			if !bytes.Equal(h.p, h.copy) {
				t.Fatal("a piece's buffer was overwritten while the sink still held it")
			}
			h.release()
		}
		_, err := s.Pull(ctx, registry.PullRequest{Ref: registry.Ref{Name: "hf/model", Version: "abc123"}}, registry.PullSink{
			Manifest: func(registry.ModelInfo, *registry.Manifest) error { return nil },
			Owned: func(_ int, _ int64, p []byte, release func()) error {
				got.Write(p)
				hold = append(hold, held{p, bytes.Clone(p), release})
				if len(hold) > 6 { // nearly every buffer held; release the second-oldest, then the oldest
					check(hold[1])
					check(hold[0])
					hold = hold[2:]
				}
				return nil
			},
		})
		for _, h := range hold {
			check(h)
		}
		want := append([]byte(`{}`), weights...)
		if err != nil || !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("pulled %d bytes (want %d identical): %v", got.Len(), len(want), err)
		}
	})
	t.Run("ErrExists", func(t *testing.T) {
		err := s.Import(ctx, registry.ImportRequest{Info: info, Files: []registry.ImportFile{file("a", []byte("x"))}})
		if !errors.Is(err, registry.ErrExists) {
			t.Fatalf("got %v, want ErrExists", err)
		}
	})
	t.Run("ErrChecksum", func(t *testing.T) {
		f := file("a.bin", randomBytes(2, 1<<20))
		f.SHA256[0] ^= 1
		err := s.Import(ctx, registry.ImportRequest{Info: registry.ModelInfo{Name: "bad", Version: "v1"}, Files: []registry.ImportFile{f}})
		if !errors.Is(err, registry.ErrChecksum) {
			t.Fatalf("got %v, want ErrChecksum", err)
		}
		if ok, _ := s.HasVersion(ctx, "bad", "v1"); ok {
			t.Fatal("a failed import is visible")
		}
	})
	t.Run("ErrNotFoundReuse", func(t *testing.T) {
		err := s.Import(ctx, registry.ImportRequest{Info: registry.ModelInfo{Name: "bad", Version: "v2"},
			Files: []registry.ImportFile{{Path: "x", Size: 5, SHA256: sha256.Sum256([]byte("nope!"))}}})
		if !errors.Is(err, registry.ErrNotFound) {
			t.Fatalf("got %v, want ErrNotFound", err)
		}
	})
	t.Run("ErrBudget", func(t *testing.T) {
		// main and latest moved to def456, so abc123 is evictable, but its weights are shared with
		// def456: evicting it would free only config.json, not enough for 16 MiB in a 20 MiB budget.
		before, err := s.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		err = s.Import(ctx, registry.ImportRequest{Info: registry.ModelInfo{Name: "big", Version: "v1"},
			Files: []registry.ImportFile{file("w", randomBytes(3, 16<<20))}})
		if !errors.Is(err, registry.ErrBudget) || !strings.Contains(err.Error(), "pinned or aliased") {
			t.Fatalf("got %v, want ErrBudget saying why nothing more could be evicted", err)
		}
		// Nothing of it stays: over the budget it would not fit on a retry either.
		if after, err := s.Stats(ctx); err != nil || after != before {
			t.Fatalf("after the refused import: %+v (before %+v), %v; want the chunks and session gone", after, before, err)
		}
		if ok, _ := s.HasVersion(ctx, "hf/model", "abc123"); !ok {
			t.Fatal("a failed import evicted a version")
		}
	})
	t.Run("ErrInvalidSize", func(t *testing.T) {
		// Content that disagrees with the declared size fails even when the caller vouches for
		// it, whether it is one byte longer, shorter, or an empty file that is not empty.
		data := randomBytes(5, 3<<20+5)
		for _, tc := range []struct {
			name string
			size int64
		}{{"Longer", int64(len(data)) - 1}, {"Shorter", int64(len(data)) + 1}, {"NotEmpty", 0}} {
			f := file("w", data)
			f.Size, f.Verified = tc.size, true
			err := s.Import(ctx, registry.ImportRequest{Info: registry.ModelInfo{Name: "size", Version: tc.name},
				Files: []registry.ImportFile{f}})
			if !errors.Is(err, registry.ErrInvalid) {
				t.Errorf("%s: got %v, want ErrInvalid", tc.name, err)
			}
			if ok, _ := s.HasVersion(ctx, "size", tc.name); ok {
				t.Errorf("%s: a failed import is visible", tc.name)
			}
		}
	})
	t.Run("ErrFileIsDirectory", func(t *testing.T) {
		// A path that is both a file and a directory could never be pulled; in either order.
		for i, paths := range [][2]string{{"a", "a/b"}, {"x/y/z", "x/y"}} {
			err := s.Import(ctx, registry.ImportRequest{Info: registry.ModelInfo{Name: "fd", Version: fmt.Sprint("v", i)},
				Files: []registry.ImportFile{file(paths[0], []byte("1")), file(paths[1], []byte("2"))}})
			if !errors.Is(err, registry.ErrInvalid) {
				t.Errorf("files %q: %v, want ErrInvalid", paths, err)
			}
		}
		if err := s.Import(ctx, registry.ImportRequest{Info: registry.ModelInfo{Name: "fd", Version: "ok"},
			Files: []registry.ImportFile{file("a/b", []byte("1")), file("a/c", []byte("2")), file("ab", []byte("3"))}}); err != nil {
			t.Errorf("siblings and a name sharing a prefix: %v", err)
		}
	})
	t.Run("ErrInvalidPath", func(t *testing.T) {
		err := s.Import(ctx, registry.ImportRequest{Info: registry.ModelInfo{Name: "p", Version: "v1"},
			Files: []registry.ImportFile{file("../escape", []byte("x"))}})
		if !errors.Is(err, registry.ErrInvalid) {
			t.Fatalf("got %v, want ErrInvalid", err)
		}
	})
}

// eofReader notes when its reader has returned io.EOF.
type eofReader struct {
	r   io.Reader
	eof bool
}

func (e *eofReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		e.eof = true
	}
	return n, err
}

// TestService_ImportHealsCorrupt: content whose stored copy has a chunk marked corrupt is not
// offered for reuse (HasContent false), so the fetcher downloads it, and importing it heals the
// chunk for every version that shares it.
func TestService_ImportHealsCorrupt(t *testing.T) {
	ctx := context.Background()
	s, _, dir := openServiceDir(t, registry.Options{})
	weights := randomBytes(20, 5<<20)
	sum := sha256.Sum256(weights)
	if err := s.Import(ctx, registry.ImportRequest{Info: registry.ModelInfo{Name: "a", Version: "v1"},
		Files: []registry.ImportFile{file("w", weights)}}); err != nil {
		t.Fatal(err)
	}
	vi, err := s.Show(ctx, registry.Ref{Name: "a", Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	c := vi.Files[0].Chunks[1].SHA256
	payload := payloadPath(dir, c)
	f, err := os.OpenFile(payload, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("rot"), 100)
	f.Close()
	if res, err := s.Verify(ctx, nil, nil); err != nil || len(res.Corrupt) != 1 {
		t.Fatalf("verify: %+v, %v; want one corrupt chunk", res, err)
	}
	if ok, err := s.HasContent(ctx, sum); ok || err != nil {
		t.Fatalf("HasContent with a corrupt chunk = %v, %v; want false", ok, err)
	}
	reuse := file("w", weights)
	reuse.Open = nil
	if err := s.Import(ctx, registry.ImportRequest{Info: registry.ModelInfo{Name: "b", Version: "v1"},
		Files: []registry.ImportFile{reuse}}); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("reusing a corrupt copy: %v, want ErrNotFound", err)
	}
	if err := s.Import(ctx, registry.ImportRequest{Info: registry.ModelInfo{Name: "b", Version: "v1"},
		Files: []registry.ImportFile{file("w", weights)}}); err != nil {
		t.Fatalf("importing the content again: %v", err)
	}
	if res, err := s.Verify(ctx, nil, nil); err != nil || len(res.Corrupt) != 0 {
		t.Fatalf("verify after the import: %+v, %v; want the chunk healed", res, err)
	}
	if ok, _ := s.HasContent(ctx, sum); !ok {
		t.Fatal("HasContent false after healing")
	}
	var got bytes.Buffer
	if _, err := s.Pull(ctx, registry.PullRequest{Ref: registry.Ref{Name: "a", Version: "v1"}}, registry.PullSink{
		Manifest: func(registry.ModelInfo, *registry.Manifest) error { return nil },
		Data:     func(_ int, _ int64, p []byte) error { got.Write(p); return nil },
	}); err != nil || !bytes.Equal(got.Bytes(), weights) {
		t.Fatalf("a:v1 after healing: %v", err)
	}
}

// TestService_SessionLifetime: GC never collects the session of a push still running, however long
// it runs; an abandoned session stays resumable for its whole TTL counted from when the push stopped.
func TestService_SessionLifetime(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	const ttl = time.Hour
	s := openService(t, registry.Options{SessionTTL: ttl, Now: clock})
	data := randomBytes(30, 1<<20)
	sum := sha256.Sum256(data)
	u, err := s.OpenUpload(ctx, registry.ModelInfo{Name: "slow", Version: "v1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.BeginFile("w", int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if need, err := u.Offer(ctx, sum, int64(len(data))); !need || err != nil {
		t.Fatalf("offer: %v, %v", need, err)
	}
	if err := u.WriteChunk(data, func() {}); err != nil {
		t.Fatal(err)
	}
	if err := u.EndFile(sum); err != nil {
		t.Fatal(err)
	}
	advance(3 * ttl) // a push over a slow link, past its session's first expiry
	if res, err := s.CollectGarbage(ctx); err != nil || res.Sessions != 0 {
		t.Fatalf("GC during a live push: %+v, %v; want no session collected", res, err)
	}
	if _, err := u.Commit(ctx); err != nil {
		t.Fatalf("commit after GC: %v", err)
	}
	u.Close()

	// Abandoned after running for 3 TTLs: resumable for one TTL from then.
	u, err = s.OpenUpload(ctx, registry.ModelInfo{Name: "slow", Version: "v2"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	session := u.Session()
	advance(3 * ttl)
	u.Close()
	advance(ttl / 2)
	if res, err := s.CollectGarbage(ctx); err != nil || res.Sessions != 0 {
		t.Fatalf("GC half a TTL after the push stopped: %+v, %v; want the session kept", res, err)
	}
	u, err = s.OpenUpload(ctx, registry.ModelInfo{Name: "slow", Version: "v2"}, nil)
	if err != nil || !u.Resumed() || u.Session() != session {
		t.Fatalf("reopen: resumed %v, session %q (was %q), %v", u != nil && u.Resumed(), u.Session(), session, err)
	}
	u.Close()
	advance(2 * ttl)
	if res, err := s.CollectGarbage(ctx); err != nil || res.Sessions != 1 {
		t.Fatalf("GC a TTL after the push stopped: %+v, %v; want the session collected", res, err)
	}
}

// TestService_VerifyRaces: a chunk deleted (and stored again under a new blob) while Verify hashes
// others is neither reported nor flagged corrupt, and a flagged chunk whose bytes are sound again
// is cleared, so the version pulls.
func TestService_VerifyRaces(t *testing.T) {
	ctx := context.Background()
	s, _, dir := openServiceDir(t, registry.Options{})
	big, small := randomBytes(40, 6<<20), randomBytes(41, 3<<20)
	imp := func(name string, data []byte) {
		t.Helper()
		if err := s.Import(ctx, registry.ImportRequest{Info: registry.ModelInfo{Name: name, Version: "v1"},
			Files: []registry.ImportFile{file("w", data)}}); err != nil {
			t.Fatal(err)
		}
	}
	imp("big", big)
	imp("small", small)
	once := false
	res, err := s.Verify(ctx, nil, func(chunks, _ int64) {
		if once {
			return
		}
		once = true
		// While Verify is on its first chunk: small is removed, collected and stored again.
		if _, err := s.DeleteVersion(ctx, registry.Ref{Name: "small", Version: "v1"}, true); err != nil {
			t.Error(err)
		}
		s.CollectGarbage(ctx)
		imp("small", small)
	})
	if err != nil || len(res.Corrupt) != 0 {
		t.Fatalf("verify racing rm, gc and a new push: %+v, %v; want nothing corrupt", res.Corrupt, err)
	}
	pull := func(name string) error {
		_, err := s.Pull(ctx, registry.PullRequest{Ref: registry.Ref{Name: name, Version: "v1"}}, registry.PullSink{
			Manifest: func(registry.ModelInfo, *registry.Manifest) error { return nil },
			Data:     func(int, int64, []byte) error { return nil },
		})
		return err
	}
	if err := pull("small"); err != nil {
		t.Fatalf("small after the race: %v", err)
	}

	// A flag whose chunk is sound again is cleared by the next verify.
	vi, _ := s.Show(ctx, registry.Ref{Name: "big", Version: "v1"})
	c := vi.Files[0].Chunks[0].SHA256
	payload := payloadPath(dir, c)
	orig, err := os.ReadFile(payload)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(payload, append([]byte("x"), orig[1:]...), 0o600)
	if res, _ := s.Verify(ctx, nil, nil); len(res.Corrupt) != 1 {
		t.Fatalf("verify of a damaged chunk: %+v", res.Corrupt)
	}
	os.WriteFile(payload, orig, 0o600)
	if res, _ := s.Verify(ctx, nil, nil); len(res.Corrupt) != 0 {
		t.Fatalf("verify of the restored chunk: %+v", res.Corrupt)
	}
	if err := pull("big"); err != nil {
		t.Fatalf("big after its chunk is sound again: %v", err)
	}
}

// TestService_IndexRebuiltFromTables: a BuffDB index key overwritten with garbage through the KV
// API is rebuilt from the registry's tables at the next publish, keeping the versions it had.
func TestService_IndexRebuiltFromTables(t *testing.T) {
	ctx := context.Background()
	s, db, _ := openServiceDir(t, registry.Options{})
	imp := func(name, version string) {
		t.Helper()
		if err := s.Import(ctx, registry.ImportRequest{Info: registry.ModelInfo{Name: name, Version: version},
			Files: []registry.ImportFile{file("f", []byte(name+version))}}); err != nil {
			t.Fatal(err)
		}
	}
	imp("multi", "1.0")
	imp("other", "1")
	db.Set(ctx, "", "model:multi:index", "garbage")
	db.Set(ctx, "", "model:global:index", "{}")
	imp("multi", "2.0")
	for key, want := range map[string]string{"model:multi:index": `["1.0","2.0"]`, "model:global:index": `["multi","other"]`} {
		if got, err := db.Get(ctx, "", key); err != nil || got != want {
			t.Errorf("%s = %s, %v; want %s", key, got, err, want)
		}
	}
}
