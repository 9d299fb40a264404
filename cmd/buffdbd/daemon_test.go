package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	kvpb "github.com/buffdb/buffdbd/api/proto/kvpb"
	registrypb "github.com/buffdb/buffdbd/api/proto/registrypb"
	"github.com/buffdb/buffdbd/registry"
)

// testVersion and testCommit are linked into a binary to check `buffdbd version`.
const (
	testVersion = "v0.0.0-test"
	testCommit  = "0123456789abcdef"
)

// buildVersioned builds cmd/buffdbd with release-style ldflags into dir.
func buildVersioned(t testing.TB, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "buffdbd")
	cmd := exec.Command("go", "build", "-ldflags",
		"-X main.version="+testVersion+" -X main.commit="+testCommit, "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// notifyListener is a real sd_notify socket: it collects the datagrams a daemon sends.
type notifyListener struct {
	path string
	conn *net.UnixConn
	msgs chan string
}

func listenNotify(t testing.TB) *notifyListener {
	t.Helper()
	// A short directory: sun_path holds 107 bytes and t.TempDir() paths can be long.
	dir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	n := &notifyListener{path: filepath.Join(dir, "notify"), msgs: make(chan string, 64)}
	n.conn, err = net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := n.conn.Read(buf)
			if err != nil {
				close(n.msgs)
				return
			}
			n.msgs <- string(buf[:k])
		}
	}()
	return n
}

// waitFor returns the first datagram starting with prefix. The timeout only ends a broken test.
func (n *notifyListener) waitFor(t testing.TB, prefix string, exited <-chan struct{}) string {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case m, ok := <-n.msgs:
			if !ok {
				t.Fatalf("notify socket closed before %q", prefix)
			}
			if strings.HasPrefix(m, prefix) {
				return m
			}
		case <-exited:
			t.Fatalf("daemon exited before sending %q", prefix)
		case <-timeout:
			t.Fatalf("no %q from the daemon", prefix)
		}
	}
}

// opsProc is a running `buffdbd run` child process.
type opsProc struct {
	cmd      *exec.Cmd
	notify   *notifyListener
	stderr   *bytes.Buffer
	exited   chan struct{}
	exitErr  error
	grpcAddr string
	httpAddr string
}

// cleanEnv is the test's environment without variables that would configure the daemon.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, envPrefix), name == "NOTIFY_SOCKET", name == "WATCHDOG_USEC",
			name == "WATCHDOG_PID", strings.HasSuffix(name, "_DIRECTORY"), name == "JOURNAL_STREAM":
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// startDaemon runs the built binary on loopback ports chosen by the kernel and waits for READY=1,
// whose STATUS names the bound addresses.
func startOpsDaemon(t testing.TB, args ...string) *opsProc {
	t.Helper()
	bin := buffdbdBin
	dir := t.TempDir()
	n := listenNotify(t)
	d := &opsProc{notify: n, stderr: &bytes.Buffer{}, exited: make(chan struct{})}
	d.cmd = exec.Command(bin, append([]string{"run", "--config", os.DevNull, "--data-dir", filepath.Join(dir, "data"),
		"--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--socket", "none", "--log-format", "json"}, args...)...)
	d.cmd.Env = cleanEnv("NOTIFY_SOCKET="+n.path, "HOME="+dir)
	d.cmd.Stderr = &lockedWriter{w: d.stderr}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exitErr = d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() {
		select {
		case <-d.exited:
		default:
			d.cmd.Process.Kill()
			<-d.exited
		}
	})
	ready := n.waitFor(t, "READY=1", d.exited)
	var err error
	if d.grpcAddr, d.httpAddr, err = parseReady(ready); err != nil {
		t.Fatal(err)
	}
	return d
}

// parseReady reads the first gRPC and the HTTP address from a READY=1 notification's
// "STATUS=serving gRPC on 127.0.0.1:NNN; HTTP on 127.0.0.1:MMM".
func parseReady(ready string) (grpcAddr, httpAddr string, err error) {
	_, status, _ := strings.Cut(ready, "STATUS=")
	if _, err := fmt.Sscanf(strings.NewReplacer(";", " ", ",", " ").Replace(status),
		"serving gRPC on %s HTTP on %s", &grpcAddr, &httpAddr); err != nil {
		return "", "", fmt.Errorf("READY status %q: %v", status, err)
	}
	return grpcAddr, httpAddr, nil
}

// wait waits for the daemon to exit and returns its exit code. The bound only ends a broken test.
func (d *opsProc) wait(t testing.TB) int {
	t.Helper()
	select {
	case <-d.exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("daemon did not exit; stderr:\n%s", d.stderr)
	}
	var ee *exec.ExitError
	if errors.As(d.exitErr, &ee) {
		return ee.ExitCode()
	}
	if d.exitErr != nil {
		t.Fatal(d.exitErr)
	}
	return 0
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func dialGRPC(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// setOnStream sends one Set on an open stream and waits for its answer.
func setOnStream(t testing.TB, s grpc.BidiStreamingClient[kvpb.SetRequest, kvpb.SetResponse], key string) {
	t.Helper()
	if err := s.Send(&kvpb.SetRequest{Key: key, Value: "v"}); err != nil {
		t.Fatalf("send %s: %v", key, err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatalf("recv %s: %v", key, err)
	}
	if resp.GetKey() != key {
		t.Fatalf("got key %q, want %q", resp.GetKey(), key)
	}
}

func TestRun_GracefulShutdown(t *testing.T) {
	d := startOpsDaemon(t)
	conn := dialGRPC(t, d.grpcAddr)
	kv := kvpb.NewKvClient(conn)

	stream, err := kv.Set(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	setOnStream(t, stream, "before-sigterm")

	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	d.notify.waitFor(t, "STOPPING=1", d.exited)

	// The in-flight stream keeps working while the server drains, then ends cleanly.
	setOnStream(t, stream, "during-drain")
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("stream end: got %v, want EOF", err)
	}
	if code := d.wait(t); code != 0 {
		t.Fatalf("exit code %d, want 0; stderr:\n%s", code, d.stderr)
	}
	if !strings.Contains(d.stderr.String(), `"msg":"stopped cleanly"`) {
		t.Fatalf("no clean-stop log line; stderr:\n%s", d.stderr)
	}
}

func TestRun_ShutdownDeadlineCancels(t *testing.T) {
	// A client that never finishes its stream cannot hold the daemon: after shutdown_timeout the
	// RPC is cancelled, the store closes cleanly and the exit is still 0.
	d := startOpsDaemon(t, "--shutdown-timeout", "300ms")
	stream, err := kvpb.NewKvClient(dialGRPC(t, d.grpcAddr)).Set(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	setOnStream(t, stream, "held-open")
	d.cmd.Process.Signal(syscall.SIGTERM)
	if code := d.wait(t); code != 0 {
		t.Fatalf("exit code %d, want 0; stderr:\n%s", code, d.stderr)
	}
	if _, err := stream.Recv(); err == nil || err == io.EOF {
		t.Fatalf("held-open stream: got %v, want it cancelled", err)
	}
}

func TestRun_SecondSignalExitsAtOnce(t *testing.T) {
	// A long shutdown timeout: only the second signal can end the drain early.
	d := startOpsDaemon(t, "--shutdown-timeout", "1h")
	stream, err := kvpb.NewKvClient(dialGRPC(t, d.grpcAddr)).Set(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	setOnStream(t, stream, "held-open")
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.notify.waitFor(t, "STOPPING=1", d.exited)
	d.cmd.Process.Signal(syscall.SIGTERM)
	if code := d.wait(t); code == 0 {
		t.Fatalf("exit code 0 after a forced exit; stderr:\n%s", d.stderr)
	}
	if !strings.Contains(d.stderr.String(), "second signal") {
		t.Fatalf("stderr lacks the second-signal message:\n%s", d.stderr)
	}
}

func TestRun_ConfigErrorExit78(t *testing.T) {
	bin := buffdbdBin
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"Env", []string{"run"}, []string{"BUFFDBD_REGISTRY_MAX_BYTES=0"}, "buffdbd: configuration: registry.max_bytes: must be > 0, got 0 (from environment BUFFDBD_REGISTRY_MAX_BYTES)\n"},
		{"Flag", []string{"run", "--http-listen", "nohost"}, nil, "buffdbd: configuration: http.listen: \"nohost\": must be host:port (from flag --http-listen)\n"},
		{"ConfigCheck", []string{"config", "check", "--durability", "fast"}, nil,
			"buffdbd: configuration: store.durability: must be \"sync\" or \"process\", got \"fast\" (from flag --durability)\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, append(tc.args, "--config", os.DevNull)...)
			cmd.Env = cleanEnv(append(tc.env, "HOME="+t.TempDir())...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != exitConfig {
				t.Fatalf("got %v, want exit %d; stderr: %s", err, exitConfig, stderr.String())
			}
			if stderr.String() != tc.want {
				t.Fatalf("stderr:\n got %q\nwant %q", stderr.String(), tc.want)
			}
		})
	}
}

func TestVersionCommand(t *testing.T) {
	out, err := exec.Command(buildVersioned(t, t.TempDir()), "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("buffdbd %s\ncommit  %s\ngo      %s ", testVersion, testCommit, goVersion())
	if !strings.HasPrefix(string(out), want) {
		t.Fatalf("got %q, want prefix %q", out, want)
	}
}

func goVersion() string { return readBuildInfo().GoVersion }

// newTestMain opens the real daemon wiring in-process on 127.0.0.1:0 with a fresh data directory.
func newTestMain(t testing.TB, mutate func(*Config)) *Main {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.GRPC.Listen = []string{"127.0.0.1:0"}
	cfg.GRPC.Socket = socketNone
	cfg.HTTP.Listen = "127.0.0.1:0"
	if mutate != nil {
		mutate(&cfg)
	}
	m := NewMain(cfg, discardLogger())
	if err := m.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(context.Background()) })
	return m
}

func tcpAddr(m *Main) string {
	for _, a := range m.Addrs() {
		if a.Network() == "tcp" {
			return a.String()
		}
	}
	return ""
}

func TestMain_LifecycleHealthMetrics(t *testing.T) {
	n := listenNotify(t)
	t.Setenv("NOTIFY_SOCKET", n.path)
	m := newTestMain(t, nil)
	n.waitFor(t, "READY=1", nil)

	conn := dialGRPC(t, tcpAddr(m))
	hc := healthpb.NewHealthClient(conn)
	resp, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", resp, err)
	}
	base := "http://" + m.HTTPAddr().String()
	if code, _ := get(t, base+"/readyz"); code != 200 {
		t.Fatalf("/readyz: %d", code)
	}

	// Traffic, so the per-method series carry values.
	stream, err := kvpb.NewKvClient(conn).Set(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		setOnStream(t, stream, fmt.Sprintf("k%d", i))
	}
	stream.CloseSend()
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatal(err)
	}

	if _, body := get(t, base+"/metrics"); !strings.Contains(body, "buffdbd_store_keys 3\n") {
		t.Errorf("/metrics lacks buffdbd_store_keys 3 after three Sets")
	}

	// A model push, so the registry hooks and gauges carry values.
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "model.bin"), bytes.Repeat([]byte("weights"), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := registry.NewClient(conn).Push(context.Background(), src, registry.PushOptions{
		Info: registry.ModelInfo{Name: "tiny", Version: "v1"}}); err != nil {
		t.Fatal(err)
	}

	_, body := get(t, base+"/metrics")
	for _, want := range []string{
		`buffdbd_registry_pushes_total{result="ok"} 1`,
		"buffdbd_registry_versions 1\n",
		"buffdbd_registry_models 1\n",
		"buffdbd_registry_logical_bytes 7000\n",
		"buffdbd_store_database_bytes ",
		`grpc_server_handled_total{grpc_code="OK",grpc_method="Set",grpc_service="buffdb.kv.Kv",grpc_type="bidi_stream"} 1`,
		`grpc_server_msg_received_total{grpc_method="Set",grpc_service="buffdb.kv.Kv",grpc_type="bidi_stream"} 3`,
		`grpc_server_started_total{grpc_method="Get",grpc_service="buffdb.blob.Blob",grpc_type="bidi_stream"} 0`,
		`buffdbd_build_info{`,
		"buffdbd_registry_max_bytes 2.147483648e+10\n",
		`grpc_server_started_total{grpc_method="Pull",grpc_service="buffdb.registry.Registry"`,
		`buffdbd_fetch_completed_total{result="ok"} 0`,
		"buffdbd_fetch_active_downloads 0\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	problems, err := testutil.GatherAndLint(m.metrics.registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}

	// Shutdown: a Watch stream sees NOT_SERVING, systemd gets STOPPING=1, /readyz fails while draining.
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	watch, err := hc.Watch(wctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := watch.Recv(); err != nil || st.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch: %v %v", st, err)
	}
	closed := make(chan error, 1)
	go func() { closed <- m.Close(context.Background()) }()
	n.waitFor(t, "STOPPING=1", nil)
	if st, err := watch.Recv(); err != nil || st.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("watch during shutdown: %v %v", st, err)
	}
	wcancel() // the watcher goes away; the drain can finish
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func TestMain_MetricsDisabled(t *testing.T) {
	m := newTestMain(t, func(c *Config) { c.HTTP.Listen = "" })
	if m.HTTPAddr() != nil || m.metrics != nil {
		t.Fatalf("http.listen empty, yet HTTP %v metrics %v", m.HTTPAddr(), m.metrics)
	}
	resp, err := healthpb.NewHealthClient(dialGRPC(t, tcpAddr(m))).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", resp, err)
	}
}

func TestMain_HTTPPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := DefaultConfig()
	cfg.DataDir, cfg.GRPC.Listen, cfg.GRPC.Socket, cfg.HTTP.Listen = t.TempDir(), []string{"127.0.0.1:0"}, socketNone, ln.Addr().String()
	m := NewMain(cfg, discardLogger())
	err = m.Open(context.Background())
	if err == nil {
		m.Close(context.Background())
		t.Fatal("want an error for a busy http.listen port")
	}
	if !strings.Contains(err.Error(), "http.listen") {
		t.Fatalf("error does not name the key: %v", err)
	}
}

func TestMain_OpenCloseAtOnce(t *testing.T) {
	// Close right after Open, before the serving goroutines have run: it must neither crash nor hang
	// (a goroutine once read the HTTP server field after Close had cleared it).
	dir := t.TempDir()
	for range 5 {
		cfg := DefaultConfig()
		cfg.DataDir, cfg.GRPC.Listen, cfg.GRPC.Socket, cfg.HTTP.Listen = dir, []string{"127.0.0.1:0"}, socketNone, "127.0.0.1:0"
		m := NewMain(cfg, discardLogger())
		if err := m.Open(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := m.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRun_Watchdog(t *testing.T) {
	// systemd sets WATCHDOG_USEC (and WATCHDOG_PID, which the library checks when present).
	n := listenNotify(t)
	dir := t.TempDir()
	cmd := exec.Command(buffdbdBin, "run", "--config", os.DevNull, "--data-dir", dir, "--listen", "127.0.0.1:0",
		"--http-listen", "", "--socket", "none")
	cmd.Env = cleanEnv("NOTIFY_SOCKET="+n.path, "WATCHDOG_USEC=50000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() { cmd.Process.Kill(); <-exited }()
	n.waitFor(t, "READY=1", exited)
	for range 2 {
		if got := n.waitFor(t, "WATCHDOG=1", exited); got != "WATCHDOG=1" {
			t.Fatalf("got %q", got)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	n.waitFor(t, "STOPPING=1", exited)
	<-exited
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

func TestRun_SIGHUPReloads(t *testing.T) {
	// SIGHUP is what operators send to make a daemon re-read its configuration (and what systemctl
	// reload sends, through the unit's ExecReload). It must never stop the service: the changes it
	// can apply (log.level) take effect, the others are named, and an invalid file is reported
	// while the daemon goes on with the configuration it has.
	file := filepath.Join(t.TempDir(), "buffdbd.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("log:\n  level: info\n")
	d := startOpsDaemon(t, "--config", file)
	hup := func() {
		t.Helper()
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		d.notify.waitFor(t, "RELOADING=1", d.exited)
		if got := d.notify.waitFor(t, "READY=1", d.exited); !strings.Contains(got, "STATUS=serving gRPC on "+d.grpcAddr) {
			t.Fatalf("READY after reload: %q", got)
		}
	}
	health := func() {
		t.Helper()
		resp, err := healthpb.NewHealthClient(dialGRPC(t, d.grpcAddr)).Check(context.Background(), &healthpb.HealthCheckRequest{})
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health after reload: %v %v", resp, err)
		}
	}

	hup() // unchanged
	write("log:\n  level: debug\nregistry:\n  max_bytes: 1GiB\nhuggingface:\n  token: hf_reloadsecret\n")
	hup()
	health() // logged at debug only if the new level applies
	write("store:\n  durability: fast\n")
	hup()
	health()

	d.cmd.Process.Signal(syscall.SIGTERM)
	if code := d.wait(t); code != 0 {
		t.Fatalf("exit code %d, want 0; stderr:\n%s", code, d.stderr)
	}
	logs := d.stderr.String()
	for _, want := range []string{
		`"msg":"configuration reloaded","applied":[]`,
		`"applied":["log.level"],"restart_needed":["registry.max_bytes","huggingface.token"]`,
		`"msg":"rpc","method":"/grpc.health.v1.Health/Check"`,
		`"msg":"reload: configuration not applied; still running with the previous one","err":"store.durability: must be \"sync\" or \"process\", got \"fast\"`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s", want)
		}
	}
	if strings.Contains(logs, "hf_reloadsecret") {
		t.Errorf("the reload logged a secret:\n%s", logs)
	}
	if t.Failed() {
		t.Logf("stderr:\n%s", logs)
	}
}

func TestRun_HealthWatchDoesNotHoldShutdown(t *testing.T) {
	// Load balancers and grpc-go's client-side health checking keep a Health/Watch stream open for
	// the life of the connection. At SIGTERM it must hear NOT_SERVING and then end, or every stop
	// waits out the whole shutdown_timeout (here 1h: only the test's own bound would end it).
	d := startOpsDaemon(t, "--shutdown-timeout", "1h")
	watch, err := healthpb.NewHealthClient(dialGRPC(t, d.grpcAddr)).Watch(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := watch.Recv(); err != nil || st.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch: %v %v", st, err)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	if st, err := watch.Recv(); err != nil || st.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("watch during shutdown: %v %v", st, err)
	}
	if code := d.wait(t); code != 0 {
		t.Fatalf("exit code %d, want 0; stderr:\n%s", code, d.stderr)
	}
	if _, err := watch.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("watch end: got %v, want Unavailable", err)
	}
}

func TestOpenStore_DatabaseLost(t *testing.T) {
	// A data directory whose database was deleted or truncated, but whose payload files remain,
	// must not silently become a new empty store: its startup clean-up would delete the payloads.
	for _, tc := range []struct {
		name, state string
		lose        func(db string) error
	}{
		{"Missing", "missing", func(db string) error {
			for _, suffix := range []string{"", "-wal", "-shm"} {
				if err := os.Remove(db + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
			}
			return nil
		}},
		{"Empty", "empty (0 bytes)", func(db string) error {
			os.Remove(db + "-wal")
			os.Remove(db + "-shm")
			return os.Truncate(db, 0)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.DataDir = t.TempDir()
			db, err := openStore(context.Background(), cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			// Large enough to live in a payload file rather than inline in the database.
			if _, err := db.StoreBlob(context.Background(), "", bytes.Repeat([]byte("payload!"), 128<<10), nil); err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			payloads := func() int {
				n := 0
				filepath.WalkDir(filepath.Join(cfg.DataDir, storePayloadDir), func(_ string, d os.DirEntry, err error) error {
					if err == nil && !d.IsDir() {
						n++
					}
					return nil
				})
				return n
			}
			if payloads() == 0 {
				t.Fatal("the blob made no payload file; the test needs one")
			}
			if err := tc.lose(filepath.Join(cfg.DataDir, storeDBFile)); err != nil {
				t.Fatal(err)
			}

			var stderr bytes.Buffer
			code := execute(context.Background(), []string{"kv", "get", "k", "--config", os.DevNull, "--data-dir", cfg.DataDir},
				strings.NewReader(""), io.Discard, &stderr)
			if code != exitError || !strings.Contains(stderr.String(), "is "+tc.state+", but the data directory holds payload files") ||
				!strings.Contains(stderr.String(), "hint: restore the database file from a backup") {
				t.Fatalf("exit %d, stderr:\n%s", code, stderr.String())
			}
			if payloads() == 0 {
				t.Fatal("the payload files were deleted")
			}
		})
	}
	t.Run("Fresh", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.DataDir = filepath.Join(t.TempDir(), "new")
		db, err := openStore(context.Background(), cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		db.Close()
	})
}

func TestRunDaemon_SignalDuringStartup(t *testing.T) {
	// systemctl stop while the store opens (migrations can take a while on a big store) is a
	// requested stop, not a failure: exit 0, or systemd marks the unit failed. The store is left
	// as it was and opens normally afterwards.
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.GRPC.Listen = []string{"127.0.0.1:0"}
	cfg.GRPC.Socket = socketNone
	cfg.HTTP.Listen = ""
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the signal arrived before the store was open
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	if err := runDaemon(ctx, cfg, log, nil); err != nil {
		t.Fatalf("runDaemon: %v, want nil; log:\n%s", err, logs.String())
	}
	if !strings.Contains(logs.String(), "stopped before serving") {
		t.Fatalf("log:\n%s", logs.String())
	}
	m := newTestMain(t, func(c *Config) { c.DataDir = cfg.DataDir })
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestRun_LogReaderGoneKeepsServing(t *testing.T) {
	// The daemon's stderr is a pipe whose reader exits (a log shipper restarting): logging fails,
	// the daemon goes on serving and still shuts down cleanly.
	n := listenNotify(t)
	dir := t.TempDir()
	cmd := exec.Command(buffdbdBin, "run", "--config", os.DevNull, "--data-dir", dir, "--listen", "127.0.0.1:0",
		"--http-listen", "127.0.0.1:0", "--socket", "none", "--log-format", "json")
	cmd.Env = cleanEnv("NOTIFY_SOCKET="+n.path, "HOME="+dir)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() { cmd.Process.Kill(); <-exited }()
	grpcAddr, _, err := parseReady(n.waitFor(t, "READY=1", exited))
	if err != nil {
		t.Fatal(err)
	}
	r.Close() // the reader is gone; every later log line hits a broken pipe

	cmd.Process.Signal(syscall.SIGHUP) // logs at once
	n.waitFor(t, "RELOADING=1", exited)
	n.waitFor(t, "READY=1", exited)
	resp, err := healthpb.NewHealthClient(dialGRPC(t, grpcAddr)).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health with a broken log pipe: %v %v", resp, err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	n.waitFor(t, "STOPPING=1", exited)
	<-exited
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit %d (%v), want 0", code, cmd.ProcessState)
	}
}

func TestMain_StaleSocketLink(t *testing.T) {
	// The service keeps its socket in /run/buffdbd and links it into the data directory. After a
	// crash or reboot the link dangles; a daemon started by hand on that directory (socket in
	// the data directory) replaces it. A link to a live daemon's socket is still refused, and a
	// link to a regular file is left alone.
	t.Setenv("RUNTIME_DIRECTORY", "")
	dir := t.TempDir()
	link := filepath.Join(dir, "buffdbd.sock")
	if err := os.Symlink(filepath.Join(t.TempDir(), "gone", "buffdbd.sock"), link); err != nil {
		t.Fatal(err)
	}
	m := newTestMain(t, func(c *Config) { c.DataDir = dir; c.GRPC.Socket = "" })
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("%s after start: %v %v, want the daemon's socket", link, fi, err)
	}

	other := t.TempDir()
	if err := os.Symlink(link, filepath.Join(other, "buffdbd.sock")); err != nil {
		t.Fatal(err)
	}
	cfg := m.Config
	cfg.DataDir, cfg.HTTP.Listen = other, ""
	m2 := NewMain(cfg, discardLogger())
	if err := m2.Open(context.Background()); !errors.As(err, new(alreadyServingError)) {
		m2.Close(context.Background())
		t.Fatalf("Open over a link to a live socket: %v, want alreadyServingError", err)
	}

	file := filepath.Join(t.TempDir(), "notes.txt")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	third := t.TempDir()
	if err := os.Symlink(file, filepath.Join(third, "buffdbd.sock")); err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = third
	m3 := NewMain(cfg, discardLogger())
	if err := m3.Open(context.Background()); err == nil || !strings.Contains(err.Error(), "is not a socket") {
		m3.Close(context.Background())
		t.Fatalf("Open over a link to a file: %v, want a refusal", err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep" {
		t.Fatalf("the linked file: %q %v", b, err)
	}
}

func TestMain_CloseEndsRegistryWatches(t *testing.T) {
	// However the shutdown starts (here Close itself, as after a failed listener, not the signal
	// context), registry Watch streams end at once instead of holding the graceful stop until its
	// deadline (an hour here: only the test's bound would end it).
	m := newTestMain(t, nil)
	conn := dialGRPC(t, tcpAddr(m))
	watch, err := registrypb.NewRegistryClient(conn).Watch(context.Background(), &registrypb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := watch.Recv(); err != nil || ev.Kind != registrypb.WatchEvent_READY {
		t.Fatalf("watch: %v %v", ev, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	closed := make(chan error, 1)
	go func() { closed <- m.Close(ctx) }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Close waited on the registry watcher")
	}
	if _, err := watch.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("watch end: %v, want Unavailable", err)
	}
}
