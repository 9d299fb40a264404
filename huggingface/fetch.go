package huggingface

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/buffdb/buffdbd/registry"
)

// Registry is what the Fetcher needs from the model registry; *registry.Service implements it.
type Registry interface {
	Import(ctx context.Context, req registry.ImportRequest) error
	HasContent(ctx context.Context, sum [32]byte) (bool, error)
	HasVersion(ctx context.Context, name, version string) (bool, error)
	ResolveAlias(ctx context.Context, name, alias string) (string, error)
	SetAlias(ctx context.Context, name, alias, version string) (string, error)
}

// Options configure a Fetcher.
type Options struct {
	Client ClientOptions
	Engine EngineOptions
	// CacheDir holds partial and verified files until they are imported:
	// <CacheDir>/<repo>/<commit>/{partial,files}/. Required.
	CacheDir string
	Observer Observer
	Logger   *slog.Logger
	// Offline makes every fetch resolve from the registry only, as Request.Offline does (a device
	// configured never to contact the Hub).
	Offline bool
	// ProgressInterval is how often Request.OnProgress is called while downloading. Default 500ms:
	// smooth enough for a progress bar, rare enough to be free.
	ProgressInterval time.Duration
}

// Fetcher downloads Hub revisions and publishes them into a Registry. Safe for concurrent use.
type Fetcher struct {
	reg    Registry
	o      Options
	client *Client
	log    *slog.Logger
}

// New returns a Fetcher. Errors: a malformed endpoint or an empty CacheDir.
func New(reg Registry, o Options) (*Fetcher, error) {
	if o.CacheDir == "" {
		return nil, errors.New("huggingface: cache directory is required")
	}
	if o.Client.Observer == nil {
		o.Client.Observer = o.Observer
	}
	c, err := NewClient(o.Client)
	if err != nil {
		return nil, err
	}
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = 500 * time.Millisecond
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Fetcher{reg: reg, o: o, client: c, log: log}, nil
}

// Request is one fetch.
type Request struct {
	Ref              Ref
	Include, Exclude []string // fnmatch globs, see Filter
	// Offline resolves the revision from the registry only and never touches the network.
	Offline bool
	// OnProgress, if set, receives snapshots while the fetch runs and a final one.
	OnProgress func(Progress)
}

// Result describes a successful fetch.
type Result struct {
	Name, Version string // registry model name (the repo id) and version (the commit)
	Alias         string // alias set to Version ("" for a commit revision or an unmappable one)
	Files         int    // files in the version
	Bytes         int64  // their total size
	Downloaded    int64  // bytes downloaded by this run (not counting what an interrupted run left, unless the server sent it again)
	Reused        int    // files not downloaded because their content was already stored
	AlreadyHad    bool   // the commit was already complete in the registry: nothing downloaded
	Offline       bool   // resolved from the registry without the network
}

// Progress is a snapshot of a running fetch.
type Progress struct {
	Phase      string // "resolving", "downloading", "publishing", "done"
	Repo       string
	Revision   string
	Commit     string
	TotalBytes int64 // bytes to download in this run
	DoneBytes  int64
	Files      []FileProgress // files being downloaded in this run
}

// FileProgress is one file's progress.
type FileProgress struct {
	Path string
	Size int64
	Done int64 // bytes written (a single stream reading past kept bytes does not advance it)
	// SingleStream: the server ignores Range requests for this file, which downloads over one
	// connection (and, resumed, re-receives the bytes kept before the first missing one).
	SingleStream bool
}

// Fetch downloads req.Ref into the registry (see the package doc for guarantees). Errors wrap one
// of the package's sentinels or registry.ErrBudget; each names the repository, revision or file.
func (f *Fetcher) Fetch(ctx context.Context, req Request) (res Result, err error) {
	start := time.Now()
	defer func() {
		if f.o.Observer != nil {
			f.o.Observer.FetchDone(resultLabel(err), time.Since(start))
		}
	}()
	ref := req.Ref
	if err := ValidateRepoID(ref.Repo); err != nil {
		return res, fmt.Errorf("%w: %v", ErrInvalidRef, err)
	}
	if ref.Revision == "" {
		ref.Revision = DefaultRevision
	}
	filter, err := NewFilter(req.Include, req.Exclude)
	if err != nil {
		return res, fmt.Errorf("%w: %v", ErrInvalidRef, err)
	}
	alias, hasAlias := AliasFor(ref.Revision)
	res.Name = ref.Repo
	if hasAlias {
		res.Alias = alias
	}
	report := func(p Progress) {
		if req.OnProgress != nil {
			p.Repo, p.Revision = ref.Repo, ref.Revision
			req.OnProgress(p)
		}
	}
	report(Progress{Phase: "resolving"})

	if req.Offline || f.o.Offline {
		return f.fromCache(ctx, ref, res, alias, hasAlias, nil, report)
	}
	// When the registry already has this revision, an unreachable Hub should fall back to it after a
	// couple of attempts, not after the full retry budget (minutes) meant for downloads.
	resolver := f.client
	if cached, _ := f.cachedVersion(ctx, ref, alias, hasAlias); cached != "" {
		quick := *f.client
		quick.backoff.Attempts = min(quick.backoff.Attempts, 2)
		resolver = &quick
	}
	info, err := resolver.Revision(ctx, ref.Repo, ref.Revision)
	if err != nil {
		if errors.Is(err, ErrOffline) {
			return f.fromCache(ctx, ref, res, alias, hasAlias, err, report)
		}
		return res, err
	}
	commit := info.Commit
	res.Version = commit

	// One fetch per commit at a time: two would write the same partial files. The second waits,
	// then finds the version published. The flock keeps out other processes sharing the cache
	// directory; the in-process lock comes first because waiting on it wakes at once, where
	// waiting on the flock polls.
	dir := filepath.Join(f.o.CacheDir, filepath.FromSlash(ref.Repo), commit)
	unlock, err := lockStaging(ctx, dir)
	if err != nil {
		return res, err
	}
	defer unlock()
	funlock, err := flockStaging(ctx, dir)
	if err != nil {
		return res, err
	}
	defer funlock()
	// removeStale judges a staging directory by its modification time, which a resume does not
	// change (its partial files are one level down): without this, a fetch resuming a directory
	// left weeks ago would have it removed under it when another commit's fetch finishes.
	now := time.Now()
	os.Chtimes(dir, now, now)
	have, err := f.reg.HasVersion(ctx, ref.Repo, commit)
	if err != nil {
		return res, fmt.Errorf("check registry for %s:%s: %w", ref.Repo, commit, err)
	}
	if have {
		res.AlreadyHad = true
		// A fetch stopped between its publish and the removal of its staging copy (killed, or
		// the machine lost power) left the copy here; nothing else would ever remove it.
		if err := os.RemoveAll(dir); err != nil {
			f.log.Warn("remove fetch staging directory", "dir", dir, "err", err)
		}
		if hasAlias {
			if _, err := f.reg.SetAlias(ctx, ref.Repo, alias, commit); err != nil {
				return res, fmt.Errorf("move alias %s of %s to %s: %w", alias, ref.Repo, commit, err)
			}
		}
		report(Progress{Phase: "done", Commit: commit})
		return res, nil
	}

	listed, err := f.client.ListFiles(ctx, ref.Repo, commit)
	if err != nil {
		return res, err
	}
	files, err := selectFiles(listed, filter)
	if err != nil {
		return res, fmt.Errorf("%s@%s: %w; nothing was published", ref.Repo, commit, err)
	}
	if len(files) == 0 {
		return res, fmt.Errorf("%w: no file of %s@%s matches the include/exclude patterns", ErrEntryNotFound, ref.Repo, ref.Revision)
	}

	eng := newEngine(f.client, f.o.Engine, f.o.Observer, dir, ref.Repo, commit)
	eng.log = f.log
	g, gctx := errgroup.WithContext(ctx)
	imports := make([]registry.ImportFile, len(files))
	var tasks []*task
	for i, fl := range files {
		imports[i] = registry.ImportFile{Path: fl.Path, Size: fl.Size}
		res.Bytes += fl.Size
		if fl.LFS != nil {
			sum, _ := hex.DecodeString(fl.LFS.SHA256)
			copy(imports[i].SHA256[:], sum)
			ok, err := f.reg.HasContent(ctx, imports[i].SHA256)
			if err != nil {
				return res, fmt.Errorf("check registry for %s: %w", fl.Path, err)
			}
			if ok {
				res.Reused++
				continue // Open stays nil: the registry reuses its stored copy
			}
		}
		t := newTask(fl, fl.Path, eng.finalPath(fl.Path))
		tasks = append(tasks, t)
		// The registry imports the file as it downloads, through a follower that ends only once
		// the download has verified every byte against the Hub's sha256 or git blob id; the
		// download's hash is the file's sha256, so the registry need not hash the file again.
		imports[i].Open = func() (io.ReadCloser, error) { return follow(gctx, t), nil }
		imports[i].Sum = func() [32]byte { return t.sha256 }
		imports[i].Verified = true
	}
	res.Files = len(files)

	ireq := registry.ImportRequest{Info: f.modelInfo(ref, info, files), Files: imports}
	if hasAlias {
		ireq.Aliases = []string{alias}
	}
	for _, t := range tasks {
		// Before the first progress report: bytes kept by an interrupted run are not progress of
		// this one (a rate or ETA computed from them would be wildly off).
		t.done.Store(eng.resumable(t))
	}
	var dlErr, impErr error
	g.Go(func() error {
		dlErr = f.downloadAll(gctx, eng, tasks, commit, report)
		if dlErr == nil {
			report(Progress{Phase: "publishing", Commit: commit})
		}
		return dlErr
	})
	g.Go(func() error {
		impErr = f.reg.Import(gctx, ireq)
		return impErr
	})
	g.Wait()
	for _, t := range tasks {
		res.Downloaded += t.done.Load() - t.resumed + t.resent.Load()
	}
	// A failed download fails the import that follows it; report the download's own error. An
	// import that fails first cancels the download, whose error then only says so.
	if dlErr != nil && (impErr == nil || !errors.Is(dlErr, context.Canceled) || ctx.Err() != nil) {
		return res, dlErr
	}
	if impErr != nil {
		if !errors.Is(impErr, registry.ErrExists) {
			return res, fmt.Errorf("publish %s:%s: %w", ref.Repo, commit, impErr)
		}
		// A concurrent fetch of the same commit won the race; just move our alias.
		if hasAlias {
			if _, err := f.reg.SetAlias(ctx, ref.Repo, alias, commit); err != nil {
				return res, fmt.Errorf("move alias %s of %s to %s: %w", alias, ref.Repo, commit, err)
			}
		}
	}
	// The registry owns the bytes now; the staging copy would double the disk use.
	if err := os.RemoveAll(dir); err != nil {
		f.log.Warn("remove fetch staging directory", "dir", dir, "err", err)
	}
	f.removeStale(filepath.Dir(dir))
	report(Progress{Phase: "done", Commit: commit, TotalBytes: res.Downloaded, DoneBytes: res.Downloaded})
	return res, nil
}

// selectFiles returns the files of the Hub's listing that filter selects, sorted by path, after
// validating them (files not selected are never written, so they may be anything): unsafe names
// (ErrUnsafePath), invalid sizes or hashes, the same path listed twice with different content, and
// a path that is both a file and a directory (ErrProtocol). The same entry listed twice (a page
// boundary repeated by a paginating server) counts once.
func selectFiles(listed []File, filter Filter) ([]File, error) {
	byPath := map[string]File{}
	var files []File
	for _, fl := range listed {
		if !filter.Match(fl.Path) {
			continue
		}
		clean, err := registry.CleanPath(fl.Path)
		if err != nil || clean != fl.Path {
			return nil, fmt.Errorf("%w: the Hub lists %q: %v", ErrUnsafePath, fl.Path, err)
		}
		if fl.Size < 0 || fl.LFS != nil && (!isHex(fl.LFS.SHA256, 64) || fl.LFS.Size != fl.Size) || fl.LFS == nil && !isHex(fl.BlobID, 40) {
			return nil, fmt.Errorf("%w: the Hub lists %q with an invalid size or hash", ErrProtocol, fl.Path)
		}
		if prev, dup := byPath[fl.Path]; dup {
			if !sameFile(prev, fl) {
				return nil, fmt.Errorf("%w: the Hub lists %q twice, with different content", ErrProtocol, fl.Path)
			}
			continue
		}
		byPath[fl.Path] = fl
		files = append(files, fl)
	}
	// A file "a" beside "a/b" cannot both be written out (pull, the staging directory).
	for p := range byPath {
		for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
			if _, clash := byPath[dir]; clash {
				return nil, fmt.Errorf("%w: the Hub lists %q both as a file and as the directory of %q", ErrProtocol, dir, p)
			}
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	return files, nil
}

// isHex reports whether s is n hexadecimal digits (either case).
func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// sameFile reports whether two listing entries describe the same content.
func sameFile(a, b File) bool {
	if a.Size != b.Size || !strings.EqualFold(a.BlobID, b.BlobID) || (a.LFS == nil) != (b.LFS == nil) {
		return false
	}
	return a.LFS == nil || strings.EqualFold(a.LFS.SHA256, b.LFS.SHA256)
}

// fromCache serves a fetch from the registry alone (offline, or the Hub unreachable).
func (f *Fetcher) fromCache(ctx context.Context, ref Ref, res Result, alias string, hasAlias bool, netErr error, report func(Progress)) (Result, error) {
	version, err := f.cachedVersion(ctx, ref, alias, hasAlias)
	if err != nil {
		return res, err
	}
	if version == "" {
		if netErr != nil {
			return res, fmt.Errorf("%w, and %s is not in the registry yet", netErr, ref)
		}
		return res, fmt.Errorf("%w: offline, and %s is not in the registry yet (fetch it once while online)", ErrOffline, ref)
	}
	if netErr != nil {
		f.log.Warn("Hub unreachable; using the registry's copy", "ref", ref.String(), "version", version, "err", netErr)
	}
	res.Version, res.AlreadyHad, res.Offline = version, true, true
	report(Progress{Phase: "done", Commit: version})
	return res, nil
}

var (
	stagingMu    sync.Mutex
	stagingLocks = map[string]*stagingLock{}
)

// stagingLock is a context-aware mutex; refs counts holders and waiters so the map entry can go.
type stagingLock struct {
	ch   chan struct{}
	refs int
}

// lockStaging serializes fetches using the same staging directory within this process (the store,
// and so the cache directory beside it, belongs to one process). It waits until ctx is done.
func lockStaging(ctx context.Context, dir string) (unlock func(), err error) {
	stagingMu.Lock()
	l := stagingLocks[dir]
	if l == nil {
		l = &stagingLock{ch: make(chan struct{}, 1)}
		stagingLocks[dir] = l
	}
	l.refs++
	stagingMu.Unlock()
	release := func() {
		stagingMu.Lock()
		if l.refs--; l.refs == 0 {
			delete(stagingLocks, dir)
		}
		stagingMu.Unlock()
	}
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}

// staleAfter is how long an abandoned partial fetch of another commit is kept for a resume. A week
// covers a device that was offline over a long weekend; after that the revision has usually moved.
const staleAfter = 7 * 24 * time.Hour

// removeStale deletes staging directories of other commits of the same repository untouched for
// staleAfter, so fetches that failed and were never retried do not hold disk space forever.
func (f *Fetcher) removeStale(repoDir string) {
	entries, err := os.ReadDir(repoDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !IsCommit(e.Name()) {
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > staleAfter {
			p := filepath.Join(repoDir, e.Name())
			if err := os.RemoveAll(p); err != nil {
				f.log.Warn("remove stale fetch staging directory", "dir", p, "err", err)
			}
		}
	}
}

// cachedVersion returns the registry version ref's revision resolves to without the network, or "".
func (f *Fetcher) cachedVersion(ctx context.Context, ref Ref, alias string, hasAlias bool) (string, error) {
	if IsCommit(ref.Revision) {
		ok, err := f.reg.HasVersion(ctx, ref.Repo, ref.Revision)
		if err != nil || !ok {
			return "", err
		}
		return ref.Revision, nil
	}
	if !hasAlias {
		return "", nil
	}
	v, err := f.reg.ResolveAlias(ctx, ref.Repo, alias)
	if errors.Is(err, registry.ErrNotFound) {
		return "", nil
	}
	return v, err
}

// downloadAll runs the engine over tasks, files in parallel, reporting progress periodically.
func (f *Fetcher) downloadAll(ctx context.Context, eng *engine, tasks []*task, commit string, report func(Progress)) error {
	var total int64
	for _, t := range tasks {
		total += t.file.Size
	}
	snapshot := func(phase string) Progress {
		p := Progress{Phase: phase, Commit: commit, TotalBytes: total}
		for _, t := range tasks {
			d := t.done.Load()
			p.DoneBytes += d
			p.Files = append(p.Files, FileProgress{Path: t.path, Size: t.file.Size, Done: d, SingleStream: t.singleStream.Load()})
		}
		return p
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(f.o.ProgressInterval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				report(snapshot("downloading"))
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	report(snapshot("downloading"))

	g, gctx := errgroup.WithContext(ctx)
	// Files in parallel up to the connection budget; each file's ranges share the same budget.
	g.SetLimit(eng.o.Concurrency)
	for _, t := range tasks {
		g.Go(func() error {
			err := classifyIO(eng.download(gctx, t))
			t.finish(err)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	report(snapshot("downloading"))
	return nil
}

// modelInfo fills the registry metadata from what the Hub says.
func (f *Fetcher) modelInfo(ref Ref, info *RepoInfo, files []File) registry.ModelInfo {
	desc := strings.TrimSpace(info.CardData.Desc)
	if desc == "" {
		desc = "Hugging Face model " + ref.Repo
		if info.PipelineTag != "" {
			desc += " (" + info.PipelineTag + ")"
		}
	}
	params := map[string]string{
		"source":      "huggingface",
		"hf_repo":     ref.Repo,
		"hf_revision": ref.Revision,
		"hf_commit":   info.Commit,
		"source_url":  f.client.Endpoint() + "/" + ref.Repo + "/tree/" + info.Commit,
	}
	if info.PipelineTag != "" {
		params["pipeline_tag"] = info.PipelineTag
	}
	if info.LibraryName != "" {
		params["library_name"] = info.LibraryName
	}
	if l, ok := info.CardData.License.(string); ok && l != "" {
		params["license"] = l
	}
	return registry.ModelInfo{
		Name:        ref.Repo,
		Version:     info.Commit,
		Framework:   framework(info, files),
		Description: desc,
		CreatedAt:   time.Now().UTC(),
		Parameters:  params,
	}
}

// framework names the model's framework: the Hub's library_name, else a known library tag, else
// the dominant weight file type.
func framework(info *RepoInfo, files []File) string {
	if info.LibraryName != "" {
		return info.LibraryName
	}
	known := []string{"transformers", "diffusers", "sentence-transformers", "timm", "gguf", "onnx", "pytorch", "tensorflow", "jax", "keras", "tflite", "mlx", "llama.cpp", "openvino"}
	for _, k := range known {
		for _, t := range info.Tags {
			if t == k {
				return k
			}
		}
	}
	byExt := map[string]string{".gguf": "gguf", ".onnx": "onnx", ".safetensors": "safetensors", ".tflite": "tflite",
		".pt": "pytorch", ".pth": "pytorch", ".bin": "pytorch", ".h5": "tensorflow", ".pb": "tensorflow", ".msgpack": "jax"}
	best, bestSize := "", int64(-1)
	for _, fl := range files {
		if fw, ok := byExt[strings.ToLower(path.Ext(fl.Path))]; ok && fl.Size > bestSize {
			best, bestSize = fw, fl.Size
		}
	}
	if best == "" {
		return "unknown"
	}
	return best
}

// resultLabel maps an error to a bounded metric label.
func resultLabel(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	case errors.Is(err, ErrRepoNotFound), errors.Is(err, ErrRevisionNotFound), errors.Is(err, ErrEntryNotFound):
		return "not_found"
	case errors.Is(err, ErrGated):
		return "gated"
	case errors.Is(err, ErrUnauthorized):
		return "unauthorized"
	case errors.Is(err, ErrRateLimited):
		return "rate_limited"
	case errors.Is(err, ErrOffline):
		return "offline"
	case errors.Is(err, ErrChecksum):
		return "checksum"
	case errors.Is(err, ErrNoSpace), errors.Is(err, registry.ErrDiskFull):
		return "no_space"
	case errors.Is(err, registry.ErrBudget):
		return "budget"
	case errors.Is(err, ErrInvalidRef), errors.Is(err, ErrUnsafePath):
		return "invalid"
	case errors.Is(err, ErrProtocol):
		return "protocol"
	}
	return "error"
}
