package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
)

// Update runs fn in a write transaction that is group-committed; it returns after the commit is
// durable. If fn returns an error nothing fn did is applied and Update returns that error.
//
// fn runs on the committer goroutine, inside the batch with other writes (as one SAVEPOINT), so it
// must be short and must not call the DB's own write methods (they would wait for the committer it
// is blocking). Large bytes belong in WritePayload before Update, not in fn.
func (db *DB) Update(ctx context.Context, fn func(tx *Tx) error) error {
	if err := db.checkOpen(); err != nil {
		return err
	}
	_, err := db.do(ctx, &op{fn: func(w *wtx) (uint64, error) {
		tx := &Tx{db: db, ctx: w.ctx, q: w.q, w: w}
		defer func() { tx.ended = true }()
		return 0, fn(tx)
	}})
	return err
}

// View runs fn in a read-only snapshot: everything fn reads reflects one committed state.
func (db *DB) View(ctx context.Context, fn func(tx *Tx) error) error {
	if err := db.checkOpen(); err != nil {
		return err
	}
	conn, err := db.rdb.Conn(ctx)
	if err != nil {
		return mapErr(err)
	}
	defer conn.Close()
	q := newConnQ(conn)
	defer q.close()
	if _, err := conn.ExecContext(ctx, "BEGIN"); err != nil {
		return mapErr(err)
	}
	defer conn.ExecContext(context.Background(), "ROLLBACK")
	tx := &Tx{db: db, ctx: ctx, q: q}
	defer func() { tx.ended = true }()
	return fn(tx)
}

// Tx is a transaction handle passed to Update/View fns. Not safe for use after fn returns, nor from
// several goroutines at once. Write methods of a View's Tx fail with ErrReadOnly.
type Tx struct {
	db    *DB
	ctx   context.Context
	q     querier
	w     *wtx // nil in View
	ended bool
}

func (tx *Tx) check(write bool) error {
	if tx.ended {
		return fmt.Errorf("transaction used after its function returned: %w", ErrClosed)
	}
	if write && tx.w == nil {
		return fmt.Errorf("write in a View: %w", ErrReadOnly)
	}
	return nil
}

// Get returns the value of key; ErrNotFound names the key.
func (tx *Tx) Get(key string) (string, error) {
	if err := tx.check(false); err != nil {
		return "", err
	}
	return kvGet(tx.ctx, tx.q, key)
}

// Set stores key=value, maintaining indexes; ErrExists on a unique violation (nothing changes).
func (tx *Tx) Set(key, value string) error {
	if err := tx.check(true); err != nil {
		return err
	}
	return tx.w.set(key, value)
}

// Delete removes key; ErrNotFound if missing.
func (tx *Tx) Delete(key string) error {
	if err := tx.check(true); err != nil {
		return err
	}
	return tx.w.delete(key)
}

// Scan calls fn for each key with prefix, in key order, starting after `after` ("" = from the start).
// fn returning an error stops the scan and Scan returns it.
func (tx *Tx) Scan(prefix, after string, fn func(key, value string) error) error {
	if err := tx.check(false); err != nil {
		return err
	}
	return scan(tx.ctx, tx.q, prefix, after, fn)
}

// StatBlob returns a blob's size, sha256 and metadata.
func (tx *Tx) StatBlob(id uint64) (BlobInfo, error) {
	if err := tx.check(false); err != nil {
		return BlobInfo{}, err
	}
	if err := checkID(id); err != nil {
		return BlobInfo{}, err
	}
	r, err := readBlobRow(tx.ctx, tx.q, id, false)
	return r.info, err
}

// StoreBlob stores data as a new blob. Large data is written to a payload file right here, on the
// committer: prefer WritePayload + StorePayloadBlob for anything big.
func (tx *Tx) StoreBlob(data []byte, metadata *string) (uint64, error) {
	if err := tx.check(true); err != nil {
		return 0, err
	}
	c, err := tx.db.prepare(data)
	if err != nil {
		return 0, err
	}
	return tx.db.savepoint(tx.w, func(w *wtx) (uint64, error) {
		if c.pin != nil {
			w.pins = append(w.pins, c.pin)
		}
		return w.insertBlob(c, metadata)
	})
}

// DeleteBlob removes blob id; ErrNotFound if missing.
func (tx *Tx) DeleteBlob(id uint64) error {
	if err := tx.check(true); err != nil {
		return err
	}
	_, err := tx.db.savepoint(tx.w, func(w *wtx) (uint64, error) { return 0, w.deleteBlob(id) })
	return err
}

// StorePayloadBlob creates a blob whose bytes are the already-durable payload p (see WritePayload).
// The caller must hold p's PendingPayload until Update returns. ErrNotFound if no such payload is
// pending or stored.
func (tx *Tx) StorePayloadBlob(p Payload, metadata *string) (uint64, error) {
	if err := tx.check(true); err != nil {
		return 0, err
	}
	c, err := tx.db.resolvePayload(tx.ctx, tx.q, p)
	if err != nil {
		return 0, err
	}
	return tx.db.savepoint(tx.w, func(w *wtx) (uint64, error) { return w.insertBlob(c, metadata) })
}

// resolvePayload finds where p's bytes are: a pending small payload's memory, a payload file, or an
// existing inline blob with the same content.
func (db *DB) resolvePayload(ctx context.Context, q querier, p Payload) (content, error) {
	c := content{sum: p.SHA256, size: p.Size}
	if data, ok := db.pend.pendingInline(p.SHA256); ok && int64(len(data)) == p.Size {
		c.inline = data
		return c, nil
	}
	if st, err := os.Stat(db.payloadPath(p.SHA256)); err == nil && st.Size() == p.Size {
		return c, nil
	}
	err := q.queryRow(ctx, "SELECT data FROM blob WHERE sha256 = ? AND size = ? AND data IS NOT NULL LIMIT 1",
		p.SHA256[:], p.Size).Scan(&c.inline)
	if errors.Is(err, sql.ErrNoRows) {
		return c, fmt.Errorf("payload %x (%d bytes): %w", p.SHA256, p.Size, ErrNotFound)
	}
	if err != nil {
		return c, mapErr(err)
	}
	if c.inline == nil {
		c.inline = []byte{}
	}
	return c, nil
}

// Exec runs a statement against the layered package's own tables; returns rows affected.
// Constraint violations wrap ErrExists.
func (tx *Tx) Exec(query string, args ...any) (int64, error) {
	if err := tx.check(true); err != nil {
		return 0, err
	}
	res, err := tx.q.exec(tx.ctx, query, args...)
	if err != nil {
		return 0, mapErr(err)
	}
	return res.RowsAffected()
}

// Query runs a query and calls fn once per row with a scan function (database/sql semantics).
// fn returning an error stops the query and Query returns it.
func (tx *Tx) Query(query string, args []any, fn func(scan func(dest ...any) error) error) error {
	if err := tx.check(false); err != nil {
		return err
	}
	rows, err := tx.q.query(tx.ctx, query, args...)
	if err != nil {
		return mapErr(err)
	}
	defer rows.Close()
	for rows.Next() {
		if err := fn(rows.Scan); err != nil {
			return err
		}
	}
	return mapErr(rows.Err())
}

// Find calls fn for each key whose indexed value equals value (see DB.Find).
func (tx *Tx) Find(index, value string, limit int, fn func(key, value string) error) error {
	if err := tx.check(false); err != nil {
		return err
	}
	return find(tx.ctx, tx.q, index, value, limit, nil, func(h Hit) error { return fn(h.Key, h.Value) })
}

// FindRange calls fn for keys whose indexed value is within r (see DB.FindRange).
func (tx *Tx) FindRange(index string, r Range, fn func(key, value string) error) error {
	if err := tx.check(false); err != nil {
		return err
	}
	return findRange(tx.ctx, tx.q, index, r, func(h Hit) error { return fn(h.Key, h.Value) })
}
