package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// textTriggers refuse a BLOB in kv.key, kv.value and blob.metadata. They are strings in BuffDB's
// API (proto3: UTF-8), and every write path of the store's own API binds TEXT there, but raw SQL
// (the Query service's Execute, the sqlite3 shell) could store x'00ff', which the TEXT column
// affinity keeps as a BLOB: Get returned bytes that are no string (a response that failed to
// encode), key lookups and `value = 'text'` never matched it, and index triggers saw no JSON.
// RAISE(ABORT) fails the statement whatever its conflict clause (see the index triggers); mapErr
// turns invalidMarker into ErrInvalid naming the column. Numbers need no check: the affinity makes
// them TEXT. Whether TEXT is valid UTF-8 no built-in function tells, so the API checks that where
// it sends strings.
//
// Triggers rather than a CHECK, which would mean rebuilding the table; created at Open rather than
// by a numbered migration, so a store opened once by this binary still opens with an older one (a
// fleet rolling back), which keeps the triggers and their protection. Rows stored before are left
// as they are: rewriting them could fail a unique index and keep the store from opening.
var textTriggers = []struct{ name, sql string }{
	{"kv_text_ins", `CREATE TRIGGER kv_text_ins BEFORE INSERT ON kv
	WHEN typeof(NEW.key) = 'blob' OR typeof(NEW.value) = 'blob' BEGIN ` + kvTextRaise + ` END`},
	{"kv_text_upd", `CREATE TRIGGER kv_text_upd BEFORE UPDATE ON kv
	WHEN typeof(NEW.key) = 'blob' OR typeof(NEW.value) = 'blob' BEGIN ` + kvTextRaise + ` END`},
	{"blob_text_ins", `CREATE TRIGGER blob_text_ins BEFORE INSERT ON blob
	WHEN typeof(NEW.metadata) = 'blob' BEGIN ` + blobTextRaise + ` END`},
	{"blob_text_upd", `CREATE TRIGGER blob_text_upd BEFORE UPDATE OF metadata ON blob
	WHEN typeof(NEW.metadata) = 'blob' BEGIN ` + blobTextRaise + ` END`},
}

const (
	// The WHEN clause admits only rows with a BLOB key or value: if it is not the key, it is the value.
	kvTextRaise = `SELECT RAISE(ABORT, '` + invalidMarker + `kv.key must be TEXT, not a BLOB (keys are UTF-8 strings)') WHERE typeof(NEW.key) = 'blob';
	SELECT RAISE(ABORT, '` + invalidMarker + `kv.value must be TEXT, not a BLOB (values are UTF-8 strings)');`
	blobTextRaise = `SELECT RAISE(ABORT, '` + invalidMarker + `blob.metadata must be TEXT or NULL, not a BLOB (metadata is a UTF-8 string)');`
)

// invalidMarker starts the RAISE(ABORT, ...) message of the store's triggers that refuse a raw
// write the API could not serve: mapErr reports it as ErrInvalid.
const invalidMarker = "buffdbd invalid: "

// refreshTextTriggers creates textTriggers where missing or different from this binary's, on c
// inside the caller's write transaction; it reports whether it changed anything.
func refreshTextTriggers(ctx context.Context, c *sql.Conn) (changed bool, err error) {
	for _, t := range textTriggers {
		var have string
		err := c.QueryRowContext(ctx, "SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND name = ?", t.name).Scan(&have)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return changed, err
		}
		if have == t.sql {
			continue
		}
		if _, err := c.ExecContext(ctx, "DROP TRIGGER IF EXISTS "+t.name); err != nil {
			return changed, err
		}
		if _, err := c.ExecContext(ctx, t.sql); err != nil {
			return changed, fmt.Errorf("create trigger %s: %w", t.name, err)
		}
		changed = true
	}
	return changed, nil
}
