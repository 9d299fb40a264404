package registry

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/buffdb/buffdbd/internal/directio"
	"github.com/buffdb/buffdbd/store"
)

// GCResult reports what CollectGarbage removed.
type GCResult struct {
	Sessions  int64 // expired upload sessions
	Chunks    int64 // chunk rows no version, live session or live stream referenced
	Bytes     int64 // their bytes
	Files     int64 // payload files the store removed
	FileBytes int64
	// Partials are files of partly received chunks removed: those of ended sessions, and temp
	// files a crash left.
	Partials     int64
	PartialBytes int64
}

// CollectGarbage removes expired upload sessions, then chunks nothing references (no published
// version, no unexpired session, no live push or pull in this process), then asks the store to
// remove payload files no blob references. It runs online: the decision to delete a chunk and a
// push's decision to rely on it are serialized by pinMu, and both happen inside store
// transactions.
func (s *Service) CollectGarbage(ctx context.Context) (GCResult, error) {
	var res GCResult
	s.pinMu.Lock()
	err := s.db.Update(ctx, func(tx *store.Tx) error {
		res = GCResult{}
		now := s.now().UnixNano()
		var expired []string
		err := tx.Query(`SELECT id FROM reg_sessions WHERE expires_at <= ?`, []any{now}, func(scan func(...any) error) error {
			var id string
			if err := scan(&id); err != nil {
				return err
			}
			expired = append(expired, id)
			return nil
		})
		if err != nil {
			return err
		}
		for _, id := range expired {
			if s.live[id] > 0 {
				continue // a push still running in this process: expired by the clock, not abandoned
			}
			if err := deleteSessionTx(tx, id); err != nil {
				return err
			}
			res.Sessions++
		}
		// Pins of sessions that no longer exist (a commit deletes its pins; this is belt and braces).
		if _, err := tx.Exec(`DELETE FROM reg_pins WHERE session NOT IN (SELECT id FROM reg_sessions)`); err != nil {
			return err
		}
		var orphans [][]byte
		err = tx.Query(`SELECT sha256 FROM reg_chunks c
				WHERE NOT EXISTS (SELECT 1 FROM reg_refs r WHERE r.chunk = c.sha256)
				AND NOT EXISTS (SELECT 1 FROM reg_pins p WHERE p.chunk = c.sha256)`, nil,
			func(scan func(...any) error) error {
				var sum []byte
				if err := scan(&sum); err != nil {
					return err
				}
				orphans = append(orphans, sum)
				return nil
			})
		if err != nil {
			return err
		}
		for _, sum := range orphans {
			n, err := s.dropChunkIfUnusedTx(tx, sum)
			if err != nil {
				return err
			}
			if n > 0 {
				res.Chunks++
				res.Bytes += n
			}
		}
		return nil
	})
	s.pinMu.Unlock()
	if err != nil {
		return GCResult{}, fmt.Errorf("registry gc: %w", err)
	}
	// The partly received chunks of sessions that ended (expired above, committed, or dropped by
	// a crash before their directory was).
	res.Partials, res.PartialBytes = s.sweepPartials(ctx, partialTmpAge)
	sr, err := s.db.CollectGarbage(ctx)
	if err != nil {
		return res, fmt.Errorf("registry gc: payload files: %w", err)
	}
	res.Files, res.FileBytes = sr.Files, sr.Bytes
	if f := s.opts.Metrics.GC; f != nil {
		f(res)
	}
	s.log.Info("registry gc", "sessions", res.Sessions, "chunks", res.Chunks, "bytes", res.Bytes, "files", res.Files,
		"partials", res.Partials)
	return res, nil
}

// CorruptChunk is a chunk Verify found missing or not matching its sha256, with the versions that
// use it.
type CorruptChunk struct {
	SHA256   Digest
	BlobID   uint64
	Err      error
	Versions []Ref
}

// VerifyResult summarizes a Verify run.
type VerifyResult struct {
	Chunks  int64
	Bytes   int64
	Corrupt []CorruptChunk
}

// Verify re-hashes the chunks of ref's version (every chunk if ref is nil), marks the ones whose
// bytes are missing or wrong as corrupt (pulls of versions using them fail with ErrChecksum until a
// push re-sends their bytes; see DESIGN.md on healing) and reports them. Memory stays flat: one chunk buffer.
func (s *Service) Verify(ctx context.Context, ref *Ref, progress func(chunks, bytes int64)) (VerifyResult, error) {
	var res VerifyResult
	type chunk struct {
		sum     []byte
		blobID  uint64
		corrupt bool
	}
	var chunks []chunk
	err := s.db.View(ctx, func(tx *store.Tx) error {
		q, args := `SELECT sha256, blob_id, corrupt FROM reg_chunks ORDER BY blob_id`, []any(nil)
		if ref != nil {
			r, err := resolveTx(tx, *ref)
			if err != nil {
				return err
			}
			q = `SELECT DISTINCT c.sha256, c.blob_id, c.corrupt FROM reg_refs r JOIN reg_chunks c ON c.sha256 = r.chunk
				WHERE r.name = ? AND r.version = ? ORDER BY c.blob_id`
			args = []any{r.Name, r.Version}
		}
		return tx.Query(q, args, func(scan func(...any) error) error {
			var c chunk
			if err := scan(&c.sum, &c.blobID, &c.corrupt); err != nil {
				return err
			}
			chunks = append(chunks, c)
			return nil
		})
	})
	if err != nil {
		return res, err
	}
	buf := directio.AlignedBuffer(1 << 20)
	for _, c := range chunks {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		var want Digest
		copy(want[:], c.sum)
		n, err := s.hashBlob(ctx, c.blobID, want, buf)
		res.Chunks++
		res.Bytes += n
		if progress != nil {
			progress(res.Chunks, res.Bytes)
		}
		if err == nil {
			if c.corrupt {
				// Sound again (its bytes were re-sent in place): pulls may use it.
				if err := s.db.Update(ctx, func(tx *store.Tx) error {
					_, err := tx.Exec(`UPDATE reg_chunks SET corrupt = 0 WHERE sha256 = ? AND blob_id = ?`, c.sum, c.blobID)
					return err
				}); err != nil {
					return res, fmt.Errorf("mark chunk %s sound: %w", want, err)
				}
			}
			continue
		}
		if errors.Is(err, context.Canceled) {
			return res, err
		}
		cc := CorruptChunk{SHA256: want, BlobID: c.blobID, Err: err}
		gone := false
		err = s.db.Update(ctx, func(tx *store.Tx) error {
			cc.Versions = nil
			// Only the row read above, and only if it still holds that blob: the chunk may have
			// been deleted (rm, GC, eviction) while it was being hashed, which is why its blob
			// was not found, and even stored again since under a new, sound blob.
			n, err := tx.Exec(`UPDATE reg_chunks SET corrupt = 1 WHERE sha256 = ? AND blob_id = ?`, c.sum, c.blobID)
			if err != nil {
				return err
			}
			if gone = n == 0; gone {
				return nil
			}
			return tx.Query(`SELECT DISTINCT name, version FROM reg_refs WHERE chunk = ? ORDER BY name, version`, []any{c.sum},
				func(scan func(...any) error) error {
					var r Ref
					if err := scan(&r.Name, &r.Version); err != nil {
						return err
					}
					cc.Versions = append(cc.Versions, r)
					return nil
				})
		})
		if err != nil {
			return res, fmt.Errorf("mark chunk %s corrupt: %w", want, err)
		}
		if gone {
			continue
		}
		s.log.Error("corrupt chunk", "sha256", want.String(), "blob", c.blobID, "err", cc.Err, "versions", len(cc.Versions))
		res.Corrupt = append(res.Corrupt, cc)
	}
	if f := s.opts.Metrics.VerifyFailure; f != nil && len(res.Corrupt) > 0 {
		f(len(res.Corrupt))
	}
	return res, nil
}

// hashBlob re-reads a blob and checks it hashes to want; it wraps ErrChecksum when it does not.
func (s *Service) hashBlob(ctx context.Context, id uint64, want Digest, buf []byte) (int64, error) {
	r, err := s.db.OpenBlob(ctx, id)
	if err != nil {
		return 0, fmt.Errorf("%w: open blob %d: %v", ErrChecksum, id, err)
	}
	defer r.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, io.NewSectionReader(r, 0, r.Info().Size), buf)
	if err != nil {
		return n, fmt.Errorf("%w: read blob %d: %v", ErrChecksum, id, err)
	}
	var got Digest
	h.Sum(got[:0])
	if got != want {
		return n, fmt.Errorf("%w: blob %d hashes to %s", ErrChecksum, id, got)
	}
	return n, nil
}
