package huggingface_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/huggingface"
	"github.com/buffdb/buffdbd/huggingface/hubtest"
	"github.com/buffdb/buffdbd/registry"
	"github.com/buffdb/buffdbd/store"
)

// newRegistry opens a real store and registry in a temporary directory.
func newRegistry(t testing.TB, maxBytes int64) *registry.Service {
	t.Helper()
	dir := t.TempDir()
	db, err := store.Open(context.Background(), dir, store.Options{Migrations: registry.Migrations, Durability: store.DurabilityProcess})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := registry.New(db, registry.Options{MaxBytes: maxBytes})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		reg.Close()
		var res string
		err := db.Query(context.Background(), "PRAGMA integrity_check", func(_ []string, row []any) error {
			res = fmt.Sprint(row[0])
			return nil
		})
		if err != nil || res != "ok" {
			t.Errorf("integrity_check: %q, %v", res, err)
		}
		db.Close()
	})
	return reg
}

// countingObserver records metric events.
type countingObserver struct {
	bytes, files, retries, active atomic.Int64
	results                       atomic.Value
}

func (o *countingObserver) BytesDownloaded(n int64) { o.bytes.Add(n) }
func (o *countingObserver) FileDownloaded()         { o.files.Add(1) }
func (o *countingObserver) RetryObserved(error)     { o.retries.Add(1) }
func (o *countingObserver) DownloadsActive(d int)   { o.active.Add(int64(d)) }
func (o *countingObserver) FetchDone(result string, _ time.Duration) {
	o.results.Store(result)
}

type fetchEnv struct {
	hub   *hubtest.Server
	reg   *registry.Service
	cache string
	obs   *countingObserver
}

func newFetchEnv(t testing.TB) *fetchEnv {
	t.Helper()
	return &fetchEnv{hub: newHub(t), reg: newRegistry(t, 0), cache: t.TempDir(), obs: &countingObserver{}}
}

func (e *fetchEnv) fetcher(t testing.TB, token string) *huggingface.Fetcher {
	t.Helper()
	f, err := huggingface.New(e.reg, huggingface.Options{
		Client:   huggingface.ClientOptions{Endpoint: e.hub.Endpoint(), Token: token, Backoff: fastBackoff},
		Engine:   huggingface.EngineOptions{Concurrency: 4, RangeSize: 64 << 10, Checkpoint: 16 << 10, BufferSize: 16 << 10, StallTimeout: 300 * time.Millisecond},
		CacheDir: e.cache,
		Observer: e.obs,
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (e *fetchEnv) fetch(t testing.TB, token, ref string, mod ...func(*huggingface.Request)) (huggingface.Result, error) {
	t.Helper()
	r, err := huggingface.ParseRef(ref)
	if err != nil {
		t.Fatal(err)
	}
	req := huggingface.Request{Ref: r}
	for _, m := range mod {
		m(&req)
	}
	return e.fetcher(t, token).Fetch(context.Background(), req)
}

// pullAll reads every file of name:version back through the registry.
func pullAll(t testing.TB, reg *registry.Service, name, version string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	var paths []string
	_, err := reg.Pull(context.Background(), registry.PullRequest{Ref: registry.Ref{Name: name, Version: version}}, registry.PullSink{
		Manifest: func(_ registry.ModelInfo, m *registry.Manifest) error {
			for _, f := range m.Files {
				paths = append(paths, f.Path)
				out[f.Path] = []byte{}
			}
			return nil
		},
		Data: func(file int, off int64, p []byte) error {
			b := out[paths[file]]
			if int64(len(b)) != off {
				return fmt.Errorf("%s: data at %d, have %d", paths[file], off, len(b))
			}
			out[paths[file]] = append(b, p...)
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	hubtest.Random(seed, int64(n)).ReadAt(b, 0)
	return b
}

// oddRepo is a multi-file repository with subfolders, odd filenames, LFS and regular files.
func oddRepo() map[string][]byte {
	return map[string][]byte{
		"config.json":                     []byte(`{"model_type":"bert"}`),
		"model.safetensors":               randomBytes(1, 300<<10),
		"onnx/model.onnx":                 randomBytes(2, 150<<10),
		"sub dir/weird name (1) #x?.json": []byte(`{"odd":true}`),
		"unicodé/ファイル.txt":                []byte("héllo"),
		"a+b=c&d%20e;f,g@h.bin":           randomBytes(3, 70<<10),
		"deep/a/b/c/d/tokenizer.model":    randomBytes(4, 1000),
		"empty.txt":                       {},
		"README.md":                       []byte("---\nlibrary_name: transformers\n---\n"),
		".gitattributes":                  []byte("*.safetensors filter=lfs diff=lfs merge=lfs -text\n"),
		"x.part":                          []byte("a file named like a partial download"),
	}
}

func commitFiles(hub *hubtest.Server, repo, ref string, files map[string][]byte) string {
	var specs []hubtest.FileSpec
	for p, b := range files {
		specs = append(specs, hubtest.FileSpec{Path: p, Content: hubtest.Bytes(b), LFS: len(b) > 50<<10})
	}
	return hub.Commit(repo, ref, specs)
}

func TestFetcher_Fetch(t *testing.T) {
	e := newFetchEnv(t)
	e.hub.AddRepo("org/model", hubtest.RepoOptions{LibraryName: "transformers", PipelineTag: "fill-mask", Description: "A test model"})
	files := oddRepo()
	sha := commitFiles(e.hub, "org/model", "main", files)

	var phases []string
	res, err := e.fetch(t, "", "hf:org/model", func(r *huggingface.Request) {
		r.OnProgress = func(p huggingface.Progress) {
			if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
				phases = append(phases, p.Phase)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Name != "org/model" || res.Version != sha || res.Alias != "main" || res.Files != len(files) || res.AlreadyHad {
		t.Fatalf("result = %+v, want org/model:%s alias main with %d files", res, sha, len(files))
	}
	got := pullAll(t, e.reg, "org/model", sha)
	if len(got) != len(files) {
		t.Fatalf("registry holds %d files, want %d", len(got), len(files))
	}
	for p, want := range files {
		if !bytes.Equal(got[p], want) {
			t.Fatalf("%s: pulled %d bytes, differ from the %d on the Hub", p, len(got[p]), len(want))
		}
	}
	if v, err := e.reg.ResolveAlias(context.Background(), "org/model", "main"); err != nil || v != sha {
		t.Fatalf("alias main → %q, %v; want %s", v, err, sha)
	}
	vi, err := e.reg.Show(context.Background(), registry.Ref{Name: "org/model", Version: sha})
	if err != nil {
		t.Fatal(err)
	}
	if vi.Info.Framework != "transformers" || vi.Info.Description != "A test model" || vi.Info.Parameters["hf_revision"] != "main" ||
		vi.Info.Parameters["source_url"] != e.hub.Endpoint()+"/org/model/tree/"+sha {
		t.Fatalf("model info = %+v", vi.Info)
	}
	if strings.Join(phases, ",") != "resolving,downloading,publishing,done" {
		t.Fatalf("progress phases = %v", phases)
	}
	if e.hub.CDNAuthorizations() != 0 {
		t.Fatalf("Authorization reached the CDN %d times", e.hub.CDNAuthorizations())
	}
	if n, _ := os.ReadDir(e.cache); len(n) != 0 {
		if left, _ := filepath.Glob(filepath.Join(e.cache, "org", "model", "*")); len(left) != 0 {
			t.Fatalf("staging files left after publish: %v", left)
		}
	}
	if e.obs.files.Load() != int64(len(files)) || e.obs.results.Load() != "ok" || e.obs.active.Load() != 0 {
		t.Fatalf("observer: files %d, result %v, active %d", e.obs.files.Load(), e.obs.results.Load(), e.obs.active.Load())
	}

	t.Run("OKAlreadyComplete", func(t *testing.T) {
		before := e.hub.BytesServed()
		res, err := e.fetch(t, "", "hf:org/model@main")
		if err != nil || !res.AlreadyHad {
			t.Fatalf("refetch: %+v, %v", res, err)
		}
		if d := e.hub.BytesServed() - before; d != 0 {
			t.Fatalf("refetch of a complete commit downloaded %d bytes", d)
		}
	})
	// A fetch killed after its publish committed but before it removed the staging copy leaves a
	// whole model's worth of files behind; the next fetch of that commit finds the version
	// published and must remove them, or they hold the disk forever.
	t.Run("OKAlreadyCompleteRemovesStaging", func(t *testing.T) {
		staged := filepath.Join(e.cache, "org", "model", sha, "files", "model.safetensors")
		if err := os.MkdirAll(filepath.Dir(staged), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(staged, files["model.safetensors"], 0o600); err != nil {
			t.Fatal(err)
		}
		if res, err := e.fetch(t, "", "hf:org/model@main"); err != nil || !res.AlreadyHad {
			t.Fatalf("refetch: %+v, %v", res, err)
		}
		if _, err := os.Stat(filepath.Join(e.cache, "org", "model", sha)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("staging directory of a published commit left behind: %v", err)
		}
	})
	t.Run("OKOffline", func(t *testing.T) {
		before := len(e.hub.Requests())
		res, err := e.fetch(t, "", "hf:org/model@main", func(r *huggingface.Request) { r.Offline = true })
		if err != nil || !res.Offline || res.Version != sha {
			t.Fatalf("offline: %+v, %v", res, err)
		}
		if n := len(e.hub.Requests()) - before; n != 0 {
			t.Fatalf("offline fetch made %d requests", n)
		}
	})
	t.Run("ErrOfflineNotCached", func(t *testing.T) {
		_, err := e.fetch(t, "", "hf:org/model@v2", func(r *huggingface.Request) { r.Offline = true })
		if !errors.Is(err, huggingface.ErrOffline) {
			t.Fatalf("err = %v, want ErrOffline", err)
		}
	})
	t.Run("OKHubUnreachableUsesCache", func(t *testing.T) {
		e2 := &fetchEnv{hub: e.hub, reg: e.reg, cache: t.TempDir(), obs: &countingObserver{}}
		f, err := huggingface.New(e2.reg, huggingface.Options{
			Client:   huggingface.ClientOptions{Endpoint: "http://127.0.0.1:1", Backoff: fastBackoff},
			CacheDir: e2.cache,
		})
		if err != nil {
			t.Fatal(err)
		}
		res, err := f.Fetch(context.Background(), huggingface.Request{Ref: huggingface.Ref{Repo: "org/model", Revision: "main"}})
		if err != nil || !res.Offline || res.Version != sha {
			t.Fatalf("unreachable Hub with a cached revision: %+v, %v", res, err)
		}
		_, err = f.Fetch(context.Background(), huggingface.Request{Ref: huggingface.Ref{Repo: "org/other", Revision: "main"}})
		if !errors.Is(err, huggingface.ErrOffline) {
			t.Fatalf("unreachable Hub, uncached: err = %v, want ErrOffline", err)
		}
	})
	t.Run("OKIncludeExclude", func(t *testing.T) {
		e.hub.AddRepo("org/filtered", hubtest.RepoOptions{})
		fsha := commitFiles(e.hub, "org/filtered", "main", files)
		_, err := e.fetch(t, "", "hf:org/filtered", func(r *huggingface.Request) {
			r.Include = []string{"*.json", "onnx/*"}
			r.Exclude = []string{"sub dir/*"}
		})
		if err != nil {
			t.Fatal(err)
		}
		got := pullAll(t, e.reg, "org/filtered", fsha)
		if len(got) != 2 || got["config.json"] == nil || got["onnx/model.onnx"] == nil {
			t.Fatalf("filtered fetch holds %d files: %v", len(got), keys(got))
		}
	})
}

func keys(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func TestFetcher_AliasMovesAndDedupes(t *testing.T) {
	e := newFetchEnv(t)
	e.hub.AddRepo("org/model", hubtest.RepoOptions{})
	big := randomBytes(10, 400<<10)
	v1 := commitFiles(e.hub, "org/model", "main", map[string][]byte{"model.safetensors": big, "config.json": []byte(`{"v":1}`)})
	if _, err := e.fetch(t, "", "hf:org/model"); err != nil {
		t.Fatal(err)
	}
	v2 := commitFiles(e.hub, "org/model", "main", map[string][]byte{"model.safetensors": big, "config.json": []byte(`{"v":2}`), "extra.bin": randomBytes(11, 60<<10)})
	before := e.hub.BytesServed()
	res, err := e.fetch(t, "", "hf:org/model")
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != v2 || res.Reused != 1 {
		t.Fatalf("second fetch = %+v, want version %s with 1 reused file", res, v2)
	}
	if served := e.hub.BytesServed() - before; served >= int64(len(big)) {
		t.Fatalf("second fetch downloaded %d bytes; the unchanged %d-byte LFS file should not be downloaded", served, len(big))
	}
	if v, _ := e.reg.ResolveAlias(context.Background(), "org/model", "main"); v != v2 {
		t.Fatalf("alias main → %s, want the new commit %s", v, v2)
	}
	if ok, _ := e.reg.HasVersion(context.Background(), "org/model", v1); !ok {
		t.Fatal("the old commit's version disappeared")
	}
	if got := pullAll(t, e.reg, "org/model", v2); !bytes.Equal(got["model.safetensors"], big) {
		t.Fatal("deduplicated file does not pull back byte-for-byte")
	}
	t.Run("OKPRRevision", func(t *testing.T) {
		pr := commitFiles(e.hub, "org/model", "refs/pr/1", map[string][]byte{"config.json": []byte(`{"pr":1}`)})
		res, err := e.fetch(t, "", "hf:org/model@refs/pr/1")
		if err != nil || res.Alias != "refs+pr+1" {
			t.Fatalf("PR fetch: %+v, %v", res, err)
		}
		if v, _ := e.reg.ResolveAlias(context.Background(), "org/model", "refs+pr+1"); v != pr {
			t.Fatalf("alias refs+pr+1 → %s, want %s", v, pr)
		}
	})
}

func TestFetcher_Errors(t *testing.T) {
	e := newFetchEnv(t)
	e.hub.AddRepo("org/gated", hubtest.RepoOptions{Gated: true})
	gsha := commitFiles(e.hub, "org/gated", "main", map[string][]byte{"model.safetensors": randomBytes(5, 100<<10), "config.json": []byte("{}")})
	e.hub.AddToken("hf_alice", "alice")
	e.hub.AddToken("hf_bob", "bob")
	e.hub.Grant("org/gated", "alice")

	t.Run("ErrGatedWithoutToken", func(t *testing.T) {
		if _, err := e.fetch(t, "", "hf:org/gated"); !errors.Is(err, huggingface.ErrGated) {
			t.Fatalf("err = %v, want ErrGated", err)
		}
	})
	t.Run("ErrGatedNotGranted", func(t *testing.T) {
		if _, err := e.fetch(t, "hf_bob", "hf:org/gated"); !errors.Is(err, huggingface.ErrGated) {
			t.Fatalf("err = %v, want ErrGated", err)
		}
	})
	t.Run("OKGatedWithToken", func(t *testing.T) {
		before := e.hub.CDNAuthorizations()
		res, err := e.fetch(t, "hf_alice", "hf:org/gated")
		if err != nil || res.Version != gsha {
			t.Fatalf("granted token: %+v, %v", res, err)
		}
		if e.hub.CDNAuthorizations() != before {
			t.Fatal("the token was sent to the CDN host")
		}
		sawAuth := false
		for _, r := range e.hub.Requests() {
			sawAuth = sawAuth || r.Server == "hub" && r.Auth == "Bearer hf_alice"
			if r.Server == "cdn" && r.Auth != "" {
				t.Fatalf("CDN request carried Authorization: %+v", r)
			}
		}
		if !sawAuth {
			t.Fatal("the token never reached the Hub")
		}
	})
	// A token pasted with its line end (a file edited on Windows, an env file with a trailing
	// space) is the token: header values cannot carry CR or LF, and the request failed before
	// reaching the network, retried as if offline.
	t.Run("OKTokenWithLineEnd", func(t *testing.T) {
		res, err := e.fetch(t, " hf_alice\r\n", "hf:org/gated")
		if err != nil || res.Offline || res.Version != gsha {
			t.Fatalf("token with a line end: %+v, %v", res, err)
		}
	})
	t.Run("ErrUnauthorized", func(t *testing.T) {
		e.hub.AddRepo("org/public", hubtest.RepoOptions{})
		commitFiles(e.hub, "org/public", "main", map[string][]byte{"a": []byte("a")})
		if _, err := e.fetch(t, "hf_invalid", "hf:org/public"); !errors.Is(err, huggingface.ErrUnauthorized) {
			t.Fatalf("err = %v, want ErrUnauthorized", err)
		}
	})
	t.Run("ErrRepoNotFound", func(t *testing.T) {
		if _, err := e.fetch(t, "", "hf:org/nothing"); !errors.Is(err, huggingface.ErrRepoNotFound) {
			t.Fatalf("err = %v, want ErrRepoNotFound", err)
		}
	})
	t.Run("ErrRevisionNotFound", func(t *testing.T) {
		if _, err := e.fetch(t, "hf_alice", "hf:org/gated@nope"); !errors.Is(err, huggingface.ErrRevisionNotFound) {
			t.Fatalf("err = %v, want ErrRevisionNotFound", err)
		}
	})
	t.Run("ErrEntryNotFoundNoMatch", func(t *testing.T) {
		e.hub.AddRepo("org/nogguf", hubtest.RepoOptions{})
		commitFiles(e.hub, "org/nogguf", "main", map[string][]byte{"a.bin": []byte("a")})
		_, err := e.fetch(t, "", "hf:org/nogguf", func(r *huggingface.Request) { r.Include = []string{"*.gguf"} })
		if !errors.Is(err, huggingface.ErrEntryNotFound) {
			t.Fatalf("err = %v, want ErrEntryNotFound", err)
		}
	})
	t.Run("ErrChecksumNothingPublished", func(t *testing.T) {
		e.hub.AddRepo("org/corrupt", hubtest.RepoOptions{})
		csha := commitFiles(e.hub, "org/corrupt", "main", map[string][]byte{"model.safetensors": randomBytes(6, 200<<10), "config.json": []byte("{}")})
		e.hub.Corrupt("org/corrupt", "model.safetensors")
		_, err := e.fetch(t, "", "hf:org/corrupt")
		if !errors.Is(err, huggingface.ErrChecksum) || !strings.Contains(err.Error(), "model.safetensors") {
			t.Fatalf("err = %v, want ErrChecksum naming model.safetensors", err)
		}
		if ok, _ := e.reg.HasVersion(context.Background(), "org/corrupt", csha); ok {
			t.Fatal("a version with a corrupt file was published")
		}
		if _, err := e.reg.ResolveAlias(context.Background(), "org/corrupt", "main"); !errors.Is(err, registry.ErrNotFound) {
			t.Fatalf("alias after a failed fetch: %v, want ErrNotFound", err)
		}
	})
	t.Run("ErrUnsafePath", func(t *testing.T) {
		for i, bad := range []string{"../escape.txt", "/etc/passwd", "a/../../b", `a\..\b`, "nul\x00byte", "a//b", "./x"} {
			repo := fmt.Sprintf("org/hostile%d", i)
			e.hub.AddRepo(repo, hubtest.RepoOptions{})
			sha := commitFiles(e.hub, repo, "main", map[string][]byte{bad: []byte("pwned"), "ok.txt": []byte("ok")})
			_, err := e.fetch(t, "", "hf:"+repo)
			if !errors.Is(err, huggingface.ErrUnsafePath) {
				t.Fatalf("%q: err = %v, want ErrUnsafePath", bad, err)
			}
			if ok, _ := e.reg.HasVersion(context.Background(), repo, sha); ok {
				t.Fatalf("%q: published", bad)
			}
		}
		// Nothing was written outside the cache directory.
		if _, err := os.Stat(filepath.Join(filepath.Dir(e.cache), "escape.txt")); !os.IsNotExist(err) {
			t.Fatal("a hostile filename escaped the cache directory")
		}
	})
}

func TestFetcher_RateLimitedThenOK(t *testing.T) {
	e := newFetchEnv(t)
	e.hub.AddRepo("org/model", hubtest.RepoOptions{})
	sha := commitFiles(e.hub, "org/model", "main", map[string][]byte{"config.json": []byte("{}")})
	e.hub.RateLimitNext(2, "", `"api";r=0;t=1`)
	f, err := huggingface.New(e.reg, huggingface.Options{
		Client:   huggingface.ClientOptions{Endpoint: e.hub.Endpoint(), Backoff: huggingface.Backoff{Base: time.Millisecond, Max: 5 * time.Second, Attempts: 4}},
		CacheDir: e.cache,
	})
	if err != nil {
		t.Fatal(err)
	}
	res, err := f.Fetch(context.Background(), huggingface.Request{Ref: huggingface.Ref{Repo: "org/model", Revision: "main"}})
	if err != nil || res.Version != sha {
		t.Fatalf("after 429s: %+v, %v", res, err)
	}
	reqs := e.hub.Requests()
	if gap := reqs[2].Time.Sub(reqs[1].Time); gap < time.Second {
		t.Fatalf("retried %v after a 429 whose RateLimit said t=1", gap)
	}
}

func TestFetcher_FaultsMidBody(t *testing.T) {
	e := newFetchEnv(t)
	e.hub.AddRepo("org/model", hubtest.RepoOptions{})
	files := map[string][]byte{"model.safetensors": randomBytes(7, 500<<10), "config.json": randomBytes(8, 20<<10)}
	sha := commitFiles(e.hub, "org/model", "main", files)
	e.hub.CutNext(5000, 30000, 100)
	e.hub.StallNext(2, 4000, time.Hour)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e.hub.BytesServed() < 200<<10 {
			time.Sleep(time.Millisecond)
		}
		e.hub.ExpireSignatures()
	}()
	_, err := e.fetch(t, "", "hf:org/model")
	<-done
	if err != nil {
		t.Fatal(err)
	}
	got := pullAll(t, e.reg, "org/model", sha)
	for p, want := range files {
		if !bytes.Equal(got[p], want) {
			t.Fatalf("%s differs after cuts, stalls and expired signatures", p)
		}
	}
	if e.obs.retries.Load() < 3 {
		t.Fatalf("retries observed = %d, want the cuts and stalls retried", e.obs.retries.Load())
	}
}

func TestFetcher_Concurrent(t *testing.T) {
	e := newFetchEnv(t)
	e.hub.AddRepo("org/model", hubtest.RepoOptions{})
	w := randomBytes(20, 600<<10)
	sha := commitFiles(e.hub, "org/model", "main", map[string][]byte{"model.safetensors": w})
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := e.fetch(t, "", "hf:org/model")
			errs <- err
		}()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent fetch of one commit: %v", err)
		}
	}
	if got := pullAll(t, e.reg, "org/model", sha); !bytes.Equal(got["model.safetensors"], w) {
		t.Fatal("concurrent fetches published different bytes")
	}
	if served := e.hub.BytesServed(); served >= 2*int64(len(w)) {
		t.Fatalf("three concurrent fetches downloaded %d bytes of a %d-byte file", served, len(w))
	}
}

func TestFetcher_ErrBudget(t *testing.T) {
	e := newFetchEnv(t)
	e.reg = newRegistry(t, 100<<10)
	e.hub.AddRepo("org/big", hubtest.RepoOptions{})
	sha := commitFiles(e.hub, "org/big", "main", map[string][]byte{"model.safetensors": randomBytes(21, 400<<10)})
	_, err := e.fetch(t, "", "hf:org/big")
	if !errors.Is(err, registry.ErrBudget) {
		t.Fatalf("err = %v, want registry.ErrBudget", err)
	}
	if ok, _ := e.reg.HasVersion(context.Background(), "org/big", sha); ok {
		t.Fatal("a version over budget was published")
	}
	if huggingface.ResultLabel(err) != "budget" {
		t.Fatalf("result label = %q", huggingface.ResultLabel(err))
	}
}

// cancelHalfway fetches repo's main from the throttled Hub and cancels the fetch once about half of
// size bytes were served, as a Ctrl-C or a daemon stopping would; the Hub is unthrottled after.
func cancelHalfway(t *testing.T, e *fetchEnv, repo string, size int64) {
	t.Helper()
	e.hub.Throttle(1 << 20) // 4 connections × 1 MiB/s: the cancel lands mid-file
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for e.hub.BytesServed() < size/2 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	if _, err := e.fetcher(t, "").Fetch(ctx, huggingface.Request{Ref: huggingface.Ref{Repo: repo, Revision: "main"}}); !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted fetch: err = %v, want context.Canceled", err)
	}
	e.hub.Throttle(0)
}

// TestFetcher_ResumeAfterCancel: a fetch interrupted mid-file (Ctrl-C, a daemon stopping) and run
// again downloads only what had not arrived.
func TestFetcher_ResumeAfterCancel(t *testing.T) {
	e := newFetchEnv(t)
	e.hub.AddRepo("org/model", hubtest.RepoOptions{})
	w := randomBytes(30, 2<<20)
	sha := commitFiles(e.hub, "org/model", "main", map[string][]byte{"model.safetensors": w})
	cancelHalfway(t, e, "org/model", int64(len(w)))
	if ok, _ := e.reg.HasVersion(context.Background(), "org/model", sha); ok {
		t.Fatal("an interrupted fetch published")
	}
	var first *huggingface.Progress
	var mu sync.Mutex
	res, err := e.fetch(t, "", "hf:org/model", func(r *huggingface.Request) {
		r.OnProgress = func(p huggingface.Progress) {
			mu.Lock()
			defer mu.Unlock()
			if p.Phase == "downloading" && first == nil {
				first = &p
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Downloaded >= int64(len(w))*3/4 {
		t.Fatalf("resumed fetch downloaded %d of %d bytes; about half had arrived before the cancel", res.Downloaded, len(w))
	}
	// Progress starts from the kept bytes: counted as arriving in the first interval instead, they
	// made the rate and ETA of a resumed fetch wildly optimistic.
	if kept := int64(len(w)) - res.Downloaded; first == nil || first.DoneBytes != kept {
		t.Fatalf("first progress report = %+v, want DoneBytes = the %d bytes kept", first, kept)
	}
	if got := pullAll(t, e.reg, "org/model", sha); !bytes.Equal(got["model.safetensors"], w) {
		t.Fatal("resumed file differs")
	}
}

// TestFetcher_ResumeRangelessCountsResent: a fetch resumed from a server that ignores Range
// receives the kept bytes again (they are compared, not rewritten); its result says they crossed
// the link, as they did, rather than the half that was new.
func TestFetcher_ResumeRangelessCountsResent(t *testing.T) {
	e := newFetchEnv(t)
	e.hub.AddRepo("org/model", hubtest.RepoOptions{})
	w := randomBytes(31, 2<<20)
	sha := commitFiles(e.hub, "org/model", "main", map[string][]byte{"model.safetensors": w})
	cancelHalfway(t, e, "org/model", int64(len(w)))
	e.hub.IgnoreRanges(true, true)
	res, err := e.fetch(t, "", "hf:org/model")
	if err != nil {
		t.Fatal(err)
	}
	if res.Downloaded != int64(len(w)) {
		t.Fatalf("downloaded = %d bytes, want %d: the server ignoring Range sent the whole file again", res.Downloaded, len(w))
	}
	if got := pullAll(t, e.reg, "org/model", sha); !bytes.Equal(got["model.safetensors"], w) {
		t.Fatal("resumed file differs")
	}
}

// TestFetcher_ImportsWhileDownloading: the registry chunks and stores a file as its download
// arrives, not after it; only the publish waits for the verified end.
func TestFetcher_ImportsWhileDownloading(t *testing.T) {
	e := newFetchEnv(t)
	e.hub.AddRepo("org/model", hubtest.RepoOptions{})
	w := randomBytes(40, 16<<20)
	sha := commitFiles(e.hub, "org/model", "main", map[string][]byte{"model.safetensors": w})
	// Throttled, and past 60% (10 MiB, enough for the chunker's first cut) slowed to a crawl until
	// a chunk is stored, then unthrottled: a fetch that imports only after its download stores
	// nothing during the crawl, however slow the machine.
	e.hub.Throttle(4 << 20)
	ctx := context.Background()
	stop := make(chan struct{})
	overlapped := make(chan bool, 1)
	go func() {
		seen, crawling := false, false
		defer func() { e.hub.Throttle(0); overlapped <- seen }()
		for !seen {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			served := e.hub.BytesServed()
			if !crawling && served > int64(len(w))*6/10 {
				e.hub.Throttle(512 << 10)
				crawling = true
			}
			st, err := e.reg.Stats(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			if served < int64(len(w)) && st.Chunks > 0 {
				if ok, _ := e.reg.HasVersion(ctx, "org/model", sha); ok {
					t.Error("the version was visible before the download ended")
				}
				seen = true
			}
		}
	}()
	// Ranges well above the emulator's 64 KiB burst, so the throttle governs them.
	f, err := huggingface.New(e.reg, huggingface.Options{
		Client:   huggingface.ClientOptions{Endpoint: e.hub.Endpoint(), Backoff: fastBackoff},
		Engine:   huggingface.EngineOptions{Concurrency: 4, RangeSize: 512 << 10},
		CacheDir: e.cache,
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Fetch(ctx, huggingface.Request{Ref: huggingface.Ref{Repo: "org/model", Revision: "main"}})
	close(stop)
	if err != nil {
		t.Fatal(err)
	}
	if !<-overlapped {
		t.Fatal("no chunk was stored before the CDN had served the whole file")
	}
	if got := pullAll(t, e.reg, "org/model", sha); !bytes.Equal(got["model.safetensors"], w) {
		t.Fatal("published file differs")
	}
}

// TestFetcher_StagedFileDamaged: a verified file left staged by a fetch that could not publish is
// verified again by the next fetch; if it changed on disk meanwhile it is downloaded again, and the
// import, which follows the download, never sees the damaged bytes.
func TestFetcher_StagedFileDamaged(t *testing.T) {
	e := newFetchEnv(t)
	full := e.reg
	e.reg = newRegistry(t, 100<<10)
	e.hub.AddRepo("org/big", hubtest.RepoOptions{})
	w := randomBytes(41, 400<<10)
	sha := commitFiles(e.hub, "org/big", "main", map[string][]byte{"model.safetensors": w})
	if _, err := e.fetch(t, "", "hf:org/big"); !errors.Is(err, registry.ErrBudget) {
		t.Fatalf("err = %v, want registry.ErrBudget", err)
	}
	staged := filepath.Join(e.cache, "org", "big", sha, "files", "model.safetensors")
	b, err := os.ReadFile(staged)
	if err != nil || !bytes.Equal(b, w) {
		t.Fatalf("staged file after the failed publish: %v", err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(staged, b, 0o600); err != nil {
		t.Fatal(err)
	}
	e.reg = full
	res, err := e.fetch(t, "", "hf:org/big")
	if err != nil {
		t.Fatal(err)
	}
	if res.Downloaded != int64(len(w)) {
		t.Fatalf("downloaded %d bytes, want the whole damaged file (%d) again", res.Downloaded, len(w))
	}
	if got := pullAll(t, e.reg, "org/big", sha); !bytes.Equal(got["model.safetensors"], w) {
		t.Fatal("published file differs")
	}
}

// TestFetcher_StagingLockedByAnotherProcess: a process sharing the cache directory (another data
// directory, the same cache_dir) that is fetching the same commit holds its staging directory; a
// fetch waits for it instead of writing the same partial files, then goes ahead.
func TestFetcher_StagingLockedByAnotherProcess(t *testing.T) {
	e := newFetchEnv(t)
	e.hub.AddRepo("org/model", hubtest.RepoOptions{})
	w := randomBytes(30, 300<<10)
	sha := commitFiles(e.hub, "org/model", "main", map[string][]byte{"model.safetensors": w})
	dir := filepath.Join(e.cache, "org", "model", sha)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	other, err := os.Open(dir) // flock locks belong to open files: this one stands for the other process
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(other.Fd()), syscall.LOCK_EX); err != nil {
		t.Skipf("no flock here: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err = e.fetcher(t, "").Fetch(ctx, huggingface.Request{Ref: huggingface.Ref{Repo: "org/model", Revision: "main"}})
	if !errors.Is(err, context.DeadlineExceeded) || e.hub.BytesServed() != 0 {
		t.Fatalf("fetch while another process holds the staging directory: err %v, %d bytes downloaded; want it waiting", err, e.hub.BytesServed())
	}
	other.Close()
	if _, err := e.fetch(t, "", "hf:org/model"); err != nil {
		t.Fatal(err)
	}
	if got := pullAll(t, e.reg, "org/model", sha); !bytes.Equal(got["model.safetensors"], w) {
		t.Fatal("published bytes differ")
	}
}

// TestFetcher_ResumedStagingNotStale: a fetch resuming a staging directory left long ago (a
// device offline for weeks) is not taken for abandoned by another commit's fetch finishing
// meanwhile, which prunes stale staging directories of the repository.
func TestFetcher_ResumedStagingNotStale(t *testing.T) {
	e := newFetchEnv(t)
	e.hub.AddRepo("org/model", hubtest.RepoOptions{})
	old := randomBytes(31, 512<<10)
	oldSHA := commitFiles(e.hub, "org/model", "old", map[string][]byte{"model.safetensors": old})
	commitFiles(e.hub, "org/model", "main", map[string][]byte{"config.json": []byte("{}")})
	stage := filepath.Join(e.cache, "org", "model", oldSHA)
	if err := os.MkdirAll(filepath.Join(stage, "partial"), 0o700); err != nil {
		t.Fatal(err)
	}
	weeksAgo := time.Now().Add(-30 * 24 * time.Hour)
	if err := os.Chtimes(stage, weeksAgo, weeksAgo); err != nil {
		t.Fatal(err)
	}
	// The old commit takes about a second: two 256 KiB ranges at 128 KiB/s each, after the
	// emulator's 64 KiB burst.
	e.hub.Throttle(128 << 10)
	slow, err := huggingface.New(e.reg, huggingface.Options{
		Client:   huggingface.ClientOptions{Endpoint: e.hub.Endpoint(), Backoff: fastBackoff},
		Engine:   huggingface.EngineOptions{Concurrency: 2, RangeSize: 256 << 10, BufferSize: 16 << 10},
		CacheDir: e.cache,
	})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := slow.Fetch(context.Background(), huggingface.Request{Ref: huggingface.Ref{Repo: "org/model", Revision: "old"}})
		errc <- err
	}()
	for e.hub.BytesServed() == 0 {
		time.Sleep(time.Millisecond)
	}
	if _, err := e.fetch(t, "", "hf:org/model@main"); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("resumed fetch after another commit's fetch pruned stale staging: %v", err)
	}
	if got := pullAll(t, e.reg, "org/model", oldSHA); !bytes.Equal(got["model.safetensors"], old) {
		t.Fatal("published bytes differ")
	}
}
