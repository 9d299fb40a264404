package api_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/buffdb/buffdbd/api"
	registrypb "github.com/buffdb/buffdbd/api/proto/registrypb"
	"github.com/buffdb/buffdbd/registry"
	"github.com/buffdb/buffdbd/store"
)

// regEnv is a registry served over real gRPC on 127.0.0.1:0 from a real store in a temp dir.
type regEnv struct {
	dir    string
	db     *store.DB
	reg    *registry.Service
	srv    *api.Server
	conn   *grpc.ClientConn
	client *registry.Client
	rpc    registrypb.RegistryClient
}

func openRegistry(t testing.TB, dir string, opts registry.Options) (*store.DB, *registry.Service) {
	t.Helper()
	db, err := store.Open(context.Background(), dir, store.Options{Migrations: registry.Migrations})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := registry.New(db, opts)
	if err != nil {
		t.Fatal(err)
	}
	return db, reg
}

func startRegistry(t testing.TB, opts registry.Options) *regEnv {
	t.Helper()
	e := &regEnv{dir: t.TempDir()}
	e.db, e.reg = openRegistry(t, e.dir, opts)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The real server wiring (interceptors, health), with the registry registered as run does.
	e.srv = api.NewServer(e.db, api.Options{})
	e.srv.Register(&registrypb.Registry_ServiceDesc, api.NewRegistry(e.reg, nil))
	go e.srv.Serve(l)
	e.srv.SetServing()
	e.conn, err = grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	e.client = registry.NewClient(e.conn)
	e.rpc = registrypb.NewRegistryClient(e.conn)
	t.Cleanup(func() {
		e.conn.Close()
		e.srv.Shutdown(context.Background())
		e.reg.Close()
		checkIntegrity(t, e.db)
		e.db.Close()
	})
	return e
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, ^seed))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// pushOneFile pushes data as the only file, m.bin, of name:version and returns the source
// directory.
func pushOneFile(t testing.TB, e *regEnv, name, version string, data []byte) string {
	t.Helper()
	src := t.TempDir()
	writeFiles(t, src, map[string][]byte{"m.bin": data})
	push(t, e, src, name, version)
	return src
}

func writeFiles(t testing.TB, dir string, files map[string][]byte) {
	t.Helper()
	for p, b := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// assertTree checks dir holds exactly files (no partial or stray files).
func assertTree(t testing.TB, dir string, files map[string][]byte) {
	t.Helper()
	seen := 0
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		want, ok := files[filepath.ToSlash(rel)]
		if !ok {
			t.Errorf("unexpected file %s", rel)
			return nil
		}
		got, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes differ from the %d pushed", rel, len(got), len(want))
		}
		seen++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != len(files) {
		t.Errorf("found %d of %d files", seen, len(files))
	}
}
