package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/buffdb/buffdbd/store"
)

// cliResult is one in-process run of the command line.
type cliResult struct {
	stdout, stderr string
	code           int
}

// runLine runs buffdbd with args in-process, stdin from in.
func runLine(t testing.TB, in string, args ...string) cliResult {
	t.Helper()
	var out, errb bytes.Buffer
	code := execute(context.Background(), args, strings.NewReader(in), &out, &errb)
	return cliResult{out.String(), errb.String(), code}
}

// must runs the CLI and fails unless it exits with want.
func must(t testing.TB, want int, in string, args ...string) cliResult {
	t.Helper()
	r := runLine(t, in, args...)
	if r.code != want {
		t.Fatalf("buffdbd %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, want, r.stdout, r.stderr)
	}
	if want >= exitUsage && strings.Count(strings.TrimSpace(r.stderr), "\n") > 1 {
		t.Fatalf("buffdbd %s: error is not one sentence (plus a hint):\n%s", strings.Join(args, " "), r.stderr)
	}
	return r
}

// cliSuite exercises the data commands; base selects the data directory or daemon.
func cliSuite(t *testing.T, base ...string) {
	a := func(args ...string) []string { return append(append([]string{}, base...), args...) }

	t.Run("KV", func(t *testing.T) {
		must(t, exitOK, "", a("kv", "set", "greeting", "hello world")...)
		must(t, exitOK, "", a("kv", "set", "copy", "hello world")...)
		must(t, exitOK, "", a("kv", "set", "other", "bye")...)
		if r := must(t, exitOK, "", a("kv", "get", "greeting")...); r.stdout != "hello world\n" {
			t.Fatalf("kv get = %q", r.stdout)
		}
		must(t, exitOK, "", a("kv", "eq", "greeting", "copy")...)
		if r := must(t, exitFalse, "", a("kv", "eq", "greeting", "other")...); r.stdout != "false\n" {
			t.Fatalf("kv eq stdout = %q", r.stdout)
		}
		must(t, exitOK, "", a("kv", "not-eq", "greeting", "other")...)
		must(t, exitFalse, "", a("kv", "not-eq", "greeting", "copy", "other")...)
		must(t, exitOK, "", a("kv", "delete", "copy")...)
		r := must(t, exitNotFound, "", a("kv", "get", "copy")...)
		if !strings.Contains(r.stderr, "copy") {
			t.Fatalf("not-found error does not name the key: %q", r.stderr)
		}
		must(t, exitNotFound, "", a("kv", "delete", "copy")...)
		must(t, exitNotFound, "", a("kv", "eq", "greeting", "nope")...)
	})

	t.Run("Blob", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "payload")
		payload := bytes.Repeat([]byte{0, 1, 2, 250}, 10000) // binary, larger than inline
		os.WriteFile(f, payload, 0o600)
		id := strings.TrimSpace(must(t, exitOK, "", a("blob", "store", f, `{"kind":"file"}`)...).stdout)
		id2 := strings.TrimSpace(must(t, exitOK, "from stdin", a("blob", "store", "-")...).stdout)
		if id == "" || id2 == "" || id == id2 {
			t.Fatalf("ids %q %q", id, id2)
		}
		if r := must(t, exitOK, "", a("blob", "get", id)...); r.stdout != string(payload) {
			t.Fatalf("blob get returned %d bytes, want %d", len(r.stdout), len(payload))
		}
		if r := must(t, exitOK, "", a("blob", "get", id, "--mode", "metadata")...); r.stdout != "{\"kind\":\"file\"}\n" {
			t.Fatalf("metadata = %q", r.stdout)
		}
		if r := must(t, exitOK, "", a("blob", "get", id2, "--mode", "all")...); r.stdout != "from stdin" {
			t.Fatalf("all without metadata = %q", r.stdout)
		}
		must(t, exitOK, "new data", a("blob", "update", id2, "data", "-")...)
		must(t, exitOK, "", a("blob", "update", id2, "metadata", "m2")...)
		if r := must(t, exitOK, "", a("blob", "get", id2, "--mode", "all")...); r.stdout != "m2\nnew data" {
			t.Fatalf("after updates = %q", r.stdout)
		}
		must(t, exitOK, "", a("blob", "update", id2, "metadata")...)
		if r := must(t, exitOK, "", a("blob", "get", id2, "--mode", "metadata")...); r.stdout != "" {
			t.Fatalf("metadata after removal = %q", r.stdout)
		}
		must(t, exitOK, "", a("blob", "update", id2, "all", f, "both")...)
		must(t, exitOK, "", a("blob", "eq-data", id, id2)...)
		must(t, exitFalse, "", a("blob", "not-eq-data", id, id2)...)
		must(t, exitOK, "", a("blob", "delete", id2)...)
		must(t, exitNotFound, "", a("blob", "get", id2)...)
		must(t, exitUsage, "", a("blob", "get", "abc")...)
		must(t, exitUsage, "", a("blob", "update", id, "sideways", "x")...)
		must(t, exitError, "", a("blob", "store", filepath.Join(t.TempDir(), "missing"))...)
	})

	t.Run("Query", func(t *testing.T) {
		q := "SELECT 1 AS one, 'two' AS two, NULL AS three UNION ALL SELECT 10, 'twenty', 3.5"
		r := must(t, exitOK, "", a("query", q)...)
		lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
		if len(lines) != 3 || !strings.HasPrefix(lines[0], "one") || !strings.Contains(lines[1], "NULL") {
			t.Fatalf("table output:\n%s", r.stdout)
		}
		// Aligned: every line has the second column at the same offset.
		if i := strings.Index(lines[0], "two"); strings.Index(lines[2], "twenty") != i {
			t.Fatalf("columns not aligned:\n%s", r.stdout)
		}
		var rows []map[string]any
		r = must(t, exitOK, "", a("query", "--json", q)...)
		if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || len(rows) != 2 || rows[0]["two"] != "two" || rows[0]["three"] != nil || rows[1]["three"] != 3.5 {
			t.Fatalf("--json = %s (%v)", r.stdout, err)
		}
		// JSON has no infinities: they are strings, as the table prints them.
		r = must(t, exitOK, "", a("query", "--json", "SELECT 1e308*10 AS inf, -1e308*10 AS ninf")...)
		if strings.Join(strings.Fields(r.stdout), "") != `[{"inf":"+Inf","ninf":"-Inf"}]` {
			t.Fatalf("--json of infinities = %q", r.stdout)
		}
		// Repeated column names become distinct keys, named as SQLite names the columns of the same
		// result used as a subquery (there it makes them unique itself).
		dup := "SELECT 1 AS a, 2 AS a, 3 AS 'a:1', 4 AS b, 5 AS a"
		r = must(t, exitOK, "", a("query", "--json", dup)...)
		if got := strings.Join(strings.Fields(r.stdout), ""); got != `[{"a":1,"a:1":2,"a:2":3,"b":4,"a:3":5}]` {
			t.Fatalf("--json of repeated columns = %s", got)
		}
		if sub := must(t, exitOK, "", a("query", "--json", "SELECT * FROM ("+dup+")")...); sub.stdout != r.stdout {
			t.Fatalf("--json keys %s differ from SQLite's subquery column names %s", r.stdout, sub.stdout)
		}
		r = must(t, exitOK, "", a("query", "--csv", q)...)
		if r.stdout != "one,two,three\n1,two,\n10,twenty,3.5\n" {
			t.Fatalf("--csv = %q", r.stdout)
		}
		if r := must(t, exitOK, "", a("query", "--csv", "SELECT key, value FROM kv WHERE 0")...); r.stdout != "key,value\n" {
			t.Fatalf("--csv of an empty result = %q, want its header", r.stdout)
		}
		must(t, exitError, "", a("query", "--execute", "CREATE TABLE x(y)")...)
		must(t, exitError, "", a("query", "SELEC nonsense")...)
		must(t, exitUsage, "", a("query", "--json", "--csv", "SELECT 1")...)
	})

	t.Run("Index", func(t *testing.T) {
		must(t, exitOK, "", a("kv", "set", "m:a", `{"fw":"onnx","n":3}`)...)
		must(t, exitOK, "", a("kv", "set", "m:b", `{"fw":"tflite","n":20}`)...)
		if r := must(t, exitOK, "", a("index", "create", "fw", "--json-path", "$.fw", "--prefix", "m:")...); r.stdout != "2\n" {
			t.Fatalf("index create printed %q, want 2", r.stdout)
		}
		must(t, exitOK, "", a("index", "create", "n", "--type", "btree", "--kind", "number", "--json-path", "$.n")...)
		if r := must(t, exitOK, "", a("index", "find", "fw", "onnx")...); r.stdout != "m:a\n" {
			t.Fatalf("find = %q", r.stdout)
		}
		if r := must(t, exitOK, "", a("index", "range", "n", "--ge", "3", "--desc", "--values")...); r.stdout != "m:b\t{\"fw\":\"tflite\",\"n\":20}\nm:a\t{\"fw\":\"onnx\",\"n\":3}\n" {
			t.Fatalf("range = %q", r.stdout)
		}
		// Paging: the last line printed with --indexed is where the next page starts.
		must(t, exitOK, "", a("kv", "set", "m:c", `{"fw":"onnx","n":3}`)...)
		if r := must(t, exitOK, "", a("index", "range", "n", "--limit", "1", "--indexed")...); r.stdout != "3\tm:a\n" {
			t.Fatalf("range page 1 = %q", r.stdout)
		}
		if r := must(t, exitOK, "", a("index", "range", "n", "--limit", "1", "--indexed", "--after-value", "3", "--after-key", "m:a")...); r.stdout != "3\tm:c\n" {
			t.Fatalf("range page 2 = %q", r.stdout)
		}
		if r := must(t, exitOK, "", a("index", "find", "fw", "onnx", "--after", "m:a")...); r.stdout != "m:c\n" {
			t.Fatalf("find --after = %q", r.stdout)
		}
		must(t, exitUsage, "", a("index", "range", "n", "--after-key", "m:a")...)
		if r := must(t, exitOK, "", a("index", "ls")...); !strings.Contains(r.stdout, "btree") || !strings.Contains(r.stdout, "$.fw") {
			t.Fatalf("ls = %q", r.stdout)
		}
		must(t, exitOK, "", a("index", "drop", "fw")...)
		must(t, exitNotFound, "", a("index", "drop", "fw")...)
		must(t, exitUsage, "", a("index", "create", "z", "--type", "trie")...)
	})
}

func TestCLI_WithoutDaemon(t *testing.T) {
	cliSuite(t, "--data-dir", t.TempDir())

	// The in-process store takes the daemon's configuration (here from the environment).
	t.Run("ConfigQueryWrites", func(t *testing.T) {
		t.Setenv("BUFFDBD_STORE_QUERY_WRITES", "true")
		dir := t.TempDir()
		must(t, exitOK, "", "--data-dir", dir, "query", "--execute", "CREATE TABLE scratch(x)")
		if r := must(t, exitOK, "", "--data-dir", dir, "query", "--execute", "INSERT INTO scratch VALUES (1), (2)"); r.stdout != "2\n" {
			t.Fatalf("rows changed = %q", r.stdout)
		}
	})
}

func TestCLI_WithDaemon(t *testing.T) {
	dir := t.TempDir()
	m := startDaemon(t, dir)
	t.Run("Socket", func(t *testing.T) { cliSuite(t, "--data-dir", dir) })
	var tcp string
	for _, a := range m.Addrs() {
		if a.Network() == "tcp" {
			tcp = a.String()
		}
	}
	t.Run("Addr", func(t *testing.T) {
		must(t, exitOK, "", "--addr", tcp, "kv", "set", "via-tcp", "yes")
		// The daemon holds the store; the socket client sees the TCP client's write.
		if r := must(t, exitOK, "", "--data-dir", dir, "kv", "get", "via-tcp"); r.stdout != "yes\n" {
			t.Fatalf("got %q", r.stdout)
		}
	})
	t.Run("Unavailable", func(t *testing.T) {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := l.Addr().String()
		l.Close()
		r := must(t, exitError, "", "--addr", addr, "kv", "get", "x")
		if !strings.Contains(r.stderr, "hint:") {
			t.Fatalf("no hint for an unreachable daemon: %q", r.stderr)
		}
	})
}

func TestCLI_MessageTooLarge(t *testing.T) {
	t.Setenv("BUFFDBD_GRPC_MAX_MESSAGE_BYTES", "4MiB")
	f := filepath.Join(t.TempDir(), "big")
	os.WriteFile(f, make([]byte, 5<<20), 0o600)
	r := must(t, exitError, "", "--data-dir", t.TempDir(), "blob", "store", f)
	if !strings.Contains(r.stderr, "larger than max") || !strings.Contains(r.stderr, "hint: ") || !strings.Contains(r.stderr, "max_message_bytes") {
		t.Fatalf("stderr = %q", r.stderr)
	}
}

func TestCLI_Usage(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"no-such-command"},
		{"kv", "get"},
		{"kv", "set", "only-key"},
		{"kv", "get", "--bogus-flag", "k"},
		{"blob", "store"},
		{"run", "extra-arg"},
		// gRPC strings must be UTF-8: a usage error naming the argument, not a marshaling failure.
		{"kv", "set", "k", "v\xffw"},
		{"kv", "get", "k\xff"},
		{"index", "find", "ix", "\xff"},
		{"index", "range", "ix", "--ge", "\xff"},
		{"query", "SELECT '\xff'"},
	} {
		r := must(t, exitUsage, "", append([]string{"--data-dir", dir}, args...)...)
		if !strings.HasPrefix(r.stderr, "buffdbd: ") {
			t.Fatalf("%v: stderr %q", args, r.stderr)
		}
	}
}

// startDaemon runs the daemon wiring in-process on 127.0.0.1:0 and dir's socket.
func startDaemon(t testing.TB, dir string) *Main {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DataDir = dir
	cfg.GRPC.Listen = []string{"127.0.0.1:0"}
	cfg.HTTP.Listen = "" // metrics are tested elsewhere; a fixed port would collide across tests
	m := NewMain(cfg, nil)
	if err := m.Open(context.Background()); err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return m
}

func TestMain_Socket(t *testing.T) {
	t.Run("ErrSecondDaemon", func(t *testing.T) {
		dir := t.TempDir()
		startDaemon(t, dir)
		cfg := DefaultConfig()
		cfg.DataDir = dir
		cfg.GRPC.Listen = []string{"127.0.0.1:0"}
		cfg.HTTP.Listen = ""
		err := NewMain(cfg, nil).Open(context.Background())
		if err == nil || !strings.Contains(err.Error(), "already serving") {
			t.Fatalf("second daemon on one data dir: err = %v", err)
		}
		// Reported with a hint at what to do, not at a log (it is no internal error).
		var w strings.Builder
		if code := reportError(&w, err); code != exitError || !strings.Contains(w.String(), "hint: stop it first") {
			t.Fatalf("reported as %q, exit %d", w.String(), code)
		}
	})
	t.Run("StaleSocketRemoved", func(t *testing.T) {
		dir := t.TempDir()
		l, err := net.Listen("unix", filepath.Join(dir, "buffdbd.sock"))
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false) // what a crashed daemon leaves behind
		l.Close()
		startDaemon(t, dir)
		must(t, exitOK, "", "--data-dir", dir, "kv", "set", "k", "v")
	})
	t.Run("ErrNotASocket", func(t *testing.T) {
		// A typo that names an existing file as the socket must not delete it.
		dir := t.TempDir()
		for _, kind := range []string{"a regular file", "a directory"} {
			path := filepath.Join(dir, "precious")
			if kind == "a directory" {
				os.Remove(path)
				os.Mkdir(path, 0o700)
			} else {
				os.WriteFile(path, []byte("keep me"), 0o600)
			}
			cfg := DefaultConfig()
			cfg.DataDir = filepath.Join(dir, "data")
			cfg.GRPC.Listen = []string{"127.0.0.1:0"}
			cfg.GRPC.Socket = path
			cfg.HTTP.Listen = ""
			m := NewMain(cfg, nil)
			err := m.Open(context.Background())
			if err == nil {
				m.Close(context.Background())
			}
			if err == nil || !strings.Contains(err.Error(), "is not a socket ("+kind+")") {
				t.Fatalf("socket path is %s: err = %v", kind, err)
			}
			if fi, err := os.Stat(path); err != nil || (kind == "a directory") != fi.IsDir() {
				t.Fatalf("%s at the socket path was replaced: %v", kind, err)
			}
		}
	})
}

func TestResolveDataDir(t *testing.T) {
	t.Setenv("STATE_DIRECTORY", "")
	t.Setenv("XDG_DATA_HOME", "")
	t.Setenv("HOME", "/home/edge")
	for _, tc := range []struct {
		name, flag, state, xdg, want string
	}{
		{"Flag", "/srv/data", "/var/lib/buffdbd", "/x", "/srv/data"},
		{"Systemd", "", "/var/lib/buffdbd:/var/lib/other", "/x", "/var/lib/buffdbd"},
		{"XDG", "", "", "/xdg", "/xdg/buffdbd"},
		{"Home", "", "", "", "/home/edge/.local/share/buffdbd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("STATE_DIRECTORY", tc.state)
			t.Setenv("XDG_DATA_HOME", tc.xdg)
			got, err := resolveDataDir(tc.flag)
			if err != nil || got != tc.want {
				t.Fatalf("resolveDataDir(%q) = %q, %v; want %q", tc.flag, got, err, tc.want)
			}
		})
	}
}

func TestCLI_ModelWatchNeedsDaemon(t *testing.T) {
	// In-process it would hold the data directory (no daemon could start) and never see a change.
	dir := t.TempDir()
	must(t, exitOK, "", "--data-dir", dir, "kv", "set", "k", "v")
	r := must(t, exitError, "", "--data-dir", dir, "model", "watch")
	if !strings.Contains(r.stderr, "needs a running daemon") {
		t.Fatalf("stderr %q", r.stderr)
	}
}

func TestCLI_UnknownSubcommand(t *testing.T) {
	// A group given a subcommand it does not have is a usage error with nothing on stdout, as an
	// unknown top-level command is; the group alone prints its help.
	for _, args := range [][]string{{"kv", "gte", "k"}, {"blob", "bogus"}, {"index", "bogus"}, {"model", "pul", "x"}, {"config", "bogus"}, {"bogus"}, {"blb"}} {
		unknown := args[min(1, len(args)-1)]
		r := must(t, exitUsage, "", args...)
		if r.stdout != "" || !strings.Contains(r.stderr, fmt.Sprintf("unknown command %q", unknown)) {
			t.Errorf("buffdbd %s: stdout %q, stderr %q", strings.Join(args, " "), r.stdout, r.stderr)
		}
	}
	if r := must(t, exitOK, "", "kv"); !strings.Contains(r.stdout, "Available Commands") {
		t.Errorf("buffdbd kv: stdout %q, want the group's help", r.stdout)
	}
}

func TestCLI_BenchStore(t *testing.T) {
	// A --data-dir that does not exist yet is created, like any data directory.
	dir := filepath.Join(t.TempDir(), "new", "bench")
	r := must(t, exitOK, "", "--data-dir", dir, "bench", "store", "--keys", "200", "--blobs", "3", "--blob-size", "20000")
	for _, want := range []string{"KV Set", "KV Get", "raw file write+fsync", "raw files, one per blob", "Blob Store", "Blob Get", "x raw"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("bench output lacks %q:\n%s", want, r.stdout)
		}
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data dir: %v, %v; want mode 0700", fi, err)
	}
}

// TestCLI_ParallelWithoutDaemon: commands run at once on one data directory take turns on the
// store's lock instead of failing.
func TestCLI_ParallelWithoutDaemon(t *testing.T) {
	dir := t.TempDir()
	const n = 4
	codes := make(chan cliResult, n)
	for i := range n {
		go func() { codes <- runLine(t, "", "--data-dir", dir, "kv", "set", fmt.Sprint("p", i), "v") }()
	}
	for range n {
		if r := <-codes; r.code != exitOK {
			t.Fatalf("parallel kv set: exit %d: %s", r.code, r.stderr)
		}
	}
	for i := range n {
		must(t, exitOK, "", "--data-dir", dir, "kv", "get", fmt.Sprint("p", i))
	}
}

// TestCLI_SameConfigAsRun: CLI commands take the configuration run takes — config file, BUFFDBD_*
// variables and every configuration flag — both to find the daemon and to open the store without one.
func TestCLI_SameConfigAsRun(t *testing.T) {
	t.Run("ConfigFile", func(t *testing.T) {
		dir := t.TempDir()
		file := filepath.Join(t.TempDir(), "buffdbd.yaml")
		yaml := fmt.Sprintf("data_dir: %s\nstore:\n  durability: process\n", dir)
		if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		must(t, exitOK, "", "--config", file, "kv", "set", "k", "from-config")
		if r := must(t, exitOK, "", "--data-dir", dir, "kv", "get", "k"); r.stdout != "from-config\n" {
			t.Fatalf("kv get in the config file's data_dir = %q", r.stdout)
		}
	})
	t.Run("SocketFlag", func(t *testing.T) {
		// A socket outside the data directory, found only through --socket (unix paths are short).
		sockDir, err := os.MkdirTemp("", "bd")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(sockDir) })
		cfg := DefaultConfig()
		cfg.DataDir = t.TempDir()
		cfg.GRPC.Listen = []string{"127.0.0.1:0"} // the default port may be a developer's daemon
		cfg.GRPC.Socket = filepath.Join(sockDir, "d.sock")
		cfg.HTTP.Listen = ""
		m := NewMain(cfg, nil)
		if err := m.Open(context.Background()); err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { m.Close(context.Background()) })
		must(t, exitOK, "", "--data-dir", t.TempDir(), "--socket", cfg.GRPC.Socket, "kv", "set", "k", "via-socket")
		if v, err := m.DB.Get(context.Background(), "", "k"); err != nil || v != "via-socket" {
			t.Fatalf("daemon store k = %q, %v; the CLI did not reach the daemon through --socket", v, err)
		}
	})
	t.Run("MessageSizeFlag", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "big")
		os.WriteFile(f, make([]byte, 5<<20), 0o600)
		r := must(t, exitError, "", "--data-dir", t.TempDir(), "blob", "store", "--grpc-max-message-bytes", "4MiB", f)
		if !strings.Contains(r.stderr, "larger than max") {
			t.Fatalf("stderr = %q", r.stderr)
		}
	})
	t.Run("BadFlagValueIsConfigError", func(t *testing.T) {
		r := must(t, exitConfig, "", "--data-dir", t.TempDir(), "kv", "get", "--durability", "fast", "k")
		if !strings.Contains(r.stderr, "store.durability") {
			t.Fatalf("stderr = %q", r.stderr)
		}
	})
	t.Run("BenchDurabilityFromEnv", func(t *testing.T) {
		t.Setenv("BUFFDBD_STORE_DURABILITY", "process")
		r := must(t, exitOK, "", "bench", "store", "--keys", "10", "--blobs", "1", "--blob-size", "1000")
		if !strings.Contains(r.stdout, "durability=process") {
			t.Fatalf("bench ignored BUFFDBD_STORE_DURABILITY:\n%s", r.stdout)
		}
	})
}

// TestCLI_ErrLocked: when another process holds the store and no daemon answers on the socket, the
// CLI says so in one sentence, hints at the socket (a daemon under another user), and exits 4.
func TestCLI_ErrLocked(t *testing.T) {
	saved := lockWait
	lockWait = 0 // the wait for the lock has its own test (TestCLI_ParallelWithoutDaemon)
	t.Cleanup(func() { lockWait = saved })
	dir := t.TempDir()
	// This process holding the store with no socket is what a CLI user sees when a daemon run
	// by another user holds it behind a socket they may not open.
	db, err := store.Open(context.Background(), dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	r := must(t, exitError, "", "--data-dir", dir, "kv", "get", "k")
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if want := "buffdbd: another buffdbd process is using the data directory " + dir; lines[0] != want {
		t.Fatalf("message = %q, want %q", lines[0], want)
	}
	if len(lines) != 2 || !strings.HasPrefix(lines[1], "hint: ") || !strings.Contains(lines[1], "different user") ||
		!strings.Contains(lines[1], filepath.Join(dir, "buffdbd.sock")) || !strings.Contains(lines[1], "--addr") {
		t.Fatalf("hint = %q", r.stderr)
	}
}

func TestCLI_TokenFileChecked(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte(" \n"), 0o600)
	good := filepath.Join(dir, "token")
	os.WriteFile(good, []byte("hf_abc\n"), 0o600)
	data := filepath.Join(dir, "data")
	must(t, exitOK, "", "--data-dir", data, "kv", "set", "other", "v")
	for _, f := range []string{filepath.Join(dir, "missing"), empty} {
		for _, args := range [][]string{{"config", "check"}, {"run", "--listen", "127.0.0.1:0", "--http-listen="}} {
			r := must(t, exitConfig, "", append([]string{"--data-dir", data, "--huggingface-token-file", f}, args...)...)
			if !strings.Contains(r.stderr, "huggingface.token_file") {
				t.Errorf("%v with token file %s: stderr %q", args, f, r.stderr)
			}
		}
		// Other commands do not need the token: a user who may not read it can still use them.
		must(t, exitNotFound, "", "--data-dir", data, "--huggingface-token-file", f, "kv", "get", "k")
	}
	must(t, exitOK, "", "--data-dir", data, "--huggingface-token-file", good, "config", "check")
}

func TestCLI_ModelBadRef(t *testing.T) {
	// A malformed reference is a usage error for every command that takes one.
	dir := t.TempDir()
	for _, args := range [][]string{{"show", "a:b:c"}, {"pull", "a:b:c", "-o", t.TempDir()}, {"rm", "a:b:c"},
		{"pin", "a:b:c"}, {"unpin", "a:b:c"}, {"verify", "a:b:c"}, {"tag", "a:b:c", "x"}} {
		r := must(t, exitUsage, "", append([]string{"--data-dir", dir, "model"}, args...)...)
		if !strings.Contains(r.stderr, `"a:b:c"`) && !strings.Contains(r.stderr, `"a:b"`) {
			t.Errorf("model %v: stderr %q does not name the reference", args, r.stderr)
		}
	}
}

func TestCLI_RootRefusesServiceDataDir(t *testing.T) {
	// Root opening a data directory another user owns (the service's, while it is stopped) would
	// leave root-owned files the service cannot read: refused, with the way out.
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := filepath.Join(t.TempDir(), "state")
	os.Mkdir(dir, 0o700)
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Skip(err)
	}
	r := must(t, exitError, "", "--data-dir", dir, "kv", "set", "k", "v")
	if !strings.Contains(r.stderr, "belongs to user") || !strings.Contains(r.stderr, "hint: start the daemon") {
		t.Fatalf("stderr %q", r.stderr)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("root left %d entries in the service's directory", len(entries))
	}
	// run logs its start first, so not one line; the refusal is the same.
	if r := runLine(t, "", "--data-dir", dir, "run", "--listen", "127.0.0.1:0", "--http-listen="); r.code != exitError || !strings.Contains(r.stderr, "belongs to user") {
		t.Fatalf("run: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestCLI_NoStore(t *testing.T) {
	// A mistyped --data-dir must not answer "empty" or "not found" from a store the command just
	// created there, nor leave one behind.
	reads := [][]string{
		{"kv", "get", "k"}, {"kv", "eq", "a", "b"}, {"kv", "delete", "k"}, {"blob", "get", "1"},
		{"index", "ls"}, {"index", "find", "i", "v"}, {"query", "SELECT 1"},
		{"model", "ls"}, {"model", "show", "m:1"}, {"model", "verify"}, {"model", "rm", "m:1"},
		{"model", "watch"}, {"gc"},
	}
	for _, tc := range []struct {
		name, why string
		dir       func(t *testing.T) string
	}{
		{"Missing", "does not exist", func(t *testing.T) string { return filepath.Join(t.TempDir(), "typo") }},
		{"Empty", "holds no buffdb.sqlite", func(t *testing.T) string { return t.TempDir() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.dir(t)
			for _, args := range reads {
				r := must(t, exitError, "", append([]string{"--data-dir", dir}, args...)...)
				if !strings.Contains(r.stderr, "no store in "+dir+" (the directory "+tc.why+")") || !strings.Contains(r.stderr, "hint: check --data-dir") {
					t.Fatalf("%v: stderr %q", args, r.stderr)
				}
				if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
					t.Fatalf("%v: left %d entries in %s, e.g. %s", args, len(ents), dir, ents[0].Name())
				}
			}
			// Commands that add data create the store, as before.
			must(t, exitOK, "", "--data-dir", dir, "kv", "set", "k", "v")
			if r := must(t, exitOK, "", "--data-dir", dir, "kv", "get", "k"); r.stdout != "v\n" {
				t.Fatalf("kv get = %q", r.stdout)
			}
		})
	}
	t.Run("QueryExecuteCreates", func(t *testing.T) {
		t.Setenv("BUFFDBD_STORE_QUERY_WRITES", "true")
		dir := filepath.Join(t.TempDir(), "new")
		must(t, exitOK, "", "--data-dir", dir, "query", "--execute", "CREATE TABLE scratch(x)")
		must(t, exitOK, "", "--data-dir", dir, "query", "SELECT * FROM scratch")
	})
	t.Run("QueryExecuteReadOnly", func(t *testing.T) {
		// Without query_writes the Execute is refused anyway: no store is left behind for it.
		dir := filepath.Join(t.TempDir(), "new")
		must(t, exitError, "", "--data-dir", dir, "query", "--execute", "CREATE TABLE scratch(x)")
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Fatalf("query --execute without query_writes left %s behind (%v)", dir, err)
		}
	})
	t.Run("PushMissingSource", func(t *testing.T) {
		// A push that creates stores fails on a mistyped source before it creates one.
		dir := filepath.Join(t.TempDir(), "new")
		r := must(t, exitError, "", "--data-dir", dir, "model", "push", filepath.Join(dir, "nope"), "--name", "m", "--version", "1")
		if !strings.Contains(r.stderr, "nope: no such file") {
			t.Fatalf("stderr %q", r.stderr)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Fatalf("a push of a missing source left %s behind (%v)", dir, err)
		}
	})
}
