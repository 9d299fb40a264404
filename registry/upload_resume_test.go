package registry_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/registry"
)

// resumeChunk is the one chunk of the file "f" that the tests of this file push in pieces.
type resumeChunk struct {
	data []byte
	sum  registry.Digest
}

func newResumeChunk(seed uint64) resumeChunk {
	data := randomBytes(seed, 1<<20+12345)
	return resumeChunk{data: data, sum: sha256.Sum256(data)}
}

// partialPath is where the registry keeps the received part of chunk c of an upload session.
func partialPath(dir, session string, c registry.Digest) string {
	return filepath.Join(dir, "uploads", session, hex.EncodeToString(c[:]))
}

// offerAt opens a resumable push of c as the file of name:v1 and offers c, which the server must
// answer with need from from. The caller closes the Upload.
func offerAt(t *testing.T, s *registry.Service, name string, c resumeChunk, from int) *registry.Upload {
	t.Helper()
	ctx := context.Background()
	u, err := s.OpenUpload(ctx, registry.ModelInfo{Name: name, Version: "v1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.BeginFile("f", int64(len(c.data))); err != nil {
		u.Close()
		t.Fatal(err)
	}
	need, got, err := u.OfferResumable(ctx, c.sum, int64(len(c.data)))
	if err != nil || !need || got != int64(from) {
		u.Close()
		t.Fatalf("offer = need %v from %d, %v; want need from %d", need, got, err, from)
	}
	return u
}

// cutPush starts a resumable push of c as the file of name:v1, sends data[from:to] (from must be
// what the server answers) and closes the Upload as a stream cut there would. It returns the
// session.
func cutPush(t *testing.T, s *registry.Service, name string, c resumeChunk, from, to int) string {
	t.Helper()
	u := offerAt(t, s, name, c, from)
	defer u.Close()
	if err := u.Write(c.data[from:to]); err != nil {
		t.Fatal(err)
	}
	return u.Session()
}

// finishPush pushes c as the file of name:v1, expecting the server to hold its first from bytes,
// and commits.
func finishPush(t *testing.T, s *registry.Service, name string, c resumeChunk, from int) (registry.UploadStats, error) {
	t.Helper()
	u := offerAt(t, s, name, c, from)
	defer u.Close()
	if err := u.Write(c.data[from:]); err != nil {
		return u.Stats(), err
	}
	if err := u.EndFileHashed(); err != nil {
		return u.Stats(), err
	}
	_, err := u.Commit(context.Background())
	return u.Stats(), err
}

// checkPublished checks name:v1 is published as the file f holding c, with sound chunks.
func checkPublished(t *testing.T, s *registry.Service, name string, c resumeChunk) {
	t.Helper()
	ctx := context.Background()
	vi, err := s.Show(ctx, registry.Ref{Name: name, Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(vi.Files) != 1 || vi.Files[0].SHA256 != registry.Digest(sha256.Sum256(c.data)) {
		t.Fatalf("published %+v", vi.Files)
	}
	ref := registry.Ref{Name: name, Version: "v1"}
	res, err := s.Verify(ctx, &ref, nil)
	if err != nil || len(res.Corrupt) != 0 || res.Chunks != 1 {
		t.Fatalf("verify = %+v, %v", res, err)
	}
}

func assertGone(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s is left behind (%v)", path, err)
	}
}

// TestUpload_OfferResumable: the part of a chunk received before a push was cut is kept, and the
// next push of the version sends only the rest. Before, the session kept only whole chunks, so a
// link that drops before a whole chunk (up to 4 MiB) is through could never push.
func TestUpload_OfferResumable(t *testing.T) {
	t.Run("OK", func(t *testing.T) {
		s, _, dir := openServiceDir(t, registry.Options{})
		c := newResumeChunk(1)
		const cut = 300 << 10
		session := cutPush(t, s, "m", c, 0, cut)
		st, err := os.Stat(partialPath(dir, session, c.sum))
		if err != nil || st.Size() != cut+sha256.Size {
			t.Fatalf("partial chunk after a cut at %d: %v, %v", cut, st, err)
		}
		// A second cut further in keeps the longer part.
		if got := cutPush(t, s, "m", c, cut, 2*cut); got != session {
			t.Fatalf("session %s, then %s", session, got)
		}
		stats, err := finishPush(t, s, "m", c, 2*cut)
		if err != nil {
			t.Fatal(err)
		}
		if stats.BytesReceived != int64(len(c.data)-2*cut) || stats.BytesResumed != 2*cut {
			t.Errorf("stats %+v: want %d received and %d resumed", stats, len(c.data)-2*cut, 2*cut)
		}
		checkPublished(t, s, "m", c)
		assertGone(t, filepath.Join(dir, "uploads", session))
	})
	// A kept part damaged on disk (bit rot, a crash, tampering) is not resumed from: the chunk is
	// asked for whole and stored sound.
	t.Run("DamagedPartIsDropped", func(t *testing.T) {
		s, _, dir := openServiceDir(t, registry.Options{})
		c := newResumeChunk(2)
		session := cutPush(t, s, "m", c, 0, 500<<10)
		p := partialPath(dir, session, c.sum)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[1000] ^= 1
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := finishPush(t, s, "m", c, 0); err != nil {
			t.Fatal(err)
		}
		checkPublished(t, s, "m", c)
	})
	// A kept part that verifies but holds the wrong bytes (left by a client that sent wrong
	// data, or forged with its checksum) fails the chunk's own digest: nothing is stored, the
	// error says to push again, and the next push sends the chunk whole.
	t.Run("ForgedPartIsNeverStored", func(t *testing.T) {
		s, _, dir := openServiceDir(t, registry.Options{})
		c := newResumeChunk(3)
		const cut = 400 << 10
		session := cutPush(t, s, "m", c, 0, cut)
		forged := append([]byte(nil), c.data[:cut]...)
		forged[77] ^= 0xff
		sum := sha256.Sum256(forged)
		if err := os.WriteFile(partialPath(dir, session, c.sum), append(forged, sum[:]...), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := finishPush(t, s, "m", c, cut)
		if !errors.Is(err, registry.ErrResumeMismatch) {
			t.Fatalf("commit of a chunk completed from a forged part: %v, want ErrResumeMismatch", err)
		}
		if st, err := s.Stats(context.Background()); err != nil || st.Chunks != 0 || st.Versions != 0 {
			t.Fatalf("after a forged part: %+v, %v; want nothing stored", st, err)
		}
		assertGone(t, partialPath(dir, session, c.sum))
		if _, err := finishPush(t, s, "m", c, 0); err != nil {
			t.Fatal(err)
		}
		checkPublished(t, s, "m", c)
	})
	// Two streams of one session in the same chunk: each verifies what it completes, and the
	// longer of the parts they were cut at is kept.
	t.Run("TwoStreams", func(t *testing.T) {
		s, _, dir := openServiceDir(t, registry.Options{})
		c := newResumeChunk(4)
		const cut = 200 << 10
		session := cutPush(t, s, "m", c, 0, cut)
		ctx := context.Background()
		var ups [2]*registry.Upload
		for i := range ups {
			u, err := s.OpenUpload(ctx, registry.ModelInfo{Name: "m", Version: "v1"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			if err := u.BeginFile("f", int64(len(c.data))); err != nil {
				t.Fatal(err)
			}
			if need, from, err := u.OfferResumable(ctx, c.sum, int64(len(c.data))); err != nil || !need || from != cut {
				t.Fatalf("stream %d: offer = %v %d %v", i, need, from, err)
			}
			ups[i] = u
		}
		var wg sync.WaitGroup
		for i, u := range ups {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := u.Write(c.data[cut : cut*(3+2*i)]); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		ups[1].Close() // cut at 5*cut
		ups[0].Close() // cut at 3*cut: shorter, the longer part stays
		if st, err := os.Stat(partialPath(dir, session, c.sum)); err != nil || st.Size() != 5*cut+sha256.Size {
			t.Fatalf("partial after two cut streams: %v, %v; want %d bytes", st, err, 5*cut+sha256.Size)
		}
		for i := range ups {
			u, err := s.OpenUpload(ctx, registry.ModelInfo{Name: "m", Version: "v1"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			if err := u.BeginFile("f", int64(len(c.data))); err != nil {
				t.Fatal(err)
			}
			if need, from, err := u.OfferResumable(ctx, c.sum, int64(len(c.data))); err != nil || !need || from != 5*cut {
				t.Fatalf("stream %d: offer = %v %d %v", i, need, from, err)
			}
			ups[i] = u
		}
		for i, u := range ups {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := u.Write(c.data[5*cut:]); err != nil {
					t.Error(err)
				}
				if err := u.EndFileHashed(); err != nil {
					t.Error(err)
				}
				if i == 0 {
					if _, err := u.Commit(ctx); err != nil {
						t.Error(err)
					}
				}
			}()
		}
		wg.Wait()
		ups[1].Close()
		checkPublished(t, s, "m", c)
	})
	// A stream whose connection went silent is not closed until keepalive finds it, and has kept
	// nothing on disk until then: a new stream of the session resumes from what it received.
	t.Run("FromAnOpenStream", func(t *testing.T) {
		s, _, dir := openServiceDir(t, registry.Options{})
		c := newResumeChunk(7)
		const cut = 300 << 10
		ctx := context.Background()
		stalled, err := s.OpenUpload(ctx, registry.ModelInfo{Name: "m", Version: "v1"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer stalled.Close()
		if err := stalled.BeginFile("f", int64(len(c.data))); err != nil {
			t.Fatal(err)
		}
		if need, from, err := stalled.OfferResumable(ctx, c.sum, int64(len(c.data))); err != nil || !need || from != 0 {
			t.Fatalf("offer = %v %d %v", need, from, err)
		}
		if err := stalled.Write(c.data[:cut/2]); err != nil {
			t.Fatal(err)
		}
		if err := stalled.Write(c.data[cut/2 : cut]); err != nil {
			t.Fatal(err)
		}
		if _, err := finishPush(t, s, "m", c, cut); err != nil {
			t.Fatal(err)
		}
		checkPublished(t, s, "m", c)
		// The stalled stream ends at last; what it keeps is collected with its session.
		stalled.Close()
		if res, err := s.CollectGarbage(ctx); err != nil || res.Partials != 1 {
			t.Fatalf("GC after the stalled stream ended: %+v, %v; want its partial chunk collected", res, err)
		}
		if ents, err := os.ReadDir(filepath.Join(dir, "uploads")); err != nil || len(ents) != 0 {
			t.Fatalf("uploads after GC: %v, %v", ents, err)
		}
	})
	// The Offer of an older sender is answered as before: the whole chunk.
	t.Run("OfferAsksForWholeChunk", func(t *testing.T) {
		s := openService(t, registry.Options{})
		c := newResumeChunk(5)
		cutPush(t, s, "m", c, 0, 100<<10)
		ctx := context.Background()
		u, err := s.OpenUpload(ctx, registry.ModelInfo{Name: "m", Version: "v1"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		if err := u.BeginFile("f", int64(len(c.data))); err != nil {
			t.Fatal(err)
		}
		if need, err := u.Offer(ctx, c.sum, int64(len(c.data))); err != nil || !need {
			t.Fatalf("offer = %v, %v", need, err)
		}
		if err := u.Write(c.data); err != nil {
			t.Fatal(err)
		}
		if err := u.EndFileHashed(); err != nil {
			t.Fatal(err)
		}
		if _, err := u.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		checkPublished(t, s, "m", c)
	})
}

// TestService_CollectsPartialChunks: the kept parts of chunks of an abandoned push go with its
// session when it expires, and a restart removes those of sessions gone and the temp files a
// crash left.
func TestService_CollectsPartialChunks(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s, db, dir := openServiceDir(t, registry.Options{SessionTTL: time.Hour, Now: clock})
	c := newResumeChunk(6)
	session := cutPush(t, s, "m", c, 0, 600<<10)
	kept := partialPath(dir, session, c.sum)
	if res, err := s.CollectGarbage(ctx); err != nil || res.Partials != 0 {
		t.Fatalf("GC of an unexpired session: %+v, %v", res, err)
	}
	if _, err := os.Stat(kept); err != nil {
		t.Fatalf("GC removed the part of a resumable session: %v", err)
	}
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	res, err := s.CollectGarbage(ctx)
	if err != nil || res.Sessions != 1 || res.Partials != 1 || res.PartialBytes != 600<<10+sha256.Size {
		t.Fatalf("GC of an expired session = %+v, %v; want its partial chunk collected", res, err)
	}
	assertGone(t, filepath.Join(dir, "uploads", session))

	// Leftovers of a crash: a temp file of a resumable session, and the directory of a session
	// whose row is gone.
	session = cutPush(t, s, "m", c, 0, 100<<10)
	tmp := partialPath(dir, session, c.sum) + ".tmp-123"
	if err := os.WriteFile(tmp, []byte("cut by a crash"), 0o600); err != nil {
		t.Fatal(err)
	}
	orphan := filepath.Join(dir, "uploads", "0123456789abcdef0123456789abcdef")
	if err := os.MkdirAll(orphan, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(orphan, hex.EncodeToString(c.sum[:])), c.data[:1000], 0o600); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = registry.New(db, registry.Options{SessionTTL: time.Hour, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	assertGone(t, tmp)
	assertGone(t, orphan)
	if _, err := finishPush(t, s, "m", c, 100<<10); err != nil {
		t.Fatal(err)
	}
	checkPublished(t, s, "m", c)
	if ents, err := os.ReadDir(filepath.Join(dir, "uploads")); err != nil || len(ents) != 0 {
		t.Fatalf("uploads after the last push: %v, %v", ents, err)
	}
}
