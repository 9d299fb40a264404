package registry_test

import (
	"context"
	"errors"
	"testing"

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
