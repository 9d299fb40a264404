package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buffdb/buffdbd/huggingface"
	"github.com/buffdb/buffdbd/registry"
	"github.com/buffdb/buffdbd/store"
)

// TestReportError_ResourceExhaustedHint: each cause of RESOURCE_EXHAUSTED, as a daemon reports it
// (only the status message), gets the hint for its own fix — never another cause's.
func TestReportError_ResourceExhaustedHint(t *testing.T) {
	for _, tc := range []struct {
		name, msg, want, notWant string
	}{
		{"Budget", "publish org/m:v1: " + registry.ErrBudget.Error() + ": 300000 bytes referenced, budget 102400",
			"registry.max_bytes", "max_message_bytes"},
		{"DiskFull", "push org/m:v1: " + registry.ErrDiskFull.Error(), "filesystem", "max_message_bytes"},
		{"ENOSPC", "write chunk: no space left on device", "filesystem", "max_bytes"},
		{"StoreNoSpace", "store blob: write payload: " + store.ErrNoSpace.Error(), "filesystem", "max_bytes"},
		{"MessageSize", "grpc: received message larger than max (100000 vs. 65536)", "grpc.max_message_bytes", "registry.max_bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var w bytes.Buffer
			if got := reportError(&w, status.Error(codes.ResourceExhausted, tc.msg)); got != exitError {
				t.Fatalf("exit %d, want %d", got, exitError)
			}
			if !strings.Contains(w.String(), "hint: ") || !strings.Contains(w.String(), tc.want) || strings.Contains(w.String(), tc.notWant) {
				t.Fatalf("output %q: want a hint naming %q, not %q", w.String(), tc.want, tc.notWant)
			}
		})
	}
}

// TestCLI_BudgetHint: a push over registry.max_bytes (here from the environment) hints at the
// budget, not at the message size.
func TestCLI_BudgetHint(t *testing.T) {
	t.Setenv("BUFFDBD_REGISTRY_MAX_BYTES", "100KiB")
	src := filepath.Join(t.TempDir(), "w.bin")
	if err := os.WriteFile(src, bytes.Repeat([]byte("0123456789abcdef"), 20000), 0o600); err != nil {
		t.Fatal(err)
	}
	// runLine, not must: push's progress line precedes the error on stderr.
	r := runLine(t, "", "--data-dir", t.TempDir(), "model", "push", src, "--name", "org/m", "--version", "v1")
	if r.code != exitError {
		t.Fatalf("exit %d, want %d: %s", r.code, exitError, r.stderr)
	}
	if !strings.Contains(r.stderr, "hint: ") || !strings.Contains(r.stderr, "registry.max_bytes") ||
		strings.Contains(r.stderr, "max_message_bytes") {
		t.Fatalf("stderr = %q", r.stderr)
	}
}

// TestLocalLogger: a command without a daemon prints its in-process server's errors (the details
// an INTERNAL status withholds) on its own stderr, and nothing quieter unless log.level is debug.
func TestLocalLogger(t *testing.T) {
	var w bytes.Buffer
	log := localLogger(Config{}, &w)
	log.Info("payload sweep", "files", 3)
	log.Error("internal error", "method", "/buffdb.blob.Blob/Get", "err", "read payload: input/output error")
	out := w.String()
	if strings.Contains(out, "payload sweep") || !strings.Contains(out, "input/output error") || strings.Contains(out, "time=") {
		t.Fatalf("stderr = %q: want the error's detail only, without a timestamp", out)
	}
	w.Reset()
	var cfg Config
	cfg.Log.Level = "debug"
	localLogger(cfg, &w).Debug("opened store")
	if !strings.Contains(w.String(), "opened store") {
		t.Fatalf("debug level: stderr = %q", w.String())
	}

	w.Reset()
	if got := reportError(&w, status.Error(codes.Internal, "internal error; the server log has the details")); got != exitError {
		t.Fatalf("exit %d, want %d", got, exitError)
	}
	if !strings.Contains(w.String(), "printed above") {
		t.Fatalf("internal error: output %q should say where the details are without a daemon", w.String())
	}
	// The command's own failure (a missing input file) is the whole story: no log to look in.
	w.Reset()
	_, err := os.Stat(filepath.Join(t.TempDir(), "missing"))
	if got := reportError(&w, err); got != exitError || strings.Contains(w.String(), "hint:") || !strings.Contains(w.String(), "no such file") {
		t.Fatalf("local error: exit %d, output %q", got, w.String())
	}
}

// TestReportError_FetchGeneric: a fetch failure that is not one of fetch's own (interrupted, daemon
// unreachable or draining, internal) is reported as every command reports it: a clean sentence
// with its hint, not the raw gRPC status text.
func TestReportError_FetchGeneric(t *testing.T) {
	ref := huggingface.Ref{Repo: "org/m", Revision: "main"}
	for _, tc := range []struct {
		name   string
		err    error
		want   string
		status int
	}{
		{"Interrupted", status.Error(codes.Canceled, "context canceled"), "buffdbd: interrupted\n", exitError},
		{"Unreachable", status.Error(codes.Unavailable, "connection refused"), "hint: is the daemon running", exitError},
		{"Internal", status.Error(codes.Internal, "internal error; the server log has the details"), "hint: the details are in the daemon's log", exitError},
	} {
		var w bytes.Buffer
		code := reportError(&w, classifyFetchError(tc.err, ref, false))
		if code != tc.status || !strings.Contains(w.String(), tc.want) || strings.Contains(w.String(), "rpc error") {
			t.Errorf("%s: exit %d, %q; want exit %d with %q", tc.name, code, w.String(), tc.status, tc.want)
		}
	}
	// Fetch's own failures keep their exit codes.
	if code := reportError(&bytes.Buffer{}, classifyFetchError(fmt.Errorf("x: %w", huggingface.ErrRevisionNotFound), ref, false)); code != exitRevisionNotFound {
		t.Errorf("revision not found: exit %d, want %d", code, exitRevisionNotFound)
	}
}

func TestReportError_WrappedStatus(t *testing.T) {
	// A client error wrapping a daemon's status keeps its context, without grpc-go's formatting,
	// and keeps the status's exit code.
	err := fmt.Errorf("pull w.bin: %w", status.Error(codes.NotFound, "chunk abc is not stored"))
	var w bytes.Buffer
	if code := reportError(&w, err); code != exitNotFound || w.String() != "buffdbd: pull w.bin: chunk abc is not stored\n" {
		t.Fatalf("exit %d, %q", code, w.String())
	}
}

// TestExecute_JournalPriority: under journald, the final error line carries the err priority, so
// `journalctl -p warning` shows why a service stopped.
func TestExecute_JournalPriority(t *testing.T) {
	f, st := stderrFile(t)
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
	t.Setenv("BUFFDBD_REGISTRY_MAX_BYTES", "0")
	if code := execute(context.Background(), []string{"config", "check"}, strings.NewReader(""), io.Discard, f); code != exitConfig {
		t.Fatalf("exit %d", code)
	}
	got, _ := os.ReadFile(f.Name())
	if !strings.HasPrefix(string(got), "<3>buffdbd: configuration: registry.max_bytes") {
		t.Fatalf("stderr under journald = %q, want the error at priority 3", got)
	}
}

func TestExecute_CorruptDatabaseHint(t *testing.T) {
	// A damaged database file stops the store from opening; the message says what to do about it.
	for _, tc := range []struct {
		name   string
		damage func(db string) error
	}{
		{"Header", func(db string) error {
			f, err := os.OpenFile(db, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteAt(bytes.Repeat([]byte{0xA5}, 100), 0)
			return err
		}},
		{"Truncated", func(db string) error { return os.Truncate(db, 1000) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			args := []string{"kv", "set", "k", "v", "--config", os.DevNull, "--data-dir", dir}
			if code := execute(context.Background(), args, strings.NewReader(""), io.Discard, io.Discard); code != 0 {
				t.Fatalf("kv set: exit %d", code)
			}
			db := filepath.Join(dir, "buffdb.sqlite")
			os.Remove(db + "-wal")
			os.Remove(db + "-shm")
			if err := tc.damage(db); err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			code := execute(context.Background(), []string{"kv", "get", "k", "--config", os.DevNull, "--data-dir", dir},
				strings.NewReader(""), io.Discard, &stderr)
			if code != exitError || !strings.Contains(stderr.String(), "hint: the store's database file (buffdb.sqlite in the data directory) is damaged") {
				t.Fatalf("exit %d, stderr:\n%s", code, stderr.String())
			}
		})
	}
}
