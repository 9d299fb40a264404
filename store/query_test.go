package store_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

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
