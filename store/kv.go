package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

const (
	// The upsert fires kv's INSERT or UPDATE triggers, which maintain the secondary indexes inside
	// the same statement: a unique violation fails the statement and leaves everything unchanged.
	sqlKVSet    = "INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
	sqlKVGet    = "SELECT value FROM kv WHERE key = ?"
	sqlKVDelete = "DELETE FROM kv WHERE key = ?"
)

// Get returns the value of key; ErrNotFound names the key.
func (db *DB) Get(ctx context.Context, txID, key string) (string, error) {
	if err := db.checkOpen(); err != nil {
		return "", err
	}
	if txID != "" {
		var v string
		err := db.withTx(ctx, txID, false, func(t *clientTx) error {
			var err error
			v, err = kvGet(ctx, t.q, key)
			return err
		})
		return v, err
	}
	return kvGet(ctx, &db.rstmt, key)
}

// kvGet looks key up. The lookup itself ignores ctx's cancellation (ctx is checked first): a point
// read takes microseconds, and a cancellable context costs more than that — database/sql and the
// SQLite driver each start a goroutine per query to watch it. Measured on one gRPC stream: 104-109k
// → 133-135k Get/s. An uncancellable lookup can still wait for a pooled connection when every one
// is taken, until a client transaction (bounded by its timeout) or a streaming query ends.
func kvGet(ctx context.Context, q querier, key string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	var v string
	err := q.queryRow(context.WithoutCancel(ctx), sqlKVGet, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("key %q: %w", key, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("get key %q: %w", key, mapErr(err))
	}
	return v, nil
}

// Set stores key=value durably (group-committed), maintaining indexes; ErrExists on a unique
// violation, in which case nothing changes.
func (db *DB) Set(ctx context.Context, txID, key, value string) error {
	if err := db.checkOpen(); err != nil {
		return err
	}
	if txID != "" {
		return db.txSet(txID, key, value)
	}
	_, err := db.do(ctx, db.setOp(key, value))
	return err
}

func (db *DB) setOp(key, value string) *op {
	return &op{atomic: true, size: len(key) + len(value), fn: func(t *wtx) (uint64, error) {
		return 0, t.set(key, value)
	}}
}

func (t *wtx) set(key, value string) error {
	if _, err := t.q.exec(t.ctx, sqlKVSet, key, value); err != nil {
		err = mapErr(err)
		if errors.Is(err, ErrExists) {
			return fmt.Errorf("key %q: unique index %s: value taken by another key: %w", key, violatedIndex(err), ErrExists)
		}
		return fmt.Errorf("set key %q: %w", key, err)
	}
	return nil
}

// Delete removes key; ErrNotFound if missing.
func (db *DB) Delete(ctx context.Context, txID, key string) error {
	if err := db.checkOpen(); err != nil {
		return err
	}
	if txID != "" {
		return db.txDelete(txID, key)
	}
	_, err := db.do(ctx, db.deleteOp(key))
	return err
}

func (db *DB) deleteOp(key string) *op {
	return &op{atomic: true, size: len(key), fn: func(t *wtx) (uint64, error) {
		return 0, t.delete(key)
	}}
}

func (t *wtx) delete(key string) error {
	res, err := t.q.exec(t.ctx, sqlKVDelete, key)
	if err != nil {
		return fmt.Errorf("delete key %q: %w", key, mapErr(err))
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("key %q: %w", key, ErrNotFound)
	}
	return nil
}

// scan calls fn for each key with prefix after `after`, in key order. Keys are compared bytewise
// (SQLite's BINARY collation), so the prefix range is [prefix, prefix+0xff...).
func scan(ctx context.Context, q querier, prefix, after string, fn func(key, value string) error) error {
	// "key > after" only when after is set: "" is a valid key and must not be skipped.
	q1, args := "SELECT key, value FROM kv WHERE key >= ?", []any{prefix}
	if after != "" {
		q1, args = q1+" AND key > ?", append(args, after)
	}
	if hi, ok := prefixEnd(prefix); ok {
		q1, args = q1+" AND key < ?", append(args, hi)
	}
	rows, err := q.query(ctx, q1+" ORDER BY key", args...)
	if err != nil {
		return mapErr(err)
	}
	defer rows.Close()
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return mapErr(err)
		}
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return mapErr(rows.Err())
}

// prefixEnd returns the smallest string greater than every string with prefix p, or false if there is
// none (p empty or all 0xff bytes).
func prefixEnd(p string) (string, bool) {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1]), true
		}
	}
	return "", false
}

// violatedIndex extracts the index name from a unique-index trigger's RAISE message.
func violatedIndex(err error) string {
	msg := err.Error()
	i := strings.Index(msg, uniqueMarker)
	if i < 0 {
		return "(unknown)"
	}
	name := msg[i+len(uniqueMarker):]
	if j := strings.LastIndex(name, " ("); j >= 0 { // SQLite appends " (<code>)"
		name = name[:j]
	}
	return strconv.Quote(name)
}
