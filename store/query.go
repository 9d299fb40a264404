package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"
	"time"

	sqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Query runs sql and calls fn per row, streaming: memory stays bounded whatever the row count.
// Column values are int64, float64, string, []byte or nil. Unless Options.QueryWrites, the statement
// runs on a connection SQLite opened read-only, so any write fails with ErrReadOnly whatever the SQL
// says; ATTACH is refused on every query connection. ctx cancellation interrupts the statement.
//
// Raw SQL sees the whole database: kv(key, value), blob(id, size, sha256, data, metadata) where data is
// NULL for bytes kept in payload files, payload, kv_index, kv_index_entry, schema_migrations and the
// tables of layered packages (the registry). See DESIGN.md.
//
// With QueryWrites a statement first runs on a read-only connection all the same, and only one that
// SQLite refuses there as a write (before it produced anything) runs again on the writable
// connection: that one holds the write lock for as long as it runs, and a SELECT streaming a big
// result to a slow client must not stop every writer in the meantime.
func (db *DB) Query(ctx context.Context, sql string, fn func(columns []string, row []any) error) error {
	return db.rawQuery(ctx, sql, false, fn)
}

// QueryColumns is Query, except that when the statement produced no rows fn is called once with
// its columns and a nil row: a client then learns a result's columns without running it twice.
func (db *DB) QueryColumns(ctx context.Context, sql string, fn func(columns []string, row []any) error) error {
	return db.rawQuery(ctx, sql, true, fn)
}

func (db *DB) rawQuery(ctx context.Context, sql string, emptyColumns bool, fn func(columns []string, row []any) error) error {
	if err := db.checkOpen(); err != nil {
		return err
	}
	if _, err := oneStatement(sql); err != nil {
		return err
	}
	if !db.opts.QueryWrites {
		return db.query(ctx, false, sql, emptyColumns, fn)
	}
	called := false
	err := db.query(ctx, false, sql, emptyColumns, func(columns []string, row []any) error {
		called = true
		return fn(columns, row)
	})
	if called || !errors.Is(err, ErrReadOnly) {
		return err
	}
	// A read-only connection cannot have written anything: run the write for real.
	return db.query(ctx, true, sql, emptyColumns, fn)
}

// query runs one statement of raw SQL on a read-only or (write) a writable connection; with
// emptyColumns a statement that ends without rows reports its columns with a nil row.
func (db *DB) query(ctx context.Context, write bool, sql string, emptyColumns bool, fn func(columns []string, row []any) error) error {
	if write {
		// Holds the write lock, so the WAL cannot grow meanwhile: nothing for streamRead to bound.
		return db.runQuery(ctx, true, sql, emptyColumns, fn)
	}
	return streamRead(ctx, db, func(ctx context.Context, emit func(queryRow) error) error {
		return db.runQuery(ctx, false, sql, emptyColumns, func(cols []string, row []any) error {
			return emit(queryRow{cols, row})
		})
	}, rowSize, func(r queryRow) error { return fn(r.cols, r.row) })
}

// runQuery is query on the caller's goroutine.
func (db *DB) runQuery(ctx context.Context, write bool, sql string, emptyColumns bool, fn func(columns []string, row []any) error) error {
	conn, release, err := db.queryConn(ctx, write)
	if err != nil {
		return err
	}
	defer release()
	rows, err := conn.QueryContext(ctx, sql)
	if err != nil {
		return rawErr(err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return mapErr(err)
	}
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	n := 0
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return mapErr(err)
		}
		row := make([]any, len(cols))
		for i, v := range vals {
			row[i] = normalize(v)
		}
		if err := fn(cols, row); err != nil {
			return err
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return rawErr(err)
	}
	if n == 0 && emptyColumns {
		return fn(cols, nil)
	}
	return nil
}

// oneStatement refuses SQL holding more than one statement: SQLite would run them all but report
// only the last one's rows (Query) or changes (Execute), so a client would lose results without
// noticing. BuffDB's streams answer each RawQuery message once: one statement per message. A
// trigger definition is exempt, since its body's statements end in semicolons too. n is how many
// statements sql holds.
func oneStatement(sql string) (n int, err error) {
	n = countStatements(sql)
	if n <= 1 || createTrigger.MatchString(sql) {
		return n, nil
	}
	return n, fmt.Errorf("the SQL holds %d statements; send one statement per request, so each gets its own result: %w", n, ErrInvalid)
}

var createTrigger = regexp.MustCompile(`(?i)\bCREATE\s+(TEMP\s+|TEMPORARY\s+)?TRIGGER\b`)

// countStatements counts the non-empty statements in sql, split at semicolons outside string
// literals, quoted identifiers and comments.
func countStatements(sql string) int {
	n := 0
	content := false // the current statement has more than blanks and comments
	for i := 0; i < len(sql); i++ {
		switch c := sql[i]; {
		case c == ';':
			if content {
				n++
			}
			content = false
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			for i < len(sql) && sql[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			end := strings.Index(sql[i+2:], "*/")
			if end < 0 {
				i = len(sql)
			} else {
				i += 2 + end + 1
			}
		case c == '\'' || c == '"' || c == '`' || c == '[':
			closing := c
			if c == '[' {
				closing = ']'
			}
			content = true
			// A doubled quote inside a literal is an escaped quote: skipping to the next quote
			// and continuing from there handles it as two adjacent literals.
			end := strings.IndexByte(sql[i+1:], closing)
			if end < 0 {
				i = len(sql)
			} else {
				i += 1 + end
			}
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
		default:
			content = true
		}
	}
	if content {
		n++
	}
	return n
}

// normalize maps driver values onto the documented set.
func normalize(v any) any {
	switch x := v.(type) {
	case time.Time:
		return x.Format(time.RFC3339Nano)
	case bool:
		if x {
			return int64(1)
		}
		return int64(0)
	case int:
		return int64(x)
	}
	return v
}

// queryConn returns a connection for raw SQL: a read-only one, or (write, which needs QueryWrites) a
// writable one held under writeLock (so raw writes serialize with group commit and client
// transactions).
func (db *DB) queryConn(ctx context.Context, write bool) (*sql.Conn, func(), error) {
	pool := db.rdb
	unlock := func() {}
	if write && db.opts.QueryWrites {
		select {
		case db.writeLock <- struct{}{}:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
		unlock = func() { <-db.writeLock }
		pool = db.wdb
	}
	conn, err := pool.Conn(ctx)
	if err != nil {
		unlock()
		return nil, nil, mapErr(err)
	}
	// ATTACH could create or write another database file, sidestepping mode=ro; limit it to zero.
	if _, err := sqlite.Limit(conn, sqlite3.SQLITE_LIMIT_ATTACHED, 0); err != nil {
		conn.Close()
		unlock()
		return nil, nil, err
	}
	// The length limit is the store's own again when the connection goes back to the pool: its
	// reads of the whole value of a key must not depend on this client's cap.
	maxLen := int(min(db.opts.MaxQueryValueBytes, math.MaxInt32))
	oldLen, err := sqlite.Limit(conn, sqlite3.SQLITE_LIMIT_LENGTH, maxLen)
	if err != nil {
		conn.Close()
		unlock()
		return nil, nil, err
	}
	if err := authorize(conn, denyTxControl); err != nil {
		conn.Close()
		unlock()
		return nil, nil, err
	}
	return conn, func() {
		// Without a policy the connection goes back to the pool as the store's own code uses it
		// (its BEGINs must work). If that fails, the connection must not be reused.
		// Nor may it go back holding a temporary object the authorizer did not catch (a trigger
		// named temp.x on a main table is authorized as a main one): see denyTxControl.
		_, lerr := sqlite.Limit(conn, sqlite3.SQLITE_LIMIT_LENGTH, oldLen)
		if authorize(conn, nil) != nil || hasTempObjects(conn) || lerr != nil {
			conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		conn.Close()
		unlock()
	}, nil
}

// hasTempObjects reports whether conn's temp schema holds anything (or cannot be read).
func hasTempObjects(conn *sql.Conn) bool {
	var n int
	err := conn.QueryRowContext(context.Background(), "SELECT count(*) FROM temp.sqlite_schema").Scan(&n)
	return err != nil || n > 0
}

// denyTxControl is the authorizer of raw SQL: it refuses BEGIN, COMMIT, ROLLBACK, SAVEPOINT and
// RELEASE. The connections raw SQL runs on are pooled, so a transaction it left open would outlive
// the request: a read connection would go on serving an old snapshot to every later reader, a write
// connection would hold the write lock and swallow acknowledged writes. Each Query and Execute
// statement runs in its own implicit transaction; the Kv transaction RPCs are the way to group them.
//
// It also refuses PRAGMAs that change a setting (an argument, except the introspection ones that
// take a table or index name) or act (wal_checkpoint, optimize, ...): on a pooled connection a
// setting would outlive the request too, e.g. synchronous=OFF on the connection client
// transactions commit on, or busy_timeout=0 on one the store reads with.
//
// And it refuses temporary tables, views, indexes and triggers: they live as long as the pooled
// connection, not the request, and the temp schema is searched before main, so a read-only
// `CREATE TEMP TABLE kv(...)` would hide the real kv from every later Get served on that connection,
// and on the write pool a client transaction would commit its writes into the temporary table. A
// temporary object is of no use within the one statement a request may hold anyway.
func denyTxControl(action sqlite.AuthorizerActionCode, arg1, arg2, dbName, _ string) sqlite.AuthorizerReturnCode {
	switch action {
	case sqlite.AuthTransaction, sqlite.AuthSavepoint,
		sqlite.AuthCreateTempTable, sqlite.AuthCreateTempView, sqlite.AuthCreateTempIndex, sqlite.AuthCreateTempTrigger:
		return sqlite.AuthorizerDeny
	case sqlite.AuthCreateTable, sqlite.AuthCreateView, sqlite.AuthCreateIndex, sqlite.AuthCreateTrigger, sqlite.AuthCreateVTable:
		if strings.EqualFold(dbName, "temp") { // CREATE TABLE temp.x, without the TEMP keyword
			return sqlite.AuthorizerDeny
		}
	case sqlite.AuthPragma:
		name := strings.ToLower(arg1)
		if pragmaActs[name] || (arg2 != "" && !pragmaIntrospects[name]) {
			return sqlite.AuthorizerDeny
		}
	}
	return sqlite.AuthorizerOK
}

// pragmaIntrospects are the PRAGMAs whose argument names what to describe, not a new setting.
var pragmaIntrospects = map[string]bool{"table_info": true, "table_xinfo": true, "table_list": true, "index_list": true,
	"index_info": true, "index_xinfo": true, "foreign_key_list": true, "foreign_key_check": true,
	"integrity_check": true, "quick_check": true}

// pragmaActs are the PRAGMAs that do something even without an argument.
var pragmaActs = map[string]bool{"wal_checkpoint": true, "optimize": true, "shrink_memory": true, "incremental_vacuum": true}

// errTxControl is what raw SQL refused by denyTxControl fails with.
var errTxControl = fmt.Errorf("transaction statements (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE), PRAGMAs that change "+
	"settings and temporary tables, views, indexes or triggers are not allowed in raw SQL (they would outlive the request "+
	"on a pooled connection); "+
	"each statement runs in its own transaction, use BeginTransaction/CommitTransaction to group writes: %w", ErrInvalid)

// authorize installs fn (nil: none) as the authorizer of conn's SQLite connection.
func authorize(conn *sql.Conn, fn sqlite.AuthorizerFn) error {
	return conn.Raw(func(dc any) error {
		r, ok := dc.(sqlite.AuthorizerRegisterer)
		if !ok {
			return fmt.Errorf("sqlite driver connection %T has no authorizer", dc)
		}
		return r.RegisterAuthorizer(fn)
	})
}

// rawErr maps an error of raw SQL: mapErr, and a statement denyTxControl refused.
func rawErr(err error) error {
	if sqliteCode(err)&0xff == sqlite3.SQLITE_AUTH {
		return errTxControl
	}
	return mapErr(err)
}

// Execute runs sql and returns rows changed; ErrReadOnly unless Options.QueryWrites. It runs in its own
// autocommit transaction on a writable connection under the write lock (so it serializes with group
// commit and client transactions, and statements that cannot run inside a transaction, like VACUUM,
// work). Raw writes to kv keep indexes current (they are triggers) but raw writes to blob/payload
// bypass payload reference counting: that is the operator's responsibility.
func (db *DB) Execute(ctx context.Context, sql string) (int64, error) {
	if err := db.checkOpen(); err != nil {
		return 0, err
	}
	if !db.opts.QueryWrites {
		return 0, fmt.Errorf("execute is disabled (query writes are off): %w", ErrReadOnly)
	}
	n, err := oneStatement(sql)
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, nil // blanks and comments: nothing to run (the driver has no result to report)
	}
	conn, release, err := db.queryConn(ctx, true)
	if err != nil {
		return 0, err
	}
	defer release()
	// SQLite's changes() is only set by INSERT, UPDATE and DELETE: after any other statement it
	// still holds the count of the last one run on this pooled connection, maybe another client's.
	// An UPDATE that matches nothing sets it to 0 and writes nothing.
	if _, err := conn.ExecContext(ctx, "UPDATE schema_migrations SET version = version WHERE 0"); err != nil {
		return 0, mapErr(err)
	}
	if isVacuum(sql) {
		// VACUUM attaches a temporary database internally; allow exactly one attachment for it.
		// It also runs its own transaction, and leaves none open.
		if _, err := sqlite.Limit(conn, sqlite3.SQLITE_LIMIT_ATTACHED, 1); err != nil {
			return 0, err
		}
		if err := authorize(conn, nil); err != nil {
			return 0, err
		}
		defer sqlite.Limit(conn, sqlite3.SQLITE_LIMIT_ATTACHED, 0)
	}
	res, err := conn.ExecContext(ctx, sql)
	if err != nil {
		return 0, rawErr(err)
	}
	return res.RowsAffected()
}

// isVacuum reports whether sql is exactly a plain VACUUM (nothing else may ride along, since it
// lifts the ATTACH limit).
func isVacuum(sql string) bool {
	s := strings.TrimSpace(sql)
	s = strings.TrimSpace(strings.TrimSuffix(s, ";"))
	return strings.EqualFold(s, "VACUUM") || strings.EqualFold(s, "VACUUM main")
}
