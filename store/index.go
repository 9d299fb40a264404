package store

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// IndexType selects what lookups an index supports.
type IndexType int

const (
	IndexHash  IndexType = iota // exact match
	IndexBTree                  // exact match and ranges
)

// ValueKind says how indexed values compare.
type ValueKind int

const (
	KindString ValueKind = iota
	KindNumber           // values that do not parse as numbers are not indexed
)

// IndexDef defines a secondary index over KV values.
//
// A JSON path indexes the value found there when the KV value is valid JSON: strings, numbers (as
// their text for KindString) and true/false; missing paths, null, objects and arrays are not indexed.
// KindNumber indexes JSON numbers only (the whole value must itself be a JSON number when JSONPath is
// ""), so "12" indexes as 12 while "12abc" is not indexed.
type IndexDef struct {
	Name      string
	Type      IndexType
	Unique    bool
	JSONPath  string // "" indexes the whole value; else e.g. "$.framework"
	KeyPrefix string // "" indexes every key
	Kind      ValueKind
}

// uniqueMarker starts the RAISE message of a unique-index trigger, so mapErr can recognize it.
const uniqueMarker = "buffdb unique index violated: "

// maxIndexName bounds index names; they are identifiers, not data.
const maxIndexName = 256

func (d IndexDef) validate() error {
	switch {
	case d.Name == "":
		return fmt.Errorf("index name is empty: %w", ErrInvalid)
	case len(d.Name) > maxIndexName || !utf8.ValidString(d.Name) || strings.ContainsRune(d.Name, 0):
		return fmt.Errorf("index name %q: must be valid UTF-8 without NUL, at most %d bytes: %w", d.Name, maxIndexName, ErrInvalid)
	case d.Type != IndexHash && d.Type != IndexBTree:
		return fmt.Errorf("index %q: unknown type %d: %w", d.Name, d.Type, ErrInvalid)
	case d.Kind != KindString && d.Kind != KindNumber:
		return fmt.Errorf("index %q: unknown value kind %d: %w", d.Name, d.Kind, ErrInvalid)
	case d.JSONPath != "" && !strings.HasPrefix(d.JSONPath, "$"):
		return fmt.Errorf("index %q: JSON path %q must start with $: %w", d.Name, d.JSONPath, ErrInvalid)
	case d.JSONPath != "":
		if err := checkJSONPath(d.JSONPath); err != nil {
			return fmt.Errorf("index %q: bad JSON path %q: %v: %w", d.Name, d.JSONPath, err, ErrInvalid)
		}
	}
	return nil
}

// checkJSONPath checks p against SQLite's JSON path grammar: $ then steps .key, ."quoted key",
// [N], [#] or [#-N]. SQLite parses a path lazily, step by step while walking a document, so a
// malformed step is only reported when a value reaches it: json_extract('{}', '$[[') is NULL, but
// json_extract('[1]', '$[[') fails. An index created with such a path would make every later Set
// of a value that reaches the bad step fail in the index trigger, so the whole path is checked up
// front.
func checkJSONPath(p string) error {
	if strings.IndexByte(p, 0) >= 0 {
		return errors.New("NUL in path") // SQLite would silently stop reading the path there
	}
	if !strings.HasPrefix(p, "$") {
		return errors.New("must start with $")
	}
	digits := func(s string) int { // length of the run of ASCII digits starting s
		n := 0
		for n < len(s) && s[n] >= '0' && s[n] <= '9' {
			n++
		}
		return n
	}
	for i := 1; i < len(p); {
		switch p[i] {
		case '.':
			i++
			if i < len(p) && p[i] == '"' {
				end := strings.IndexByte(p[i+1:], '"')
				if end < 0 {
					return fmt.Errorf("unterminated quoted key at byte %d", i)
				}
				i += end + 2
				continue
			}
			n := strings.IndexAny(p[i:], ".[")
			if n < 0 {
				n = len(p) - i
			}
			if n == 0 {
				return fmt.Errorf("empty key at byte %d", i)
			}
			i += n
		case '[':
			j := i + 1
			if n := digits(p[j:]); n > 0 {
				j += n
			} else if j < len(p) && p[j] == '#' {
				j++
				if j+1 < len(p) && p[j] == '-' && digits(p[j+1:]) > 0 {
					j += 1 + digits(p[j+1:])
				}
			}
			if j == i+1 || j >= len(p) || p[j] != ']' {
				return fmt.Errorf("bad array index at byte %d (want [N], [#] or [#-N])", i)
			}
			i = j + 1
		default:
			return fmt.Errorf("unexpected %q at byte %d (want . or [)", p[i], i)
		}
	}
	return nil
}

// sqlText renders s as an SQL text literal that survives any bytes (quotes, NUL, invalid UTF-8):
// a hex blob cast to text.
func sqlText(s string) string {
	return "CAST(X'" + hex.EncodeToString([]byte(s)) + "' AS TEXT)"
}

// valueExpr is the SQL expression computing the indexed value of the kv value expression v, or NULL
// when the value is not indexed. Only built-in SQLite functions are used, so the triggers work for
// any SQLite client that opens the file (the sqlite3 shell, backups).
func (d IndexDef) valueExpr(v string) string {
	if d.JSONPath == "" {
		if d.Kind == KindString {
			return v
		}
		return fmt.Sprintf("CASE WHEN json_valid(%[1]s) THEN CASE WHEN json_type(%[1]s) IN ('integer','real') THEN json_extract(%[1]s, '$') END END", v)
	}
	p := sqlText(d.JSONPath)
	if d.Kind == KindNumber {
		return fmt.Sprintf("CASE WHEN json_valid(%[1]s) THEN CASE WHEN json_type(%[1]s, %[2]s) IN ('integer','real') THEN json_extract(%[1]s, %[2]s) END END", v, p)
	}
	// An integer is indexed as its JSON text (the -> operator), not json_extract's SQL value: SQLite
	// turns integers beyond int64 into REALs, so distinct ids like 12345678901234567890 and
	// 12345678901234567891 would both index as "1.2345678901234567e+19" — one unique-index
	// violation, and lookups by the written number finding nothing.
	return fmt.Sprintf(`CASE WHEN json_valid(%[1]s) THEN CASE json_type(%[1]s, %[2]s)
		WHEN 'text' THEN json_extract(%[1]s, %[2]s)
		WHEN 'integer' THEN %[1]s -> %[2]s
		WHEN 'real' THEN CAST(json_extract(%[1]s, %[2]s) AS TEXT)
		WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' END END`, v, p)
}

// keyCond is the SQL condition selecting keys with the index's prefix: a byte range, so it matches
// SQLite's BINARY ordering and lets the backfill use kv's primary key.
func (d IndexDef) keyCond(k string) string {
	if d.KeyPrefix == "" {
		return "1"
	}
	c := fmt.Sprintf("%s >= %s", k, sqlText(d.KeyPrefix))
	if hi, ok := prefixEnd(d.KeyPrefix); ok {
		c += fmt.Sprintf(" AND %s < %s", k, sqlText(hi))
	}
	return c
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// triggerSQL creates the three triggers that keep index id current on every kv write, whoever makes
// it (group commit, client transactions, Update, raw SQL).
func (d IndexDef) triggerSQL(id int64) []string {
	ins := fmt.Sprintf(`INSERT INTO kv_index_entry(index_id, value, key, is_unique)
		SELECT %d, v, NEW.key, %d FROM (SELECT %s AS v) WHERE v IS NOT NULL AND %s;`,
		id, boolInt(d.Unique), d.valueExpr("NEW.value"), d.keyCond("NEW.key"))
	del := fmt.Sprintf("DELETE FROM kv_index_entry WHERE index_id = %d AND key = OLD.key;", id)
	// The insert trigger clears NEW.key's entry first: INSERT OR REPLACE (raw SQL) deletes the old row
	// without firing delete triggers (unless recursive_triggers is on), which would leave it stale.
	delNew := fmt.Sprintf("DELETE FROM kv_index_entry WHERE index_id = %d AND key = NEW.key;", id)
	// Uniqueness is checked with RAISE(ABORT) before inserting, not only left to the partial unique
	// index: an outer INSERT OR REPLACE / OR IGNORE (raw SQL) imposes its conflict policy on trigger
	// statements, which would silently steal another key's entry or skip this one. RAISE always aborts.
	// An UPDATE may also rename the key (raw SQL: UPDATE kv SET key = ...): the entry of OLD.key is
	// about to be deleted, so it must not count as another key holding the value.
	check, checkUpd := "", ""
	if d.Unique {
		chk := func(others string) string {
			return fmt.Sprintf(`SELECT RAISE(ABORT, '%s%s') FROM (SELECT %s AS v) WHERE v IS NOT NULL AND %s
			AND EXISTS (SELECT 1 FROM kv_index_entry WHERE index_id = %d AND value = v AND %s);`,
				uniqueMarker, strings.ReplaceAll(d.Name, "'", "''"), d.valueExpr("NEW.value"), d.keyCond("NEW.key"), id, others)
		}
		check, checkUpd = chk("key <> NEW.key"), chk("key <> NEW.key AND key <> OLD.key")
	}
	return []string{
		fmt.Sprintf("CREATE TRIGGER kv_index_%d_ins AFTER INSERT ON kv BEGIN %s %s %s END", id, check, delNew, ins),
		fmt.Sprintf("CREATE TRIGGER kv_index_%d_upd AFTER UPDATE ON kv BEGIN %s %s %s END", id, checkUpd, del, ins),
		fmt.Sprintf("CREATE TRIGGER kv_index_%d_del AFTER DELETE ON kv BEGIN %s END", id, del),
	}
}

// refreshIndexTriggers recreates, in one transaction, the triggers of every index with one whose SQL
// differs from what this binary generates (or that is missing), and rebuilds that index's entries:
// a fix to the triggers, or to how values are indexed, then reaches indexes an older buffdbd
// created too. Nothing is written when they all match.
func (db *DB) refreshIndexTriggers(ctx context.Context) (err error) {
	c := db.wconn
	if _, err := c.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return err
	}
	changed := false
	defer func() {
		end := "ROLLBACK"
		if err == nil && changed {
			end = "COMMIT"
		}
		if _, e := c.ExecContext(context.Background(), end); err == nil {
			err = e
		}
	}()
	// The store's own triggers on kv (text.go), in the same transaction: one write lock per Open.
	if changed, err = refreshTextTriggers(ctx, c); err != nil {
		return err
	}
	type index struct {
		id  int64
		def IndexDef
	}
	var ixs []index
	rows, err := c.QueryContext(ctx, "SELECT id, name, type, is_unique, json_path, key_prefix, kind FROM kv_index")
	if err != nil {
		return err
	}
	for rows.Next() {
		var ix index
		d := &ix.def
		if err := rows.Scan(&ix.id, &d.Name, &d.Type, &d.Unique, &d.JSONPath, &d.KeyPrefix, &d.Kind); err != nil {
			rows.Close()
			return err
		}
		ixs = append(ixs, ix)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, ix := range ixs {
		// One savepoint per index: an index that cannot be refreshed keeps its old triggers and
		// entries (with a warning) rather than making the store impossible to open.
		if _, err := c.ExecContext(ctx, "SAVEPOINT refresh_index"); err != nil {
			return err
		}
		n, err := db.refreshIndex(ctx, c, ix.id, ix.def)
		if err != nil {
			if _, rerr := c.ExecContext(ctx, "ROLLBACK TO refresh_index"); rerr != nil {
				return rerr
			}
			db.log.Warn("could not refresh index; it keeps its old triggers", "index", ix.def.Name, "err", err)
		} else if n >= 0 {
			changed = true
			db.log.Info("recreated index triggers and rebuilt its entries", "index", ix.def.Name, "keys", n)
		}
		if _, err := c.ExecContext(ctx, "RELEASE refresh_index"); err != nil {
			return err
		}
	}
	return nil
}

// refreshIndex recreates index id's triggers if any differs from what def generates now, and then
// recomputes its entries (the indexed values may be computed differently now, and keys written
// before would keep values lookups no longer produce). It returns the keys indexed, or -1 when the
// triggers were current and nothing was done.
func (db *DB) refreshIndex(ctx context.Context, c *sql.Conn, id int64, def IndexDef) (int64, error) {
	stale := false
	for i, want := range def.triggerSQL(id) {
		name := fmt.Sprintf("kv_index_%d_%s", id, [...]string{"ins", "upd", "del"}[i])
		var have string
		err := c.QueryRowContext(ctx, "SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND name = ?", name).Scan(&have)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return 0, err
		}
		stale = stale || have != want
	}
	if !stale {
		return -1, nil
	}
	for i, want := range def.triggerSQL(id) {
		name := fmt.Sprintf("kv_index_%d_%s", id, [...]string{"ins", "upd", "del"}[i])
		if _, err := c.ExecContext(ctx, "DROP TRIGGER IF EXISTS "+name); err != nil {
			return 0, err
		}
		if _, err := c.ExecContext(ctx, want); err != nil {
			return 0, fmt.Errorf("recreate trigger %s: %w", name, err)
		}
	}
	if _, err := c.ExecContext(ctx, "DELETE FROM kv_index_entry WHERE index_id = ?", id); err != nil {
		return 0, err
	}
	n, err := backfill(ctx, c.ExecContext, id, def)
	return int64(n), err
}

// backfill indexes every existing key for index id (whose entries must be empty); ErrExists if
// existing values violate uniqueness.
func backfill(ctx context.Context, exec func(ctx context.Context, q string, args ...any) (sql.Result, error), id int64, d IndexDef) (uint64, error) {
	res, err := exec(ctx, fmt.Sprintf(`INSERT INTO kv_index_entry(index_id, value, key, is_unique)
		SELECT %d, v, key, %d FROM (SELECT key, %s AS v FROM kv WHERE %s) WHERE v IS NOT NULL`,
		id, boolInt(d.Unique), d.valueExpr("value"), d.keyCond("key")))
	if err != nil {
		if err = mapErr(err); errors.Is(err, ErrExists) {
			return 0, fmt.Errorf("index %q: existing values are not unique: %w", d.Name, ErrExists)
		}
		return 0, fmt.Errorf("backfill index %q: %w", d.Name, err)
	}
	n, err := res.RowsAffected()
	return uint64(n), err
}

// CreateIndex creates and backfills an index, returning how many keys it indexed. ErrExists if the
// name is taken or existing data violates uniqueness (then nothing is created); ErrInvalid for a bad
// definition.
func (db *DB) CreateIndex(ctx context.Context, def IndexDef) (uint64, error) {
	if err := db.checkOpen(); err != nil {
		return 0, err
	}
	if err := def.validate(); err != nil {
		return 0, err
	}
	return db.do(ctx, &op{fn: func(t *wtx) (uint64, error) { return t.createIndex(def) }})
}

func (t *wtx) createIndex(d IndexDef) (uint64, error) {
	if d.JSONPath != "" {
		var x any
		if err := t.q.queryRow(t.ctx, "SELECT json_extract('{}', ?)", d.JSONPath).Scan(&x); err != nil {
			return 0, fmt.Errorf("index %q: bad JSON path %q: %v: %w", d.Name, d.JSONPath, err, ErrInvalid)
		}
	}
	res, err := t.q.exec(t.ctx, `INSERT INTO kv_index(name, type, is_unique, json_path, key_prefix, kind)
		VALUES (?, ?, ?, ?, ?, ?)`, d.Name, int(d.Type), d.Unique, d.JSONPath, d.KeyPrefix, int(d.Kind))
	if err != nil {
		if err = mapErr(err); errors.Is(err, ErrExists) {
			return 0, fmt.Errorf("index %q: %w", d.Name, ErrExists)
		}
		return 0, fmt.Errorf("create index %q: %w", d.Name, err)
	}
	id, err := res.LastInsertId()
	if err != nil {
		return 0, err
	}
	for _, s := range d.triggerSQL(id) {
		if _, err := t.q.exec(t.ctx, s); err != nil {
			return 0, fmt.Errorf("create index %q: %w", d.Name, mapErr(err))
		}
	}
	return backfill(t.ctx, t.q.exec, id, d)
}

// DropIndex removes an index; ErrNotFound if missing.
func (db *DB) DropIndex(ctx context.Context, name string) error {
	if err := db.checkOpen(); err != nil {
		return err
	}
	_, err := db.do(ctx, &op{fn: func(t *wtx) (uint64, error) {
		var id int64
		err := t.q.queryRow(t.ctx, "SELECT id FROM kv_index WHERE name = ?", name).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return 0, fmt.Errorf("index %q: %w", name, ErrNotFound)
		}
		if err != nil {
			return 0, mapErr(err)
		}
		for _, s := range []string{
			fmt.Sprintf("DROP TRIGGER IF EXISTS kv_index_%d_ins", id),
			fmt.Sprintf("DROP TRIGGER IF EXISTS kv_index_%d_upd", id),
			fmt.Sprintf("DROP TRIGGER IF EXISTS kv_index_%d_del", id),
			fmt.Sprintf("DELETE FROM kv_index_entry WHERE index_id = %d", id),
			fmt.Sprintf("DELETE FROM kv_index WHERE id = %d", id),
		} {
			if _, err := t.q.exec(t.ctx, s); err != nil {
				return 0, fmt.Errorf("drop index %q: %w", name, mapErr(err))
			}
		}
		return 0, nil
	}})
	return err
}

// ListIndexes returns all index definitions ordered by name.
func (db *DB) ListIndexes(ctx context.Context) ([]IndexDef, error) {
	if err := db.checkOpen(); err != nil {
		return nil, err
	}
	rows, err := db.rstmt.query(ctx, "SELECT name, type, is_unique, json_path, key_prefix, kind FROM kv_index ORDER BY name")
	if err != nil {
		return nil, mapErr(err)
	}
	defer rows.Close()
	var defs []IndexDef
	for rows.Next() {
		var d IndexDef
		if err := rows.Scan(&d.Name, &d.Type, &d.Unique, &d.JSONPath, &d.KeyPrefix, &d.Kind); err != nil {
			return nil, err
		}
		defs = append(defs, d)
	}
	return defs, mapErr(rows.Err())
}

type indexInfo struct {
	id   int64
	typ  IndexType
	kind ValueKind
}

func lookupIndex(ctx context.Context, q querier, name string) (indexInfo, error) {
	var ix indexInfo
	err := q.queryRow(ctx, "SELECT id, type, kind FROM kv_index WHERE name = ?", name).Scan(&ix.id, &ix.typ, &ix.kind)
	if errors.Is(err, sql.ErrNoRows) {
		return ix, fmt.Errorf("index %q: %w", name, ErrNotFound)
	}
	return ix, mapErr(err)
}

// arg converts a lookup value to what the index stores: text, or a number for KindNumber indexes.
func (ix indexInfo) arg(name, v string) (any, error) {
	if ix.kind == KindString {
		return v, nil
	}
	s := strings.TrimSpace(v)
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return i, nil // exact for integers beyond float64's 2^53
	}
	f, err := strconv.ParseFloat(s, 64)
	// Out of range ("1e999") is ±Inf, which is what SQLite indexed for such a JSON number.
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return nil, fmt.Errorf("index %q holds numbers; %q is not one: %w", name, v, ErrInvalid)
	}
	if math.IsNaN(f) {
		// SQLite binds NaN as NULL, which compares with nothing: the lookup would silently be empty.
		return nil, fmt.Errorf("index %q: NaN is not a number an index can hold: %w", name, ErrInvalid)
	}
	return f, nil
}

// limitArg maps limit 0 (unlimited) to SQLite's -1; negative limits are invalid.
func limitArg(limit int) (int, error) {
	if limit < 0 {
		return 0, fmt.Errorf("limit %d: must not be negative: %w", limit, ErrInvalid)
	}
	if limit == 0 {
		return -1, nil
	}
	return limit, nil
}

// Hit is one key found by Find or FindRange.
type Hit struct {
	Key   string
	Value string // the key's whole current value
	// Indexed is the value the index holds for the key, as text: a string index's value itself, a
	// number index's number in its shortest exact decimal form ("10", "2.5", "+Inf"). With Key it
	// is the Cursor to resume after this hit.
	Indexed string
}

// Cursor is a position in FindRange's order (indexed value, then key): the Indexed and Key of the
// last Hit of the previous page.
type Cursor struct {
	Indexed string
	Key     string
}

// Find calls fn for each key whose indexed value equals value, in key order, only keys after
// *after when after is not nil (the last key of the previous page); limit 0 = unlimited. fn
// returning an error stops Find, which returns it.
func (db *DB) Find(ctx context.Context, txID, index, value string, limit int, after *string, fn func(Hit) error) error {
	if err := db.checkOpen(); err != nil {
		return err
	}
	if txID != "" {
		return db.streamInTx(ctx, txID, func(ctx context.Context, q querier, emit func(Hit) error) error {
			return find(ctx, q, index, value, limit, after, emit)
		}, fn)
	}
	return streamRead(ctx, db, func(ctx context.Context, emit func(Hit) error) error {
		return db.readView(ctx, func(q querier) error { return find(ctx, q, index, value, limit, after, emit) })
	}, hitSize, fn)
}

func find(ctx context.Context, q querier, index, value string, limit int, after *string, fn func(Hit) error) error {
	ix, err := lookupIndex(ctx, q, index)
	if err != nil {
		return err
	}
	v, err := ix.arg(index, value)
	if err != nil {
		return err
	}
	lim, err := limitArg(limit)
	if err != nil {
		return err
	}
	cond, args := "", []any{ix.id, v}
	if after != nil {
		cond, args = " AND e.key > ?", append(args, *after)
	}
	rows, err := q.query(ctx, `SELECT e.key, kv.value, e.value FROM kv_index_entry e JOIN kv ON kv.key = e.key
		WHERE e.index_id = ? AND e.value = ?`+cond+` ORDER BY e.key LIMIT ?`, append(args, lim)...)
	return streamHits(rows, err, fn)
}

func streamHits(rows *sql.Rows, err error, fn func(Hit) error) error {
	if err != nil {
		return mapErr(err)
	}
	defer rows.Close()
	for rows.Next() {
		var h Hit
		var indexed any
		if err := rows.Scan(&h.Key, &h.Value, &indexed); err != nil {
			return err
		}
		h.Indexed = indexedText(indexed)
		if err := fn(h); err != nil {
			return err
		}
	}
	return mapErr(rows.Err())
}

// indexedText renders an index entry's value: text as it is, numbers so that parsing them back
// (indexInfo.arg) gives the same number.
func indexedText(v any) string {
	switch x := v.(type) {
	case int64:
		return strconv.FormatInt(x, 10)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case []byte:
		return string(x)
	case string:
		return x
	}
	return fmt.Sprint(v)
}

// Bound is one end of a range; nil means open.
type Bound struct {
	Value     string
	Inclusive bool
}

// Range selects indexed values for FindRange.
type Range struct {
	Lower, Upper *Bound
	Limit        int
	Descending   bool
	// After resumes after this position (the previous page's last Hit): only hits that come after
	// it in the order FindRange returns them. Keys that share an indexed value are neither lost
	// nor repeated across pages, which a bound alone cannot do.
	After *Cursor
}

// FindRange calls fn for keys whose indexed value is within r, ordered by indexed value then key
// (reversed when Descending); btree only (ErrInvalid for hash). Number indexes compare numerically.
func (db *DB) FindRange(ctx context.Context, txID, index string, r Range, fn func(Hit) error) error {
	if err := db.checkOpen(); err != nil {
		return err
	}
	if txID != "" {
		return db.streamInTx(ctx, txID, func(ctx context.Context, q querier, emit func(Hit) error) error {
			return findRange(ctx, q, index, r, emit)
		}, fn)
	}
	return streamRead(ctx, db, func(ctx context.Context, emit func(Hit) error) error {
		return db.readView(ctx, func(q querier) error { return findRange(ctx, q, index, r, emit) })
	}, hitSize, fn)
}

func findRange(ctx context.Context, q querier, index string, r Range, fn func(Hit) error) error {
	ix, err := lookupIndex(ctx, q, index)
	if err != nil {
		return err
	}
	if ix.typ != IndexBTree {
		return fmt.Errorf("index %q is a hash index; ranges need a btree index: %w", index, ErrInvalid)
	}
	lim, err := limitArg(r.Limit)
	if err != nil {
		return err
	}
	cond, args := "e.index_id = ?", []any{ix.id}
	for _, b := range []struct {
		bound  *Bound
		op, eq string
	}{{r.Lower, ">", ">="}, {r.Upper, "<", "<="}} {
		if b.bound == nil {
			continue
		}
		v, err := ix.arg(index, b.bound.Value)
		if err != nil {
			return err
		}
		op := b.op
		if b.bound.Inclusive {
			op = b.eq
		}
		cond += " AND e.value " + op + " ?"
		args = append(args, v)
	}
	if r.After != nil {
		v, err := ix.arg(index, r.After.Indexed)
		if err != nil {
			return fmt.Errorf("cursor: %w", err)
		}
		// A row value comparison: SQLite walks the (index_id, value, key) primary key from there.
		op := ">"
		if r.Descending {
			op = "<"
		}
		cond += " AND (e.value, e.key) " + op + " (?, ?)"
		args = append(args, v, r.After.Key)
	}
	order := "e.value, e.key"
	if r.Descending {
		order = "e.value DESC, e.key DESC"
	}
	rows, err := q.query(ctx, "SELECT e.key, kv.value, e.value FROM kv_index_entry e JOIN kv ON kv.key = e.key WHERE "+
		cond+" ORDER BY "+order+" LIMIT ?", append(args, lim)...)
	return streamHits(rows, err, fn)
}

// readView runs fn on one pooled read connection inside a read transaction, so multi-statement
// reads (index lookup, then rows) see one snapshot.
func (db *DB) readView(ctx context.Context, fn func(q querier) error) error {
	conn, err := db.rdb.Conn(ctx)
	if err != nil {
		return mapErr(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN"); err != nil {
		return mapErr(err)
	}
	defer conn.ExecContext(context.Background(), "ROLLBACK")
	return fn(&plainConn{conn})
}

// plainConn is a querier that does not cache statements: for one-off connections.
type plainConn struct{ c *sql.Conn }

func (p *plainConn) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return p.c.ExecContext(ctx, q, args...)
}
func (p *plainConn) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return p.c.QueryContext(ctx, q, args...)
}
func (p *plainConn) queryRow(ctx context.Context, q string, args ...any) scanner {
	return p.c.QueryRowContext(ctx, q, args...)
}
