package api_test

import (
	"context"
	"errors"
	"io"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/buffdb/buffdbd/api"
	querypb "github.com/buffdb/buffdbd/api/proto/querypb"
	"github.com/buffdb/buffdbd/store"
)

// rowsSQL generates n rows of every SQLite type without depending on the store's table names.
const rowsSQL = `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000)
SELECT x AS n, x * 0.5 AS half, 'row' || x AS label, x'00ff' AS raw, NULL AS missing FROM c`

func TestQuery_ManyRows(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	c := querypb.NewQueryClient(ts.conn)
	s, err := c.Query(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s.Send(&querypb.RawQuery{Query: rowsSQL})
	s.CloseSend()
	md, err := s.Header()
	if err != nil {
		t.Fatal(err)
	}
	wantCols := []string{"n", "half", "label", "raw", "missing"}
	if got := md.Get(api.ColumnsHeader); !slices.Equal(got, wantCols) {
		_, rerr := s.Recv()
		t.Fatalf("header %s = %v, want %v (stream: %v)", api.ColumnsHeader, got, wantCols, rerr)
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
		n++
		if n == 1 && !slices.Equal(r.GetColumnNames(), wantCols) {
			t.Fatalf("first row column_names = %v", r.GetColumnNames())
		}
		if n > 1 && len(r.GetColumnNames()) != 0 {
			t.Fatalf("row %d repeats column_names", n)
		}
		f := r.GetFields()
		var i64 wrapperspb.Int64Value
		var dbl wrapperspb.DoubleValue
		var str wrapperspb.StringValue
		var byt wrapperspb.BytesValue
		var null structpb.Value
		if err := f[0].UnmarshalTo(&i64); err != nil || i64.GetValue() != int64(n) {
			t.Fatalf("row %d col n = %v, %v", n, i64.GetValue(), err)
		}
		if err := f[1].UnmarshalTo(&dbl); err != nil || dbl.GetValue() != float64(n)*0.5 {
			t.Fatalf("row %d col half = %v, %v", n, dbl.GetValue(), err)
		}
		if err := f[2].UnmarshalTo(&str); err != nil || str.GetValue() == "" {
			t.Fatalf("row %d col label = %v, %v", n, str.GetValue(), err)
		}
		if err := f[3].UnmarshalTo(&byt); err != nil || string(byt.GetValue()) != "\x00\xff" {
			t.Fatalf("row %d col raw = %x, %v", n, byt.GetValue(), err)
		}
		if err := f[4].UnmarshalTo(&null); err != nil {
			t.Fatalf("row %d NULL column: %v", n, err)
		}
		if _, ok := null.GetKind().(*structpb.Value_NullValue); !ok {
			t.Fatalf("row %d NULL column kind = %T, want null_value", n, null.GetKind())
		}
	}
	if n != 20000 {
		t.Fatalf("got %d rows, want 20000", n)
	}
}

func TestQuery_ReadOnly(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	c := querypb.NewQueryClient(ts.conn)
	_, err := bidi(t, c.Query, &querypb.RawQuery{Query: "CREATE TABLE sneaky(x)"})
	wantCode(t, err, codes.PermissionDenied, "query-writes")
	_, err = bidi(t, c.Execute, &querypb.RawQuery{Query: "CREATE TABLE sneaky(x)"})
	wantCode(t, err, codes.PermissionDenied, "query-writes")
	_, err = bidi(t, c.Query, &querypb.RawQuery{Query: "SELEC oops"})
	wantCode(t, err, codes.InvalidArgument)
}

func TestQuery_Execute(t *testing.T) {
	ts := newTestServer(t, store.Options{QueryWrites: true}, api.Options{})
	c := querypb.NewQueryClient(ts.conn)
	got, err := bidi(t, c.Execute,
		&querypb.RawQuery{Query: "CREATE TABLE scratch(x)"},
		&querypb.RawQuery{Query: "INSERT INTO scratch VALUES (1), (2), (3)"},
		&querypb.RawQuery{Query: "DELETE FROM scratch WHERE x > 1"})
	if err != nil {
		t.Fatal(err)
	}
	var changed []uint64
	for _, r := range got {
		changed = append(changed, r.GetRowsChanged())
	}
	// SQLite reports no meaningful count for DDL, so only the DML counts are checked.
	if len(changed) != 3 || !slices.Equal(changed[1:], []uint64{3, 2}) {
		t.Fatalf("rows changed = %v, want [_ 3 2]", changed)
	}
	rows, err := bidi(t, c.Query, &querypb.RawQuery{Query: "SELECT count(*) AS n FROM scratch"})
	if err != nil {
		t.Fatal(err)
	}
	var n wrapperspb.Int64Value
	if err := rows[0].GetFields()[0].UnmarshalTo(&n); err != nil || n.GetValue() != 1 {
		t.Fatalf("count = %v, %v", n.GetValue(), err)
	}
}

// TestQuery_ZeroRows: a query without rows still names its columns in the response header.
func TestQuery_ZeroRows(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	c := querypb.NewQueryClient(ts.conn)
	s, err := c.Query(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s.Send(&querypb.RawQuery{Query: "SELECT key AS k, value AS v FROM kv WHERE key = 'absent';"})
	s.CloseSend()
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("Recv = %v, want the end of an empty result", err)
	}
	md, err := s.Header()
	if err != nil {
		t.Fatal(err)
	}
	if got := md.Get(api.ColumnsHeader); !slices.Equal(got, []string{"k", "v"}) {
		t.Fatalf("header %s = %v, want [k v]", api.ColumnsHeader, got)
	}
}

// TestQuery_NonASCIIColumns: column names outside printable ASCII (and '%' and ',') are
// percent-encoded in the header, which only carries printable ASCII; the rows come through.
func TestQuery_NonASCIIColumns(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	c := querypb.NewQueryClient(ts.conn)
	names := []string{"é", "名前", "a,b", "50%", "tab\there", "plain"}
	for _, rows := range []string{"", " WHERE 0"} {
		s, err := c.Query(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		s.Send(&querypb.RawQuery{Query: `SELECT 1 AS "é", 2 AS "名前", 3 AS "a,b", 4 AS "50%", 5 AS "tab` + "\t" + `here", 6 AS plain FROM (SELECT 1)` + rows})
		s.CloseSend()
		n := 0
		for {
			_, err := s.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("query%s: %v", rows, err)
			}
			n++
		}
		md, err := s.Header()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, v := range md.Get(api.ColumnsHeader) {
			got = append(got, api.DecodeColumn(v))
		}
		if !slices.Equal(got, names) || (rows == "") != (n == 1) {
			t.Fatalf("query%s: %d rows, columns %q, want %q", rows, n, got, names)
		}
	}
}

// TestQuery_InvalidUTF8: SQLite TEXT may hold any bytes (CAST(blob AS TEXT), raw writes), and so may
// a column alias. A proto3 string must be UTF-8, so such a value is sent as BytesValue and such a
// name with U+FFFD (its bytes are in the header): the query's rows still arrive.
func TestQuery_InvalidUTF8(t *testing.T) {
	ts := newTestServer(t, store.Options{QueryWrites: true}, api.Options{})
	// A client cannot send such a name (its SQL must be UTF-8 too), but a table made by another
	// SQLite tool can have one.
	if _, err := ts.db.Execute(context.Background(), "CREATE TABLE t(\"a\xffb\", good)"); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.db.Execute(context.Background(), "INSERT INTO t VALUES (CAST(X'FF41' AS TEXT), 'ok')"); err != nil {
		t.Fatal(err)
	}
	c := querypb.NewQueryClient(ts.conn)
	s, err := c.Query(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s.Send(&querypb.RawQuery{Query: "SELECT * FROM t"})
	s.CloseSend()
	r, err := s.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	var b wrapperspb.BytesValue
	if err := r.GetFields()[0].UnmarshalTo(&b); err != nil || string(b.GetValue()) != "\xffA" {
		t.Fatalf("invalid UTF-8 TEXT: %v, %v; want BytesValue 0xff41", r.GetFields()[0], err)
	}
	var str wrapperspb.StringValue
	if err := r.GetFields()[1].UnmarshalTo(&str); err != nil || str.GetValue() != "ok" {
		t.Fatalf("valid TEXT: %v, %v", r.GetFields()[1], err)
	}
	if got := r.GetColumnNames(); !slices.Equal(got, []string{"a\uFFFDb", "good"}) {
		t.Fatalf("column_names = %q", got)
	}
	md, _ := s.Header()
	if got := md.Get(api.ColumnsHeader); len(got) != 2 || api.DecodeColumn(got[0]) != "a\xffb" {
		t.Fatalf("header columns = %q, want the exact bytes", got)
	}
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("end of stream: %v", err)
	}
}

// TestQuery_ZeroRowsAnyStatement: the columns of an empty result come from the statement itself,
// not from running it again as a subquery (which only a SELECT survives, and which doubled the
// time of an expensive query that found nothing): PRAGMAs and RETURNING name theirs too.
func TestQuery_ZeroRowsAnyStatement(t *testing.T) {
	ts := newTestServer(t, store.Options{QueryWrites: true}, api.Options{})
	c := querypb.NewQueryClient(ts.conn)
	for _, tc := range []struct {
		sql  string
		want []string
	}{
		{"PRAGMA table_info(no_such_table)", []string{"cid", "name", "type", "notnull", "dflt_value", "pk"}},
		{"DELETE FROM kv WHERE key = 'absent' RETURNING key, value AS old", []string{"key", "old"}},
		{"WITH x(a) AS (SELECT 1) SELECT a FROM x WHERE a > 1", []string{"a"}},
	} {
		s, err := c.Query(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		s.Send(&querypb.RawQuery{Query: tc.sql})
		s.CloseSend()
		if _, err := s.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("%s: Recv = %v, want the end of an empty result", tc.sql, err)
		}
		md, err := s.Header()
		if err != nil {
			t.Fatal(err)
		}
		if got := md.Get(api.ColumnsHeader); !slices.Equal(got, tc.want) {
			t.Errorf("%s: header %s = %v, want %v", tc.sql, api.ColumnsHeader, got, tc.want)
		}
	}
}
