package api_test

import (
	"context"
	"errors"
	"io"
	"slices"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/buffdb/buffdbd/api"
	indexpb "github.com/buffdb/buffdbd/api/proto/indexpb"
	kvpb "github.com/buffdb/buffdbd/api/proto/kvpb"
	"github.com/buffdb/buffdbd/store"
)

// keys returns a function collecting the keys of a Find/FindRange stream.
func keys(t testing.TB) func(grpc.ServerStreamingClient[indexpb.FindResponse], error) ([]string, error) {
	t.Helper()
	return func(s grpc.ServerStreamingClient[indexpb.FindResponse], err error) ([]string, error) {
		if err != nil {
			return nil, err
		}
		var out []string
		for {
			r, err := s.Recv()
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			if err != nil {
				return out, err
			}
			out = append(out, r.GetKey())
		}
	}
}

func TestIndex_CreateFindRange(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	ctx := context.Background()
	kv := kvpb.NewKvClient(ts.conn)
	ix := indexpb.NewIndexClient(ts.conn)
	setKV(t, kv,
		"model:a", `{"framework":"onnx","size":10}`,
		"model:b", `{"framework":"tflite","size":200}`,
		"model:c", `{"framework":"onnx","size":30}`,
		"other:d", `{"framework":"onnx","size":5}`,
		"model:e", `not json`)

	t.Run("Backfill", func(t *testing.T) {
		r, err := ix.CreateIndex(ctx, &indexpb.CreateIndexRequest{Index: &indexpb.IndexDefinition{
			Name: "fw", JsonPath: "$.framework", KeyPrefix: "model:"}})
		if err != nil {
			t.Fatal(err)
		}
		if r.GetKeysIndexed() != 3 {
			t.Fatalf("keys indexed = %d, want 3 (prefix and JSON path filter the rest)", r.GetKeysIndexed())
		}
		got, err := keys(t)(ix.Find(ctx, &indexpb.FindRequest{Index: "fw", Value: "onnx"}))
		if err != nil || !slices.Equal(got, []string{"model:a", "model:c"}) {
			t.Fatalf("Find onnx = %v, %v", got, err)
		}
	})

	t.Run("MaintainedOnSetDelete", func(t *testing.T) {
		setKV(t, kv, "model:a", `{"framework":"tflite","size":10}`)
		bidi(t, kv.Delete, &kvpb.DeleteRequest{Key: "model:c"})
		got, err := keys(t)(ix.Find(ctx, &indexpb.FindRequest{Index: "fw", Value: "onnx"}))
		if err != nil || len(got) != 0 {
			t.Fatalf("Find onnx after update = %v, %v; want none", got, err)
		}
		got, err = keys(t)(ix.Find(ctx, &indexpb.FindRequest{Index: "fw", Value: "tflite", Limit: 1}))
		if err != nil || !slices.Equal(got, []string{"model:a"}) {
			t.Fatalf("Find tflite limit 1 = %v, %v", got, err)
		}
	})

	t.Run("Range", func(t *testing.T) {
		_, err := ix.CreateIndex(ctx, &indexpb.CreateIndexRequest{Index: &indexpb.IndexDefinition{
			Name: "size", Type: indexpb.IndexType_BTREE, ValueKind: indexpb.ValueKind_NUMBER, JsonPath: "$.size"}})
		if err != nil {
			t.Fatal(err)
		}
		// sizes: other:d 5, model:a 10, model:b 200 (numeric order, not string order).
		got, err := keys(t)(ix.FindRange(ctx, &indexpb.FindRangeRequest{Index: "size",
			Lower: &indexpb.Bound{Value: "5", Inclusive: false}, Upper: &indexpb.Bound{Value: "200", Inclusive: true}}))
		if err != nil || !slices.Equal(got, []string{"model:a", "model:b"}) {
			t.Fatalf("range (5, 200] = %v, %v", got, err)
		}
		got, err = keys(t)(ix.FindRange(ctx, &indexpb.FindRangeRequest{Index: "size", Descending: true, Limit: 2}))
		if err != nil || !slices.Equal(got, []string{"model:b", "model:a"}) {
			t.Fatalf("descending limit 2 = %v, %v", got, err)
		}
		_, err = keys(t)(ix.FindRange(ctx, &indexpb.FindRangeRequest{Index: "fw"}))
		wantCode(t, err, codes.InvalidArgument)
	})

	t.Run("Unique", func(t *testing.T) {
		_, err := ix.CreateIndex(ctx, &indexpb.CreateIndexRequest{Index: &indexpb.IndexDefinition{
			Name: "fw-unique", Unique: true, JsonPath: "$.framework"}})
		wantCode(t, err, codes.AlreadyExists) // existing data has duplicates
		setKV(t, kv, "u:1", "alpha", "u:2", "beta")
		if _, err := ix.CreateIndex(ctx, &indexpb.CreateIndexRequest{Index: &indexpb.IndexDefinition{
			Name: "u", Unique: true, KeyPrefix: "u:"}}); err != nil {
			t.Fatal(err)
		}
		_, err = bidi(t, kv.Set, &kvpb.SetRequest{Key: "u:3", Value: "alpha"})
		wantCode(t, err, codes.AlreadyExists)
		_, err = bidi(t, kv.Get, &kvpb.GetRequest{Key: "u:3"})
		wantCode(t, err, codes.NotFound, "u:3") // the violating Set changed nothing
	})

	t.Run("ListDrop", func(t *testing.T) {
		r, err := ix.ListIndexes(ctx, &indexpb.ListIndexesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, d := range r.GetIndexes() {
			names = append(names, d.GetName())
		}
		if !slices.Equal(names, []string{"fw", "size", "u"}) {
			t.Fatalf("indexes = %v", names)
		}
		if d := r.GetIndexes()[1]; d.GetType() != indexpb.IndexType_BTREE || d.GetValueKind() != indexpb.ValueKind_NUMBER || d.GetJsonPath() != "$.size" {
			t.Fatalf("size index round-tripped as %v", d)
		}
		if _, err := ix.DropIndex(ctx, &indexpb.DropIndexRequest{Name: "fw"}); err != nil {
			t.Fatal(err)
		}
		_, err = ix.DropIndex(ctx, &indexpb.DropIndexRequest{Name: "fw"})
		wantCode(t, err, codes.NotFound, "fw")
		_, err = keys(t)(ix.Find(ctx, &indexpb.FindRequest{Index: "fw", Value: "onnx"}))
		wantCode(t, err, codes.NotFound, "fw")
	})

	t.Run("ErrInvalid", func(t *testing.T) {
		_, err := ix.CreateIndex(ctx, &indexpb.CreateIndexRequest{})
		wantCode(t, err, codes.InvalidArgument)
		_, err = ix.CreateIndex(ctx, &indexpb.CreateIndexRequest{Index: &indexpb.IndexDefinition{Name: "bad", Type: 7}})
		wantCode(t, err, codes.InvalidArgument, "bad")
		_, err = ix.CreateIndex(ctx, &indexpb.CreateIndexRequest{Index: &indexpb.IndexDefinition{Name: ""}})
		wantCode(t, err, codes.InvalidArgument)
	})
}

// TestIndex_Paging: each FindResponse carries its indexed value, so a client can resume FindRange
// after the last one it got (cursor) and Find after the last key, without losing the keys that
// share an indexed value.
func TestIndex_Paging(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	ctx := context.Background()
	setKV(t, kvpb.NewKvClient(ts.conn), "a", `{"n":1}`, "b", `{"n":1}`, "c", `{"n":1}`, "d", `{"n":2.5}`, "e", `{"n":2.5}`)
	ix := indexpb.NewIndexClient(ts.conn)
	if _, err := ix.CreateIndex(ctx, &indexpb.CreateIndexRequest{Index: &indexpb.IndexDefinition{
		Name: "n", Type: indexpb.IndexType_BTREE, JsonPath: "$.n", ValueKind: indexpb.ValueKind_NUMBER}}); err != nil {
		t.Fatal(err)
	}
	var got []string
	req := &indexpb.FindRangeRequest{Index: "n", Limit: 2, Descending: true}
	for range 10 {
		s, err := ix.FindRange(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			r, err := s.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, r.GetIndexedValue()+"/"+r.GetKey())
			req.After = &indexpb.Cursor{IndexedValue: r.GetIndexedValue(), Key: r.GetKey()}
			n++
		}
		if n == 0 {
			break
		}
	}
	if want := []string{"2.5/e", "2.5/d", "1/c", "1/b", "1/a"}; !slices.Equal(got, want) {
		t.Fatalf("pages = %v, want %v", got, want)
	}
	after := "a"
	k, err := keys(t)(ix.Find(ctx, &indexpb.FindRequest{Index: "n", Value: "1", AfterKey: &after, Limit: 1}))
	if err != nil || !slices.Equal(k, []string{"b"}) {
		t.Fatalf("Find after a = %v, %v; want [b]", k, err)
	}
}
