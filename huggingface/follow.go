package huggingface

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/buffdb/buffdbd/internal/directio"
)

// follower reads a file while it downloads: the bytes in order, as the contiguous written prefix
// grows. The registry imports a fetched file through it, so chunking and storing overlap the
// download instead of following it. It reports io.EOF only once the download has verified the
// file; if the download fails, Read returns the download's error, so an import fed by a follower
// never publishes a byte the fetch did not verify.
type follower struct {
	cancel context.CancelFunc
	full   chan []byte
	free   chan []byte
	done   chan struct{}
	err    error // set before done is closed
	cur    []byte
	held   []byte // the buffer cur points into, returned to free when consumed
}

// followAhead is how many 1 MiB blocks a follower reads ahead of its consumer.
const followAhead = 2

// follow starts a follower of t's download. Close releases it.
func follow(ctx context.Context, t *task) *follower {
	ctx, cancel := context.WithCancel(ctx)
	fl := &follower{cancel: cancel, full: make(chan []byte, followAhead), free: make(chan []byte, followAhead), done: make(chan struct{})}
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
	if t.ranges != nil {
		if err := readBack(ctx, f, t.file.Size, t.ranges, wake, fl.free, fl.full); err != nil {
			return err
		}
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

// openFollowed opens the file t's download writes: the partial file, or the final file once a
// verified download has renamed it. Neither exists when the download failed first.
func openFollowed(t *task) (*os.File, error) {
	if t.ranges == nil { // the download ended before laying out the file
		<-t.ended
		if t.err != nil {
			return nil, t.err
		}
		return nil, fmt.Errorf("download %s: ended without a file", t.path)
	}
	f, err := os.Open(t.part)
	if errors.Is(err, os.ErrNotExist) && t.part != t.final {
		f, err = os.Open(t.final)
	}
	if err != nil {
		<-t.ended
		if t.err != nil {
			return nil, t.err
		}
		return nil, fmt.Errorf("follow download of %s: %w", t.path, err)
	}
	return f, nil
}

func (fl *follower) Read(p []byte) (int, error) {
	for len(fl.cur) == 0 {
		if fl.held != nil {
			fl.free <- fl.held[:cap(fl.held)]
			fl.held = nil
		}
		b, ok := <-fl.full
		if !ok {
			<-fl.done
			return 0, fl.err
		}
		fl.cur, fl.held = b, b
	}
	n := copy(p, fl.cur)
	fl.cur = fl.cur[n:]
	return n, nil
}

// Close stops the follower; the download it follows goes on.
func (fl *follower) Close() error {
	fl.cancel()
	for range fl.full { // unblock a readBack waiting to hand over a block
	}
	<-fl.done
	return nil
}
