package huggingface

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestEngine_ParallelRangesUseParallelConnections: over HTTPS, a CDN that offers HTTP/2 must not
// get all of a file's byte ranges multiplexed on one TCP connection. The engine opens Concurrency
// connections because a CDN throttles each and a lossy link stalls each on its own; h2 would fold
// them into one, as slow as a single-stream download.
func TestEngine_ParallelRangesUseParallelConnections(t *testing.T) {
	const size = 1 << 20
	content := make([]byte, size)
	var conns atomic.Int64
	var mu sync.Mutex
	protos := map[string]bool{}
	inFlight := make(chan struct{}, 8)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		protos[r.Proto] = true
		mu.Unlock()
		if r.Method == http.MethodHead { // resolve: the file is served right here
			w.Header().Set("Content-Length", strconv.Itoa(size))
			return
		}
		// Hold each range until another is in flight too, so they must overlap.
		inFlight <- struct{}{}
		defer func() { <-inFlight }()
		for i := 0; len(inFlight) < 2 && i < 200; i++ {
			time.Sleep(time.Millisecond)
		}
		spec := strings.TrimPrefix(r.Header.Get("Range"), "bytes=")
		a, b, _ := strings.Cut(spec, "-")
		from, _ := strconv.ParseInt(a, 10, 64)
		to, _ := strconv.ParseInt(b, 10, 64)
		if r.Header.Get("Range") == "" {
			from, to = 0, size-1
		}
		w.Header().Set("Content-Range", "bytes "+a+"-"+b+"/"+strconv.Itoa(size))
		w.Header().Set("Content-Length", strconv.FormatInt(to-from+1, 10))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(content[from : to+1])
	}))
	srv.EnableHTTP2 = true
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	c, err := NewClient(ClientOptions{Endpoint: srv.URL, Backoff: fastBackoff})
	if err != nil {
		t.Fatal(err)
	}
	tr := c.http.Transport.(*http.Transport)
	tr.TLSClientConfig = &tls.Config{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	e := newEngine(c, EngineOptions{Concurrency: 4, RangeSize: 256 << 10, BufferSize: 64 << 10}, nil, t.TempDir(), "org/model", strings.Repeat("a", 40))
	sum := sha256.Sum256(content)
	f := File{Path: "w.bin", Size: size, LFS: &LFS{SHA256: hex.EncodeToString(sum[:]), Size: size}}
	tk := newTask(f, "w.bin", e.finalPath("w.bin"))
	if err := e.download(context.Background(), tk); err != nil {
		t.Fatal(err)
	}
	if protos["HTTP/2.0"] || conns.Load() < 2 {
		t.Fatalf("ranges travelled over %d connection(s) with %v; want several HTTP/1.1 connections", conns.Load(), protos)
	}
}
