package registry

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/buffdb/buffdbd/internal/directio"
	"github.com/buffdb/buffdbd/store"
)

// GCResult reports what CollectGarbage removed.
type GCResult struct {
	Sessions int64 // expired upload sessions
	// Abandoned are upload sessions dropped on request (GCOptions.AbandonUploads) before they
	// expired, with their pins and partial files.
	Abandoned int64
	// KeptSessions are the upload sessions left after the run: a push is streaming to them, or
	// they were idle for less than GCOptions.IdleFor (or no abandon was asked for). KeptBytes are
	// the bytes of the chunks they alone hold on disk (no published version uses them).
	KeptSessions int64
	KeptBytes    int64
	// LiveSessions are the kept sessions a push in this process is streaming to: never dropped.
	LiveSessions int64
	Chunks       int64 // chunk rows no version, live session or live stream referenced
	Bytes        int64 // their bytes
	Files        int64 // payload files the store removed
	FileBytes    int64
	// Partials are files of partly received chunks removed: those of ended sessions, and temp
	// files a crash left.
	Partials     int64
	PartialBytes int64
}

// GCOptions ask CollectGarbageWith to do more than the routine collection.
type GCOptions struct {
	// AbandonUploads drops upload sessions before they expire: every session no push in this
	// process is streaming to and that has been idle for at least IdleFor (0: any). Idle is
	// measured from when the last push of the session began or stopped (the session's expiry
	// minus the configured SessionTTL). A push of a dropped version later starts over.
	AbandonUploads bool
	IdleFor        time.Duration
	// Versions, if not empty, limits AbandonUploads to the sessions of these versions (Name and
	// Version of each; no alias).
	Versions []Ref
}

// CollectGarbage is CollectGarbageWith without options: the routine collection.
func (s *Service) CollectGarbage(ctx context.Context) (GCResult, error) {
	return s.CollectGarbageWith(ctx, GCOptions{})
}

// CollectGarbageWith removes expired upload sessions (and, with opts.AbandonUploads, idle ones),
// then chunks nothing references (no published version, no remaining session, no live push or
// pull in this process), then asks the store to remove payload files no blob references. It runs
// online: the decision to delete a chunk and a push's decision to rely on it are serialized by
// pinMu, and both happen inside store transactions. A session a push in this process is streaming
// to is never dropped (Service.live, which OpenUpload registers before it relies on the session).
func (s *Service) CollectGarbageWith(ctx context.Context, opts GCOptions) (GCResult, error) {
	if opts.IdleFor < 0 {
		return GCResult{}, fmt.Errorf("%w: gc: negative idle age %s", ErrInvalid, opts.IdleFor)
	}
	want := map[Ref]bool{}
	for _, r := range opts.Versions {
		if r.Name == "" || r.Version == "" || r.Alias != "" {
			return GCResult{}, fmt.Errorf("%w: gc: abandon the upload of %q: want name:version", ErrInvalid, r.String())
		}
		want[Ref{Name: r.Name, Version: r.Version}] = true
	}
	var res GCResult
	var dropped []string
	s.pinMu.Lock()
	err := s.db.Update(ctx, func(tx *store.Tx) error {
		res = GCResult{}
		dropped = dropped[:0]
		now := s.now()
		type session struct {
			id, name, version string
			expires           int64
		}
		var sessions []session
		err := tx.Query(`SELECT id, name, version, expires_at FROM reg_sessions`, nil, func(scan func(...any) error) error {
			var ss session
			if err := scan(&ss.id, &ss.name, &ss.version, &ss.expires); err != nil {
				return err
			}
			sessions = append(sessions, ss)
			return nil
		})
		if err != nil {
			return err
		}
		for _, ss := range sessions {
			if s.opening[Ref{Name: ss.name, Version: ss.version}] > 0 {
				res.KeptSessions++ // a push is opening it: about to be live
				continue
			}
			if s.live[ss.id] > 0 {
				// A push still running in this process: not abandoned, whatever the clock says.
				res.KeptSessions++
				res.LiveSessions++
				continue
			}
			expired := ss.expires <= now.UnixNano()
			abandon := false
			if !expired && opts.AbandonUploads && (len(want) == 0 || want[Ref{Name: ss.name, Version: ss.version}]) {
				// The last push of it began or stopped at expires_at - SessionTTL (Close and
				// OpenUpload set it so).
				idleSince := time.Unix(0, ss.expires).Add(-s.opts.SessionTTL)
				abandon = now.Sub(idleSince) >= opts.IdleFor
			}
			if !expired && !abandon {
				res.KeptSessions++
				continue
			}
			if err := deleteSessionTx(tx, ss.id); err != nil {
				return err
			}
			dropped = append(dropped, ss.id)
			if expired {
				res.Sessions++
			} else {
				res.Abandoned++
			}
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
		// What the remaining sessions alone hold, so an operator whose disk is full learns that
		// an interrupted push is what holds it, and how much dropping it would free.
		return tx.Query(`SELECT COALESCE(SUM(c.size), 0) FROM reg_chunks c
				WHERE EXISTS (SELECT 1 FROM reg_pins p WHERE p.chunk = c.sha256)
				AND NOT EXISTS (SELECT 1 FROM reg_refs r WHERE r.chunk = c.sha256)`, nil,
			func(scan func(...any) error) error { return scan(&res.KeptBytes) })
	})
	s.pinMu.Unlock()
	if err != nil {
		return GCResult{}, fmt.Errorf("registry gc: %w", err)
	}
	// The partly received chunks of the sessions dropped now, then of sessions that ended
	// otherwise (committed, or dropped by a crash before their directory was).
	for _, id := range dropped {
		n, b := s.removeSessionPartials(id)
		res.Partials, res.PartialBytes = res.Partials+n, res.PartialBytes+b
	}
	n, b := s.sweepPartials(ctx, partialTmpAge)
	res.Partials, res.PartialBytes = res.Partials+n, res.PartialBytes+b
	sr, err := s.db.CollectGarbage(ctx)
	if err != nil {
		return res, fmt.Errorf("registry gc: payload files: %w", err)
	}
	res.Files, res.FileBytes = sr.Files, sr.Bytes
	if f := s.opts.Metrics.GC; f != nil {
		f(res)
	}
	s.log.Info("registry gc", "sessions", res.Sessions, "abandoned", res.Abandoned, "kept_sessions", res.KeptSessions,
		"chunks", res.Chunks, "bytes", res.Bytes, "files", res.Files, "partials", res.Partials)
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
