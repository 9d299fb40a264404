package main

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestGRPCServerMetrics_Stream(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		code string
	}{
		{"OK", nil, "OK"},
		{"Status", status.Error(codes.NotFound, "key k"), "NotFound"},
		{"ContextCanceled", context.Canceled, "Canceled"},
		{"ContextDeadline", context.DeadlineExceeded, "DeadlineExceeded"},
		{"PlainError", errors.New("boom"), "Unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGRPCServerMetrics(grpcHandlingBuckets)
			info := &grpc.StreamServerInfo{FullMethod: "/buffdb.kv.Kv/Set", IsClientStream: true, IsServerStream: true}
			err := g.streamInterceptor()(nil, nullStream{ctx: context.Background()}, info, func(_ any, ss grpc.ServerStream) error {
				for range 3 {
					ss.RecvMsg(nil)
				}
				ss.SendMsg(nil)
				return tc.err
			})
			if !errors.Is(err, tc.err) {
				t.Fatalf("error not passed through: %v", err)
			}
			l := []string{"bidi_stream", "buffdb.kv.Kv", "Set"}
			for _, c := range []struct {
				name      string
				got, want float64
			}{
				{"started", testutil.ToFloat64(g.started.WithLabelValues(l...)), 1},
				{"received", testutil.ToFloat64(g.received.WithLabelValues(l...)), 3},
				{"sent", testutil.ToFloat64(g.sent.WithLabelValues(l...)), 1},
				{"handled " + tc.code, testutil.ToFloat64(g.handled.WithLabelValues(append(l, tc.code)...)), 1},
				{"handled OK otherwise", testutil.ToFloat64(g.handled.WithLabelValues(append(l, "OK")...)), map[bool]float64{true: 1}[tc.code == "OK"]},
			} {
				if c.got != c.want {
					t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
				}
			}
		})
	}
}

func TestGRPCServerMetrics_UnaryErrorSendsNothing(t *testing.T) {
	g := newGRPCServerMetrics(grpcHandlingBuckets)
	info := &grpc.UnaryServerInfo{FullMethod: "/buffdb.kv.Kv/BeginTransaction"}
	g.unaryInterceptor()(context.Background(), nil, info, func(context.Context, any) (any, error) {
		return nil, status.Error(codes.ResourceExhausted, "too many")
	})
	l := []string{"unary", "buffdb.kv.Kv", "BeginTransaction"}
	if got := testutil.ToFloat64(g.received.WithLabelValues(l...)); got != 1 {
		t.Fatalf("received %v", got)
	}
	if got := testutil.ToFloat64(g.sent.WithLabelValues(l...)); got != 0 {
		t.Fatalf("sent %v after an error", got)
	}
	if got := testutil.ToFloat64(g.handled.WithLabelValues(append(l, "ResourceExhausted")...)); got != 1 {
		t.Fatalf("handled %v", got)
	}
}
