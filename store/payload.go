package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/buffdb/buffdbd/internal/directio"
)

const (
	payloadDir = "payloads"
	tmpDir     = "tmp"
	// copyBufSize is the fixed buffer WritePayload streams through: large enough that a multi-GB
	// payload is written in few syscalls, small enough that many concurrent uploads stay in memory.
	copyBufSize = 1 << 20
	// tmpMaxIdle is how long a temp file must sit unmodified before a runtime GC may remove it.
	tmpMaxIdle = 10 * time.Minute
)

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// WritePayload's read/write/hash pipeline: 4 × 256 KiB keeps the hasher busy while the next buffer is
// read and written, in the same 1 MiB a single copy buffer used.
const (
	hashBufs    = 4
	hashBufSize = 256 << 10
)

var hashBufPool = sync.Pool{New: func() any { b := make([]byte, hashBufSize); return &b }}

// Payload identifies durable content by its sha256 and size.
type Payload struct {
	SHA256 [32]byte
	Size   int64
}

// PendingPayload is a payload written durably but not yet referenced by a committed row. Until
// Release is called, garbage collection will not remove it. Release after the referencing Update
// commits (or is abandoned). Small payloads (≤ Options.InlineMax) are held in memory instead of a
// file and become inline blob bytes.
type PendingPayload struct {
	p   Payload
	pin *pin
}

// Payload returns the content's identity, for Tx.StorePayloadBlob.
func (p *PendingPayload) Payload() Payload { return p.p }

// Release unpins the payload. Safe to call more than once.
func (p *PendingPayload) Release() { p.pin.release() }

// pendingSet is the set of payload hashes pinned by writes in flight. Both the writers (before they
// check for or create a file) and the remover (before it unlinks one) hold mu, so a file a writer is
// about to reference is never unlinked under it.
type pendingSet struct {
	mu  sync.Mutex
	m   map[[32]byte]*pinEntry
	tmp map[string]bool // temp files being written, so GC leaves them alone
}

type pinEntry struct {
	n      int
	inline []byte // the bytes of a small pending payload (nil for files)
}

type pin struct {
	set  *pendingSet
	sum  [32]byte
	once sync.Once
}

func (s *pendingSet) init() {
	s.m = make(map[[32]byte]*pinEntry)
	s.tmp = make(map[string]bool)
}

// pinLocked pins sum; the caller holds s.mu.
func (s *pendingSet) pinLocked(sum [32]byte, inline []byte) *pin {
	e := s.m[sum]
	if e == nil {
		e = &pinEntry{}
		s.m[sum] = e
	}
	e.n++
	if inline != nil && e.inline == nil {
		e.inline = inline
	}
	return &pin{set: s, sum: sum}
}

func (s *pendingSet) pin(sum [32]byte, inline []byte) *pin {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pinLocked(sum, inline)
}

func (p *pin) release() {
	if p == nil {
		return
	}
	p.once.Do(func() {
		p.set.mu.Lock()
		defer p.set.mu.Unlock()
		if e := p.set.m[p.sum]; e != nil {
			if e.n--; e.n <= 0 {
				delete(p.set.m, p.sum)
			}
		}
	})
}

// pendingInline returns the in-memory bytes of a pinned small payload.
func (s *pendingSet) pendingInline(sum [32]byte) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.m[sum]; e != nil && e.inline != nil {
		return e.inline, true
	}
	return nil, false
}

func (db *DB) payloadPath(sum [32]byte) string {
	h := hex.EncodeToString(sum[:])
	return filepath.Join(db.dir, payloadDir, h[:2], h)
}

// content is a blob's bytes prepared for a row: inline bytes, or a durable, pinned payload file.
type content struct {
	sum    [32]byte
	size   int64
	inline []byte // non-nil for inline content (possibly empty)
	pin    *pin   // for external content, released after the referencing transaction ends
}

// prepare hashes data and, if it is too large to inline, makes it a durable payload file. It runs in
// the submitting goroutine so the committer never does large I/O.
func (db *DB) prepare(data []byte) (content, error) {
	c := content{sum: sha256.Sum256(data), size: int64(len(data))}
	if c.size <= db.opts.InlineMax {
		c.inline = data
		if c.inline == nil {
			c.inline = []byte{}
		}
		return c, nil
	}
	c.pin = db.pend.pin(c.sum, nil)
	if db.payloadExists(c.sum, c.size) {
		// Deduplicated. The file may have been renamed into place a moment ago by a writer that has
		// not yet fsynced its directory; fsync it ourselves so our row never outlives the name.
		if err := db.syncDir(filepath.Dir(db.payloadPath(c.sum))); err != nil {
			c.pin.release()
			return c, err
		}
		return c, nil
	}
	f, err := db.createTemp()
	if err != nil {
		c.pin.release()
		return c, err
	}
	w := directio.NewWriter(f, 0)
	_, err = w.Write(data)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		db.discardTemp(f)
		c.pin.release()
		return c, fileErr("write payload", err)
	}
	if err := db.installTemp(f, c.sum, false); err != nil {
		c.pin.release()
		return c, err
	}
	return c, nil
}

// payloadExists reports whether the payload file is present with the expected size. A file of the
// wrong size (impossible unless the disk was tampered with) is replaced by the caller's new copy.
func (db *DB) payloadExists(sum [32]byte, size int64) bool {
	st, err := os.Stat(db.payloadPath(sum))
	return err == nil && st.Mode().IsRegular() && st.Size() == size
}

// createTemp creates the temp file a payload is written to before installTemp names it: unnamed
// where possible (see tmpfile_linux.go), else a named file in tmp/ that the orphan sweep collects
// if the process dies first.
func (db *DB) createTemp() (*os.File, error) {
	if db.unnamedTemps {
		f, err := openUnnamed(filepath.Join(db.dir, tmpDir))
		if err != nil {
			return nil, fileErr("create payload temp file", err)
		}
		return f, nil
	}
	f, err := os.CreateTemp(filepath.Join(db.dir, tmpDir), "payload-*")
	if err != nil {
		return nil, fileErr("create payload temp file", err)
	}
	db.pend.mu.Lock()
	db.pend.tmp[f.Name()] = true
	db.pend.mu.Unlock()
	return f, nil
}

func (db *DB) discardTemp(f *os.File) {
	f.Close()
	if f.Name() == "" { // unnamed: closing it freed it
		return
	}
	os.Remove(f.Name())
	db.pend.mu.Lock()
	delete(db.pend.tmp, f.Name())
	db.pend.mu.Unlock()
}

// installTemp makes the fully written temp file f the durable payload file for sum: fsync the file,
// rename it into place, fsync the directory (so the name survives power loss). The caller holds a
// pin on sum. If an identical payload already exists the temp file is just dropped, unless replace
// (the existing one is corrupt).
func (db *DB) installTemp(f *os.File, sum [32]byte, replace bool) error {
	defer db.discardTemp(f) // after a successful rename (or link) this only closes
	st, err := f.Stat()
	if err != nil {
		return err
	}
	final := db.payloadPath(sum)
	if !replace && db.payloadExists(sum, st.Size()) {
		// Deduplicated: no need to make our copy durable, but the existing name must be (see prepare).
		return db.syncDir(filepath.Dir(final))
	}
	if err := db.fsync(f); err != nil {
		return fileErr("fsync payload", err)
	}
	if f.Name() != "" { // an unnamed file must stay open until it is linked
		if err := f.Close(); err != nil {
			return fmt.Errorf("close payload: %w", err)
		}
	}
	sub := filepath.Dir(final)
	if err := os.Mkdir(sub, 0o750); err == nil {
		if err := db.syncDir(filepath.Dir(sub)); err != nil {
			return err
		}
	} else if !errors.Is(err, fs.ErrExist) {
		return fileErr("create payload directory", err)
	}
	if f.Name() == "" {
		if err := db.linkTemp(f, final, replace); err != nil {
			return fileErr("install payload", err)
		}
		return db.syncDir(sub)
	}
	if err := os.Rename(f.Name(), final); err != nil {
		return fileErr("install payload", err)
	}
	return db.syncDir(sub)
}

// linkTemp names the unnamed, durable temp file f final. An existing final is kept (the same
// content, installed meanwhile by another writer) unless replace, in which case f is linked under
// a scratch name beside it and renamed over it, atomically.
func (db *DB) linkTemp(f *os.File, final string, replace bool) error {
	if !replace {
		if err := linkUnnamed(f, final); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		return nil
	}
	scratch := final + ".replace"
	os.Remove(scratch) // left by a crash between link and rename
	if err := linkUnnamed(f, scratch); err != nil {
		return err
	}
	if err := os.Rename(scratch, final); err != nil {
		os.Remove(scratch)
		return err
	}
	return nil
}

// fsync makes f's bytes durable under DurabilitySync. Under DurabilityProcess it does nothing: the
// promise there is surviving a process crash, and the kernel's page cache already does (the same
// reasoning as SQLite's synchronous=NORMAL in WAL mode).
func (db *DB) fsync(f *os.File) error {
	if db.opts.Durability == DurabilityProcess {
		return nil
	}
	return f.Sync()
}

// syncDir makes a directory's entries (a created or renamed payload file) durable; see fsync.
func (db *DB) syncDir(dir string) error {
	if db.opts.Durability == DurabilityProcess {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// ctxReader makes a long copy stop when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// WritePayload streams r into a content-addressed payload (temp file, fsync, rename, dir fsync; or
// inline when small), deduplicating identical content, without holding it in memory.
// If wantSHA256 is non-nil and the content differs, it returns ErrCorrupt and keeps nothing.
func (db *DB) WritePayload(ctx context.Context, r io.Reader, wantSHA256 *[32]byte) (*PendingPayload, error) {
	return db.writePayload(ctx, r, wantSHA256, payloadOpts{})
}

// RewritePayload is WritePayload for content that must replace the payload file stored under
// want: one found corrupt (the registry's verify marks such chunks). WritePayload would keep the
// existing file, as identical content; here the verified new bytes are renamed over it, atomically,
// so readers see the old file or the new one.
func (db *DB) RewritePayload(ctx context.Context, r io.Reader, want [32]byte) (*PendingPayload, error) {
	return db.writePayload(ctx, r, &want, payloadOpts{replace: true})
}

// WriteKnownPayload is WritePayload for content whose sha256 this process computed itself, from
// the bytes r yields: they are stored under sum without being hashed a second time. Content that
// arrives from elsewhere (a client, a download) must go through WritePayload, which verifies it; a
// wrong sum here would file bytes under another content's address.
func (db *DB) WriteKnownPayload(ctx context.Context, r io.Reader, sum [32]byte) (*PendingPayload, error) {
	return db.writePayload(ctx, r, &sum, payloadOpts{known: true})
}

// WriteKnownPayloadBytes is WriteKnownPayload for content held in memory: data is written
// straight from the caller's memory (with direct I/O when data is aligned, see directio), with no
// copy through a read buffer. data is not retained once it returns.
func (db *DB) WriteKnownPayloadBytes(ctx context.Context, data []byte, sum [32]byte) (*PendingPayload, error) {
	if err := db.checkOpen(); err != nil {
		return nil, err
	}
	p := Payload{Size: int64(len(data)), SHA256: sum}
	if p.Size <= db.opts.InlineMax {
		return &PendingPayload{p: p, pin: db.pend.pin(sum, bytes.Clone(data))}, nil
	}
	f, err := db.createTemp()
	if err != nil {
		return nil, err
	}
	w := directio.NewWriter(f, 0)
	_, err = w.Write(data)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		db.discardTemp(f)
		return nil, fileErr("write payload", err)
	}
	return db.install(f, p, false)
}

type payloadOpts struct {
	known   bool // the caller computed the sum from these bytes: do not hash them again
	replace bool // replace an existing payload file of this sum (it is corrupt)
}

func (db *DB) writePayload(ctx context.Context, r io.Reader, wantSHA256 *[32]byte, o payloadOpts) (*PendingPayload, error) {
	if err := db.checkOpen(); err != nil {
		return nil, err
	}
	r = ctxReader{ctx, r}
	var h hash.Hash
	if !o.known {
		h = sha256.New()
	}
	sumOf := func() (sum [32]byte) {
		if o.known {
			return *wantSHA256
		}
		h.Sum(sum[:0])
		return sum
	}
	// Read up to InlineMax+1 bytes first: if the content ends within InlineMax it stays in memory and
	// becomes inline blob bytes; otherwise those bytes start the temp file.
	head, err := io.ReadAll(io.LimitReader(r, db.opts.InlineMax+1))
	if err != nil {
		return nil, fmt.Errorf("read payload: %w", err)
	}
	if h != nil {
		h.Write(head)
	}
	if int64(len(head)) <= db.opts.InlineMax {
		p := Payload{Size: int64(len(head)), SHA256: sumOf()}
		if err := checkSum(p.SHA256, wantSHA256); err != nil {
			return nil, err
		}
		return &PendingPayload{p: p, pin: db.pend.pin(p.SHA256, head)}, nil
	}
	f, err := db.createTemp()
	if err != nil {
		return nil, err
	}
	n, err := copyHashed(f, h, head, r)
	if err != nil {
		db.discardTemp(f)
		return nil, fileErr("write payload", err)
	}
	p := Payload{Size: n, SHA256: sumOf()}
	if err := checkSum(p.SHA256, wantSHA256); err != nil {
		db.discardTemp(f)
		return nil, err
	}
	return db.install(f, p, o.replace)
}

// install pins p and makes the temp file f its durable payload file.
func (db *DB) install(f *os.File, p Payload, replace bool) (*PendingPayload, error) {
	pn := db.pend.pin(p.SHA256, nil)
	if err := db.installTemp(f, p.SHA256, replace); err != nil {
		pn.release()
		return nil, err
	}
	return &PendingPayload{p: p, pin: pn}, nil
}

// copyHashed writes head and then the rest of r to f, feeding the rest to h on another
// goroutine: sha256 (1.2–1.3 GB/s per core with SHA-NI, far less on ARM boards without crypto
// extensions) is slower than writing, so overlapping the two makes hashing, not their sum, the limit. Memory is fixed:
// hashBufs buffers of hashBufSize. A nil h hashes nothing.
func copyHashed(f *os.File, h hash.Hash, head []byte, r io.Reader) (n int64, err error) {
	w := directio.NewWriter(f, 0)
	defer func() {
		if cerr := w.Close(); err == nil {
			err = cerr
		}
	}()
	if _, err := w.Write(head); err != nil {
		return 0, err
	}
	// head is already in h (WritePayload hashed it to decide on inlining).
	free := make(chan *[]byte, hashBufs)
	full := make(chan []byte, hashBufs)
	for range hashBufs {
		free <- hashBufPool.Get().(*[]byte)
	}
	hashed := make(chan struct{})
	go func() {
		defer close(hashed)
		for b := range full {
			if h != nil {
				h.Write(b)
			}
			bp := b[:cap(b)]
			free <- &bp
		}
	}()
	n = int64(len(head))
	for {
		bp := <-free
		k, rerr := io.ReadFull(r, *bp)
		if k > 0 {
			if _, werr := w.Write((*bp)[:k]); werr != nil {
				free <- bp
				err = werr
				break
			}
			n += int64(k)
			full <- (*bp)[:k]
		} else {
			free <- bp
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			err = rerr
			break
		}
	}
	close(full)
	<-hashed
	for range hashBufs {
		hashBufPool.Put(<-free)
	}
	return n, err
}

func checkSum(got [32]byte, want *[32]byte) error {
	if want != nil && got != *want {
		return fmt.Errorf("payload sha256 %x, want %x: %w", got, *want, ErrCorrupt)
	}
	return nil
}

// HasPayload reports whether content with this sha256 is stored (referenced by some blob).
func (db *DB) HasPayload(ctx context.Context, sum [32]byte) (bool, error) {
	if err := db.checkOpen(); err != nil {
		return false, err
	}
	var one int
	err := db.rstmt.queryRow(ctx, "SELECT 1 FROM blob WHERE sha256 = ? LIMIT 1", sum[:]).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, mapErr(err)
	}
	return true, nil
}

// ref counts one more blob row referencing the payload file sum.
func (t *wtx) ref(sum [32]byte, size int64) error {
	_, err := t.q.exec(t.ctx, `INSERT INTO payload(sha256, size, refs) VALUES (?, ?, 1)
		ON CONFLICT(sha256) DO UPDATE SET refs = refs + 1`, sum[:], size)
	return mapErr(err)
}

// unref drops one reference; the last one deletes the row and schedules the file's unlink after
// commit.
func (t *wtx) unref(sum [32]byte) error {
	res, err := t.q.exec(t.ctx, "UPDATE payload SET refs = refs - 1 WHERE sha256 = ? AND refs > 1", sum[:])
	if err != nil {
		return mapErr(err)
	}
	if n, _ := res.RowsAffected(); n > 0 {
		return nil
	}
	if _, err := t.q.exec(t.ctx, "DELETE FROM payload WHERE sha256 = ?", sum[:]); err != nil {
		return mapErr(err)
	}
	t.unrefs = append(t.unrefs, sum)
	return nil
}

// unlinkUnreferenced removes the files of payloads whose last reference a just-committed transaction
// dropped — unless a pending write pinned the hash or a newer commit references it again. A failure
// here only leaves an orphan for CollectGarbage.
func (db *DB) unlinkUnreferenced(sums [][32]byte) {
	for _, sum := range sums {
		if _, _, err := db.removeIfOrphan(context.Background(), sum); err != nil {
			db.log.Warn("remove unreferenced payload", "sha256", hex.EncodeToString(sum[:]), "err", err)
		}
	}
}

// removeOrphans removes the payload files of pins just released, where nothing else references or
// pins them: the files of writes that failed or rolled back.
func (db *DB) removeOrphans(pins []*pin) {
	for _, p := range pins {
		if p == nil {
			continue
		}
		if _, _, err := db.removeIfOrphan(context.Background(), p.sum); err != nil {
			db.log.Warn("remove payload of a failed write", "sha256", hex.EncodeToString(p.sum[:]), "err", err)
		}
	}
}

// removeIfOrphan unlinks the payload file sum if nothing pins or references it, returning the bytes
// freed. The check and the unlink happen under the pending-set lock, which writers take before they
// decide to reuse a file.
func (db *DB) removeIfOrphan(ctx context.Context, sum [32]byte) (removed bool, size int64, err error) {
	db.pend.mu.Lock()
	defer db.pend.mu.Unlock()
	if db.pend.m[sum] != nil {
		return false, 0, nil
	}
	var one int
	err = db.rstmt.queryRow(ctx, "SELECT 1 FROM payload WHERE sha256 = ?", sum[:]).Scan(&one)
	if err == nil {
		return false, 0, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return false, 0, mapErr(err)
	}
	path := db.payloadPath(sum)
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, err
	}
	if err := os.Remove(path); err != nil {
		return false, 0, err
	}
	return true, st.Size(), nil
}

// GCResult reports what CollectGarbage removed.
type GCResult struct {
	Files int64
	Bytes int64
}

// CollectGarbage removes payload files no committed row references and no pending write pins, and
// temp files of writes that died. Safe to run alongside writes.
func (db *DB) CollectGarbage(ctx context.Context) (GCResult, error) {
	if err := db.checkOpen(); err != nil {
		return GCResult{}, err
	}
	return db.collectGarbage(ctx, false)
}

func (db *DB) collectGarbage(ctx context.Context, atOpen bool) (GCResult, error) {
	var res GCResult
	tmps, err := os.ReadDir(filepath.Join(db.dir, tmpDir))
	if err != nil {
		return res, err
	}
	for _, e := range tmps {
		name := filepath.Join(db.dir, tmpDir, e.Name())
		info, err := e.Info()
		if err != nil {
			continue
		}
		db.pend.mu.Lock()
		busy := db.pend.tmp[name]
		db.pend.mu.Unlock()
		// At runtime a temp file may have been created a moment ago and not yet registered in
		// pend.tmp; only files idle for tmpMaxIdle are abandoned for sure. At Open nothing is writing.
		if !atOpen && (busy || time.Since(info.ModTime()) < tmpMaxIdle) {
			continue
		}
		if os.Remove(name) == nil {
			res.Files++
			res.Bytes += info.Size()
		}
	}

	// Hashes referenced when we start; files not among them are re-checked one by one under the
	// pending lock, so a payload referenced or pinned after this snapshot is never removed.
	referenced := map[[32]byte]bool{}
	rows, err := db.rstmt.query(ctx, "SELECT sha256 FROM payload")
	if err != nil {
		return res, mapErr(err)
	}
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			rows.Close()
			return res, err
		}
		var sum [32]byte
		copy(sum[:], b)
		referenced[sum] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return res, mapErr(err)
	}

	subs, err := os.ReadDir(filepath.Join(db.dir, payloadDir))
	if err != nil {
		return res, err
	}
	for _, sub := range subs {
		if !sub.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(db.dir, payloadDir, sub.Name()))
		if err != nil {
			return res, err
		}
		for _, f := range files {
			if err := ctx.Err(); err != nil {
				return res, err
			}
			var sum [32]byte
			if name, ok := strings.CutSuffix(f.Name(), ".replace"); ok && atOpen && isPayloadName(name, sub.Name()) {
				// linkTemp's scratch name for a repair, left by a crash between its link and its
				// rename; nothing can be using it at open.
				if st, err := f.Info(); err == nil && os.Remove(filepath.Join(db.dir, payloadDir, sub.Name(), f.Name())) == nil {
					res.Files++
					res.Bytes += st.Size()
				}
				continue
			}
			if b, err := hex.DecodeString(f.Name()); err != nil || !isPayloadName(f.Name(), sub.Name()) {
				continue // not ours; leave it
			} else {
				copy(sum[:], b)
			}
			if referenced[sum] {
				continue
			}
			removed, n, err := db.removeIfOrphan(ctx, sum)
			if err != nil {
				return res, err
			}
			if removed {
				res.Files++
				res.Bytes += n
			}
		}
	}
	return res, nil
}

// isPayloadName reports whether name is a payload file's name (64 hex digits) in subdirectory sub
// (its first two).
func isPayloadName(name, sub string) bool {
	b, err := hex.DecodeString(name)
	return err == nil && len(b) == 32 && name[:2] == sub
}
