package api_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/buffdb/buffdbd/api"
	registrypb "github.com/buffdb/buffdbd/api/proto/registrypb"
	"github.com/buffdb/buffdbd/huggingface"
	"github.com/buffdb/buffdbd/huggingface/hubtest"
	"github.com/buffdb/buffdbd/registry"
)

// startFetch serves the registry with Fetch over real gRPC, fetching from hub.
func startFetch(t testing.TB, hub *hubtest.Server) (registrypb.RegistryClient, *registry.Service) {
	t.Helper()
	db, reg := openRegistry(t, t.TempDir(), registry.Options{})
	cache := t.TempDir()
	factory := func(req *registrypb.FetchRequest) (*huggingface.Fetcher, error) {
		endpoint := hub.Endpoint()
		if req.GetEndpoint() != "" {
			endpoint = req.GetEndpoint()
		}
		return huggingface.New(reg, huggingface.Options{
			// Quick retries: the offline case must not wait out the production backoff.
			Client:   huggingface.ClientOptions{Endpoint: endpoint, Token: req.GetToken(), Backoff: huggingface.Backoff{Base: time.Millisecond, Max: 10 * time.Millisecond, Attempts: 3}},
			Engine:   huggingface.EngineOptions{Concurrency: int(req.GetConcurrency())},
			CacheDir: cache,
		})
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(db, api.Options{})
	srv.Register(&registrypb.Registry_ServiceDesc, api.WithFetch(api.NewRegistry(reg, nil), factory, nil))
	go srv.Serve(l)
	srv.SetServing()
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Shutdown(context.Background())
		reg.Close()
		checkIntegrity(t, db)
		db.Close()
	})
	return registrypb.NewRegistryClient(conn), reg
}

// fetchAll runs a Fetch RPC to its end and returns the messages and the final error.
func fetchAll(t testing.TB, c registrypb.RegistryClient, req *registrypb.FetchRequest) ([]*registrypb.FetchProgress, error) {
	t.Helper()
	stream, err := c.Fetch(context.Background(), req)
	if err != nil {
		return nil, err
	}
	var msgs []*registrypb.FetchProgress
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return msgs, nil
		}
		if err != nil {
			return msgs, err
		}
		msgs = append(msgs, m)
	}
}

func TestRegistry_Fetch(t *testing.T) {
	hub := hubtest.New()
	t.Cleanup(hub.Close)
	hub.AddRepo("org/model", hubtest.RepoOptions{})
	weights := randBytes(1, 300<<10)
	sha := hub.Commit("org/model", "main", []hubtest.FileSpec{
		{Path: "model.safetensors", Content: hubtest.Bytes(weights), LFS: true},
		{Path: "config.json", Content: hubtest.Bytes([]byte(`{}`))},
	})
	hub.AddRepo("org/gated", hubtest.RepoOptions{Gated: true})
	hub.Commit("org/gated", "main", []hubtest.FileSpec{{Path: "a", Content: hubtest.Bytes([]byte("a"))}})
	c, reg := startFetch(t, hub)

	t.Run("OK", func(t *testing.T) {
		msgs, err := fetchAll(t, c, &registrypb.FetchRequest{Repo: "org/model"})
		if err != nil {
			t.Fatal(err)
		}
		last := msgs[len(msgs)-1].GetResult()
		if last == nil || last.Version != sha || last.Alias != "main" || last.Files != 2 {
			t.Fatalf("last message = %v, want the result for %s", msgs[len(msgs)-1], sha)
		}
		sawDownloading := false
		for _, m := range msgs {
			sawDownloading = sawDownloading || m.Phase == "downloading" && m.TotalBytes == uint64(len(weights)+2)
		}
		if !sawDownloading {
			t.Fatalf("no downloading progress with the total size among %d messages", len(msgs))
		}
		var got bytes.Buffer
		_, err = reg.Pull(context.Background(), registry.PullRequest{Ref: registry.Ref{Name: "org/model", Alias: "main"},
			Ranges: []registry.FileRange{{Path: "model.safetensors"}}}, registry.PullSink{
			Manifest: func(registry.ModelInfo, *registry.Manifest) error { return nil },
			Data:     func(_ int, _ int64, p []byte) error { got.Write(p); return nil },
		})
		if err != nil || !bytes.Equal(got.Bytes(), weights) {
			t.Fatalf("pulled %d bytes (%v), want the %d fetched", got.Len(), err, len(weights))
		}
	})
	for _, tc := range []struct {
		name string
		req  *registrypb.FetchRequest
		code codes.Code
		want error
	}{
		{"ErrGated", &registrypb.FetchRequest{Repo: "org/gated"}, codes.PermissionDenied, huggingface.ErrGated},
		{"ErrRepoNotFound", &registrypb.FetchRequest{Repo: "org/none"}, codes.NotFound, huggingface.ErrRepoNotFound},
		{"ErrRevisionNotFound", &registrypb.FetchRequest{Repo: "org/model", Revision: "v9"}, codes.NotFound, huggingface.ErrRevisionNotFound},
		{"ErrInvalidRef", &registrypb.FetchRequest{Repo: "../x"}, codes.InvalidArgument, huggingface.ErrInvalidRef},
		{"ErrOffline", &registrypb.FetchRequest{Repo: "org/other", Endpoint: "http://127.0.0.1:1"}, codes.Unavailable, huggingface.ErrOffline},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := fetchAll(t, c, tc.req)
			if status.Code(err) != tc.code {
				t.Fatalf("code = %v (%v), want %v", status.Code(err), err, tc.code)
			}
			if got := api.FetchErrorFromStatus(err); !errors.Is(got, tc.want) {
				t.Fatalf("FetchErrorFromStatus(%v) does not wrap %v", err, tc.want)
			}
		})
	}
}
