package registry

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/buffdb/buffdbd/internal/directio"
	"github.com/buffdb/buffdbd/store"
)

// PullPieceSize is the payload of one pull data message. 1 MiB amortizes per-message cost (framing,
// a syscall, a flow-control update) to noise while staying a quarter of gRPC's default 4 MiB receive
// limit, so any client with default settings can pull.
const PullPieceSize = 1 << 20

// PullRequest says what to send.
type PullRequest struct {
	Ref Ref
	// Have lists chunks the client already holds; their bytes are not sent (delta pull).
	Have map[Digest]bool
	// Ranges restricts the transfer to byte ranges of files (resume from an offset, or a range
	// read). Empty means every file, whole.
	Ranges []FileRange
}

// FileRange is a byte range of one file; Length <= 0 means to the end of the file.
type FileRange struct {
	Path   string
	Offset int64
	Length int64
}

// PullSink receives a pull: first the manifest, then the data pieces in manifest order (file by
// file, ascending offsets), skipping chunks in PullRequest.Have.
type PullSink struct {
	Manifest func(info ModelInfo, m *Manifest) error
	// Data receives bytes [offset, offset+len(p)) of file number file. p is reused after it returns.
	Data func(file int, offset int64, p []byte) error
	// Owned, if set, is called instead of Data and takes p over: the pull reuses p only after the
	// sink calls release, exactly once, possibly after returning and from another goroutine. A gRPC
	// sink hands p to the transport this way, which writes it out without copying and releases it
	// once written.
	Owned func(file int, offset int64, p []byte, release func()) error
}

// PullStats counts what a pull moved.
type PullStats struct {
	BytesSent    int64
	BytesSkipped int64 // bytes of chunks the client already had
}

// Pull streams a version to sink. The version's chunks are pinned for the duration, so a
// concurrent delete or eviction cannot pull them from under the stream. ErrChecksum if a chunk was
// marked corrupt by Verify.
func (s *Service) Pull(ctx context.Context, req PullRequest, sink PullSink) (st PullStats, err error) {
	defer func() {
		s.metric(s.opts.Metrics.Pull, err)
		if f := s.opts.Metrics.BytesSent; f != nil && st.BytesSent > 0 {
			f(st.BytesSent)
		}
		if f := s.opts.Metrics.BytesDeduped; f != nil && st.BytesSkipped > 0 {
			f(st.BytesSkipped)
		}
	}()
	var vi VersionInfo
	var pinned [][32]byte
	s.pinMu.Lock()
	err = s.db.View(ctx, func(tx *store.Tx) error {
		r, err := resolveTx(tx, req.Ref)
		if err != nil {
			return err
		}
		vi, err = versionInfoTx(tx, r.Name, r.Version, true)
		return err
	})
	if err == nil {
		for _, f := range vi.Files {
			for _, c := range f.Chunks {
				s.pinLocked(c.SHA256)
				pinned = append(pinned, c.SHA256)
			}
		}
	}
	s.pinMu.Unlock()
	if err != nil {
		return st, err
	}
	defer s.unpin(pinned)
	ref := Ref{Name: vi.Info.Name, Version: vi.Info.Version}
	m := &Manifest{Files: vi.Files}

	type span struct {
		file     int
		from, to int64
	}
	var spans []span
	if len(req.Ranges) == 0 {
		for i, f := range m.Files {
			spans = append(spans, span{i, 0, f.Size})
		}
	} else {
		idx := map[string]int{}
		for i, f := range m.Files {
			idx[f.Path] = i
		}
		last := -1
		for _, r := range req.Ranges {
			i, ok := idx[r.Path]
			if !ok {
				return st, fmt.Errorf("%w: %s has no file %q", ErrNotFound, ref, r.Path)
			}
			size := m.Files[i].Size
			if r.Offset < 0 || r.Offset > size {
				return st, fmt.Errorf("%w: offset %d outside %s (%d bytes)", ErrInvalid, r.Offset, r.Path, size)
			}
			end := size
			if r.Length > 0 && r.Offset+r.Length < size {
				end = r.Offset + r.Length
			}
			if i <= last {
				return st, fmt.Errorf("%w: ranges must name files once each, in manifest order", ErrInvalid)
			}
			last = i
			spans = append(spans, span{i, r.Offset, end})
		}
	}
	if err := s.markPulled(ctx, ref); err != nil {
		return st, fmt.Errorf("record pull: %w", err)
	}
	if err := sink.Manifest(vi.Info, m); err != nil {
		return st, err
	}
	// One goroutine reads the chunks from disk ahead of the one sending them, so the device's read
	// latency (direct reads, see store) overlaps the send instead of adding to it.
	type piece struct {
		file int
		off  int64
		p    []byte
	}
	free := make(chan []byte, pullBuffers)
	for range pullBuffers {
		free <- directio.AlignedBuffer(PullPieceSize)
	}
	pieces := make(chan piece, pullReadAhead)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rerr := make(chan error, 1)
	var skipped int64
	go func() {
		defer close(pieces)
		rerr <- func() error {
			for _, sp := range spans {
				f := m.Files[sp.file]
				var cs int64
				for _, c := range f.Chunks {
					ce := cs + c.Size
					from, to := max(cs, sp.from), min(ce, sp.to)
					if from >= to {
						cs = ce
						continue
					}
					if req.Have[c.SHA256] {
						skipped += to - from
						cs = ce
						continue
					}
					base := cs
					err := s.readChunk(rctx, c, from-cs, to-cs, free, func(p []byte, off int64) error {
						select {
						case pieces <- piece{sp.file, base + off, p}:
							return nil
						case <-rctx.Done():
							return rctx.Err()
						}
					})
					if err != nil {
						return fmt.Errorf("pull %s %s: %w", ref, f.Path, err)
					}
					cs = ce
				}
			}
			return nil
		}()
	}()
	for pc := range pieces {
		var err error
		if sink.Owned != nil {
			var released atomic.Bool
			buf := pc.p[:cap(pc.p)]
			err = sink.Owned(pc.file, pc.off, pc.p, func() {
				if !released.Swap(true) {
					free <- buf // never blocks: free holds every buffer
				}
			})
		} else {
			err = sink.Data(pc.file, pc.off, pc.p)
			free <- pc.p[:cap(pc.p)]
		}
		if err != nil {
			cancel()
			for range pieces {
			}
			<-rerr
			return st, err
		}
		st.BytesSent += int64(len(pc.p))
	}
	st.BytesSkipped = skipped
	return st, <-rerr
}

// pullReadAhead is how many PullPieceSize pieces a pull reads ahead of its sender.
const pullReadAhead = 4

// pullBuffers is how many PullPieceSize buffers one pull owns: the read-ahead, the piece being
// sent, and the pieces an Owned sink still holds (gRPC's transport holds about one message beyond
// what it has written).
const pullBuffers = pullReadAhead + 4

// readChunk reads bytes [from, to) of a chunk in PullPieceSize pieces, each into a buffer taken
// from free, and hands them to emit, which owns the buffer from then on.
func (s *Service) readChunk(ctx context.Context, c ChunkRef, from, to int64, free <-chan []byte, emit func(p []byte, off int64) error) error {
	id, err := s.chunkBlob(ctx, c.SHA256)
	if err != nil {
		return err
	}
	r, err := s.db.OpenBlob(ctx, id)
	if err != nil {
		return fmt.Errorf("open chunk %s: %w", c.SHA256, err)
	}
	defer r.Close()
	for off := from; off < to; {
		var buf []byte
		select {
		case buf = <-free:
		case <-ctx.Done():
			return ctx.Err()
		}
		n := min(int64(len(buf)), to-off)
		k, err := r.ReadAt(buf[:n], off)
		if int64(k) < n {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("%w: chunk %s is shorter than recorded: %v", ErrChecksum, c.SHA256, err)
		}
		if err := emit(buf[:n], off); err != nil {
			return err
		}
		off += n
	}
	return nil
}
