package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buffdb/buffdbd/api"
	registrypb "github.com/buffdb/buffdbd/api/proto/registrypb"
	"github.com/buffdb/buffdbd/huggingface"
	"github.com/buffdb/buffdbd/registry"
)

// Exit codes of `buffdbd fetch`, documented in the README. They start at 10 to stay clear of the
// generic codes (0 ok, 1 false, 2 usage, 3 not found, 4 other).
const (
	exitRepoNotFound     = 10
	exitRevisionNotFound = 11
	exitFileNotFound     = 12
	exitGated            = 13
	exitUnauthorized     = 14
	exitRateLimited      = 15
	exitOffline          = 16
	exitChecksum         = 17
	exitBudget           = 18
	exitUnsafePath       = 19
	exitNoSpace          = 20
	exitProtocol         = 21
)

// fetchError carries a fetch failure's exit code and hint to reportError.
type fetchError struct {
	err  error
	code int
	hint string
}

func (e fetchError) Error() string { return e.err.Error() }
func (e fetchError) Unwrap() error { return e.err }

// ExitCode is the documented exit code.
func (e fetchError) ExitCode() int { return e.code }

// Hint is advice printed after the message, or "".
func (e fetchError) Hint() string { return e.hint }

type fetchFlags struct {
	include, exclude []string
	token, endpoint  string
	concurrency      int
	maxRate          string
	offline, jsonOut bool
}

func newFetchCmd(g *globalFlags) *cobra.Command {
	var f fetchFlags
	cmd := &cobra.Command{
		Use:         "fetch hf:<org/name>[@<revision>]",
		Annotations: createsStoreAnnotation,
		Short:       "Download a Hugging Face Hub model revision into the registry",
		Long: `fetch downloads a Hugging Face Hub repository at a revision (branch, tag, refs/pr/N or commit;
default main), verifies every file (sha256 for LFS files, git blob sha1 otherwise) and publishes it
as registry version <org/name>:<commit>, with the revision as an alias ('/' becomes '+', so
refs/pr/1 is alias refs+pr+1). A fetch interrupted at any point resumes where it stopped; files
already in the registry are not downloaded again.

Exit codes: 10 repository not found, 11 revision not found, 12 file not found (or no file matches
--include/--exclude), 13 gated repository, 14 invalid token, 15 rate limited, 16 Hub unreachable
(or --offline and not cached), 17 verification failed, 18 registry disk budget exceeded,
19 unsafe filename in the repository, 20 no space left for the download, 21 unexpected answer
from the Hub, its CDN or a proxy.`,
		Example: `  buffdbd fetch hf:sentence-transformers/all-MiniLM-L6-v2
  buffdbd fetch hf:org/model@v1.0 --include '*.safetensors' --include '*.json'
  HF_TOKEN=hf_... buffdbd fetch hf:meta-llama/Llama-3.2-1B --max-rate 5MB`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runFetch(cmd, g, &f, args[0]) },
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&f.include, "include", nil, "only files matching this glob (repeatable; '*' matches across '/')")
	fl.StringArrayVar(&f.exclude, "exclude", nil, "skip files matching this glob (repeatable)")
	fl.StringVar(&f.token, "token", "", "Hugging Face token (default $HF_TOKEN, then $HUGGING_FACE_HUB_TOKEN)")
	fl.StringVar(&f.endpoint, "endpoint", "", "Hub URL (default $HF_ENDPOINT, else "+huggingface.DefaultEndpoint+")")
	fl.IntVar(&f.concurrency, "concurrency", 8, "parallel connections, files and byte ranges of large files (default huggingface.concurrency)")
	fl.StringVar(&f.maxRate, "max-rate", "", "bandwidth limit in bytes per second, e.g. 5MB, 500KiB (default unlimited)")
	fl.BoolVar(&f.offline, "offline", false, "never touch the network: succeed only if the revision is already in the registry (also $HF_HUB_OFFLINE=1)")
	fl.BoolVar(&f.jsonOut, "json", false, "print progress and the result as JSON lines on stdout")
	return cmd
}

func runFetch(cmd *cobra.Command, g *globalFlags, f *fetchFlags, arg string) error {
	ref, err := huggingface.ParseRef(arg)
	if err != nil {
		return usageError{err}
	}
	if _, err := huggingface.NewFilter(f.include, f.exclude); err != nil {
		return usagef("--include/--exclude: %v", err)
	}
	req := &registrypb.FetchRequest{
		Repo: ref.Repo, Revision: ref.Revision, Include: f.include, Exclude: f.exclude,
		// Only what this command line says; the daemon fills the rest from its configuration.
		// Precedence as huggingface_hub users expect: flag, HF_TOKEN, HUGGING_FACE_HUB_TOKEN.
		Token:    firstNonEmpty(f.token, os.Getenv("HF_TOKEN"), os.Getenv("HUGGING_FACE_HUB_TOKEN")),
		Endpoint: firstNonEmpty(f.endpoint, os.Getenv("HF_ENDPOINT")),
		Offline:  f.offline || isTruthy(os.Getenv("HF_HUB_OFFLINE")),
	}
	// The command's own huggingface.* configuration (its flags, BUFFDBD_* variables, the file)
	// applies as well when a daemon does the fetch, as it does in-process: a daemon would otherwise
	// ignore --huggingface-offline and go to the network.
	if cfg, _, _, err := LoadConfig(cmd.Flags()); err == nil {
		if cfg.HuggingFace.Endpoint != "" && cfg.HuggingFace.Endpoint != DefaultConfig().HuggingFace.Endpoint {
			req.Endpoint = firstNonEmpty(req.Endpoint, cfg.HuggingFace.Endpoint)
		}
		req.Offline = req.Offline || cfg.HuggingFace.Offline
	}
	if cmd.Flags().Changed("concurrency") {
		if f.concurrency < 1 || f.concurrency > 256 {
			return usagef("--concurrency: must be between 1 and 256, got %d", f.concurrency)
		}
		req.Concurrency = uint32(f.concurrency)
	}
	if f.maxRate != "" {
		rate, err := parseRate(f.maxRate)
		if err != nil {
			return usagef("--max-rate: %v", err)
		}
		req.MaxRate = uint64(rate)
	}
	if req.Endpoint != "" {
		if _, err := huggingface.NewClient(huggingface.ClientOptions{Endpoint: req.Endpoint}); err != nil {
			return usagef("--endpoint: %v", err)
		}
	}
	// A running daemon does the fetch (it owns the store); else an in-process server does.
	cc, err := dial(cmd, g)
	if err != nil {
		return err
	}
	defer cc.Close()
	stream, err := registrypb.NewRegistryClient(cc).Fetch(cmd.Context(), req)
	if err != nil {
		return classifyFetchError(api.FetchErrorFromStatus(err), ref, req.Token != "")
	}
	out := cmd.OutOrStdout()
	prog := newFetchProgress(cmd.ErrOrStderr(), out, f.jsonOut)
	var res *registrypb.FetchResult
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			prog.finish()
			return classifyFetchError(api.FetchErrorFromStatus(err), ref, req.Token != "")
		}
		if m.GetResult() != nil {
			res = m.GetResult()
			continue
		}
		prog.update(progressFromPB(ref, m))
	}
	prog.finish()
	if res == nil {
		return fmt.Errorf("fetch %s: the server ended the stream without a result", ref)
	}
	if f.jsonOut {
		return json.NewEncoder(out).Encode(map[string]any{"event": "result", "name": res.Name, "version": res.Version,
			"alias": res.Alias, "files": res.Files, "bytes": res.Bytes, "downloaded_bytes": res.DownloadedBytes,
			"reused_files": res.ReusedFiles, "already_had": res.AlreadyHad, "offline": res.Offline})
	}
	switch {
	case res.Offline:
		fmt.Fprintf(out, "%s is in the registry as %s:%s (offline; not checked against the Hub)\n", ref, res.Name, res.Version)
	case res.AlreadyHad:
		fmt.Fprintf(out, "%s is up to date: %s:%s\n", ref, res.Name, res.Version)
	default:
		fmt.Fprintf(out, "fetched %s → %s:%s: %d files, %s (downloaded %s, %d files reused)\n",
			ref, res.Name, res.Version, res.Files, humanBytes(int64(res.Bytes)), humanBytes(int64(res.DownloadedBytes)), res.ReusedFiles)
	}
	if res.Alias != "" {
		fmt.Fprintf(out, "alias %s@%s → %s\n", res.Name, res.Alias, res.Version)
	}
	return nil
}

func progressFromPB(ref huggingface.Ref, m *registrypb.FetchProgress) huggingface.Progress {
	p := huggingface.Progress{Phase: m.Phase, Repo: ref.Repo, Revision: ref.Revision, Commit: m.Commit,
		TotalBytes: int64(m.TotalBytes), DoneBytes: int64(m.DoneBytes)}
	for _, f := range m.Files {
		p.Files = append(p.Files, huggingface.FileProgress{Path: f.Path, Size: int64(f.Size), Done: int64(f.Done), SingleStream: f.GetSingleStream()})
	}
	return p
}

// withFetch adds the Fetch RPC to the registry service rs (see registerRegistry), for the daemon
// and the CLI's in-process server alike.
func withFetch(ctx context.Context, rs registrypb.RegistryServer, reg *registry.Service, cfg Config, log *slog.Logger) registrypb.RegistryServer {
	return api.WithFetch(rs, fetcherFactory(ctx, reg, cfg, log), log)
}

// fetcherFactory builds the fetcher of one Fetch request: the daemon's configuration
// (huggingface.*, cache_dir, metrics), overridden by what the request carries.
func fetcherFactory(ctx context.Context, reg *registry.Service, cfg Config, log *slog.Logger) api.FetcherFactory {
	var obs huggingface.Observer
	if m := observersFrom(ctx).Fetch(); m != nil {
		obs = m
	}
	cacheDir := cfg.CacheDir
	if cacheDir == "" {
		cacheDir = filepath.Join(cfg.DataDir, "cache")
	}
	ua := "buffdbd/" + firstNonEmpty(readBuildInfo().Version, "devel")
	// huggingface.rate_limit caps the bandwidth of all fetches together: it is there to leave the
	// device's link to its other traffic, which a limit per fetch would not do once several run.
	// The burst admits one full read buffer (1 MiB, the engine's default).
	var shared *rate.Limiter
	if cfg.HuggingFace.RateLimit > 0 {
		shared = rate.NewLimiter(rate.Limit(cfg.HuggingFace.RateLimit), 1<<20)
	}
	return func(req *registrypb.FetchRequest) (*huggingface.Fetcher, error) {
		hf := cfg.HuggingFace
		endpoint := firstNonEmpty(req.GetEndpoint(), hf.Endpoint, huggingface.DefaultEndpoint)
		token := req.GetToken()
		// The configured token is the operator's secret for the configured endpoint: a client
		// that names another endpoint (any host it likes) brings its own token or goes without.
		own := sameEndpoint(endpoint, firstNonEmpty(hf.Endpoint, huggingface.DefaultEndpoint))
		if token == "" && own {
			token = hf.Token
		}
		if token == "" && own && hf.TokenFile != "" {
			t, err := readTokenFile(hf.TokenFile)
			if err != nil {
				// The operator's configuration, not a bug: say what to fix (run checks it at
				// startup too, but the file may have changed since).
				return nil, status.Errorf(codes.FailedPrecondition, "huggingface.token_file of the fetching process cannot be read: %v", err)
			}
			token = t
		}
		conc := hf.Concurrency
		if req.GetConcurrency() > 0 {
			conc = int(req.GetConcurrency())
		}
		f, err := huggingface.New(reg, huggingface.Options{
			Client: huggingface.ClientOptions{
				Endpoint: endpoint,
				Token:    token, UserAgent: ua, Observer: obs,
			},
			// A request's own rate limits that fetch further; it cannot lift the shared cap.
			Engine:   huggingface.EngineOptions{Concurrency: conc, MaxRate: int64(req.GetMaxRate()), SharedRate: shared},
			CacheDir: filepath.Join(cacheDir, "hf"),
			Observer: obs,
			Logger:   log.With("component", "fetch"),
			Offline:  hf.Offline,
		})
		if err != nil {
			return nil, fmt.Errorf("%w: endpoint: %v", huggingface.ErrInvalidRef, err)
		}
		return f, nil
	}
}

// sameEndpoint reports whether two Hub URLs name the same endpoint: equal once trailing slashes are
// dropped, scheme and host compared without regard to case.
func sameEndpoint(a, b string) bool {
	ua, errA := url.Parse(strings.TrimRight(a, "/"))
	ub, errB := url.Parse(strings.TrimRight(b, "/"))
	if errA != nil || errB != nil {
		return false
	}
	return strings.EqualFold(ua.Scheme, ub.Scheme) && strings.EqualFold(ua.Host, ub.Host) && ua.Path == ub.Path
}

// classifyFetchError turns a fetch error into one sentence, a hint and a distinct exit code.
func classifyFetchError(err error, ref huggingface.Ref, hasToken bool) error {
	fe := fetchError{err: err, code: exitError}
	switch {
	case errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, huggingface.ErrRepoNotFound):
		fe.code = exitRepoNotFound
		if hasToken {
			fe.hint = "check the repository id; if it is private, your token's user needs access"
		} else {
			fe.hint = "check the repository id; if it is private, pass --token or set HF_TOKEN"
		}
	case errors.Is(err, huggingface.ErrRevisionNotFound):
		fe.code, fe.hint = exitRevisionNotFound, "check the branch, tag or commit after '@' (default main)"
	case errors.Is(err, huggingface.ErrEntryNotFound):
		fe.code, fe.hint = exitFileNotFound, "check --include/--exclude against the repository's files"
	case errors.Is(err, huggingface.ErrGated):
		fe.code = exitGated
		if hasToken {
			fe.hint = "request access on the Hub page of " + ref.Repo + " with the account of your token"
		} else {
			fe.hint = "pass --token (or set HF_TOKEN) for an account that was granted access to " + ref.Repo
		}
	case errors.Is(err, huggingface.ErrUnauthorized):
		fe.code, fe.hint = exitUnauthorized, "the token is invalid, expired, or (a fine-grained token) not allowed to read this repository; check it in your Hub settings (settings/tokens)"
	case errors.Is(err, huggingface.ErrRateLimited):
		fe.code, fe.hint = exitRateLimited, "wait a few minutes, or pass a token (authenticated users get higher limits)"
	case errors.Is(err, huggingface.ErrOffline):
		fe.code, fe.hint = exitOffline, "check the network or --endpoint; a revision fetched before works offline"
	case errors.Is(err, huggingface.ErrChecksum):
		fe.code, fe.hint = exitChecksum, "nothing was published; run the fetch again (corrupt partial data was discarded)"
	case errors.Is(err, registry.ErrBudget):
		fe.code, fe.hint = exitBudget, "raise the registry's max_bytes, or delete, unpin or untag old versions"
	case errors.Is(err, huggingface.ErrNoSpace):
		fe.code, fe.hint = exitNoSpace, "free space on the filesystem of the cache directory (--cache-dir) or the data directory; the fetch resumes from what it kept"
	case errors.Is(err, huggingface.ErrProtocol):
		fe.code, fe.hint = exitProtocol, "the Hub, its CDN or a proxy in between (HTTPS_PROXY) answered something invalid; retry later or check --endpoint"
	case errors.Is(err, huggingface.ErrUnsafePath):
		fe.code, fe.hint = exitUnsafePath, "the repository lists a filename that could escape the model directory; nothing was published"
	case errors.Is(err, huggingface.ErrInvalidRef):
		return usageError{err}
	default:
		// Not a fetch-specific failure (interrupted, daemon unreachable or draining, disk full,
		// internal): reported like any command's, with its message cleaned and its hint.
		return err
	}
	return fe
}

// parseRate parses a byte rate: a number with an optional unit (B, KB, MB, GB = powers of 1000;
// KiB, MiB, GiB = powers of 1024; a trailing "/s" is allowed). "" means unlimited (0).
func parseRate(s string) (int64, error) {
	s = strings.TrimSuffix(strings.TrimSpace(s), "/s")
	if s == "" {
		return 0, nil
	}
	units := []struct {
		suffix string
		mult   float64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"B", 1}}
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(strings.ToUpper(s), strings.ToUpper(u.suffix)) && (strings.Contains(u.suffix, "i") == strings.Contains(s, "i")) {
			mult, s = u.mult, strings.TrimSpace(s[:len(s)-len(u.suffix)])
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v <= 0 || v*mult < 1024 {
		return 0, fmt.Errorf("want a rate of at least 1KiB per second such as 5MB or 500KiB")
	}
	return int64(v * mult), nil
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

func isTruthy(s string) bool {
	switch strings.ToLower(s) {
	case "1", "true", "yes", "on":
		return true
	}
	return false
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// fetchProgress renders fetch progress: bars on a terminal, periodic plain lines otherwise, JSON
// lines with --json.
type fetchProgress struct {
	mu       sync.Mutex
	errw     io.Writer
	out      io.Writer
	json     bool
	tty      bool
	p        *mpb.Progress
	total    *mpb.Bar
	bars     map[string]*mpb.Bar
	lastLine time.Time
	lastDone int64
	phase    string
	single   map[string]bool // files whose single stream was reported
}

// ewmaAge is mpb's default smoothing (a simple EWMA over ~30 updates, ~15 s at two updates a
// second): steady enough to read on a jittery link. Smaller ages switch mpb to an EWMA that shows
// nothing until warmed up.
const ewmaAge = 30

// maxFileBars caps the per-file lines on a terminal: with up to 256 connections more files can be
// arriving at once than a terminal has lines, and mpb redraws every line at each refresh. The
// overall bar counts them all.
const maxFileBars = 16

// plainInterval spaces progress lines when stderr is not a terminal: often enough to show life in
// a journal, rarely enough not to flood it.
const plainInterval = 5 * time.Second

func newFetchProgress(errw, out io.Writer, jsonOut bool) *fetchProgress {
	fp := &fetchProgress{errw: errw, out: out, json: jsonOut, bars: map[string]*mpb.Bar{}, single: map[string]bool{}}
	if f, ok := errw.(*os.File); ok && !jsonOut && term.IsTerminal(int(f.Fd())) {
		fp.tty = true
		fp.p = mpb.New(mpb.WithOutput(errw), mpb.WithRefreshRate(150*time.Millisecond))
	}
	return fp
}

func (fp *fetchProgress) update(p huggingface.Progress) {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	if !fp.json {
		// Said once per file: the user behind a proxy should know why the file is slower than
		// usual and why a resume receives its kept bytes again.
		for _, f := range p.Files {
			if f.SingleStream && !fp.single[f.Path] {
				fp.single[f.Path] = true
				var w io.Writer = fp.errw
				if fp.p != nil {
					w = fp.p // above the bars
				}
				// Such a server cannot start mid-file: without the second half, progress standing
				// still while a resumed file's kept bytes arrive again would look like a hang.
				fmt.Fprintf(w, "note: the server (or a proxy) ignores byte ranges: %s downloads over a single connection;"+
					" if it was interrupted before, its kept bytes arrive again first (checked, not rewritten) and its progress pauses meanwhile\n", f.Path)
			}
		}
	}
	switch {
	case fp.json:
		files := make([]map[string]any, 0, len(p.Files))
		for _, f := range p.Files {
			files = append(files, map[string]any{"path": f.Path, "size": f.Size, "done": f.Done, "single_stream": f.SingleStream})
		}
		json.NewEncoder(fp.out).Encode(map[string]any{"event": "progress", "phase": p.Phase, "repo": p.Repo,
			"revision": p.Revision, "commit": p.Commit, "total_bytes": p.TotalBytes, "done_bytes": p.DoneBytes, "files": files})
	case fp.tty:
		if p.Phase != "downloading" || p.TotalBytes == 0 {
			return
		}
		if fp.total == nil {
			fp.total = fp.p.AddBar(p.TotalBytes,
				mpb.PrependDecorators(decor.Name(p.Repo+" ", decor.WCSyncSpaceR), decor.Counters(decor.SizeB1024(0), "% .1f / % .1f")),
				mpb.AppendDecorators(decor.EwmaSpeed(decor.SizeB1024(0), "% .1f", ewmaAge), decor.Name(" ETA "), decor.EwmaETA(decor.ET_STYLE_GO, ewmaAge)))
		}
		fp.total.EwmaSetCurrent(p.DoneBytes, 500*time.Millisecond)
		for path, b := range fp.bars {
			if b.Completed() {
				delete(fp.bars, path) // off the screen already (BarRemoveOnComplete)
			}
		}
		for _, f := range p.Files {
			b := fp.bars[f.Path]
			if b == nil {
				// A line only for a file that is arriving: not for the thousands of a repository
				// of small files still waiting for a connection, nor one complete already.
				if f.Done == 0 || f.Done >= f.Size || len(fp.bars) >= maxFileBars {
					continue
				}
				b = fp.p.AddBar(f.Size, mpb.BarRemoveOnComplete(),
					mpb.PrependDecorators(decor.Name("  "+f.Path+" ", decor.WCSyncSpaceR), decor.Counters(decor.SizeB1024(0), "% .1f / % .1f")),
					mpb.AppendDecorators(decor.EwmaSpeed(decor.SizeB1024(0), "% .1f", ewmaAge), decor.Name(" ETA "), decor.EwmaETA(decor.ET_STYLE_GO, ewmaAge)))
				fp.bars[f.Path] = b
			}
			b.EwmaSetCurrent(f.Done, 500*time.Millisecond)
		}
	default:
		now := time.Now()
		if p.Phase != fp.phase || p.Phase == "downloading" && now.Sub(fp.lastLine) >= plainInterval {
			line := fmt.Sprintf("%s %s@%s", p.Phase, p.Repo, p.Revision)
			if p.Phase == "downloading" && p.TotalBytes > 0 {
				rate := ""
				if !fp.lastLine.IsZero() && p.Phase == fp.phase {
					bps := float64(p.DoneBytes-fp.lastDone) / now.Sub(fp.lastLine).Seconds()
					rate = fmt.Sprintf(", %s/s", humanBytes(int64(bps)))
					if bps > 0 {
						rate += fmt.Sprintf(", ETA %s", (time.Duration(float64(p.TotalBytes-p.DoneBytes)/bps) * time.Second).Round(time.Second))
					}
				}
				line += fmt.Sprintf(": %s / %s (%d%%)%s", humanBytes(p.DoneBytes), humanBytes(p.TotalBytes), p.DoneBytes*100/p.TotalBytes, rate)
			}
			fmt.Fprintln(fp.errw, line)
			fp.lastLine, fp.lastDone, fp.phase = now, p.DoneBytes, p.Phase
		}
	}
}

func (fp *fetchProgress) finish() {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	if fp.p == nil {
		return
	}
	for _, b := range fp.bars {
		b.Abort(true)
	}
	if fp.total != nil {
		fp.total.Abort(false)
	}
	fp.p.Wait()
}
