package store_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/buffdb/buffdbd/store"
)

func TestDB_SetGet(t *testing.T) {
	db := openDB(t, store.Options{})
	t.Run("OK", func(t *testing.T) {
		for _, kv := range [][2]string{{"a", "1"}, {"", "empty key"}, {"b", ""}, {"nul\x00key", "v\x00v"}, {"ü", "ß"}} {
			if err := db.Set(ctx, "", kv[0], kv[1]); err != nil {
				t.Fatalf("Set(%q): %v", kv[0], err)
			}
			got, err := db.Get(ctx, "", kv[0])
			if err != nil || got != kv[1] {
				t.Fatalf("Get(%q) = %q, %v; want %q", kv[0], got, err, kv[1])
			}
		}
	})
	t.Run("Overwrite", func(t *testing.T) {
		db.Set(ctx, "", "o", "1")
		db.Set(ctx, "", "o", "2")
		if got, _ := db.Get(ctx, "", "o"); got != "2" {
			t.Fatalf("got %q, want 2", got)
		}
	})
	t.Run("ErrNotFound", func(t *testing.T) {
		_, err := db.Get(ctx, "", "missing")
		if !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
		if want := `key "missing"`; !strings.Contains(err.Error(), want) {
			t.Fatalf("err %q does not name the key", err)
		}
	})
	t.Run("ErrCanceled", func(t *testing.T) {
		// The lookup itself ignores cancellation (see kvGet), so a canceled context is checked first.
		c, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := db.Get(c, "", "a"); !errors.Is(err, context.Canceled) {
			t.Fatalf("Get with a canceled context: err = %v, want context.Canceled", err)
		}
	})
}

func TestDB_Delete(t *testing.T) {
	db := openDB(t, store.Options{})
	db.Set(ctx, "", "k", "v")
	t.Run("OK", func(t *testing.T) {
		if err := db.Delete(ctx, "", "k"); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Get(ctx, "", "k"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("after delete: %v", err)
		}
	})
	t.Run("ErrNotFound", func(t *testing.T) {
		if err := db.Delete(ctx, "", "k"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
	})
}

func TestDB_RawSQLText(t *testing.T) {
	// kv keys and values, and blob metadata, are strings on the wire (proto3: UTF-8): raw SQL must
	// not store a BLOB there (the API checks UTF-8 where it sends them, see api's tests).
	db := openDB(t, store.Options{QueryWrites: true})
	if err := db.Set(ctx, "", "k", "hello"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.StoreBlob(ctx, "", []byte("data"), ptr("meta")); err != nil {
		t.Fatal(err)
	}
	t.Run("ErrInvalid", func(t *testing.T) {
		for _, tc := range []struct{ sql, column string }{
			{"UPDATE kv SET value = x'00ff' WHERE key = 'k'", "kv.value"},
			{"INSERT INTO kv VALUES ('b', x'6869')", "kv.value"},
			{"INSERT OR REPLACE INTO kv VALUES ('k', x'6869')", "kv.value"},
			{"INSERT INTO kv VALUES (x'ff', 'v')", "kv.key"},
			{"UPDATE kv SET key = x'6b32' WHERE key = 'k'", "kv.key"},
			{"UPDATE blob SET metadata = x'ff'", "blob.metadata"},
			{"INSERT INTO blob(size, sha256, data, metadata) VALUES (1, x'00', x'00', x'00')", "blob.metadata"},
		} {
			_, err := db.Execute(ctx, tc.sql)
			if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), tc.column+" must be TEXT") {
				t.Errorf("Execute(%s) = %v, want ErrInvalid naming %s", tc.sql, err, tc.column)
			}
		}
		if v, err := db.Get(ctx, "", "k"); err != nil || v != "hello" {
			t.Fatalf("Get(k) = %q, %v; want the value before the refused writes", v, err)
		}
		// Numbers become TEXT by the column's affinity: still allowed.
		if _, err := db.Execute(ctx, "INSERT INTO kv VALUES ('n', 42)"); err != nil {
			t.Fatal(err)
		}
		if v, err := db.Get(ctx, "", "n"); err != nil || v != "42" {
			t.Fatalf("Get(n) = %q, %v", v, err)
		}
	})
}

func TestDB_RawSQLTextMigrated(t *testing.T) {
	// A store an older buffdbd made has no checks and may hold BLOB values raw SQL stored then:
	// opening it adds the checks without touching those rows.
	dir := t.TempDir()
	db := openAt(t, dir, store.Options{QueryWrites: true})
	for _, q := range []string{
		"DROP TRIGGER kv_text_ins", "DROP TRIGGER kv_text_upd", "DROP TRIGGER blob_text_ins", "DROP TRIGGER blob_text_upd",
		"INSERT INTO kv VALUES ('utf8', x'6869'), ('bytes', x'00ff')",
	} {
		if _, err := db.Execute(ctx, q); err != nil {
			t.Fatalf("Execute(%s): %v", q, err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = openAt(t, dir, store.Options{QueryWrites: true})
	if v, err := db.Get(ctx, "", "utf8"); err != nil || v != "hi" {
		t.Fatalf("Get(utf8) = %q, %v", v, err)
	}
	if v, err := db.Get(ctx, "", "bytes"); err != nil || v != "\x00\xff" {
		t.Fatalf("Get(bytes) = %q, %v", v, err)
	}
	if _, err := db.Execute(ctx, "UPDATE kv SET value = x'00' WHERE key = 'utf8'"); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("raw BLOB write after the upgrade: err = %v, want ErrInvalid", err)
	}
	if err := db.Set(ctx, "", "bytes", "fixed"); err != nil {
		t.Fatal(err)
	}
	if v, err := db.Get(ctx, "", "bytes"); err != nil || v != "fixed" {
		t.Fatalf("Get(bytes) after Set = %q, %v", v, err)
	}
}
