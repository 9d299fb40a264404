package registry

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	registrypb "github.com/buffdb/buffdbd/api/proto/registrypb"
)

// Client pushes and pulls models through a buffdb.registry.Registry server (a daemon, or the CLI's
// in-process server). Push and Pull stream files from and to disk with flat memory, resume after
// interruptions, and move only chunks the other side lacks.
//
// Give the connection client keepalive (grpc.WithKeepaliveParams, as the buffdbd CLI does: 20 s
// and 20 s): without it a link that goes silent mid-transfer (a NAT that forgot the connection, a
// stalled middlebox) is never noticed, and Push, Pull or a Watch waits forever instead of failing
// UNAVAILABLE and resuming.
type Client struct {
	rpc registrypb.RegistryClient
}

// NewClient returns a Client over a gRPC connection.
func NewClient(cc grpc.ClientConnInterface) *Client {
	return &Client{rpc: registrypb.NewRegistryClient(cc)}
}

// RPC returns the generated client for the unary and watch calls the Client does not wrap.
func (c *Client) RPC() registrypb.RegistryClient { return c.rpc }

// Progress reports transfer progress: done of total bytes (chunks skipped by dedupe count as done).
type Progress func(done, total int64)

// pushWindow is how many chunk offers a push keeps unanswered. Offers are tiny; the window hides
// the round trip so the link never idles waiting for "need" answers (64 × 2 MiB average = 128 MiB of
// file ahead, far more than any bandwidth-delay product we meet), and it is far below the server's
// 4096 limit.
const pushWindow = 64

// cutPieceSize is the data message of a push's attempts after a connection broke. The server
// keeps the part of a cut chunk it received in whole messages, and a message cut in flight is
// lost: over a link that drops every MiB, 1 MiB messages (PullPieceSize, which the first attempt
// sends to keep the per-message cost of a fast push low) would rarely get one through. 64 KiB
// loses little at a cut and costs nothing a flaky link would notice (a few bytes of framing).
// Once an attempt has sent cutPieceRecover bytes, the link has shown it carries far more than a
// message per connection, and the attempt goes back to PullPieceSize: a cut then loses at most
// one message of what it carried, and a fast push is not slowed for its whole rest by one blip.
const (
	cutPieceSize    = 64 << 10
	cutPieceRecover = 16 << 20
)

// retryBackoff bounds the wait between attempts after a transient failure: short enough to resume
// quickly after a blip, long enough not to hammer a server that is restarting.
const (
	retryMin = 500 * time.Millisecond
	retryMax = 30 * time.Second
)

// PushOptions configure Push.
type PushOptions struct {
	Info    ModelInfo // Name and Version required
	Aliases []string
	// Retries is how many times in a row a transient failure (connection lost, server restarting)
	// restarts the push, which then sends only what the server is missing (down to the rest of a
	// chunk the connection broke in, from a server that keeps it); an attempt that finds more
	// stored than any before starts the count again. 0: no retry.
	Retries int
	// Progress, if set, is called as bytes are sent or found stored; across attempts it only
	// moves forward.
	Progress Progress
}

// PushResult reports a push.
type PushResult struct {
	Info        ModelInfo
	Files       int
	Bytes       int64 // total file bytes
	BytesSent   int64 // chunk bytes sent over the wire (all attempts)
	BytesReused int64 // chunk bytes the server already had (last attempt)
	// BytesResumed are bytes of needed chunks the server kept from an earlier, cut attempt and the
	// last attempt did not send again.
	BytesResumed int64
	Attempts     int
}

type localFile struct {
	rel    string
	abs    string
	size   int64
	mtime  time.Time
	chunks []ChunkRef // cached after a complete chunking pass
	sum    Digest
	hashed bool // sum is the file's sha256 (computed only for servers that need it)
}

// Push uploads src (a file, or a directory whose regular files are pushed with their relative
// paths) as opts.Info.Name:opts.Info.Version.
func (c *Client) Push(ctx context.Context, src string, opts PushOptions) (PushResult, error) {
	files, err := listLocal(src)
	if err != nil {
		return PushResult{}, err
	}
	var res PushResult
	res.Files = len(files)
	for _, f := range files {
		res.Bytes += f.size
	}
	if report := opts.Progress; report != nil {
		// Each attempt counts up from 0 again through what the server already holds: reported
		// as is, a progress display would run backwards on every reconnection.
		best := int64(-1)
		opts.Progress = func(done, total int64) {
			if done > best {
				best = done
				report(done, total)
			}
		}
	}
	durable := int64(-1) // the most chunk bytes the server said it had, in any attempt
	piece := PullPieceSize
	for attempt := 0; ; attempt++ {
		res.Attempts++
		err := c.pushOnce(ctx, files, opts, piece, &res)
		if err != nil {
			if f := changedFile(files); f != nil {
				// Say what happened, not what it broke downstream: the server refuses bytes that
				// do not hash to the digest offered for them (re-read after the file changed).
				return res, fmt.Errorf("%s %w; nothing was published (push again once it is completely written)", f.abs, ErrChanged)
			}
		}
		if err == nil || !retryable(ctx, err) {
			return res, err
		}
		if held := res.BytesReused + res.BytesResumed; held > durable {
			// Opts.Retries bounds failures in a row: an attempt that finds more stored than any
			// before it (whole chunks, or the part of a chunk cut mid-transfer) shows the last
			// ones moved forward, and a long push over a link that drops every few minutes must
			// not give up after the eleventh connection.
			if durable >= 0 {
				attempt = 0
			}
			durable = held
		}
		if attempt >= opts.Retries {
			return res, err
		}
		if err := sleepBackoff(ctx, attempt); err != nil {
			return res, err
		}
		piece = cutPieceSize
	}
}

func listLocal(src string) ([]*localFile, error) {
	st, err := os.Stat(src)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("%w: %s is not a regular file", ErrInvalid, src)
		}
		return []*localFile{{rel: filepath.Base(src), abs: src, size: st.Size(), mtime: st.ModTime()}}, nil
	}
	// A directory given through a symlink is walked where it points.
	if src, err = filepath.EvalSymlinks(src); err != nil {
		return nil, err
	}
	var files []*localFile
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var info fs.FileInfo
		switch {
		case d.Type().IsRegular():
			if info, err = d.Info(); err != nil {
				return err
			}
		case d.Type()&fs.ModeSymlink != 0:
			// A Hugging Face cache snapshot is all symlinks into its blobs directory: a link to a
			// file pushes the file it points at, under the link's name. A link to a directory is
			// refused rather than followed (it may loop, or reach far outside src).
			if info, err = os.Stat(p); err != nil {
				return fmt.Errorf("cannot push %s: broken symbolic link: %w", p, err)
			}
			if !info.Mode().IsRegular() {
				return fmt.Errorf("%w: cannot push %s: a symbolic link to a directory or special file (not followed); push its target", ErrInvalid, p)
			}
		default:
			return nil // directories are walked; sockets, pipes and devices are not model files
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if _, err := CleanPath(rel); err != nil {
			return fmt.Errorf("cannot push %s: %w", p, err)
		}
		files = append(files, &localFile{rel: rel, abs: p, size: info.Size(), mtime: info.ModTime()})
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%w: %s contains no files", ErrInvalid, src)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].rel < files[j].rel })
	return files, nil
}

// changedFile returns the first of files whose size or modification time differs from when it
// was listed (or that is gone), nil if none.
func changedFile(files []*localFile) *localFile {
	for _, f := range files {
		if st, err := os.Stat(f.abs); err != nil || st.Size() != f.size || !st.ModTime().Equal(f.mtime) {
			return f
		}
	}
	return nil
}

// offerItem is an offer awaiting its answer; commit marks the end.
type offerItem struct {
	f      *localFile
	off    int64
	size   int64
	from   int64 // the server holds the chunk's first from bytes: send the rest
	commit bool
}

// pushOnce makes one attempt of a push, sending chunk data in messages of piece bytes.
func (c *Client) pushOnce(parent context.Context, files []*localFile, opts PushOptions, piece int, res *PushResult) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	stream, err := c.rpc.Push(ctx)
	if err != nil {
		return err
	}
	info := opts.Info
	if err := stream.Send(&registrypb.PushRequest{Msg: &registrypb.PushRequest_Open{Open: &registrypb.PushOpen{
		Info: InfoToProto(info), Aliases: opts.Aliases, ResumeInChunk: true}}}); err != nil {
		return streamErr(stream, err)
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if first.GetOpened() == nil {
		return fmt.Errorf("%w: server answered push open with %T", ErrInvalid, first.Msg)
	}
	res.BytesReused, res.BytesResumed = 0, 0
	var pmu sync.Mutex
	var done int64
	sent := func(n int64) {
		pmu.Lock()
		defer pmu.Unlock()
		done += n
		res.BytesSent += n
		if opts.Progress != nil {
			opts.Progress(done, res.Bytes)
		}
	}
	// held counts bytes the server already has: whole chunks, or the part of a cut one.
	held := func(n int64, resumed bool) {
		pmu.Lock()
		defer pmu.Unlock()
		done += n
		if resumed {
			res.BytesResumed += n
		} else {
			res.BytesReused += n
		}
		if opts.Progress != nil {
			opts.Progress(done, res.Bytes)
		}
	}

	// Three goroutines share the stream. The producer chunks files and queues control messages
	// (FileBegin, offers, FileEnd) on ctrl; the receiver (this one) matches answers to offers and
	// queues the needed chunks on jobs; the sender alone calls Send, control messages first, so a
	// data Send waiting for flow control never stalls chunking.
	ctrl := make(chan *registrypb.PushRequest, 2*pushWindow)
	jobs := make(chan offerItem, pushWindow)
	inflight := make(chan offerItem, pushWindow)
	senderDone := make(chan error, 1)
	go func() {
		err := sendLoop(ctx, stream, ctrl, jobs, piece, sent)
		if err != nil {
			cancel() // unblocks the receiver's Recv; the send error is reported below
		}
		senderDone <- err
	}()
	prodErr := make(chan error, 1)
	go func() {
		defer close(inflight)
		prodErr <- produceOffers(ctx, files, first.GetOpened().GetHashesFiles(), func(m *registrypb.PushRequest) error {
			select {
			case ctrl <- m:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}, inflight)
	}()

	var recvErr error
	committed := false
	queue := func(it offerItem) bool {
		select {
		case jobs <- it:
			return true
		case <-ctx.Done():
			recvErr = ctx.Err()
			return false
		}
	}
	for it := range inflight {
		if it.commit {
			if !queue(it) {
				break
			}
			resp, err := stream.Recv()
			if err != nil {
				recvErr = err
				break
			}
			cm := resp.GetCommitted()
			if cm == nil {
				recvErr = fmt.Errorf("%w: expected commit confirmation, got %T", ErrInvalid, resp.Msg)
				break
			}
			res.Info = InfoFromProto(cm.Info)
			committed = true
			break
		}
		resp, err := stream.Recv()
		if err != nil {
			recvErr = err
			break
		}
		ans := resp.GetAnswer()
		if ans == nil {
			recvErr = fmt.Errorf("%w: expected a chunk answer, got %T", ErrInvalid, resp.Msg)
			break
		}
		if !ans.Need {
			held(it.size, false)
			continue
		}
		if ans.Offset > 0 {
			if ans.Offset >= uint64(it.size) {
				recvErr = fmt.Errorf("%w: server holds %d bytes of a %d-byte chunk yet asks for it", ErrInvalid, ans.Offset, it.size)
				break
			}
			it.from = int64(ans.Offset)
			held(it.from, true)
		}
		if !queue(it) {
			break
		}
	}
	cancel()
	for range inflight {
	}
	serr := <-senderDone
	pe := <-prodErr
	switch {
	case committed:
		return nil
	case pe != nil && !errors.Is(pe, context.Canceled):
		return pe // e.g. a file changed or vanished during the push
	case serr != nil && !errors.Is(serr, context.Canceled) && !errors.Is(serr, io.EOF):
		return serr // e.g. a chunk could not be re-read; io.EOF means the server ended the stream (see recvErr)
	case recvErr != nil && !errors.Is(recvErr, context.Canceled):
		return recvErr
	case parent.Err() != nil:
		return status.FromContextError(parent.Err()).Err()
	case errors.Is(serr, io.EOF):
		// The stream broke under the sender (a lost connection) before the receiver saw why; the
		// receiver has stopped, so its status can be read now. It used to be reported as
		// ErrIncomplete or context.Canceled, neither of which the retry loop resumes after.
		return brokenStream(stream)
	case recvErr != nil:
		return recvErr
	}
	return fmt.Errorf("%w: push ended before the server confirmed the commit", ErrIncomplete)
}

// brokenStream returns the status of a push stream whose Send failed with io.EOF: the server's
// error, or the transport's (UNAVAILABLE for a lost connection). A stream that ends without
// either is reported UNAVAILABLE too, so that the push resumes.
func brokenStream(stream registrypb.Registry_PushClient) error {
	for {
		_, err := stream.Recv()
		if err == nil {
			continue // answers already on their way
		}
		if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
			return status.Error(codes.Unavailable, "push stream broke before the server confirmed the commit")
		}
		return err
	}
}

// sendLoop is the only caller of stream.Send during a push: it sends control messages as soon as
// they are queued (also between the pieces of a chunk), then the data of needed chunks in answer
// order, in messages of piece bytes (PullPieceSize once cutPieceRecover bytes are sent), and
// Commit after the last of them. It returns when jobs yields the commit, or on error.
func sendLoop(ctx context.Context, stream registrypb.Registry_PushClient, ctrl <-chan *registrypb.PushRequest,
	jobs <-chan offerItem, piece int, sent func(int64)) error {
	drain := func() error {
		for {
			select {
			case m := <-ctrl:
				if err := stream.Send(m); err != nil {
					return err
				}
			default:
				return nil
			}
		}
	}
	buf := make([]byte, PullPieceSize)
	var total int64 // sent in this attempt
	counted := func(n int64) {
		total += n
		sent(n)
	}
	for {
		if err := drain(); err != nil {
			return err
		}
		select {
		case m := <-ctrl:
			if err := stream.Send(m); err != nil {
				return err
			}
		case it := <-jobs:
			if it.commit {
				// Everything the producer queued happened before the commit marker reached us.
				if err := drain(); err != nil {
					return err
				}
				if err := stream.Send(&registrypb.PushRequest{Msg: &registrypb.PushRequest_Commit{Commit: &registrypb.Commit{}}}); err != nil {
					return err
				}
				return stream.CloseSend()
			}
			n := piece
			if total >= cutPieceRecover {
				n = PullPieceSize
			}
			if err := sendChunkData(it, buf[:n], func(m *registrypb.PushRequest) error {
				if err := drain(); err != nil {
					return err
				}
				return stream.Send(m)
			}, counted); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// sendChunkData re-reads a needed chunk from its file and sends it, from it.from on, in pieces
// of len(buf).
func sendChunkData(it offerItem, buf []byte, send func(*registrypb.PushRequest) error, sent func(int64)) error {
	f, err := os.Open(it.f.abs)
	if err != nil {
		return err
	}
	defer f.Close()
	for off := it.from; off < it.size; {
		n := min(int64(len(buf)), it.size-off)
		if _, err := f.ReadAt(buf[:n], it.off+off); err != nil {
			return fmt.Errorf("read %s: %w (did it change during the push?)", it.f.abs, err)
		}
		if err := send(&registrypb.PushRequest{Msg: &registrypb.PushRequest_Data{Data: &registrypb.ChunkData{Data: buf[:n]}}}); err != nil {
			return err
		}
		sent(n)
		off += n
	}
	return nil
}

// produceOffers chunks each file (or reuses the chunking of an earlier attempt if the file is
// unchanged), sends FileBegin, the offers and FileEnd, and queues each offer for the receiver.
// FileEnd declares the file's sha256 only to a server that does not compute it (serverHashes):
// the chunk digests already verify every byte end to end, and hashing the file again cost a
// quarter of a push's CPU with client and server on one machine.
func produceOffers(ctx context.Context, files []*localFile, serverHashes bool, send func(*registrypb.PushRequest) error, inflight chan<- offerItem) error {
	for _, f := range files {
		st, err := os.Stat(f.abs)
		if err != nil {
			return err
		}
		if st.Size() != f.size || !st.ModTime().Equal(f.mtime) {
			return fmt.Errorf("%s %w", f.abs, ErrChanged)
		}
		if err := send(&registrypb.PushRequest{Msg: &registrypb.PushRequest_FileBegin{FileBegin: &registrypb.FileBegin{
			Path: f.rel, Size: uint64(f.size)}}}); err != nil {
			return err
		}
		offer := func(sum Digest, off, size int64) error {
			if err := send(&registrypb.PushRequest{Msg: &registrypb.PushRequest_Offer{Offer: &registrypb.ChunkOffer{
				Sha256: sum[:], Size: uint64(size)}}}); err != nil {
				return err
			}
			select {
			case inflight <- offerItem{f: f, off: off, size: size}:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if f.chunks == nil || (!serverHashes && !f.hashed) {
			if err := chunkFile(ctx, f, !serverHashes, offer); err != nil {
				return err
			}
			// A write while the file was read leaves chunks of two contents, each hashed as
			// read, so every digest checks out: only the file's metadata tells.
			if changedFile([]*localFile{f}) != nil {
				f.chunks = nil
				return fmt.Errorf("%s %w", f.abs, ErrChanged)
			}
		} else {
			var off int64
			for _, c := range f.chunks {
				if err := offer(c.SHA256, off, c.Size); err != nil {
					return err
				}
				off += c.Size
			}
		}
		end := &registrypb.FileEnd{}
		if !serverHashes {
			end.Sha256 = f.sum[:]
		}
		if err := send(&registrypb.PushRequest{Msg: &registrypb.PushRequest_FileEnd{FileEnd: end}}); err != nil {
			return err
		}
	}
	select {
	case inflight <- offerItem{commit: true}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// chunkFile chunks f, calling offer for each chunk, and fills f.chunks and, if hashFile, f.sum.
// The file's sha256 is computed on a second goroutine over the same chunk bytes while this one
// hashes the chunk, so the file is read once and the two hashes use two cores.
func chunkFile(ctx context.Context, f *localFile, hashFile bool, offer func(sum Digest, off, size int64) error) error {
	fh, err := os.Open(f.abs)
	if err != nil {
		return err
	}
	defer fh.Close()
	fileHash := sha256.New()
	var feed chan []byte
	fed := make(chan struct{})
	if hashFile {
		feed = make(chan []byte)
		go func() {
			for p := range feed {
				fileHash.Write(p)
				fed <- struct{}{}
			}
			close(fed)
		}()
	}
	stopFeed := func() {
		if feed != nil {
			close(feed)
			for range fed {
			}
			feed = nil
		}
	}
	defer stopFeed()
	ch := NewChunker(fh)
	var chunks []ChunkRef
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, off, err := ch.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", f.abs, err)
		}
		if feed != nil {
			feed <- data
		}
		sum := Digest(sha256.Sum256(data))
		if feed != nil {
			<-fed // the chunker reuses data's buffer on the next call
		}
		chunks = append(chunks, ChunkRef{SHA256: sum, Size: int64(len(data))})
		total += int64(len(data))
		if err := offer(sum, off, int64(len(data))); err != nil {
			return err
		}
	}
	stopFeed()
	if total != f.size {
		return fmt.Errorf("%s changed during the push (%d bytes, was %d)", f.abs, total, f.size)
	}
	f.chunks = chunks
	if hashFile {
		fileHash.Sum(f.sum[:0])
		f.hashed = true
	}
	if f.chunks == nil {
		f.chunks = []ChunkRef{}
	}
	return nil
}

// streamErr returns the server's status when a Send failed because the server ended the stream
// (Send then reports only io.EOF).
func streamErr(stream interface{ RecvMsg(any) error }, err error) error {
	if !errors.Is(err, io.EOF) {
		return err
	}
	for {
		if rerr := stream.RecvMsg(new(registrypb.PushResponse)); rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return err
			}
			return rerr
		}
	}
}

// retryable reports whether err is a transient transport failure worth resuming after.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.Aborted, codes.Canceled, codes.DeadlineExceeded, codes.ResourceExhausted:
		// ResourceExhausted covers the server's "too many outstanding" and a budget failure alike;
		// a budget failure repeats, so cap retries on it via the attempt limit only.
		return status.Code(err) != codes.ResourceExhausted
	}
	return false
}

func sleepBackoff(ctx context.Context, attempt int) error {
	d := retryMin << min(attempt, 6)
	d = min(d, retryMax)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
