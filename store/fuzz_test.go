package store_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/buffdb/buffdbd/store"
)

func FuzzDB_SetGet(f *testing.F) {
	for _, s := range [][2]string{{"", ""}, {"k", "v"}, {"\x00", "\x00\x00"}, {"\xff\xfe", "not utf8 \xc3"}, {"'; DROP TABLE kv; --", "%_"}, {"ü/../x", `{"a":1}`}} {
		f.Add(s[0], s[1])
	}
	db := openDB(f, store.Options{})
	f.Fuzz(func(t *testing.T, key, value string) {
		if err := db.Set(ctx, "", key, value); err != nil {
			t.Fatalf("Set(%q): %v", key, err)
		}
		got, err := db.Get(ctx, "", key)
		if err != nil || got != value {
			t.Fatalf("Get(%q) = %q, %v; want %q", key, got, err, value)
		}
		found := false
		err = db.View(ctx, func(tx *store.Tx) error {
			return tx.Scan(key, "", func(k, v string) error {
				if k == key {
					found = true
				}
				if len(k) < len(key) || k[:len(key)] != key {
					return fmt.Errorf("Scan(%q) returned %q", key, k)
				}
				return nil
			})
		})
		if err != nil || !found {
			t.Fatalf("Scan(prefix %q): found=%v, %v", key, found, err)
		}
		if err := db.Delete(ctx, "", key); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Get(ctx, "", key); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("after Delete: %v", err)
		}
	})
}

func FuzzDB_Blob(f *testing.F) {
	f.Add([]byte(nil), "", false)
	f.Add([]byte{}, "", true)
	f.Add([]byte("hello"), "meta", true)
	f.Add(bytes.Repeat([]byte{0}, 70), "\x00", true)
	f.Add(bytes.Repeat([]byte("big"), 100), "x", false)
	db := openDB(f, store.Options{InlineMax: 64}) // small inline limit: fuzz inputs reach payload files
	f.Fuzz(func(t *testing.T, data []byte, meta string, hasMeta bool) {
		var m *string
		if hasMeta {
			m = &meta
		}
		id, err := db.StoreBlob(ctx, "", data, m)
		if err != nil {
			t.Fatal(err)
		}
		b, err := db.GetBlob(ctx, "", id)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b.Data, data) || (b.Metadata != nil) != hasMeta || (hasMeta && *b.Metadata != meta) {
			t.Fatalf("GetBlob = %q/%v, want %q/%v", b.Data, b.Metadata, data, m)
		}
		if err := db.UpdateBlob(ctx, "", id, store.BlobUpdate{Data: append(data, 1), SetMetadata: true}); err != nil {
			t.Fatal(err)
		}
		if b, _ := db.GetBlob(ctx, "", id); b.Metadata != nil || !bytes.Equal(b.Data, append(data, 1)) {
			t.Fatalf("after update: %q/%v", b.Data, b.Metadata)
		}
		if err := db.DeleteBlob(ctx, "", id); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzDB_Index(f *testing.F) {
	f.Add("$.a", "torch", false)
	f.Add("", "12", true)
	f.Add("$.a.b[0]", "x", false)
	f.Add("$[", "y", false)
	f.Add("$.\"we'ird\"", "z\x00", true)
	f.Add("framework", "1e400", true)
	db := openDB(f, store.Options{})
	n := 0
	f.Fuzz(func(t *testing.T, path, s string, number bool) {
		n++
		kind := store.KindString
		if number {
			kind = store.KindNumber
		}
		name := fmt.Sprint("fz", n)
		_, err := db.CreateIndex(ctx, store.IndexDef{Name: name, Type: store.IndexBTree, JSONPath: path, Kind: kind})
		if err != nil {
			if !errors.Is(err, store.ErrInvalid) {
				t.Fatalf("CreateIndex(path %q): %v", path, err)
			}
			return
		}
		defer db.DropIndex(ctx, name)
		// A value holding s at path $.a (and s itself as the whole value).
		doc, _ := json.Marshal(map[string]string{"a": s})
		for _, v := range []string{s, string(doc)} {
			if err := db.Set(ctx, "", "k", v); err != nil {
				t.Fatalf("Set with index on %q: %v", path, err)
			}
		}
		err = db.Find(ctx, "", name, s, 0, nil, func(store.Hit) error { return nil })
		if err != nil && !(number && errors.Is(err, store.ErrInvalid)) {
			t.Fatalf("Find(%q): %v", s, err)
		}
		if path == "$.a" && !number && json.Valid(doc) && string(doc) != "" {
			var keys []string
			db.Find(ctx, "", name, s, 0, nil, func(h store.Hit) error { keys = append(keys, h.Key); return nil })
			var back map[string]string
			json.Unmarshal(doc, &back)
			if want := back["a"]; want == s && (len(keys) != 1 || keys[0] != "k") {
				t.Fatalf("Find(%q) on $.a = %v, want [k]", s, keys)
			}
		}
		r := store.Range{Lower: &store.Bound{Value: s}, Upper: &store.Bound{Value: s, Inclusive: true}}
		if err := db.FindRange(ctx, "", name, r, func(store.Hit) error { return nil }); err != nil && !errors.Is(err, store.ErrInvalid) {
			t.Fatalf("FindRange: %v", err)
		}
	})
}
