package api_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/buffdb/buffdbd/api"
	blobpb "github.com/buffdb/buffdbd/api/proto/blobpb"
	kvpb "github.com/buffdb/buffdbd/api/proto/kvpb"
	"github.com/buffdb/buffdbd/store"
)

// benchStream sends b.N requests on one bidi stream while receiving concurrently, as a pipelining
// client does; `buffdbd bench store` reports the same rates next to the machine's own limits.
func benchStream[Req, Resp any](b *testing.B, s interface {
	Send(*Req) error
	Recv() (*Resp, error)
	CloseSend() error
}, mk func(int) *Req) {
	b.Helper()
	go func() {
		for i := range b.N {
			if s.Send(mk(i)) != nil {
				return
			}
		}
		s.CloseSend()
	}()
	for range b.N {
		if _, err := s.Recv(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkKv_SetStream(b *testing.B) {
	ts := newTestServer(b, store.Options{}, api.Options{})
	s, err := kvpb.NewKvClient(ts.conn).Set(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	benchStream(b, s, func(i int) *kvpb.SetRequest {
		return &kvpb.SetRequest{Key: fmt.Sprintf("k%09d", i), Value: "a small value"}
	})
}

func BenchmarkKv_GetStream(b *testing.B) {
	ts := newTestServer(b, store.Options{}, api.Options{})
	c := kvpb.NewKvClient(ts.conn)
	const keys = 10000
	reqs := make([]*kvpb.SetRequest, keys)
	for i := range reqs {
		reqs[i] = &kvpb.SetRequest{Key: fmt.Sprintf("k%09d", i), Value: "a small value"}
	}
	if _, err := bidi(b, c.Set, reqs...); err != nil {
		b.Fatal(err)
	}
	s, err := c.Get(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	benchStream(b, s, func(i int) *kvpb.GetRequest { return &kvpb.GetRequest{Key: reqs[i%keys].Key} })
}

func BenchmarkBlob_StoreStream1MiB(b *testing.B) {
	ts := newTestServer(b, store.Options{}, api.Options{})
	s, err := blobpb.NewBlobClient(ts.conn).Store(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 1<<20)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	benchStream(b, s, func(i int) *blobpb.StoreRequest {
		d := append([]byte(nil), data...)
		d[0], d[1], d[2], d[3] = byte(i), byte(i>>8), byte(i>>16), byte(i>>24) // distinct: no dedupe
		return &blobpb.StoreRequest{Bytes: d}
	})
}
