package huggingface

// Engine tests live inside the package because the engine is an implementation detail of Fetcher;
// the end-to-end behaviour is tested through the public API in fetch_test.go.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/huggingface/hubtest"
	"github.com/buffdb/buffdbd/registry"
)

// fastBackoff keeps retry tests quick; the production defaults are exercised by code review, not
// by waiting.
var fastBackoff = Backoff{Base: time.Millisecond, Max: 20 * time.Millisecond, Attempts: 6}

type engineFixture struct {
	hub    *hubtest.Server
	client *Client
	repo   string
	commit string
	files  []File
	data   map[string][]byte
}

func newEngineFixture(t testing.TB, specs map[string]int, lfs map[string]bool) *engineFixture {
	t.Helper()
	hub := hubtest.New()
	t.Cleanup(hub.Close)
	hub.AddRepo("org/model", hubtest.RepoOptions{})
	var fs []hubtest.FileSpec
	data := map[string][]byte{}
	seed := uint64(1)
	for p, n := range specs {
		b := make([]byte, n)
		hubtest.Random(seed, int64(n)).ReadAt(b, 0)
		seed++
		data[p] = b
		fs = append(fs, hubtest.FileSpec{Path: p, Content: hubtest.Bytes(b), LFS: lfs[p]})
	}
	commit := hub.Commit("org/model", "main", fs)
	c, err := NewClient(ClientOptions{Endpoint: hub.Endpoint(), Backoff: fastBackoff})
	if err != nil {
		t.Fatal(err)
	}
	files, err := c.ListFiles(context.Background(), "org/model", commit)
	if err != nil {
		t.Fatal(err)
	}
	return &engineFixture{hub: hub, client: c, repo: "org/model", commit: commit, files: files, data: data}
}

func (fx *engineFixture) file(t testing.TB, p string) File {
	for _, f := range fx.files {
		if f.Path == p {
			return f
		}
	}
	t.Fatalf("no file %s", p)
	return File{}
}

// run downloads one file with the given options and returns the task and error.
func (fx *engineFixture) run(t testing.TB, dir, p string, o EngineOptions) (*task, error) {
	t.Helper()
	e := newEngine(fx.client, o, nil, dir, fx.repo, fx.commit)
	tk := newTask(fx.file(t, p), p, e.finalPath(p))
	return tk, e.download(context.Background(), tk)
}

func (fx *engineFixture) assertFile(t testing.TB, tk *task, p string) {
	t.Helper()
	got, err := os.ReadFile(tk.final)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, fx.data[p]) {
		t.Fatalf("%s: downloaded %d bytes differ from the %d served", p, len(got), len(fx.data[p]))
	}
}

func TestEngine_Download(t *testing.T) {
	small := EngineOptions{RangeSize: 64 << 10, Checkpoint: 16 << 10, Concurrency: 4, BufferSize: 8 << 10}
	t.Run("OKRanges", func(t *testing.T) {
		fx := newEngineFixture(t, map[string]int{"w.bin": 1<<20 + 123}, map[string]bool{"w.bin": true})
		tk, err := fx.run(t, t.TempDir(), "w.bin", small)
		if err != nil {
			t.Fatal(err)
		}
		fx.assertFile(t, tk, "w.bin")
		ranged := 0
		for _, r := range fx.hub.Requests() {
			if r.Server == "cdn" && r.Range != "" {
				ranged++
			}
		}
		if want := len(rangeLayout(1<<20+123, 64<<10, 4)); ranged != want {
			t.Fatalf("CDN range requests = %d, want %d", ranged, want)
		}
	})
	t.Run("OKRegularFileGitSHA1", func(t *testing.T) {
		fx := newEngineFixture(t, map[string]int{"config.json": 777}, nil)
		tk, err := fx.run(t, t.TempDir(), "config.json", small)
		if err != nil {
			t.Fatal(err)
		}
		fx.assertFile(t, tk, "config.json")
	})
	t.Run("OKConnectionsCut", func(t *testing.T) {
		fx := newEngineFixture(t, map[string]int{"w.bin": 300 << 10}, map[string]bool{"w.bin": true})
		fx.hub.CutNext(1000, 20000, 5, 40000)
		tk, err := fx.run(t, t.TempDir(), "w.bin", small)
		if err != nil {
			t.Fatal(err)
		}
		fx.assertFile(t, tk, "w.bin")
	})
	t.Run("OKStall", func(t *testing.T) {
		fx := newEngineFixture(t, map[string]int{"w.bin": 200 << 10}, map[string]bool{"w.bin": true})
		// The server would stall for an hour; the engine must notice and retry instead.
		fx.hub.StallNext(2, 10000, time.Hour)
		o := small
		o.StallTimeout = 200 * time.Millisecond
		tk, err := fx.run(t, t.TempDir(), "w.bin", o)
		if err != nil {
			t.Fatal(err)
		}
		fx.assertFile(t, tk, "w.bin")
	})
	t.Run("OKExpiredSignature", func(t *testing.T) {
		fx := newEngineFixture(t, map[string]int{"w.bin": 256 << 10}, map[string]bool{"w.bin": true})
		fx.hub.StallNext(1, 20000, 300*time.Millisecond)
		o := small
		o.Concurrency = 1
		e := newEngine(fx.client, o, nil, t.TempDir(), fx.repo, fx.commit)
		tk := newTask(fx.file(t, "w.bin"), "w.bin", e.finalPath("w.bin"))
		// Expire every signature while the first range is in flight: later ranges get 403.
		go func() {
			for fx.hub.BytesServed() < 20000 {
				time.Sleep(time.Millisecond)
			}
			fx.hub.ExpireSignatures()
		}()
		if err := e.download(context.Background(), tk); err != nil {
			t.Fatal(err)
		}
		fx.assertFile(t, tk, "w.bin")
		resolves := 0
		for _, r := range fx.hub.Requests() {
			if r.Server == "hub" && strings.Contains(r.Path, "/resolve/") {
				resolves++
			}
		}
		if resolves < 2 {
			t.Fatalf("resolve requests = %d, want a re-resolution after the 403", resolves)
		}
	})
	t.Run("OKServerErrorsThenSuccess", func(t *testing.T) {
		fx := newEngineFixture(t, map[string]int{"w.bin": 100 << 10}, map[string]bool{"w.bin": true})
		fx.hub.StatusNext(503, 500, 429)
		tk, err := fx.run(t, t.TempDir(), "w.bin", small)
		if err != nil {
			t.Fatal(err)
		}
		fx.assertFile(t, tk, "w.bin")
	})
	t.Run("ErrChecksumLFS", func(t *testing.T) {
		fx := newEngineFixture(t, map[string]int{"w.bin": 100 << 10}, map[string]bool{"w.bin": true})
		fx.hub.Corrupt("org/model", "w.bin")
		dir := t.TempDir()
		tk, err := fx.run(t, dir, "w.bin", small)
		if !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), "w.bin") {
			t.Fatalf("err = %v, want ErrChecksum naming w.bin", err)
		}
		if _, err := os.Stat(tk.final); !os.IsNotExist(err) {
			t.Fatalf("corrupt file left at its final path: %v", err)
		}
		part, jour := newEngine(fx.client, small, nil, dir, fx.repo, fx.commit).partialPaths("w.bin")
		for _, p := range []string{part, jour} {
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Fatalf("corrupt partial state %s kept (a resume would trust it): %v", p, err)
			}
		}
	})
	t.Run("ErrChecksumRegular", func(t *testing.T) {
		fx := newEngineFixture(t, map[string]int{"config.json": 5000}, nil)
		fx.hub.Corrupt("org/model", "config.json")
		if _, err := fx.run(t, t.TempDir(), "config.json", small); !errors.Is(err, ErrChecksum) {
			t.Fatalf("err = %v, want ErrChecksum", err)
		}
	})
	t.Run("OKMaxRate", func(t *testing.T) {
		fx := newEngineFixture(t, map[string]int{"w.bin": 64 << 10}, map[string]bool{"w.bin": true})
		o := small
		o.MaxRate = 256 << 10
		e := newEngine(fx.client, o, nil, t.TempDir(), fx.repo, fx.commit)
		if e.limiter == nil || int64(e.limiter.Limit()) != o.MaxRate {
			t.Fatalf("limiter = %v, want %d B/s", e.limiter, o.MaxRate)
		}
		tk := newTask(fx.file(t, "w.bin"), "w.bin", e.finalPath("w.bin"))
		if err := e.download(context.Background(), tk); err != nil {
			t.Fatal(err)
		}
		fx.assertFile(t, tk, "w.bin")
	})
}

// Resume after SIGKILL: the test re-executes its own binary as a child that downloads a throttled
// file, kills it with SIGKILL mid-file, then finishes the download in-process and checks that the
// bytes served twice stay within what the journal could not vouch for.
const killChildEnv = "BUFFDBD_HF_KILL_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(killChildEnv); spec != "" {
		os.Exit(killChild(spec))
	}
	if spec := os.Getenv(benchChildEnv); spec != "" {
		os.Exit(benchChild(spec))
	}
	os.Exit(m.Run())
}

// killChild runs "endpoint|commit|dir|size": download w.bin and hang around until killed.
func killChild(spec string) int {
	parts := strings.Split(spec, "|")
	c, err := NewClient(ClientOptions{Endpoint: parts[0], Backoff: fastBackoff})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	files, err := c.ListFiles(context.Background(), "org/model", parts[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	e := newEngine(c, killOpts, nil, parts[2], "org/model", parts[1])
	tk := newTask(files[0], files[0].Path, e.finalPath(files[0].Path))
	if err := e.download(context.Background(), tk); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

var killOpts = EngineOptions{RangeSize: 256 << 10, Checkpoint: 32 << 10, Concurrency: 4, BufferSize: 16 << 10}

func TestEngine_ResumeAfterSIGKILL(t *testing.T) {
	const size = 4 << 20
	fx := newEngineFixture(t, map[string]int{"w.bin": size}, map[string]bool{"w.bin": true})
	// Throttled so the kill lands mid-file whatever the machine's speed: 4 connections at
	// 1 MiB/s each take about a second for the whole file.
	fx.hub.Throttle(1 << 20)
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), killChildEnv+"="+strings.Join([]string{fx.hub.Endpoint(), fx.commit, dir, strconv.Itoa(size)}, "|"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for fx.hub.BytesServed() < size/2 {
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	err := cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
		t.Fatalf("child was not killed mid-download (err %v, stderr %s)", err, stderr.String())
	}
	servedBefore := fx.hub.BytesServed()
	fx.hub.Throttle(0)
	tk, err := fx.run(t, dir, "w.bin", killOpts)
	if err != nil {
		t.Fatal(err)
	}
	fx.assertFile(t, tk, "w.bin")
	redownloaded := fx.hub.BytesServed() - servedBefore - (size - servedBefore)
	// Lost at most: per connection, the bytes after the last checkpoint plus one buffer that
	// was on the wire, plus whatever the kernel had in socket buffers (served but never read).
	limit := int64(killOpts.Concurrency) * (killOpts.Checkpoint + int64(killOpts.BufferSize) + 256<<10)
	if redownloaded > limit {
		t.Fatalf("re-downloaded %d bytes after the kill, want ≤ %d (served %d before the kill of a %d-byte file)", redownloaded, limit, servedBefore, size)
	}
	t.Logf("served %d before SIGKILL, re-downloaded %d", servedBefore, redownloaded)
}

// FuzzStagingPaths: whatever the Hub lists, a path the fetcher accepts (registry.CleanPath) maps
// to a final and a partial file strictly inside the commit's staging directory.
func FuzzStagingPaths(f *testing.F) {
	for _, s := range []string{"a/b.bin", "../x", "/etc/passwd", "a/../../b", `a\b`, "x\x00y", "ok.txt", "a//b", "./a", "é/ü"} {
		f.Add(s)
	}
	e := newEngine(nil, EngineOptions{}, nil, "/stage/org/model/0123", "org/model", "0123")
	f.Fuzz(func(t *testing.T, p string) {
		clean, err := registry.CleanPath(p)
		if err != nil {
			return
		}
		part, jour := e.partialPaths(clean)
		for _, q := range []string{e.finalPath(clean), part, jour} {
			rel, err := filepath.Rel(e.dir, q)
			if err != nil || rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) || strings.ContainsRune(q, 0) {
				t.Fatalf("path %q maps to %q outside %s", p, q, e.dir)
			}
		}
	})
}

func TestEngine_ShortObject(t *testing.T) {
	small := EngineOptions{RangeSize: 64 << 10, Checkpoint: 16 << 10, Concurrency: 4, BufferSize: 8 << 10}
	for name, n := range map[string]int64{"ErrChecksumRangeBeyondEnd": 64 << 10, "ErrChecksumShortRange": 100 << 10} {
		t.Run(name, func(t *testing.T) {
			fx := newEngineFixture(t, map[string]int{"w.bin": 256 << 10}, map[string]bool{"w.bin": true})
			fx.hub.Shorten("org/model", "w.bin", n)
			_, err := fx.run(t, t.TempDir(), "w.bin", small)
			if !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), "w.bin") {
				t.Fatalf("err = %v, want ErrChecksum naming w.bin", err)
			}
		})
	}
	// A whole-file answer (no Range asked, or a server ignoring it) announcing fewer bytes than
	// listed: the object is short, which no retry changes.
	t.Run("ErrChecksumWholeBodyShort", func(t *testing.T) {
		fx := newEngineFixture(t, map[string]int{"w.bin": 60 << 10}, map[string]bool{"w.bin": true})
		fx.hub.Shorten("org/model", "w.bin", 10<<10)
		o := small
		o.Concurrency = 1 // one range: the whole file is asked for, without Range
		_, err := fx.run(t, t.TempDir(), "w.bin", o)
		if !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), "w.bin") {
			t.Fatalf("err = %v, want ErrChecksum naming w.bin", err)
		}
	})
	t.Run("ErrOfflineEndlessCuts", func(t *testing.T) {
		fx := newEngineFixture(t, map[string]int{"w.bin": 64 << 10}, map[string]bool{"w.bin": true})
		fx.hub.CutNext(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
		o := small
		o.Concurrency = 1
		if _, err := fx.run(t, t.TempDir(), "w.bin", o); !errors.Is(err, ErrOffline) {
			t.Fatalf("err = %v, want ErrOffline after the retry budget", err)
		}
	})
}

func TestEngine_JournalWithoutPartial(t *testing.T) {
	t.Run("OKPartialRemoved", func(t *testing.T) { testJournalWithoutPartial(t, os.Remove) })
	// A partial file cut short (copied with a tool that stops early, a filesystem repaired after a
	// crash) no longer holds the bytes the journal vouches for: they are downloaded again, not
	// read back as zeros that fail verification.
	t.Run("OKPartialTruncated", func(t *testing.T) {
		testJournalWithoutPartial(t, func(p string) error { return os.Truncate(p, 10<<10) })
	})
}

func testJournalWithoutPartial(t *testing.T, damage func(part string) error) {
	o := EngineOptions{RangeSize: 64 << 10, Concurrency: 2, BufferSize: 8 << 10}
	fx := newEngineFixture(t, map[string]int{"w.bin": 200 << 10}, map[string]bool{"w.bin": true})
	dir := t.TempDir()
	e := newEngine(fx.client, o, nil, dir, fx.repo, fx.commit)
	part, _ := e.partialPaths("w.bin")
	// A complete run leaves nothing; simulate an interrupted one by cancelling after some bytes.
	// Both connections stall after 40 KiB, so the cancel cannot come too late however slowly
	// this goroutine is scheduled (a throttle left the race to the machine's load).
	ctx, cancel := context.WithCancel(context.Background())
	fx.hub.StallNext(2, 40<<10, time.Hour)
	go func() {
		for fx.hub.BytesServed() < 80<<10 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	tk := newTask(fx.file(t, "w.bin"), "w.bin", e.finalPath("w.bin"))
	if err := e.download(ctx, tk); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if err := damage(part); err != nil {
		t.Fatal(err)
	}
	tk, err := fx.run(t, dir, "w.bin", o)
	if err != nil {
		t.Fatalf("after the partial file was damaged: %v", err)
	}
	fx.assertFile(t, tk, "w.bin")
}

func TestRangeLayout(t *testing.T) {
	for _, tc := range []struct{ size, rs, ramp int64 }{{0, 10, 4}, {1, 10, 4}, {100, 10, 4}, {1<<20 + 123, 64 << 10, 4}, {5, 100, 16}, {1 << 30, 32 << 20, 16}} {
		l := rangeLayout(tc.size, tc.rs, tc.ramp)
		var next int64
		for i, r := range l {
			if r[0] != next || r[1] <= r[0] || r[1]-r[0] > tc.rs {
				t.Fatalf("%+v: range %d = %v after %d", tc, i, r, next)
			}
			if i > 0 && int64(i) < tc.ramp && r[1] < tc.size && r[1]-r[0] < l[i-1][1]-l[i-1][0] {
				t.Fatalf("%+v: ramp range %d shrinks", tc, i)
			}
			next = r[1]
		}
		if next != tc.size {
			t.Fatalf("%+v: ranges cover %d bytes", tc, next)
		}
		// The tail tapers so connections run out of work together: past the ramp no range is
		// bigger than the one before it, except a final sliver merged into the last range.
		for i := int(tc.ramp); i+2 < len(l); i++ {
			if got, prev := l[i+1][1]-l[i+1][0], l[i][1]-l[i][0]; got > prev {
				t.Fatalf("%+v: tail range %d is %d bytes after %d", tc, i+1, got, prev)
			}
		}
		if n := len(l); tc.size >= 1<<30 && l[n-1][1]-l[n-1][0] > 2<<20 {
			t.Fatalf("%+v: last range is %d bytes, want the tail tapered to at most 2 MiB", tc, l[n-1][1]-l[n-1][0])
		}
	}
}

// TestFollower: a follower yields the file byte for byte whenever it joins the download (before,
// during, after, or of a file already verified on disk), takes the hasher's blocks when it joins
// early, and ends with the download's error, not io.EOF, when the download fails.
func TestFollower(t *testing.T) {
	const size = 3<<20 + 123
	o := EngineOptions{RangeSize: 256 << 10, Concurrency: 4}
	for _, when := range []string{"before", "during", "after", "verified", "corrupt"} {
		t.Run(when, func(t *testing.T) {
			fx := newEngineFixture(t, map[string]int{"w.bin": size}, map[string]bool{"w.bin": true})
			dir := t.TempDir()
			e := newEngine(fx.client, o, nil, dir, fx.repo, fx.commit)
			switch when {
			case "during":
				fx.hub.Throttle(4 << 20)
			case "verified":
				if _, err := fx.run(t, dir, "w.bin", o); err != nil {
					t.Fatal(err)
				}
			case "corrupt":
				fx.hub.Corrupt(fx.repo, "w.bin")
			}
			tk := newTask(fx.file(t, "w.bin"), "w.bin", e.finalPath("w.bin"))
			var fl *follower
			if when == "before" {
				fl = follow(context.Background(), tk)
			}
			done := make(chan error, 1)
			go func() {
				err := e.download(context.Background(), tk)
				tk.finish(err)
				done <- err
			}()
			var dlErr error
			switch when {
			case "during":
				for fx.hub.BytesServed() < size/3 {
					time.Sleep(time.Millisecond)
				}
			case "after", "verified":
				if dlErr = <-done; dlErr != nil {
					t.Fatal(dlErr)
				}
			}
			if fl == nil {
				fl = follow(context.Background(), tk)
			}
			got, err := io.ReadAll(fl)
			fl.Close()
			if when != "after" && when != "verified" {
				dlErr = <-done
			}
			if when == "corrupt" {
				if !errors.Is(err, ErrChecksum) || !errors.Is(dlErr, ErrChecksum) {
					t.Fatalf("follower: %v; download: %v; want both ErrChecksum", err, dlErr)
				}
				return
			}
			if err != nil || dlErr != nil {
				t.Fatalf("follower: %v; download: %v", err, dlErr)
			}
			if !bytes.Equal(got, fx.data["w.bin"]) {
				t.Fatalf("follower read %d bytes, not the %d of the file", len(got), size)
			}
			passed := tk.tee.passed
			switch when {
			case "before":
				if passed < size/2 {
					t.Fatalf("the hasher passed on %d bytes to a follower that joined first, want most of %d", passed, size)
				}
			case "after", "verified":
				if passed != 0 {
					t.Fatalf("the hasher passed on %d bytes to a follower that joined after it finished", passed)
				}
			}
		})
	}
}
