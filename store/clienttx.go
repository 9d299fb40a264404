package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"sync"
	"time"
)

// clientTx is a transaction begun over the API (BeginTransaction). It owns a dedicated connection
// for its whole life. A read-write one also owns writeLock: autocommit writes queue behind it, which
// is the price of SQLite's single writer — bounded by the transaction's timeout.
type clientTx struct {
	id       string
	readOnly bool
	mu       sync.Mutex // serializes the transaction's statements and its ending
	conn     *sql.Conn
	q        *connQ
	w        *wtx // nil for read-only
	timer    *time.Timer
	ended    bool
	// expiring is canceled when the deadline passes, before the janitor waits for mu: a streaming
	// lookup that holds mu while its consumer is stalled (streamInTx) gives the transaction up.
	expiring context.Context
	stop     context.CancelFunc
}

// maxExpiredIDs bounds the memory spent remembering expired ids (only used to word the error).
const maxExpiredIDs = 1024

// Begin starts a transaction and returns its id. timeout 0 means Options.DefaultTxTimeout; larger
// than MaxTxTimeout is capped; negative is ErrInvalid. A transaction not ended by its deadline is
// rolled back; its id then gives ErrNotFound. More than MaxOpenTx open transactions: ErrTooLarge.
// A read-write Begin waits (bounded by ctx) while another read-write transaction is open.
func (db *DB) Begin(ctx context.Context, readOnly bool, timeout time.Duration) (string, error) {
	if err := db.checkOpen(); err != nil {
		return "", err
	}
	switch {
	case timeout < 0:
		return "", fmt.Errorf("transaction timeout %v: must not be negative: %w", timeout, ErrInvalid)
	case timeout == 0:
		timeout = db.opts.DefaultTxTimeout
	case timeout > db.opts.MaxTxTimeout:
		timeout = db.opts.MaxTxTimeout
	}
	db.txMu.Lock()
	if db.openTx >= db.opts.MaxOpenTx {
		db.txMu.Unlock()
		return "", fmt.Errorf("%d transactions open, the maximum: %w", db.opts.MaxOpenTx, ErrTooLarge)
	}
	db.openTx++ // reserved now: a read-write Begin may wait for writeLock below
	db.txMu.Unlock()
	t, err := db.begin(ctx, readOnly)
	if err != nil {
		db.txMu.Lock()
		db.openTx--
		db.txMu.Unlock()
		return "", err
	}
	db.txMu.Lock()
	if db.closed.Load() {
		db.txMu.Unlock()
		db.endTx(t, false)
		return "", ErrClosed
	}
	db.txs[t.id] = t
	db.txMu.Unlock()
	// Under t.mu, which expire takes first, so the timer's callback sees t.timer set (txMu must
	// not be held here: expire takes t.mu, then txMu).
	t.mu.Lock()
	t.timer = time.AfterFunc(timeout, func() {
		t.stop()
		db.expire(t)
	})
	t.mu.Unlock()
	return t.id, nil
}

func (db *DB) begin(ctx context.Context, readOnly bool) (*clientTx, error) {
	var b [16]byte // 128 random bits: ids are capabilities, so they must not be guessable
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	t := &clientTx{id: hex.EncodeToString(b[:]), readOnly: readOnly}
	t.expiring, t.stop = context.WithCancel(context.Background())
	pool := db.rdb
	if !readOnly {
		select {
		case db.writeLock <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		pool = db.wdb
	}
	conn, err := pool.Conn(ctx)
	if err == nil {
		begin := "BEGIN IMMEDIATE"
		if readOnly {
			// A deferred BEGIN plus one read pins the snapshot now, not at the first client read.
			begin = "BEGIN; SELECT 1 FROM kv LIMIT 1"
		}
		if _, err = conn.ExecContext(ctx, begin); err != nil {
			conn.Close()
		}
	}
	if err != nil {
		if !readOnly {
			<-db.writeLock
		}
		return nil, fmt.Errorf("begin transaction: %w", mapErr(err))
	}
	t.conn = conn
	t.q = newConnQ(conn)
	if !readOnly {
		t.w = &wtx{db: db, ctx: context.Background(), q: t.q}
	}
	return t, nil
}

// lockTx returns open transaction id with its mutex held (the caller unlocks t.mu), or ErrNotFound
// (saying so when it was rolled back by its timeout) if it is unknown or already ended.
func (db *DB) lockTx(id string) (*clientTx, error) {
	if err := db.checkOpen(); err != nil {
		return nil, err
	}
	db.txMu.Lock()
	t := db.txs[id]
	expired := db.expired[id]
	db.txMu.Unlock()
	if t == nil {
		return nil, db.txNotFound(id, expired)
	}
	t.mu.Lock()
	if t.ended {
		t.mu.Unlock()
		return nil, db.txNotFound(id, false)
	}
	return t, nil
}

// withTx runs fn on open transaction id, serialized with its other statements.
func (db *DB) withTx(_ context.Context, id string, write bool, fn func(t *clientTx) error) error {
	t, err := db.lockTx(id)
	if err != nil {
		return err
	}
	defer t.mu.Unlock()
	if write && t.readOnly {
		return fmt.Errorf("transaction %q is read-only: %w", id, ErrReadOnly)
	}
	err = fn(t)
	if txLost(err) {
		// SQLite may have rolled the transaction back itself; continuing would autocommit later
		// statements one by one. End it: its id now gives ErrNotFound.
		db.log.Warn("transaction lost after error; rolled back", "tx", id, "err", err)
		db.endTx(t, false)
		return fmt.Errorf("transaction %q rolled back: %v: %w", id, err, ErrAborted)
	}
	return err
}

// streamInTx runs lookup on open transaction id and calls fn for each key/value it emits, but not
// while holding the transaction: fn may block for as long as its consumer wants (a gRPC client that
// stops reading a Find stream), and a read-write transaction holds the store's only writer. The
// lookup hands rows over through a small buffer on its own goroutine and stops, releasing the
// transaction, when the transaction's deadline passes, so the janitor can still roll it back and
// writers wait no longer than the timeout promised.
func (db *DB) streamInTx(ctx context.Context, id string, lookup func(ctx context.Context, q querier, emit func(Hit) error) error,
	fn func(Hit) error) error {
	ch := make(chan Hit, 64)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		defer close(ch)
		errc <- db.withTx(ctx, id, false, func(t *clientTx) error {
			return lookup(ctx, t.q, func(h Hit) error {
				select {
				case ch <- h:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				case <-t.expiring.Done():
					return db.txNotFound(id, true)
				}
			})
		})
	}()
	for h := range ch {
		if err := fn(h); err != nil {
			cancel()
			for range ch { // let the lookup see the cancellation and end
			}
			<-errc
			return err
		}
	}
	return <-errc
}

func (db *DB) txNotFound(id string, expired bool) error {
	if expired {
		return fmt.Errorf("transaction %q expired and was rolled back: %w", id, ErrNotFound)
	}
	return fmt.Errorf("transaction %q: %w", id, ErrNotFound)
}

func (db *DB) txSet(id, key, value string) error {
	return db.withTx(context.Background(), id, true, func(t *clientTx) error { return t.w.set(key, value) })
}

func (db *DB) txDelete(id, key string) error {
	return db.withTx(context.Background(), id, true, func(t *clientTx) error { return t.w.delete(key) })
}

func (db *DB) txStoreBlob(id string, data []byte, metadata *string) (uint64, error) {
	var blobID uint64
	err := db.withTx(context.Background(), id, true, func(t *clientTx) error {
		c, err := db.prepare(data)
		if err != nil {
			return err
		}
		// The pin lives until the transaction ends: the file must survive until the row commits.
		blobID, err = db.savepoint(t.w, func(w *wtx) (uint64, error) {
			if c.pin != nil {
				w.pins = append(w.pins, c.pin)
			}
			return w.insertBlob(c, metadata)
		})
		return err
	})
	return blobID, err
}

func (db *DB) txUpdateBlob(id string, blobID uint64, u BlobUpdate) error {
	return db.withTx(context.Background(), id, true, func(t *clientTx) error {
		var c *content
		if u.Data != nil {
			cc, err := db.prepare(u.Data)
			if err != nil {
				return err
			}
			c = &cc
		}
		_, err := db.savepoint(t.w, func(w *wtx) (uint64, error) {
			if c != nil && c.pin != nil {
				w.pins = append(w.pins, c.pin)
			}
			return 0, w.updateBlob(blobID, u, c)
		})
		return err
	})
}

func (db *DB) txDeleteBlob(id string, blobID uint64) error {
	return db.withTx(context.Background(), id, true, func(t *clientTx) error {
		_, err := db.savepoint(t.w, func(w *wtx) (uint64, error) { return 0, w.deleteBlob(blobID) })
		return err
	})
}

// Commit commits transaction id durably; ErrNotFound if unknown (or already ended/expired).
func (db *DB) Commit(ctx context.Context, id string) error {
	return db.finish(id, true)
}

// Rollback discards transaction id; ErrNotFound if unknown.
func (db *DB) Rollback(ctx context.Context, id string) error {
	return db.finish(id, false)
}

func (db *DB) finish(id string, commit bool) error {
	t, err := db.lockTx(id)
	if err != nil {
		return err
	}
	defer t.mu.Unlock()
	return db.endTx(t, commit)
}

// expire is the janitor: it rolls back a transaction whose deadline passed.
func (db *DB) expire(t *clientTx) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ended {
		return
	}
	db.log.Warn("transaction timed out; rolled back", "tx", t.id)
	db.endTx(t, false)
	db.txMu.Lock()
	if len(db.expired) >= maxExpiredIDs {
		clear(db.expired)
	}
	db.expired[t.id] = true
	db.txMu.Unlock()
}

// endTx commits or rolls back t; the caller holds t.mu.
func (db *DB) endTx(t *clientTx, commit bool) error {
	t.ended = true
	t.stop()
	if t.timer != nil {
		t.timer.Stop()
	}
	db.txMu.Lock()
	if db.txs[t.id] == t {
		delete(db.txs, t.id)
	}
	db.openTx--
	db.txMu.Unlock()

	var err error
	ctx := context.Background()
	if commit && !t.readOnly {
		if _, err = t.conn.ExecContext(ctx, "COMMIT"); err != nil {
			err = fmt.Errorf("commit transaction %q: %w", t.id, mapErr(err))
			t.conn.ExecContext(ctx, "ROLLBACK")
		} else {
			// Pins first (see runBatch); removeIfOrphan re-checks pins and rows under the pending lock.
			t.w.releasePins()
			db.unlinkUnreferenced(t.w.unrefs)
		}
	} else {
		t.conn.ExecContext(ctx, "ROLLBACK")
	}
	t.q.close()
	t.conn.Close()
	if t.w != nil {
		t.w.dropPins() // after a commit, none are left
		<-db.writeLock
	}
	return err
}

// rollbackAll rolls back every open transaction (Close).
func (db *DB) rollbackAll() {
	db.txMu.Lock()
	ts := make([]*clientTx, 0, len(db.txs))
	for _, t := range db.txs {
		ts = append(ts, t)
	}
	db.txMu.Unlock()
	for _, t := range ts {
		t.mu.Lock()
		if !t.ended {
			db.endTx(t, false)
		}
		t.mu.Unlock()
	}
}
