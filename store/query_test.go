package store_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/store"
)

func TestDB_Query(t *testing.T) {
	db := openDB(t, store.Options{})
	const n = 50_000
	w := db.NewWriter()
	for i := 0; i < n; i++ {
		w.Set("", fmt.Sprintf("k%06d", i), fmt.Sprint(i))
	}
	w.Close()
	db.StoreBlob(ctx, "", []byte{1, 2}, nil)
	db.StoreBlob(ctx, "", nil, ptr(""))
	t.Run("StreamsManyRows", func(t *testing.T) {
		rows := 0
		err := db.Query(ctx, "SELECT key, value FROM kv ORDER BY key", func(cols []string, row []any) error {
			if cols[0] != "key" || cols[1] != "value" {
				return fmt.Errorf("columns = %v", cols)
			}
			if want := fmt.Sprintf("k%06d", rows); row[0] != want {
				return fmt.Errorf("row %d key = %v, want %s", rows, row[0], want)
			}
			rows++
			return nil
		})
		if err != nil || rows != n {
			t.Fatalf("rows = %d, %v; want %d", rows, err, n)
		}
	})
	t.Run("Types", func(t *testing.T) {
		var got []any
		err := db.Query(ctx, "SELECT 1, 2.5, 'x', x'00ff', NULL, id, metadata FROM blob ORDER BY id", func(_ []string, row []any) error {
			got = append(got, fmt.Sprintf("%T %T %T %T %v %v %v", row[0], row[1], row[2], row[3], row[4], row[5], row[6]))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != "[int64 float64 string []uint8 <nil> 1 <nil> int64 float64 string []uint8 <nil> 2 ]" {
			t.Fatalf("got %v", got)
		}
	})
	t.Run("StopsOnCallbackError", func(t *testing.T) {
		stop := errors.New("stop")
		rows := 0
		err := db.Query(ctx, "SELECT key FROM kv", func([]string, []any) error { rows++; return stop })
		if !errors.Is(err, stop) || rows != 1 {
			t.Fatalf("err = %v after %d rows", err, rows)
		}
	})
	t.Run("Cancel", func(t *testing.T) {
		c, cancel := context.WithCancel(ctx)
		rows := 0
		err := db.Query(c, "SELECT key FROM kv", func([]string, []any) error {
			if rows++; rows == 10 {
				cancel()
			}
			return nil
		})
		if !errors.Is(err, context.Canceled) || rows >= n {
			t.Fatalf("err = %v after %d rows, want Canceled early", err, rows)
		}
	})
	t.Run("ReadOnly", func(t *testing.T) {
		for _, q := range []string{
			"INSERT INTO kv VALUES ('x', 'y')",
			"DELETE FROM kv",
			"PRAGMA query_only=0",
			"CREATE TABLE t(x)",
			"ATTACH '" + filepath.Join(t.TempDir(), "evil.db") + "' AS evil",
		} {
			err := db.Query(ctx, q, func([]string, []any) error { return nil })
			if q == "PRAGMA query_only=0" {
				// Harmless on a mode=ro connection; the next write must still fail.
				err = db.Query(ctx, "DELETE FROM kv", func([]string, []any) error { return nil })
			}
			if !errors.Is(err, store.ErrReadOnly) {
				t.Fatalf("Query(%q) err = %v, want ErrReadOnly", q, err)
			}
		}
		if _, err := db.Execute(ctx, "DELETE FROM kv"); !errors.Is(err, store.ErrReadOnly) {
			t.Fatalf("Execute err = %v, want ErrReadOnly", err)
		}
		if st, _ := db.Stats(ctx); st.Keys != n {
			t.Fatalf("keys = %d after refused writes", st.Keys)
		}
	})
	t.Run("SyntaxError", func(t *testing.T) {
		if err := db.Query(ctx, "SELEC nonsense", func([]string, []any) error { return nil }); err == nil {
			t.Fatal("no error")
		}
	})
}

func TestDB_QueryWrites(t *testing.T) {
	db := openDB(t, store.Options{QueryWrites: true})
	n, err := db.Execute(ctx, "INSERT INTO kv VALUES ('a', '1'), ('b', '2')")
	if err != nil || n != 2 {
		t.Fatalf("Execute = %d, %v", n, err)
	}
	if err := db.Query(ctx, "UPDATE kv SET value = 'z' WHERE key = 'a'", func([]string, []any) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if v, _ := db.Get(ctx, "", "a"); v != "z" {
		t.Fatalf("a = %q", v)
	}
	// Writes are allowed, ATTACH still is not (it could create files anywhere), not even behind VACUUM.
	evil := "ATTACH '" + filepath.Join(t.TempDir(), "evil.db") + "' AS evil"
	if _, err := db.Execute(ctx, evil); !errors.Is(err, store.ErrReadOnly) {
		t.Fatalf("Execute(ATTACH) err = %v, want ErrReadOnly", err)
	}
	if _, err := db.Execute(ctx, "VACUUM; "+evil); err == nil {
		t.Fatal("ATTACH riding on VACUUM succeeded")
	}
	if _, err := db.Execute(ctx, " vacuum ; "); err != nil {
		t.Fatalf("VACUUM: %v", err)
	}
}

func TestDB_ExecuteRowsChanged(t *testing.T) {
	db := openDB(t, store.Options{QueryWrites: true})
	if n, err := db.Execute(ctx, "INSERT INTO kv VALUES ('a', '1'), ('b', '2'), ('c', '3')"); err != nil || n != 3 {
		t.Fatalf("insert = %d, %v", n, err)
	}
	// Statements that change no rows report 0, not the last INSERT's count left on the connection.
	for _, sql := range []string{"CREATE TABLE IF NOT EXISTS t(x)", "SELECT 1", "PRAGMA user_version", "DROP TABLE IF EXISTS t9", "", "  -- nothing\n"} {
		if n, err := db.Execute(ctx, sql); err != nil || n != 0 {
			t.Errorf("Execute(%q) = %d, %v; want 0", sql, n, err)
		}
	}
	if n, err := db.Execute(ctx, "UPDATE kv SET value = 'x' WHERE key IN ('a', 'b')"); err != nil || n != 2 {
		t.Fatalf("update = %d, %v", n, err)
	}
}

func TestDB_QueryOneStatement(t *testing.T) {
	db := openDB(t, store.Options{QueryWrites: true})
	err := db.Query(ctx, "select 1 as a; select 2 as b", func([]string, []any) error { return nil })
	if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), "holds 2 statements") {
		t.Fatalf("Query of two statements: %v, want ErrInvalid naming the count", err)
	}
	if _, err := db.Execute(ctx, "INSERT INTO kv VALUES ('a', '1'); INSERT INTO kv VALUES ('b', '2')"); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("Execute of two statements: %v, want ErrInvalid", err)
	}
	if _, err := db.Get(ctx, "", "a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused Execute ran its first statement: %v", err)
	}
	if n, err := db.Execute(ctx, "INSERT INTO kv VALUES ('a;b', ';');"); err != nil || n != 1 {
		t.Fatalf("one statement with semicolons in literals: %d, %v", n, err)
	}
}

// TestDB_QueryTxControl: raw SQL cannot leave a pooled connection inside a transaction, which would
// serve later readers an old snapshot (read pool) or hold the write lock and lose acknowledged
// writes (write pool).
func TestDB_QueryTxControl(t *testing.T) {
	stmts := []string{"BEGIN", "BEGIN IMMEDIATE", "COMMIT", "ROLLBACK", "SAVEPOINT s", "RELEASE s", "END",
		// Settings would outlive the request on the pooled connection too.
		"PRAGMA synchronous=OFF", "PRAGMA busy_timeout=0", "PRAGMA foreign_keys=OFF", "PRAGMA journal_mode=delete",
		"PRAGMA wal_checkpoint(TRUNCATE)", "PRAGMA main.cache_size=10", "pragma Query_Only = 0"}
	for _, writes := range []bool{false, true} {
		t.Run(fmt.Sprintf("QueryWrites=%v", writes), func(t *testing.T) {
			db := openDB(t, store.Options{QueryWrites: writes})
			if err := db.Set(ctx, "", "k", "old"); err != nil {
				t.Fatal(err)
			}
			for range 3 { // more sessions than pooled connections are likely to be idle
				for _, sql := range stmts {
					err := db.Query(ctx, sql, func([]string, []any) error { return nil })
					if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), "transaction statements") {
						t.Fatalf("Query(%q) err = %v, want ErrInvalid naming transaction statements", sql, err)
					}
					if writes {
						if _, err := db.Execute(ctx, sql); !errors.Is(err, store.ErrInvalid) {
							t.Fatalf("Execute(%q) err = %v, want ErrInvalid", sql, err)
						}
					}
				}
				// Introspection still runs.
				for _, sql := range []string{"PRAGMA table_info(kv)", "PRAGMA integrity_check", "PRAGMA journal_mode", "PRAGMA user_version"} {
					if err := db.Query(ctx, sql, func([]string, []any) error { return nil }); err != nil {
						t.Fatalf("Query(%q): %v", sql, err)
					}
				}
				// A select still runs, on the same connections.
				var n int64
				if err := db.Query(ctx, "SELECT count(*) FROM kv", func(_ []string, row []any) error { n = row[0].(int64); return nil }); err != nil || n != 1 {
					t.Fatalf("count = %d, %v", n, err)
				}
			}
			for i := range 5 {
				v := fmt.Sprint("new", i)
				if err := db.Set(ctx, "", "k", v); err != nil {
					t.Fatalf("Set after refused transaction statements: %v", err)
				}
				if got, err := db.Get(ctx, "", "k"); err != nil || got != v {
					t.Fatalf("Get = %q, %v; want %q (a stale snapshot?)", got, err, v)
				}
				var raw string
				if err := db.Query(ctx, "SELECT value FROM kv WHERE key = 'k'", func(_ []string, row []any) error { raw = row[0].(string); return nil }); err != nil || raw != v {
					t.Fatalf("raw SELECT = %q, %v; want %q", raw, err, v)
				}
			}
			// The store's own transactions still work on connections raw SQL used.
			tx, err := db.Begin(ctx, false, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Set(ctx, tx, "t", "1"); err != nil {
				t.Fatal(err)
			}
			if err := db.Commit(ctx, tx); err != nil {
				t.Fatal(err)
			}
			for range 3 { // read-only transactions run on the read connections
				ro, err := db.Begin(ctx, true, time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				if v, err := db.Get(ctx, ro, "t"); err != nil || v != "1" {
					t.Fatalf("t = %q, %v in a read-only transaction", v, err)
				}
				if err := db.Commit(ctx, ro); err != nil {
					t.Fatal(err)
				}
			}
			if writes {
				if n, err := db.Execute(ctx, "INSERT INTO kv VALUES ('x', '1')"); err != nil || n != 1 {
					t.Fatalf("Execute(INSERT) = %d, %v", n, err)
				}
				if v, err := db.Get(ctx, "", "x"); err != nil || v != "1" {
					t.Fatalf("x = %q, %v after Execute", v, err)
				}
			}
		})
	}
}

func TestDB_Stats(t *testing.T) {
	db := openDB(t, smallOpts)
	db.Set(ctx, "", "k", "v")
	db.StoreBlob(ctx, "", make([]byte, 5000), nil)
	db.StoreBlob(ctx, "", []byte("x"), nil)
	tx, _ := db.Begin(ctx, true, 0)
	defer db.Rollback(ctx, tx)
	st, err := db.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Keys != 1 || st.Blobs != 2 || st.PayloadFiles != 1 || st.PayloadBytes != 5000 || st.OpenTx != 1 || st.DatabaseBytes == 0 {
		t.Fatalf("Stats = %+v", st)
	}
}

// TestDB_QueryTempObjects: raw SQL cannot create temporary objects. They would outlive the request
// on the pooled connection, and the temp schema shadows main: a temporary kv would hide (or forge)
// every value later reads on that connection return, and swallow writes on the write pool.
func TestDB_QueryTempObjects(t *testing.T) {
	stmts := []string{
		"CREATE TEMP TABLE kv(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
		"CREATE TEMPORARY TABLE x AS SELECT * FROM kv",
		"CREATE TABLE temp.kv(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
		"CREATE TEMP VIEW kv AS SELECT 'k' AS key, 'forged' AS value",
		"CREATE TEMP TRIGGER t AFTER INSERT ON main.kv BEGIN DELETE FROM main.kv; END",
		"CREATE TABLE temp.x(y)",
		"CREATE VIEW temp.kv AS SELECT 'k' AS key, 'forged' AS value",
		"CREATE VIRTUAL TABLE temp.v USING fts5(x)",
	}
	// SQLite authorizes this one as a trigger of main (its table's schema): it runs, but its
	// connection is not reused, so it never fires on a later write.
	const tempTrigger = "CREATE TRIGGER temp.t AFTER INSERT ON main.kv BEGIN DELETE FROM main.kv; END"
	for _, writes := range []bool{false, true} {
		t.Run(fmt.Sprintf("QueryWrites=%v", writes), func(t *testing.T) {
			db := openDB(t, store.Options{QueryWrites: writes})
			if err := db.Set(ctx, "", "k", "real"); err != nil {
				t.Fatal(err)
			}
			for range 3 { // more sessions than pooled connections are likely to be idle
				for _, sql := range stmts {
					err := db.Query(ctx, sql, func([]string, []any) error { return nil })
					if !errors.Is(err, store.ErrInvalid) {
						t.Fatalf("Query(%q) err = %v, want ErrInvalid", sql, err)
					}
					if writes {
						if _, err := db.Execute(ctx, sql); !errors.Is(err, store.ErrInvalid) {
							t.Fatalf("Execute(%q) err = %v, want ErrInvalid", sql, err)
						}
					}
				}
				if err := db.Query(ctx, tempTrigger, func([]string, []any) error { return nil }); err != nil {
					t.Fatalf("Query(%q): %v", tempTrigger, err)
				}
				if writes {
					if _, err := db.Execute(ctx, tempTrigger); err != nil {
						t.Fatalf("Execute(%q): %v", tempTrigger, err)
					}
				}
			}
			for i := range 5 {
				if got, err := db.Get(ctx, "", "k"); err != nil || got != "real" {
					t.Fatalf("Get #%d = %q, %v; want the real value", i, got, err)
				}
			}
			tx, err := db.Begin(ctx, false, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Set(ctx, tx, "t", "1"); err != nil {
				t.Fatal(err)
			}
			if err := db.Commit(ctx, tx); err != nil {
				t.Fatal(err)
			}
			var n int64
			err = db.Query(ctx, "SELECT count(*) FROM main.kv WHERE key IN ('k', 't')", func(_ []string, row []any) error { n = row[0].(int64); return nil })
			if err != nil || n != 2 {
				t.Fatalf("keys in main.kv after a committed transaction: count = %d, %v; want 2", n, err)
			}
		})
	}
}

// TestDB_QueryWritesSelectDoesNotBlockWriters: with QueryWrites, a SELECT still runs on a read-only
// connection; only writes take the write lock. A result streamed to a slow (or stalled) client must
// not stop every other writer for as long as it streams.
func TestDB_QueryWritesSelectDoesNotBlockWriters(t *testing.T) {
	db := openDB(t, store.Options{QueryWrites: true})
	release := make(chan struct{})
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		first := true
		done <- db.Query(ctx, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000) SELECT x FROM c",
			func([]string, []any) error {
				if first {
					first = false
					close(started)
					<-release // the stalled client
				}
				return nil
			})
	}()
	<-started
	c, cancel := context.WithTimeout(ctx, 30*time.Second) // safety net only
	defer cancel()
	if err := db.Set(c, "", "k", "v"); err != nil {
		t.Fatalf("Set while a SELECT streams: %v", err)
	}
	if n, err := db.Execute(c, "INSERT INTO kv VALUES ('x', '1')"); err != nil || n != 1 {
		t.Fatalf("Execute while a SELECT streams: %d, %v", n, err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Writes through Query still run, once, on the writable connection.
	var got []any
	err := db.Query(ctx, "INSERT INTO kv VALUES ('r', '1') RETURNING key", func(_ []string, row []any) error { got = append(got, row...); return nil })
	if err != nil || fmt.Sprint(got) != "[r]" {
		t.Fatalf("INSERT … RETURNING through Query = %v, %v", got, err)
	}
	if err := db.Query(ctx, "DELETE FROM kv WHERE key = 'r'", func([]string, []any) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Get(ctx, "", "r"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("r after DELETE through Query: %v", err)
	}
}

func TestDB_QueryColumns(t *testing.T) {
	db := openDB(t, store.Options{})
	var calls []string
	err := db.QueryColumns(ctx, "SELECT key AS k, value FROM kv WHERE 0", func(cols []string, row []any) error {
		calls = append(calls, fmt.Sprint(cols, row == nil))
		return nil
	})
	if err != nil || fmt.Sprint(calls) != "[[k value] true]" {
		t.Fatalf("empty result: calls %v, %v; want one with the columns and a nil row", calls, err)
	}
	calls = nil
	err = db.QueryColumns(ctx, "SELECT 1 AS one", func(cols []string, row []any) error {
		calls = append(calls, fmt.Sprint(cols, row))
		return nil
	})
	if err != nil || fmt.Sprint(calls) != "[[one] [1]]" {
		t.Fatalf("one row: calls %v, %v; want just the row", calls, err)
	}
}

// TestDB_QueryValueLimit: raw SQL cannot build (or read) a value larger than MaxQueryValueBytes, so
// one cheap read-only statement cannot make the daemon allocate gigabytes; the store's own reads
// on the same pooled connections keep SQLite's limit.
func TestDB_QueryValueLimit(t *testing.T) {
	db := openDB(t, store.Options{QueryWrites: true, MaxQueryValueBytes: 1 << 20})
	big := strings.Repeat("x", 2<<20)
	if err := db.Set(ctx, "", "big", big); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"SELECT randomblob(900000000)", "SELECT length(printf('%.*c', 900000000, 'x'))",
		"SELECT zeroblob(2000000) || 'x'", "SELECT value FROM kv WHERE key = 'big'"} {
		err := db.Query(ctx, q, func([]string, []any) error { return nil })
		if !errors.Is(err, store.ErrTooLarge) {
			t.Fatalf("Query(%s) err = %v, want ErrTooLarge", q, err)
		}
	}
	if _, err := db.Execute(ctx, "UPDATE kv SET value = value || value WHERE key = 'big'"); !errors.Is(err, store.ErrTooLarge) {
		t.Fatalf("Execute building a 4 MiB value: %v, want ErrTooLarge", err)
	}
	var n int64
	if err := db.Query(ctx, "SELECT length(randomblob(1000))", func(_ []string, r []any) error { n = r[0].(int64); return nil }); err != nil || n != 1000 {
		t.Fatalf("small value: %d, %v", n, err)
	}
	for range 5 { // more reads than idle pooled connections: none keeps the raw SQL cap
		if v, err := db.Get(ctx, "", "big"); err != nil || len(v) != len(big) {
			t.Fatalf("Get of a value over the raw SQL cap: %d bytes, %v", len(v), err)
		}
	}
}
