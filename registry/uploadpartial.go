package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/buffdb/buffdbd/store"
)

// A push cut in the middle of a chunk leaves the part of the chunk the server received in a
// partial file, so the next push of the same version sends only the rest (Upload.OfferResumable).
// Without it a link that drops before a whole chunk (up to 4 MiB) is through could never push.
//
// Partial files live outside the store, under the data directory:
//
//	uploads/<session id>/<chunk sha256 hex>
//
// Each holds the chunk's first n bytes followed by the sha256 of those n bytes. The trailer is
// what makes the prefix trustworthy: a file damaged on disk, cut by a crash or tampered with no
// longer matches it and is dropped (the client is then asked for the whole chunk). It is written
// to a temp file, fsynced and renamed into place, and the directory fsynced, before the Upload
// that wrote it ends, so a prefix the server offers to resume from the file is durable. The bytes
// are written once, when the stream breaks, not while they arrive: a push that is not cut writes
// its chunks once, as before. A server killed mid-chunk loses that chunk's progress, nothing else.
//
// A stream whose connection is gone unnoticed (a stalled link, until keepalive ends it) has
// written no file yet; a new stream of its session resumes from the pieces it holds in memory
// (Service.receiving) when they are more.
//
// The whole chunk is still verified against its sha256 when the rest arrives, as every received
// chunk is, so no corrupt chunk is ever stored. Partial files are removed when their chunk is
// stored, with their session (commit, expiry, GC), and at startup when their session is gone.

// uploadsDir is the directory of partial chunk files, under the store's data directory.
const uploadsDir = "uploads"

// partialTmpAge is how old a temp file in a session's directory must be for GC to remove it: a
// partial file takes milliseconds to write, so an older temp file is a crash's leftover.
const partialTmpAge = time.Hour

// partialTmp marks temp files of partial chunks being written.
const partialTmp = ".tmp-"

func (s *Service) uploadsPath() string { return filepath.Join(s.db.Dir(), uploadsDir) }

func (s *Service) partialPath(session string, sum Digest) string {
	return filepath.Join(s.uploadsPath(), session, hex.EncodeToString(sum[:]))
}

// partKey names a chunk of an upload session.
type partKey struct {
	session string
	sum     Digest
}

// receivedPart returns the part of a chunk that another open Upload of session has received so
// far, nil if none is receiving it.
func (s *Service) receivedPart(session string, sum Digest) []byte {
	s.recvMu.Lock()
	cw := s.receiving[partKey{session, sum}]
	var pieces [][]byte
	if cw != nil {
		pieces = slices.Clone(cw.kept) // the pieces themselves are never written again
	}
	s.recvMu.Unlock()
	if len(pieces) == 0 {
		return nil
	}
	return bytes.Join(pieces, nil)
}

// keepPiece adds a received piece to the kept part of cw, which Upload u is receiving, and
// announces cw as received by u if no other Upload of the session is receiving that chunk.
func (s *Service) keepPiece(u *Upload, cw *chunkWrite, piece []byte) {
	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	cw.kept = append(cw.kept, piece)
	k := partKey{u.session, cw.sum}
	if s.receiving[k] == nil {
		s.receiving[k] = cw
	}
}

// dropKept forgets the kept part of cw (stored, or kept in its partial file).
func (s *Service) dropKept(u *Upload, cw *chunkWrite) {
	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	cw.kept = nil
	k := partKey{u.session, cw.sum}
	if s.receiving[k] == cw {
		delete(s.receiving, k)
	}
}

// loadPartial returns the kept prefix of a chunk of size bytes for session, nil if there is none
// worth resuming. A partial file that does not verify (damaged on disk, cut by a crash, or not a
// proper prefix of a chunk that size) is removed: the chunk is then sent whole.
func (s *Service) loadPartial(session string, sum Digest, size int64) []byte {
	b, err := readPartial(s.partialPath(session, sum), size)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("read a partly received chunk; asking for it whole", "chunk", sum.String(), "err", err)
		}
		return nil
	}
	n := len(b) - sha256.Size
	if n <= 0 || int64(n) >= size || sha256.Sum256(b[:n]) != [32]byte(b[n:]) {
		s.log.Warn("a partly received chunk does not verify; dropped, asking for it whole", "chunk", sum.String(),
			"session", session, "bytes", len(b))
		s.removePartial(session, sum)
		return nil
	}
	return b[:n:n]
}

// readPartial reads a partial file of a chunk of size bytes, or as much of it as a proper one
// can hold (a longer one fails to verify; it is not read whole into memory).
func readPartial(path string, size int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, size+sha256.Size)
	n, err := io.ReadFull(f, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, err
	}
	return b[:n], nil
}

// savePartial durably keeps the first bytes of a chunk (the concatenation of pieces) for session,
// unless a longer prefix of it is already kept (another stream of the session got further).
func (s *Service) savePartial(session string, sum Digest, pieces [][]byte) error {
	dir := filepath.Join(s.uploadsPath(), session)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, hex.EncodeToString(sum[:])+partialTmp+"*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	h := sha256.New()
	var n int64
	for _, p := range pieces {
		if _, err = f.Write(p); err != nil {
			break
		}
		h.Write(p)
		n += int64(len(p))
	}
	if err == nil {
		_, err = f.Write(h.Sum(nil))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	final := s.partialPath(session, sum)
	if st, serr := os.Stat(final); err == nil && serr == nil && st.Size()-sha256.Size >= n {
		err = errPartialShorter
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		os.Remove(tmp)
		if errors.Is(err, errPartialShorter) {
			return nil
		}
		return err
	}
	// The rename and the session directory itself must survive a crash before the prefix is
	// offered to a client as held.
	if err := syncDir(dir); err != nil {
		return err
	}
	return syncDir(s.uploadsPath())
}

var errPartialShorter = errors.New("a longer prefix is kept")

// removePartial removes a chunk's partial file of session, if any.
func (s *Service) removePartial(session string, sum Digest) {
	if err := os.Remove(s.partialPath(session, sum)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("remove a partly received chunk", "chunk", sum.String(), "err", err)
	}
}

// removeSessionPartials removes the partial files of a session that ended; it returns how many
// files and bytes it removed.
func (s *Service) removeSessionPartials(session string) (files, size int64) {
	dir := filepath.Join(s.uploadsPath(), session)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, 0
	}
	for _, e := range ents {
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
			files++
			size += info.Size()
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		s.log.Warn("remove the partly received chunks of an ended upload session", "session", session, "err", err)
	}
	return files, size
}

// sweepPartials removes the partial files of sessions that no longer exist (and are not open in
// this process), and temp files older than tmpAge (0: all) in the others. It runs at New, when
// nothing else is writing, and after GC.
func (s *Service) sweepPartials(ctx context.Context, tmpAge time.Duration) (files, size int64) {
	ents, err := os.ReadDir(s.uploadsPath())
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("list partly received chunks", "err", err)
		}
		return 0, 0
	}
	for _, e := range ents {
		id := e.Name()
		if !e.IsDir() || !isSessionID(id) {
			continue // not ours; leave it
		}
		s.pinMu.Lock()
		live := s.live[id] > 0
		s.pinMu.Unlock()
		if !live {
			// Checked after live: an Upload writes partial files only while live, and a session
			// id is never reused, so once its row is gone nothing writes here again.
			exists, err := s.sessionExists(ctx, id)
			if err != nil {
				s.log.Warn("look up an upload session", "session", id, "err", err)
				continue
			}
			if !exists {
				n, b := s.removeSessionPartials(id)
				files, size = files+n, size+b
				continue
			}
		}
		dir := filepath.Join(s.uploadsPath(), id)
		parts, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, p := range parts {
			if !strings.Contains(p.Name(), partialTmp) {
				continue
			}
			info, err := p.Info()
			if err != nil || (tmpAge > 0 && time.Since(info.ModTime()) < tmpAge) {
				continue
			}
			if os.Remove(filepath.Join(dir, p.Name())) == nil {
				files++
				size += info.Size()
			}
		}
	}
	return files, size
}

func (s *Service) sessionExists(ctx context.Context, id string) (bool, error) {
	found := false
	err := s.db.View(ctx, func(tx *store.Tx) error {
		return tx.Query(`SELECT 1 FROM reg_sessions WHERE id = ?`, []any{id}, func(func(...any) error) error {
			found = true
			return nil
		})
	})
	return found, err
}

// isSessionID reports whether name has the form of newID's ids.
func isSessionID(name string) bool {
	b, err := hex.DecodeString(name)
	return err == nil && len(b) == 16
}
