package registry

import (
	"context"
	"errors"
	"sync"
)

// EventKind says what changed.
type EventKind int

const (
	// EventPublished: a version was published (Version).
	EventPublished EventKind = iota + 1
	// EventDeleted: a version was deleted by a user (Version).
	EventDeleted
	// EventEvicted: a version was evicted to fit the disk budget (Version).
	EventEvicted
	// EventAliasSet: Alias now points at Version (Previous is the version it left, "" if new).
	EventAliasSet
	// EventAliasRemoved: Alias no longer exists (Previous is the version it pointed at).
	EventAliasRemoved
)

// String names the kind as the CLI prints it.
func (k EventKind) String() string {
	switch k {
	case EventPublished:
		return "published"
	case EventDeleted:
		return "deleted"
	case EventEvicted:
		return "evicted"
	case EventAliasSet:
		return "alias_set"
	case EventAliasRemoved:
		return "alias_removed"
	}
	return "unknown"
}

// Event reports one committed change to a model. Events are delivered after the transaction that
// made the change has committed, in commit order per model.
type Event struct {
	Kind     EventKind
	Name     string
	Version  string
	Alias    string
	Previous string
}

// ErrWatchLagged ends a Watch whose consumer fell more than watchBuffer events behind; the client
// should re-read the current state and watch again.
var ErrWatchLagged = errors.New("watcher fell behind; re-read state and watch again")

// watchBuffer is how many events a slow watcher may lag before it is cut off; far more than one
// publish produces (1 + aliases + evictions), so only a stuck consumer hits it.
const watchBuffer = 256

type hub struct {
	mu     sync.Mutex
	subs   map[*watcher]struct{}
	closed bool
}

type watcher struct {
	name string
	ch   chan Event
	err  error // set before ch is closed
}

func newHub() *hub { return &hub{subs: map[*watcher]struct{}{}} }

func (h *hub) publish(evs ...Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for w := range h.subs {
		for _, ev := range evs {
			if w.name != "" && w.name != ev.Name {
				continue
			}
			select {
			case w.ch <- ev:
			default:
				w.err = ErrWatchLagged
				close(w.ch)
				delete(h.subs, w)
			}
			if w.err != nil {
				break
			}
		}
	}
}

// Drain ends every Watch stream (with ErrClosed, which clients see as UNAVAILABLE and retry
// elsewhere or later) and refuses new ones, so a graceful server stop is not held up by watchers
// that never hang up. Pushes and pulls are unaffected.
func (s *Service) Drain() { s.watch.close() }

func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for w := range h.subs {
		w.err = ErrClosed
		close(w.ch)
		delete(h.subs, w)
	}
}

// Watch calls fn for each change to model name ("" for every model) until ctx ends (returning
// ctx.Err()), fn returns an error (returned), the watcher lags (ErrWatchLagged) or the Service
// closes (ErrClosed). ready, if non-nil, is called once the subscription is live, so a caller can
// read the current state afterwards without missing a change.
func (s *Service) Watch(ctx context.Context, name string, ready func(), fn func(Event) error) error {
	if name != "" {
		if err := ValidateName(name); err != nil {
			return err
		}
	}
	w := &watcher{name: name, ch: make(chan Event, watchBuffer)}
	s.watch.mu.Lock()
	if s.watch.closed {
		s.watch.mu.Unlock()
		return ErrClosed
	}
	s.watch.subs[w] = struct{}{}
	s.watch.mu.Unlock()
	defer func() {
		s.watch.mu.Lock()
		delete(s.watch.subs, w)
		s.watch.mu.Unlock()
	}()
	if ready != nil {
		ready()
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-w.ch:
			if !ok {
				return w.err
			}
			if err := fn(ev); err != nil {
				return err
			}
		}
	}
}
