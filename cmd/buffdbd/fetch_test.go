package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/vbauerster/mpb/v8"

	"github.com/buffdb/buffdbd/huggingface"
	"github.com/buffdb/buffdbd/huggingface/hubtest"
)

// runCLI runs buffdbd in-process with args and returns the exit code and outputs.
func runCLI(t testing.TB, args ...string) (int, string, string) {
	t.Helper()
	var out, errw bytes.Buffer
	code := execute(context.Background(), args, strings.NewReader(""), &out, &errw)
	return code, out.String(), errw.String()
}

func TestFetchCmd(t *testing.T) {
	for _, k := range []string{"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "BUFFDBD_CONFIG"} {
		t.Setenv(k, "")
	}
	hub := hubtest.New()
	t.Cleanup(hub.Close)
	hub.AddRepo("org/model", hubtest.RepoOptions{LibraryName: "transformers"})
	weights := make([]byte, 200<<10)
	hubtest.Random(1, int64(len(weights))).ReadAt(weights, 0)
	sha := hub.Commit("org/model", "main", []hubtest.FileSpec{
		{Path: "model.safetensors", Content: hubtest.Bytes(weights), LFS: true},
		{Path: "config.json", Content: hubtest.Bytes([]byte(`{}`))},
	})
	hub.AddRepo("org/gated", hubtest.RepoOptions{Gated: true})
	hub.Commit("org/gated", "main", []hubtest.FileSpec{{Path: "a", Content: hubtest.Bytes([]byte("a"))}})
	hub.AddRepo("org/corrupt", hubtest.RepoOptions{})
	hub.Commit("org/corrupt", "main", []hubtest.FileSpec{{Path: "w.bin", Content: hubtest.Random(2, 100<<10), LFS: true}})
	hub.Corrupt("org/corrupt", "w.bin")
	// Listings that claim an exabyte-sized file (no filesystem holds it) and a git blob id that is
	// not hex.
	hub.AddRepo("org/huge", hubtest.RepoOptions{})
	hub.Commit("org/huge", "main", []hubtest.FileSpec{{Path: "w.bin", Content: hubtest.Random(3, 10<<10), LFS: true}})
	hub.EditTree(func(es []hubtest.TreeEntry) []hubtest.TreeEntry {
		for i := range es {
			if es[i].LFS != nil && es[i].Size == 10<<10 {
				es[i].Size, es[i].LFS.Size = 1<<62, 1<<62
			}
			if es[i].Path == "bad-oid.txt" {
				es[i].OID = strings.Repeat("g", 40)
			}
		}
		return es
	})
	hub.AddRepo("org/badhash", hubtest.RepoOptions{})
	hub.Commit("org/badhash", "main", []hubtest.FileSpec{{Path: "bad-oid.txt", Content: hubtest.Bytes([]byte("x"))}})
	data := t.TempDir()
	base := []string{"--data-dir", data, "--endpoint", hub.Endpoint()}

	t.Run("OK", func(t *testing.T) {
		code, out, errw := runCLI(t, append([]string{"fetch", "hf:org/model"}, base...)...)
		if code != exitOK || !strings.Contains(out, "org/model:"+sha) || !strings.Contains(out, "alias org/model@main") {
			t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errw)
		}
	})
	t.Run("OKJSONUpToDate", func(t *testing.T) {
		code, out, errw := runCLI(t, append([]string{"fetch", "hf:org/model@main", "--json"}, base...)...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		var last map[string]any
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || code != exitOK {
			t.Fatalf("exit %d, last line %q: %v (stderr %s)", code, lines[len(lines)-1], err, errw)
		}
		if last["event"] != "result" || last["version"] != sha || last["already_had"] != true {
			t.Fatalf("result line = %v", last)
		}
	})
	t.Run("OKOffline", func(t *testing.T) {
		code, out, errw := runCLI(t, "fetch", "hf:org/model", "--offline", "--data-dir", data, "--endpoint", "http://127.0.0.1:1")
		if code != exitOK || !strings.Contains(out, sha) {
			t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errw)
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		code int
		hint string
	}{
		{"ErrRepoNotFound", []string{"hf:org/nope"}, exitRepoNotFound, "--token"},
		{"ErrRevisionNotFound", []string{"hf:org/model@nope"}, exitRevisionNotFound, "branch, tag or commit"},
		{"ErrGated", []string{"hf:org/gated"}, exitGated, "granted access"},
		{"ErrUnauthorized", []string{"hf:org/model", "--token", "hf_bad"}, exitUnauthorized, "settings/tokens"},
		{"ErrChecksum", []string{"hf:org/corrupt"}, exitChecksum, "nothing was published"},
		{"ErrNoMatch", []string{"hf:org/corrupt", "--include", "*.gguf"}, exitFileNotFound, "--include"},
		{"ErrOfflineNotCached", []string{"hf:org/other", "--offline"}, exitOffline, "network"},
		{"ErrNoSpace", []string{"hf:org/huge"}, exitNoSpace, "free space"},
		{"ErrProtocol", []string{"hf:org/badhash"}, exitProtocol, "proxy"},
		{"ErrUsageRef", []string{"hf:../etc"}, exitUsage, ""},
		{"ErrUsageRate", []string{"hf:org/model", "--max-rate", "fast"}, exitUsage, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errw := runCLI(t, append(append([]string{"fetch"}, tc.args...), base...)...)
			if code != tc.code || !strings.Contains(errw, tc.hint) || strings.Contains(errw, "goroutine") {
				t.Fatalf("exit %d, want %d with hint %q\nstdout: %s\nstderr: %s", code, tc.code, tc.hint, out, errw)
			}
		})
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]int64{"": 0, "5MB": 5e6, "500KiB": 500 << 10, "1.5M/s": 1.5e6, "2GiB": 2 << 30, "4096": 4096} {
		got, err := parseRate(in)
		if err != nil || got != want {
			t.Fatalf("parseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"fast", "-5MB", "10"} {
		if _, err := parseRate(bad); err == nil {
			t.Fatalf("parseRate(%q) accepted", bad)
		}
	}
}

// TestFetchCmd_WithDaemon: with a daemon serving the data directory, fetch goes through its Fetch
// RPC (the daemon holds the store), and the result is visible to the daemon's other clients.
func TestFetchCmd_WithDaemon(t *testing.T) {
	for _, k := range []string{"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "BUFFDBD_CONFIG"} {
		t.Setenv(k, "")
	}
	hub := hubtest.New()
	t.Cleanup(hub.Close)
	hub.AddRepo("org/gated", hubtest.RepoOptions{Gated: true})
	sha := hub.Commit("org/gated", "v1", []hubtest.FileSpec{{Path: "w.bin", Content: hubtest.Random(3, 150<<10), LFS: true}})
	hub.AddToken("hf_ok", "alice")
	hub.Grant("org/gated", "alice")
	dir := t.TempDir()
	startDaemon(t, dir)
	base := []string{"--data-dir", dir, "--endpoint", hub.Endpoint()}
	if code, out, errw := runCLI(t, append([]string{"fetch", "hf:org/gated@v1"}, base...)...); code != exitGated {
		t.Fatalf("without a token: exit %d, want %d\n%s%s", code, exitGated, out, errw)
	}
	t.Setenv("HF_TOKEN", "hf_ok")
	if code, out, errw := runCLI(t, append([]string{"fetch", "hf:org/gated@v1"}, base...)...); code != exitOK || !strings.Contains(out, sha) {
		t.Fatalf("with HF_TOKEN: exit %d\n%s%s", code, out, errw)
	}
	if code, out, errw := runCLI(t, "--data-dir", dir, "model", "show", "org/gated@v1"); code != exitOK || !strings.Contains(out, sha) {
		t.Fatalf("model show through the daemon: exit %d\n%s%s", code, out, errw)
	}
	// The command's huggingface.* configuration reaches the daemon: with --huggingface-offline an
	// uncached revision fails offline at once (the daemon would otherwise go to the network), and
	// --huggingface-endpoint is where it fetches.
	served := hub.BytesServed()
	hub.Commit("org/gated", "v2", []hubtest.FileSpec{{Path: "w.bin", Content: hubtest.Random(4, 50<<10), LFS: true}})
	if code, out, errw := runCLI(t, "--data-dir", dir, "--huggingface-endpoint", hub.Endpoint(), "--huggingface-offline", "fetch", "hf:org/gated@v2"); code != exitOffline || hub.BytesServed() != served {
		t.Fatalf("--huggingface-offline through the daemon: exit %d, %d bytes served\n%s%s", code, hub.BytesServed()-served, out, errw)
	}
	if code, out, errw := runCLI(t, "--data-dir", dir, "--huggingface-endpoint", hub.Endpoint(), "fetch", "hf:org/gated@v2"); code != exitOK {
		t.Fatalf("--huggingface-endpoint through the daemon: exit %d\n%s%s", code, out, errw)
	}
}

// TestFetchCmd_DaemonTokenStaysOnItsEndpoint: the daemon's own huggingface.token is a secret of its
// operator, meant for its huggingface.endpoint. A client that asks the daemon to fetch from another
// endpoint (any host it likes) must not receive it there; with its own token, that one is used.
func TestFetchCmd_DaemonTokenStaysOnItsEndpoint(t *testing.T) {
	for _, k := range []string{"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "BUFFDBD_CONFIG"} {
		t.Setenv(k, "")
	}
	hubs := map[string]*hubtest.Server{}
	for _, name := range []string{"configured", "other"} {
		hub := hubtest.New()
		t.Cleanup(hub.Close)
		hub.AddRepo("org/model", hubtest.RepoOptions{})
		hub.Commit("org/model", name, []hubtest.FileSpec{{Path: "w.bin", Content: hubtest.Random(5, 20<<10), LFS: true}})
		hub.AddToken("hf_operator", "operator")
		hub.AddToken("hf_client", "client")
		hubs[name] = hub
	}
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.DataDir = dir
	cfg.GRPC.Listen = []string{"127.0.0.1:0"}
	cfg.HTTP.Listen = ""
	cfg.HuggingFace.Endpoint = hubs["configured"].Endpoint() + "/" // a trailing slash is the same endpoint
	cfg.HuggingFace.Token = "hf_operator"
	m := NewMain(cfg, nil)
	if err := m.Open(context.Background()); err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { m.Close(context.Background()) })

	tokensSeen := func(hub *hubtest.Server) map[string]bool {
		seen := map[string]bool{}
		for _, r := range hub.Requests() {
			seen[r.Auth] = true
		}
		return seen
	}
	if code, out, errw := runCLI(t, "--data-dir", dir, "fetch", "hf:org/model@configured"); code != exitOK {
		t.Fatalf("fetch from the configured endpoint: exit %d\n%s%s", code, out, errw)
	}
	if seen := tokensSeen(hubs["configured"]); !seen["Bearer hf_operator"] {
		t.Fatalf("the configured endpoint saw Authorization %v, want the daemon's token", seen)
	}
	if code, out, errw := runCLI(t, "--data-dir", dir, "fetch", "hf:org/model@other", "--endpoint", hubs["other"].Endpoint()); code != exitOK {
		t.Fatalf("fetch from another endpoint: exit %d\n%s%s", code, out, errw)
	}
	if seen := tokensSeen(hubs["other"]); len(seen) != 1 || !seen[""] {
		t.Fatalf("another endpoint saw Authorization %v; the daemon's token must stay with its endpoint", seen)
	}
	if code, out, errw := runCLI(t, "--data-dir", dir, "fetch", "hf:org/model@other", "--endpoint", hubs["other"].Endpoint(), "--token", "hf_client"); code != exitOK {
		t.Fatalf("fetch from another endpoint with a token: exit %d\n%s%s", code, out, errw)
	}
	if seen := tokensSeen(hubs["other"]); seen["Bearer hf_operator"] || !seen["Bearer hf_client"] {
		t.Fatalf("another endpoint saw Authorization %v, want only the client's token", seen)
	}
}

// TestFetchProgress_ManySmallFiles: on a terminal, a repository of thousands of small files shows
// lines only for the files being downloaded, not one for every file still waiting its turn.
func TestFetchProgress_ManySmallFiles(t *testing.T) {
	var term bytes.Buffer
	fp := newFetchProgress(&term, io.Discard, false)
	fp.tty, fp.p = true, mpb.New(mpb.WithOutput(&term), mpb.WithWidth(80))
	p := huggingface.Progress{Phase: "downloading", Repo: "org/model", Revision: "main", TotalBytes: 3000 * 100}
	for i := range 3000 {
		f := huggingface.FileProgress{Path: fmt.Sprintf("shards/f%04d.txt", i), Size: 100}
		switch {
		case i < 100:
			f.Done = 100 // done
		case i < 108:
			f.Done = 50 // downloading
		}
		p.Files = append(p.Files, f)
		p.DoneBytes += f.Done
	}
	fp.update(p)
	live := 0
	for _, b := range fp.bars {
		if !b.Completed() {
			live++
		}
	}
	fp.finish()
	if live > maxFileBars {
		t.Fatalf("%d per-file progress lines for 8 files downloading, want at most %d", live, maxFileBars)
	}
}

// TestFetchCmd_RateLimitCapsAllFetches: huggingface.rate_limit leaves the device's link to its
// other traffic, so it caps the daemon's fetches together, and a request's --max-rate (here higher)
// cannot lift it. Two fetches of 1 MiB at a 512 KiB/s cap need at least 2 s once the 1 MiB burst is
// spent; with a limit per fetch (or the request's) each fits in its own burst and both finish at once.
func TestFetchCmd_RateLimitCapsAllFetches(t *testing.T) {
	for _, k := range []string{"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "BUFFDBD_CONFIG"} {
		t.Setenv(k, "")
	}
	hub := hubtest.New()
	t.Cleanup(hub.Close)
	for i, repo := range []string{"org/a", "org/b"} {
		hub.AddRepo(repo, hubtest.RepoOptions{})
		hub.Commit(repo, "main", []hubtest.FileSpec{{Path: "w.bin", Content: hubtest.Random(uint64(10+i), 1<<20), LFS: true}})
	}
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.DataDir = dir
	cfg.GRPC.Listen = []string{"127.0.0.1:0"}
	cfg.HTTP.Listen = ""
	cfg.HuggingFace.Endpoint = hub.Endpoint()
	cfg.HuggingFace.RateLimit = 512 << 10
	m := NewMain(cfg, nil)
	if err := m.Open(context.Background()); err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { m.Close(context.Background()) })

	start := time.Now()
	errs := make(chan string, 2)
	for _, args := range [][]string{{"hf:org/a"}, {"hf:org/b", "--max-rate", "100MB"}} {
		go func() {
			code, out, errw := runCLI(t, append([]string{"--data-dir", dir, "fetch"}, args...)...)
			if code != exitOK {
				errs <- fmt.Sprintf("fetch %v: exit %d\n%s%s", args, code, out, errw)
				return
			}
			errs <- ""
		}()
	}
	for range 2 {
		if msg := <-errs; msg != "" {
			t.Fatal(msg)
		}
	}
	if took := time.Since(start); took < 1500*time.Millisecond {
		t.Fatalf("2 MiB fetched in %v under a 512 KiB/s cap with a 1 MiB burst; want ≥ 2 s", took)
	}
}

// TestFetchCmd_RangelessProxy: through a mirror that ignores byte ranges the fetch succeeds, and
// says once per file, in plain output and in --json progress, that the file uses one connection.
func TestFetchCmd_RangelessProxy(t *testing.T) {
	for _, k := range []string{"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "BUFFDBD_CONFIG"} {
		t.Setenv(k, "")
	}
	hub := hubtest.New()
	t.Cleanup(hub.Close)
	hub.AddRepo("org/model", hubtest.RepoOptions{})
	hub.AddRepo("org/other", hubtest.RepoOptions{})
	// 3 MiB splits into several ranges at the default concurrency.
	hub.Commit("org/model", "main", []hubtest.FileSpec{{Path: "model.safetensors", Content: hubtest.Random(1, 3<<20), LFS: true}})
	hub.Commit("org/other", "main", []hubtest.FileSpec{{Path: "model.safetensors", Content: hubtest.Random(2, 3<<20), LFS: true}})
	hub.IgnoreRanges(true, false)
	base := []string{"--data-dir", t.TempDir(), "--endpoint", hub.Endpoint()}
	t.Run("OKPlain", func(t *testing.T) {
		code, out, errw := runCLI(t, append([]string{"fetch", "hf:org/model"}, base...)...)
		if code != exitOK {
			t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errw)
		}
		if n := strings.Count(errw, "ignores byte ranges: model.safetensors downloads over a single connection"); n != 1 {
			t.Fatalf("the single-stream note appears %d times, want once:\n%s", n, errw)
		}
	})
	t.Run("OKJSON", func(t *testing.T) {
		code, out, errw := runCLI(t, append([]string{"fetch", "hf:org/other", "--json"}, base...)...)
		if code != exitOK {
			t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errw)
		}
		if !strings.Contains(out, `"single_stream":true`) {
			t.Fatalf("no progress line marks the file single_stream:\n%s", out)
		}
	})
}
