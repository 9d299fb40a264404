package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/buffdb/buffdbd/store"
)

// openDB opens a store in a fresh temp directory; cleanup checks integrity and closes it.
func openDB(tb testing.TB, opts store.Options) *store.DB {
	tb.Helper()
	return openAt(tb, tb.TempDir(), opts)
}

// openAt opens the store in dir with the same cleanup as openDB. Closing it early is fine.
func openAt(tb testing.TB, dir string, opts store.Options) *store.DB {
	tb.Helper()
	db, err := store.Open(context.Background(), dir, opts)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() {
		if err := integrityCheck(db); err != nil && !errors.Is(err, store.ErrClosed) {
			tb.Errorf("integrity check: %v", err)
		}
		if err := db.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return db
}

func integrityCheck(db *store.DB) error {
	var got []string
	err := db.Query(context.Background(), "PRAGMA integrity_check", func(_ []string, row []any) error {
		got = append(got, row[0].(string))
		return nil
	})
	if err != nil {
		return err
	}
	if len(got) != 1 || got[0] != "ok" {
		return errors.New("integrity_check: " + fmtList(got))
	}
	return nil
}

func fmtList(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += "; "
		}
		out += x
	}
	return out
}

func ptr(s string) *string { return &s }

var ctx = context.Background()
