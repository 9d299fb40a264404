package store

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/semaphore"
)

// Writer pipelines the writes of one client stream through group commit: its methods return at once
// (blocking only when the commit queue is full) and the returned Futures complete in submission
// order, each after its write is durable. If a write fails, later writes of the same Writer are not
// applied and fail with ErrAborted. Writes carrying a txID run inside that transaction (in order,
// after the Writer's earlier writes completed) instead.
type Writer struct {
	db     *DB
	ctx    context.Context // the stream's: a write still queued when it is done is not applied
	failed atomic.Bool
	mu     sync.Mutex
	last   *Future
	// pipe, once started, carries every write of the Writer in submission order to a goroutine that
	// waits for each write's payload preparation and then submits it. It lets several large blobs be
	// hashed and written (and fsynced) concurrently while the stream keeps reading, instead of one
	// after another on the stream's goroutine.
	pipe     chan *slot
	pipeDone chan struct{}
	inflight *semaphore.Weighted
	closed   bool // after Close, writes fail with ErrClosed (and start no goroutines)
}

// slot is one write in the Writer's pipe: o (or err) is valid once ready is closed.
type slot struct {
	fut   *Future
	ready chan struct{}
	o     *op
	err   error
}

const (
	// maxInflightBytes bounds the blob bytes one Writer prepares concurrently (its memory is the
	// callers' buffers, held until the payload file is written). One blob larger than this still
	// proceeds alone. Preparing a 1 MiB payload takes ~3.5 ms here, so 32 in flight allow ~9 GB/s.
	maxInflightBytes = 32 << 20
	// pipeLen is how many writes may wait in a Writer's pipe before the stream blocks.
	pipeLen = 1024
)

// NewWriter returns a Writer. Close it when the stream ends.
func (db *DB) NewWriter() *Writer { return db.NewWriterContext(context.Background()) }

// NewWriterContext returns a Writer whose writes still waiting to be applied when ctx is done (the
// client cancelled, or its deadline passed) fail with ctx's error instead of being applied later:
// a client that saw a write fail must not find it applied after all. The Writer's later writes
// then abort, as after any failure.
func (db *DB) NewWriterContext(ctx context.Context) *Writer { return &Writer{db: db, ctx: ctx} }

// Set queues key=value (see DB.Set).
func (w *Writer) Set(txID, key, value string) *Future {
	if txID != "" {
		return w.inTx(func() (uint64, error) { return 0, w.db.txSet(txID, key, value) })
	}
	return w.push(w.db.setOp(key, value))
}

// Delete queues the deletion of key (see DB.Delete).
func (w *Writer) Delete(txID, key string) *Future {
	if txID != "" {
		return w.inTx(func() (uint64, error) { return 0, w.db.txDelete(txID, key) })
	}
	return w.push(w.db.deleteOp(key))
}

// StoreBlob hashes data (and writes its payload file when large) in the caller's goroutine, then
// queues the row (see DB.StoreBlob). The Future's id is the new blob id.
func (w *Writer) StoreBlob(txID string, data []byte, metadata *string) *Future {
	if txID != "" {
		return w.inTx(func() (uint64, error) { return w.db.txStoreBlob(txID, data, metadata) })
	}
	if int64(len(data)) > w.db.opts.InlineMax {
		return w.pushAsync(int64(len(data)), func() (*op, error) { return w.db.storeBlobOp(data, metadata) })
	}
	o, err := w.db.storeBlobOp(data, metadata)
	if err != nil {
		return w.failNow(err)
	}
	return w.push(o)
}

// UpdateBlob queues an update of blob id (see DB.UpdateBlob).
func (w *Writer) UpdateBlob(txID string, id uint64, u BlobUpdate) *Future {
	if txID != "" {
		return w.inTx(func() (uint64, error) { return id, w.db.txUpdateBlob(txID, id, u) })
	}
	if int64(len(u.Data)) > w.db.opts.InlineMax {
		return w.pushAsync(int64(len(u.Data)), func() (*op, error) { return w.db.updateBlobOp(id, u) })
	}
	o, err := w.db.updateBlobOp(id, u)
	if err != nil {
		return w.failNow(err)
	}
	return w.push(o)
}

// DeleteBlob queues the deletion of blob id (see DB.DeleteBlob).
func (w *Writer) DeleteBlob(txID string, id uint64) *Future {
	if txID != "" {
		return w.inTx(func() (uint64, error) { return id, w.db.txDeleteBlob(txID, id) })
	}
	return w.push(w.db.deleteBlobOp(id))
}

// Close waits for outstanding writes and stops the Writer's pipeline. Writes submitted afterwards
// fail with ErrClosed.
func (w *Writer) Close() {
	w.mu.Lock()
	w.closed = true
	last := w.last
	if w.pipe != nil {
		close(w.pipe)
		<-w.pipeDone
		w.pipe = nil
	}
	w.mu.Unlock()
	if last != nil {
		<-last.done
	}
}

func (w *Writer) push(o *op) *Future {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		if o.after != nil {
			o.after()
		}
		return doneFuture(0, fmt.Errorf("writer closed: %w", ErrClosed))
	}
	if w.failed.Load() {
		if o.after != nil {
			o.after()
		}
		return w.record(doneFuture(0, ErrAborted))
	}
	o.w = w
	if o.ctx == nil {
		o.ctx = w.ctx
	}
	if w.pipe != nil {
		// Behind earlier writes still being prepared.
		s := &slot{fut: newFuture(), ready: make(chan struct{}), o: o}
		close(s.ready)
		w.pipe <- s
		return w.record(s.fut)
	}
	return w.record(w.db.submit(o))
}

// pushAsync queues a write whose payload prep (hashing, payload file write and fsync) runs on its
// own goroutine, bounded by maxInflightBytes per Writer.
func (w *Writer) pushAsync(size int64, prep func() (*op, error)) *Future {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return doneFuture(0, fmt.Errorf("writer closed: %w", ErrClosed))
	}
	if w.failed.Load() {
		return w.record(doneFuture(0, ErrAborted))
	}
	if w.pipe == nil {
		w.pipe = make(chan *slot, pipeLen)
		w.pipeDone = make(chan struct{})
		w.inflight = semaphore.NewWeighted(maxInflightBytes)
		go w.runPipe()
	}
	weight := min(size, maxInflightBytes)
	w.inflight.Acquire(context.Background(), weight)
	s := &slot{fut: newFuture(), ready: make(chan struct{})}
	go func() {
		defer close(s.ready)
		defer w.inflight.Release(weight)
		s.o, s.err = prep()
	}()
	w.pipe <- s
	return w.record(s.fut)
}

// runPipe submits the pipe's writes in order, each once its preparation finished.
func (w *Writer) runPipe() {
	defer close(w.pipeDone)
	for s := range w.pipe {
		<-s.ready
		switch {
		case s.err != nil && w.failed.Swap(true):
			s.fut.complete(0, ErrAborted)
		case s.err != nil:
			s.fut.complete(0, s.err)
		case w.failed.Load():
			s.o.fut = s.fut
			s.o.finish(0, ErrAborted)
		default:
			s.o.fut, s.o.w = s.fut, w
			if s.o.ctx == nil {
				s.o.ctx = w.ctx
			}
			w.db.submit(s.o)
		}
	}
}

// failNow fails a write whose preparation failed (e.g. payload file I/O); it counts as the Writer's
// failure, so later writes abort too.
func (w *Writer) failNow(err error) *Future {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return doneFuture(0, fmt.Errorf("writer closed: %w", ErrClosed))
	}
	if w.failed.Load() {
		return w.record(doneFuture(0, ErrAborted))
	}
	if w.pipe != nil {
		// Earlier writes are still in the pipe: fail in order, after them.
		s := &slot{fut: newFuture(), ready: make(chan struct{}), err: err}
		close(s.ready)
		w.pipe <- s
		return w.record(s.fut)
	}
	w.failed.Store(true)
	return w.record(doneFuture(0, err))
}

// inTx runs a transactional write synchronously after the Writer's earlier writes completed, so
// ordering and abort-after-failure hold across autocommit and transactional writes of one stream.
func (w *Writer) inTx(fn func() (uint64, error)) *Future {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return doneFuture(0, fmt.Errorf("writer closed: %w", ErrClosed))
	}
	if w.last != nil {
		<-w.last.done
	}
	if w.failed.Load() {
		return w.record(doneFuture(0, ErrAborted))
	}
	id, err := fn()
	if err != nil {
		w.failed.Store(true)
	}
	return w.record(doneFuture(id, err))
}

func (w *Writer) record(f *Future) *Future {
	w.last = f
	return f
}

// Future is the outcome of one pipelined write.
type Future struct {
	done chan struct{}
	id   uint64
	err  error
}

func newFuture() *Future { return &Future{done: make(chan struct{})} }

func doneFuture(id uint64, err error) *Future {
	f := newFuture()
	f.complete(id, err)
	return f
}

func (f *Future) complete(id uint64, err error) {
	f.id, f.err = id, err
	close(f.done)
}

// Wait blocks until the write is committed or failed. ID is the new blob id for StoreBlob, the
// affected id for blob writes, 0 for KV writes. If ctx ends first it returns ctx's error; the write
// may still be applied.
func (f *Future) Wait(ctx context.Context) (id uint64, err error) {
	select {
	case <-f.done:
		return f.id, f.err
	default:
	}
	select {
	case <-f.done:
		return f.id, f.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Done is closed when the write has completed; then Wait returns at once.
func (f *Future) Done() <-chan struct{} { return f.done }
