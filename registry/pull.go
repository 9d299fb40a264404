package registry

import (
	"context"
	"fmt"
	"io"
	"sync"
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
	// Once sends each chunk's bytes at most once: a later occurrence of a chunk already sent
	// whole in this pull is skipped like a chunk in Have (the client copies it).
	Once bool
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
	// The chunks are read from disk ahead of the send, pullReaders pieces at a time, and sent in
	// order: the device's read latency overlaps the send instead of adding to it, and a second read
	// in flight keeps the device busy when it is also writing (a pull into the same disk, as on a
	// device that pulls from its own daemon or in the benchmark: one read at a time next to a
	// writer got 0.7–0.85 GB/s here).
	free := make(chan []byte, pullBuffers)
	for range pullBuffers {
		free <- directio.AlignedBuffer(PullPieceSize)
	}
	reads := make(chan *pieceRead, pullBuffers)   // to the readers
	ordered := make(chan *pieceRead, pullBuffers) // to the sender, in file order
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var readers sync.WaitGroup
	for range pullReaders {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for pr := range reads {
				pr.read()
			}
		}()
	}
	perr := make(chan error, 1)
	var skipped int64
	sentWhole := map[Digest]bool{} // for req.Once
	go func() {
		defer close(ordered)
		defer close(reads)
		perr <- func() error {
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
					if req.Have[c.SHA256] || (req.Once && sentWhole[c.SHA256]) {
						skipped += to - from
						cs = ce
						continue
					}
					if from == cs && to == ce {
						sentWhole[c.SHA256] = true
					}
					err := s.queueChunk(rctx, c, sp.file, cs, from-cs, to-cs, free, func(pr *pieceRead) error {
						select {
						case ordered <- pr:
							reads <- pr // never blocks: as many slots as buffers
							return nil
						case <-rctx.Done():
							pr.chunk.release()
							free <- pr.buf
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
	fail := func(err error) (PullStats, error) {
		cancel()
		for pr := range ordered {
			<-pr.done
		}
		readers.Wait()
		<-perr
		return st, err
	}
	for pr := range ordered {
		if err := <-pr.done; err != nil {
			return fail(fmt.Errorf("pull %s %s: %w", ref, m.Files[pr.file].Path, err))
		}
		p := pr.buf[:pr.n]
		var err error
		if sink.Owned != nil {
			var released atomic.Bool
			buf := pr.buf
			err = sink.Owned(pr.file, pr.off, p, func() {
				if !released.Swap(true) {
					free <- buf // never blocks: free holds every buffer
				}
			})
		} else {
			err = sink.Data(pr.file, pr.off, p)
			free <- pr.buf
		}
		if err != nil {
			return fail(err)
		}
		st.BytesSent += int64(len(p))
	}
	readers.Wait()
	st.BytesSkipped = skipped
	return st, <-perr
}

const (
	// pullReaders is how many pieces a pull reads from disk at once. BenchmarkRegistry_Transfer
	// (client writing to the same disk), 3 alternating runs: one 648–783 MB/s, two 807–858, four
	// no better than two and with more CPU (the client then waited on its own writes).
	pullReaders = 2
	// pullBuffers is how many PullPieceSize buffers one pull owns: the pieces being read or waiting
	// to be sent (the read-ahead), and those an Owned sink still holds (gRPC's transport holds
	// about one message beyond what it has written).
	pullBuffers = 8
)

// pieceRead is one piece of a pull: bytes [at, at+n) of an open chunk, read into buf by a reader
// goroutine, which then sends the outcome on done. off is the piece's offset in file.
type pieceRead struct {
	chunk *openChunk
	file  int
	off   int64
	at, n int64
	buf   []byte
	done  chan error
}

func (pr *pieceRead) read() {
	defer pr.chunk.release()
	k, err := pr.chunk.r.ReadAt(pr.buf[:pr.n], pr.at)
	if int64(k) < pr.n {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		err = fmt.Errorf("%w: chunk %s is shorter than recorded: %v", ErrChecksum, pr.chunk.sum, err)
	} else {
		err = nil
	}
	pr.done <- err
}

// openChunk is a chunk blob open for the pieces being read from it; the last to release it closes
// it.
type openChunk struct {
	r    store.BlobReader
	sum  Digest
	refs atomic.Int32
}

func (c *openChunk) release() {
	if c.refs.Add(-1) == 0 {
		c.r.Close()
	}
}

// queueChunk opens chunk c (starting at file offset cs of file) and hands queue one pieceRead per
// PullPieceSize piece of its bytes [from, to), each with a buffer taken from free. queue owns the
// piece from then on.
func (s *Service) queueChunk(ctx context.Context, c ChunkRef, file int, cs, from, to int64, free <-chan []byte, queue func(*pieceRead) error) error {
	id, err := s.chunkBlob(ctx, c.SHA256)
	if err != nil {
		return err
	}
	r, err := s.db.OpenBlob(ctx, id)
	if err != nil {
		return fmt.Errorf("open chunk %s: %w", c.SHA256, err)
	}
	oc := &openChunk{r: r, sum: c.SHA256}
	oc.refs.Store(1) // queueChunk's own, until every piece is queued
	defer oc.release()
	for at := from; at < to; {
		var buf []byte
		select {
		case buf = <-free:
		case <-ctx.Done():
			return ctx.Err()
		}
		n := min(int64(len(buf)), to-at)
		oc.refs.Add(1)
		if err := queue(&pieceRead{chunk: oc, file: file, off: cs + at, at: at, n: n, buf: buf, done: make(chan error, 1)}); err != nil {
			return err
		}
		at += n
	}
	return nil
}
