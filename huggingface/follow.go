package huggingface

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/buffdb/buffdbd/internal/directio"
)

// follower reads a file while it downloads: the bytes in order, as the contiguous written prefix
// grows. The registry imports a fetched file through it, so chunking and storing overlap the
// download instead of following it. It reports io.EOF only once the download has verified the
// file; if the download fails, Read returns the download's error, so an import fed by a follower
// never publishes a byte the fetch did not verify.
//
// Once joined, it takes the blocks the download's hasher reads (see tee), so the file is read from
// disk once for both; what the hasher read before the follower joined, or after it stopped
// passing blocks on, the follower reads itself.
type follower struct {
	cancel context.CancelFunc
	full   chan block
	free   chan []byte
	gone   chan struct{} // closed by Close: the hasher stops passing blocks on
	done   chan struct{}
	err    error // set before done is closed
	cur    block
}

// block is bytes of the file and what to do once they are consumed.
type block struct {
	p       []byte
	release func()
}

// followAhead is how many 1 MiB blocks a follower reads ahead of its consumer when it reads the
// file itself.
const followAhead = 2

// follow starts a follower of t's download. Close releases it.
func follow(ctx context.Context, t *task) *follower {
	ctx, cancel := context.WithCancel(ctx)
	fl := &follower{cancel: cancel, full: make(chan block, followAhead), free: make(chan []byte, followAhead),
		gone: make(chan struct{}), done: make(chan struct{})}
	for range followAhead {
		fl.free <- directio.AlignedBuffer(1 << 20)
	}
	go func() {
		defer close(fl.done)
		defer close(fl.full)
		fl.err = fl.run(ctx, t)
	}()
	return fl
}

func (fl *follower) run(ctx context.Context, t *task) error {
	blocks, from := t.tee.join(fl.gone)
	select {
	case <-t.laid:
	case <-ctx.Done():
		return ctx.Err()
	}
	// Register before opening, so no write after this point goes unnoticed.
	wake := t.wake.add()
	f, err := openFollowed(t)
	if err != nil {
		return err
	}
	defer f.Close()
	size := t.file.Size
	pos := int64(0)
	readSelf := func(to int64) error {
		if pos >= to {
			return nil
		}
		own, wait := readBackAsync(ctx, f, pos, to, t.ranges, wake, fl.free, followAhead)
		for p := range own {
			pos += int64(len(p))
			if err := fl.hand(ctx, block{p, func() { fl.free <- p[:cap(p)] }}); err != nil {
				for p := range own {
					fl.free <- p[:cap(p)]
				}
				wait()
				return err
			}
		}
		return wait()
	}
	if err := readSelf(min(from, size)); err != nil {
		return err
	}
	for b := range blocks {
		pos += int64(len(b.p))
		if err := fl.hand(ctx, b); err != nil {
			b.release()
			return err
		}
	}
	// The hasher stopped passing blocks on: it has read the whole file, failed, or the download
	// was served from an already verified file. Read whatever is left.
	if err := readSelf(size); err != nil {
		return err
	}
	select {
	case <-t.ended:
	case <-ctx.Done():
		return ctx.Err()
	}
	if t.err != nil {
		return t.err
	}
	return io.EOF
}

func (fl *follower) hand(ctx context.Context, b block) error {
	select {
	case fl.full <- b:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// openFollowed opens the file t's download writes: the partial file, or the final file once a
// verified download has renamed it. Neither exists when the download failed first.
func openFollowed(t *task) (*os.File, error) {
	var err error
	if t.ranges != nil { // nil: the download ended before laying out the file
		var f *os.File
		f, err = os.Open(t.part)
		if errors.Is(err, os.ErrNotExist) && t.part != t.final {
			f, err = os.Open(t.final)
		}
		if err == nil {
			return f, nil
		}
	}
	<-t.ended
	if t.err != nil {
		return nil, t.err
	}
	if err == nil {
		err = errors.New("the download laid out no file")
	}
	return nil, fmt.Errorf("follow download of %s: %w", t.path, err)
}

func (fl *follower) Read(p []byte) (int, error) {
	for len(fl.cur.p) == 0 {
		if fl.cur.release != nil {
			fl.cur.release()
			fl.cur.release = nil
		}
		b, ok := <-fl.full
		if !ok {
			<-fl.done
			return 0, fl.err
		}
		fl.cur = b
	}
	n := copy(p, fl.cur.p)
	fl.cur.p = fl.cur.p[n:]
	return n, nil
}

// Close stops the follower; the download it follows goes on.
func (fl *follower) Close() error {
	close(fl.gone)
	fl.cancel()
	if fl.cur.release != nil {
		fl.cur.release()
	}
	for b := range fl.full {
		b.release()
	}
	<-fl.done
	return nil
}

// tee passes the blocks a download's hasher reads on to one follower, from the moment it joins,
// so a file being imported while it downloads is read from disk once, not twice. The hasher waits
// until the follower has consumed each block (at most until the follower is gone) before reusing
// its buffer: an import that falls behind slows the hash, never the download's connections.
type tee struct {
	mu     sync.Mutex
	next   int64 // offset of the next block the hasher reads, while no follower has joined
	ch     chan block
	gone   <-chan struct{}
	joined bool
	closed bool  // the hasher has passed its last block
	passed int64 // bytes passed on (for tests)
}

// join makes the follower whose Close closes gone the one the hasher passes blocks to. It returns
// the blocks from offset from on; the follower reads what lies before from itself. A second
// follower, or one that joins after the hasher has finished, gets no blocks (a closed channel).
func (t *tee) join(gone <-chan struct{}) (blocks <-chan block, from int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ch := make(chan block)
	if t.joined || t.closed {
		close(ch)
		return ch, 0
	}
	t.ch, t.gone, t.joined = ch, gone, true
	return ch, t.next
}

// pass hands p, the block at offset pos, to the joined follower, if any, and runs hash meanwhile.
// A block the follower cannot take ends the passing for good (the follower reads the rest itself:
// it must not see a gap).
func (t *tee) pass(ctx context.Context, pos int64, p []byte, hash func()) {
	t.mu.Lock()
	ch, gone := t.ch, t.gone
	if ch == nil {
		t.next = pos + int64(len(p))
	}
	t.mu.Unlock()
	if ch == nil {
		hash()
		return
	}
	consumed := make(chan struct{})
	select {
	case ch <- block{p, func() { close(consumed) }}:
		t.passed += int64(len(p)) // only the hasher touches it
	case <-gone:
		t.finish()
		hash()
		return
	case <-ctx.Done():
		t.finish()
		hash()
		return
	}
	hash()
	// Not on ctx: the follower may be reading p until it is consumed or the follower is closed,
	// which the import that reads it always does.
	select {
	case <-consumed:
	case <-gone:
	}
}

// finish ends the passing: the hasher has passed every block it will.
func (t *tee) finish() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ch != nil {
		close(t.ch)
		t.ch = nil
	}
	t.closed = true
}
