package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// startHTTP serves h on 127.0.0.1:0 and returns its base URL.
func startHTTP(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newHTTPServer(h, discardLogger())
	go serveHTTP(srv, ln, discardLogger())
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestHTTPHandler_Health(t *testing.T) {
	m := newMetrics(readBuildInfo())
	var down atomic.Bool
	base := startHTTP(t, newHTTPHandler(m.registry, func(context.Context) error {
		if down.Load() {
			return errShuttingDown
		}
		return nil
	}, discardLogger()))

	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, _ := get(t, base+"/readyz"); code != 200 {
		t.Fatalf("/readyz ready: %d", code)
	}
	down.Store(true)
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "shutting down") {
		t.Fatalf("/readyz shutting down: %d %q", code, body)
	}
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz must stay 200 while draining: %d", code)
	}
	if code, _ := get(t, base+"/nope"); code != 404 {
		t.Fatalf("unknown path: %d", code)
	}
}

func TestMetrics_GRPCAndLint(t *testing.T) {
	m := newMetrics(readBuildInfo())
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(m.unaryInterceptor()), grpc.ChainStreamInterceptor(m.streamInterceptor()))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	m.initialize()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)

	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "missing"}); err == nil {
		t.Fatal("want NotFound for an unknown service")
	}

	base := startHTTP(t, newHTTPHandler(m.registry, func(context.Context) error { return nil }, discardLogger()))
	_, body := get(t, base+"/metrics")
	for _, want := range []string{
		`grpc_server_handled_total{grpc_code="OK",grpc_method="Check",grpc_service="grpc.health.v1.Health",grpc_type="unary"} 1`,
		`grpc_server_handled_total{grpc_code="NotFound",grpc_method="Check",grpc_service="grpc.health.v1.Health",grpc_type="unary"} 1`,
		`grpc_server_handling_seconds_bucket{grpc_method="Check",grpc_service="grpc.health.v1.Health",grpc_type="unary",le="600"} 2`,
		// Pre-initialized: a method never called still has its series.
		`grpc_server_started_total{grpc_method="Watch",grpc_service="grpc.health.v1.Health",grpc_type="server_stream"} 0`,
		`buffdbd_build_info{`,
		`process_resident_memory_bytes `,
		`go_goroutines `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	problems, err := testutil.GatherAndLint(m.registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestStoreCollector_ErrorIsScrapeError(t *testing.T) {
	m := newMetrics(readBuildInfo())
	m.registry.MustRegister(newStoreCollector(func(context.Context) (storeStats, error) {
		return storeStats{}, errors.New("store closed")
	}))
	base := startHTTP(t, newHTTPHandler(m.registry, func(context.Context) error { return nil }, discardLogger()))
	code, body := get(t, base+"/metrics")
	// ContinueOnError: the other metrics are still served.
	if code != 200 || !strings.Contains(body, "buffdbd_build_info") || strings.Contains(body, "buffdbd_store_keys") {
		t.Fatalf("code %d, body:\n%s", code, body)
	}
	// The handler counts the error after writing the scrape, so the next scrape shows it.
	_, body = get(t, base+"/metrics")
	if !strings.Contains(body, "promhttp_metric_handler_errors_total{cause=\"gathering\"} 1") {
		t.Fatalf("gathering error not counted:\n%s", body)
	}
}

func TestHTTPHandler_HungStore(t *testing.T) {
	// A store on a hung disk blocks inside SQLite's I/O, where no context reaches; the stand-ins
	// below ignore their context the same way. /metrics must still serve everything else and
	// /readyz must answer 503, not hang.
	defer func(s, r time.Duration) { statsTimeout, readyTimeout = s, r }(statsTimeout, readyTimeout)
	statsTimeout, readyTimeout = 20*time.Millisecond, 20*time.Millisecond
	release := make(chan struct{})
	m := newMetrics(readBuildInfo())
	m.registry.MustRegister(newStoreCollector(func(context.Context) (storeStats, error) {
		<-release
		return storeStats{Keys: 7}, nil
	}))
	base := startHTTP(t, newHTTPHandler(m.registry, func(context.Context) error {
		<-release
		return nil
	}, discardLogger()))
	// The bound only ends a broken test (the handlers hung forever before the fix).
	client := &http.Client{Timeout: 60 * time.Second}
	fetch := func(path string) (int, string) {
		t.Helper()
		resp, err := client.Get(base + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for range 2 { // the second scrape finds the first call still stuck and does not add one
		code, body := fetch("/metrics")
		if code != 200 || !strings.Contains(body, "buffdbd_build_info") || !strings.Contains(body, "go_goroutines") ||
			strings.Contains(body, "buffdbd_store_keys") {
			t.Fatalf("/metrics with a hung store: %d\n%s", code, body)
		}
		if code, body := fetch("/readyz"); code != 503 || !strings.Contains(body, "did not answer") {
			t.Fatalf("/readyz with a hung store: %d %q", code, body)
		}
	}
	close(release) // the disk answers again
	if code, body := fetch("/readyz"); code != 200 {
		t.Fatalf("/readyz after the store answered: %d %q", code, body)
	}
	if _, body := fetch("/metrics"); !strings.Contains(body, "buffdbd_store_keys 7\n") {
		t.Fatalf("/metrics after the store answered:\n%s", body)
	}
}
