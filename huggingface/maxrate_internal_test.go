package huggingface

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// TestEngine_MaxRateBelowStall: a bandwidth limit so low that a connection waits longer for its
// turn than StallTimeout must not be mistaken for a stall: that would cut the connection, throw
// away what the kernel had buffered, and download it again — more traffic, not less.
func TestEngine_MaxRateBelowStall(t *testing.T) {
	const size = 256 << 10
	fx := newEngineFixture(t, map[string]int{"w.bin": size}, map[string]bool{"w.bin": true})
	// Each 32 KiB read waits 0.25 s for the limiter, and the two connections take turns: a
	// connection waits about 0.5 s between reads, longer than StallTimeout.
	o := EngineOptions{RangeSize: 128 << 10, Concurrency: 2, BufferSize: 32 << 10, MaxRate: 128 << 10, StallTimeout: 300 * time.Millisecond}
	obs := &retryCounter{}
	e := newEngine(fx.client, o, obs, t.TempDir(), fx.repo, fx.commit)
	tk := newTask(fx.file(t, "w.bin"), "w.bin", e.finalPath("w.bin"))
	if err := e.download(context.Background(), tk); err != nil {
		t.Fatal(err)
	}
	fx.assertFile(t, tk, "w.bin")
	if served := fx.hub.BytesServed(); served != size || obs.retries.Load() != 0 {
		t.Fatalf("served %d bytes of a %d-byte file with %d retries: the rate limit's waits were taken for stalls", served, size, obs.retries.Load())
	}
}

type retryCounter struct{ retries atomic.Int64 }

func (r *retryCounter) BytesDownloaded(int64)           {}
func (r *retryCounter) FileDownloaded()                 {}
func (r *retryCounter) RetryObserved(error)             { r.retries.Add(1) }
func (r *retryCounter) DownloadsActive(int)             {}
func (r *retryCounter) FetchDone(string, time.Duration) {}

// TestEngine_SlowLinkProgress: on a slow link bytes reach the file (and so the progress display,
// the journal and a resume) as they arrive, not once per full read buffer: a 1 MiB buffer at
// 128 KiB/s would show nothing for 8 s, and a kill would lose all of it.
func TestEngine_SlowLinkProgress(t *testing.T) {
	fx := newEngineFixture(t, map[string]int{"w.bin": 1 << 20}, map[string]bool{"w.bin": true})
	fx.hub.Throttle(128 << 10)
	e := newEngine(fx.client, EngineOptions{Concurrency: 1, BufferSize: 1 << 20}, nil, t.TempDir(), fx.repo, fx.commit)
	tk := newTask(fx.file(t, "w.bin"), "w.bin", e.finalPath("w.bin"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- e.download(ctx, tk) }()
	var first int64
	for first == 0 {
		select {
		case err := <-errc:
			t.Fatalf("download ended (%v) before any progress was seen", err)
		case <-time.After(time.Millisecond):
		}
		first = tk.done.Load()
	}
	cancel()
	<-errc
	if first >= 512<<10 {
		t.Fatalf("first progress at %d bytes: bytes wait for the read buffer to fill", first)
	}
}
