package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	kvpb "github.com/buffdb/buffdbd/api/proto/kvpb"
	"github.com/buffdb/buffdbd/registry"
)

// BenchmarkStartToReady measures process start → READY=1 of the real binary (the moment gRPC
// health turns SERVING: Main.Open sets SERVING, then notifies). "fresh" creates the data directory
// and applies every migration; "existing" is a restart. Each start is checked with a real gRPC
// health call afterwards (not timed).
//
//	go test ./cmd/buffdbd -run '^$' -bench StartToReady -benchtime 20x
func BenchmarkStartToReady(b *testing.B) {
	for _, existing := range []bool{false, true} {
		name := "fresh"
		if existing {
			name = "existing"
		}
		b.Run(name, func(b *testing.B) {
			n := listenNotify(b)
			data := filepath.Join(b.TempDir(), "data")
			if existing {
				startStop(b, n, data, false)
			}
			var total time.Duration
			i := 0
			for b.Loop() {
				dir := data
				if !existing {
					dir = filepath.Join(b.TempDir(), fmt.Sprintf("data%d", i))
				}
				b.StopTimer() // startStop times only start → READY itself
				total += startStop(b, n, dir, true)
				b.StartTimer()
				i++
			}
			b.ReportMetric(float64(total.Microseconds())/1000/float64(i), "ms/ready")
		})
	}
}

// startStop starts the daemon on dir, waits for READY=1, checks health SERVING, sends SIGTERM and
// waits for exit 0. It returns start → READY=1.
func startStop(b *testing.B, n *notifyListener, dir string, check bool) time.Duration {
	cmd := exec.Command(buffdbdBin, "run", "--config", os.DevNull, "--data-dir", dir,
		"--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--socket", "none", "--log-level", "warn")
	cmd.Env = cleanEnv("NOTIFY_SOCKET=" + n.path)
	exited := make(chan struct{})
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() { cmd.Wait(); close(exited) }()
	ready := n.waitFor(b, "READY=1", exited)
	elapsed := time.Since(start)
	if check {
		grpcAddr, _, err := parseReady(ready)
		if err != nil {
			b.Fatal(err)
		}
		conn := dialGRPC(b, grpcAddr)
		resp, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			b.Fatalf("health after READY=1: %v %v", resp, err)
		}
		conn.Close()
	}
	cmd.Process.Signal(syscall.SIGTERM)
	<-exited
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		b.Fatalf("exit %d", code)
	}
	n.waitFor(b, "STOPPING=1", nil)
	return elapsed
}

// metricsModes runs a benchmark against the real daemon wiring with and without metrics
// (http.listen empty removes the interceptors and collectors).
func metricsModes(b *testing.B, fn func(b *testing.B, m *Main)) {
	for _, on := range []bool{false, true} {
		b.Run(fmt.Sprintf("metrics=%v", on), func(b *testing.B) {
			m := newTestMain(b, func(c *Config) {
				if !on {
					c.HTTP.Listen = ""
				}
			})
			if (m.metrics != nil) != on {
				b.Fatalf("metrics %v, want %v", m.metrics != nil, on)
			}
			fn(b, m)
		})
	}
}

// BenchmarkMain_KVSet pipelines Sets on one bidi stream (durable group commit), as BuffDB
// clients do, with metrics off and on.
//
//	go test ./cmd/buffdbd -run '^$' -bench Main_KVSet -benchtime 100000x -count 3
func BenchmarkMain_KVSet(b *testing.B) {
	metricsModes(b, func(b *testing.B, m *Main) {
		stream, err := kvpb.NewKvClient(dialGRPC(b, tcpAddr(m))).Set(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		n := b.N
		errc := make(chan error, 1)
		b.ResetTimer()
		go func() {
			for i := range n {
				if err := stream.Send(&kvpb.SetRequest{Key: fmt.Sprintf("key-%09d", i), Value: "value"}); err != nil {
					errc <- err
					return
				}
			}
			errc <- stream.CloseSend()
		}()
		for range n {
			if _, err := stream.Recv(); err != nil {
				b.Fatal(err)
			}
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "sets/s")
	})
}

// BenchmarkMain_RegistryPushPull pushes a fresh (non-deduplicable) version of a 32 MiB model and
// pulls it back, through the registry service, with metrics off and on.
//
//	go test ./cmd/buffdbd -run '^$' -bench Main_RegistryPushPull -benchtime 5x -count 3
func BenchmarkMain_RegistryPushPull(b *testing.B) {
	const size = 32 << 20
	metricsModes(b, func(b *testing.B, m *Main) {
		client := registry.NewClient(dialGRPC(b, tcpAddr(m)))
		work := b.TempDir()
		i := 0
		for b.Loop() {
			b.StopTimer()
			src := filepath.Join(work, fmt.Sprintf("src%d", i))
			os.MkdirAll(src, 0o755)
			buf := make([]byte, size)
			rng := rand.NewChaCha8([32]byte{byte(i), byte(i >> 8)})
			rng.Read(buf)
			if err := os.WriteFile(filepath.Join(src, "model.bin"), buf, 0o644); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			version := fmt.Sprintf("v%d", i)
			if _, err := client.Push(context.Background(), src, registry.PushOptions{
				Info: registry.ModelInfo{Name: "bench", Version: version}}); err != nil {
				b.Fatal(err)
			}
			if _, err := client.Pull(context.Background(), "bench:"+version, filepath.Join(work, "dst"+version), registry.PullOptions{}); err != nil {
				b.Fatal(err)
			}
			i++
		}
		b.SetBytes(2 * size) // pushed and pulled
	})
}

// nullStream is the smallest grpc.ServerStream: it isolates the per-message cost the metrics
// interceptor adds, which end-to-end benchmarks on a shared machine cannot resolve from noise.
type nullStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s nullStream) Context() context.Context { return s.ctx }
func (s nullStream) RecvMsg(any) error        { return nil }
func (s nullStream) SendMsg(any) error        { return nil }

// BenchmarkMetricsInterceptor_Message reports the cost per streamed message (one receive and one
// send, as one KV Set) with and without the gRPC metrics interceptor.
func BenchmarkMetricsInterceptor_Message(b *testing.B) {
	info := &grpc.StreamServerInfo{FullMethod: "/buffdb.kv.Kv/Set", IsClientStream: true, IsServerStream: true}
	handler := func(n int) grpc.StreamHandler {
		return func(_ any, ss grpc.ServerStream) error {
			var req, resp kvpb.SetRequest
			for range n {
				if err := ss.RecvMsg(&req); err != nil {
					return err
				}
				if err := ss.SendMsg(&resp); err != nil {
					return err
				}
			}
			return nil
		}
	}
	ss := nullStream{ctx: context.Background()}
	b.Run("metrics=false", func(b *testing.B) {
		if err := handler(b.N)(nil, ss); err != nil {
			b.Fatal(err)
		}
	})
	b.Run("metrics=true", func(b *testing.B) {
		m := newMetrics(readBuildInfo())
		if err := m.streamInterceptor()(nil, ss, info, handler(b.N)); err != nil {
			b.Fatal(err)
		}
	})
}
