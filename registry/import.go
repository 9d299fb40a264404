package registry

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

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
	SHA256 [32]byte // known digest, verified while storing
	// Open returns the file's bytes. nil reuses the already-stored file with this SHA256 (see
	// HasContent); ErrNotFound if none is stored any more.
	Open func() (io.ReadCloser, error)
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
		if err := u.BeginFile(f.Path, f.Size); err != nil {
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
		if err := u.EndFile(f.SHA256); err != nil {
			return u.Stats(), err
		}
	}
	_, err = u.Commit(ctx)
	return u.Stats(), err
}

func (s *Service) importReader(ctx context.Context, u *Upload, f ImportFile) error {
	rc, err := f.Open()
	if err != nil {
		return err
	}
	defer rc.Close()
	ch := NewChunker(rc)
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		chunk, _, err := ch.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		total += int64(len(chunk))
		if total > f.Size {
			return fmt.Errorf("%w: content is longer than the declared %d bytes", ErrInvalid, f.Size)
		}
		sum := sha256.Sum256(chunk)
		need, err := u.Offer(ctx, sum, int64(len(chunk)))
		if err != nil {
			return err
		}
		if !need {
			continue
		}
		// Hand over copies in pull-sized pieces: the chunker reuses its buffer, while the payload
		// writer and the file hasher consume pieces asynchronously.
		for off := 0; off < len(chunk); off += PullPieceSize {
			piece := append([]byte(nil), chunk[off:min(off+PullPieceSize, len(chunk))]...)
			if err := u.Write(piece); err != nil {
				return err
			}
		}
	}
	if total != f.Size {
		return fmt.Errorf("%w: content is %d bytes, declared %d", ErrInvalid, total, f.Size)
	}
	return nil
}

// importStored offers the chunks of an already-stored file with the same sha256.
func (s *Service) importStored(ctx context.Context, u *Upload, f ImportFile) error {
	var chunks []ChunkRef
	err := s.db.View(ctx, func(tx *store.Tx) error {
		var name, version string
		var idx int64
		found := false
		err := tx.Query(`SELECT name, version, idx FROM reg_files WHERE sha256 = ? AND size = ? LIMIT 1`, []any{f.SHA256[:], f.Size},
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
