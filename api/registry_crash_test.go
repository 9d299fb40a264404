package api_test

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/buffdb/buffdbd/api"
	blobpb "github.com/buffdb/buffdbd/api/proto/blobpb"
	registrypb "github.com/buffdb/buffdbd/api/proto/registrypb"
	"github.com/buffdb/buffdbd/internal/gotune"
	"github.com/buffdb/buffdbd/registry"
)

// TestRegistryHelperProcess is not a test: run by TestRegistry_KillDaemonMidPush as a separate
// process, it serves a registry over the data directory in BUFFDBD_TEST_REGISTRY_DIR and prints its
// address, until it is killed.
func TestRegistryHelperProcess(t *testing.T) {
	dir := os.Getenv("BUFFDBD_TEST_REGISTRY_DIR")
	if dir == "" {
		t.Skip("helper process only")
	}
	// A clock skew lets the parent test restart the daemon "later" without waiting.
	skew, _ := time.ParseDuration(os.Getenv("BUFFDBD_TEST_REGISTRY_SKEW"))
	_, reg := openRegistry(t, dir, registry.Options{SessionTTL: time.Hour, Now: func() time.Time { return time.Now().Add(skew) }})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// As `buffdbd run` serves: api.Codec and its Go runtime settings.
	gotune.RaiseProcs()
	gotune.LimitMemory(gotune.DefaultMemoryLimit)
	gotune.RelaxGC(gotune.DefaultMemoryLimit)
	srv := grpc.NewServer(grpc.ForceServerCodecV2(api.Codec{}))
	registrypb.RegisterRegistryServer(srv, api.NewRegistry(reg, nil))
	if os.Getenv("BUFFDBD_TEST_REGISTRY_SINK") != "" {
		blobpb.RegisterBlobServer(srv, sinkBlob{})
	}
	os.Stdout.WriteString("ADDR " + l.Addr().String() + "\n")
	srv.Serve(l)
}

type daemon struct {
	cmd    *exec.Cmd
	conn   *grpc.ClientConn
	client *registry.Client
	rpc    registrypb.RegistryClient
}

func startDaemon(t *testing.T, dir string, skew time.Duration) *daemon {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestRegistryHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "BUFFDBD_TEST_REGISTRY_DIR="+dir, "BUFFDBD_TEST_REGISTRY_SKEW="+skew.String())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(out)
	addr := ""
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
			addr = a
			break
		}
	}
	if addr == "" {
		t.Fatal("helper daemon did not report its address")
	}
	go func() {
		for sc.Scan() {
		}
	}()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &daemon{cmd: cmd, conn: conn, client: registry.NewClient(conn), rpc: registrypb.NewRegistryClient(conn)}
}

func (d *daemon) kill() {
	d.cmd.Process.Kill() // SIGKILL
	d.cmd.Wait()
}

// chunks is how many chunks the daemon has durably recorded, counting those of open sessions.
func (d *daemon) chunks(t testing.TB) uint64 {
	t.Helper()
	st, err := d.rpc.Stats(context.Background(), &registrypb.StatsRequest{})
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	return st.Chunks
}

// killOnceDurable SIGKILLs the daemon as soon as it has durably recorded more than before chunks.
// Killing at a byte count the client has sent is not enough: those bytes may still be in flight,
// and the test is about what a restart finds durable (a resumable session with chunks), so it
// waits for at least one — bounded, the push keeps streaming meanwhile.
func (d *daemon) killOnceDurable(t testing.TB, before uint64) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); d.chunks(t) <= before; {
		if time.Now().After(deadline) {
			t.Errorf("no chunk of the push became durable within 30s")
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.kill()
}

// TestRegistry_KillDaemonMidPush kills the serving process with SIGKILL in the middle of a push:
// after a restart no version is visible, the push resumes without resending what was durable, and
// garbage collection reclaims what an abandoned push left.
func TestRegistry_KillDaemonMidPush(t *testing.T) {
	if testing.Short() {
		t.Skip("starts daemons")
	}
	dir := t.TempDir()
	data := randBytes(81, 48<<20)
	src := t.TempDir()
	writeFiles(t, src, map[string][]byte{"m.bin": data})
	ctx := context.Background()

	d := startDaemon(t, dir, 0)
	var killedAt int64
	_, err := d.client.Push(ctx, src, registry.PushOptions{Info: registry.ModelInfo{Name: "k", Version: "v1"},
		Progress: func(done, total int64) {
			if killedAt == 0 && done > total/2 {
				killedAt = done
				d.killOnceDurable(t, 0)
			}
		}})
	if err == nil {
		t.Fatal("push succeeded although the daemon was killed")
	}

	d = startDaemon(t, dir, 0)
	if _, err := d.rpc.Show(ctx, &registrypb.ShowRequest{Ref: "k:v1"}); status.Code(err) != codes.NotFound {
		t.Fatalf("after SIGKILL mid-push, show = %v, want NotFound", err)
	}
	if list, err := d.rpc.ListModels(ctx, &registrypb.ListModelsRequest{}); err != nil || len(list.Models) != 0 {
		t.Fatalf("after SIGKILL mid-push, list = %v, %v", list, err)
	}
	res, err := d.client.Push(ctx, src, registry.PushOptions{Info: registry.ModelInfo{Name: "k", Version: "v1"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.BytesReused == 0 || res.BytesSent > res.Bytes-killedAt+4*registry.MaxChunkSize {
		t.Errorf("resumed push after SIGKILL at %d sent %d, reused %d of %d", killedAt, res.BytesSent, res.BytesReused, res.Bytes)
	}
	out := t.TempDir()
	if _, err := d.client.Pull(ctx, "k", out, registry.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, map[string][]byte{"m.bin": data})

	// Abandon a second push by SIGKILL, then restart two hours later (past the session's expiry):
	// GC reclaims the abandoned chunks and files, and v1 stays intact.
	src2 := t.TempDir()
	writeFiles(t, src2, map[string][]byte{"m.bin": randBytes(82, 32<<20)})
	killedAt = 0
	chunksBefore := d.chunks(t)
	d.client.Push(ctx, src2, registry.PushOptions{Info: registry.ModelInfo{Name: "k", Version: "v2"},
		Progress: func(done, total int64) {
			if killedAt == 0 && done > total/2 {
				killedAt = done
				d.killOnceDurable(t, chunksBefore)
			}
		}})
	d = startDaemon(t, dir, 2*time.Hour)
	gc, err := d.rpc.CollectGarbage(ctx, &registrypb.CollectGarbageRequest{})
	if err != nil || gc.Sessions != 1 || gc.Chunks == 0 {
		t.Fatalf("gc after abandoned push = %v, %v", gc, err)
	}
	st, err := d.rpc.Stats(ctx, &registrypb.StatsRequest{})
	if err != nil || st.StoredBytes != uint64(len(data)) || st.Versions != 1 {
		t.Fatalf("stats after gc = %v, %v", st, err)
	}
	out = t.TempDir()
	if _, err := d.client.Pull(ctx, "k:v1", out, registry.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, map[string][]byte{"m.bin": data})
}
