package registry

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"golang.org/x/sync/errgroup"

	"github.com/buffdb/buffdbd/internal/directio"
	"github.com/buffdb/buffdbd/store"
)

// ImportRequest publishes a version from local content (the Hugging Face fetcher, `model push`
// without a daemon).
type ImportRequest struct {
	Info    ModelInfo
	Files   []ImportFile
	Aliases []string // set atomically with the publish, besides latest
}

// ImportFile is one file of an ImportRequest.
type ImportFile struct {
	Path   string
	Size   int64
	SHA256 [32]byte // known digest, verified while storing unless Verified
	// Verified: the caller has already hashed the bytes Open returns and they match SHA256 (the
	// Hugging Face fetcher hashes every file as it verifies the download), so Import does not hash
	// the whole file again; it still hashes each chunk, to address it.
	Verified bool
	// Open returns the file's bytes. nil reuses the already-stored file with this SHA256 (see
	// HasContent); ErrNotFound if none is stored any more.
	Open func() (io.ReadCloser, error)
	// Sum, if set, supplies SHA256 once Open's reader has returned io.EOF: for content the caller
	// verifies while Import reads it (the fetcher imports a file as it downloads), whose sha256 is
	// known only at the end.
	Sum func() [32]byte
}

// Import publishes a version from local content: chunks are stored durably (deduplicated against
// everything stored), then one transaction publishes metadata, indexes, manifest, latest and
// req.Aliases, applying the disk budget. ErrBudget if it cannot fit, ErrChecksum if a file's bytes
// do not match its SHA256, ErrExists if the version is published. On failure nothing is visible;
// chunks already stored stay pinned to the upload session so a retry does not store them again.
func (s *Service) Import(ctx context.Context, req ImportRequest) (err error) {
	_, err = s.ImportStats(ctx, req)
	return err
}

// ImportStats is Import, also reporting what was moved.
func (s *Service) ImportStats(ctx context.Context, req ImportRequest) (st UploadStats, err error) {
	defer func() {
		s.metric(s.opts.Metrics.Push, err)
		if f := s.opts.Metrics.BytesReceived; f != nil && st.BytesReceived > 0 {
			f(st.BytesReceived)
		}
		if f := s.opts.Metrics.BytesDeduped; f != nil && st.BytesReused > 0 {
			f(st.BytesReused)
		}
	}()
	u, err := s.OpenUpload(ctx, req.Info, req.Aliases)
	if err != nil {
		return st, err
	}
	u.imported = true
	defer u.Close()
	for _, f := range req.Files {
		if err := u.beginFile(f.Path, f.Size, f.Verified && f.Open != nil); err != nil {
			return u.Stats(), err
		}
		if f.Open == nil {
			err = s.importStored(ctx, u, f)
		} else {
			err = s.importReader(ctx, u, f)
		}
		if err != nil {
			return u.Stats(), fmt.Errorf("import %s: %w", f.Path, err)
		}
		sum := f.SHA256
		if f.Sum != nil {
			sum = f.Sum()
		}
		if err := u.EndFile(sum); err != nil {
			return u.Stats(), err
		}
	}
	_, err = u.Commit(ctx)
	return u.Stats(), err
}

// importAhead is how many chunks the import's chunker and hashers may run ahead of the offers: enough
// to keep both busy, few enough (chunks are up to 4 MiB) to keep memory small.
const importAhead = 2

// importBufs is how many chunk buffers (up to 4 MiB each) one import file uses: the chunks queued
// ahead and being hashed, and those the chunk writers are making durable. Reused buffers keep the
// import's memory fixed and its pages warm; a fresh allocation per chunk cost as much CPU as a copy.
const importBufs = 6

// importReader chunks f, hashes the chunks, and offers and writes them in file order. Chunking and
// hashing run on separate goroutines: on a multi-core device an import then takes about as long as
// the slower of the two (each ~1 GB/s per core on the benchmark VM), not their sum. Each chunk is
// read straight into an aligned buffer (Chunker.NextInto), from which it is hashed and written to
// its payload file with direct I/O.
func (s *Service) importReader(ctx context.Context, u *Upload, f ImportFile) error {
	rc, err := f.Open()
	if err != nil {
		return err
	}
	defer rc.Close()
	type job struct {
		data   []byte // the chunk, in a buffer from bufs
		sum    [32]byte
		hashed chan struct{}
	}
	// One byte more than the file's size (below the maximum chunk), so that content longer than
	// declared shows in the chunk read into it.
	bufs := newBufRing(int(min(f.Size+1, MaxChunkSize)), importBufs)
	ordered := make(chan *job, importAhead) // to the offering goroutine, in file order
	toHash := make(chan *job, importAhead)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(ordered)
		defer close(toHash)
		ch := NewChunker(rc)
		var total int64
		for {
			buf, err := bufs.get(gctx)
			if err != nil {
				return err
			}
			chunk, _, err := ch.NextInto(buf)
			if errors.Is(err, io.EOF) {
				bufs.put(buf)
				break
			}
			if err != nil {
				bufs.put(buf)
				return fmt.Errorf("read: %w", err)
			}
			total += int64(len(chunk))
			if total > f.Size {
				bufs.put(buf)
				return fmt.Errorf("%w: content is longer than the declared %d bytes", ErrInvalid, f.Size)
			}
			j := &job{data: chunk, hashed: make(chan struct{})}
			for _, q := range []chan *job{toHash, ordered} {
				select {
				case q <- j:
				case <-gctx.Done():
					return gctx.Err()
				}
			}
		}
		if total != f.Size {
			return fmt.Errorf("%w: content is %d bytes, declared %d", ErrInvalid, total, f.Size)
		}
		return nil
	})
	g.Go(func() error {
		for j := range toHash {
			j.sum = sha256.Sum256(j.data)
			close(j.hashed)
		}
		return nil
	})
	g.Go(func() error {
		for j := range ordered {
			select {
			case <-j.hashed:
			case <-gctx.Done():
				return gctx.Err()
			}
			need, err := u.Offer(gctx, j.sum, int64(len(j.data)))
			if err != nil {
				return err
			}
			if !need {
				bufs.put(j.data)
				continue
			}
			if err := u.WriteChunk(j.data, func() { bufs.put(j.data) }); err != nil {
				return err
			}
		}
		return nil
	})
	return g.Wait()
}

// bufRing hands out at most n aligned buffers of one size, recycled through a directio.Pool. put
// never blocks, so a buffer can be returned from anywhere, at any time.
type bufRing struct {
	pool   *directio.Pool
	tokens chan struct{} // one per buffer that may be handed out
}

func newBufRing(size, n int) *bufRing {
	r := &bufRing{pool: directio.NewPool(size, n), tokens: make(chan struct{}, n)}
	for range n {
		r.tokens <- struct{}{}
	}
	return r
}

func (r *bufRing) get(ctx context.Context) ([]byte, error) {
	select {
	case <-r.tokens:
		b, _ := r.pool.Get()
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (r *bufRing) put(b []byte) {
	r.pool.Put(b)
	r.tokens <- struct{}{}
}

// importStored offers the chunks of an already-stored file with the same sha256.
func (s *Service) importStored(ctx context.Context, u *Upload, f ImportFile) error {
	var chunks []ChunkRef
	err := s.db.View(ctx, func(tx *store.Tx) error {
		var name, version string
		var idx int64
		found := false
		err := tx.Query(`SELECT name, version, idx FROM reg_files f WHERE sha256 = ? AND size = ? AND `+soundFile+` LIMIT 1`, []any{f.SHA256[:], f.Size},
			func(scan func(...any) error) error { found = true; return scan(&name, &version, &idx) })
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("%w: no stored file has sha256 %s and %d bytes; provide its content", ErrNotFound, Digest(f.SHA256), f.Size)
		}
		return tx.Query(`SELECT r.chunk, c.size FROM reg_refs r JOIN reg_chunks c ON c.sha256 = r.chunk
				WHERE r.name = ? AND r.version = ? AND r.file = ? ORDER BY r.seq`, []any{name, version, idx},
			func(scan func(...any) error) error {
				var c ChunkRef
				var sum []byte
				if err := scan(&sum, &c.Size); err != nil {
					return err
				}
				copy(c.SHA256[:], sum)
				chunks = append(chunks, c)
				return nil
			})
	})
	if err != nil {
		return err
	}
	for _, c := range chunks {
		need, err := u.Offer(ctx, c.SHA256, c.Size)
		if err != nil {
			return err
		}
		if need {
			return fmt.Errorf("%w: chunk %s of the stored copy was removed concurrently; provide the content", ErrNotFound, c.SHA256)
		}
	}
	return nil
}
