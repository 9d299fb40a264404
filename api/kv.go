package api

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	kvpb "github.com/buffdb/buffdbd/api/proto/kvpb"
)

// kvService implements buffdb.kv.Kv.
type kvService struct {
	kvpb.UnimplementedKvServer
	*service
}

func (s *kvService) Get(stream grpc.BidiStreamingServer[kvpb.GetRequest, kvpb.GetResponse]) error {
	// Lookups run on the receiving goroutine: a KV read costs a few microseconds, less than
	// handing it to a worker goroutine and back (measured: ~115k vs ~95k Get/s on one stream).
	return serveBidi(s.service, "kv.Get", stream,
		func(ctx context.Context, req *kvpb.GetRequest) func(context.Context) (*kvpb.GetResponse, error) {
			v, err := s.db.Get(ctx, req.GetTransactionId(), req.GetKey())
			if err == nil {
				err = checkUTF8(fmt.Sprintf("value of key %q", req.GetKey()), v)
			}
			if err != nil {
				return ready[kvpb.GetResponse](nil, err)
			}
			return ready(&kvpb.GetResponse{Value: v}, nil)
		},
		nil, nil)
}

func (s *kvService) Set(stream grpc.BidiStreamingServer[kvpb.SetRequest, kvpb.SetResponse]) error {
	w := s.db.NewWriterContext(stream.Context())
	return serveBidi(s.service, "kv.Set", stream,
		func(_ context.Context, req *kvpb.SetRequest) func(context.Context) (*kvpb.SetResponse, error) {
			key := req.GetKey()
			return committed(w.Set(req.GetTransactionId(), key, req.GetValue()),
				func(uint64) *kvpb.SetResponse { return &kvpb.SetResponse{Key: key} })
		},
		func(req *kvpb.SetRequest) int64 { return int64(len(req.GetKey()) + len(req.GetValue())) },
		w.Close)
}

func (s *kvService) Delete(stream grpc.BidiStreamingServer[kvpb.DeleteRequest, kvpb.DeleteResponse]) error {
	w := s.db.NewWriterContext(stream.Context())
	return serveBidi(s.service, "kv.Delete", stream,
		func(_ context.Context, req *kvpb.DeleteRequest) func(context.Context) (*kvpb.DeleteResponse, error) {
			key := req.GetKey()
			return committed(w.Delete(req.GetTransactionId(), key),
				func(uint64) *kvpb.DeleteResponse { return &kvpb.DeleteResponse{Key: key} })
		},
		nil, w.Close)
}

// Eq is true when every streamed key holds the same value (and for zero keys). It answers false at
// the first mismatch without reading further; a missing key ends the call with NOT_FOUND.
func (s *kvService) Eq(stream grpc.ClientStreamingServer[kvpb.EqRequest, wrapperspb.BoolValue]) error {
	return compare(s.service, "kv.Eq", stream, func() (string, bool, error) {
		req, err := stream.Recv()
		return req.GetKey(), err == nil, recvErr(err)
	}, s.valueDigest, true)
}

// NotEq is true when the streamed keys' values are pairwise different (and for zero keys). It answers
// false at the first value seen before.
func (s *kvService) NotEq(stream grpc.ClientStreamingServer[kvpb.NotEqRequest, wrapperspb.BoolValue]) error {
	return compare(s.service, "kv.NotEq", stream, func() (string, bool, error) {
		req, err := stream.Recv()
		return req.GetKey(), err == nil, recvErr(err)
	}, s.valueDigest, false)
}

// compare answers Eq (eq) or NotEq (!eq) over the items next yields, comparing digest(item). It
// answers at the first item that decides the result without reading further; digests keep NotEq's
// set of seen values small however large the values are.
func compare[T any](s *service, method string, stream grpc.ServerStream, next func() (T, bool, error),
	digest func(context.Context, T) ([32]byte, error), eq bool) error {
	seen := map[[32]byte]struct{}{}
	var first *[32]byte
	result := true
	for result {
		item, ok, err := next()
		if err != nil {
			return streamError(s, method, stream, err)
		}
		if !ok {
			break
		}
		sum, err := digest(stream.Context(), item)
		if err != nil {
			return streamError(s, method, stream, err)
		}
		result = sameOrDistinct(&first, seen, sum, eq)
	}
	return stream.SendMsg(wrapperspb.Bool(result))
}

// valueDigest is the sha256 of key's value.
func (s *kvService) valueDigest(ctx context.Context, key string) ([32]byte, error) {
	v, err := s.db.Get(ctx, "", key)
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256([]byte(v)), nil
}

// sameOrDistinct records sum and reports whether the sequence still satisfies the check: all equal
// to the first (eq) or all pairwise different (!eq).
func sameOrDistinct(first **[32]byte, seen map[[32]byte]struct{}, sum [32]byte, eq bool) bool {
	if eq {
		if *first == nil {
			*first = &sum
			return true
		}
		return **first == sum
	}
	if _, dup := seen[sum]; dup {
		return false
	}
	seen[sum] = struct{}{}
	return true
}

// recvErr turns a client-streaming Recv error into nil at the normal end of the stream.
func recvErr(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

func (s *kvService) BeginTransaction(ctx context.Context, req *kvpb.BeginTransactionRequest) (*kvpb.BeginTransactionResponse, error) {
	if req.GetTimeoutMs() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "timeout_ms must not be negative, got %d", req.GetTimeoutMs())
	}
	id, err := s.db.Begin(ctx, req.GetReadOnly(), time.Duration(req.GetTimeoutMs())*time.Millisecond)
	if err != nil {
		return nil, s.status("kv.BeginTransaction", err)
	}
	return &kvpb.BeginTransactionResponse{TransactionId: id}, nil
}

// CommitTransaction reports success=true, or an error status (NOT_FOUND for an unknown, ended or
// expired transaction) — never success=false, so a client checking either signal is right.
func (s *kvService) CommitTransaction(ctx context.Context, req *kvpb.CommitTransactionRequest) (*kvpb.CommitTransactionResponse, error) {
	if err := s.db.Commit(ctx, req.GetTransactionId()); err != nil {
		return nil, s.status("kv.CommitTransaction", err) // the store's message names the transaction
	}
	return &kvpb.CommitTransactionResponse{Success: true}, nil
}

// RollbackTransaction reports success=true, or an error status like CommitTransaction.
func (s *kvService) RollbackTransaction(ctx context.Context, req *kvpb.RollbackTransactionRequest) (*kvpb.RollbackTransactionResponse, error) {
	if err := s.db.Rollback(ctx, req.GetTransactionId()); err != nil {
		return nil, s.status("kv.RollbackTransaction", err)
	}
	return &kvpb.RollbackTransactionResponse{Success: true}, nil
}
