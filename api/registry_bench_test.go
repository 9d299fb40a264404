package api_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dustin/go-humanize"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"

	"github.com/buffdb/buffdbd/api"
	blobpb "github.com/buffdb/buffdbd/api/proto/blobpb"
	"github.com/buffdb/buffdbd/internal/cpustat"
	"github.com/buffdb/buffdbd/internal/directio"
	"github.com/buffdb/buffdbd/internal/gotune"
	"github.com/buffdb/buffdbd/registry"
)

// sinkBlob is a bare gRPC stream endpoint for the benchmark's baseline: it receives and discards.
type sinkBlob struct{ blobpb.UnimplementedBlobServer }

func (sinkBlob) Store(stream blobpb.Blob_StoreServer) error {
	for {
		if _, err := stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return stream.Send(&blobpb.StoreResponse{Id: 1})
			}
			return err
		}
	}
}

// BenchmarkRegistry_Transfer pushes and pulls one model of BUFFDBD_BENCH_SIZE bytes (default
// 256MiB; e.g. 1GiB) through a registry daemon in a separate process over loopback, and reports the
// rates next to this machine's limits measured in the same run on the same bytes: raw file write +
// fsync, sha256, and a bare gRPC stream. Then it pushes a version sharing 90% of its content and
// delta-pulls it over the first, reporting the fraction of bytes moved, and the peak RSS of daemon
// and client. Run with -benchtime=1x:
//
//	BUFFDBD_BENCH_SIZE=1GiB go test ./api -run '^$' -bench Registry_Transfer -benchtime=1x -v
func BenchmarkRegistry_Transfer(b *testing.B) {
	size := int64(256 << 20)
	if s := os.Getenv("BUFFDBD_BENCH_SIZE"); s != "" {
		n, err := humanize.ParseBytes(s)
		if err != nil {
			b.Fatal(err)
		}
		size = int64(n)
	}
	for b.Loop() {
		benchTransfer(b, size)
	}
}

func mbps(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }

func benchTransfer(b *testing.B, size int64) {
	ctx := context.Background()
	// The client side runs with the Go runtime settings of `buffdbd model push|pull`.
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	gotune.RaiseProcs()
	gotune.LimitMemory(gotune.DefaultMemoryLimit)
	work := b.TempDir()
	src := filepath.Join(work, "v1")
	os.MkdirAll(src, 0o755)
	model := filepath.Join(src, "model.bin")
	writeRandomFile(b, model, size, 1)

	// Limits, same bytes, same run. The raw write is the faster of writing through the page cache
	// and writing with O_DIRECT (as buffdbd does): the machine's limit, not the slower way to it.
	// Both copies are removed only after both runs: the data directory's filesystem may be mounted
	// with discard, and freeing a GiB between the runs would slow the second.
	var rawWrite float64
	for _, direct := range []bool{false, true} {
		raw := filepath.Join(work, fmt.Sprintf("raw-direct-%v.bin", direct))
		t0 := time.Now()
		copyFsync(b, model, raw, direct)
		rawWrite = max(rawWrite, mbps(size, time.Since(t0)))
		defer os.Remove(raw)
	}
	t0 := time.Now()
	if _, err := hashFileSHA(model); err != nil {
		b.Fatal(err)
	}
	shaRate := mbps(size, time.Since(t0))

	d := startBenchDaemon(b, filepath.Join(work, "data"))
	// The faster of the two ways to send bytes on a bare stream (see bareStream).
	var grpcRate, grpcCores float64
	for _, byRef := range []bool{false, true} {
		t0 = time.Now()
		c0 := cpustat.Read()
		bareStream(b, d.conn, model, byRef)
		if r := mbps(size, time.Since(t0)); r > grpcRate {
			grpcRate, grpcCores = r, c0.CoresSince()
		}
	}
	limit := min(rawWrite, shaRate, grpcRate)

	t0 = time.Now()
	c0 := cpustat.Read()
	res, err := d.client.Push(ctx, src, registry.PushOptions{Info: registry.ModelInfo{Name: "bench", Version: "v1"}})
	if err != nil {
		b.Fatal(err)
	}
	pushRate, pushCores := mbps(res.Bytes, time.Since(t0)), c0.CoresSince()

	dev := filepath.Join(work, "device")
	t0 = time.Now()
	c0 = cpustat.Read()
	if _, err := d.client.Pull(ctx, "bench:v1", dev, registry.PullOptions{}); err != nil {
		b.Fatal(err)
	}
	pullRate, pullCores := mbps(size, time.Since(t0)), c0.CoresSince()

	// v2 shares 90% of v1: four contiguous regions of 2.5% each rewritten (a fine-tuned layer each).
	src2 := filepath.Join(work, "v2")
	os.MkdirAll(src2, 0o755)
	copyFsync(b, model, filepath.Join(src2, "model.bin"), false)
	f, _ := os.OpenFile(filepath.Join(src2, "model.bin"), os.O_RDWR, 0)
	region := size / 40
	for i := int64(0); i < 4; i++ {
		writeRandomAt(b, f, (2*i+1)*size/8, region, 100+uint64(i))
	}
	f.Close()
	t0 = time.Now()
	res2, err := d.client.Push(ctx, src2, registry.PushOptions{Info: registry.ModelInfo{Name: "bench", Version: "v2"}})
	if err != nil {
		b.Fatal(err)
	}
	deltaPushTime := time.Since(t0)
	pr, err := d.client.Pull(ctx, "bench:v2", dev, registry.PullOptions{})
	if err != nil {
		b.Fatal(err)
	}
	daemonRSS := peakRSS(b, d.cmd.Process.Pid)
	clientRSS := peakRSS(b, os.Getpid())

	b.ReportMetric(pushRate, "push_MB/s")
	b.ReportMetric(pullRate, "pull_MB/s")
	b.ReportMetric(limit, "limit_MB/s")
	b.ReportMetric(pushRate/limit, "push/limit")
	b.ReportMetric(pullRate/limit, "pull/limit")
	b.ReportMetric(float64(pr.BytesReceived)/float64(pr.Bytes), "delta_pull_moved")
	b.ReportMetric(float64(res2.BytesSent)/float64(res2.Bytes), "delta_push_moved")
	b.ReportMetric(float64(daemonRSS)/(1<<20), "daemon_peak_RSS_MiB")
	b.ReportMetric(float64(clientRSS)/(1<<20), "client_peak_RSS_MiB")
	b.ReportMetric(pushCores, "push_cores")
	b.ReportMetric(pullCores, "pull_cores")
	b.ReportMetric(grpcCores, "bare_gRPC_cores")
	b.Logf("size %s: raw write+fsync %.0f MB/s, sha256 %.0f MB/s, bare gRPC stream %.0f MB/s -> limit %.0f MB/s",
		humanize.IBytes(uint64(size)), rawWrite, shaRate, grpcRate, limit)
	// Cores busy machine-wide (client, daemon and kernel): a rate reached with all of them busy is
	// CPU-bound, and core-seconds per GB say what each byte costs.
	b.Logf("cores busy of %d: bare stream %.2f (%.2f core-s/GB), push %.2f (%.2f core-s/GB), pull %.2f (%.2f core-s/GB)",
		runtime.NumCPU(), grpcCores, 1e3*grpcCores/grpcRate, pushCores, 1e3*pushCores/pushRate, pullCores, 1e3*pullCores/pullRate)
	b.Logf("push %.0f MB/s (%.2fx), pull %.0f MB/s (%.2fx); 90%%-shared version: push sent %.1f%% in %v, pull moved %.1f%%; peak RSS daemon %d MiB, client %d MiB",
		pushRate, pushRate/limit, pullRate, pullRate/limit, 100*float64(res2.BytesSent)/float64(res2.Bytes), deltaPushTime.Round(time.Millisecond),
		100*float64(pr.BytesReceived)/float64(pr.Bytes), daemonRSS>>20, clientRSS>>20)
}

type benchDaemon struct {
	cmd    *exec.Cmd
	conn   *grpc.ClientConn
	client *registry.Client
}

func startBenchDaemon(b *testing.B, dir string) *benchDaemon {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestRegistryHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "BUFFDBD_TEST_REGISTRY_DIR="+dir, "BUFFDBD_TEST_REGISTRY_SINK=1")
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(out)
	addr := ""
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
			addr = a
			break
		}
	}
	go func() {
		for sc.Scan() {
		}
	}()
	// The codec `buffdbd model push|pull` dials with (cmd/buffdbd/conn.go).
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(api.Codec{})))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return &benchDaemon{cmd: cmd, conn: conn, client: registry.NewClient(conn)}
}

// bareStream sends the file at path over one stream to a server that discards it, in pull-sized
// messages: with grpc-go's default codec, which copies each message so one buffer can be reused,
// or with api.Codec, which sends each from a new buffer.
func bareStream(b *testing.B, cc grpc.ClientConnInterface, path string, byReference bool) {
	var opts []grpc.CallOption
	if !byReference {
		opts = append(opts, grpc.ForceCodecV2(encoding.GetCodecV2("proto")))
	}
	stream, err := blobpb.NewBlobClient(cc).Store(context.Background(), opts...)
	if err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, registry.PullPieceSize)
	for {
		if byReference {
			buf = make([]byte, registry.PullPieceSize)
		}
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			if err := stream.Send(&blobpb.StoreRequest{Bytes: buf[:n]}); err != nil {
				b.Fatal(err)
			}
		}
		if err != nil {
			break
		}
	}
	stream.CloseSend()
	if _, err := stream.Recv(); err != nil {
		b.Fatal(err)
	}
}

func writeRandomFile(b testing.TB, path string, size int64, seed uint64) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	writeRandomAt(b, f, 0, size, seed)
	// Flushed now, so its writeback does not run into the limits measured next (it halved the
	// raw write once, making the disk look like the limit).
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}

func writeRandomAt(b testing.TB, f *os.File, off, n int64, seed uint64) {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	buf := make([]byte, 1<<20)
	for done := int64(0); done < n; {
		k := min(int64(len(buf)), n-done)
		r.Read(buf[:k])
		if _, err := f.WriteAt(buf[:k], off+done); err != nil {
			b.Fatal(err)
		}
		done += k
	}
}

// copyFsync copies from to a new file to and fsyncs it, through the page cache or with O_DIRECT.
func copyFsync(b testing.TB, from, to string, direct bool) {
	in, err := os.Open(from)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		b.Fatal(err)
	}
	var w io.Writer = out
	var dw *directio.Writer
	if direct {
		dw = directio.NewWriter(out, 0)
		w = dw
	}
	// Plain reads and writes of 1 MiB: CopyBuffer would otherwise hand the copy to the File's
	// WriteTo (and the page-cache path to ReadFrom), which ignore the buffer and wrote O_DIRECT
	// 32 KiB at a time, a third of the disk's speed.
	if _, err := io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{in}, directio.AlignedBuffer(1<<20)); err != nil {
		b.Fatal(err)
	}
	if dw != nil {
		if err := dw.Close(); err != nil {
			b.Fatal(err)
		}
	}
	if err := out.Sync(); err != nil {
		b.Fatal(err)
	}
	out.Close()
}

func hashFileSHA(path string) ([32]byte, error) {
	var d [32]byte
	f, err := os.Open(path)
	if err != nil {
		return d, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		return d, err
	}
	h.Sum(d[:0])
	return d, nil
}

// peakRSS reads VmHWM (peak resident set size) of a process.
func peakRSS(b testing.TB, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
