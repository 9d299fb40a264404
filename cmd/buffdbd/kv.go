package main

import (
	"context"
	"fmt"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"

	kvpb "github.com/buffdb/buffdbd/api/proto/kvpb"
)

func newKVCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "kv", Short: "Get, set, delete and compare key-value pairs"}
	cmd.AddCommand(
		&cobra.Command{
			Use: "get <KEY>", Short: "Print the value of KEY", Args: textArgs(exactArgs(1)),
			RunE: withClient(g, kvpb.NewKvClient, func(cmd *cobra.Command, c kvpb.KvClient, args []string) error {
				resp, err := roundTrip(cmd.Context(), c.Get, &kvpb.GetRequest{Key: args[0]})
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(cmd.OutOrStdout(), resp.GetValue())
				return err
			}),
		},
		&cobra.Command{
			Use: "set <KEY> <VALUE>", Short: "Store VALUE under KEY", Args: textArgs(exactArgs(2)),
			Annotations: createsStoreAnnotation,
			RunE: withClient(g, kvpb.NewKvClient, func(cmd *cobra.Command, c kvpb.KvClient, args []string) error {
				_, err := roundTrip(cmd.Context(), c.Set, &kvpb.SetRequest{Key: args[0], Value: args[1]})
				return err
			}),
		},
		&cobra.Command{
			Use: "delete <KEY>", Short: "Delete KEY", Args: textArgs(exactArgs(1)),
			RunE: withClient(g, kvpb.NewKvClient, func(cmd *cobra.Command, c kvpb.KvClient, args []string) error {
				_, err := roundTrip(cmd.Context(), c.Delete, &kvpb.DeleteRequest{Key: args[0]})
				return err
			}),
		},
		&cobra.Command{
			Use: "eq <KEY>...", Short: "Exit 0 if every KEY has the same value, 1 if not", Args: textArgs(minArgs(1)),
			RunE: withClient(g, kvpb.NewKvClient, func(cmd *cobra.Command, c kvpb.KvClient, args []string) error {
				return checkResult(cmd)(sendAll(cmd.Context(), c.Eq, args, func(k string) *kvpb.EqRequest {
					return &kvpb.EqRequest{Key: k}
				}))
			}),
		},
		&cobra.Command{
			Use: "not-eq <KEY>...", Short: "Exit 0 if the KEYs' values are pairwise different, 1 if not", Args: textArgs(minArgs(1)),
			RunE: withClient(g, kvpb.NewKvClient, func(cmd *cobra.Command, c kvpb.KvClient, args []string) error {
				return checkResult(cmd)(sendAll(cmd.Context(), c.NotEq, args, func(k string) *kvpb.NotEqRequest {
					return &kvpb.NotEqRequest{Key: k}
				}))
			}),
		},
	)
	return cmd
}

// roundTrip sends one request on a new bidi stream and returns its one response.
func roundTrip[Req, Resp any](ctx context.Context, open func(context.Context, ...grpc.CallOption) (grpc.BidiStreamingClient[Req, Resp], error), req *Req) (*Resp, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := open(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Send(req); err != nil {
		_, rerr := s.Recv() // the server's status explains a failed send
		return nil, rerr
	}
	if err := s.CloseSend(); err != nil {
		return nil, err
	}
	return s.Recv()
}

// sendAll streams one request per item on a client-streaming call and returns the answer.
func sendAll[T, Req any](ctx context.Context, open func(context.Context, ...grpc.CallOption) (grpc.ClientStreamingClient[Req, wrapperspb.BoolValue], error), items []T, mk func(T) *Req) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := open(ctx)
	if err != nil {
		return false, err
	}
	for _, it := range items {
		if err := s.Send(mk(it)); err != nil {
			break // the server answered early (false at the first mismatch) or failed; CloseAndRecv says which
		}
	}
	resp, err := s.CloseAndRecv()
	if err != nil {
		return false, err
	}
	return resp.GetValue(), nil
}

// checkResult returns a function that prints a check's answer and turns false into exit code 1.
func checkResult(cmd *cobra.Command) func(ok bool, err error) error {
	return func(ok bool, err error) error {
		if err != nil {
			return err
		}
		fmt.Fprintln(cmd.OutOrStdout(), ok)
		if !ok {
			return errFalse
		}
		return nil
	}
}

// textArgs wraps an argument validator for commands whose arguments and flags travel as protobuf
// strings (keys, values, index names, SQL): those must be UTF-8, and the gRPC client would fail
// with an "error while marshaling" that points at the daemon's log instead of at the argument.
func textArgs(next cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := next(cmd, args); err != nil {
			return err
		}
		for i, a := range args {
			if !utf8.ValidString(a) {
				return usagef("argument %d (%q) is not valid UTF-8; keys, values, names and SQL must be", i+1, a)
			}
		}
		var err error
		local := cmd.LocalFlags() // not the global ones: --data-dir and friends are paths, any bytes
		cmd.Flags().Visit(func(f *pflag.Flag) {
			if err == nil && local.Lookup(f.Name) != nil && f.Value.Type() == "string" && !utf8.ValidString(f.Value.String()) {
				err = usagef("--%s (%q) is not valid UTF-8", f.Name, f.Value.String())
			}
		})
		return err
	}
}
