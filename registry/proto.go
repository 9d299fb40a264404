package registry

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	registrypb "github.com/buffdb/buffdbd/api/proto/registrypb"
)

// InfoToProto converts a ModelInfo to its wire form.
func InfoToProto(i ModelInfo) *registrypb.ModelInfo {
	p := &registrypb.ModelInfo{
		Name: i.Name, Version: i.Version, Framework: i.Framework, Description: i.Description,
		InputShape: i.InputShape, OutputShape: i.OutputShape, BlobIds: i.BlobIDs, Parameters: i.Parameters,
	}
	if !i.CreatedAt.IsZero() {
		p.CreatedAt = timestamppb.New(i.CreatedAt)
	}
	return p
}

// InfoFromProto converts the wire form of a ModelInfo (nil gives the zero ModelInfo).
func InfoFromProto(p *registrypb.ModelInfo) ModelInfo {
	if p == nil {
		return ModelInfo{}
	}
	i := ModelInfo{
		Name: p.Name, Version: p.Version, Framework: p.Framework, Description: p.Description,
		InputShape: p.InputShape, OutputShape: p.OutputShape, BlobIDs: p.BlobIds, Parameters: p.Parameters,
	}
	if p.CreatedAt != nil {
		i.CreatedAt = p.CreatedAt.AsTime()
	}
	return i
}

// FilesToProto converts manifest files to their wire form.
func FilesToProto(fs []File) []*registrypb.File {
	out := make([]*registrypb.File, len(fs))
	for i, f := range fs {
		pf := &registrypb.File{Path: f.Path, Size: uint64(f.Size), Sha256: f.SHA256[:], Chunks: make([]*registrypb.Chunk, len(f.Chunks))}
		for j, c := range f.Chunks {
			pf.Chunks[j] = &registrypb.Chunk{Sha256: c.SHA256[:], Size: uint64(c.Size)}
		}
		out[i] = pf
	}
	return out
}

// FilesFromProto converts and validates manifest files received from a server: paths must pass
// CleanPath, digests must be 32 bytes, chunk sizes must add up to the file size. Errors wrap
// ErrInvalid.
func FilesFromProto(pfs []*registrypb.File) ([]File, error) {
	out := make([]File, len(pfs))
	seen := map[string]bool{}
	for i, pf := range pfs {
		p, err := CleanPath(pf.GetPath())
		if err != nil {
			return nil, err
		}
		if seen[p] {
			return nil, errorf(ErrInvalid, "manifest lists %s twice", p)
		}
		seen[p] = true
		f := File{Path: p, Size: int64(pf.GetSize())}
		if f.SHA256, err = DigestFromBytes(pf.GetSha256()); err != nil {
			return nil, err
		}
		var total int64
		for _, pc := range pf.GetChunks() {
			d, err := DigestFromBytes(pc.GetSha256())
			if err != nil {
				return nil, err
			}
			if pc.GetSize() == 0 || pc.GetSize() > MaxChunkSize {
				return nil, errorf(ErrInvalid, "manifest chunk of %d bytes in %s", pc.GetSize(), p)
			}
			f.Chunks = append(f.Chunks, ChunkRef{SHA256: d, Size: int64(pc.GetSize())})
			total += int64(pc.GetSize())
		}
		if total != f.Size || f.Size < 0 {
			return nil, errorf(ErrInvalid, "manifest chunks of %s cover %d bytes, file has %d", p, total, f.Size)
		}
		out[i] = f
	}
	return out, nil
}

func tsOrNil(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// VersionToProto converts a VersionSummary.
func VersionToProto(v VersionSummary) *registrypb.VersionSummary {
	return &registrypb.VersionSummary{Version: v.Version, Framework: v.Framework, Size: uint64(v.Size),
		CreatedAt: tsOrNil(v.CreatedAt), Pinned: v.Pinned, LastPulled: tsOrNil(v.LastPulled), Aliases: v.Aliases}
}
