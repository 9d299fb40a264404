package api_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/buffdb/buffdbd/api"
	blobpb "github.com/buffdb/buffdbd/api/proto/blobpb"
	"github.com/buffdb/buffdbd/store"
)

func ptr[T any](v T) *T { return &v }

func storeBlobs(t testing.TB, c blobpb.BlobClient, reqs ...*blobpb.StoreRequest) []uint64 {
	t.Helper()
	resps, err := bidi(t, c.Store, reqs...)
	if err != nil {
		t.Fatalf("Store: %v", err)
	}
	ids := make([]uint64, len(resps))
	for i, r := range resps {
		ids[i] = r.GetId()
	}
	if len(ids) != len(reqs) {
		t.Fatalf("Store answered %d of %d", len(ids), len(reqs))
	}
	return ids
}

func getBlob(t testing.TB, c blobpb.BlobClient, id uint64) *blobpb.GetResponse {
	t.Helper()
	r, err := bidi(t, c.Get, &blobpb.GetRequest{Id: id})
	if err != nil {
		t.Fatalf("Get %d: %v", id, err)
	}
	return r[0]
}

func TestBlob_StoreGet(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	c := blobpb.NewBlobClient(ts.conn)
	big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB: a payload file, not inline
	ids := storeBlobs(t, c,
		&blobpb.StoreRequest{Bytes: []byte("abcdef"), Metadata: ptr("{ offset: 6 }")},
		&blobpb.StoreRequest{Bytes: []byte("ghijkl")},
		&blobpb.StoreRequest{Bytes: []byte{}, Metadata: ptr("")},
		&blobpb.StoreRequest{Bytes: big, Metadata: ptr("big")},
	)
	for i := 1; i < len(ids); i++ {
		if ids[i] <= ids[i-1] {
			t.Fatalf("ids not increasing: %v", ids)
		}
	}
	if ids[0] != 1 {
		t.Fatalf("first id = %d, want 1", ids[0])
	}
	for i, want := range []struct {
		data []byte
		meta *string
	}{{[]byte("abcdef"), ptr("{ offset: 6 }")}, {[]byte("ghijkl"), nil}, {nil, ptr("")}, {big, ptr("big")}} {
		got := getBlob(t, c, ids[i])
		if !bytes.Equal(got.GetBytes(), want.data) {
			t.Fatalf("blob %d: data differs (%d bytes, want %d)", ids[i], len(got.GetBytes()), len(want.data))
		}
		if (got.Metadata == nil) != (want.meta == nil) || (want.meta != nil && *got.Metadata != *want.meta) {
			t.Fatalf("blob %d: metadata = %v, want %v (presence must be kept)", ids[i], got.Metadata, want.meta)
		}
	}

	t.Run("ErrNotFound", func(t *testing.T) {
		_, err := bidi(t, c.Get, &blobpb.GetRequest{Id: 999})
		wantCode(t, err, codes.NotFound, "999")
		_, err = bidi(t, c.Delete, &blobpb.DeleteRequest{Id: 999})
		wantCode(t, err, codes.NotFound, "999")
		_, err = bidi(t, c.Update, &blobpb.UpdateRequest{Id: 999, Bytes: []byte("x")})
		wantCode(t, err, codes.NotFound, "999")
	})

	t.Run("DeleteNeverReusesIDs", func(t *testing.T) {
		last := ids[len(ids)-1]
		if _, err := bidi(t, c.Delete, &blobpb.DeleteRequest{Id: last}); err != nil {
			t.Fatal(err)
		}
		_, err := bidi(t, c.Get, &blobpb.GetRequest{Id: last})
		wantCode(t, err, codes.NotFound, fmt.Sprint(last))
		if next := storeBlobs(t, c, &blobpb.StoreRequest{Bytes: []byte("n")})[0]; next <= last {
			t.Fatalf("new id %d after deleting %d: ids must not be reused", next, last)
		}
	})
}

func TestBlob_Update(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	c := blobpb.NewBlobClient(ts.conn)
	id := storeBlobs(t, c, &blobpb.StoreRequest{Bytes: []byte("v1"), Metadata: ptr("m1")})[0]

	check := func(t *testing.T, data string, meta *string) {
		t.Helper()
		got := getBlob(t, c, id)
		if string(got.GetBytes()) != data {
			t.Fatalf("data = %q, want %q", got.GetBytes(), data)
		}
		if (got.Metadata == nil) != (meta == nil) || (meta != nil && got.GetMetadata() != *meta) {
			t.Fatalf("metadata = %v, want %v", got.Metadata, meta)
		}
	}
	update := func(t *testing.T, req *blobpb.UpdateRequest) {
		t.Helper()
		req.Id = id
		r, err := bidi(t, c.Update, req)
		if err != nil || r[0].GetId() != id {
			t.Fatalf("Update = %v, %v", r, err)
		}
	}
	t.Run("DataOnly", func(t *testing.T) {
		update(t, &blobpb.UpdateRequest{Bytes: []byte("v2")})
		check(t, "v2", ptr("m1"))
	})
	t.Run("Neither", func(t *testing.T) {
		update(t, &blobpb.UpdateRequest{})
		check(t, "v2", ptr("m1"))
	})
	t.Run("MetadataOnly", func(t *testing.T) {
		update(t, &blobpb.UpdateRequest{ShouldUpdateMetadata: true, Metadata: ptr("m2")})
		check(t, "v2", ptr("m2"))
	})
	t.Run("MetadataToNull", func(t *testing.T) {
		update(t, &blobpb.UpdateRequest{ShouldUpdateMetadata: true})
		check(t, "v2", nil)
	})
	t.Run("Both", func(t *testing.T) {
		update(t, &blobpb.UpdateRequest{Bytes: []byte{}, ShouldUpdateMetadata: true, Metadata: ptr("")})
		check(t, "", ptr(""))
	})
	t.Run("MetadataToNullOnMissingID", func(t *testing.T) {
		// BuffDB's one exception: clearing metadata of a missing id is not an error.
		if _, err := bidi(t, c.Update, &blobpb.UpdateRequest{Id: 4242, ShouldUpdateMetadata: true}); err != nil {
			t.Fatalf("Update metadata to null on missing id: %v", err)
		}
	})
}

func TestBlob_EqData(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	c := blobpb.NewBlobClient(ts.conn)
	ids := storeBlobs(t, c,
		&blobpb.StoreRequest{Bytes: []byte("same")},
		&blobpb.StoreRequest{Bytes: []byte("same"), Metadata: ptr("metadata does not count")},
		&blobpb.StoreRequest{Bytes: []byte("other")})
	eq := func(ids ...uint64) (bool, error) {
		s, _ := c.EqData(context.Background())
		for _, id := range ids {
			if s.Send(&blobpb.EqDataRequest{Id: id}) != nil {
				break
			}
		}
		r, err := s.CloseAndRecv()
		return r.GetValue(), err
	}
	notEq := func(ids ...uint64) (bool, error) {
		s, _ := c.NotEqData(context.Background())
		for _, id := range ids {
			if s.Send(&blobpb.NotEqDataRequest{Id: id}) != nil {
				break
			}
		}
		r, err := s.CloseAndRecv()
		return r.GetValue(), err
	}
	for _, tc := range []struct {
		name string
		fn   func(...uint64) (bool, error)
		ids  []uint64
		want bool
	}{
		{"EqZero", eq, nil, true},
		{"EqSame", eq, ids[:2], true},
		{"EqMismatch", eq, ids, false},
		{"NotEqZero", notEq, nil, true},
		{"NotEqDistinct", notEq, ids[1:], true},
		{"NotEqDuplicate", notEq, ids, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.fn(tc.ids...)
			if err != nil || got != tc.want {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
	t.Run("ErrNotFound", func(t *testing.T) {
		_, err := eq(ids[0], 777)
		wantCode(t, err, codes.NotFound, "777")
	})
}

// TestBlob_MessageTooLarge: a Store larger than the server's limit fails with RESOURCE_EXHAUSTED
// stating the limit (grpc-go's own wording: "received message larger than max (N vs. LIMIT)"); the
// response already received on the stream stays valid and the server keeps serving.
func TestBlob_MessageTooLarge(t *testing.T) {
	const max = 64 << 10
	ts := newTestServer(t, store.Options{}, api.Options{MaxMessageBytes: max})
	c := blobpb.NewBlobClient(ts.conn)
	s, err := c.Store(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s.Send(&blobpb.StoreRequest{Bytes: []byte("small")})
	first, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	s.Send(&blobpb.StoreRequest{Bytes: make([]byte, max+1)})
	_, err = s.Recv()
	wantCode(t, err, codes.ResourceExhausted, fmt.Sprint(max), "larger than max")
	if got := getBlob(t, c, first.GetId()); string(got.GetBytes()) != "small" {
		t.Fatalf("blob stored before the oversized request = %q", got.GetBytes())
	}
	if id := storeBlobs(t, c, &blobpb.StoreRequest{Bytes: []byte("after")})[0]; id <= first.GetId() {
		t.Fatalf("id after the error = %d", id)
	}
}

// One Store stream of many distinct blobs, sent without waiting for answers: the server decodes
// them into recycled buffers, and a buffer reused before its blob was stored would show as another
// blob's bytes. Every blob must read back exactly as sent, and the buffers must really have been
// recycled.
func TestBlob_StoreRecyclesReceiveBuffers(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	c := blobpb.NewBlobClient(ts.conn)
	ctx := context.Background()
	s, err := c.Store(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n, size = 96, 300 << 10
	blob := func(i int) []byte {
		b := bytes.Repeat([]byte{byte(i)}, size)
		binary.LittleEndian.PutUint64(b[size/2:], uint64(i)*0x9e3779b97f4a7c15)
		return b
	}
	before := api.RecvPoolReuses()
	go func() {
		for i := range n {
			if err := s.Send(&blobpb.StoreRequest{Bytes: blob(i)}); err != nil {
				return
			}
		}
		s.CloseSend()
	}()
	ids := make([]uint64, n)
	for i := range n {
		r, err := s.Recv()
		if err != nil {
			t.Fatalf("store %d: %v", i, err)
		}
		ids[i] = r.Id
	}
	if reused := api.RecvPoolReuses() - before; reused == 0 {
		t.Fatal("no receive buffer was recycled; the test no longer covers recycling")
	}
	g, err := c.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if err := g.Send(&blobpb.GetRequest{Id: id}); err != nil {
			t.Fatal(err)
		}
		r, err := g.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(r.Bytes, blob(i)) {
			t.Fatalf("blob %d (id %d) reads back different bytes", i, id)
		}
	}
}
