package api

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	querypb "github.com/buffdb/buffdbd/api/proto/querypb"
	"github.com/buffdb/buffdbd/store"
)

// ColumnsHeader is the response header metadata key carrying the column names of a Query stream's
// first query, one value per column, so clients learn them even when it returns no rows. Header
// values must be printable ASCII, so each name is percent-encoded (EncodeColumn): bytes outside
// printable ASCII, '%' and ',' (grpc-js joins repeated values with ", ") become %XX.
const ColumnsHeader = "buffdb-columns"

// EncodeColumn percent-encodes a column name for ColumnsHeader; ASCII names without '%' or ','
// are unchanged.
func EncodeColumn(name string) string {
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c < 0x20 || c > 0x7e || c == '%' || c == ',' {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// DecodeColumn reverses EncodeColumn; a malformed escape is kept as it is.
func DecodeColumn(v string) string {
	if s, err := url.PathUnescape(v); err == nil {
		return s
	}
	return v
}

// queryWritesHint tells a client how to get past the Query service's read-only default.
const queryWritesHint = "the query service is read-only; start buffdbd with store.query_writes enabled (--query-writes) to allow writes"

// queryService implements buffdb.query.Query over the store's one SQLite database. TargetStore is
// accepted and ignored: BuffDB kept KV and BLOB in two databases, buffdbd keeps both in one, so
// either target sees every table.
type queryService struct {
	querypb.UnimplementedQueryServer
	*service
}

// Query runs each RawQuery in turn and streams one QueryResult per row, column_names set on each
// query's first row. Rows are sent as SQLite produces them, so memory stays bounded for any number
// of rows. Writes fail with PERMISSION_DENIED unless the server enables query writes.
func (s *queryService) Query(stream grpc.BidiStreamingServer[querypb.RawQuery, querypb.QueryResult]) error {
	ctx := stream.Context()
	headerSent := false
	sendHeader := func(cols []string) error {
		if headerSent {
			return nil
		}
		headerSent = true
		md := metadata.MD{}
		for _, c := range cols {
			md.Append(ColumnsHeader, EncodeColumn(c))
		}
		return stream.SendHeader(md)
	}
	for {
		q, err := stream.Recv()
		if err != nil {
			if err = recvErr(err); err != nil {
				return streamError(s.service, "query.Query", stream, err)
			}
			return nil
		}
		first := true
		err = s.db.QueryColumns(ctx, q.GetQuery(), func(cols []string, row []any) error {
			if err := sendHeader(cols); err != nil {
				return err
			}
			if row == nil {
				return nil // the store reporting columns of a query without rows
			}
			res, err := resultRow(row)
			if err != nil {
				return err
			}
			if first {
				res.ColumnNames = validColumns(cols)
				first = false
			}
			return stream.Send(res)
		})
		if err != nil {
			return streamError(s.service, "query.Query", stream, queryErr(err))
		}
	}
}

// Execute runs each RawQuery and answers the rows it changed. It needs the server's query-writes
// switch; without it every statement fails with PERMISSION_DENIED.
func (s *queryService) Execute(stream grpc.BidiStreamingServer[querypb.RawQuery, querypb.RowsChanged]) error {
	return serveBidi(s.service, "query.Execute", stream,
		func(ctx context.Context, q *querypb.RawQuery) func(context.Context) (*querypb.RowsChanged, error) {
			n, err := s.db.Execute(ctx, q.GetQuery())
			if err != nil {
				return ready[querypb.RowsChanged](nil, queryErr(err))
			}
			return ready(&querypb.RowsChanged{RowsChanged: uint64(n)}, nil)
		}, nil, nil)
}

// queryErr reports the read-only default as PERMISSION_DENIED, with the switch that lifts it: the
// client is not allowed to write by server configuration, which is not a transaction's state
// (FAILED_PRECONDITION, as in a read-only transaction). SQL errors are the client's input, so they
// are INVALID_ARGUMENT with SQLite's message unless the store classified them otherwise.
func queryErr(err error) error {
	switch {
	case errors.Is(err, store.ErrReadOnly):
		return status.Error(codes.PermissionDenied, queryWritesHint)
	case Code(err) == codes.Internal:
		// An unclassified error from running the client's own SQL is almost always that SQL
		// (syntax, unknown table); SQLite's message is what the client needs to fix it.
		return status.Error(codes.InvalidArgument, "query: "+err.Error())
	}
	return err
}

// validColumns returns cols with bytes that are not UTF-8 replaced by U+FFFD: a proto3 string
// must be UTF-8 or the whole row fails to marshal (SQLite takes any bytes as a column alias). The
// exact bytes are in the ColumnsHeader, which percent-encodes them.
func validColumns(cols []string) []string {
	for i, c := range cols {
		if !utf8.ValidString(c) {
			out := slices.Clone(cols)
			for j := i; j < len(out); j++ {
				out[j] = strings.ToValidUTF8(out[j], "\uFFFD")
			}
			return out
		}
	}
	return cols
}

// resultRow wraps each column in an Any: int64 → Int64Value, float64 → DoubleValue, string →
// StringValue, []byte → BytesValue, NULL → google.protobuf.Value{null_value: NULL_VALUE}. TEXT that
// is not valid UTF-8 (SQLite stores whatever bytes it is given, e.g. CAST(blob AS TEXT)) is a
// BytesValue: a StringValue must be UTF-8, and failing the whole query would hide every other row.
func resultRow(row []any) (*querypb.QueryResult, error) {
	res := &querypb.QueryResult{Fields: make([]*anypb.Any, len(row))}
	for i, v := range row {
		var m proto.Message
		switch v := v.(type) {
		case nil:
			m = structpb.NewNullValue()
		case int64:
			m = wrapperspb.Int64(v)
		case float64:
			m = wrapperspb.Double(v)
		case string:
			if utf8.ValidString(v) {
				m = wrapperspb.String(v)
			} else {
				m = wrapperspb.Bytes([]byte(v))
			}
		case []byte:
			m = wrapperspb.Bytes(v)
		case bool:
			m = wrapperspb.Int64(map[bool]int64{false: 0, true: 1}[v])
		default:
			return nil, fmt.Errorf("query column %d: unsupported SQLite value type %T", i, v)
		}
		a, err := anypb.New(m)
		if err != nil {
			return nil, fmt.Errorf("query column %d: %w", i, err)
		}
		res.Fields[i] = a
	}
	return res, nil
}
