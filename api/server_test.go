package api_test

import (
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/buffdb/buffdbd/api"
	"github.com/buffdb/buffdbd/store"
)

// testServer is a real server on 127.0.0.1:0 over a real store in a temp directory.
type testServer struct {
	db   *store.DB
	srv  *api.Server
	conn *grpc.ClientConn
	addr string
}

func newTestServer(t testing.TB, sopts store.Options, aopts api.Options) *testServer {
	t.Helper()
	ctx := context.Background()
	db, err := store.Open(ctx, t.TempDir(), sopts)
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	srv := api.NewServer(db, aopts)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	srv.SetServing()
	max := aopts.MaxMessageBytes
	if max == 0 {
		max = api.DefaultMaxMessageBytes
	}
	conn, err := grpc.NewClient(lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// The client may send more than the server accepts, so tests can see the server refuse.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(max), grpc.MaxCallSendMsgSize(1<<30)))
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{db: db, srv: srv, conn: conn, addr: lis.Addr().String()}
	t.Cleanup(func() {
		conn.Close()
		srv.Shutdown(context.Background())
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		checkIntegrity(t, db)
		if err := db.Close(); err != nil {
			t.Errorf("db.Close: %v", err)
		}
	})
	return ts
}

// checkIntegrity runs SQLite's integrity check through the store's read-only query path.
func checkIntegrity(t testing.TB, db *store.DB) {
	t.Helper()
	var got []string
	err := db.Query(context.Background(), "PRAGMA integrity_check", func(_ []string, row []any) error {
		for _, v := range row {
			if s, ok := v.(string); ok {
				got = append(got, s)
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("integrity_check: %v", err)
		return
	}
	if len(got) != 1 || got[0] != "ok" {
		t.Errorf("integrity_check = %q, want [ok]", got)
	}
}

// wantCode fails unless err is a status with code c whose message contains every one of substrs.
func wantCode(t testing.TB, err error, c codes.Code, substrs ...string) {
	t.Helper()
	s, ok := status.FromError(err)
	if !ok || s.Code() != c {
		t.Fatalf("err = %v, want code %v", err, c)
	}
	for _, sub := range substrs {
		if !strings.Contains(s.Message(), sub) {
			t.Fatalf("message %q does not mention %q", s.Message(), sub)
		}
	}
}

// bidi sends reqs on a new stream, half-closes, and collects every response until the status.
func bidi[Req, Resp any](t testing.TB, open func(context.Context, ...grpc.CallOption) (grpc.BidiStreamingClient[Req, Resp], error), reqs ...*Req) ([]*Resp, error) {
	t.Helper()
	s, err := open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sendErr := make(chan error, 1)
	go func() {
		for _, r := range reqs {
			if err := s.Send(r); err != nil {
				sendErr <- nil // the status arrives through Recv
				return
			}
		}
		sendErr <- s.CloseSend()
	}()
	var out []*Resp
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return out, <-sendErr
		}
		if err != nil {
			<-sendErr
			return out, err
		}
		out = append(out, r)
	}
}

func TestServer_Health(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	h := healthpb.NewHealthClient(ts.conn)
	for _, svc := range []string{"", "buffdb.kv.Kv", "buffdb.blob.Blob", "buffdb.query.Query", "buffdb.index.Index"} {
		resp, err := h.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Fatalf("Check(%q): %v", svc, err)
		}
		if got := resp.GetStatus(); got != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Check(%q) = %v, want SERVING", svc, got)
		}
	}

	t.Run("NotServingOnShutdown", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		w, err := h.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("first Watch status = %v, %v; want SERVING", r.GetStatus(), err)
		}
		go ts.srv.Shutdown(ctx)
		r, err := w.Recv()
		if err == nil && r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("Watch status after Shutdown = %v, want NOT_SERVING", r.GetStatus())
		}
	})
}

// TestServer_Reflection: `grpcurl list` works, i.e. reflection lists every service.
func TestServer_Reflection(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	s, err := reflectionpb.NewServerReflectionClient(ts.conn).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, svc := range r.GetListServicesResponse().GetService() {
		got = append(got, svc.GetName())
	}
	for _, want := range []string{"buffdb.kv.Kv", "buffdb.blob.Blob", "buffdb.query.Query", "buffdb.index.Index", "grpc.health.v1.Health"} {
		if !slices.Contains(got, want) {
			t.Fatalf("reflection lists %v, missing %s", got, want)
		}
	}
	s.CloseSend()
}

// TestServer_KeepalivePings: a client pinging every 600 ms (grpc-js and grpcio users set such
// keepalive intervals), with no stream open, is not sent GOAWAY too_many_pings, which would kill
// every stream of its connection. Spoken in raw HTTP/2, since grpc-go's own client will not ping
// more often than every 10 s.
func TestServer_KeepalivePings(t *testing.T) {
	ts := newTestServer(t, store.Options{}, api.Options{})
	c, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	var wmu sync.Mutex // a Framer's writes are not safe for concurrent use; reads run alone
	fr.WriteSettings()
	goaway := make(chan *http2.GoAwayFrame, 1)
	go func() {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					wmu.Lock()
					fr.WriteSettingsAck()
					wmu.Unlock()
				}
			case *http2.GoAwayFrame:
				goaway <- f
				return
			}
		}
	}()
	for i := range 6 {
		wmu.Lock()
		err := fr.WritePing(false, [8]byte{byte(i)})
		wmu.Unlock()
		if err != nil {
			t.Fatalf("ping %d: %v", i, err)
		}
		select {
		case g := <-goaway:
			t.Fatalf("GOAWAY after %d pings: %v %q", i+1, g.ErrCode, g.DebugData())
		case <-time.After(600 * time.Millisecond):
		}
	}
}
