package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	indexpb "github.com/buffdb/buffdbd/api/proto/indexpb"
)

func newIndexCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "index", Short: "Create, drop, list and search secondary indexes over KV values"}
	cmd.AddCommand(newIndexCreateCmd(g), newIndexDropCmd(g), newIndexLsCmd(g), newIndexFindCmd(g), newIndexRangeCmd(g))
	return cmd
}

func newIndexCreateCmd(g *globalFlags) *cobra.Command {
	var typ, kind, jsonPath, prefix string
	var unique bool
	cmd := &cobra.Command{
		Use:         "create <NAME>",
		Annotations: createsStoreAnnotation,
		Short:       "Create an index and backfill it from existing keys; prints how many keys it indexed",
		Example: `  buffdbd index create by-framework --json-path '$.framework' --prefix 'model:'
  buffdbd index create by-size --type btree --kind number --json-path '$.size'`,
		Args: textArgs(exactArgs(1)),
		RunE: withClient(g, indexpb.NewIndexClient, func(cmd *cobra.Command, c indexpb.IndexClient, args []string) error {
			def := &indexpb.IndexDefinition{Name: args[0], Unique: unique, JsonPath: jsonPath, KeyPrefix: prefix}
			switch typ {
			case "hash":
				def.Type = indexpb.IndexType_HASH
			case "btree":
				def.Type = indexpb.IndexType_BTREE
			default:
				return usagef("--type must be hash or btree, got %q", typ)
			}
			switch kind {
			case "string":
				def.ValueKind = indexpb.ValueKind_STRING
			case "number":
				def.ValueKind = indexpb.ValueKind_NUMBER
			default:
				return usagef("--kind must be string or number, got %q", kind)
			}
			resp, err := c.CreateIndex(cmd.Context(), &indexpb.CreateIndexRequest{Index: def})
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), resp.GetKeysIndexed())
			return err
		}),
	}
	fl := cmd.Flags()
	fl.StringVar(&typ, "type", "hash", "hash (exact match) or btree (exact match and ranges)")
	fl.StringVar(&kind, "kind", "string", "how values compare: string or number")
	fl.StringVar(&jsonPath, "json-path", "", "index this JSON path of the value (e.g. $.framework) instead of the whole value")
	fl.StringVar(&prefix, "prefix", "", "index only keys starting with this prefix")
	fl.BoolVar(&unique, "unique", false, "reject a Set that would give two keys the same indexed value")
	return cmd
}

func newIndexDropCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use: "drop <NAME>", Short: "Drop an index", Args: textArgs(exactArgs(1)),
		RunE: withClient(g, indexpb.NewIndexClient, func(cmd *cobra.Command, c indexpb.IndexClient, args []string) error {
			_, err := c.DropIndex(cmd.Context(), &indexpb.DropIndexRequest{Name: args[0]})
			return err
		}),
	}
}

func newIndexLsCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use: "ls", Short: "List indexes", Args: noArgs,
		RunE: withClient(g, indexpb.NewIndexClient, func(cmd *cobra.Command, c indexpb.IndexClient, _ []string) error {
			resp, err := c.ListIndexes(cmd.Context(), &indexpb.ListIndexesRequest{})
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tTYPE\tUNIQUE\tKIND\tPREFIX\tJSON PATH")
			for _, d := range resp.GetIndexes() {
				fmt.Fprintf(w, "%s\t%s\t%t\t%s\t%s\t%s\n", d.GetName(), strings.ToLower(d.GetType().String()),
					d.GetUnique(), strings.ToLower(d.GetValueKind().String()), orDash(d.GetKeyPrefix()), orDash(d.GetJsonPath()))
			}
			return w.Flush()
		}),
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newIndexFindCmd(g *globalFlags) *cobra.Command {
	var limit uint64
	var values bool
	var after string
	cmd := &cobra.Command{
		Use: "find <NAME> <VALUE>", Short: "Print the keys whose indexed value equals VALUE, in key order", Args: textArgs(exactArgs(2)),
		RunE: withClient(g, indexpb.NewIndexClient, func(cmd *cobra.Command, c indexpb.IndexClient, args []string) error {
			req := &indexpb.FindRequest{Index: args[0], Value: args[1], Limit: limit}
			if cmd.Flags().Changed("after") {
				req.AfterKey = &after
			}
			s, err := c.Find(cmd.Context(), req)
			if err != nil {
				return err
			}
			return printKeys(cmd.OutOrStdout(), s, values, false)
		}),
	}
	cmd.Flags().Uint64Var(&limit, "limit", 0, "print at most this many keys (0: all)")
	cmd.Flags().BoolVar(&values, "values", false, "print each key's value after a tab")
	cmd.Flags().StringVar(&after, "after", "", "only keys after this one (the last key of the previous page)")
	return cmd
}

func newIndexRangeCmd(g *globalFlags) *cobra.Command {
	var gt, ge, lt, le, afterValue, afterKey string
	var limit uint64
	var desc, values, indexed bool
	cmd := &cobra.Command{
		Use:     "range <NAME>",
		Short:   "Print keys whose indexed value is within bounds (btree indexes), in value order",
		Example: `  buffdbd index range by-size --ge 100 --lt 1000 --limit 10`,
		Args:    textArgs(exactArgs(1)),
		RunE: withClient(g, indexpb.NewIndexClient, func(cmd *cobra.Command, c indexpb.IndexClient, args []string) error {
			fl := cmd.Flags()
			if fl.Changed("gt") && fl.Changed("ge") || fl.Changed("lt") && fl.Changed("le") {
				return usagef("give at most one lower bound (--gt/--ge) and one upper bound (--lt/--le)")
			}
			if fl.Changed("after-value") != fl.Changed("after-key") {
				return usagef("give both --after-value and --after-key (from the last line of the previous page, printed with --indexed)")
			}
			req := &indexpb.FindRangeRequest{Index: args[0], Limit: limit, Descending: desc}
			switch {
			case fl.Changed("gt"):
				req.Lower = &indexpb.Bound{Value: gt}
			case fl.Changed("ge"):
				req.Lower = &indexpb.Bound{Value: ge, Inclusive: true}
			}
			switch {
			case fl.Changed("lt"):
				req.Upper = &indexpb.Bound{Value: lt}
			case fl.Changed("le"):
				req.Upper = &indexpb.Bound{Value: le, Inclusive: true}
			}
			if fl.Changed("after-key") {
				req.After = &indexpb.Cursor{IndexedValue: afterValue, Key: afterKey}
			}
			s, err := c.FindRange(cmd.Context(), req)
			if err != nil {
				return err
			}
			return printKeys(cmd.OutOrStdout(), s, values, indexed)
		}),
	}
	fl := cmd.Flags()
	fl.StringVar(&gt, "gt", "", "lower bound, exclusive")
	fl.StringVar(&ge, "ge", "", "lower bound, inclusive")
	fl.StringVar(&lt, "lt", "", "upper bound, exclusive")
	fl.StringVar(&le, "le", "", "upper bound, inclusive")
	fl.Uint64Var(&limit, "limit", 0, "print at most this many keys (0: all)")
	fl.BoolVar(&desc, "desc", false, "highest values first")
	fl.BoolVar(&indexed, "indexed", false, "print each key's indexed value before it, after a tab")
	fl.StringVar(&afterValue, "after-value", "", "resume after this indexed value (with --after-key)")
	fl.StringVar(&afterKey, "after-key", "", "resume after this key at --after-value (the previous page's last key)")
	fl.BoolVar(&values, "values", false, "print each key's value after a tab")
	return cmd
}

// printKeys streams keys as the server sends them, optionally preceded by their indexed value and
// followed by their value (tab-separated).
func printKeys(w io.Writer, s grpc.ServerStreamingClient[indexpb.FindResponse], values, indexed bool) error {
	out := bufio.NewWriter(w)
	defer out.Flush()
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if indexed {
			fmt.Fprintf(out, "%s\t", r.GetIndexedValue())
		}
		if values {
			fmt.Fprintf(out, "%s\t%s\n", r.GetKey(), r.GetValue())
		} else {
			fmt.Fprintln(out, r.GetKey())
		}
	}
}
