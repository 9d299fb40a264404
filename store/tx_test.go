package store_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/buffdb/buffdbd/store"
)

func TestDB_Update(t *testing.T) {
	db := openDB(t, store.Options{
		InlineMax: 1024,
		Migrations: []store.Migration{{Domain: "test", Version: 1,
			SQL: "CREATE TABLE thing(id INTEGER PRIMARY KEY, name TEXT UNIQUE)"}},
	})
	t.Run("OK", func(t *testing.T) {
		var blobID uint64
		err := db.Update(ctx, func(tx *store.Tx) error {
			if err := tx.Set("a", "1"); err != nil {
				return err
			}
			if v, err := tx.Get("a"); err != nil || v != "1" {
				return fmt.Errorf("own write: %q, %v", v, err)
			}
			if _, err := tx.Exec("INSERT INTO thing(name) VALUES (?)", "x"); err != nil {
				return err
			}
			var err error
			blobID, err = tx.StoreBlob(make([]byte, 2000), ptr("m"))
			if err != nil {
				return err
			}
			info, err := tx.StatBlob(blobID)
			if err != nil || info.Size != 2000 {
				return fmt.Errorf("StatBlob: %+v %v", info, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if v, _ := db.Get(ctx, "", "a"); v != "1" {
			t.Fatalf("a = %q", v)
		}
		if _, err := db.GetBlob(ctx, "", blobID); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("ErrorRollsBack", func(t *testing.T) {
		boom := errors.New("boom")
		err := db.Update(ctx, func(tx *store.Tx) error {
			tx.Set("b", "1")
			tx.Delete("a")
			tx.Exec("INSERT INTO thing(name) VALUES ('y')")
			tx.StoreBlob(make([]byte, 3000), nil)
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("err = %v, want boom", err)
		}
		if _, err := db.Get(ctx, "", "b"); !errors.Is(err, store.ErrNotFound) {
			t.Fatal("b was applied")
		}
		if v, _ := db.Get(ctx, "", "a"); v != "1" {
			t.Fatal("delete of a was applied")
		}
		if _, err := db.CollectGarbage(ctx); err != nil {
			t.Fatal(err)
		}
		if n := payloadFiles(t, db); n != 1 {
			t.Fatalf("payload files = %d, want 1 (rolled-back blob's file collected)", n)
		}
	})
	t.Run("ExecConstraintIsErrExists", func(t *testing.T) {
		err := db.Update(ctx, func(tx *store.Tx) error {
			_, err := tx.Exec("INSERT INTO thing(name) VALUES ('x')")
			return err
		})
		if !errors.Is(err, store.ErrExists) {
			t.Fatalf("err = %v, want ErrExists", err)
		}
	})
	t.Run("UseAfterReturn", func(t *testing.T) {
		var saved *store.Tx
		db.Update(ctx, func(tx *store.Tx) error { saved = tx; return nil })
		if err := saved.Set("late", "x"); err == nil {
			t.Fatal("Set on an ended Tx succeeded")
		}
	})
}

func TestDB_View(t *testing.T) {
	db := openDB(t, store.Options{})
	for i := 0; i < 5; i++ {
		db.Set(ctx, "", fmt.Sprintf("p/%d", i), fmt.Sprint(i))
	}
	db.Set(ctx, "", "q", "other")
	err := db.View(ctx, func(tx *store.Tx) error {
		var keys []string
		if err := tx.Scan("p/", "p/1", func(k, v string) error { keys = append(keys, k); return nil }); err != nil {
			return err
		}
		if fmt.Sprint(keys) != "[p/2 p/3 p/4]" {
			return fmt.Errorf("Scan = %v", keys)
		}
		if err := tx.Set("x", "y"); !errors.Is(err, store.ErrReadOnly) {
			return fmt.Errorf("Set in View err = %v", err)
		}
		n := 0
		if err := tx.Query("SELECT count(*) FROM kv", nil, func(scan func(...any) error) error { return scan(&n) }); err != nil {
			return err
		}
		if n != 6 {
			return fmt.Errorf("count = %d", n)
		}
		stop := errors.New("stop")
		if err := tx.Scan("", "", func(k, v string) error { return stop }); !errors.Is(err, stop) {
			return fmt.Errorf("Scan stop err = %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestOpen_Migrations(t *testing.T) {
	dir := t.TempDir()
	m1 := store.Migration{Domain: "reg", Version: 1, SQL: "CREATE TABLE r1(x)"}
	m2 := store.Migration{Domain: "reg", Version: 2, SQL: "CREATE TABLE r2(x)"}
	db := openAt(t, dir, store.Options{Migrations: []store.Migration{m2, m1}})
	db.Close()
	// Reopen with the same steps: nothing re-applied (CREATE TABLE would fail).
	db = openAt(t, dir, store.Options{Migrations: []store.Migration{m1, m2}})
	var rows []string
	db.Query(ctx, "SELECT domain, version FROM schema_migrations ORDER BY domain, version", func(_ []string, r []any) error {
		rows = append(rows, fmt.Sprint(r...))
		return nil
	})
	if fmt.Sprint(rows) != "[reg1 reg2 store1]" {
		t.Fatalf("schema_migrations = %v", rows)
	}
	db.Close()
	t.Run("Failing", func(t *testing.T) {
		bad := store.Migration{Domain: "reg", Version: 3, SQL: "CREATE TABLE r3(x); SELECT nonsense("}
		if _, err := store.Open(ctx, dir, store.Options{Migrations: []store.Migration{m1, m2, bad}}); err == nil {
			t.Fatal("bad migration accepted")
		}
		db := openAt(t, dir, store.Options{})
		err := db.Query(ctx, "SELECT * FROM r3", func([]string, []any) error { return nil })
		if err == nil {
			t.Fatal("failed migration left table r3 behind")
		}
	})
	t.Run("ErrNewer", func(t *testing.T) {
		// An older binary (knowing reg up to 1) must not write through a schema a newer one (reg 2)
		// migrated; a domain it has no steps for at all is not its business.
		_, err := store.Open(ctx, dir, store.Options{Migrations: []store.Migration{m1}})
		if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), "reg schema is at version 2, newer than the 1") {
			t.Fatalf("err = %v, want ErrInvalid naming the versions", err)
		}
		openAt(t, dir, store.Options{}).Close()
	})
	t.Run("Duplicate", func(t *testing.T) {
		if _, err := store.Open(ctx, t.TempDir(), store.Options{Migrations: []store.Migration{m1, m1}}); !errors.Is(err, store.ErrInvalid) {
			t.Fatalf("err = %v, want ErrInvalid", err)
		}
	})
}

// A panicking Update fn fails alone: its writes roll back and the committer keeps working.
func TestDB_UpdatePanic(t *testing.T) {
	db := openDB(t, store.Options{})
	err := db.Update(ctx, func(tx *store.Tx) error {
		tx.Set("p", "1")
		var m map[string]int
		m["boom"]++ // nil map write: panics
		return nil
	})
	if err == nil {
		t.Fatal("panicking Update returned nil")
	}
	if _, err := db.Get(ctx, "", "p"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("write of panicking Update applied: %v", err)
	}
	if err := db.Set(ctx, "", "after", "ok"); err != nil {
		t.Fatalf("committer dead after panic: %v", err)
	}
}

func TestTx_Find(t *testing.T) {
	db := openDB(t, store.Options{})
	db.CreateIndex(ctx, store.IndexDef{Name: "v", Type: store.IndexBTree, Kind: store.KindNumber})
	for i := 1; i <= 5; i++ {
		db.Set(ctx, "", fmt.Sprint("k", i), fmt.Sprint(i*10))
	}
	err := db.Update(ctx, func(tx *store.Tx) error {
		tx.Set("k6", "30") // visible to the Find below: same transaction
		var keys []string
		if err := tx.Find("v", "30", 0, func(k, _ string) error { keys = append(keys, k); return nil }); err != nil {
			return err
		}
		if fmt.Sprint(keys) != "[k3 k6]" {
			return fmt.Errorf("Find = %v", keys)
		}
		keys = nil
		r := store.Range{Lower: &store.Bound{Value: "20"}, Limit: 2}
		if err := tx.FindRange("v", r, func(k, _ string) error { keys = append(keys, k); return nil }); err != nil {
			return err
		}
		if fmt.Sprint(keys) != "[k3 k6]" {
			return fmt.Errorf("FindRange = %v", keys)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestParseDurability(t *testing.T) {
	for in, want := range map[string]store.Durability{"": store.DurabilitySync, "sync": store.DurabilitySync, "process": store.DurabilityProcess} {
		got, err := store.ParseDurability(in)
		if err != nil || got != want || (in != "" && got.String() != in) {
			t.Fatalf("ParseDurability(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := store.ParseDurability("fast"); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
}

// DurabilityProcess skips fsyncs but must behave identically otherwise.
func TestOpen_DurabilityProcess(t *testing.T) {
	dir := t.TempDir()
	db := openAt(t, dir, store.Options{Durability: store.DurabilityProcess, InlineMax: 100})
	id, err := db.StoreBlob(ctx, "", make([]byte, 1000), nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Set(ctx, "", "k", "v")
	db.Close()
	db = openAt(t, dir, store.Options{})
	if b, err := db.GetBlob(ctx, "", id); err != nil || len(b.Data) != 1000 {
		t.Fatalf("blob after reopen: %v", err)
	}
	if v, _ := db.Get(ctx, "", "k"); v != "v" {
		t.Fatal("key lost")
	}
}

// Disk full (simulated with max_page_count on the committer's connection) fails the write cleanly,
// and the store keeps working once space is back.
func TestDB_DiskFull(t *testing.T) {
	db := openDB(t, store.Options{})
	db.Set(ctx, "", "before", "1")
	big := strings.Repeat("x", 1<<20)
	err := db.Update(ctx, func(tx *store.Tx) error {
		var pages int64
		if err := tx.Query("PRAGMA page_count", nil, func(scan func(...any) error) error { return scan(&pages) }); err != nil {
			return err
		}
		if _, err := tx.Exec(fmt.Sprintf("PRAGMA max_page_count = %d", pages+2)); err != nil {
			return err
		}
		return tx.Set("big", big)
	})
	if !errors.Is(err, store.ErrNoSpace) {
		t.Fatalf("write beyond max_page_count: err = %v, want ErrNoSpace", err)
	}
	if _, err := db.Get(ctx, "", "big"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("failed write visible: %v", err)
	}
	if err := db.Set(ctx, "", "big", big); !errors.Is(err, store.ErrNoSpace) {
		t.Fatalf("second write beyond max_page_count: err = %v, want ErrNoSpace", err)
	}
	if err := db.Update(ctx, func(tx *store.Tx) error {
		_, err := tx.Exec("PRAGMA max_page_count = 1073741823")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Set(ctx, "", "after", big); err != nil {
		t.Fatalf("store broken after disk full: %v", err)
	}
	if v, _ := db.Get(ctx, "", "before"); v != "1" {
		t.Fatal("earlier data lost")
	}
}
