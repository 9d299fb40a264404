package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/buffdb/buffdbd/store"
)

// Options configure a Service. The zero value is usable.
type Options struct {
	// MaxBytes is the disk budget: the bytes of distinct chunks referenced by published versions.
	// 0 means unlimited. After a publish would exceed it, the least recently used versions that are
	// neither pinned nor aliased are evicted; if that is not enough the publish fails with ErrBudget.
	MaxBytes int64
	// SessionTTL is how long an interrupted push stays resumable (its uploaded chunks pinned).
	// Default 24h: long enough to outlast a device's or build server's network outage overnight.
	SessionTTL time.Duration
	// GCInterval, if > 0, runs CollectGarbage that often in the background (until Close).
	GCInterval time.Duration
	// ScrubInterval, if > 0, runs Verify over every chunk that often in the background.
	ScrubInterval time.Duration
	// Metrics receives counters; nil fields are skipped.
	Metrics Metrics
	Logger  *slog.Logger
	// Now is the clock (tests). Default time.Now.
	Now func() time.Time
}

// Metrics are optional observer hooks for the ops layer (Prometheus). Each is called after the event
// it names; nil funcs are ignored. Results are "ok" or an error class ("invalid", "checksum",
// "budget", "canceled", "error") so label values stay bounded.
type Metrics struct {
	Push          func(result string)
	Pull          func(result string)
	BytesReceived func(n int64) // chunk bytes received by pushes and imports
	BytesSent     func(n int64) // file bytes sent by pulls
	BytesDeduped  func(n int64) // chunk bytes a push or pull did not have to move
	Eviction      func(versions int, bytes int64)
	GC            func(res GCResult)
	VerifyFailure func(chunks int)
}

// FrameworkIndex is the store secondary index (hash, $.framework of keys under "model:") that the
// registry creates and uses to filter models by framework.
const FrameworkIndex = "registry_framework"

// Service is the model registry over one store. All methods are safe for concurrent use.
type Service struct {
	db   *store.DB
	opts Options
	log  *slog.Logger

	// pinMu serializes the decisions "this chunk exists, the client need not send it" (Offer) with
	// the deletions of chunks (GC, eviction, delete), so a chunk a live push relies on is never
	// deleted under it. pins counts live in-process references per chunk digest.
	pinMu sync.Mutex
	pins  map[[32]byte]int
	// live counts the open Uploads per session id (under pinMu): GC never collects a session a push
	// in this process is still using, however long it has been running.
	live map[string]int
	// opening counts the OpenUploads of each version (Name and Version) between looking up its
	// session and registering it in live (under pinMu): GC leaves those versions' sessions alone.
	opening map[Ref]int

	// receiving is, per upload session and chunk, the chunk an open Upload of the session is
	// receiving (guarded by recvMu, as are those chunks' kept pieces). A new stream of the session
	// that offers the chunk resumes from the part received so far: the stream it replaces may not
	// have noticed yet that its connection is gone (a stalled link is found by keepalive only
	// after a minute or more), and until it does, it has written no partial file.
	recvMu    sync.Mutex
	receiving map[partKey]*chunkWrite

	// eventMu makes watchers see changes in commit order: each change that emits events (publish,
	// delete, alias set or removed) holds it from before its transaction until its events are
	// published. Without it two concurrent alias moves could commit in one order and be announced
	// in the other, leaving a hot-swapping server on the version the alias no longer names. Taken
	// before pinMu, never after.
	eventMu sync.Mutex

	watch *hub

	closeOnce sync.Once
	closed    chan struct{}
	bgCancel  context.CancelFunc
	bg        sync.WaitGroup
}

// New returns a Service over db, which must have been opened with Migrations among its
// store.Options.Migrations.
func New(db *store.DB, opts Options) (*Service, error) {
	if opts.SessionTTL == 0 {
		opts.SessionTTL = 24 * time.Hour
	}
	if opts.SessionTTL < 0 || opts.MaxBytes < 0 {
		return nil, fmt.Errorf("%w: registry options: session TTL and max bytes must not be negative", ErrInvalid)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{
		db:   db,
		opts: opts,
		log:  opts.Logger,
		pins: map[[32]byte]int{},
		live: map[string]int{},

		opening: map[Ref]int{},

		receiving: map[partKey]*chunkWrite{},
		watch:     newHub(),
		closed:    make(chan struct{}),
	}
	// The framework filter of ListModels uses a store secondary index over the ModelInfo JSON, which
	// BuffDB clients can query too (buffdb.index.Index Find "registry_framework" "onnx").
	_, err := db.CreateIndex(context.Background(), store.IndexDef{Name: FrameworkIndex, Type: store.IndexHash,
		JSONPath: "$.framework", KeyPrefix: "model:"})
	if err != nil && !errors.Is(err, store.ErrExists) {
		s.log.Warn("create the registry's framework index; framework filters scan the version table instead", "err", err)
	}
	// Partly received chunks of sessions that ended while the daemon was down, and temp files of
	// partial chunks a crash cut: nothing writes them yet.
	s.sweepPartials(context.Background(), 0)
	ctx, cancel := context.WithCancel(context.Background())
	s.bgCancel = cancel
	s.every(ctx, opts.GCInterval, "gc", func(ctx context.Context) error {
		_, err := s.CollectGarbage(ctx)
		return err
	})
	s.every(ctx, opts.ScrubInterval, "scrub", func(ctx context.Context) error {
		res, err := s.Verify(ctx, nil, nil)
		if err == nil {
			s.log.Info("registry scrub", "chunks", res.Chunks, "bytes", res.Bytes, "corrupt", len(res.Corrupt))
		}
		return err
	})
	return s, nil
}

// every runs fn every interval (if > 0) on a goroutine the Service owns until Close.
func (s *Service) every(ctx context.Context, interval time.Duration, what string, fn func(context.Context) error) {
	if interval <= 0 {
		return
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := fn(ctx); err != nil && ctx.Err() == nil {
					s.log.Error("registry background "+what+" failed", "err", err)
				}
			}
		}
	}()
}

// Close stops background GC and scrubbing and ends every Watch stream. It does not close the store.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.bgCancel()
		s.bg.Wait()
		s.watch.close()
	})
	return nil
}

// DB returns the underlying store.
func (s *Service) DB() *store.DB { return s.db }

// pin adds in-process references to chunks; the caller holds pinMu.
func (s *Service) pinLocked(sum [32]byte) { s.pins[sum]++ }

// unpin drops in-process references taken by pinLocked.
func (s *Service) unpin(sums [][32]byte) {
	s.pinMu.Lock()
	defer s.pinMu.Unlock()
	for _, sum := range sums {
		if s.pins[sum]--; s.pins[sum] <= 0 {
			delete(s.pins, sum)
		}
	}
}

func (s *Service) metric(f func(string), err error) {
	if f != nil {
		f(resultClass(err))
	}
}

func resultClass(err error) string {
	switch {
	case err == nil:
		return "ok"
	case isAny(err, ErrInvalid, ErrNotFound, ErrExists, ErrAliased, ErrPinned, ErrTooLarge):
		return "invalid"
	case isAny(err, ErrChecksum, ErrResumeMismatch):
		return "checksum"
	case isAny(err, ErrBudget, ErrDiskFull):
		return "budget"
	case isAny(err, context.Canceled, context.DeadlineExceeded):
		return "canceled"
	}
	return "error"
}

func (s *Service) now() time.Time { return s.opts.Now() }
