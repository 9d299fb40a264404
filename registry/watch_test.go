package registry_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/registry"
)

func TestService_Watch(t *testing.T) {
	ctx := context.Background()
	s := openService(t, registry.Options{})
	events := make(chan registry.Event, 16)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.Watch(ctx, "m", func() { close(ready) }, func(ev registry.Event) error { events <- ev; return nil })
	}()
	<-ready
	if err := s.Import(ctx, registry.ImportRequest{Info: registry.ModelInfo{Name: "other", Version: "v1"},
		Files: []registry.ImportFile{file("f", []byte("x"))}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Import(ctx, registry.ImportRequest{Info: registry.ModelInfo{Name: "m", Version: "v1"}, Aliases: []string{"prod"},
		Files: []registry.ImportFile{file("f", []byte("y"))}}); err != nil {
		t.Fatal(err)
	}
	// Only model m's events, in commit order: published, then its aliases (sorted).
	want := []registry.Event{
		{Kind: registry.EventPublished, Name: "m", Version: "v1"},
		{Kind: registry.EventAliasSet, Name: "m", Alias: "latest", Version: "v1"},
		{Kind: registry.EventAliasSet, Name: "m", Alias: "prod", Version: "v1"},
	}
	for _, w := range want {
		if got := <-events; got != w {
			t.Fatalf("got %+v, want %+v", got, w)
		}
	}
	// Drain ends the watch (a daemon shutting down) and refuses new ones.
	s.Drain()
	if err := <-done; !errors.Is(err, registry.ErrClosed) {
		t.Fatalf("watch after Drain returned %v, want ErrClosed", err)
	}
	if err := s.Watch(ctx, "", nil, func(registry.Event) error { return nil }); !errors.Is(err, registry.ErrClosed) {
		t.Fatalf("new watch after Drain: %v", err)
	}
}

// TestService_WatchCommitOrder: concurrent alias moves reach a watcher in the order they committed,
// so its last event names the version the alias points at. (Announced after commit without
// ordering, a few rounds in twenty ended on a version the alias no longer named.)
func TestService_WatchCommitOrder(t *testing.T) {
	ctx := context.Background()
	s := openService(t, registry.Options{})
	versions := []string{"v1", "v2", "v3"}
	for _, v := range versions {
		if err := s.Import(ctx, registry.ImportRequest{Info: registry.ModelInfo{Name: "m", Version: v},
			Files: []registry.ImportFile{file("f", []byte(v))}}); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 20 {
		var mu sync.Mutex
		last := ""
		wctx, stop := context.WithCancel(ctx)
		ready := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- s.Watch(wctx, "m", func() { close(ready) }, func(ev registry.Event) error {
				if ev.Kind == registry.EventAliasSet && ev.Alias == "prod" {
					mu.Lock()
					last = ev.Version
					mu.Unlock()
				}
				return nil
			})
		}()
		<-ready
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				for i := range 25 {
					if _, err := s.SetAlias(ctx, "m", "prod", versions[(g+i)%len(versions)]); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		want, err := s.ResolveAlias(ctx, "m", "prod")
		if err != nil {
			t.Fatal(err)
		}
		// Every event is handed to the watcher before SetAlias returns; give its goroutine time to
		// take the last one.
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			got := last
			mu.Unlock()
			if got == want || time.Now().After(deadline) {
				if got != want {
					t.Fatalf("round %d: the watcher's last prod event names %s, prod is %s", round, got, want)
				}
				break
			}
			time.Sleep(time.Millisecond)
		}
		stop()
		<-done
	}
}
