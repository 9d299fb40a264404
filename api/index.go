package api

import (
	"context"
	"fmt"
	"math"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	indexpb "github.com/buffdb/buffdbd/api/proto/indexpb"
	"github.com/buffdb/buffdbd/store"
)

// indexService implements buffdb.index.Index over the store's persistent secondary indexes.
type indexService struct {
	indexpb.UnimplementedIndexServer
	*service
}

func (s *indexService) CreateIndex(ctx context.Context, req *indexpb.CreateIndexRequest) (*indexpb.CreateIndexResponse, error) {
	if req.GetIndex() == nil {
		return nil, status.Error(codes.InvalidArgument, "index: missing index definition")
	}
	def, err := indexDef(req.GetIndex())
	if err != nil {
		return nil, err
	}
	n, err := s.db.CreateIndex(ctx, def)
	if err != nil {
		return nil, s.status("index.CreateIndex", err)
	}
	return &indexpb.CreateIndexResponse{KeysIndexed: n}, nil
}

func (s *indexService) DropIndex(ctx context.Context, req *indexpb.DropIndexRequest) (*indexpb.DropIndexResponse, error) {
	if err := s.db.DropIndex(ctx, req.GetName()); err != nil {
		return nil, s.status("index.DropIndex", err)
	}
	return &indexpb.DropIndexResponse{}, nil
}

func (s *indexService) ListIndexes(ctx context.Context, _ *indexpb.ListIndexesRequest) (*indexpb.ListIndexesResponse, error) {
	defs, err := s.db.ListIndexes(ctx)
	if err != nil {
		return nil, s.status("index.ListIndexes", err)
	}
	res := &indexpb.ListIndexesResponse{Indexes: make([]*indexpb.IndexDefinition, len(defs))}
	for i, d := range defs {
		res.Indexes[i] = indexDefinition(d)
	}
	return res, nil
}

// hit is the wire form of a store hit; errNotUTF8 if one of its strings cannot be sent.
func hit(h store.Hit) (*indexpb.FindResponse, error) {
	if err := checkUTF8(fmt.Sprintf("index hit %q", h.Key), h.Key, h.Value, h.Indexed); err != nil {
		return nil, err
	}
	return &indexpb.FindResponse{Key: h.Key, Value: h.Value, IndexedValue: h.Indexed}, nil
}

// sendHit sends h on stream.
func sendHit(stream grpc.ServerStreamingServer[indexpb.FindResponse], h store.Hit) error {
	r, err := hit(h)
	if err != nil {
		return err
	}
	return stream.Send(r)
}

// Find streams matching keys as the store finds them; the result set is never held in memory.
func (s *indexService) Find(req *indexpb.FindRequest, stream grpc.ServerStreamingServer[indexpb.FindResponse]) error {
	limit, err := intLimit(req.GetLimit())
	if err != nil {
		return streamError(s.service, "index.Find", stream, err)
	}
	err = s.db.Find(stream.Context(), req.GetTransactionId(), req.GetIndex(), req.GetValue(), limit, req.AfterKey,
		func(h store.Hit) error { return sendHit(stream, h) })
	if err != nil {
		return streamError(s.service, "index.Find", stream, err)
	}
	return nil
}

// FindRange streams keys whose indexed value lies within the bounds, in value then key order.
func (s *indexService) FindRange(req *indexpb.FindRangeRequest, stream grpc.ServerStreamingServer[indexpb.FindResponse]) error {
	limit, err := intLimit(req.GetLimit())
	if err != nil {
		return streamError(s.service, "index.FindRange", stream, err)
	}
	r := store.Range{Limit: limit, Descending: req.GetDescending()}
	if b := req.GetLower(); b != nil {
		r.Lower = &store.Bound{Value: b.GetValue(), Inclusive: b.GetInclusive()}
	}
	if b := req.GetUpper(); b != nil {
		r.Upper = &store.Bound{Value: b.GetValue(), Inclusive: b.GetInclusive()}
	}
	if c := req.GetAfter(); c != nil {
		r.After = &store.Cursor{Indexed: c.GetIndexedValue(), Key: c.GetKey()}
	}
	err = s.db.FindRange(stream.Context(), req.GetTransactionId(), req.GetIndex(), r,
		func(h store.Hit) error { return sendHit(stream, h) })
	if err != nil {
		return streamError(s.service, "index.FindRange", stream, err)
	}
	return nil
}

func intLimit(n uint64) (int, error) {
	if n > math.MaxInt32 {
		return 0, status.Errorf(codes.InvalidArgument, "limit %d is too large (max %d; 0 means no limit)", n, math.MaxInt32)
	}
	return int(n), nil
}

// indexDef converts a wire definition, rejecting enum values this server does not know (a newer
// client) instead of silently treating them as the default.
func indexDef(d *indexpb.IndexDefinition) (store.IndexDef, error) {
	def := store.IndexDef{Name: d.GetName(), Unique: d.GetUnique(), JSONPath: d.GetJsonPath(), KeyPrefix: d.GetKeyPrefix()}
	switch d.GetType() {
	case indexpb.IndexType_HASH:
		def.Type = store.IndexHash
	case indexpb.IndexType_BTREE:
		def.Type = store.IndexBTree
	default:
		return def, status.Errorf(codes.InvalidArgument, "index %q: unknown index type %d", d.GetName(), d.GetType())
	}
	switch d.GetValueKind() {
	case indexpb.ValueKind_STRING:
		def.Kind = store.KindString
	case indexpb.ValueKind_NUMBER:
		def.Kind = store.KindNumber
	default:
		return def, status.Errorf(codes.InvalidArgument, "index %q: unknown value kind %d", d.GetName(), d.GetValueKind())
	}
	return def, nil
}

// indexDefinition converts a store index definition to its wire form.
func indexDefinition(d store.IndexDef) *indexpb.IndexDefinition {
	out := &indexpb.IndexDefinition{Name: d.Name, Unique: d.Unique, JsonPath: d.JSONPath, KeyPrefix: d.KeyPrefix}
	switch d.Type {
	case store.IndexBTree:
		out.Type = indexpb.IndexType_BTREE
	default:
		out.Type = indexpb.IndexType_HASH
	}
	if d.Kind == store.KindNumber {
		out.ValueKind = indexpb.ValueKind_NUMBER
	}
	return out
}
