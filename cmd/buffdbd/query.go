package main

import (
	"bufio"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/buffdb/buffdbd/api"
	querypb "github.com/buffdb/buffdbd/api/proto/querypb"
)

type queryFlags struct {
	json, csv, execute bool
	target             string
}

func newQueryCmd(g *globalFlags) *cobra.Command {
	f := &queryFlags{}
	cmd := &cobra.Command{
		Use:   "query <SQL>",
		Short: "Run SQL against the store's database and print the rows",
		Long: `Run SQL against the store's SQLite database and print the rows as an aligned table (default),
a JSON array of objects (--json) or CSV with a header line (--csv). The Query service is read-only
unless the daemon runs with --query-writes; --execute runs a statement through Execute and prints
the number of rows changed.`,
		Args: textArgs(exactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.json && f.csv {
				return usagef("--json and --csv exclude each other")
			}
			var target querypb.TargetStore
			switch f.target {
			case "kv":
				target = querypb.TargetStore_KV
			case "blob":
				target = querypb.TargetStore_BLOB
			default:
				return usagef("--target must be kv or blob, got %q", f.target)
			}
			// A write may start a store; a read of a new, empty one is a mistyped directory. So may
			// an Execute only where it can write: without query_writes the store refuses it, and
			// the store created for it would be left behind.
			if f.execute {
				if cfg, _, _, err := LoadConfig(cmd.Flags()); err == nil && cfg.Store.QueryWrites {
					cmd.Annotations = createsStoreAnnotation
				}
			}
			cc, err := dial(cmd, g)
			if err != nil {
				return err
			}
			defer cc.Close()
			c := querypb.NewQueryClient(cc)
			q := &querypb.RawQuery{Query: args[0], Target: target}
			if f.execute {
				resp, err := roundTrip(cmd.Context(), c.Execute, q)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(cmd.OutOrStdout(), resp.GetRowsChanged())
				return err
			}
			return runQuery(cmd, c, q, f)
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.json, "json", false, "print a JSON array of objects keyed by column name")
	fl.BoolVar(&f.csv, "csv", false, "print CSV with a header line")
	fl.BoolVar(&f.execute, "execute", false, "run the statement with Execute (needs the daemon's --query-writes) and print rows changed")
	fl.StringVar(&f.target, "target", "kv", "BuffDB's target store, kv or blob (buffdbd keeps both in one database; accepted for compatibility)")
	return cmd
}

// rowPrinter prints rows in one output format.
type rowPrinter interface {
	row(cols []string, vals []any) error
	end(cols []string) error
}

func runQuery(cmd *cobra.Command, c querypb.QueryClient, q *querypb.RawQuery, f *queryFlags) error {
	ctx := cmd.Context()
	s, err := c.Query(ctx)
	if err != nil {
		return err
	}
	if err := s.Send(q); err != nil {
		_, err = s.Recv()
		return err
	}
	if err := s.CloseSend(); err != nil {
		return err
	}
	out := bufio.NewWriter(cmd.OutOrStdout())
	defer out.Flush()
	var p rowPrinter
	switch {
	case f.json:
		p = &jsonPrinter{w: out}
	case f.csv:
		p = &csvPrinter{w: csv.NewWriter(out)}
	default:
		p = &tablePrinter{w: tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)}
	}
	var cols []string
	for {
		res, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if cols == nil {
			cols = res.GetColumnNames()
		}
		vals := make([]any, len(res.GetFields()))
		for i, a := range res.GetFields() {
			if vals[i], err = decodeField(a); err != nil {
				return err
			}
		}
		if len(cols) < len(vals) {
			for i := len(cols); i < len(vals); i++ {
				cols = append(cols, "column"+strconv.Itoa(i+1))
			}
		}
		if err := p.row(cols, vals); err != nil {
			return err
		}
	}
	if cols == nil {
		// No rows: the header metadata still names the columns.
		if md, err := s.Header(); err == nil {
			for _, c := range md.Get(api.ColumnsHeader) {
				cols = append(cols, api.DecodeColumn(c))
			}
		}
	}
	return p.end(cols)
}

// decodeField unwraps one column: int64, float64, string, []byte, or nil for NULL.
func decodeField(a *anypb.Any) (any, error) {
	m, err := a.UnmarshalNew()
	if err != nil {
		return nil, fmt.Errorf("decode column of type %s: %w", a.GetTypeUrl(), err)
	}
	switch v := m.(type) {
	case *wrapperspb.Int64Value:
		return v.GetValue(), nil
	case *wrapperspb.DoubleValue:
		return v.GetValue(), nil
	case *wrapperspb.StringValue:
		return v.GetValue(), nil
	case *wrapperspb.BytesValue:
		return v.GetValue(), nil
	case *structpb.Value:
		return nil, nil
	}
	return nil, fmt.Errorf("unexpected column type %s", a.GetTypeUrl())
}

// text renders a value for the table and CSV formats: NULL as "NULL" (table) or empty (CSV), bytes
// as hex with a 0x prefix so binary data never garbles a terminal.
func text(v any, null string) string {
	switch v := v.(type) {
	case nil:
		return null
	case []byte:
		return "0x" + hex.EncodeToString(v)
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64)
	}
	return fmt.Sprint(v)
}

// tablePrinter aligns columns; it necessarily holds the rows until the end to size them.
type tablePrinter struct {
	w      *tabwriter.Writer
	header bool
}

func (p *tablePrinter) line(vals []string) error {
	for i, v := range vals {
		sep := "\t"
		if i == len(vals)-1 {
			sep = "\n"
		}
		if _, err := io.WriteString(p.w, v+sep); err != nil {
			return err
		}
	}
	return nil
}

func (p *tablePrinter) row(cols []string, vals []any) error {
	if !p.header {
		p.header = true
		if err := p.line(cols); err != nil {
			return err
		}
	}
	s := make([]string, len(vals))
	for i, v := range vals {
		s[i] = text(v, "NULL")
	}
	return p.line(s)
}

func (p *tablePrinter) end(cols []string) error {
	if !p.header && len(cols) > 0 {
		if err := p.line(cols); err != nil {
			return err
		}
	}
	return p.w.Flush()
}

type csvPrinter struct {
	w      *csv.Writer
	header bool
}

func (p *csvPrinter) row(cols []string, vals []any) error {
	if !p.header {
		p.header = true
		if err := p.w.Write(cols); err != nil {
			return err
		}
	}
	s := make([]string, len(vals))
	for i, v := range vals {
		s[i] = text(v, "")
	}
	return p.w.Write(s)
}

func (p *csvPrinter) end(cols []string) error {
	if !p.header && len(cols) > 0 {
		p.w.Write(cols)
	}
	p.w.Flush()
	return p.w.Error()
}

// jsonPrinter streams a JSON array, one object per row; bytes are base64 (encoding/json's rule),
// non-finite floats strings. Keys are the column names made unique (uniqueColumns).
type jsonPrinter struct {
	w     io.Writer
	count int
	keys  [][]byte // the encoded keys, computed at the first row
}

func (p *jsonPrinter) row(cols []string, vals []any) error {
	if p.keys == nil {
		for _, c := range uniqueColumns(cols) {
			k, _ := json.Marshal(c)
			p.keys = append(p.keys, k)
		}
	}
	// An ordered object keeps the columns in SELECT order, which a map would not.
	buf := []byte("{")
	for i, v := range vals {
		if i > 0 {
			buf = append(buf, ',')
		}
		k := p.keys[i]
		if f, ok := v.(float64); ok && (math.IsInf(f, 0) || math.IsNaN(f)) {
			v = strconv.FormatFloat(f, 'g', -1, 64) // JSON has no infinities: "+Inf", "-Inf", "NaN", as the table prints
		}
		val, err := json.Marshal(v)
		if err != nil {
			return err
		}
		buf = append(append(append(buf, k...), ':'), val...)
	}
	buf = append(buf, '}')
	prefix := ",\n"
	if p.count == 0 {
		prefix = "[\n"
	}
	p.count++
	_, err := fmt.Fprintf(p.w, "%s%s", prefix, buf)
	return err
}

// uniqueColumns renames repeated column names as SQLite names the columns of the same result
// used as a subquery or in CREATE TABLE AS (sqlite3ColumnsFromExprList): a repeat loses any
// ":digits" suffix and gets ":1", ":2", ... until unique; `SELECT 1 AS a, 2 AS a` gives a, a:1.
// A JSON object with two "a" keys is legal but ambiguous: most parsers (jq, Python, JavaScript)
// keep only the last, silently losing a column. (After three collisions on one name SQLite tries
// random numbers; this counts on, so the output is deterministic.)
func uniqueColumns(cols []string) []string {
	out := make([]string, len(cols))
	seen := make(map[string]bool, len(cols))
	for i, c := range cols {
		for n := 1; seen[c]; n++ {
			base := c
			if c != "" {
				// SQLite looks for the ':' before trailing digits at index 1 or later, or at 0.
				if j := len(strings.TrimRight(c[1:], "0123456789")); c[j] == ':' {
					base = c[:j]
				}
			}
			c = base + ":" + strconv.Itoa(n)
		}
		seen[c] = true
		out[i] = c
	}
	return out
}

func (p *jsonPrinter) end([]string) error {
	if p.count == 0 {
		_, err := io.WriteString(p.w, "[]\n")
		return err
	}
	_, err := io.WriteString(p.w, "\n]\n")
	return err
}
