package huggingface

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"
	"golang.org/x/time/rate"

	"github.com/buffdb/buffdbd/internal/directio"
)

// EngineOptions tune the download engine. Zero fields take the documented defaults.
type EngineOptions struct {
	// Concurrency is the number of HTTP connections (byte ranges) in flight across all files.
	// Default 8: enough to fill a link whose CDN caps each connection, few enough that a
	// Raspberry Pi's CPU and the Hub's per-client limits are not swamped.
	Concurrency int
	// RangeSize is the byte range one connection fetches of a large file. Default 32 MiB:
	// a range costs one request and one journal record, and a 1 GiB file still splits into 32
	// pieces for parallelism.
	RangeSize int64
	// Checkpoint is how many bytes of a file may be written beyond the last fsync+journal record
	// before the background syncer is woken, which bounds what a kill -9 or power loss can cost.
	// Default 8 MiB. Downloads never wait for the sync.
	Checkpoint int64
	// SyncInterval is the longest time between syncs while bytes arrive. Default 2s: a slow link
	// loses at most two seconds of progress, and a fast one is bounded by Checkpoint.
	SyncInterval time.Duration
	// StallTimeout cancels and retries a range that received no bytes for this long. Default
	// 30s: long enough for a congested cellular link, short enough that a dead TCP connection
	// (which may otherwise hang for the kernel's ~15 minute retransmission limit) is noticed.
	StallTimeout time.Duration
	// MaxRate limits this fetch's download bandwidth in bytes per second; 0 means unlimited.
	MaxRate int64
	// SharedRate, if set, is a limit this fetch shares with others (a daemon's bandwidth cap over
	// all its fetches), applied besides MaxRate: one token per byte.
	SharedRate *rate.Limiter
	// BufferSize is the per-connection read buffer. Default 1 MiB: large enough that writes are
	// few and big, small enough that memory stays bounded (Concurrency × BufferSize).
	BufferSize int
}

func (o EngineOptions) withDefaults() EngineOptions {
	if o.Concurrency <= 0 {
		o.Concurrency = 8
	}
	if o.RangeSize <= 0 {
		o.RangeSize = 32 << 20
	}
	if o.Checkpoint <= 0 {
		o.Checkpoint = 8 << 20
	}
	if o.SyncInterval <= 0 {
		o.SyncInterval = 2 * time.Second
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = 30 * time.Second
	}
	if o.BufferSize <= 0 {
		o.BufferSize = 1 << 20
	}
	// Whole blocks, and room for a piece that starts mid-block (fetchRange).
	o.BufferSize = max(o.BufferSize+directio.Align-1, 2*directio.Align) &^ (directio.Align - 1)
	return o
}

// engine downloads files of one repository commit into a staging directory.
type engine struct {
	c       *Client
	o       EngineOptions
	sem     *semaphore.Weighted
	limiter *rate.Limiter
	obs     Observer
	log     *slog.Logger
	// rangeless holds the hosts found ignoring Range requests in this fetch (host → true): the
	// next files from them start as a single stream.
	rangeless sync.Map
	dir       string // staging directory of this commit
	repo      string
	commit    string
}

func newEngine(c *Client, o EngineOptions, obs Observer, dir, repo, commit string) *engine {
	o = o.withDefaults()
	e := &engine{c: c, o: o, sem: semaphore.NewWeighted(int64(o.Concurrency)), obs: obs, log: slog.New(slog.DiscardHandler),
		dir: dir, repo: repo, commit: commit}
	if o.MaxRate > 0 {
		// The burst must admit one full buffer read; a smaller rate just waits longer per read.
		e.limiter = rate.NewLimiter(rate.Limit(o.MaxRate), o.BufferSize)
	}
	return e
}

// task is one file to download, with its live progress.
type task struct {
	file  File
	path  string // validated relative path
	final string // where the verified file ends up
	done  atomic.Int64
	// resumed is what an earlier run left durable (set before downloading starts).
	resumed int64
	// resent counts bytes an earlier run left on disk that arrived again (a server that ignores
	// Range sends a resumed file from its start): not progress, but downloaded all the same.
	resent atomic.Int64
	sha256 [32]byte // filled after verification
	state  atomic.Value
	// singleStream is set once the server was found to ignore Range requests for this file.
	singleStream atomic.Bool
	// wake wakes the readers that follow the written prefix (the hasher, an import) when a range's
	// written offset grows.
	wake wakeups
	tee  tee // the hasher's blocks, shared with a follower

	// The download's lifecycle, for readers that follow it (see follow). laid is closed once part
	// and ranges are set, or when the download ends first; ended when download has returned, err
	// being its result.
	laid, ended chan struct{}
	laidOnce    sync.Once
	part        string
	ranges      []*byteRange
	err         error
}

func newTask(file File, path, final string) *task {
	return &task{file: file, path: path, final: final, laid: make(chan struct{}), ended: make(chan struct{})}
}

// layOut publishes where the file's bytes are being written, for readers that follow the download.
func (t *task) layOut(part string, ranges []*byteRange) {
	t.laidOnce.Do(func() {
		t.part, t.ranges = part, ranges
		close(t.laid)
	})
}

// finish records the download's result and releases the readers waiting for it.
func (t *task) finish(err error) {
	t.err = err
	t.laidOnce.Do(func() { close(t.laid) })
	close(t.ended)
}

// wakeups wakes every registered reader without blocking: each channel has capacity 1, so a burst of
// writes costs one wake-up per reader and none is lost.
type wakeups struct {
	mu  sync.Mutex
	chs []chan struct{}
}

func (w *wakeups) add() <-chan struct{} {
	ch := make(chan struct{}, 1)
	w.mu.Lock()
	w.chs = append(w.chs, ch)
	w.mu.Unlock()
	return ch
}

func (w *wakeups) wake() {
	w.mu.Lock()
	for _, ch := range w.chs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	w.mu.Unlock()
}

func (e *engine) partialPaths(relPath string) (part, jour string) {
	// Partial files are named by a hash of the path so that no repository filename ("x.part",
	// a directory named like another file's partial) can collide with them.
	h := sha256.Sum256([]byte(relPath))
	base := filepath.Join(e.dir, "partial", hex.EncodeToString(h[:16]))
	return base + ".part", base + ".journal"
}

// finalPath is where a verified file lives until the import; relPath passed registry.CleanPath.
func (e *engine) finalPath(relPath string) string {
	return filepath.Join(e.dir, "files", filepath.FromSlash(relPath))
}

// download fetches t's file into t.final, verifying it. A file already at t.final was verified by
// an earlier run (it is renamed there only after verification) and is just re-hashed for sha256.
func (e *engine) download(ctx context.Context, t *task) error {
	if fi, err := os.Stat(t.final); err == nil && fi.Size() == t.file.Size {
		sum, err := e.verifyFile(t.final, t)
		if err == nil {
			// Followers read it only now: if it failed verification, they must not have seen it.
			// They read it themselves; the hasher passed them nothing.
			t.tee.finish()
			t.layOut(t.final, []*byteRange{completeRange(t.file.Size)})
			t.sha256 = sum
			t.done.Store(t.file.Size)
			t.resumed = t.file.Size
			return nil
		}
		os.Remove(t.final)
	}
	part, jpath := e.partialPaths(t.path)
	if err := os.MkdirAll(filepath.Dir(part), 0o700); err != nil {
		return fmt.Errorf("download %s: %w", t.path, err)
	}
	identity := fileIdentity(t.file)
	if fi, err := os.Stat(part); errors.Is(err, os.ErrNotExist) || err == nil && fi.Size() != t.file.Size {
		// A journal without its partial file vouches for bytes that are gone; so does one whose
		// partial file is not the size preallocate gave it before the first record (cut short,
		// or replaced): its bytes would read back as zeros and fail verification.
		os.Remove(jpath)
	}
	j, fresh, err := openJournal(jpath, t.file.Size, e.rangeSizeFor(t.file.Size), int64(e.o.Concurrency), identity)
	if err != nil {
		return fmt.Errorf("download %s: %w", t.path, err)
	}
	defer j.close()
	flags := os.O_RDWR | os.O_CREATE
	if fresh {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(part, flags, 0o600)
	if err != nil {
		return fmt.Errorf("download %s: %w", t.path, err)
	}
	defer f.Close()
	if err := preallocate(f, t.file.Size); err != nil {
		return fmt.Errorf("download %s: preallocate %d bytes: %w", t.path, t.file.Size, err)
	}

	bounds := rangeLayout(t.file.Size, j.rangeSize, j.ramp)
	ranges := make([]*byteRange, len(bounds))
	var already int64
	for i, b := range bounds {
		r := &byteRange{idx: uint32(i), start: b[0], end: b[1], complete: make(chan struct{})}
		r.durable = min(j.done[uint32(i)], r.end-r.start)
		r.written.Store(r.durable)
		r.kept = r.durable
		already += r.durable
		if r.durable == r.end-r.start {
			close(r.complete)
		}
		ranges[i] = r
	}
	t.done.Store(already)
	t.resumed = already

	// The hash follows the download: it reads back the contiguous prefix of the file that has been
	// written, byte for byte as it grows, so verification overlaps the download instead of running
	// after it. Writers wake it through t.wake.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t.layOut(part, ranges)
	hashc := make(chan hashResult, 1)
	go func() { hashc <- e.hashRanges(ctx, f, ranges, t, &t.tee) }()

	src := newSource(e, t)
	sy := newSyncer(f, j, ranges, e.o)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return sy.run(gctx) })
	g.Go(func() error { return e.fetchRanges(gctx, src, f, sy, ranges, t) })
	go func() {
		// Once every range is complete the syncer has nothing left to protect; stop it.
		for _, r := range ranges {
			select {
			case <-r.complete:
			case <-gctx.Done():
				return
			}
		}
		sy.stop()
	}()
	if err := g.Wait(); err != nil {
		cancel()
		<-hashc
		if errors.Is(err, errKeptMismatch) {
			// Bad bytes must not be resumed from: drop them so the next run starts clean.
			f.Close()
			j.close()
			os.Remove(part)
			os.Remove(jpath)
		}
		return fmt.Errorf("download %s: %w", t.path, err)
	}
	if ctx.Err() != nil {
		cancel()
		<-hashc
		return ctx.Err()
	}
	hr := <-hashc
	if hr.err != nil {
		return fmt.Errorf("download %s: %w", t.path, hr.err)
	}
	if err := e.check(t, hr); err != nil {
		// Bad bytes must not be resumed from: drop them so the next run starts clean.
		f.Close()
		j.close()
		os.Remove(part)
		os.Remove(jpath)
		return err
	}
	t.sha256 = hr.sha256
	if err := f.Sync(); err != nil {
		return fmt.Errorf("download %s: sync: %w", t.path, err)
	}
	if err := os.MkdirAll(filepath.Dir(t.final), 0o700); err != nil {
		return fmt.Errorf("download %s: %w", t.path, err)
	}
	if err := os.Rename(part, t.final); err != nil {
		return fmt.Errorf("download %s: %w", t.path, err)
	}
	syncDir(filepath.Dir(t.final))
	j.close()
	os.Remove(jpath)
	if e.obs != nil {
		e.obs.FileDownloaded()
	}
	return nil
}

// fetchRanges downloads the missing bytes of a file's ranges: in parallel, each range on a
// connection of its own, until the server is found to ignore Range requests (see source.noteRange);
// then the ranges in flight finish or stop at their next failure, no other starts, and one stream
// fetches everything still missing (fetchRange with r == nil). The layout and the journal stay as
// they are: the stream writes each range's bytes in order, from the range's written offset on.
func (e *engine) fetchRanges(ctx context.Context, src *source, f *os.File, sy *syncer, ranges []*byteRange, t *task) error {
	if len(ranges) > 1 && firstMissing(ranges) >= 0 {
		// Resolved before the first range rather than by it, to know the host (singleIfKnown).
		if _, _, err := src.get(ctx, -1); err != nil {
			return err
		}
		src.singleIfKnown()
	}
	rg, rctx := errgroup.WithContext(ctx)
	for _, r := range ranges {
		if r.written.Load() == r.end-r.start {
			continue
		}
		if src.isSingle() || e.sem.Acquire(rctx, 1) != nil {
			break
		}
		if src.singleIfKnown(); src.isSingle() {
			e.sem.Release(1)
			break
		}
		rg.Go(func() error {
			defer e.sem.Release(1)
			if err := e.fetchRange(rctx, src, f, sy, r, t); !errors.Is(err, errSingleStream) {
				return err
			}
			return nil // the stream fetches the rest of this range
		})
	}
	if err := rg.Wait(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if !src.isSingle() || firstMissing(ranges) < 0 {
		return nil
	}
	if err := e.sem.Acquire(ctx, 1); err != nil {
		return err
	}
	defer e.sem.Release(1)
	return e.fetchRange(ctx, src, f, sy, nil, t)
}

// firstMissing is the index of the first range not completely written, or -1.
func firstMissing(ranges []*byteRange) int {
	for i, r := range ranges {
		if r.written.Load() < r.end-r.start {
			return i
		}
	}
	return -1
}

// fileIdentity is what a journal is bound to: the file's expected hash.
func fileIdentity(f File) string {
	if f.LFS != nil {
		return f.LFS.SHA256
	}
	return f.BlobID
}

// resumable is how many bytes of t's file earlier runs left for this one: all of them when its
// verified file is staged, else what its journal vouches for if its partial file is intact (see
// download). Progress starts from it, so resumed bytes do not count as downloaded at the first
// report.
func (e *engine) resumable(t *task) int64 {
	if fi, err := os.Stat(t.final); err == nil && fi.Size() == t.file.Size {
		return t.file.Size
	}
	part, jpath := e.partialPaths(t.path)
	if fi, err := os.Stat(part); err != nil || fi.Size() != t.file.Size {
		return 0
	}
	return durableBytes(jpath, t.file.Size, fileIdentity(t.file))
}

// rangeSizeFor splits a file into about two ranges per connection, so every connection has work
// and a slow one does not hold the tail of the file alone; ranges stay between minRange and
// RangeSize so small files are not split into requests that cost more than they carry.
func (e *engine) rangeSizeFor(size int64) int64 {
	const minRange = 1 << 20
	rs := (size + 2*int64(e.o.Concurrency) - 1) / (2 * int64(e.o.Concurrency))
	return max(min(rs, e.o.RangeSize), min(minRange, e.o.RangeSize))
}

// rangeLayout splits a file of size bytes into ranges [start, end). The first ramp ranges grow from
// rangeSize/ramp to rangeSize, the rest are rangeSize until the tail, where each range is at most
// 1/ramp of what remains (but not under minTaper). Why the ramp: connections run at about the same
// speed, so equal first ranges would all finish together and the hash (which must read the file in
// order) would wait on all of them; staggered first ranges complete one after another, and the
// following ranges inherit the stagger. Why the taper: ranges are handed out in file order, so at
// the end each connection finishes its last range alone; with equal ranges the others sit idle for
// up to a whole range (0.6 s of a 50 MB/s connection at 32 MiB). Shrinking ranges let all
// connections run out of work within about minTaper of each other, while the middle of the file
// keeps big ranges (few requests, which matters on a CDN with a real round-trip time).
func rangeLayout(size, rangeSize, ramp int64) [][2]int64 {
	minTaper := min(rangeSize, 1<<20)
	var out [][2]int64
	for start, i := int64(0), int64(0); start < size; i++ {
		n := rangeSize
		if i < ramp {
			n = max(rangeSize*(i+1)/ramp, 1)
		} else if ramp > 0 {
			n = min(n, max((size-start+ramp-1)/ramp, minTaper))
		}
		if rest := size - start; rest-n < minTaper && rest <= rangeSize {
			n = rest // a sliver of a range would cost a request for almost nothing
		}
		end := min(start+n, size)
		out = append(out, [2]int64{start, end})
		start = end
	}
	return out
}

// completeRange is [0, size) of a file already written.
func completeRange(size int64) *byteRange {
	r := &byteRange{start: 0, end: size, complete: make(chan struct{})}
	r.written.Store(size)
	close(r.complete)
	return r
}

type byteRange struct {
	idx        uint32
	start, end int64
	written    atomic.Int64 // bytes from start written to the file (in the page cache at least)
	durable    int64        // bytes from start fsynced and journaled; only the syncer touches it
	kept       int64        // bytes from start an earlier run left (durable when this run began)
	complete   chan struct{}
}

// syncer makes written bytes durable in the background: it fsyncs the partial file and then
// journals each range's progress, when Checkpoint bytes are pending or every SyncInterval, and a
// last time when stopped (also on failure or cancellation, so an interrupted fetch resumes from
// everything that arrived). Connections never wait for a disk flush.
type syncer struct {
	f       *os.File
	j       *journal
	ranges  []*byteRange
	o       EngineOptions
	pending atomic.Int64
	kick    chan struct{}
	done    chan struct{}
	once    sync.Once
}

func newSyncer(f *os.File, j *journal, ranges []*byteRange, o EngineOptions) *syncer {
	return &syncer{f: f, j: j, ranges: ranges, o: o, kick: make(chan struct{}, 1), done: make(chan struct{})}
}

// wrote accounts n new bytes and wakes the syncer when a checkpoint's worth is pending.
func (s *syncer) wrote(n int) {
	if s.pending.Add(int64(n)) >= s.o.Checkpoint {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

func (s *syncer) stop() { s.once.Do(func() { close(s.done) }) }

func (s *syncer) run(ctx context.Context) error {
	tick := time.NewTicker(s.o.SyncInterval)
	defer tick.Stop()
	for {
		select {
		case <-s.kick:
		case <-tick.C:
		case <-s.done:
			return s.flush()
		case <-ctx.Done():
			// Save what arrived before the failure or cancellation, then report the cause.
			s.flush()
			return ctx.Err()
		}
		if err := s.flush(); err != nil {
			return err
		}
	}
}

// flush fsyncs, then journals every range that grew since the last flush.
func (s *syncer) flush() error {
	snap := make([]int64, len(s.ranges))
	grew := false
	for i, r := range s.ranges {
		snap[i] = r.written.Load()
		grew = grew || snap[i] > r.durable
	}
	if !grew {
		return nil
	}
	s.pending.Store(0)
	// Data first, then the records that vouch for it.
	if err := datasync(s.f); err != nil {
		return fmt.Errorf("sync partial file: %w", err)
	}
	for i, r := range s.ranges {
		if snap[i] > r.durable {
			if err := s.j.record(r.idx, snap[i]); err != nil {
				return err
			}
			r.durable = snap[i]
		}
	}
	return nil
}

type hashResult struct {
	sha256 [32]byte
	sha1   [20]byte
	err    error
}

// hashRanges hashes the file in order as readBack reads the contiguous written prefix back.
func (e *engine) hashRanges(ctx context.Context, f *os.File, ranges []*byteRange, t *task, tee *tee) hashResult {
	h256 := sha256.New()
	var h1 hash.Hash
	hw := io.Writer(h256)
	if t.file.LFS == nil {
		h1 = sha1.New()
		fmt.Fprintf(h1, "blob %d\x00", t.file.Size)
		hw = io.MultiWriter(h256, h1)
	}
	// One goroutine reads the written prefix back while this one hashes what it read before, so
	// the device's read latency and the hash overlap instead of adding up. The read-back goes to
	// the device with direct I/O (the writers bypass the page cache too, see rangeWriter), in
	// aligned blocks: a read stops at a block boundary unless it reaches the end.
	const readAhead = 3
	free := make(chan []byte, readAhead)
	for range readAhead {
		free <- directio.AlignedBuffer(1 << 20)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	full, wait := readBackAsync(rctx, f, 0, t.file.Size, ranges, t.wake.add(), free, readAhead)
	var pos int64
	for p := range full {
		if tee != nil {
			// A follower that has joined gets the block too, and reads it while it is hashed.
			tee.pass(rctx, pos, p, func() { hw.Write(p) })
		} else {
			hw.Write(p)
		}
		pos += int64(len(p))
		free <- p[:cap(p)]
	}
	if tee != nil {
		tee.finish()
	}
	if err := wait(); err != nil {
		return hashResult{err: err}
	}
	var res hashResult
	h256.Sum(res.sha256[:0])
	if h1 != nil {
		h1.Sum(res.sha1[:0])
	}
	return res
}

// readBackAsync runs readBack on a goroutine of its own, handing blocks out through a channel of
// depth places; wait returns its error once that channel is drained.
func readBackAsync(ctx context.Context, f *os.File, from, size int64, ranges []*byteRange, wake <-chan struct{}, free <-chan []byte, depth int) (out <-chan []byte, wait func() error) {
	full := make(chan []byte, depth)
	rerr := make(chan error, 1)
	go func() {
		defer close(full)
		rerr <- readBack(ctx, f, from, size, ranges, wake, free, full)
	}()
	return full, func() error { return <-rerr }
}

// readBack reads bytes [from, size) of the file in order into buffers from free and hands them to
// full, following the contiguous prefix the range writers have written as it grows; wake signals
// growth. from must be a multiple of directio.Align or size.
func readBack(ctx context.Context, f *os.File, from, size int64, ranges []*byteRange, wake <-chan struct{}, free <-chan []byte, full chan<- []byte) error {
	direct := directio.OpenReader(f.Name())
	if direct != nil {
		defer direct.Close()
	}
	i := 0 // ranges before i are completely written
	var buf []byte
	for pos := from; pos < size; {
		for i < len(ranges) && ranges[i].written.Load() == ranges[i].end-ranges[i].start {
			i++
		}
		avail := size // the end of the contiguous written prefix
		if i < len(ranges) {
			// Bytes below written were written before written was stored, so a read sees them.
			avail = ranges[i].start + ranges[i].written.Load()
		}
		if buf == nil {
			select {
			case buf = <-free:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		end := min(avail, size, pos+int64(len(buf)))
		if end < size {
			end &^= directio.Align - 1
		}
		if end > pos {
			n, err := directio.ReadAt(direct, f, buf[:end-pos], pos)
			if int64(n) < end-pos {
				return fmt.Errorf("read back at offset %d: %w", pos, err)
			}
			full <- buf[:n]
			buf = nil
			pos = end
			continue
		}
		select {
		case <-wake:
		case <-ranges[i].complete:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// verifyFile hashes an already complete file and checks it like a fresh download.
func (e *engine) verifyFile(path string, t *task) ([32]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return [32]byte{}, err
	}
	defer f.Close()
	hr := e.hashRanges(context.Background(), f, []*byteRange{completeRange(t.file.Size)}, t, nil)
	if hr.err != nil {
		return [32]byte{}, hr.err
	}
	return hr.sha256, e.check(t, hr)
}

// check compares hashes with what the Hub announced.
func (e *engine) check(t *task, hr hashResult) error {
	if t.file.LFS != nil {
		if got := hex.EncodeToString(hr.sha256[:]); !strings.EqualFold(got, t.file.LFS.SHA256) {
			return fmt.Errorf("%w: %s: sha256 is %s, the Hub announced %s; nothing was published", ErrChecksum, t.path, got, t.file.LFS.SHA256)
		}
		return nil
	}
	if got := hex.EncodeToString(hr.sha1[:]); !strings.EqualFold(got, t.file.BlobID) {
		return fmt.Errorf("%w: %s: git blob sha1 is %s, the Hub announced %s; nothing was published", ErrChecksum, t.path, got, t.file.BlobID)
	}
	return nil
}

// source is a file's download URL, re-resolved when a signed CDN URL expires, and what the
// server's answers showed about it: whether it honours Range requests.
type source struct {
	e   *engine
	t   *task
	mu  sync.Mutex
	loc Location
	gen int // bumped at each resolution, so concurrent ranges that hit the same 403 resolve once
	// ignored counts the file's Range requests answered with the whole body since the last one
	// answered with the range asked for.
	ignored int
	single  chan struct{} // closed when the file switches to a single stream
}

func newSource(e *engine, t *task) *source {
	return &source{e: e, t: t, single: make(chan struct{})}
}

// ignoredRangeLimit is how many Range requests of a file answered with the whole body, without one
// answered with its range in between, switch the file to a single stream. One such answer may be
// a cache node that misbehaved once (retried, as before); two in a row — usually the first wave of
// parallel requests — is a proxy or mirror that does not do ranges at all, where retrying would
// only fail the fetch.
const ignoredRangeLimit = 2

// noteRange records how the server answered one of the file's Range requests: with the range
// (honoured) or with 200 and the whole body, and reports whether the server now consistently
// ignores ranges (ignoredRangeLimit ignored answers in a row). Then a file of several ranges
// switches to a single stream, shown in its progress, and its host is remembered (logged the first
// time) for the fetch's next files; a file of one range needs no switch (its own fetch is a single
// stream already).
func (s *source) noteRange(honoured bool, host string) (consistent bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if honoured {
		s.ignored = 0
		return false
	}
	s.ignored++
	if s.ignored < ignoredRangeLimit {
		return false
	}
	if s.isSingle() || len(s.t.ranges) < 2 {
		return true
	}
	s.switchLocked()
	if _, known := s.e.rangeless.LoadOrStore(host, true); !known {
		s.e.log.Warn("the server ignores Range requests: downloading files from it in a single stream each, without parallel connections",
			"file", s.t.path, "host", host, "size", s.t.file.Size)
	}
	return true
}

// singleIfKnown switches a file of several ranges to a single stream before its first request when
// another file of this fetch found its host ignoring Range requests: the first wave of requests
// would only be thrown away again, and a proxy may fetch the whole file upstream for each.
func (s *source) singleIfKnown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isSingle() || len(s.t.ranges) < 2 || s.loc.URL == "" {
		return
	}
	u, err := url.Parse(s.loc.URL)
	if err != nil {
		return
	}
	if _, known := s.e.rangeless.Load(u.Host); known {
		s.switchLocked()
		s.e.log.Debug("downloading in a single stream: the server ignores Range requests", "file", s.t.path, "host", u.Host)
	}
}

// switchLocked switches the file to a single stream; s.mu is held.
func (s *source) switchLocked() {
	close(s.single)
	s.t.singleStream.Store(true)
}

// isSingle reports whether the file has switched to a single stream.
func (s *source) isSingle() bool {
	select {
	case <-s.single:
		return true
	default:
		return false
	}
}

func (s *source) get(ctx context.Context, staleGen int) (Location, int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loc.URL != "" && s.gen != staleGen {
		return s.loc, s.gen, nil
	}
	loc, err := s.e.c.Resolve(ctx, s.e.repo, s.e.commit, s.t.file.Path)
	if err != nil {
		return Location{}, 0, err
	}
	if loc.Size >= 0 && loc.Size != s.t.file.Size {
		return Location{}, 0, fmt.Errorf("%w: %s: the Hub announces %d bytes at download time but listed %d", ErrChecksum, s.t.path, loc.Size, s.t.file.Size)
	}
	if s.t.file.LFS != nil && len(loc.ETag) == 64 && !strings.EqualFold(loc.ETag, s.t.file.LFS.SHA256) {
		return Location{}, 0, fmt.Errorf("%w: %s: the Hub announces sha256 %s at download time but listed %s", ErrChecksum, s.t.path, loc.ETag, s.t.file.LFS.SHA256)
	}
	s.loc = loc
	s.gen++
	return s.loc, s.gen, nil
}

// errStalled marks a range attempt cancelled because no bytes arrived within StallTimeout.
var errStalled = errors.New("download stalled")

// errBadResponse marks a file response the engine cannot use (a byte range other than the one asked
// for, an encoded body): nothing of it was written, and a cache node or proxy that misbehaved once
// may not the next time, so the range is retried; one that keeps doing it fails with ErrProtocol.
var errBadResponse = errors.New("unusable response")

// errExpired marks a 403 from the CDN: the signed URL expired, resolve a fresh one.
var errExpired = errors.New("signed URL rejected")

// errSingleStream ends a range's own fetch once the file has switched to a single stream, which
// fetches what the range still misses.
var errSingleStream = errors.New("the file downloads in a single stream")

// errKeptMismatch marks bytes a single stream read past (kept on disk by an earlier attempt or
// run) that differ from what the server sent: the partial file cannot be trusted and is discarded.
var errKeptMismatch = errors.New("kept bytes differ from the server's")

// fetchRange downloads the rest of r with retries, checkpointing durable progress. With r == nil
// it is the file's single stream (see fetchRanges): each attempt asks for everything still
// missing, from the first missing byte to the end of the last incomplete range. A range's own
// fetch returns errSingleStream instead of retrying once the file has switched to a single stream.
func (e *engine) fetchRange(ctx context.Context, src *source, f *os.File, sy *syncer, r *byteRange, t *task) error {
	if e.obs != nil {
		e.obs.DownloadsActive(1)
		defer e.obs.DownloadsActive(-1)
	}
	buf := directio.AlignedBuffer(e.o.BufferSize)
	bo := e.c.backoff
	stale := -1 // a generation no resolution has, so the first get resolves
	failures := 0
	// Progress is bytes written: the bytes a stream reads past to reach the missing ones are not.
	progress := func() int64 {
		if r == nil {
			return t.done.Load()
		}
		return r.written.Load()
	}
	var switched <-chan struct{} // wakes a range's backoff when the stream takes over
	if r != nil {
		switched = src.single
	}
	for {
		if r != nil && src.isSingle() {
			return errSingleStream
		}
		loc, g, err := src.get(ctx, stale)
		if err != nil {
			return err
		}
		before := progress()
		hdr, err := e.rangeAttempt(ctx, src, loc, f, sy, r, t, buf)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		stale = -1
		if errors.Is(err, errExpired) {
			stale = g // this URL is dead: resolve again unless another range already did
		}
		if !retryable(err) {
			return err
		}
		if r != nil && src.isSingle() {
			return errSingleStream
		}
		if progress() > before {
			failures = 0 // progress was made: this is a flaky link, not a dead one
		}
		failures++
		if failures >= bo.Attempts {
			if !errors.Is(err, ErrOffline) && !errors.Is(err, ErrRateLimited) && !errors.Is(err, ErrProtocol) {
				// Cuts and stalls that never stop are the network's doing: report them as such.
				err = fmt.Errorf("%w: giving up after %d attempts without progress: %v", ErrOffline, failures, err)
			}
			return err
		}
		if e.obs != nil {
			e.obs.RetryObserved(err)
		}
		if errors.Is(err, errExpired) {
			continue // a fresh signature needs no backoff
		}
		if err := sleepUntil(ctx, bo.delay(failures-1, hdr), switched); err != nil {
			return err
		}
	}
}

// retryable reports whether a range failure is worth another attempt.
func retryable(err error) bool {
	if errors.Is(err, errStalled) || errors.Is(err, errExpired) || errors.Is(err, errBadResponse) || errors.Is(err, ErrOffline) ||
		errors.Is(err, ErrRateLimited) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	return false
}

// missingSpan is what a single stream asks for: from the first byte not written to the end of the
// last range not complete. ok is false when every range is complete.
func missingSpan(ranges []*byteRange) (from, to int64, ok bool) {
	i := firstMissing(ranges)
	if i < 0 {
		return 0, 0, false
	}
	from = ranges[i].start + ranges[i].written.Load()
	for j := len(ranges) - 1; j >= i; j-- {
		if ranges[j].written.Load() < ranges[j].end-ranges[j].start {
			return from, ranges[j].end, true
		}
	}
	return from, ranges[i].end, true
}

// othersComplete reports whether every range but r is completely written: then no other connection
// writes the file, and r may read past bytes before its own from a body that starts at 0.
func othersComplete(ranges []*byteRange, r *byteRange) bool {
	for _, q := range ranges {
		if q != r && q.written.Load() < q.end-q.start {
			return false
		}
	}
	return true
}

// rangeAttempt makes one request for the rest of r (r == nil: for the file's missing span, see
// fetchRange) and copies it to f. On failure it returns the response headers (for Retry-After) and
// an error; the ranges' written offsets reflect the bytes kept.
//
// A 200 with the whole body to a Range request is used by the single stream, and by a range's own
// fetch when the server consistently ignores ranges and no other connection writes the file (its
// only range, or its last incomplete one): the bytes before the missing ones are read past, each
// compared with what is on disk and never written again; any difference is errKeptMismatch.
// Otherwise it is an unusable response, counted towards the switch to a single stream.
func (e *engine) rangeAttempt(ctx context.Context, src *source, loc Location, f *os.File, sy *syncer, r *byteRange, t *task, buf []byte) (http.Header, error) {
	ranges := t.ranges
	var from, to int64 // [from, to): the bytes asked for
	if r != nil {
		from, to = r.start+r.written.Load(), r.end
	} else {
		var ok bool
		if from, to, ok = missingSpan(ranges); !ok {
			return nil, nil
		}
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var stalled atomic.Bool
	timer := time.AfterFunc(e.o.StallTimeout, func() { stalled.Store(true); cancel() })
	defer timer.Stop()

	req, err := http.NewRequestWithContext(rctx, http.MethodGet, loc.URL, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	e.c.decorate(req, loc.Auth)
	ranged := from != 0 || to != t.file.Size
	if ranged {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(from, 10)+"-"+strconv.FormatInt(to-1, 10))
	}
	resp, err := e.c.http.Do(req)
	if err != nil {
		if stalled.Load() {
			return nil, fmt.Errorf("%w: no response for %v", errStalled, e.o.StallTimeout)
		}
		if isCtxErr(ctx, err) {
			return nil, ctx.Err()
		}
		return nil, networkError(req.URL, err)
	}
	defer resp.Body.Close()
	at := from // the file offset of the body's first byte
	switch {
	case resp.StatusCode == http.StatusPartialContent:
		cr := resp.Header.Get("Content-Range")
		if !strings.HasPrefix(cr, "bytes "+strconv.FormatInt(from, 10)+"-") {
			// Not a server without ranges: a broken one, or a cache serving another object range.
			return nil, fmt.Errorf("%w: %w: asked bytes %d-%d, got Content-Range %q", ErrProtocol, errBadResponse, from, to-1, cr)
		}
		if _, total, ok := strings.Cut(cr, "/"); ok && total != "*" && total != strconv.FormatInt(t.file.Size, 10) {
			return nil, fmt.Errorf("%w: %s: the server has %s bytes, the Hub listed %d", ErrChecksum, t.path, total, t.file.Size)
		}
		if ranged {
			src.noteRange(true, req.URL.Host)
		}
	case resp.StatusCode == http.StatusOK:
		// The whole file: we asked for all of it, or the server ignored Range.
		at = 0
		if ranged {
			consistent := src.noteRange(false, req.URL.Host)
			if r != nil && from > 0 && (!consistent || !othersComplete(ranges, r)) {
				// Reading past the bytes before ours costs receiving them again: not worth it for a
				// cache node that misbehaved once (a retry is cheaper), and not while other
				// connections fetch the same bytes (the file switches to a single stream instead).
				return nil, fmt.Errorf("%w: %w: %s ignored a Range request", ErrProtocol, errBadResponse, redact(req.URL))
			}
		}
	case resp.StatusCode == http.StatusForbidden && !loc.Auth:
		drain(resp)
		return nil, errExpired
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		drain(resp)
		return nil, fmt.Errorf("%w: %s: the server has fewer than the %d bytes the Hub listed (HTTP 416 for bytes %d-%d)", ErrChecksum, t.path, t.file.Size, from, to-1)
	case resp.StatusCode >= 300 && resp.StatusCode < 400 && loc.Auth:
		// The hub redirected a download we expected to serve directly (a rename, or the
		// file moved to LFS); re-resolve.
		drain(resp)
		return nil, errExpired
	default:
		err := e.c.statusError(resp, ErrEntryNotFound)
		drain(resp)
		return resp.Header, err
	}

	if ce := resp.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		// We asked for identity: encoded bytes are not the file's, and writing them would fail the
		// hash and throw away every good byte of the file with them.
		return nil, fmt.Errorf("%w: %w: %s answered with Content-Encoding %q", ErrProtocol, errBadResponse, redact(req.URL), ce)
	}
	if resp.StatusCode == http.StatusOK && resp.ContentLength >= 0 && resp.ContentLength != t.file.Size {
		return nil, fmt.Errorf("%w: %s: the server sends %d bytes for the whole file, the Hub listed %d", ErrChecksum, t.path, resp.ContentLength, t.file.Size)
	}
	body := io.LimitReader(resp.Body, to-at)
	rw := newRangeWriter(f)
	defer rw.close()
	var kept []byte // what is on disk of bytes read past, to compare
	k := 0          // ranges[k] holds pos
	for pos := at; pos < to; {
		// Read so that a byte's place in buf is congruent to its file offset modulo the block size:
		// then every whole block of the piece is aligned in memory and on disk, and goes to the
		// device directly without a copy.
		s := int(pos % directio.Align)
		n, rerr := readFull(body, buf[s:s+int(min(int64(len(buf)-s), to-pos))], timer, e.o.StallTimeout)
		if n > 0 {
			if e.limiter != nil || e.o.SharedRate != nil {
				// Waiting for our share of --max-rate is not a stall: with a low limit and many
				// connections a turn can take longer than StallTimeout, and cutting the connection
				// would throw away what the kernel buffered, to download it again.
				timer.Stop()
				for _, l := range []*rate.Limiter{e.limiter, e.o.SharedRate} {
					if err := waitRate(ctx, l, n); err != nil {
						return nil, err
					}
				}
				timer.Reset(e.o.StallTimeout)
			}
			for p := buf[s : s+n]; len(p) > 0; {
				for ranges[k].end <= pos {
					k++
				}
				q := ranges[k]
				w := q.start + q.written.Load()
				if pos < w {
					// Already written (by an earlier attempt or run): compare, never write again.
					m := int(min(int64(len(p)), w-pos))
					if kept == nil {
						kept = make([]byte, len(buf))
					}
					if _, err := f.ReadAt(kept[:m], pos); err != nil {
						return nil, fmt.Errorf("read back %s at offset %d: %w", t.path, pos, err)
					}
					if !bytes.Equal(kept[:m], p[:m]) {
						return nil, fmt.Errorf("%w: %w: %s: the server's bytes at offsets %d-%d differ from those kept on disk by an earlier attempt; the partial download is discarded",
							ErrChecksum, errKeptMismatch, t.path, pos, pos+int64(m)-1)
					}
					if k := q.start + q.kept - pos; k > 0 {
						t.resent.Add(min(k, int64(m))) // an earlier run's bytes, over the link again
					}
					p, pos = p[m:], pos+int64(m)
					continue
				}
				if pos > w {
					// Bytes arrive in order from the first missing one on: a gap is a bug.
					return nil, fmt.Errorf("write %s: offset %d is past the written end %d of its range", t.path, pos, w)
				}
				m := int(min(int64(len(p)), q.end-pos))
				if err := rw.writeAt(p[:m], pos); err != nil {
					return nil, fmt.Errorf("write %s: %w", t.path, err)
				}
				p, pos = p[m:], pos+int64(m)
				q.written.Store(pos - q.start)
				t.wake.wake()
				t.done.Add(int64(m))
				sy.wrote(m)
				if pos == q.end {
					close(q.complete)
				}
			}
			if e.obs != nil {
				e.obs.BytesDownloaded(int64(n))
			}
		}
		if rerr != nil {
			if pos >= to {
				break
			}
			// What arrived stays written: the retry continues from here.
			switch {
			case stalled.Load():
				return nil, fmt.Errorf("%w: no bytes for %v at offset %d of %s", errStalled, e.o.StallTimeout, pos, t.path)
			case isCtxErr(ctx, rerr):
				return nil, ctx.Err()
			case errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF):
				return nil, fmt.Errorf("%w: connection closed at offset %d of %s", io.ErrUnexpectedEOF, pos, t.path)
			default:
				return nil, networkError(req.URL, rerr)
			}
		}
	}
	return nil, nil
}

// waitRate takes n tokens from l (nil: no limit), in pieces no larger than its burst, which a
// limiter shared with fetches of other buffer sizes may set below n.
func waitRate(ctx context.Context, l *rate.Limiter, n int) error {
	if l == nil {
		return nil
	}
	for n > 0 {
		m := min(n, max(l.Burst(), 1))
		if err := l.WaitN(ctx, m); err != nil {
			return err
		}
		n -= m
	}
	return nil
}

// rangeWriter writes one range's bytes into the partial file: whole aligned blocks through a
// descriptor of its own opened with O_DIRECT, the partial blocks at either end of a piece through
// the shared buffered descriptor. Why direct: parallel buffered writers into one file spent 3.8 s
// of CPU per GiB here in the kernel (page-cache allocation and the inode lock they contend on),
// four times what curl's single writer pays. A block is only ever written one way (a direct write
// covers whole blocks of one piece; a partial block is written through the page cache, also by the
// neighbouring range), so the two paths never race on the same block. Where the filesystem refuses
// O_DIRECT everything goes through the shared descriptor.
type rangeWriter struct {
	f, direct *os.File
}

func newRangeWriter(f *os.File) *rangeWriter {
	rw := &rangeWriter{f: f}
	if d, err := os.OpenFile(f.Name(), os.O_WRONLY, 0); err == nil {
		if directio.Enable(d) == nil {
			rw.direct = d
		} else {
			d.Close()
		}
	}
	return rw
}

// writeAt writes p at off. p's memory must be congruent to off modulo directio.Align for the
// direct path to apply (fetchRange's buffer is arranged so).
func (rw *rangeWriter) writeAt(p []byte, off int64) error {
	if rw.direct != nil && directio.Congruent(p, off) {
		head := min(len(p), int((directio.Align-off%directio.Align)%directio.Align))
		mid := (len(p) - head) &^ (directio.Align - 1)
		if head > 0 {
			if _, err := rw.f.WriteAt(p[:head], off); err != nil {
				return err
			}
		}
		if mid > 0 {
			if _, err := rw.direct.WriteAt(p[head:head+mid], off+int64(head)); err != nil {
				return err
			}
		}
		p, off = p[head+mid:], off+int64(head+mid)
	}
	if len(p) == 0 {
		return nil
	}
	_, err := rw.f.WriteAt(p, off)
	return err
}

func (rw *rangeWriter) close() {
	if rw.direct != nil {
		rw.direct.Close()
	}
}

// pieceWait bounds how long bytes wait in a connection's buffer for more before they are written.
// On a fast link the buffer fills in milliseconds and pieces stay whole buffers (few, big, direct
// writes); on a slow one (a cellular link shared by 8 connections gives each tens of KB/s) a 1 MiB
// buffer takes tens of seconds to fill, and until written its bytes are not in the progress
// display, the journal or a resume.
const pieceWait = 250 * time.Millisecond

// readFull fills p like io.ReadFull, resetting the stall timer whenever bytes arrive, but returns
// what it has (with a nil error) once the first of those bytes has waited pieceWait.
func readFull(r io.Reader, p []byte, timer *time.Timer, stall time.Duration) (int, error) {
	n := 0
	var first time.Time
	for n < len(p) {
		m, err := r.Read(p[n:])
		if m > 0 {
			timer.Reset(stall)
			if n == 0 {
				first = time.Now()
			}
		}
		n += m
		if err != nil {
			if err == io.EOF && n == len(p) {
				return n, nil
			}
			return n, err
		}
		if n > 0 && time.Since(first) >= pieceWait {
			return n, nil
		}
	}
	return n, nil
}

// syncDir fsyncs a directory so a rename in it is durable. Errors are ignored: some filesystems
// refuse fsync on directories, and the rename itself already succeeded.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
