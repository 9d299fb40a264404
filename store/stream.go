package store

import (
	"context"
	"fmt"
	"os"
	"time"
)

// defaultStalledReadWALBytes is Options.StalledReadWALBytes's default: four times the WAL's
// journal_size_limit. Without a stalled read the WAL stays near that limit (a group commit of 16384
// 1 KiB values writes ~70 MiB of pages), so only a read that pins a snapshot while writes go on
// gets it this far.
const defaultStalledReadWALBytes = 256 << 20

// stallCheckInterval is how long a streaming read waits for its consumer before it looks at the
// WAL, and how often it looks again while it keeps waiting: a consumer that takes the rows within
// it is never checked, and one stat per second per waiting read costs nothing. A variable so tests
// need not wait it out.
var stallCheckInterval = time.Second

// stalledReadEnded, when set (by tests), is called after a read ended by checkStalledRead has
// released its snapshot.
var stalledReadEnded func()

// A streaming read hands rows to its consumer in batches of up to this many bytes or rows: enough
// to amortise the hand-over when the consumer is slower than SQLite, small enough that the rows read
// ahead (at most three batches: one being consumed, one handed over, one filling) cost little memory.
const (
	handoffBatchBytes = 256 << 10
	handoffBatchRows  = 256
)

// streamRead runs read, which holds a SQLite read snapshot while it emits rows, on its own
// goroutine, and calls fn with each row on the caller's. fn may block for as long as its consumer
// likes (a gRPC client that stops reading a Query or Find stream), but an open read keeps SQLite
// from checkpointing the WAL past its snapshot, so the WAL grows with every write meanwhile (by
// ~4.5 KiB per 1 KiB KV write, measured: 450 MiB after 100k writes, against a steady ~64 MiB).
// read therefore waits for fn only as long as the WAL stays within Options.StalledReadWALBytes:
// beyond it, read ends (releasing its snapshot and connection) and streamRead returns ErrAborted
// after fn has had the rows handed over before. A consumer that keeps up, or a slow one on a store
// that is not being written, is never cut off. fn returning an error stops the read and is returned.
func streamRead[T any](ctx context.Context, db *DB, read func(ctx context.Context, emit func(T) error) error,
	size func(T) int, fn func(T) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The WAL as the read starts: a log already past the limit (one big transaction, an earlier
	// stalled read, with no write since to reset it) is not this read's doing, and on a store
	// that is not written it stays that size, so only growth past it counts against the read.
	start := db.walSize()
	ch := make(chan []T, 1)
	errc := make(chan error, 1)
	go func() {
		defer close(ch)
		var batch []T
		bytes := 0
		stopped, stalled := false, false // handOver failed: the consumer gets no more rows; why
		handOver := func(wait bool) error {
			select {
			case ch <- batch: // the consumer is keeping up: hand over what there is
				batch, bytes = nil, 0
				return nil
			default:
			}
			if !wait {
				return nil // read ahead while the consumer is busy
			}
			t := time.NewTicker(stallCheckInterval)
			defer t.Stop()
			for {
				select {
				case ch <- batch:
					batch, bytes = nil, 0
					return nil
				case <-ctx.Done():
					return ctx.Err()
				case <-t.C:
					if err := db.checkStalledRead(start); err != nil {
						stalled = true
						return err
					}
				}
			}
		}
		err := read(ctx, func(v T) error {
			batch = append(batch, v)
			bytes += size(v)
			if err := handOver(bytes >= handoffBatchBytes || len(batch) >= handoffBatchRows); err != nil {
				stopped = true
				return err
			}
			return nil
		})
		// The rows read before the end (or before an SQL error) still reach the consumer, as
		// they did when it was called from the read itself.
		if !stopped && len(batch) > 0 {
			if herr := handOver(true); herr != nil {
				err = herr
			}
		}
		if stalled && stalledReadEnded != nil {
			stalledReadEnded()
		}
		errc <- err
	}()
	for b := range ch {
		for _, v := range b {
			if err := fn(v); err != nil {
				cancel()
				for range ch { // let the read see the cancellation and end
				}
				<-errc
				return err
			}
		}
	}
	return <-errc
}

// walSize is the size of the WAL file, 0 if it cannot be read.
func (db *DB) walSize() int64 {
	fi, err := os.Stat(db.path + "-wal")
	if err != nil {
		return 0
	}
	return fi.Size()
}

// checkStalledRead returns ErrAborted, naming the limit, when the WAL has grown past
// Options.StalledReadWALBytes and past start, its size when the read began.
func (db *DB) checkStalledRead(start int64) error {
	limit := db.opts.StalledReadWALBytes
	if limit < 0 {
		return nil
	}
	fi, err := os.Stat(db.path + "-wal")
	if err != nil || fi.Size() <= max(limit, start) {
		return nil
	}
	return fmt.Errorf("%w: read ended because its client was not taking the rows while the store's write-ahead log grew to %d MiB, "+
		"past the stalled-read limit of %d MiB (store.stalled_read_wal_bytes): an open read keeps the log from being checkpointed; "+
		"read the rows as they arrive, or fetch fewer at a time (LIMIT, --after)", ErrAborted, fi.Size()>>20, limit>>20)
}

// rowSize estimates the memory of a raw SQL row.
func rowSize(r queryRow) int {
	n := 0
	for _, v := range r.row {
		switch v := v.(type) {
		case string:
			n += len(v)
		case []byte:
			n += len(v)
		}
		n += 16
	}
	return n
}

// hitSize estimates the memory of an index hit.
func hitSize(h Hit) int { return len(h.Key) + len(h.Value) + len(h.Indexed) + 48 }

// queryRow is one row of raw SQL with its columns (nil row: the columns of an empty result).
type queryRow struct {
	cols []string
	row  []any
}
