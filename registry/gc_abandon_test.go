package registry_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/registry"
)

// TestService_CollectGarbageWithAbandonUploads: an interrupted push's session (its stored chunks
// and its partly received chunk) is dropped on request before it expires, so its disk space is
// freed at once; a session a push is streaming to never is; the next push of a dropped version
// starts over and publishes a sound version. Before, nothing dropped a session before its expiry
// (24h): a push that failed on a full disk kept the disk full for a day.
func TestService_CollectGarbageWithAbandonUploads(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	s, _, dir := openServiceDir(t, registry.Options{Now: clock})

	// The interrupted push of m:v1: chunk c1 stored, chunk c2 cut half way.
	c1, c2 := newResumeChunk(11), newResumeChunk(12)
	whole := append(append([]byte(nil), c1.data...), c2.data...)
	u, err := s.OpenUpload(ctx, registry.ModelInfo{Name: "m", Version: "v1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.BeginFile("f", int64(len(whole))); err != nil {
		t.Fatal(err)
	}
	for _, c := range []resumeChunk{c1, c2} {
		if need, from, err := u.OfferResumable(ctx, c.sum, int64(len(c.data))); err != nil || !need || from != 0 {
			t.Fatalf("offer = %v %d %v", need, from, err)
		}
	}
	if err := u.Write(whole[:len(c1.data)+len(c2.data)/2]); err != nil {
		t.Fatal(err)
	}
	cut := u.Session()
	u.Close()
	if _, err := os.Stat(partialPath(dir, cut, c2.sum)); err != nil {
		t.Fatalf("the cut chunk was not kept: %v", err)
	}

	// A push of m:v2 streaming (open) the whole time, with its chunk c3 stored.
	c3 := newResumeChunk(13)
	live, err := s.OpenUpload(ctx, registry.ModelInfo{Name: "m", Version: "v2"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if err := live.BeginFile("f", int64(len(c3.data))); err != nil {
		t.Fatal(err)
	}
	if need, err := live.Offer(ctx, c3.sum, int64(len(c3.data))); err != nil || !need {
		t.Fatalf("offer = %v %v", need, err)
	}
	if err := live.Write(c3.data); err != nil {
		t.Fatal(err)
	}
	advance(3 * time.Hour)

	// The routine collection keeps both, and says what they hold.
	res, err := s.CollectGarbage(ctx)
	if err != nil || res.Abandoned != 0 || res.Chunks != 0 || res.KeptSessions != 2 || res.LiveSessions != 1 {
		t.Fatalf("plain gc = %+v, %v; want both sessions kept", res, err)
	}
	// c3's writer may still be storing it: only c1 is sure to be counted.
	if res.KeptBytes < int64(len(c1.data)) {
		t.Fatalf("plain gc: kept sessions hold %d bytes, want at least c1's %d", res.KeptBytes, len(c1.data))
	}
	// Idle for 3h: not dropped when asked for 4h.
	res, err = s.CollectGarbageWith(ctx, registry.GCOptions{AbandonUploads: true, IdleFor: 4 * time.Hour})
	if err != nil || res.Abandoned != 0 || res.KeptSessions != 2 {
		t.Fatalf("gc of sessions idle 4h = %+v, %v; want none dropped", res, err)
	}
	// The streaming push is never dropped, even named.
	res, err = s.CollectGarbageWith(ctx, registry.GCOptions{AbandonUploads: true, Versions: []registry.Ref{{Name: "m", Version: "v2"}}})
	if err != nil || res.Abandoned != 0 || res.LiveSessions != 1 {
		t.Fatalf("gc of the live m:v2 = %+v, %v; want it kept", res, err)
	}
	if _, err := s.CollectGarbageWith(ctx, registry.GCOptions{AbandonUploads: true, Versions: []registry.Ref{{Name: "m", Alias: "prod"}}}); !errors.Is(err, registry.ErrInvalid) {
		t.Fatalf("gc of an alias's session: %v, want ErrInvalid", err)
	}

	res, err = s.CollectGarbageWith(ctx, registry.GCOptions{AbandonUploads: true, IdleFor: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if res.Abandoned != 1 || res.Sessions != 0 || res.Chunks != 1 || res.Bytes != int64(len(c1.data)) ||
		res.Partials != 1 || res.PartialBytes != int64(len(c2.data)/2+sha256.Size) || res.KeptSessions != 1 || res.LiveSessions != 1 {
		t.Fatalf("gc of sessions idle 2h = %+v; want m:v1's session, c1 and c2's partial file dropped, m:v2 kept", res)
	}
	assertGone(t, payloadPath(dir, c1.sum))
	assertGone(t, partialPath(dir, cut, c2.sum))

	// The streaming push still publishes, its chunk intact.
	if err := live.EndFileHashed(); err != nil {
		t.Fatal(err)
	}
	if _, err := live.Commit(ctx); err != nil {
		t.Fatalf("commit of the push gc left alone: %v", err)
	}
	ref := registry.Ref{Name: "m", Version: "v2"}
	if vr, err := s.Verify(ctx, &ref, nil); err != nil || len(vr.Corrupt) != 0 || vr.Chunks != 1 {
		t.Fatalf("verify m:v2 = %+v, %v", vr, err)
	}

	// The next push of m:v1 starts over: a new session, every byte asked for again.
	u, err = s.OpenUpload(ctx, registry.ModelInfo{Name: "m", Version: "v1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if u.Resumed() || u.Session() == cut {
		t.Fatalf("push after the drop: resumed %v, session %s (dropped %s); want a new session", u.Resumed(), u.Session(), cut)
	}
	if err := u.BeginFile("f", int64(len(whole))); err != nil {
		t.Fatal(err)
	}
	for _, c := range []resumeChunk{c1, c2} {
		if need, from, err := u.OfferResumable(ctx, c.sum, int64(len(c.data))); err != nil || !need || from != 0 {
			t.Fatalf("offer after the drop = need %v from %d, %v; want the whole chunk", need, from, err)
		}
	}
	if err := u.Write(whole); err != nil {
		t.Fatal(err)
	}
	if err := u.EndFileHashed(); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	vi, err := s.Show(ctx, registry.Ref{Name: "m", Version: "v1"})
	if err != nil || len(vi.Files) != 1 || vi.Files[0].SHA256 != registry.Digest(sha256.Sum256(whole)) {
		t.Fatalf("m:v1 after the retried push: %+v, %v", vi, err)
	}
	if st, err := s.Stats(ctx); err != nil || st.SessionsOpen != 0 || st.Chunks != 3 {
		t.Fatalf("stats = %+v, %v; want no session left and the 3 chunks stored", st, err)
	}
}

// TestService_CollectGarbageWithAbandonRacesOpen: pushes that open, resume and commit while gc
// drops every idle session all publish sound versions; none records chunks against a session gc
// dropped under it (OpenUpload registers the session live, then confirms it still exists).
func TestService_CollectGarbageWithAbandonRacesOpen(t *testing.T) {
	ctx := context.Background()
	s := openService(t, registry.Options{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := s.CollectGarbageWith(ctx, registry.GCOptions{AbandonUploads: true}); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := range 20 {
		data := randomBytes(uint64(100+i), 64<<10)
		v := "v" + string(rune('a'+i))
		for attempt := 0; attempt < 2; attempt++ { // an interrupted push, then the full one
			u, err := s.OpenUpload(ctx, registry.ModelInfo{Name: "race", Version: v}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := u.BeginFile("f", int64(len(data))); err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(data)
			need, err := u.Offer(ctx, sum, int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			if need {
				if err := u.Write(data); err != nil {
					t.Fatal(err)
				}
			}
			if err := u.EndFileHashed(); err != nil {
				t.Fatal(err)
			}
			if attempt == 1 {
				if _, err := u.Commit(ctx); err != nil {
					t.Fatalf("push %s: %v", v, err)
				}
			}
			u.Close()
		}
		ref := registry.Ref{Name: "race", Version: v}
		if vr, err := s.Verify(ctx, &ref, nil); err != nil || len(vr.Corrupt) != 0 || vr.Chunks != 1 {
			t.Fatalf("verify %s = %+v, %v", v, vr, err)
		}
	}
	close(stop)
	wg.Wait()
}
