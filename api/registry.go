package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	registrypb "github.com/buffdb/buffdbd/api/proto/registrypb"
	"github.com/buffdb/buffdbd/registry"
)

// The registry's sentinels in the one error→gRPC code table.
var _ = addErrorCodes(
	ErrorCode{registry.ErrNotFound, codes.NotFound},
	ErrorCode{registry.ErrExists, codes.AlreadyExists},
	ErrorCode{registry.ErrInvalid, codes.InvalidArgument},
	ErrorCode{registry.ErrBudget, codes.ResourceExhausted},
	ErrorCode{registry.ErrTooLarge, codes.ResourceExhausted},
	ErrorCode{registry.ErrDiskFull, codes.ResourceExhausted},
	ErrorCode{registry.ErrChecksum, codes.DataLoss},
	// The request is well-formed but the version's state forbids it until something else changes.
	ErrorCode{registry.ErrAliased, codes.FailedPrecondition},
	ErrorCode{registry.ErrPinned, codes.FailedPrecondition},
	ErrorCode{registry.ErrIncomplete, codes.FailedPrecondition},
	// A watcher that fell behind should re-read state and watch again: the retryable code.
	ErrorCode{registry.ErrWatchLagged, codes.Aborted},
	// Kept bytes of a cut chunk that did not verify were dropped: a new push sends it whole.
	ErrorCode{registry.ErrResumeMismatch, codes.Aborted},
	ErrorCode{registry.ErrClosed, codes.Unavailable},
)

// NewRegistry returns the buffdb.registry.Registry service over reg. Register it with
// Server.Register(&registrypb.Registry_ServiceDesc, NewRegistry(reg, log)).
func NewRegistry(reg *registry.Service, log *slog.Logger) registrypb.RegistryServer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &registryService{reg: reg, log: log}
}

type registryService struct {
	registrypb.UnimplementedRegistryServer
	reg *registry.Service
	log *slog.Logger
}

func (s *registryService) status(method string, err error) error { return Status(s.log, method, err) }

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{registry.ErrInvalid}, args...)...)
}

func (s *registryService) Push(stream registrypb.Registry_PushServer) error {
	err := s.push(stream)
	return s.status("Push", err)
}

func (s *registryService) push(stream registrypb.Registry_PushServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	open := first.GetOpen()
	if open == nil {
		return invalid("the first push message must be open")
	}
	up, err := s.reg.OpenUpload(ctx, registry.InfoFromProto(open.Info), open.Aliases)
	if err != nil {
		return err
	}
	defer up.Close()
	err = stream.Send(&registrypb.PushResponse{Msg: &registrypb.PushResponse_Opened{Opened: &registrypb.PushOpened{
		SessionId: up.Session(), Resumed: up.Resumed(), HashesFiles: true}}})
	if err != nil {
		return err
	}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return invalid("push stream ended without commit; nothing was published (push again to resume)")
		}
		if err != nil {
			return err
		}
		switch m := req.Msg.(type) {
		case *registrypb.PushRequest_FileBegin:
			err = up.BeginFile(m.FileBegin.Path, int64(m.FileBegin.Size))
		case *registrypb.PushRequest_Offer:
			var sum registry.Digest
			if sum, err = registry.DigestFromBytes(m.Offer.Sha256); err != nil {
				return err
			}
			var need bool
			var from int64
			if open.ResumeInChunk {
				need, from, err = up.OfferResumable(ctx, sum, int64(m.Offer.Size))
			} else {
				need, err = up.Offer(ctx, sum, int64(m.Offer.Size))
			}
			if err != nil {
				return err
			}
			err = stream.Send(&registrypb.PushResponse{Msg: &registrypb.PushResponse_Answer{Answer: &registrypb.ChunkAnswer{
				Need: need, Offset: uint64(from)}}})
		case *registrypb.PushRequest_Data:
			err = up.Write(m.Data.Data)
		case *registrypb.PushRequest_FileEnd:
			if len(m.FileEnd.Sha256) == 0 {
				err = up.EndFileHashed()
				break
			}
			var sum registry.Digest
			if sum, err = registry.DigestFromBytes(m.FileEnd.Sha256); err != nil {
				return err
			}
			err = up.EndFile(sum)
		case *registrypb.PushRequest_Commit:
			info, err := up.Commit(ctx)
			if err != nil {
				return err
			}
			st := up.Stats()
			return stream.Send(&registrypb.PushResponse{Msg: &registrypb.PushResponse_Committed{Committed: &registrypb.Committed{
				Info: registry.InfoToProto(info), BytesReceived: uint64(st.BytesReceived), BytesReused: uint64(st.BytesReused)}}})
		case *registrypb.PushRequest_Open:
			err = invalid("push opened twice on one stream")
		default:
			err = invalid("empty push message")
		}
		if err != nil {
			return err
		}
	}
}

func (s *registryService) Pull(req *registrypb.PullRequest, stream registrypb.Registry_PullServer) error {
	return s.status("Pull", s.pull(req, stream))
}

func (s *registryService) pull(req *registrypb.PullRequest, stream registrypb.Registry_PullServer) error {
	ref, err := registry.ParseRef(req.Ref)
	if err != nil {
		return err
	}
	pr := registry.PullRequest{Ref: ref, Have: make(map[registry.Digest]bool, len(req.HaveChunks)), Once: req.SendChunksOnce}
	for _, h := range req.HaveChunks {
		d, err := registry.DigestFromBytes(h)
		if err != nil {
			return err
		}
		pr.Have[d] = true
	}
	for _, r := range req.Ranges {
		if r.Offset > 1<<62 || r.Length > 1<<62 {
			return invalid("range of %s out of bounds", r.Path)
		}
		pr.Ranges = append(pr.Ranges, registry.FileRange{Path: r.Path, Offset: int64(r.Offset), Length: int64(r.Length)})
	}
	_, err = s.reg.Pull(stream.Context(), pr, registry.PullSink{
		Manifest: func(info registry.ModelInfo, m *registry.Manifest) error {
			return stream.Send(&registrypb.PullResponse{Msg: &registrypb.PullResponse_Manifest{Manifest: &registrypb.PullManifest{
				Info: registry.InfoToProto(info), Files: registry.FilesToProto(m.Files), SendsChunksOnce: req.SendChunksOnce}}})
		},
		// The piece's buffer goes to the transport without a copy (Codec) and back to the pull
		// once written.
		Owned: func(file int, offset int64, p []byte, release func()) error {
			return sendLent(stream, &registrypb.PullResponse{Msg: &registrypb.PullResponse_Data{Data: &registrypb.PullData{
				File: uint32(file), Offset: uint64(offset), Data: p}}}, release)
		},
	})
	return err
}

func (s *registryService) ListModels(ctx context.Context, req *registrypb.ListModelsRequest) (*registrypb.ListModelsResponse, error) {
	ms, err := s.reg.ListModels(ctx, registry.ListFilter{Prefix: req.Prefix, Framework: req.Framework, Parameters: req.Parameters})
	if err != nil {
		return nil, s.status("ListModels", err)
	}
	resp := &registrypb.ListModelsResponse{}
	for _, m := range ms {
		pm := &registrypb.ModelSummary{Name: m.Name, Aliases: m.Aliases}
		for _, v := range m.Versions {
			pm.Versions = append(pm.Versions, registry.VersionToProto(v))
		}
		resp.Models = append(resp.Models, pm)
	}
	return resp, nil
}

func (s *registryService) ListVersions(ctx context.Context, req *registrypb.ListVersionsRequest) (*registrypb.ListVersionsResponse, error) {
	vs, err := s.reg.ListVersions(ctx, req.Name)
	if err != nil {
		return nil, s.status("ListVersions", err)
	}
	resp := &registrypb.ListVersionsResponse{}
	for _, v := range vs {
		resp.Versions = append(resp.Versions, registry.VersionToProto(v))
	}
	return resp, nil
}

func (s *registryService) Show(ctx context.Context, req *registrypb.ShowRequest) (*registrypb.ShowResponse, error) {
	ref, err := registry.ParseRef(req.Ref)
	if err != nil {
		return nil, s.status("Show", err)
	}
	vi, err := s.reg.Show(ctx, ref)
	if err != nil {
		return nil, s.status("Show", err)
	}
	resp := &registrypb.ShowResponse{Info: registry.InfoToProto(vi.Info), Files: registry.FilesToProto(vi.Files),
		Size: uint64(vi.Size), Aliases: vi.Aliases, Pinned: vi.Pinned}
	if !vi.LastPulled.IsZero() {
		resp.LastPulled = timestamppb.New(vi.LastPulled)
	}
	return resp, nil
}

func (s *registryService) DeleteVersion(ctx context.Context, req *registrypb.DeleteVersionRequest) (*registrypb.DeleteVersionResponse, error) {
	ref, err := registry.ParseRef(req.Ref)
	if err != nil {
		return nil, s.status("DeleteVersion", err)
	}
	r, err := s.reg.DeleteVersion(ctx, ref, req.Force)
	if err != nil {
		return nil, s.status("DeleteVersion", err)
	}
	return &registrypb.DeleteVersionResponse{Name: r.Name, Version: r.Version}, nil
}

func (s *registryService) SetAlias(ctx context.Context, req *registrypb.SetAliasRequest) (*registrypb.SetAliasResponse, error) {
	prev, err := s.reg.SetAlias(ctx, req.Name, req.Alias, req.Version)
	if err != nil {
		return nil, s.status("SetAlias", err)
	}
	return &registrypb.SetAliasResponse{Previous: prev}, nil
}

func (s *registryService) RemoveAlias(ctx context.Context, req *registrypb.RemoveAliasRequest) (*registrypb.RemoveAliasResponse, error) {
	prev, err := s.reg.RemoveAlias(ctx, req.Name, req.Alias)
	if err != nil {
		return nil, s.status("RemoveAlias", err)
	}
	return &registrypb.RemoveAliasResponse{Previous: prev}, nil
}

func (s *registryService) SetPinned(ctx context.Context, req *registrypb.SetPinnedRequest) (*registrypb.SetPinnedResponse, error) {
	ref, err := registry.ParseRef(req.Ref)
	if err != nil {
		return nil, s.status("SetPinned", err)
	}
	r, err := s.reg.SetPinned(ctx, ref, req.Pinned)
	if err != nil {
		return nil, s.status("SetPinned", err)
	}
	return &registrypb.SetPinnedResponse{Name: r.Name, Version: r.Version}, nil
}

var eventKinds = map[registry.EventKind]registrypb.WatchEvent_Kind{
	registry.EventPublished:    registrypb.WatchEvent_PUBLISHED,
	registry.EventDeleted:      registrypb.WatchEvent_DELETED,
	registry.EventEvicted:      registrypb.WatchEvent_EVICTED,
	registry.EventAliasSet:     registrypb.WatchEvent_ALIAS_SET,
	registry.EventAliasRemoved: registrypb.WatchEvent_ALIAS_REMOVED,
}

func (s *registryService) Watch(req *registrypb.WatchRequest, stream registrypb.Registry_WatchServer) error {
	var sendErr error
	err := s.reg.Watch(stream.Context(), req.Name, func() {
		sendErr = stream.Send(&registrypb.WatchEvent{Kind: registrypb.WatchEvent_READY, Name: req.Name})
	}, func(ev registry.Event) error {
		if sendErr != nil {
			return sendErr
		}
		return stream.Send(&registrypb.WatchEvent{Kind: eventKinds[ev.Kind], Name: ev.Name, Version: ev.Version,
			Alias: ev.Alias, Previous: ev.Previous})
	})
	if sendErr != nil {
		err = sendErr
	}
	return s.status("Watch", err)
}

func (s *registryService) CollectGarbage(ctx context.Context, req *registrypb.CollectGarbageRequest) (*registrypb.CollectGarbageResponse, error) {
	opts := registry.GCOptions{AbandonUploads: req.AbandonUploads}
	if req.IdleSeconds > 0 {
		if req.IdleSeconds > uint64(math.MaxInt64/int64(time.Second)) {
			return nil, s.status("CollectGarbage", invalid("idle_seconds %d is too large", req.IdleSeconds))
		}
		opts.IdleFor = time.Duration(req.IdleSeconds) * time.Second
	}
	if len(req.Versions) > 0 && !req.AbandonUploads {
		return nil, s.status("CollectGarbage", invalid("versions given without abandon_uploads"))
	}
	for _, v := range req.Versions {
		r, err := registry.ParseRef(v)
		if err == nil && (r.Version == "" || r.Alias != "") {
			err = invalid("abandon the upload of %q: want name:version", v)
		}
		if err != nil {
			return nil, s.status("CollectGarbage", err)
		}
		opts.Versions = append(opts.Versions, r)
	}
	res, err := s.reg.CollectGarbageWith(ctx, opts)
	if err != nil {
		return nil, s.status("CollectGarbage", err)
	}
	return &registrypb.CollectGarbageResponse{Sessions: uint64(res.Sessions), Chunks: uint64(res.Chunks),
		Bytes: uint64(res.Bytes), Files: uint64(res.Files), FileBytes: uint64(res.FileBytes),
		AbandonedSessions: uint64(res.Abandoned), PartialFiles: uint64(res.Partials), PartialBytes: uint64(res.PartialBytes),
		KeptSessions: uint64(res.KeptSessions), LiveSessions: uint64(res.LiveSessions), KeptBytes: uint64(res.KeptBytes),
		AbandonSupported: true}, nil
}

func (s *registryService) Verify(ctx context.Context, req *registrypb.VerifyRequest) (*registrypb.VerifyResponse, error) {
	var ref *registry.Ref
	if req.Ref != "" {
		r, err := registry.ParseRef(req.Ref)
		if err != nil {
			return nil, s.status("Verify", err)
		}
		ref = &r
	}
	res, err := s.reg.Verify(ctx, ref, nil)
	if err != nil {
		return nil, s.status("Verify", err)
	}
	resp := &registrypb.VerifyResponse{Chunks: uint64(res.Chunks), Bytes: uint64(res.Bytes)}
	for _, c := range res.Corrupt {
		pc := &registrypb.CorruptChunk{Sha256: c.SHA256[:], BlobId: c.BlobID, Error: c.Err.Error()}
		for _, v := range c.Versions {
			pc.Versions = append(pc.Versions, v.String())
		}
		resp.Corrupt = append(resp.Corrupt, pc)
	}
	return resp, nil
}

func (s *registryService) Stats(ctx context.Context, _ *registrypb.StatsRequest) (*registrypb.StatsResponse, error) {
	st, err := s.reg.Stats(ctx)
	if err != nil {
		return nil, s.status("Stats", err)
	}
	return &registrypb.StatsResponse{Models: uint64(st.Models), Versions: uint64(st.Versions), Chunks: uint64(st.Chunks),
		StoredBytes: uint64(st.StoredBytes), LogicalBytes: uint64(st.LogicalBytes), SessionsOpen: uint64(st.SessionsOpen),
		CorruptChunks: uint64(st.CorruptChunks)}, nil
}
