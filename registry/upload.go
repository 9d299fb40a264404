package registry

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	pathpkg "path"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/buffdb/buffdbd/internal/directio"
	"github.com/buffdb/buffdbd/store"
)

// Upload is one push of a version, driven by a single goroutine (a gRPC stream or Import): it is
// not safe for concurrent use. The protocol, per file: BeginFile, then for each chunk in order
// Offer (which says whether its bytes are needed), Write of the bytes of needed chunks in offer
// order (in any number of pieces), then EndFile with the file's sha256 (or EndFileHashed, to have
// the Upload compute it); finally Commit.
//
// Chunk bytes are hashed and made durable as they arrive, on background writers, and recorded
// against the upload session so a later Upload of the same version resumes from them. The file's
// sha256 is computed by a second goroutine over the ordered chunks (received bytes, or stored bytes
// of chunks the registry already had), so verification costs no extra pass at Commit.
type Upload struct {
	s       *Service
	info    ModelInfo
	aliases []string
	session string
	resumed bool
	files   []File
	paths   map[string]bool
	dirs    map[string]bool // every directory of a path in paths
	// published are the files of the version when it is already published (nil if not): a re-push
	// must send exactly these.
	published []File
	// resumable: the client sends a needed chunk from the offset OfferResumable answered, so the
	// part of a chunk cut mid-transfer is kept for the next push (uploadpartial.go).
	resumable   bool
	cur         *File // between BeginFile and EndFile
	curOff      int64
	curVerified bool                     // the current file's sha256 is vouched for by Import's caller: not re-hashed
	offered     map[[32]byte]*chunkWrite // chunks written by this upload, by digest
	pinned      [][32]byte               // in-process pins to drop at Close
	needs       []*chunkWrite            // offered chunks whose bytes are still expected, in order
	hashQ       chan hashItem
	hashDone    chan struct{}
	hashWait    *semaphore.Weighted // bytes received and not yet hashed by hashFiles (hashBudget)
	hashed      map[int][32]byte    // sha256 of files ended by EndFileHashed, by index: hashFiles's until hashDone
	writers     sync.WaitGroup
	sem         chan struct{}
	abort       chan struct{}
	abortCtx    context.Context // canceled with abort, for waits that take a context
	cancelAbort context.CancelFunc
	failMu      sync.Mutex
	failErr     error
	done        bool
	stats       UploadStats
	imported    bool  // metrics are reported by ImportStats
	outcome     error // of Commit; nil and !committed means abandoned
	committed   bool
	closed      bool
	released    bool  // Close has dropped the session from Service.live
	drop        bool  // the commit failed for good (over the budget): Close deletes the session
	distinct    int64 // bytes of the distinct chunks offered so far
}

// UploadStats counts what an Upload moved.
type UploadStats struct {
	ChunksReceived int64
	BytesReceived  int64
	ChunksReused   int64
	BytesReused    int64
	// BytesResumed are bytes of needed chunks that an interrupted push had sent and this Upload
	// did not receive again (OfferResumable).
	BytesResumed int64
}

// Concurrency of background chunk writers per upload. Each writer fsyncs its own payload file
// (measured ~6 ms per 2 MiB chunk here, most of it fsync latency), and the filesystem overlaps
// fsyncs of different files, so 8 in flight keep the disk busy while the stream keeps flowing.
// Memory stays bounded: a writer holds at most chunkQueue pieces that it has not yet consumed.
const chunkWriters = 8

// chunkQueue is how many received pieces (≤1 MiB each) may wait for one chunk's writer or for the
// file hasher: enough to absorb scheduling jitter, small enough that 8 writers hold ≤32 MiB.
const chunkQueue = 4

// hashQueueLen bounds the offers a client may have outstanding (offered, bytes not yet consumed by
// the file hasher). Clients keep a smaller window; a client that ignores it gets ErrTooLarge rather
// than growing server memory.
const hashQueueLen = 4096

// hashBudget bounds the received bytes waiting for the file hasher of one upload.
const hashBudget = 32 << 20

func hashWeight(p []byte) int64 { return min(int64(len(p)), hashBudget) }

type chunkWrite struct {
	sum     [32]byte
	known   bool // sum was computed in this process from these bytes (Import): not re-hashed
	heal    bool // the stored copy is marked corrupt: these bytes replace its payload file
	size    int64
	got     int64
	from    int64       // bytes kept by an interrupted push (kept[0]): the client sends the rest
	kept    [][]byte    // the bytes received so far, to keep if the push is cut mid-chunk (resumable)
	started bool        // the payload writer runs
	resume  bool        // offered by OfferResumable: its partial file goes once it is stored
	data    chan []byte // to the payload writer
	hdata   chan []byte // to the file hasher
	written chan struct{}
	err     error // set before written is closed
	aborted atomic.Bool
}

type hashItem struct {
	begin  *File // start a file
	end    *File // finish a file: compare with end.SHA256, or record the sum (record)
	index  int   // end's index in Upload.files
	record bool
	chunk  *chunkWrite
}

// OpenUpload starts or resumes the upload session of info.Name/info.Version. aliases are set along
// with latest when the version is published.
//
// Pushing a version that is already published is allowed when it is the same content: every file
// must match the published one (path and size from BeginFile on, ErrExists at once otherwise; the
// sha256 at Commit). Only chunks the registry lacks or has marked corrupt are asked for, so this is
// how damaged chunks are repaired, and a re-run of a push that already succeeded is a cheap no-op
// (aliases given are still set).
func (s *Service) OpenUpload(ctx context.Context, info ModelInfo, aliases []string) (*Upload, error) {
	if err := validateInfo(&info); err != nil {
		return nil, err
	}
	for _, a := range aliases {
		if err := ValidateAlias(a); err != nil {
			return nil, err
		}
	}
	if info.CreatedAt.IsZero() {
		info.CreatedAt = s.now()
	}
	info.CreatedAt = info.CreatedAt.UTC().Truncate(time.Second)
	u := &Upload{
		s: s, info: info, aliases: slices.Clone(aliases),
		paths:    map[string]bool{},
		dirs:     map[string]bool{},
		offered:  map[[32]byte]*chunkWrite{},
		hashQ:    make(chan hashItem, hashQueueLen),
		hashDone: make(chan struct{}),
		sem:      make(chan struct{}, chunkWriters),
		abort:    make(chan struct{}),
		hashWait: semaphore.NewWeighted(hashBudget),
	}
	u.abortCtx, u.cancelAbort = context.WithCancel(context.Background())
	// The version is marked as opening before the session is looked up, and its session
	// registered live before the mark goes: GC drops only sessions of versions neither opening
	// nor live (CollectGarbageWith, under pinMu), so a session this push relies on is never
	// dropped under it; one GC dropped before is not found, and the push starts over.
	key := Ref{Name: info.Name, Version: info.Version}
	s.pinMu.Lock()
	s.opening[key]++
	s.pinMu.Unlock()
	err := s.openSession(ctx, u)
	s.pinMu.Lock()
	if s.opening[key]--; s.opening[key] <= 0 {
		delete(s.opening, key)
	}
	if err == nil {
		s.live[u.session]++
	}
	s.pinMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("open upload %s:%s: %w", info.Name, info.Version, err)
	}
	go u.hashFiles()
	return u, nil
}

// openSession finds or creates the upload session of u's version (u.session, u.resumed) and
// u.published, renewing the session's expiry.
func (s *Service) openSession(ctx context.Context, u *Upload) error {
	info := u.info
	return s.db.Update(ctx, func(tx *store.Tx) error {
		u.session, u.resumed = "", false
		ok, err := versionExists(tx, info.Name, info.Version)
		if err != nil {
			return err
		}
		u.published = nil
		if ok {
			vi, err := versionInfoTx(tx, info.Name, info.Version, false)
			if err != nil {
				return err
			}
			u.published = vi.Files
		}
		expires := s.now().Add(s.opts.SessionTTL).UnixNano()
		err = tx.Query(`SELECT id FROM reg_sessions WHERE name = ? AND version = ?`, []any{info.Name, info.Version},
			func(scan func(...any) error) error { return scan(&u.session) })
		if err != nil {
			return err
		}
		if u.session != "" {
			u.resumed = true
			_, err = tx.Exec(`UPDATE reg_sessions SET expires_at = ? WHERE id = ?`, expires, u.session)
			return err
		}
		u.session = newID()
		_, err = tx.Exec(`INSERT INTO reg_sessions (id, name, version, created_at, expires_at) VALUES (?, ?, ?, ?, ?)`,
			u.session, info.Name, info.Version, s.now().UnixNano(), expires)
		return err
	})
}

// releaseSession drops a registration of session as live (taken by OpenUpload).
func (s *Service) releaseSession(session string) {
	s.pinMu.Lock()
	defer s.pinMu.Unlock()
	if s.live[session]--; s.live[session] <= 0 {
		delete(s.live, session)
	}
}

// Session is the upload session id (stable across resumes of the same version).
func (u *Upload) Session() string { return u.session }

// Resumed reports whether the session existed before this Upload (an earlier push was interrupted).
func (u *Upload) Resumed() bool { return u.resumed }

// Stats reports what this Upload moved so far.
func (u *Upload) Stats() UploadStats { return u.stats }

// BeginFile starts the next file. ErrInvalid for a bad or duplicate path, or if a file is open.
func (u *Upload) BeginFile(path string, size int64) error {
	return u.beginFile(path, size, false)
}

// beginFile starts the next file. verified: the caller has checked the file's bytes against the
// sha256 it will pass to EndFile (Import's ImportFile.Verified), so the file hasher skips it.
func (u *Upload) beginFile(path string, size int64, verified bool) error {
	if err := u.check(); err != nil {
		return err
	}
	if u.cur != nil {
		return fmt.Errorf("%w: file %s begun before %s ended", ErrInvalid, path, u.cur.Path)
	}
	p, err := CleanPath(path)
	if err != nil {
		return err
	}
	if u.paths[p] {
		return fmt.Errorf("%w: file %s sent twice", ErrInvalid, p)
	}
	if u.published != nil {
		i := len(u.files)
		if i >= len(u.published) || u.published[i].Path != p || u.published[i].Size != size {
			return fmt.Errorf("%w: %s:%s is already published with other files (re-pushing it must send the same files, e.g. to repair it)",
				ErrExists, u.info.Name, u.info.Version)
		}
	}
	// A path cannot be both a file and a directory: such a version could never be pulled.
	if u.dirs[p] {
		return fmt.Errorf("%w: file %s is also the directory of other files of this version", ErrInvalid, p)
	}
	for d := pathpkg.Dir(p); d != "."; d = pathpkg.Dir(d) {
		if u.paths[d] {
			return fmt.Errorf("%w: file %s is inside %s, which is a file of this version", ErrInvalid, p, d)
		}
	}
	if size < 0 {
		return fmt.Errorf("%w: file %s has negative size %d", ErrInvalid, p, size)
	}
	if len(u.files) >= maxFiles {
		return fmt.Errorf("%w: more than %d files", ErrTooLarge, maxFiles)
	}
	u.paths[p] = true
	for d := pathpkg.Dir(p); d != "." && !u.dirs[d]; d = pathpkg.Dir(d) {
		u.dirs[d] = true
	}
	u.files = append(u.files, File{Path: p, Size: size})
	u.cur = &u.files[len(u.files)-1]
	u.curOff = 0
	u.curVerified = verified
	if verified {
		return nil
	}
	return u.enqueue(hashItem{begin: u.cur})
}

// Offer announces the next chunk of the current file and reports whether its bytes must be sent
// (false: the registry already has it, or this upload already received it).
func (u *Upload) Offer(ctx context.Context, sum [32]byte, size int64) (need bool, err error) {
	need, _, err = u.offer(ctx, sum, size, false)
	return need, err
}

// OfferResumable is Offer for a sender that can send a needed chunk from an offset on: from is
// how many of the chunk's first bytes an interrupted push of this session left (verified against
// the checksum they were kept with, always less than size), and Write then takes the rest. Once
// it is called, the part of a chunk received when the Upload is closed uncommitted is kept for
// the next push (see uploadpartial.go). The whole chunk is verified against sum as any other;
// ErrResumeMismatch (at Commit, or from a later call) if it fails where a kept part was used.
func (u *Upload) OfferResumable(ctx context.Context, sum [32]byte, size int64) (need bool, from int64, err error) {
	u.resumable = true
	return u.offer(ctx, sum, size, true)
}

func (u *Upload) offer(ctx context.Context, sum [32]byte, size int64, resume bool) (need bool, from int64, err error) {
	if err := u.check(); err != nil {
		return false, 0, err
	}
	if u.cur == nil {
		return false, 0, fmt.Errorf("%w: chunk offered outside a file", ErrInvalid)
	}
	if size <= 0 || size > MaxChunkSize {
		return false, 0, fmt.Errorf("%w: chunk of %d bytes (limit %d)", ErrTooLarge, size, MaxChunkSize)
	}
	if u.curOff+size > u.cur.Size {
		return false, 0, fmt.Errorf("%w: chunks of %s exceed its declared size %d", ErrInvalid, u.cur.Path, u.cur.Size)
	}
	cw := u.offered[sum]
	if cw != nil && cw.size != size {
		return false, 0, fmt.Errorf("%w: chunk %s offered with sizes %d and %d", ErrInvalid, Digest(sum), cw.size, size)
	}
	u.cur.Chunks = append(u.cur.Chunks, ChunkRef{SHA256: sum, Size: size})
	u.curOff += size
	if cw == nil {
		if err := u.overBudget(size); err != nil {
			return false, 0, err
		}
		have, corrupt, err := u.s.haveChunk(ctx, sum)
		if err != nil {
			return false, 0, err
		}
		if !have {
			cw = &chunkWrite{sum: sum, size: size, known: u.imported, heal: corrupt, written: make(chan struct{}),
				data: make(chan []byte, chunkQueue)}
			cw.resume = resume
			if resume {
				// The longer of what a cut stream kept on disk and what a stream still open (whose
				// connection may be gone unnoticed) has received.
				prefix := u.s.loadPartial(u.session, sum, size)
				if live := u.s.receivedPart(u.session, sum); len(live) > len(prefix) {
					prefix = live
				}
				if prefix != nil {
					cw.from = int64(len(prefix))
					cw.got = cw.from
					cw.kept = [][]byte{prefix}
					u.stats.BytesResumed += cw.from
				}
			}
			u.offered[sum] = cw
			u.needs = append(u.needs, cw)
			if u.curVerified {
				return true, cw.from, nil
			}
			cw.hdata = make(chan []byte, chunkQueue)
			return true, cw.from, u.enqueue(hashItem{chunk: cw})
		}
		u.pinned = append(u.pinned, sum)
		cw = &chunkWrite{sum: sum, size: size, written: closedChan}
		u.offered[sum] = cw
	}
	// A chunk already stored, or already being received by this upload: the file hasher reads it
	// back from the store once it is written.
	u.stats.ChunksReused++
	u.stats.BytesReused += size
	if u.curVerified {
		return false, 0, nil
	}
	return false, 0, u.enqueue(hashItem{chunk: &chunkWrite{sum: sum, size: size, written: cw.written}})
}

// overBudget adds a distinct chunk of size bytes to the version's and fails the upload for good
// with ErrBudget once they are more than the disk budget: a version's own distinct chunks all
// count towards it after its publish, so such a version cannot fit whatever is evicted, and
// learning it at Commit cost the whole transfer over a link that may take hours. A version already
// published (a repair) is left to Commit, as before.
func (u *Upload) overBudget(size int64) error {
	u.distinct += size
	limit := u.s.opts.MaxBytes
	if limit <= 0 || u.distinct <= limit || u.published != nil {
		return nil
	}
	err := fmt.Errorf("%w: the distinct chunks of %s:%s alone are more than the budget of %d bytes: it cannot fit, whatever is evicted",
		ErrBudget, u.info.Name, u.info.Version, limit)
	u.outcome = err
	u.drop = true // Close drops the session and collects what it holds
	u.fail(err)
	return err
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Write delivers bytes of the needed chunks in offer order (of a chunk answered from an offset by
// OfferResumable, from there); a piece may span chunks. The Upload keeps p without copying it
// (the payload writer consumes it later, and the part of a chunk being received is kept for a
// resume), so the caller must not modify p afterwards. ErrInvalid if no chunk bytes are expected.
func (u *Upload) Write(p []byte) error {
	if err := u.check(); err != nil {
		return err
	}
	for len(p) > 0 {
		if len(u.needs) == 0 {
			return fmt.Errorf("%w: %d chunk bytes sent that no offer asked for", ErrInvalid, len(p))
		}
		cw := u.needs[0]
		if !cw.started {
			cw.started = true
			u.startWriter(cw, nil, nil)
			if cw.from > 0 {
				// The part kept by an interrupted push goes first, to be verified with the rest.
				if err := u.deliver(cw, cw.kept[0]); err != nil {
					return err
				}
			}
		}
		n := min(int64(len(p)), cw.size-cw.got)
		piece := p[:n]
		p = p[n:]
		cw.got += n
		u.stats.BytesReceived += n
		if u.resumable {
			// Pieces are the stream's own (decoded into fresh buffers), so keeping them costs no
			// copy: at most one chunk's worth, that of the chunk being received.
			u.s.keepPiece(u, cw, piece)
		}
		if err := u.deliver(cw, piece); err != nil {
			return err
		}
		if cw.got == cw.size {
			close(cw.data)
			if cw.hdata != nil {
				close(cw.hdata)
			}
			if u.resumable {
				u.s.dropKept(u, cw)
			}
			u.needs = u.needs[1:]
			u.stats.ChunksReceived++
		}
	}
	return nil
}

// deliver passes a piece of a needed chunk to its payload writer and to the file hasher.
func (u *Upload) deliver(cw *chunkWrite, piece []byte) error {
	if err := u.send(cw.data, piece); err != nil {
		return err
	}
	if cw.hdata != nil {
		// The file hasher lags the writers when the client is fast (it also hashes, in order,
		// the stored bytes of chunks the server had): what waits for it is bounded in bytes,
		// not only per chunk, or a fast client would fill memory with finished chunks' bytes.
		if u.hashWait.Acquire(u.abortCtx, hashWeight(piece)) != nil {
			return u.failure()
		}
		if err := u.send(cw.hdata, piece); err != nil {
			return err
		}
	}
	return nil
}

// WriteChunk delivers the whole of the next needed chunk from memory that the Upload borrows until
// it calls release (once the chunk is durable, or has failed): the payload is written straight
// from data, without the copy Write's streamed pieces take. Import uses it for the chunks it reads.
func (u *Upload) WriteChunk(data []byte, release func()) error {
	if err := u.check(); err != nil {
		release()
		return err
	}
	if len(u.needs) == 0 || u.needs[0].got != 0 || u.needs[0].size != int64(len(data)) {
		release()
		return fmt.Errorf("%w: a whole chunk of %d bytes written where none of that size was asked for", ErrInvalid, len(data))
	}
	cw := u.needs[0]
	if cw.hdata != nil {
		// The file hasher reads this chunk's bytes too; they go the streamed way, in a copy.
		err := u.Write(bytes.Clone(data))
		release()
		return err
	}
	u.needs = u.needs[1:]
	cw.got = cw.size
	cw.started = true
	u.stats.BytesReceived += cw.size
	u.stats.ChunksReceived++
	u.startWriter(cw, data, release)
	return nil
}

func (u *Upload) send(ch chan []byte, p []byte) error {
	select {
	case ch <- p:
		return nil
	case <-u.abort:
		return u.failure()
	}
}

// startWriter makes one needed chunk durable in the background: hash while writing the payload,
// verify the digest, then record the chunk and pin it to the session in one transaction. The bytes
// arrive through cw.data, or are whole, borrowed until release.
func (u *Upload) startWriter(cw *chunkWrite, whole []byte, release func()) {
	select {
	case u.sem <- struct{}{}:
	case <-u.abort:
		if release != nil {
			release()
		}
		return
	}
	u.writers.Add(1)
	go func() {
		defer u.writers.Done()
		defer func() { <-u.sem }()
		defer close(cw.written)
		if release != nil {
			defer release()
		}
		var r io.Reader = &chanReader{ch: cw.data, abort: u.abort, aborted: &cw.aborted}
		if whole != nil {
			r = bytes.NewReader(whole)
		}
		// The chunk is written with a context detached from the stream: once its bytes have all
		// arrived, making them durable and recording them is what lets a later push resume.
		ctx := context.WithoutCancel(context.Background())
		sum := cw.sum
		write := u.s.db.WritePayload
		switch {
		case cw.known && !cw.heal && whole != nil:
			write = func(ctx context.Context, _ io.Reader, sum *[32]byte) (*store.PendingPayload, error) {
				return u.s.db.WriteKnownPayloadBytes(ctx, whole, *sum)
			}
		case cw.heal:
			// Verified like any received chunk, then renamed over the damaged file (which the store
			// would otherwise keep as identical content).
			write = func(ctx context.Context, r io.Reader, sum *[32]byte) (*store.PendingPayload, error) {
				return u.s.db.RewritePayload(ctx, r, *sum)
			}
		case cw.known:
			write = func(ctx context.Context, r io.Reader, sum *[32]byte) (*store.PendingPayload, error) {
				return u.s.db.WriteKnownPayload(ctx, r, *sum)
			}
		}
		pending, err := write(ctx, r, &sum)
		if err == nil {
			err = u.s.recordChunk(ctx, u.session, pending)
			pending.Release()
		}
		if cw.resume && (err == nil || cw.from > 0 && errors.Is(err, store.ErrCorrupt)) {
			// Stored, or its kept part is wrong (it verified against its own checksum, so the
			// sender that left it sent wrong bytes): either way, it is not to be resumed from.
			u.s.removePartial(u.session, cw.sum)
		}
		switch {
		case errors.Is(err, store.ErrCorrupt) && cw.from > 0:
			err = fmt.Errorf("%w: chunk %s (%d bytes kept from an interrupted push, %d received now); the kept bytes were dropped: push again to send it whole",
				ErrResumeMismatch, Digest(cw.sum), cw.from, cw.size-cw.from)
		case errors.Is(err, store.ErrCorrupt):
			err = fmt.Errorf("%w: chunk %s: received bytes do not hash to the offered digest", ErrChecksum, Digest(cw.sum))
		}
		if err != nil {
			cw.err = classifyIO(err)
			u.fail(fmt.Errorf("store chunk: %w", cw.err))
		}
	}()
}

// EndFile finishes the current file; sum is its sha256, verified before Commit publishes.
func (u *Upload) EndFile(sum [32]byte) error { return u.endFile(&sum) }

// EndFileHashed finishes the current file without a declared sha256: the Upload records the
// sha256 of the file as assembled from its chunks, each verified against the digest it was offered
// under. This spares the sender a second hash of every byte; the chunk digests already make the
// transfer end-to-end verified.
func (u *Upload) EndFileHashed() error { return u.endFile(nil) }

func (u *Upload) endFile(sum *[32]byte) error {
	if err := u.check(); err != nil {
		return err
	}
	if u.cur == nil {
		return fmt.Errorf("%w: file end without a file", ErrInvalid)
	}
	if u.curOff != u.cur.Size {
		return fmt.Errorf("%w: %s: chunks cover %d of its %d bytes", ErrInvalid, u.cur.Path, u.curOff, u.cur.Size)
	}
	if sum == nil && u.curVerified {
		return fmt.Errorf("%w: %s: a file vouched for needs its sha256", ErrInvalid, u.cur.Path)
	}
	if sum != nil {
		u.cur.SHA256 = *sum
	}
	f := u.cur
	u.cur = nil
	if u.curVerified {
		return nil
	}
	return u.enqueue(hashItem{end: f, index: len(u.files) - 1, record: sum == nil})
}

// Commit waits for every chunk to be durable and every file hash to be verified, then publishes the
// version in one transaction (see Service.publish). On success the session is gone. On failure the
// session remains (unless the failure is final, e.g. ErrExists) and durable chunks stay pinned.
func (u *Upload) Commit(ctx context.Context) (ModelInfo, error) {
	if err := u.check(); err != nil {
		return ModelInfo{}, err
	}
	if u.cur != nil {
		return ModelInfo{}, fmt.Errorf("%w: commit while %s is open", ErrIncomplete, u.cur.Path)
	}
	if len(u.needs) > 0 {
		return ModelInfo{}, fmt.Errorf("%w: %d offered chunks were never sent", ErrIncomplete, len(u.needs))
	}
	u.done = true
	close(u.hashQ)
	select {
	case <-u.hashDone:
	case <-ctx.Done():
		u.fail(ctx.Err())
		return ModelInfo{}, ctx.Err()
	}
	u.writers.Wait()
	if err := u.failure(); err != nil {
		u.outcome = err
		return ModelInfo{}, err
	}
	for i, sum := range u.hashed {
		u.files[i].SHA256 = sum
	}
	u.s.eventMu.Lock()
	defer u.s.eventMu.Unlock()
	res, err := u.s.publish(ctx, publishRequest{info: u.info, manifest: &Manifest{Files: u.files}, aliases: u.aliases, sessionID: u.session})
	if err != nil {
		u.outcome = fmt.Errorf("publish %s:%s: %w", u.info.Name, u.info.Version, classifyIO(err))
		// A version over the budget will not fit on a retry either, until the operator acts: keeping
		// its chunks for a resume would hold more than the budget on disk for the session's whole
		// lifetime. Close drops the session and collects them.
		u.drop = errors.Is(err, ErrBudget)
		return ModelInfo{}, u.outcome
	}
	u.committed = true
	u.s.afterPublish(res)
	u.s.removeSessionPartials(u.session)
	return res.info, nil
}

// Close abandons the upload if it was not committed (chunks already durable stay pinned to the
// session for resume) and releases in-process pins. Safe to call more than once.
func (u *Upload) Close() {
	if !u.imported && !u.closed {
		m := u.s.opts.Metrics
		err := u.outcome
		if err == nil && !u.committed {
			if err = u.failure(); err == nil {
				err = context.Canceled
			}
		}
		u.s.metric(m.Push, err)
		if f := m.BytesReceived; f != nil && u.stats.BytesReceived > 0 {
			f(u.stats.BytesReceived)
		}
		if f := m.BytesDeduped; f != nil && u.stats.BytesReused > 0 {
			f(u.stats.BytesReused)
		}
	}
	u.closed = true
	u.fail(errAbandoned)
	if !u.done {
		u.done = true
		close(u.hashQ)
	}
	<-u.hashDone
	u.writers.Wait()
	u.s.unpin(u.pinned)
	u.pinned = nil
	if !u.released && u.resumable && len(u.needs) > 0 {
		// Keep what arrived of the chunk the push was cut in, while the session is still live
		// here (GC leaves a live session's partial files alone).
		if cw := u.needs[0]; cw.got > cw.from && !u.committed && !u.drop {
			// No lock: only this goroutine appends to cw.kept, and it is done.
			if err := u.s.savePartial(u.session, cw.sum, cw.kept); err != nil {
				u.s.log.Warn("keep the part received of a chunk cut mid-push; the next push sends it whole",
					"chunk", Digest(cw.sum).String(), "err", err)
			}
		}
		u.s.dropKept(u, u.needs[0])
	}
	if !u.released {
		u.released = true
		if !u.drop && !u.committed {
			// The session stays resumable for its whole TTL from now, when the push stopped, not
			// from when it began: a push that ran for most of a day must not expire at once. Set
			// while the session is still live, so a `gc --abandon-uploads=AGE` that follows at once
			// sees it idle since now, not since the push began.
			u.s.db.Update(context.Background(), func(tx *store.Tx) error {
				_, err := tx.Exec(`UPDATE reg_sessions SET expires_at = ? WHERE id = ?`, u.s.now().Add(u.s.opts.SessionTTL).UnixNano(), u.session)
				return err
			})
		}
		u.s.releaseSession(u.session)
		if u.drop {
			err := u.s.db.Update(context.Background(), func(tx *store.Tx) error { return deleteSessionTx(tx, u.session) })
			if err == nil {
				u.s.removeSessionPartials(u.session)
				_, err = u.s.CollectGarbage(context.Background())
			}
			if err != nil {
				u.s.log.Warn("drop the upload session of a version over the budget", "session", u.session, "err", err)
			}
		}
	}
}

var errAbandoned = errors.New("upload abandoned")

func (u *Upload) enqueue(it hashItem) error {
	select {
	case u.hashQ <- it:
		return nil
	default:
		return fmt.Errorf("%w: more than %d chunks outstanding; wait for data to be consumed", ErrTooLarge, hashQueueLen)
	}
}

func (u *Upload) check() error {
	if u.done {
		return fmt.Errorf("%w: upload already committed or closed", ErrInvalid)
	}
	return u.failure()
}

func (u *Upload) fail(err error) {
	u.failMu.Lock()
	defer u.failMu.Unlock()
	if u.failErr == nil {
		u.failErr = err
		close(u.abort)
		u.cancelAbort()
	}
}

func (u *Upload) failure() error {
	u.failMu.Lock()
	defer u.failMu.Unlock()
	if errors.Is(u.failErr, errAbandoned) {
		return nil
	}
	return u.failErr
}

// hashFiles computes each file's sha256 over its chunks in order and compares it with the digest
// EndFile declared, or records it in u.hashed for EndFileHashed.
func (u *Upload) hashFiles() {
	defer close(u.hashDone)
	var h hash.Hash
	buf := directio.AlignedBuffer(1 << 20) // for direct reads of stored chunks
	for it := range u.hashQ {
		switch {
		case it.begin != nil:
			h = sha256.New()
		case it.end != nil:
			var got [32]byte
			h.Sum(got[:0])
			if it.record {
				if u.hashed == nil {
					u.hashed = map[int][32]byte{}
				}
				u.hashed[it.index] = got
			} else if got != it.end.SHA256 {
				u.fail(fmt.Errorf("%w: file %s hashes to %s, declared %s", ErrChecksum, it.end.Path, Digest(got), it.end.SHA256))
			}
		case it.chunk.hdata != nil:
			for done := false; !done; {
				select {
				case p, ok := <-it.chunk.hdata:
					if !ok {
						done = true
						break
					}
					h.Write(p)
					u.hashWait.Release(hashWeight(p))
				case <-u.abort:
					u.drain()
					return
				}
			}
		default:
			select {
			case <-it.chunk.written:
			case <-u.abort:
				u.drain()
				return
			}
			if err := u.s.hashStoredChunk(it.chunk.sum, h, buf); err != nil {
				u.fail(err)
				u.drain()
				return
			}
		}
	}
}

func (u *Upload) drain() {
	for range u.hashQ {
	}
}

// chanReader reads the slices of one chunk from a channel; an abort makes it fail so the payload
// writer keeps nothing.
type chanReader struct {
	ch      chan []byte
	cur     []byte
	abort   chan struct{}
	aborted *atomic.Bool
}

func (r *chanReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		// Bytes already delivered win over an abort: a chunk that arrived whole is still made
		// durable, so a resumed push need not send it again.
		select {
		case b, ok := <-r.ch:
			if !ok {
				return 0, io.EOF
			}
			r.cur = b
			continue
		default:
		}
		select {
		case b, ok := <-r.ch:
			if !ok {
				return 0, io.EOF
			}
			r.cur = b
		case <-r.abort:
			r.aborted.Store(true)
			return 0, errAbandoned
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
