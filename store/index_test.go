package store_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/buffdb/buffdbd/store"
)

func findKeys(t *testing.T, db *store.DB, txID, index, value string) []string {
	t.Helper()
	var keys []string
	if err := db.Find(ctx, txID, index, value, 0, nil, func(h store.Hit) error { keys = append(keys, h.Key); return nil }); err != nil {
		t.Fatalf("Find(%s, %q): %v", index, value, err)
	}
	return keys
}

func TestDB_CreateIndex(t *testing.T) {
	db := openDB(t, store.Options{})
	db.Set(ctx, "", "model:a", `{"framework":"torch","size":10}`)
	db.Set(ctx, "", "model:b", `{"framework":"onnx","size":2.5}`)
	db.Set(ctx, "", "model:c", `{"framework":"torch","size":100}`)
	db.Set(ctx, "", "other:x", `{"framework":"torch"}`)
	db.Set(ctx, "", "model:bad", `not json`)
	t.Run("Backfill", func(t *testing.T) {
		n, err := db.CreateIndex(ctx, store.IndexDef{Name: "fw", JSONPath: "$.framework", KeyPrefix: "model:"})
		if err != nil {
			t.Fatal(err)
		}
		if n != 3 {
			t.Fatalf("indexed %d keys, want 3", n)
		}
		if got := fmt.Sprint(findKeys(t, db, "", "fw", "torch")); got != "[model:a model:c]" {
			t.Fatalf("Find torch = %s", got)
		}
	})
	t.Run("ErrExists", func(t *testing.T) {
		if _, err := db.CreateIndex(ctx, store.IndexDef{Name: "fw"}); !errors.Is(err, store.ErrExists) {
			t.Fatalf("err = %v, want ErrExists", err)
		}
		// Backfill violating uniqueness: nothing is created.
		if _, err := db.CreateIndex(ctx, store.IndexDef{Name: "ufw", JSONPath: "$.framework", Unique: true}); !errors.Is(err, store.ErrExists) {
			t.Fatalf("err = %v, want ErrExists", err)
		}
		defs, _ := db.ListIndexes(ctx)
		if len(defs) != 1 {
			t.Fatalf("indexes = %+v, want only fw", defs)
		}
	})
	t.Run("ErrInvalid", func(t *testing.T) {
		for _, d := range []store.IndexDef{{}, {Name: "x", JSONPath: "framework"}, {Name: "x", JSONPath: "$.["}, {Name: "x", Type: 7}, {Name: "x", Kind: 9}} {
			if _, err := db.CreateIndex(ctx, d); !errors.Is(err, store.ErrInvalid) {
				t.Fatalf("CreateIndex(%+v) err = %v, want ErrInvalid", d, err)
			}
		}
	})
	t.Run("ListDrop", func(t *testing.T) {
		db.CreateIndex(ctx, store.IndexDef{Name: "a-first", Type: store.IndexBTree, Unique: true})
		defs, err := db.ListIndexes(ctx)
		if err != nil || len(defs) != 2 || defs[0].Name != "a-first" || !defs[0].Unique || defs[0].Type != store.IndexBTree || defs[1].JSONPath != "$.framework" || defs[1].KeyPrefix != "model:" {
			t.Fatalf("ListIndexes = %+v, %v", defs, err)
		}
		if err := db.DropIndex(ctx, "a-first"); err != nil {
			t.Fatal(err)
		}
		if err := db.DropIndex(ctx, "a-first"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("second drop err = %v", err)
		}
		if err := db.Find(ctx, "", "a-first", "x", 0, nil, func(store.Hit) error { return nil }); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Find on dropped index err = %v", err)
		}
		// Writes after a drop must not touch the dropped index.
		if err := db.Set(ctx, "", "dup", "same"); err != nil {
			t.Fatal(err)
		}
		if err := db.Set(ctx, "", "dup2", "same"); err != nil {
			t.Fatal(err)
		}
	})
}

// TestDB_IndexMaintenance checks every write path keeps the index current and that a unique
// violation fails only that write, changing nothing.
func TestDB_IndexMaintenance(t *testing.T) {
	db := openDB(t, store.Options{QueryWrites: true})
	if _, err := db.CreateIndex(ctx, store.IndexDef{Name: "owner", JSONPath: "$.owner", Unique: true}); err != nil {
		t.Fatal(err)
	}
	paths := map[string]func(key, value string) error{
		"DB.Set": func(k, v string) error { return db.Set(ctx, "", k, v) },
		"Writer": func(k, v string) error {
			_, err := db.NewWriter().Set("", k, v).Wait(ctx)
			return err
		},
		"Update": func(k, v string) error {
			return db.Update(ctx, func(tx *store.Tx) error { return tx.Set(k, v) })
		},
		"ClientTx": func(k, v string) error {
			tx, err := db.Begin(ctx, false, 0)
			if err != nil {
				return err
			}
			if err := db.Set(ctx, tx, k, v); err != nil {
				db.Rollback(ctx, tx)
				return err
			}
			return db.Commit(ctx, tx)
		},
		"ExecuteReplace": func(k, v string) error {
			_, err := db.Execute(ctx, fmt.Sprintf("INSERT OR REPLACE INTO kv VALUES ('%s', '%s')", k, v))
			return err
		},
		"ExecuteIgnore": func(k, v string) error {
			_, err := db.Execute(ctx, fmt.Sprintf("INSERT OR IGNORE INTO kv VALUES ('%s', '%s') ON CONFLICT(key) DO UPDATE SET value = excluded.value", k, v))
			return err
		},
		"Execute": func(k, v string) error {
			_, err := db.Execute(ctx, fmt.Sprintf("INSERT INTO kv VALUES ('%s', '%s') ON CONFLICT(key) DO UPDATE SET value = excluded.value", k, v))
			return err
		},
	}
	for name, set := range paths {
		t.Run(name, func(t *testing.T) {
			k1, k2 := name+"/1", name+"/2"
			o1, o2 := name+"-alice", name+"-bob"
			if err := set(k1, fmt.Sprintf(`{"owner":"%s"}`, o1)); err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprint(findKeys(t, db, "", "owner", o1)); got != "["+k1+"]" {
				t.Fatalf("after insert: %s", got)
			}
			// Update moves the entry.
			if err := set(k1, fmt.Sprintf(`{"owner":"%s"}`, o2)); err != nil {
				t.Fatal(err)
			}
			if got := findKeys(t, db, "", "owner", o1); len(got) != 0 {
				t.Fatalf("stale entry: %v", got)
			}
			// Unique violation: ErrExists, k2 not written.
			err := set(k2, fmt.Sprintf(`{"owner":"%s"}`, o2))
			if !errors.Is(err, store.ErrExists) {
				t.Fatalf("err = %v, want ErrExists", err)
			}
			if name != "Execute" && name != "ExecuteReplace" && name != "ExecuteIgnore" && !strings.Contains(err.Error(), `unique index "owner"`) {
				t.Fatalf("err %q does not name the index", err)
			}
			if _, err := db.Get(ctx, "", k2); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("violating write was applied: %v", err)
			}
			if got := fmt.Sprint(findKeys(t, db, "", "owner", o2)); got != "["+k1+"]" {
				t.Fatalf("after violation: %s", got)
			}
			// Re-setting the same key to its own value is not a violation.
			if err := set(k1, fmt.Sprintf(`{"owner":"%s"}`, o2)); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("Delete", func(t *testing.T) {
		db.Set(ctx, "", "d", `{"owner":"dora"}`)
		db.Delete(ctx, "", "d")
		if got := findKeys(t, db, "", "owner", "dora"); len(got) != 0 {
			t.Fatalf("entry survived delete: %v", got)
		}
		if err := db.Set(ctx, "", "d2", `{"owner":"dora"}`); err != nil {
			t.Fatalf("value freed by delete still taken: %v", err)
		}
	})
	t.Run("InTxVisible", func(t *testing.T) {
		tx, _ := db.Begin(ctx, false, 0)
		defer db.Rollback(ctx, tx)
		db.Set(ctx, tx, "t", `{"owner":"tina"}`)
		if got := fmt.Sprint(findKeys(t, db, tx, "owner", "tina")); got != "[t]" {
			t.Fatalf("Find in tx = %s", got)
		}
	})
}

func TestDB_FindRange(t *testing.T) {
	db := openDB(t, store.Options{})
	for i, v := range []string{"10", "9", "100", "-1.5", "abc", "2e1"} {
		db.Set(ctx, "", fmt.Sprintf("n%d", i), v)
	}
	if _, err := db.CreateIndex(ctx, store.IndexDef{Name: "num", Type: store.IndexBTree, Kind: store.KindNumber}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.CreateIndex(ctx, store.IndexDef{Name: "str", Type: store.IndexBTree}); err != nil {
		t.Fatal(err)
	}
	db.CreateIndex(ctx, store.IndexDef{Name: "hash"})
	values := func(index string, r store.Range) string {
		t.Helper()
		var out []string
		if err := db.FindRange(ctx, "", index, r, func(h store.Hit) error { out = append(out, h.Value); return nil }); err != nil {
			t.Fatalf("FindRange(%s): %v", index, err)
		}
		return fmt.Sprint(out)
	}
	cases := []struct {
		index string
		r     store.Range
		want  string
	}{
		{"num", store.Range{}, "[-1.5 9 10 2e1 100]"}, // numeric order; "abc" not indexed
		{"str", store.Range{}, "[-1.5 10 100 2e1 9 abc]"},
		{"num", store.Range{Lower: &store.Bound{Value: "9", Inclusive: true}, Upper: &store.Bound{Value: "20"}}, "[9 10]"},
		{"num", store.Range{Lower: &store.Bound{Value: "9"}, Upper: &store.Bound{Value: "20", Inclusive: true}}, "[10 2e1]"},
		{"num", store.Range{Descending: true, Limit: 2}, "[100 2e1]"},
		{"str", store.Range{Lower: &store.Bound{Value: "2"}}, "[2e1 9 abc]"},
	}
	for _, c := range cases {
		if got := values(c.index, c.r); got != c.want {
			t.Errorf("FindRange(%s, %+v) = %s, want %s", c.index, c.r, got, c.want)
		}
	}
	if got := fmt.Sprint(findKeys(t, db, "", "num", "20")); got != "[n5]" {
		t.Errorf("Find num 20 = %s, want [n5] (2e1)", got)
	}
	t.Run("ErrInvalid", func(t *testing.T) {
		nop := func(store.Hit) error { return nil }
		if err := db.FindRange(ctx, "", "hash", store.Range{}, nop); !errors.Is(err, store.ErrInvalid) {
			t.Fatalf("range on hash err = %v", err)
		}
		if err := db.FindRange(ctx, "", "num", store.Range{Lower: &store.Bound{Value: "x"}}, nop); !errors.Is(err, store.ErrInvalid) {
			t.Fatalf("non-numeric bound err = %v", err)
		}
		if err := db.FindRange(ctx, "", "num", store.Range{Limit: -1}, nop); !errors.Is(err, store.ErrInvalid) {
			t.Fatalf("negative limit err = %v", err)
		}
		if err := db.FindRange(ctx, "", "missing", store.Range{}, nop); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("missing index err = %v", err)
		}
	})
}

// TestDB_CreateIndexJSONPath: SQLite reports a malformed JSON path only when a document reaches the
// bad step, so CreateIndex checks the whole path itself; otherwise an index made while no value
// reached the step would make every later Set of such a value fail in the index trigger.
func TestDB_CreateIndexJSONPath(t *testing.T) {
	docs := []string{`{}`, `[]`, `1`, `"s"`, `null`, `{"a":{"b":[{"c":1}]}}`, `[[1,[2]]]`, `{"a":[1]}`, `{"a b":{"x.y":[0]}}`,
		`{"":1}`, `[{"a":[[1]]}]`}
	t.Run("ErrInvalid", func(t *testing.T) {
		for _, p := range []string{"$[[", "$[x]", "$.", "$..a", "$[#-x]", "$a", "$.a[", "$[0", `$."a`, "$[-1]", "$[#-]",
			"$[#x]", "$[]", "$.a\x00[[", "$ .a"} {
			db := openDB(t, store.Options{})
			if _, err := db.CreateIndex(ctx, store.IndexDef{Name: "x", JSONPath: p}); !errors.Is(err, store.ErrInvalid) {
				t.Fatalf("CreateIndex(path %q) err = %v, want ErrInvalid", p, err)
			}
			for _, d := range docs {
				if err := db.Set(ctx, "", "k", d); err != nil {
					t.Fatalf("Set(%s) after refusing path %q: %v", d, p, err)
				}
			}
		}
	})
	t.Run("OK", func(t *testing.T) {
		for _, p := range []string{"$", "$.a", "$.a.b[0].c", "$[0][1][0]", "$[#]", "$[#-1]", "$[#-12]", `$."a b"."x.y"[0]`,
			`$.a b`, `$.""`, `$[0].a[0][0]`, "$.a.b.c.d.e"} {
			db := openDB(t, store.Options{})
			if _, err := db.CreateIndex(ctx, store.IndexDef{Name: "x", JSONPath: p}); err != nil {
				t.Fatalf("CreateIndex(path %q): %v", p, err)
			}
			for _, d := range docs {
				if err := db.Set(ctx, "", "k", d); err != nil {
					t.Fatalf("Set(%s) with an index on %q: %v", d, p, err)
				}
			}
		}
	})
}

// TestDB_FindNumberExtremes: a number index holds what SQLite makes of a JSON number, including
// ±Inf for ones beyond float64 ("1e999") and int64 extremes exactly; lookups must address them, and
// NaN (which SQLite binds as NULL, matching nothing) is refused rather than silently empty.
func TestDB_FindNumberExtremes(t *testing.T) {
	db := openDB(t, store.Options{})
	for k, v := range map[string]string{"big": "1e999", "neg": "-1e999", "max": "9223372036854775807",
		"min": "-9223372036854775808", "over": "9223372036854775808", "nan": "NaN", "small": "1e-999"} {
		db.Set(ctx, "", k, v)
	}
	if _, err := db.CreateIndex(ctx, store.IndexDef{Name: "num", Type: store.IndexBTree, Kind: store.KindNumber}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ value, want string }{
		{"1e999", "[big]"}, {"Infinity", "[big]"}, {"-1e999", "[neg]"}, {"9223372036854775807", "[max]"},
		{"-9223372036854775808", "[min]"}, {"9223372036854775808", "[over]"}, {"0", "[small]"},
	} {
		if got := fmt.Sprint(findKeys(t, db, "", "num", c.value)); got != c.want {
			t.Errorf("Find(num, %s) = %s, want %s", c.value, got, c.want)
		}
	}
	nop := func(store.Hit) error { return nil }
	if err := db.Find(ctx, "", "num", "NaN", 0, nil, nop); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("Find(NaN) err = %v, want ErrInvalid", err)
	}
	if err := db.FindRange(ctx, "", "num", store.Range{Upper: &store.Bound{Value: "nan"}}, nop); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("FindRange(upper NaN) err = %v, want ErrInvalid", err)
	}
	var got []string
	err := db.FindRange(ctx, "", "num", store.Range{Lower: &store.Bound{Value: "9223372036854775807"}}, func(h store.Hit) error {
		got = append(got, h.Key)
		return nil
	})
	if err != nil || fmt.Sprint(got) != "[over big]" { // SQLite compares integers and reals exactly
		t.Errorf("FindRange(> int64 max) = %v, %v; want [over big]", got, err)
	}
}

// TestDB_IndexUniqueRenameKey: a raw UPDATE renaming a key keeps its unique value; the key's own old
// entry is not another key holding it.
func TestDB_IndexUniqueRenameKey(t *testing.T) {
	db := openDB(t, store.Options{QueryWrites: true})
	db.Set(ctx, "", "a", "v1")
	db.Set(ctx, "", "c", "v3")
	if _, err := db.CreateIndex(ctx, store.IndexDef{Name: "u", Unique: true}); err != nil {
		t.Fatal(err)
	}
	if n, err := db.Execute(ctx, "UPDATE kv SET key = 'b' WHERE key = 'a'"); err != nil || n != 1 {
		t.Fatalf("rename a to b = %d, %v", n, err)
	}
	if got := fmt.Sprint(findKeys(t, db, "", "u", "v1")); got != "[b]" {
		t.Fatalf("Find v1 = %s, want [b]", got)
	}
	// Still unique: renaming onto another key's value, or giving a key another's value, fails.
	if _, err := db.Execute(ctx, "UPDATE kv SET key = 'd', value = 'v3' WHERE key = 'b'"); !errors.Is(err, store.ErrExists) {
		t.Fatalf("rename taking c's value: %v, want ErrExists", err)
	}
	if err := db.Set(ctx, "", "b", "v3"); !errors.Is(err, store.ErrExists) {
		t.Fatalf("Set b = v3: %v, want ErrExists", err)
	}
}

// TestOpen_RefreshesIndexTriggers: triggers that differ from what this binary generates (an older
// buffdbd's, or dropped by raw SQL) are recreated at Open, so trigger fixes reach existing indexes.
func TestOpen_RefreshesIndexTriggers(t *testing.T) {
	dir := t.TempDir()
	db := openAt(t, dir, store.Options{QueryWrites: true})
	db.Set(ctx, "", "a", "v1")
	if _, err := db.CreateIndex(ctx, store.IndexDef{Name: "u", Unique: true}); err != nil {
		t.Fatal(err)
	}
	var id int64
	db.Query(ctx, "SELECT id FROM kv_index WHERE name = 'u'", func(_ []string, r []any) error { id = r[0].(int64); return nil })
	// The upd trigger as buffdbd generated it before renames were handled, and no del trigger.
	for _, q := range []string{
		fmt.Sprintf("DROP TRIGGER kv_index_%d_upd", id),
		fmt.Sprintf("DROP TRIGGER kv_index_%d_del", id),
		fmt.Sprintf(`CREATE TRIGGER kv_index_%[1]d_upd AFTER UPDATE ON kv BEGIN
			SELECT RAISE(ABORT, 'buffdb unique index violated: u') FROM (SELECT NEW.value AS v) WHERE v IS NOT NULL
			AND EXISTS (SELECT 1 FROM kv_index_entry WHERE index_id = %[1]d AND value = v AND key <> NEW.key);
			DELETE FROM kv_index_entry WHERE index_id = %[1]d AND key = OLD.key;
			INSERT INTO kv_index_entry(index_id, value, key, is_unique) SELECT %[1]d, NEW.value, NEW.key, 1; END`, id),
	} {
		if _, err := db.Execute(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// An entry as an older buffdbd may have computed it differently: the rebuild at Open replaces it.
	if _, err := db.Execute(ctx, "UPDATE kv_index_entry SET value = 'stale'"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db = openAt(t, dir, store.Options{QueryWrites: true})
	if got := fmt.Sprint(findKeys(t, db, "", "u", "v1")); got != "[a]" {
		t.Fatalf("Find v1 after reopen = %s, want [a] (entries rebuilt)", got)
	}
	if _, err := db.Execute(ctx, "UPDATE kv SET key = 'b' WHERE key = 'a'"); err != nil {
		t.Fatalf("rename after reopen: %v", err)
	}
	if err := db.Delete(ctx, "", "b"); err != nil {
		t.Fatal(err)
	}
	var n int64
	db.Query(ctx, "SELECT count(*) FROM kv_index_entry", func(_ []string, r []any) error { n = r[0].(int64); return nil })
	if n != 0 {
		t.Fatalf("%d index entries left after deleting the only key (delete trigger not restored)", n)
	}
}

// TestDB_FindPaging: pages of Find (after a key) and FindRange (after a cursor) put together give
// exactly the unpaged result, also when many keys share an indexed value, which moving a bound to
// the last value cannot do (it loses or repeats the keys sharing it).
func TestDB_FindPaging(t *testing.T) {
	db := openDB(t, store.Options{})
	w := db.NewWriter()
	for i := range 40 {
		w.Set("", fmt.Sprintf("k%02d", i), fmt.Sprintf(`{"s":"v%d","n":%s}`, i%4, []string{"2.5", "-1", "10", "1e999", "7"}[i%5]))
	}
	w.Close()
	for _, d := range []store.IndexDef{
		{Name: "s", Type: store.IndexBTree, JSONPath: "$.s"},
		{Name: "n", Type: store.IndexBTree, JSONPath: "$.n", Kind: store.KindNumber},
	} {
		if _, err := db.CreateIndex(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	for _, index := range []string{"s", "n"} {
		for _, desc := range []bool{false, true} {
			var all []string
			err := db.FindRange(ctx, "", index, store.Range{Descending: desc}, func(h store.Hit) error {
				all = append(all, h.Indexed+"/"+h.Key)
				return nil
			})
			if err != nil || len(all) != 40 {
				t.Fatalf("%s: unpaged %d hits, %v", index, len(all), err)
			}
			var paged []string
			r := store.Range{Descending: desc, Limit: 3}
			for page := 0; ; page++ {
				n := 0
				err := db.FindRange(ctx, "", index, r, func(h store.Hit) error {
					paged = append(paged, h.Indexed+"/"+h.Key)
					r.After = &store.Cursor{Indexed: h.Indexed, Key: h.Key}
					n++
					return nil
				})
				if err != nil {
					t.Fatalf("%s page %d: %v", index, page, err)
				}
				if n == 0 {
					break
				}
			}
			if fmt.Sprint(paged) != fmt.Sprint(all) {
				t.Fatalf("%s desc=%v: paged\n%v\nunpaged\n%v", index, desc, paged, all)
			}
		}
	}
	// Find pages by key.
	var paged []string
	var after *string
	for {
		n := 0
		err := db.Find(ctx, "", "s", "v1", 4, after, func(h store.Hit) error {
			if h.Indexed != "v1" {
				t.Fatalf("Find hit %+v: Indexed is not the value looked up", h)
			}
			paged = append(paged, h.Key)
			after = &h.Key
			n++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	if got, want := fmt.Sprint(paged), fmt.Sprint(findKeys(t, db, "", "s", "v1")); got != want || len(paged) != 10 {
		t.Fatalf("Find paged %s, unpaged %s", got, want)
	}
	// A cursor on a number index must be a number.
	err := db.FindRange(ctx, "", "n", store.Range{After: &store.Cursor{Indexed: "x", Key: "k"}}, func(store.Hit) error { return nil })
	if !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("non-numeric cursor: %v, want ErrInvalid", err)
	}
}

// TestDB_IndexBigIntegers: a string index holds a JSON integer as written. SQLite's json_extract
// turns integers beyond int64 into REALs, so two distinct 64-bit unsigned ids indexed through it
// became the same "1.2345678901234567e+19": a unique index refused the second key, and Find by
// the id found nothing.
func TestDB_IndexBigIntegers(t *testing.T) {
	db := openDB(t, store.Options{})
	if _, err := db.CreateIndex(ctx, store.IndexDef{Name: "id", Unique: true, JSONPath: "$.id"}); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"a": `{"id":12345678901234567890}`, "b": `{"id":12345678901234567891}`,
		"c": `{"id":-9223372036854775808}`, "d": `{"id":42}`} {
		if err := db.Set(ctx, "", k, v); err != nil {
			t.Fatalf("Set %s = %s: %v", k, v, err)
		}
	}
	for value, want := range map[string]string{"12345678901234567890": "[a]", "12345678901234567891": "[b]",
		"-9223372036854775808": "[c]", "42": "[d]"} {
		if got := fmt.Sprint(findKeys(t, db, "", "id", value)); got != want {
			t.Errorf("Find id %s = %s, want %s", value, got, want)
		}
	}
	// The backfill of a new index computes the same values as the triggers.
	if _, err := db.CreateIndex(ctx, store.IndexDef{Name: "id2", Unique: true, JSONPath: "$.id"}); err != nil {
		t.Fatalf("backfill of distinct big ids: %v", err)
	}
	if got := fmt.Sprint(findKeys(t, db, "", "id2", "12345678901234567891")); got != "[b]" {
		t.Errorf("Find id2 = %s, want [b]", got)
	}
}
