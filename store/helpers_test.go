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
		err := integrityCheck(db)
		if errors.Is(err, store.ErrClosed) {
			// The test closed it already: reopen the directory to check what it left on disk.
			db2, oerr := store.Open(context.Background(), dir, store.Options{})
			if oerr != nil {
				tb.Errorf("reopen for integrity check: %v", oerr)
				return
			}
			err = integrityCheck(db2)
			db2.Close()
		}
		if err != nil {
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

// payloadBlob commits a blob row for the written payload p and releases p's pin.
func payloadBlob(db *store.DB, p *store.PendingPayload, metadata *string) (uint64, error) {
	defer p.Release()
	var id uint64
	err := db.Update(context.Background(), func(tx *store.Tx) error {
		var err error
		id, err = tx.StorePayloadBlob(p.Payload(), metadata)
		return err
	})
	return id, err
}
