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
