package api_test

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/buffdb/buffdbd/api"
	blobpb "github.com/buffdb/buffdbd/api/proto/blobpb"
	indexpb "github.com/buffdb/buffdbd/api/proto/indexpb"
	kvpb "github.com/buffdb/buffdbd/api/proto/kvpb"
	querypb "github.com/buffdb/buffdbd/api/proto/querypb"
	"github.com/buffdb/buffdbd/store"
)

func setKV(t testing.TB, c kvpb.KvClient, kvs ...string) {
	t.Helper()
	var reqs []*kvpb.SetRequest
	for i := 0; i < len(kvs); i += 2 {
		reqs = append(reqs, &kvpb.SetRequest{Key: kvs[i], Value: kvs[i+1]})
	}
	resps, err := bidi(t, c.Set, reqs...)
	if err != nil {
		t.Fatalf("Set: %v", err)
	}
	if len(resps) != len(reqs) {
		t.Fatalf("Set answered %d of %d requests", len(resps), len(reqs))
	}
	for i, r := range resps {
		if r.GetKey() != reqs[i].GetKey() {
			t.Fatalf("Set response %d key = %q, want %q", i, r.GetKey(), reqs[i].GetKey())
		}
	}
}

func TestKv_SetGetDelete(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	c := kvpb.NewKvClient(ts.conn)
	setKV(t, c, "a", "1", "b", "two", "empty", "", "a", "replaced")

	t.Run("OK", func(t *testing.T) {
		got, err := bidi(t, c.Get, &kvpb.GetRequest{Key: "a"}, &kvpb.GetRequest{Key: "b"}, &kvpb.GetRequest{Key: "empty"})
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"replaced", "two", ""}
		if len(got) != len(want) {
			t.Fatalf("got %d responses, want %d", len(got), len(want))
		}
		for i := range want {
			if got[i].GetValue() != want[i] {
				t.Fatalf("value %d = %q, want %q", i, got[i].GetValue(), want[i])
			}
		}
	})

	t.Run("ErrNotFoundAfterResponses", func(t *testing.T) {
		got, err := bidi(t, c.Get, &kvpb.GetRequest{Key: "a"}, &kvpb.GetRequest{Key: "no-such-key"}, &kvpb.GetRequest{Key: "b"})
		wantCode(t, err, codes.NotFound, "no-such-key")
		if len(got) != 1 || got[0].GetValue() != "replaced" {
			t.Fatalf("responses before the error = %v, want [replaced]", got)
		}
	})

	t.Run("Delete", func(t *testing.T) {
		got, err := bidi(t, c.Delete, &kvpb.DeleteRequest{Key: "b"})
		if err != nil || len(got) != 1 || got[0].GetKey() != "b" {
			t.Fatalf("Delete = %v, %v", got, err)
		}
		_, err = bidi(t, c.Get, &kvpb.GetRequest{Key: "b"})
		wantCode(t, err, codes.NotFound, `b`)
		_, err = bidi(t, c.Delete, &kvpb.DeleteRequest{Key: "b"})
		wantCode(t, err, codes.NotFound, "b")
	})
}

// TestKv_Interleaved writes, reads a response, and writes again on one stream: each response must
// arrive while the stream is still open, not only after the client half-closes.
func TestKv_Interleaved(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	c := kvpb.NewKvClient(ts.conn)
	s, err := c.Set(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		key := fmt.Sprintf("k%d", i)
		if err := s.Send(&kvpb.SetRequest{Key: key, Value: "v"}); err != nil {
			t.Fatal(err)
		}
		r, err := s.Recv()
		if err != nil {
			t.Fatalf("Recv %d: %v", i, err)
		}
		if r.GetKey() != key {
			t.Fatalf("response %d = %q, want %q", i, r.GetKey(), key)
		}
	}
	s.CloseSend()
	if _, err := s.Recv(); err == nil {
		t.Fatal("stream did not end after CloseSend")
	}

	g, err := c.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		g.Send(&kvpb.GetRequest{Key: fmt.Sprintf("k%d", i)})
		if r, err := g.Recv(); err != nil || r.GetValue() != "v" {
			t.Fatalf("Get %d = %v, %v", i, r, err)
		}
	}
	g.CloseSend()
}

// TestKv_Pipelined sends many writes before reading any answer: all are answered, in order.
func TestKv_Pipelined(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	c := kvpb.NewKvClient(ts.conn)
	const n = 20000
	reqs := make([]*kvpb.SetRequest, n)
	for i := range reqs {
		reqs[i] = &kvpb.SetRequest{Key: fmt.Sprintf("key%06d", i), Value: fmt.Sprint(i)}
	}
	resps, err := bidi(t, c.Set, reqs...)
	if err != nil {
		t.Fatal(err)
	}
	if len(resps) != n {
		t.Fatalf("got %d responses, want %d", len(resps), n)
	}
	for i, r := range resps {
		if r.GetKey() != reqs[i].GetKey() {
			t.Fatalf("response %d = %q, want %q (out of order)", i, r.GetKey(), reqs[i].GetKey())
		}
	}
	got, err := bidi(t, c.Get, &kvpb.GetRequest{Key: "key019999"})
	if err != nil || got[0].GetValue() != "19999" {
		t.Fatalf("Get last = %v, %v", got, err)
	}
}

// TestKv_HeadersBeforeError: a stream that fails before any response still sends headers, so the
// error is not a trailers-only response (BuffDB's tonic clients need that).
func TestKv_HeadersBeforeError(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	c := kvpb.NewKvClient(ts.conn)
	s, err := c.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s.Send(&kvpb.GetRequest{Key: "missing"})
	s.CloseSend()
	_, err = s.Recv()
	wantCode(t, err, codes.NotFound, "missing")
	md, herr := s.Header()
	if herr != nil {
		t.Fatalf("Header: %v", herr)
	}
	// grpc-go reports a trailers-only response as nil header metadata.
	if md == nil {
		t.Fatal("the error came as a trailers-only response (no headers)")
	}
}

func TestKv_EqNotEq(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	c := kvpb.NewKvClient(ts.conn)
	setKV(t, c, "x1", "same", "x2", "same", "y", "other", "z", "third")

	eq := func(keys ...string) (bool, error) {
		s, err := c.Eq(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if s.Send(&kvpb.EqRequest{Key: k}) != nil {
				break
			}
		}
		r, err := s.CloseAndRecv()
		return r.GetValue(), err
	}
	notEq := func(keys ...string) (bool, error) {
		s, err := c.NotEq(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if s.Send(&kvpb.NotEqRequest{Key: k}) != nil {
				break
			}
		}
		r, err := s.CloseAndRecv()
		return r.GetValue(), err
	}
	for _, tc := range []struct {
		name string
		fn   func(...string) (bool, error)
		keys []string
		want bool
	}{
		{"EqZero", eq, nil, true},
		{"EqOne", eq, []string{"y"}, true},
		{"EqSame", eq, []string{"x1", "x2"}, true},
		{"EqMismatch", eq, []string{"x1", "x2", "y"}, false},
		// false at the first mismatch: a missing key after it is never looked up.
		{"EqMismatchBeforeMissing", eq, []string{"x1", "y", "missing"}, false},
		{"NotEqZero", notEq, nil, true},
		{"NotEqDistinct", notEq, []string{"x1", "y", "z"}, true},
		{"NotEqDuplicate", notEq, []string{"x1", "y", "x2"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.fn(tc.keys...)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	t.Run("ErrNotFound", func(t *testing.T) {
		_, err := eq("x1", "missing")
		wantCode(t, err, codes.NotFound, "missing")
		_, err = notEq("missing2")
		wantCode(t, err, codes.NotFound, "missing2")
	})
}

func TestKv_GetRawSQLText(t *testing.T) {
	// GetResponse.value is a proto3 string. A raw BLOB write is refused naming the column, and a
	// value that is not UTF-8 (only a deliberate CAST can store one) is DATA_LOSS naming the key,
	// not an INTERNAL marshalling failure.
	ts := newTestServer(t, store.Options{QueryWrites: true}, api.Options{})
	kv := kvpb.NewKvClient(ts.conn)
	q := querypb.NewQueryClient(ts.conn)
	setKV(t, kv, "k", "hello")
	_, err := bidi(t, q.Execute, &querypb.RawQuery{Query: "UPDATE kv SET value = x'00ff' WHERE key = 'k'"})
	wantCode(t, err, codes.InvalidArgument, "kv.value must be TEXT")
	got, err := bidi(t, kv.Get, &kvpb.GetRequest{Key: "k"})
	if err != nil || len(got) != 1 || got[0].GetValue() != "hello" {
		t.Fatalf("Get(k) = %v, %v", got, err)
	}
	if _, err := bidi(t, q.Execute, &querypb.RawQuery{Query: "INSERT INTO kv VALUES ('bad', CAST(x'ff41' AS TEXT))"}); err != nil {
		t.Fatal(err)
	}
	_, err = bidi(t, kv.Get, &kvpb.GetRequest{Key: "bad"})
	wantCode(t, err, codes.DataLoss, `value of key "bad"`, "not valid UTF-8")

	// The same for the other strings read from the store: index hits and blob metadata.
	ix := indexpb.NewIndexClient(ts.conn)
	if _, err := ix.CreateIndex(context.Background(), &indexpb.CreateIndexRequest{
		Index: &indexpb.IndexDefinition{Name: "whole", Type: indexpb.IndexType_BTREE}}); err != nil {
		t.Fatal(err)
	}
	s, err := ix.FindRange(context.Background(), &indexpb.FindRangeRequest{Index: "whole"})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := s.Recv(); err != nil || r.GetKey() != "k" {
		t.Fatalf("first hit = %v, %v; want k", r, err)
	}
	_, err = s.Recv()
	wantCode(t, err, codes.DataLoss, `index hit "bad"`, "not valid UTF-8")
	b := blobpb.NewBlobClient(ts.conn)
	ids, err := bidi(t, b.Store, &blobpb.StoreRequest{Bytes: []byte("x"), Metadata: proto.String("m")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bidi(t, q.Execute, &querypb.RawQuery{Query: "UPDATE blob SET metadata = CAST(x'ff' AS TEXT)"}); err != nil {
		t.Fatal(err)
	}
	_, err = bidi(t, b.Get, &blobpb.GetRequest{Id: ids[0].GetId()})
	wantCode(t, err, codes.DataLoss, fmt.Sprintf("metadata of blob %d", ids[0].GetId()), "not valid UTF-8")
}
