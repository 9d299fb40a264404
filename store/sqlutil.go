package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"

	sqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// querier runs statements on one connection or pool, preparing each distinct statement once: the hot
// write path runs the same few statements hundreds of thousands of times per second, and preparing
// costs more than executing.
type querier interface {
	exec(ctx context.Context, q string, args ...any) (sql.Result, error)
	query(ctx context.Context, q string, args ...any) (*sql.Rows, error)
	queryRow(ctx context.Context, q string, args ...any) scanner
}

// maxCachedStmts bounds a stmtCache: the store's own statements number a few dozen.
const maxCachedStmts = 512

// stmtCache prepares statements on a *sql.DB (statements follow the pool's connections) or a
// *sql.Conn (statements bound to that connection).
type stmtCache struct {
	mu    sync.Mutex
	prep  func(ctx context.Context, q string) (*sql.Stmt, error)
	stmts map[string]*sql.Stmt
}

func (c *stmtCache) init(p interface {
	PrepareContext(ctx context.Context, q string) (*sql.Stmt, error)
}) {
	c.prep = p.PrepareContext
	c.stmts = make(map[string]*sql.Stmt)
}

func (c *stmtCache) stmt(ctx context.Context, q string) (*sql.Stmt, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.stmts[q]; ok {
		return s, nil
	}
	if len(c.stmts) >= maxCachedStmts {
		// Layered packages may build queries dynamically; start over rather than grow without bound.
		// Closing a statement with open rows is deferred by database/sql until the rows close.
		for k, s := range c.stmts {
			s.Close()
			delete(c.stmts, k)
		}
	}
	s, err := c.prep(ctx, q)
	if err != nil {
		return nil, err
	}
	c.stmts[q] = s
	return s, nil
}

func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.stmts {
		s.Close()
	}
	c.stmts = nil
}

func (c *stmtCache) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	s, err := c.stmt(ctx, q)
	if err != nil {
		return nil, err
	}
	return s.ExecContext(ctx, args...)
}

func (c *stmtCache) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	s, err := c.stmt(ctx, q)
	if err != nil {
		return nil, err
	}
	return s.QueryContext(ctx, args...)
}

func (c *stmtCache) queryRow(ctx context.Context, q string, args ...any) scanner {
	s, err := c.stmt(ctx, q)
	if err != nil {
		return errScanner{err}
	}
	return s.QueryRowContext(ctx, args...)
}

// scanner is *sql.Row's Scan, so a prepare error can be reported through the same call.
type scanner interface{ Scan(dest ...any) error }

type errScanner struct{ err error }

func (e errScanner) Scan(...any) error { return e.err }

// connQ is a querier over one dedicated connection.
type connQ struct {
	conn *sql.Conn
	stmtCache
}

func newConnQ(conn *sql.Conn) *connQ {
	q := &connQ{conn: conn}
	q.init(conn)
	return q
}

// sqliteCode returns SQLite's extended result code of err, or 0.
func sqliteCode(err error) int {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code()
	}
	return 0
}

// mapErr turns SQLite errors that mean something to callers into the package's sentinels, keeping the
// original text. Context errors pass through untouched.
func mapErr(err error) error {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if strings.Contains(err.Error(), "sql: database is closed") {
		return fmt.Errorf("%w: %v", ErrClosed, err) // a call that raced Close
	}
	code := sqliteCode(err)
	switch {
	case code&0xff == sqlite3.SQLITE_READONLY:
		return fmt.Errorf("%w: %v", ErrReadOnly, err)
	case code == sqlite3.SQLITE_CONSTRAINT_UNIQUE || code == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY,
		code == sqlite3.SQLITE_CONSTRAINT_TRIGGER && strings.Contains(err.Error(), uniqueMarker):
		return fmt.Errorf("%w: %v", ErrExists, err)
	case code == sqlite3.SQLITE_CONSTRAINT_TRIGGER && strings.Contains(err.Error(), InUseMarker):
		msg := err.Error()[strings.Index(err.Error(), InUseMarker)+len(InUseMarker):]
		if i := strings.LastIndex(msg, " ("); i > 0 { // SQLite's " (1811)" code suffix
			msg = msg[:i]
		}
		return fmt.Errorf("%s: %w", msg, ErrInUse)
	case code == sqlite3.SQLITE_CONSTRAINT_TRIGGER && strings.Contains(err.Error(), invalidMarker):
		msg := err.Error()[strings.Index(err.Error(), invalidMarker)+len(invalidMarker):]
		if i := strings.LastIndex(msg, " ("); i > 0 { // SQLite's " (1811)" code suffix
			msg = msg[:i]
		}
		return fmt.Errorf("%s: %w", msg, ErrInvalid)
	case code&0xff == sqlite3.SQLITE_TOOBIG:
		return fmt.Errorf("%w: %v (raw SQL values are capped at the largest message the API sends)", ErrTooLarge, err)
	case code&0xff == sqlite3.SQLITE_FULL:
		// Both wrapped: txLost must still see that SQLite rolled the transaction back.
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	case code&0xff == sqlite3.SQLITE_INTERRUPT:
		return fmt.Errorf("interrupted: %w", context.Canceled)
	case strings.Contains(err.Error(), "too many attached databases"):
		// The read-only query path forbids ATTACH (it could create writable files elsewhere).
		return fmt.Errorf("%w: ATTACH is not allowed on the read-only query path", ErrReadOnly)
	}
	return err
}

// fileErr wraps an error of writing a payload file as "what: err", as ErrNoSpace when the disk is
// full (a condition the client should hear about, not an internal error).
func fileErr(what string, err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("%s: %w", what, ErrNoSpace)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// txLost reports whether err is one after which SQLite may have rolled back the whole transaction on
// its own (https://sqlite.org/lang_transaction.html, "Response To Errors Within A Transaction"): then
// the transaction must be treated as gone rather than continued.
func txLost(err error) bool {
	if err == nil {
		return false
	}
	switch sqliteCode(err) & 0xff {
	case sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_BUSY,
		sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_INTERRUPT:
		return true
	}
	return false
}
