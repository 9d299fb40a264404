package store

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
)

// Group commit limits.
const (
	// queueLen is how many submitted writes may wait for the committer before submitters block.
	// A batch's throughput is B/(B·c + F) for B writes of CPU cost c (~3 µs) and one commit fsync F;
	// on slow edge storage F is 10–50 ms, so batches must be allowed to grow to ~16k writes to stay
	// near 1/c, and the queue must hold the next full batch while one commits.
	queueLen = 32768
	// maxBatchOps caps one transaction (~50 ms of work when full; under light load batches are small
	// and latency is one commit).
	maxBatchOps = 16384
	// maxQueuedBytes bounds the key/value/inline-blob bytes waiting in the queue, so a flood of
	// 16 KiB inline blobs cannot pin queueLen × 16 KiB of memory.
	maxQueuedBytes = 64 << 20
	// maxBatchBytes caps inline bytes per transaction, bounding WAL growth per commit.
	maxBatchBytes = 32 << 20
)

// op is one write queued for the committer.
type op struct {
	ctx context.Context // if done before the op runs, the op is skipped with ctx's error
	w   *Writer         // nil for DB-level writes
	// fn applies the write inside the batch transaction and returns the affected blob id (0 for KV).
	fn func(t *wtx) (uint64, error)
	// atomic marks single-statement writes: SQLite already rolls back a failed statement (with all
	// its trigger effects) without touching the transaction, so they skip the SAVEPOINT round trips
	// that a multi-statement op needs. This is what makes 100k small writes/s reachable.
	atomic bool
	size   int
	fut    *Future
	after  func() // runs after the op's outcome is known (commit or failure): releases pins
	// orphan runs after after when the op failed: it removes the payload file the op wrote, unless
	// something else references or pins it. Left alone it would hold its disk space until the next
	// garbage collection, which matters most when the failure was a full disk.
	orphan func()
	db     *DB // set while the op holds weight in db.queuedBytes
	weight int64
}

// wtx is the write context of one SQLite write transaction: the committer's current batch, a
// read-write client transaction, or the savepointed op of an Update.
type wtx struct {
	db  *DB
	ctx context.Context
	q   querier
	// unrefs are payloads whose last reference this transaction dropped; after COMMIT their files are
	// unlinked (unless re-referenced or pinned meanwhile).
	unrefs [][32]byte
	// pins are payloads written during the transaction (Tx.StoreBlob); released after it ends.
	pins []*pin
}

func (t *wtx) releasePins() {
	for _, p := range t.pins {
		p.release()
	}
	t.pins = nil
}

// dropPins releases the pins of a transaction that rolled back and removes the payload files that
// only it wanted (see op.orphan).
func (t *wtx) dropPins() {
	pins := t.pins
	t.releasePins()
	t.db.removeOrphans(pins)
}

// submit queues o for the committer, or fails it with ErrClosed.
func (db *DB) submit(o *op) *Future {
	if o.fut == nil {
		o.fut = newFuture()
	}
	db.closeMu.RLock()
	if db.closed.Load() {
		db.closeMu.RUnlock()
		o.finish(0, ErrClosed)
		return o.fut
	}
	o.weight = min(int64(o.size), maxQueuedBytes)
	db.queuedBytes.Acquire(context.Background(), o.weight)
	o.db = db
	db.queue <- o
	db.closeMu.RUnlock()
	return o.fut
}

func (o *op) finish(id uint64, err error) {
	if o.after != nil {
		o.after()
	}
	if err != nil && o.orphan != nil {
		o.orphan()
	}
	if o.db != nil {
		o.db.queuedBytes.Release(o.weight)
		o.db = nil
	}
	o.fut.complete(id, err)
}

// do runs one write through group commit and waits for it.
func (db *DB) do(ctx context.Context, o *op) (uint64, error) {
	o.ctx = ctx
	return db.submit(o).Wait(ctx)
}

// commitLoop is the group committer: it takes whatever writes are queued (up to the batch caps),
// applies them in one SQLite transaction on the single writer connection, commits once, and only then
// completes their Futures. While a batch commits, the next one accumulates in the queue, so the cost
// of each fsync is shared by every write that arrived meanwhile.
func (db *DB) commitLoop() {
	defer close(db.done)
	batch := make([]*op, 0, maxBatchOps)
	results := make([]result, 0, maxBatchOps)
	for {
		first, ok := <-db.queue
		if !ok {
			return
		}
		batch = append(batch[:0], first)
		bytes := first.size
	fill:
		for len(batch) < maxBatchOps && bytes < maxBatchBytes {
			select {
			case o, ok := <-db.queue:
				if !ok {
					break fill
				}
				batch = append(batch, o)
				bytes += o.size
			default:
				break fill
			}
		}
		results = db.runBatch(batch, results[:0])
		for i, o := range batch {
			o.finish(results[i].id, results[i].err)
			batch[i] = nil
		}
	}
}

type result struct {
	id  uint64
	err error
}

func (db *DB) runBatch(batch []*op, results []result) []result {
	ctx := context.Background()
	db.writeLock <- struct{}{}
	defer func() { <-db.writeLock }()

	t := &wtx{db: db, ctx: ctx, q: &db.wq}
	fail := func(err error) []result {
		results = results[:0]
		for _, o := range batch {
			if o.w != nil {
				o.w.failed.Store(true)
			}
			results = append(results, result{err: err})
		}
		return results
	}
	if _, err := t.q.exec(ctx, "BEGIN IMMEDIATE"); err != nil {
		return fail(fmt.Errorf("begin: %w", err))
	}
	for _, o := range batch {
		var r result
		switch {
		case o.w != nil && o.w.failed.Load():
			r.err = ErrAborted
		case o.ctx != nil && o.ctx.Err() != nil:
			r.err = o.ctx.Err()
		case o.atomic:
			r.id, r.err = db.call(t, o.fn)
		default:
			r.id, r.err = db.savepoint(t, o.fn)
		}
		if r.err != nil && o.w != nil {
			// Set before the Future completes, so a submit racing the completion also sees it.
			o.w.failed.Store(true)
		}
		if txLost(r.err) {
			// SQLite rolled the whole transaction back (disk full, I/O error): later statements
			// would run in autocommit mode, so nothing more may run in this batch.
			t.q.exec(ctx, "ROLLBACK")
			t.dropPins()
			return fail(fmt.Errorf("batch rolled back: %w", r.err))
		}
		results = append(results, r)
	}
	if _, err := t.q.exec(ctx, "COMMIT"); err != nil {
		t.q.exec(ctx, "ROLLBACK")
		t.dropPins()
		return fail(fmt.Errorf("commit: %w", mapErr(err)))
	}
	// Pins first, so a payload stored and deleted within this batch is not spared by its own pin;
	// removeIfOrphan re-checks pins and rows, so concurrent writers stay safe.
	for _, o := range batch {
		if o.after != nil {
			o.after()
			o.after = nil
		}
	}
	t.releasePins()
	db.unlinkUnreferenced(t.unrefs)
	return results
}

// savepoint runs fn inside a SAVEPOINT so that its failure undoes only its own changes.
func (db *DB) savepoint(t *wtx, fn func(t *wtx) (uint64, error)) (uint64, error) {
	if _, err := t.q.exec(t.ctx, "SAVEPOINT op"); err != nil {
		return 0, err
	}
	mark, pins := len(t.unrefs), len(t.pins)
	id, err := db.call(t, fn)
	if err != nil {
		_, rerr := t.q.exec(t.ctx, "ROLLBACK TO op")
		t.unrefs = t.unrefs[:mark]
		for _, p := range t.pins[pins:] {
			p.release()
		}
		t.pins = t.pins[:pins]
		if rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	if _, rerr := t.q.exec(t.ctx, "RELEASE op"); rerr != nil && err == nil {
		return 0, rerr
	}
	return id, err
}

// call runs fn, turning a panic (a bug in an Update fn of a layered package) into that op's error,
// so it fails alone instead of killing the committer and with it every later write.
func (db *DB) call(t *wtx, fn func(t *wtx) (uint64, error)) (id uint64, err error) {
	defer func() {
		if r := recover(); r != nil {
			db.log.Error("write panicked", "panic", r, "stack", string(debug.Stack()))
			id, err = 0, fmt.Errorf("write panicked: %v", r)
		}
	}()
	return fn(t)
}
