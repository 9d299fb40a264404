package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	blobpb "github.com/buffdb/buffdbd/api/proto/blobpb"
	kvpb "github.com/buffdb/buffdbd/api/proto/kvpb"
	"github.com/buffdb/buffdbd/internal/linktest"
	"github.com/buffdb/buffdbd/store"
)

// buffdbdBin is the buffdbd executable built once by TestMain for end-to-end tests.
var buffdbdBin string

func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "buffdbd-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		buffdbdBin = filepath.Join(dir, "buffdbd")
		cmd := exec.Command("go", "build", "-o", buffdbdBin, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
			return 1
		}
		return m.Run()
	}())
}

// daemonProc is a buffdbd child process.
type daemonProc struct {
	addr string
	cmd  *exec.Cmd
	conn *grpc.ClientConn
	log  *bytes.Buffer
}

func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startProc starts the real binary on dir and waits until its health check reports SERVING.
func startProc(t testing.TB, dir string) *daemonProc {
	t.Helper()
	return startProcAt(t, dir, freePort(t))
}

// startProcAt is startProc listening on addr, e.g. a restart on the address clients know.
func startProcAt(t testing.TB, dir, addr string) *daemonProc {
	t.Helper()
	p := &daemonProc{addr: addr, log: &bytes.Buffer{}}
	p.cmd = exec.Command(buffdbdBin, "run", "--data-dir", dir, "--listen", addr, "--http-listen=")
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.kill(t) }) // a test that fails before its own kill leaves no daemon behind
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	p.conn = conn
	h := healthpb.NewHealthClient(conn)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r, err := h.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		cancel()
		if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return p
		}
		if p.cmd.ProcessState != nil || p.cmd.Process.Signal(syscall.Signal(0)) != nil {
			t.Fatalf("daemon exited before serving:\n%s", p.log)
		}
	}
}

// kill SIGKILLs the daemon and waits for it; killing it again does nothing.
func (p *daemonProc) kill(t testing.TB) {
	t.Helper()
	p.cmd.Process.Kill()
	p.cmd.Wait()
	if p.conn != nil {
		p.conn.Close()
	}
}

// acked is what a client has seen acknowledged: it must survive any crash.
type acked struct {
	mu    sync.Mutex
	kv    map[string]string
	blobs map[uint64][32]byte
}

// writeUntilKilled streams Sets and blob Stores on one stream each, recording every acknowledged
// write, until the streams fail (the daemon was killed).
func writeUntilKilled(conn *grpc.ClientConn, round int, a *acked, started chan<- struct{}) {
	var wg sync.WaitGroup
	var once sync.Once
	// Kill only once both streams have had writes acknowledged in this round.
	a.mu.Lock()
	kv0, blobs0 := len(a.kv), len(a.blobs)
	a.mu.Unlock()
	check := func() { // with a.mu held
		if len(a.kv)-kv0 >= 2000 && len(a.blobs)-blobs0 >= 20 {
			once.Do(func() { close(started) })
		}
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		s, err := kvpb.NewKvClient(conn).Set(context.Background())
		if err != nil {
			return
		}
		go func() {
			for i := 0; ; i++ {
				if s.Send(&kvpb.SetRequest{Key: fmt.Sprintf("r%d-k%d", round, i), Value: fmt.Sprintf("v%d", i)}) != nil {
					return
				}
			}
		}()
		for {
			r, err := s.Recv()
			if err != nil {
				return
			}
			k := r.GetKey()
			a.mu.Lock()
			a.kv[k] = "v" + k[strings.LastIndex(k, "-k")+2:]
			check()
			a.mu.Unlock()
		}
	}()
	go func() {
		defer wg.Done()
		s, err := blobpb.NewBlobClient(conn).Store(context.Background())
		if err != nil {
			return
		}
		sums := make(chan [32]byte, 1<<16)
		go func() {
			rng := rand.New(rand.NewPCG(uint64(round), 1))
			for {
				// Sizes on both sides of the store's inline threshold: rows and payload files.
				b := make([]byte, rng.IntN(64<<10))
				for i := 0; i+8 <= len(b); i += 8 {
					binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
				}
				sum := sha256.Sum256(b)
				if s.Send(&blobpb.StoreRequest{Bytes: b}) != nil {
					return
				}
				sums <- sum
			}
		}()
		for {
			r, err := s.Recv()
			if err != nil {
				return
			}
			sum := <-sums
			a.mu.Lock()
			a.blobs[r.GetId()] = sum
			check()
			a.mu.Unlock()
		}
	}()
	wg.Wait()
}

// TestDaemon_CrashSafety kills the real daemon with SIGKILL while clients write, restarts it, and
// checks every acknowledged write survived, repeatedly; then checks the store's integrity and that
// no blob row points at a missing or corrupt payload file.
func TestDaemon_CrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills the daemon several times")
	}
	dir := t.TempDir()
	a := &acked{kv: map[string]string{}, blobs: map[uint64][32]byte{}}
	const rounds = 4
	for round := range rounds {
		p := startProc(t, dir)
		verifyAcked(t, p.conn, a)
		started := make(chan struct{})
		done := make(chan struct{})
		go func() { writeUntilKilled(p.conn, round, a, started); close(done) }()
		select {
		case <-started: // enough writes acknowledged this round; kill mid-stream
		case <-done:
			t.Fatalf("writes stopped before the kill:\n%s", p.log)
		}
		p.kill(t)
		<-done
	}
	p := startProc(t, dir)
	verifyAcked(t, p.conn, a)
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("daemon exit after SIGTERM: %v\n%s", err, p.log)
	}
	p.conn.Close()
	t.Logf("%d keys and %d blobs acknowledged across %d kills", len(a.kv), len(a.blobs), rounds)

	db, err := store.Open(context.Background(), dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var bad []uint64
	if err := db.VerifyPayloads(context.Background(), func(b store.BlobInfo, err error) { bad = append(bad, b.ID) }); err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Fatalf("blobs with missing or corrupt payloads: %v", bad)
	}
	var check []string
	db.Query(context.Background(), "PRAGMA integrity_check", func(_ []string, row []any) error {
		check = append(check, fmt.Sprint(row...))
		return nil
	})
	if len(check) != 1 || check[0] != "ok" {
		t.Fatalf("integrity_check = %v", check)
	}
}

func verifyAcked(t testing.TB, conn *grpc.ClientConn, a *acked) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	kv := kvpb.NewKvClient(conn)
	s, err := kv.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]string, 0, len(a.kv))
	for k := range a.kv {
		keys = append(keys, k)
	}
	go func() {
		for _, k := range keys {
			s.Send(&kvpb.GetRequest{Key: k})
		}
		s.CloseSend()
	}()
	for _, k := range keys {
		r, err := s.Recv()
		if err != nil {
			t.Fatalf("acknowledged key %s lost: %v", k, err)
		}
		if r.GetValue() != a.kv[k] {
			t.Fatalf("key %s = %q, want %q", k, r.GetValue(), a.kv[k])
		}
	}
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("Get stream end: %v", err)
	}
	b, err := blobpb.NewBlobClient(conn).Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for id, sum := range a.blobs {
		b.Send(&blobpb.GetRequest{Id: id})
		r, err := b.Recv()
		if err != nil {
			t.Fatalf("acknowledged blob %d lost: %v", id, err)
		}
		if sha256.Sum256(r.GetBytes()) != sum {
			t.Fatalf("blob %d content differs from what was acknowledged", id)
		}
	}
	b.CloseSend()
}

// TestModelPull_KilledClientResumes kills -9 a `model pull` midway and runs it again: the second
// pull keeps what the first wrote (the partial file, preallocated where the filesystem allows,
// records its written prefix), fetches the rest, and the file is exactly the pushed one.
func TestModelPull_KilledClientResumes(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 96 MiB through a throttled link")
	}
	p := startProc(t, t.TempDir())
	defer p.kill(t)
	src := filepath.Join(t.TempDir(), "model.bin")
	data := make([]byte, 96<<20)
	rand.NewChaCha8([32]byte{7}).Read(data)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(buffdbdBin, "--addr", p.addr, "model", "push", src, "--name", "m", "--version", "v1").CombinedOutput(); err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	out := filepath.Join(t.TempDir(), "out")
	partial := filepath.Join(out, "model.bin.buffdbd-partial")
	pull := exec.Command(buffdbdBin, "--addr", linktest.Start(t, p.addr, linktest.Options{DownRate: 64 << 20}).Addr, "model", "pull", "m:v1", "-o", out)
	if err := pull.Start(); err != nil {
		t.Fatal(err)
	}
	written := func() int64 { // what the partial file says is written
		buf := make([]byte, 32)
		if n, err := unix.Getxattr(partial, "user.buffdbd.written", buf); err == nil {
			var v int64
			fmt.Sscan(string(buf[:n]), &v)
			return v
		}
		if st, err := os.Stat(partial); err == nil {
			return st.Size()
		}
		return 0
	}
	deadline := time.Now().Add(time.Minute)
	for written() < 40<<20 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	pull.Process.Kill()
	pull.Wait()
	kept := written()
	if kept < 40<<20 || kept >= int64(len(data)) {
		t.Fatalf("killed the pull with %d of %d bytes written; want it midway", kept, len(data))
	}
	if _, err := os.Stat(filepath.Join(out, "model.bin")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a killed pull left the final file: %v", err)
	}
	res, err := exec.Command(buffdbdBin, "--addr", p.addr, "model", "pull", "m:v1", "-o", out).CombinedOutput()
	if err != nil {
		t.Fatalf("resumed pull: %v\n%s", err, res)
	}
	got, err := os.ReadFile(filepath.Join(out, "model.bin"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("resumed pull: file differs from the pushed one (%v)", err)
	}
	if strings.Contains(string(res), "reused 0 B locally") || !strings.Contains(string(res), "pulled m:v1") {
		t.Fatalf("the resumed pull kept nothing of the %d bytes written before the kill:\n%s", kept, res)
	}
	t.Logf("killed at %d bytes written; %s", kept, strings.TrimSpace(string(res)))
}
