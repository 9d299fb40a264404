package registry

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/buffdb/buffdbd/store"
)

// haveChunk reports whether a sound copy of the chunk is stored and, if so, pins it in-process so
// GC cannot remove it before the caller's upload pins it durably. corrupt: a copy is stored that
// Verify found damaged (its bytes must be sent again, and replace the damaged file).
func (s *Service) haveChunk(ctx context.Context, sum [32]byte) (have, corrupt bool, err error) {
	s.pinMu.Lock()
	defer s.pinMu.Unlock()
	found := false
	var bad int64
	err = s.db.View(ctx, func(tx *store.Tx) error {
		return tx.Query(`SELECT corrupt FROM reg_chunks WHERE sha256 = ?`, []any{sum[:]},
			func(scan func(...any) error) error { found = true; return scan(&bad) })
	})
	if err != nil {
		return false, false, fmt.Errorf("look up chunk: %w", err)
	}
	if found && bad == 0 {
		s.pinLocked(sum)
		return true, false, nil
	}
	return false, found, nil
}

// recordChunk makes a durable payload a registry chunk (or heals a chunk Verify marked corrupt) and
// pins it to the upload session, in one transaction.
func (s *Service) recordChunk(ctx context.Context, session string, p *store.PendingPayload) error {
	pl := p.Payload()
	return s.db.Update(ctx, func(tx *store.Tx) error {
		var blobID, corrupt int64
		found := false
		err := tx.Query(`SELECT blob_id, corrupt FROM reg_chunks WHERE sha256 = ?`, []any{pl.SHA256[:]},
			func(scan func(...any) error) error { found = true; return scan(&blobID, &corrupt) })
		if err != nil {
			return err
		}
		if !found || corrupt != 0 {
			id, err := tx.StorePayloadBlob(pl, nil)
			if err != nil {
				return fmt.Errorf("store chunk blob: %w", err)
			}
			if _, err := tx.Exec(`INSERT INTO reg_chunks (sha256, blob_id, size) VALUES (?, ?, ?)
				ON CONFLICT (sha256) DO UPDATE SET blob_id = excluded.blob_id, corrupt = 0`, pl.SHA256[:], id, pl.Size); err != nil {
				return err
			}
			if found {
				if err := tx.DeleteBlob(uint64(blobID)); err != nil && !errors.Is(err, store.ErrNotFound) {
					return err
				}
			}
		}
		if session == "" {
			return nil
		}
		_, err = tx.Exec(`INSERT OR IGNORE INTO reg_pins (session, chunk) VALUES (?, ?)`, session, pl.SHA256[:])
		return err
	})
}

// chunkBlob returns the blob id holding a chunk; ErrNotFound if it is not stored, ErrChecksum if
// Verify marked it corrupt.
func (s *Service) chunkBlob(ctx context.Context, sum [32]byte) (uint64, error) {
	var blobID, corrupt int64
	found := false
	err := s.db.View(ctx, func(tx *store.Tx) error {
		return tx.Query(`SELECT blob_id, corrupt FROM reg_chunks WHERE sha256 = ?`, []any{sum[:]},
			func(scan func(...any) error) error { found = true; return scan(&blobID, &corrupt) })
	})
	switch {
	case err != nil:
		return 0, err
	case !found:
		return 0, fmt.Errorf("%w: chunk %s", ErrNotFound, Digest(sum))
	case corrupt != 0:
		return 0, fmt.Errorf("%w: chunk %s is marked corrupt by verify; the version cannot be pulled", ErrChecksum, Digest(sum))
	}
	return uint64(blobID), nil
}

// hashStoredChunk feeds a stored chunk's bytes into h.
func (s *Service) hashStoredChunk(sum [32]byte, h hash.Hash, buf []byte) error {
	ctx := context.Background()
	id, err := s.chunkBlob(ctx, sum)
	if err != nil {
		return err
	}
	r, err := s.db.OpenBlob(ctx, id)
	if err != nil {
		return fmt.Errorf("open chunk %s: %w", Digest(sum), err)
	}
	defer r.Close()
	if _, err := io.CopyBuffer(h, io.NewSectionReader(r, 0, r.Info().Size), buf); err != nil {
		return fmt.Errorf("read chunk %s: %w", Digest(sum), err)
	}
	return nil
}

// deleteSessionTx removes an upload session and its chunk pins.
func deleteSessionTx(tx *store.Tx, id string) error {
	if _, err := tx.Exec(`DELETE FROM reg_pins WHERE session = ?`, id); err != nil {
		return err
	}
	_, err := tx.Exec(`DELETE FROM reg_sessions WHERE id = ?`, id)
	return err
}
