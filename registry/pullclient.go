package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	registrypb "github.com/buffdb/buffdbd/api/proto/registrypb"
	"github.com/buffdb/buffdbd/internal/directio"
)

// PartialSuffix marks a file being pulled. It holds a verified-order prefix of the file, so a pull
// that was interrupted resumes from its length; it is renamed over the final name once the whole
// version is verified.
const PartialSuffix = ".buffdbd-partial"

// PullOptions configure Pull.
type PullOptions struct {
	// Retries is how many times in a row a transient failure resumes the pull; an attempt that
	// kept more bytes than any before starts the count again. 0: no retry.
	Retries int
	// NoDelta disables reuse of chunks found in files already in the output directory.
	NoDelta  bool
	Progress Progress
}

// PullResult reports a pull.
type PullResult struct {
	Info          ModelInfo
	Files         int
	Bytes         int64 // total file bytes of the version
	BytesReceived int64 // file bytes received over the wire (all attempts)
	BytesLocal    int64 // bytes copied from chunks already on disk or kept from partial files
	Attempts      int
}

// localChunk says where a chunk's bytes are on local disk.
type localChunk struct {
	path string
	off  int64
	size int64
}

// Pull downloads ref into dir: every file is written to a partial file, verified against its
// sha256, fsynced, and only when all are verified renamed into place (then the directories are
// fsynced). Files already present with the right content are kept as they are; chunks found in
// other files of dir (e.g. the previous version) are copied locally instead of downloaded; partial
// files left by an interrupted pull are resumed from their length.
func (c *Client) Pull(ctx context.Context, ref string, dir string, opts PullOptions) (PullResult, error) {
	res, files, err := c.resolve(ctx, ref, opts)
	if err != nil {
		return res, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	unlock, err := lockPullDir(dir)
	if err != nil {
		return res, err
	}
	defer unlock()
	err = c.pullInto(ctx, dir, nil, files, opts, &res)
	return res, err
}

// resolve looks ref up (retried like the transfer) and returns the version's info and files.
func (c *Client) resolve(ctx context.Context, ref string, opts PullOptions) (PullResult, []File, error) {
	var res PullResult
	r, err := ParseRef(ref)
	if err != nil {
		return res, nil, err
	}
	// Resolving the reference is retried like the transfer: a pull started while the link is
	// down for a moment (or the daemon restarts) used to fail at once, unlike a push.
	var show *registrypb.ShowResponse
	for attempt := 0; ; attempt++ {
		show, err = c.rpc.Show(ctx, &registrypb.ShowRequest{Ref: r.String()})
		if err == nil || !retryable(ctx, err) || attempt >= opts.Retries {
			break
		}
		if err := sleepBackoff(ctx, attempt); err != nil {
			return res, nil, err
		}
	}
	if err != nil {
		return res, nil, err
	}
	info := InfoFromProto(show.Info)
	files, err := FilesFromProto(show.Files)
	if err != nil {
		return res, nil, fmt.Errorf("manifest of %s: %w", ref, err)
	}
	res.Info, res.Files = info, len(files)
	for _, f := range files {
		res.Bytes += f.Size
	}
	return res, files, nil
}

// pullInto pulls the version res describes into dir, which the caller has locked. Besides the files
// already in dir, the files under each of seeds (e.g. the version a link points to) are a source
// of chunks the version shares with them.
func (c *Client) pullInto(ctx context.Context, dir string, seeds []string, files []File, opts PullOptions, res *PullResult) error {
	info := res.Info
	wanted := map[Digest]bool{}
	for _, f := range files {
		for _, ch := range f.Chunks {
			wanted[ch.SHA256] = true
		}
	}
	// Index the chunks of files already in dir that this version uses. Files whose chunks equal the
	// manifest's are complete already.
	local := map[Digest]localChunk{}
	complete := map[string]bool{}
	if !opts.NoDelta {
		if err := indexLocal(ctx, dir, files, wanted, local, complete); err != nil {
			return err
		}
		// The seeds are chunked only for what dir lacks: a rollback to a version whose directory
		// is complete does not hash the version being served (seconds per GB on a small ARM core).
		missing := map[Digest]bool{}
		for _, f := range files {
			for _, ch := range f.Chunks {
				if _, ok := local[ch.SHA256]; !ok && !complete[f.Path] {
					missing[ch.SHA256] = true
				}
			}
		}
		for _, s := range seeds {
			if len(missing) == 0 {
				break
			}
			// A seed's files are a source of chunks only: a file there is not in place here.
			if err := indexLocal(ctx, s, files, missing, local, map[string]bool{}); err != nil {
				return err
			}
		}
	}
	pinned := fmt.Sprintf("%s:%s", info.Name, info.Version) // an alias may move mid-pull; the version cannot
	ours := map[string]bool{}
	kept := int64(-1) // the most bytes an attempt found on disk to start from
	for attempt := 0; ; attempt++ {
		res.Attempts++
		var start int64
		err := c.pullOnce(ctx, pinned, dir, files, local, complete, ours, &start, opts, res)
		if err == nil || !retryable(ctx, err) {
			return err
		}
		if start > kept {
			// Opts.Retries bounds failures in a row: on a link that drops every few minutes, a
			// pull that moves forward on every connection must not give up after the eleventh.
			// An attempt that starts further than any before shows the last one moved forward;
			// that cannot go on forever, the version's size bounding it.
			if kept >= 0 {
				attempt = 0
			}
			kept = start
		}
		if attempt >= opts.Retries {
			return err
		}
		if err := sleepBackoff(ctx, attempt); err != nil {
			return err
		}
	}
}

// partialPath is where a pull into dir writes the file at rel until the version is verified:
// beside it (so the rename stays on one filesystem), named rel + PartialSuffix, or, where that
// would be longer than a file name may be (a name of 240 bytes or more, which pushed fine and then
// failed every pull with ENAMETOOLONG), a fixed-length name derived from the file's name. Either
// ends in PartialSuffix, which no file of a version may (CleanPath), so none is taken for another.
func partialPath(dir, rel string) string {
	final := filepath.Join(dir, filepath.FromSlash(rel))
	base := filepath.Base(final)
	if len(base)+len(PartialSuffix) <= maxSegmentLen {
		return final + PartialSuffix
	}
	sum := sha256.Sum256([]byte(base))
	return filepath.Join(filepath.Dir(final), "."+hex.EncodeToString(sum[:16])+PartialSuffix)
}

// indexLocal chunks the regular files under dir (not partial files) and records where each chunk
// the version wants can be read locally.
func indexLocal(ctx context.Context, dir string, files []File, wanted map[Digest]bool, local map[Digest]localChunk, complete map[string]bool) error {
	byPath := map[string]*File{}
	for i := range files {
		byPath[files[i].Path] = &files[i]
	}
	// WalkDir does not follow a root that is a symbolic link (a directory named through a link to
	// the version being served): it reported nothing in it, and the whole version was transferred.
	if r, err := filepath.EvalSymlinks(dir); err == nil {
		dir = r
	}
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == dir && errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() || strings.HasSuffix(p, PartialSuffix) {
			return nil
		}
		fh, err := os.Open(p)
		if err != nil {
			return nil // unreadable files are simply not a delta source
		}
		defer fh.Close()
		rel, _ := filepath.Rel(dir, p)
		mf := byPath[filepath.ToSlash(rel)]
		ch := NewChunker(fh)
		same := mf != nil
		i := 0
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			data, off, err := ch.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil
			}
			sum := Digest(sha256.Sum256(data))
			if same && (i >= len(mf.Chunks) || mf.Chunks[i].SHA256 != sum) {
				same = false
			}
			i++
			if wanted[sum] {
				if _, ok := local[sum]; !ok {
					local[sum] = localChunk{path: p, off: off, size: int64(len(data))}
				}
			}
		}
		if same && i == len(mf.Chunks) {
			complete[mf.Path] = true
		}
		return nil
	})
}

// verifiedPrefix returns how much of the first n bytes of the partial file at path are f's own:
// the whole chunks, in f's chunk order, whose sha256 matches. A partial file left by an interrupted
// pull of another version (same path, other content) or damaged on disk would otherwise be resumed
// and the whole file transferred before its sha256 failed. Bytes after the last whole chunk cannot
// be checked and are fetched again (less than one chunk).
func verifiedPrefix(path string, f *File, n int64) int64 {
	fh, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer fh.Close()
	var off int64
	var buf []byte
	for _, c := range f.Chunks {
		if off+c.Size > n {
			break
		}
		if int64(cap(buf)) < c.Size {
			buf = make([]byte, c.Size)
		}
		b := buf[:c.Size]
		if _, err := fh.ReadAt(b, off); err != nil || Digest(sha256.Sum256(b)) != c.SHA256 {
			break
		}
		off += c.Size
	}
	return off
}

// pullOnce is one attempt of Pull. ours holds the paths whose partial files an earlier attempt of
// this Pull wrote (after keeping only what it verified): all their bytes are this version's.
func (c *Client) pullOnce(ctx context.Context, ref, dir string, files []File, local map[Digest]localChunk,
	complete map[string]bool, ours map[string]bool, start *int64, opts PullOptions, res *PullResult) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req := &registrypb.PullRequest{Ref: ref}
	type job struct {
		f       *File
		partial string
		offset  int64
		// copyOf, if set, is where an earlier file of the version with the same content is
		// (complete, or this attempt's verified partial file): this one is copied from it, not
		// transferred. Identical files (hard links, copies) crossed the link once each before.
		copyOf string
	}
	var jobs []job
	var done int64
	bySum := map[Digest]string{}
	for i := range files {
		f := &files[i]
		if complete[f.Path] {
			done += f.Size
			if _, ok := bySum[f.SHA256]; !ok {
				bySum[f.SHA256] = filepath.Join(dir, filepath.FromSlash(f.Path))
			}
			continue
		}
		partial := partialPath(dir, f.Path)
		if src, ok := bySum[f.SHA256]; ok && f.Size > 0 {
			jobs = append(jobs, job{f: f, partial: partial, copyOf: src})
			continue
		}
		bySum[f.SHA256] = partial
		var off int64
		if st, err := os.Stat(partial); err == nil && st.Mode().IsRegular() && st.Size() <= f.Size {
			off = st.Size()
			if w, ok := writtenMark(partial); ok {
				off = min(off, w) // preallocated: the length is the full size, the mark what is written
			}
			// A partial file this pull wrote, or one marked as this file's (same sha256), is resumed
			// from its last written byte. Any other is trusted only as far as its whole chunks hash
			// right: on a link that drops before a chunk (up to 4 MiB) is through, resuming at chunk
			// boundaries fetched the same chunk again on every connection and never finished.
			if sum, ok := ownerMark(partial); !ours[f.Path] && (!ok || sum != f.SHA256) {
				off = verifiedPrefix(partial, f, off)
			}
		}
		jobs = append(jobs, job{f: f, partial: partial, offset: off})
		done += off // reported at once: progress shown after a resume starts where it is, not at 0
		req.Ranges = append(req.Ranges, &registrypb.FileRange{Path: f.Path, Offset: uint64(off)})
	}
	progress := func(n int64) {
		done += n
		if opts.Progress != nil {
			opts.Progress(done, res.Bytes)
		}
	}
	*start = done
	// The whole chunks in the kept prefix of a resumed partial file are on disk too: a chunk
	// repeated further on (a sparse file's zeros) is then copied rather than sent again, also when
	// the link drops before the stream gets to send one of them whole.
	needed := map[Digest]bool{} // chunks this attempt must otherwise receive
	for _, j := range jobs {
		var cs int64
		for _, ch := range j.f.Chunks {
			if cs+ch.Size > j.offset && j.copyOf == "" {
				needed[ch.SHA256] = true
			}
			cs += ch.Size
		}
	}
	local = maps.Clone(local) // this attempt's: the caller's map is every attempt's
	if local == nil {
		local = map[Digest]localChunk{}
	}
	for _, j := range jobs {
		var cs int64
		for _, ch := range j.f.Chunks {
			if j.copyOf != "" || cs+ch.Size > j.offset {
				break
			}
			if _, ok := local[ch.SHA256]; needed[ch.SHA256] && !ok {
				// Hashed first: a kept prefix is trusted for its own file (the file's sha256
				// checks it), but a damaged chunk copied into another file would fail that one,
				// pull after pull, before the damaged file got to its own check.
				lc := localChunk{path: j.partial, off: cs, size: ch.Size}
				if chunkHashes(lc, ch.SHA256) {
					local[ch.SHA256] = lc
				}
			}
			cs += ch.Size
		}
	}
	for sum := range local {
		req.HaveChunks = append(req.HaveChunks, sum[:])
	}
	progress(0)
	if len(req.Ranges) > 0 { // none would mean every file
		// Repeated chunks (a sparse file's zeros, a layer shared by two files) cross the link
		// once, unless repeats inside one file would have to be held in memory beyond holdMax.
		req.SendChunksOnce = true
		for _, j := range jobs {
			if j.copyOf == "" && heldBytes(j.f, j.offset, local) > holdMax {
				req.SendChunksOnce = false
			}
		}
		stream, err := c.rpc.Pull(ctx, req)
		if err != nil {
			return err
		}
		first, err := stream.Recv()
		if err != nil {
			return err
		}
		if first.GetManifest() == nil {
			return fmt.Errorf("%w: pull stream did not start with a manifest", ErrInvalid)
		}
		got, err := FilesFromProto(first.GetManifest().Files)
		if err != nil {
			return err
		}
		if len(got) != len(files) {
			return fmt.Errorf("%w: pull manifest differs from the version's", ErrInvalid)
		}
		idx := map[string]int{}
		for i, f := range got {
			idx[f.Path] = i
		}
		once := newSentOnce()
		once.enabled = req.SendChunksOnce && first.GetManifest().GetSendsChunksOnce()
		rd := &pieceReader{stream: stream}
		for _, j := range jobs {
			if j.copyOf != "" {
				continue
			}
			if err := pullFile(ctx, j.f, idx[j.f.Path], j.partial, j.offset, local, rd, res, progress, ours, once); err != nil {
				return fmt.Errorf("pull %s: %w", j.f.Path, err)
			}
			once.fileDone()
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			if err == nil {
				err = fmt.Errorf("%w: server sent more data than the manifest describes", ErrInvalid)
			}
			return err
		}
	}
	for _, j := range jobs {
		if j.copyOf != "" {
			if err := copyDuplicate(j.copyOf, j.partial, j.f); err != nil {
				return fmt.Errorf("pull %s: %w", j.f.Path, err)
			}
			res.BytesLocal += j.f.Size
			progress(j.f.Size)
		}
	}
	// Every file is verified and durable under its partial name: move them into place. First make
	// sure no rename can fail on what stands in the way (a directory where a file goes), so the
	// version does not appear half.
	for _, j := range jobs {
		final := filepath.Join(dir, filepath.FromSlash(j.f.Path))
		if st, err := os.Lstat(final); err == nil && st.IsDir() {
			return fmt.Errorf("cannot place %s: %s is a directory; nothing was moved into place", j.f.Path, final)
		}
	}
	dirs := map[string]bool{}
	for _, j := range jobs {
		final := filepath.Join(dir, filepath.FromSlash(j.f.Path))
		if err := os.Rename(j.partial, final); err != nil {
			return err
		}
		dirs[filepath.Dir(final)] = true
	}
	for d := range dirs {
		if err := syncDir(d); err != nil {
			return err
		}
	}
	return nil
}

// pieceReader hands out the data pieces of a pull stream in order. Each message is received into
// a buffer recycled from earlier ones (see recvBuf), placed at the memory phase of the file offset
// it is expected to carry, so the file writer takes it with O_DIRECT as it is.
type pieceReader struct {
	stream registrypb.Registry_PullClient
	cur    *registrypb.PullData
	curBuf *recvBuf
	pool   *directio.Pool
}

// next returns the current message's remaining bytes, or receives the next message, expected to
// start at file offset pos. The returned buffer holds the bytes; an emitted piece holds it.
func (r *pieceReader) next(pos int64) (*registrypb.PullData, *recvBuf, error) {
	if r.cur != nil && len(r.cur.Data) > 0 {
		return r.cur, r.curBuf, nil
	}
	r.curBuf.release() // the reader is done with the previous message
	r.cur, r.curBuf = nil, nil
	if r.pool == nil {
		r.pool = directio.NewPool(PullPieceSize+recvBufSlack, recvBufs)
	}
	rb := &recvBuf{pool: r.pool}
	rb.b, _ = r.pool.Get()
	rb.refs.Store(1)
	m := &recvInto{PullResponse: new(registrypb.PullResponse), buf: rb.b, phase: int(pos % directio.Align)}
	if err := r.stream.RecvMsg(m); err != nil {
		rb.release()
		if errors.Is(err, io.EOF) {
			return nil, nil, fmt.Errorf("%w: pull stream ended early", io.ErrUnexpectedEOF)
		}
		return nil, nil, err
	}
	d := m.GetData()
	if d == nil {
		rb.release()
		return nil, nil, fmt.Errorf("%w: unexpected %T in pull stream", ErrInvalid, m.Msg)
	}
	r.cur, r.curBuf = d, rb
	return d, rb, nil
}

// recvInto receives a PullResponse into a recycled buffer: api.Codec (RecvBufferer) decodes the
// data bytes into buf, starting at an address ≡ phase (mod directio.Align). Another codec sees the
// embedded message only and allocates as usual.
type recvInto struct {
	*registrypb.PullResponse
	buf   []byte
	phase int
}

func (m *recvInto) RecvBuffer() ([]byte, int) { return m.buf, m.phase }

// recvBuf is a pull receive buffer, recycled once every holder released it: the piece reader while
// its message is current, and the file writer and the hasher for each piece emitted from it.
// Recycling matters: a fresh 1 MiB buffer per message was zeroed by the runtime and faulted in by
// the kernel, ~9% of a pull's CPU on the benchmark VM.
type recvBuf struct {
	b    []byte
	refs atomic.Int32
	pool *directio.Pool
}

func (rb *recvBuf) hold(n int32) {
	if rb != nil {
		rb.refs.Add(n)
	}
}

func (rb *recvBuf) release() {
	if rb != nil && rb.refs.Add(-1) == 0 {
		rb.pool.Put(rb.b)
	}
}

const (
	// recvBufs is how many spare receive buffers a pull keeps: what the writer's and hasher's
	// queues hold, plus the message being received.
	recvBufs = 2*pullQueue + 2
	// recvBufSlack is the room a receive buffer has beyond a piece: the message's other fields and
	// up to one alignment block of padding before the data.
	recvBufSlack = 2 * directio.Align
)

// piece is a run of file bytes for the writer and the hasher; rb (nil for bytes read from a local
// file) is released by each when done with it.
type piece struct {
	p  []byte
	rb *recvBuf
}

// pullFile writes f's bytes [offset, size) to partial (keeping its first offset bytes, which it
// hashes first), from local chunks where listed and from the stream otherwise, then verifies the
// sha256 and fsyncs. A mismatch removes the partial file so the next attempt starts clean.
func pullFile(ctx context.Context, f *File, fileIdx int, partial string, offset int64, local map[Digest]localChunk,
	rd *pieceReader, res *PullResult, progress func(int64), ours map[string]bool, once *sentOnce) (err error) {
	if err := os.MkdirAll(filepath.Dir(partial), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	h := sha256.New()
	if offset > 0 {
		if _, err := io.CopyN(h, out, offset); err != nil {
			return fmt.Errorf("re-read partial file: %w", err)
		}
		if !ours[f.Path] { // else counted when this pull received or copied them
			res.BytesLocal += offset
		}
	}
	if err := out.Truncate(offset); err != nil {
		return err
	}
	// From here on the file holds only this file's bytes: tell later attempts, and later pulls
	// where the filesystem keeps extended attributes (best effort: without, they resume at whole
	// chunks).
	ours[f.Path] = true
	owned := markOwner(out, f.SHA256) == nil
	// A written mark left by an earlier attempt that preallocated would outlive this one if it
	// does not (less than preallocMin left): its length is then the truth.
	_ = clearWritten(out)
	if _, err := out.Seek(offset, io.SeekStart); err != nil {
		return err
	}
	// Writing and hashing run on their own goroutines, fed the same read-only pieces in order, so
	// receiving, writing and hashing use separate cores. Each queue holds at most pullQueue pieces.
	wq, hq := make(chan piece, pullQueue), make(chan piece, pullQueue)
	werr := make(chan error, 1)
	dw := directio.NewWriter(out, offset)
	// With direct I/O, the file is preallocated to its full size so that pullWrites writes can be in
	// flight at once; its written prefix is then recorded every markStep bytes (see preallocate).
	prealloc := dw.Direct() && f.Size-offset >= preallocMin && preallocate(out, offset, f.Size)
	if prealloc {
		dw.SetAsync(pullWrites)
	}
	go func() {
		var err error
		flushed, marked := offset, offset
		for pc := range wq {
			if err != nil {
				pc.rb.release()
				continue
			}
			err = dw.WriteOwned(pc.p, pc.rb.release)
			if pos := dw.Offset(); !dw.Direct() && pos-flushed >= writebackStep {
				startWriteback(out, flushed, pos-flushed)
				flushed = pos
			}
			if w := dw.Written(); prealloc && w-marked >= markStep {
				_ = markWritten(out, w) // best effort: a stale mark only means bytes fetched again
				marked = w
			}
		}
		if cerr := dw.Close(); err == nil {
			err = cerr
		}
		if prealloc {
			// Everything handed to the writer is written or failed: a resumed pull starts here.
			_ = markWritten(out, dw.Written())
		}
		werr <- err
	}()
	hdone := make(chan struct{})
	go func() {
		for pc := range hq {
			h.Write(pc.p)
			pc.rb.release()
		}
		close(hdone)
	}()
	emit := func(p []byte, rb *recvBuf) {
		rb.hold(2)
		wq <- piece{p, rb}
		hq <- piece{p, rb}
	}
	err = pullChunks(ctx, f, fileIdx, offset, local, rd, res, progress, emit, once, partial)
	close(wq)
	close(hq)
	<-hdone
	if werr := <-werr; err == nil {
		err = werr
	}
	if err != nil {
		return err
	}
	if err := verifySum(h, f); err != nil {
		return keepSound(out, partial, f, ours, err)
	}
	if owned {
		if err := clearOwner(out); err != nil {
			return err
		}
	}
	if prealloc {
		if err := clearWritten(out); err != nil {
			return err
		}
	}
	return out.Sync()
}

const (
	// preallocMin is the size from which a pulled file is preallocated and written with several
	// writes in flight.
	preallocMin = 4 << 20
	// pullWrites is how many direct writes a pull keeps in flight into a preallocated file.
	pullWrites = 2
	// markStep is how often the written prefix of a preallocated partial file is recorded: what an
	// interrupted pull may fetch again.
	markStep = 32 << 20
)

// writebackStep is, where the filesystem refuses direct I/O, how many bytes the pull's file writer
// lets accumulate in the page cache before it starts their writeback: 8 MiB keeps the disk busy during the transfer (the final fsync otherwise flushed
// the whole file, ~20% of a 256 MiB pull here) without a syscall per piece.
const writebackStep = 8 << 20

// pullQueue bounds the pieces (≤1 MiB) waiting for the pull's file writer and hasher.
const pullQueue = 8

// pullChunks produces f's bytes from offset on, in order: local chunks are read from disk, the
// others taken from the stream.
func pullChunks(ctx context.Context, f *File, fileIdx int, offset int64, local map[Digest]localChunk,
	rd *pieceReader, res *PullResult, progress func(int64), emit func([]byte, *recvBuf), once *sentOnce, partial string) error {
	last := once.recurring(f, offset, local)
	var cs int64
	for i, ch := range f.Chunks {
		ce := cs + ch.Size
		if ce <= offset {
			cs = ce
			continue
		}
		from := max(cs, offset)
		if lc, ok := local[ch.SHA256]; ok {
			if err := copyLocal(lc, from-cs, ce-from, emit); err != nil {
				return err
			}
			res.BytesLocal += ce - from
			progress(ce - from)
			cs = ce
			continue
		}
		if once.skips(ch.SHA256) {
			if err := once.copy(ch.SHA256, from-cs, ce-from, emit); err != nil {
				return err
			}
			res.BytesLocal += ce - from
			progress(ce - from)
			cs = ce
			continue
		}
		var hold []byte // the chunk's bytes, kept for its later occurrences in this file
		whole := from == cs
		if whole && once.on() && last[ch.SHA256] > i {
			hold = make([]byte, 0, ch.Size)
		}
		for pos := from; pos < ce; {
			if err := ctx.Err(); err != nil {
				return err
			}
			d, rb, err := rd.next(pos)
			if err != nil {
				return err
			}
			if int(d.File) != fileIdx || int64(d.Offset) != pos {
				return fmt.Errorf("%w: got bytes of file %d at %d, expected file %d at %d", ErrInvalid, d.File, d.Offset, fileIdx, pos)
			}
			n := min(int64(len(d.Data)), ce-pos)
			if hold != nil {
				hold = append(hold, d.Data[:n]...)
			}
			emit(d.Data[:n], rb) // rb is recycled only once the writer and hasher are done with it
			d.Data = d.Data[n:]
			d.Offset += uint64(n)
			pos += n
			res.BytesReceived += n
			progress(n)
		}
		if whole {
			once.received(ch, partial, cs, hold)
		}
		cs = ce
	}
	return nil
}

// holdMax bounds the bytes of repeated chunks a pull keeps in memory to write them again later in
// the same file (a sparse file's zero chunk: one chunk). A version needing more is pulled without
// send_chunks_once, every occurrence transferred, rather than with unbounded memory.
const holdMax = 64 << 20

// sentOnce mirrors, on the client, which chunks a server honouring send_chunks_once skips (a
// chunk sent whole earlier in the stream) and where their bytes are: in memory while the file
// that received them is written, then in that file's verified partial file. A nil *sentOnce, or
// one not turned on, skips nothing.
type sentOnce struct {
	enabled bool
	sent    map[Digest]bool
	held    map[Digest][]byte     // this file's repeated chunks
	pending map[Digest]localChunk // this file's chunks, for the next files once it is verified
	disk    map[Digest]localChunk // earlier files' chunks
}

func newSentOnce() *sentOnce {
	return &sentOnce{sent: map[Digest]bool{}, held: map[Digest][]byte{}, pending: map[Digest]localChunk{}, disk: map[Digest]localChunk{}}
}

func (o *sentOnce) on() bool { return o != nil && o.enabled }

// recurring returns, for f from offset on, the last index of each chunk that is neither local
// nor skipped: a chunk received whole before that index is held until then.
func (o *sentOnce) recurring(f *File, offset int64, local map[Digest]localChunk) map[Digest]int {
	if !o.on() {
		return nil
	}
	last := map[Digest]int{}
	var cs int64
	for i, ch := range f.Chunks {
		ce := cs + ch.Size
		if ce > offset && !o.sent[ch.SHA256] {
			if _, ok := local[ch.SHA256]; !ok {
				last[ch.SHA256] = i
			}
		}
		cs = ce
	}
	return last
}

// heldBytes is what recurring would make a pull of f (from offset) hold at most.
func heldBytes(f *File, offset int64, local map[Digest]localChunk) int64 {
	seen := map[Digest]int{}
	sizes := map[Digest]int64{}
	var cs int64
	for _, ch := range f.Chunks {
		ce := cs + ch.Size
		if _, ok := local[ch.SHA256]; ce > offset && !ok {
			seen[ch.SHA256]++
			sizes[ch.SHA256] = ch.Size
		}
		cs = ce
	}
	var n int64
	for d, k := range seen {
		if k > 1 {
			n += sizes[d]
		}
	}
	return n
}

func (o *sentOnce) skips(d Digest) bool { return o.on() && o.sent[d] }

// received records a chunk that arrived whole at offset off of the file whose partial file is
// partial; hold, if not nil, holds its bytes.
func (o *sentOnce) received(ch ChunkRef, partial string, off int64, hold []byte) {
	if !o.on() {
		return
	}
	o.sent[ch.SHA256] = true
	if hold != nil {
		o.held[ch.SHA256] = hold
	}
	if _, ok := o.pending[ch.SHA256]; !ok {
		o.pending[ch.SHA256] = localChunk{path: partial, off: off, size: ch.Size}
	}
}

// fileDone is called once the current file is verified and synced: its chunks can be read back
// from it, and the held bytes are dropped.
func (o *sentOnce) fileDone() {
	if !o.on() {
		return
	}
	for d, lc := range o.pending {
		if _, ok := o.disk[d]; !ok {
			o.disk[d] = lc
		}
	}
	clear(o.pending)
	clear(o.held)
}

// copy emits n bytes, skip bytes into chunk d, from where the chunk was received.
func (o *sentOnce) copy(d Digest, skip, n int64, emit func([]byte, *recvBuf)) error {
	if b, ok := o.held[d]; ok {
		for p := b[skip : skip+n]; len(p) > 0; {
			k := min(len(p), PullPieceSize)
			emit(p[:k:k], nil) // read-only: the writer and hasher only read it
			p = p[k:]
		}
		return nil
	}
	if lc, ok := o.disk[d]; ok {
		return copyLocal(lc, skip, n, emit)
	}
	return fmt.Errorf("%w: the server skipped chunk %s as sent before, but it was not received whole", ErrInvalid, d)
}

// chunkHashes reports whether the bytes at lc hash to sum.
func chunkHashes(lc localChunk, sum Digest) bool {
	f, err := os.Open(lc.path)
	if err != nil {
		return false
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, lc.off, lc.size)); err != nil {
		return false
	}
	var got Digest
	h.Sum(got[:0])
	return got == sum
}

// copyDuplicate writes the partial file of f from src, a verified file of the same content,
// checks its sha256 on the way and fsyncs it.
func copyDuplicate(src, partial string, f *File) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(partial), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	_, _ = clearWritten(out), clearOwner(out) // marks an earlier pull may have left: the copy is whole
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(out, h), in, f.Size); err != nil {
		return fmt.Errorf("copy from %s: %w", src, err)
	}
	if err := verifySum(h, f); err != nil {
		_ = os.Remove(partial)
		return err
	}
	return out.Sync()
}

// keepSound handles a pulled file that failed its sha256 (err): it finds the first chunk whose
// bytes are wrong, keeps the partial file up to it and names it. Removing the whole partial file,
// as before, made every later pull transfer the whole file again, all the way to the same failure
// when the registry's copy of a chunk is damaged (a pull does not re-hash what it sends): gigabytes
// over a slow link, each time, with no word of which chunk or what to do.
func keepSound(out *os.File, partial string, f *File, ours map[string]bool, err error) error {
	good := verifiedPrefix(partial, f, f.Size)
	if good >= f.Size { // every chunk is right and the file is not: nothing worth keeping
		_ = os.Remove(partial)
		delete(ours, f.Path)
		return err
	}
	var bad ChunkRef
	var off int64
	for _, c := range f.Chunks {
		if off == good {
			bad = c
			break
		}
		off += c.Size
	}
	if terr := out.Truncate(good); terr != nil {
		_ = os.Remove(partial)
		delete(ours, f.Path)
		return err
	}
	_ = clearWritten(out) // its length is what is written now
	return fmt.Errorf("%w: %s: bytes %d to %d (chunk %s) arrived damaged; the %d bytes before them are kept for the next pull."+
		" If the registry's copy is damaged, `buffdbd model verify` there reports it and pushing the version again repairs it",
		ErrChecksum, f.Path, good, good+bad.Size, bad.SHA256, good)
}

func verifySum(h hash.Hash, f *File) error {
	var got Digest
	h.Sum(got[:0])
	if got != f.SHA256 {
		return fmt.Errorf("%w: %s hashes to %s, manifest says %s", ErrChecksum, f.Path, got, f.SHA256)
	}
	return nil
}

// copyLocal emits n bytes starting skip bytes into a local chunk, in fresh PullPieceSize pieces.
func copyLocal(lc localChunk, skip, n int64, emit func([]byte, *recvBuf)) error {
	f, err := os.Open(lc.path)
	if err != nil {
		return err
	}
	defer f.Close()
	for done := int64(0); done < n; {
		k := min(PullPieceSize, n-done)
		p := make([]byte, k)
		if _, err := f.ReadAt(p, lc.off+skip+done); err != nil {
			return fmt.Errorf("read local chunk from %s: %w", lc.path, err)
		}
		emit(p, nil)
		done += k
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
