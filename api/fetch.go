package api

import (
	"errors"
	"log/slog"
	"sync"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	registrypb "github.com/buffdb/buffdbd/api/proto/registrypb"
	"github.com/buffdb/buffdbd/huggingface"
	"github.com/buffdb/buffdbd/registry"
)

var _ = addErrorCodes(
	ErrorCode{huggingface.ErrInvalidRef, codes.InvalidArgument},
	ErrorCode{huggingface.ErrRepoNotFound, codes.NotFound},
	ErrorCode{huggingface.ErrRevisionNotFound, codes.NotFound},
	ErrorCode{huggingface.ErrEntryNotFound, codes.NotFound},
	ErrorCode{huggingface.ErrGated, codes.PermissionDenied},
	ErrorCode{huggingface.ErrUnauthorized, codes.Unauthenticated},
	ErrorCode{huggingface.ErrRateLimited, codes.ResourceExhausted},
	ErrorCode{huggingface.ErrOffline, codes.Unavailable},
	ErrorCode{huggingface.ErrProtocol, codes.Unavailable},
	ErrorCode{huggingface.ErrChecksum, codes.DataLoss},
	ErrorCode{huggingface.ErrNoSpace, codes.ResourceExhausted},
	// The Hub's listing is the problem, not the request: the same request may work on a fixed repo.
	ErrorCode{huggingface.ErrUnsafePath, codes.FailedPrecondition},
)

// FetchErrorDomain is the google.rpc.ErrorInfo domain of Fetch errors.
const FetchErrorDomain = "huggingface.buffdb.dev"

// fetchReasons are the ErrorInfo reasons of Fetch errors: several sentinels share a gRPC code, and
// the CLI gives each its own exit code.
var fetchReasons = []struct {
	err    error
	reason string
}{
	{huggingface.ErrInvalidRef, "INVALID_REF"},
	{huggingface.ErrRepoNotFound, "REPO_NOT_FOUND"},
	{huggingface.ErrRevisionNotFound, "REVISION_NOT_FOUND"},
	{huggingface.ErrEntryNotFound, "ENTRY_NOT_FOUND"},
	{huggingface.ErrGated, "GATED"},
	{huggingface.ErrUnauthorized, "INVALID_TOKEN"},
	{huggingface.ErrRateLimited, "RATE_LIMITED"},
	{huggingface.ErrOffline, "OFFLINE"},
	{huggingface.ErrProtocol, "PROTOCOL"},
	{huggingface.ErrChecksum, "CHECKSUM"},
	{huggingface.ErrUnsafePath, "UNSAFE_PATH"},
	{registry.ErrBudget, "BUDGET"},
	{huggingface.ErrNoSpace, "NO_SPACE"},
	// The registry's data directory filling up while a fetch publishes is the same trouble for the
	// user; the client reads NO_SPACE back as huggingface.ErrNoSpace (the first entry above).
	{registry.ErrDiskFull, "NO_SPACE"},
}

// FetchErrorFromStatus turns a Fetch status error back into an error wrapping the sentinel its
// ErrorInfo reason names (so errors.Is works on the client as on the server), keeping the server's
// message. Errors without a known reason are returned unchanged.
func FetchErrorFromStatus(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.Domain != FetchErrorDomain {
			continue
		}
		for _, r := range fetchReasons {
			if r.reason == info.Reason {
				return &remoteError{msg: st.Message(), sentinel: r.err}
			}
		}
	}
	return err
}

type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

// FetcherFactory builds the Fetcher for one Fetch request, applying the request's overrides (token,
// endpoint, concurrency, rate) to the daemon's defaults.
type FetcherFactory func(req *registrypb.FetchRequest) (*huggingface.Fetcher, error)

// WithFetch returns rs with its Fetch RPC implemented by fetchers from newFetcher. Register the
// result instead of rs.
func WithFetch(rs registrypb.RegistryServer, newFetcher FetcherFactory, log *slog.Logger) registrypb.RegistryServer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &fetchService{RegistryServer: rs, newFetcher: newFetcher, log: log}
}

type fetchService struct {
	registrypb.RegistryServer
	newFetcher FetcherFactory
	log        *slog.Logger
}

func (s *fetchService) Fetch(req *registrypb.FetchRequest, stream registrypb.Registry_FetchServer) error {
	err := s.fetch(req, stream)
	if err == nil {
		return nil
	}
	st := status.Convert(Status(s.log, "Fetch", err))
	for _, r := range fetchReasons {
		if errors.Is(err, r.err) {
			if d, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: r.reason, Domain: FetchErrorDomain}); derr == nil {
				st = d
			}
			break
		}
	}
	return st.Err()
}

func (s *fetchService) fetch(req *registrypb.FetchRequest, stream registrypb.Registry_FetchServer) error {
	rev := req.GetRevision()
	if rev == "" {
		rev = huggingface.DefaultRevision
	}
	ref, err := huggingface.ParseRef("hf:" + req.GetRepo() + "@" + rev)
	if err != nil {
		return err
	}
	// 256 connections already exceed what any CDN grants one client; more only costs memory.
	if req.GetConcurrency() > 256 {
		return invalid("concurrency %d: at most 256", req.GetConcurrency())
	}
	f, err := s.newFetcher(req)
	if err != nil {
		return err
	}
	// OnProgress is called from the fetch's goroutine and its ticker; gRPC forbids concurrent Send.
	var mu sync.Mutex
	var sendErr error
	send := func(m *registrypb.FetchProgress) {
		mu.Lock()
		defer mu.Unlock()
		if sendErr == nil {
			sendErr = stream.Send(m)
		}
	}
	res, err := f.Fetch(stream.Context(), huggingface.Request{
		Ref: ref, Include: req.GetInclude(), Exclude: req.GetExclude(), Offline: req.GetOffline(),
		OnProgress: func(p huggingface.Progress) { send(progressToPB(p)) },
	})
	if err != nil {
		return err
	}
	last := &registrypb.FetchProgress{Phase: "done", Commit: res.Version, Result: &registrypb.FetchResult{
		Name: res.Name, Version: res.Version, Alias: res.Alias, Files: uint64(res.Files), Bytes: uint64(res.Bytes),
		DownloadedBytes: uint64(res.Downloaded), ReusedFiles: uint64(res.Reused), AlreadyHad: res.AlreadyHad, Offline: res.Offline,
	}}
	send(last)
	return sendErr
}

func progressToPB(p huggingface.Progress) *registrypb.FetchProgress {
	m := &registrypb.FetchProgress{Phase: p.Phase, Commit: p.Commit, TotalBytes: uint64(max(p.TotalBytes, 0)), DoneBytes: uint64(max(p.DoneBytes, 0))}
	for _, f := range p.Files {
		m.Files = append(m.Files, &registrypb.FetchFileProgress{Path: f.Path, Size: uint64(max(f.Size, 0)), Done: uint64(max(f.Done, 0)),
			SingleStream: f.SingleStream})
	}
	return m
}
