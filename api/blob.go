package api

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"

	blobpb "github.com/buffdb/buffdbd/api/proto/blobpb"
	"github.com/buffdb/buffdbd/store"
)

// blobService implements buffdb.blob.Blob.
type blobService struct {
	blobpb.UnimplementedBlobServer
	*service
}

func (s *blobService) Get(stream grpc.BidiStreamingServer[blobpb.GetRequest, blobpb.GetResponse]) error {
	r := newReader(s.service, "blob.Get")
	return serveBidi(s.service, "blob.Get", stream,
		func(ctx context.Context, req *blobpb.GetRequest) func(context.Context) (*blobpb.GetResponse, error) {
			return readAsync(r, func() (*blobpb.GetResponse, error) {
				b, err := s.db.GetBlob(ctx, req.GetTransactionId(), req.GetId())
				if err == nil && b.Metadata != nil {
					err = checkUTF8(fmt.Sprintf("metadata of blob %d", req.GetId()), *b.Metadata)
				}
				if err != nil {
					return nil, err
				}
				return &blobpb.GetResponse{Bytes: b.Data, Metadata: b.Metadata}, nil
			})
		},
		// A blob read ahead waits in memory until the client takes it, so its size counts against
		// the stream's pipeline budget before it is read; a failed lookup weighs nothing and the
		// Get itself reports the error.
		func(req *blobpb.GetRequest) int64 {
			info, err := s.db.StatBlob(stream.Context(), req.GetTransactionId(), req.GetId())
			if err != nil {
				return 0
			}
			return info.Size
		}, r.close)
}

func (s *blobService) Store(stream grpc.BidiStreamingServer[blobpb.StoreRequest, blobpb.StoreResponse]) error {
	w := s.db.NewWriterContext(stream.Context())
	ss := &storeStream{BidiStreamingServer: stream, pool: newRecvPool()}
	return serveBidi(s.service, "blob.Store", ss,
		func(_ context.Context, req *blobpb.StoreRequest) func(context.Context) (*blobpb.StoreResponse, error) {
			data := req.GetBytes()
			if data == nil {
				data = []byte{} // an empty blob, not "no data"
			}
			f := w.StoreBlob(req.GetTransactionId(), data, req.Metadata)
			if buf := ss.last; buf != nil {
				// The store is done with the bytes once the write completed (payload file written,
				// or inline bytes committed), or failed.
				ss.last = nil
				go func() { <-f.Done(); ss.pool.put(buf) }()
			}
			return committed(f, func(id uint64) *blobpb.StoreResponse { return &blobpb.StoreResponse{Id: id} })
		},
		func(req *blobpb.StoreRequest) int64 { return int64(len(req.GetBytes())) },
		w.Close)
}

// Update follows BuffDB: bytes present replaces the data; should_update_metadata replaces the
// metadata (absent → NULL); neither is a no-op that still checks the id exists.
func (s *blobService) Update(stream grpc.BidiStreamingServer[blobpb.UpdateRequest, blobpb.UpdateResponse]) error {
	w := s.db.NewWriterContext(stream.Context())
	return serveBidi(s.service, "blob.Update", stream,
		func(ctx context.Context, req *blobpb.UpdateRequest) func(context.Context) (*blobpb.UpdateResponse, error) {
			id := req.GetId()
			u := store.BlobUpdate{SetMetadata: req.GetShouldUpdateMetadata(), Metadata: req.Metadata}
			if req.Bytes != nil {
				u.Data = req.Bytes
			}
			if u.Data == nil && !u.SetMetadata {
				// Nothing to change; BuffDB still answers NOT_FOUND for a missing id.
				if _, err := s.db.StatBlob(ctx, req.GetTransactionId(), id); err != nil {
					return ready[blobpb.UpdateResponse](nil, err)
				}
				return ready(&blobpb.UpdateResponse{Id: id}, nil)
			}
			return committed(w.UpdateBlob(req.GetTransactionId(), id, u),
				func(uint64) *blobpb.UpdateResponse { return &blobpb.UpdateResponse{Id: id} })
		},
		func(req *blobpb.UpdateRequest) int64 { return int64(len(req.GetBytes())) },
		w.Close)
}

func (s *blobService) Delete(stream grpc.BidiStreamingServer[blobpb.DeleteRequest, blobpb.DeleteResponse]) error {
	w := s.db.NewWriterContext(stream.Context())
	return serveBidi(s.service, "blob.Delete", stream,
		func(_ context.Context, req *blobpb.DeleteRequest) func(context.Context) (*blobpb.DeleteResponse, error) {
			id := req.GetId()
			return committed(w.DeleteBlob(req.GetTransactionId(), id),
				func(uint64) *blobpb.DeleteResponse { return &blobpb.DeleteResponse{Id: id} })
		},
		nil, w.Close)
}

// EqData is true when every streamed blob has the same bytes (and for zero ids), comparing the
// stored sha256 digests so no blob is read into memory.
func (s *blobService) EqData(stream grpc.ClientStreamingServer[blobpb.EqDataRequest, wrapperspb.BoolValue]) error {
	return compare(s.service, "blob.EqData", stream, func() (uint64, bool, error) {
		req, err := stream.Recv()
		return req.GetId(), err == nil, recvErr(err)
	}, s.dataDigest, true)
}

// NotEqData is true when the streamed blobs' bytes are pairwise different (and for zero ids).
func (s *blobService) NotEqData(stream grpc.ClientStreamingServer[blobpb.NotEqDataRequest, wrapperspb.BoolValue]) error {
	return compare(s.service, "blob.NotEqData", stream, func() (uint64, bool, error) {
		req, err := stream.Recv()
		return req.GetId(), err == nil, recvErr(err)
	}, s.dataDigest, false)
}

// dataDigest is blob id's stored sha256: comparing blobs never reads their bytes.
func (s *blobService) dataDigest(ctx context.Context, id uint64) ([32]byte, error) {
	info, err := s.db.StatBlob(ctx, "", id)
	return info.SHA256, err
}
