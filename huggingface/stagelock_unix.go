//go:build unix

package huggingface

import (
	"context"
	"os"
	"syscall"
	"time"
)

// flockPoll is how often a fetch waiting for another process's lock on a staging directory tries
// again: flock cannot wait on a context, and a fetch that waits at all waits for a download.
const flockPoll = 200 * time.Millisecond

// flockStaging takes an exclusive flock on the staging directory dir (creating it), waiting until
// ctx is done while another process holds it. Two processes whose data directories differ can
// share a cache directory (cache_dir, $CACHE_DIRECTORY): without the lock they would write the
// same partial files and journals, and one would rename the other's file away under it. The lock
// is on the directory's inode, so the kernel drops it when the process dies; as the holder removes
// the directory when it is done, a lock on an inode no longer at dir is dropped and taken again.
// A filesystem without flock is used unguarded, as before there was a lock.
func flockStaging(ctx context.Context, dir string) (unlock func(), err error) {
	for {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, classifyIO(err)
		}
		f, err := os.Open(dir)
		if err != nil {
			return nil, err
		}
		switch err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err {
		case nil:
			held, err1 := f.Stat()
			now, err2 := os.Stat(dir)
			if err1 == nil && err2 == nil && os.SameFile(held, now) {
				// A fetch that downloaded nothing (refused listing, already published) leaves
				// no empty directory behind; Remove fails on one that holds a resume.
				return func() { os.Remove(dir); f.Close() }, nil
			}
			f.Close() // removed (and perhaps made again) while we waited: lock what is there now
			continue
		case syscall.EWOULDBLOCK:
			f.Close()
			if err := sleepCtx(ctx, flockPoll); err != nil {
				return nil, err
			}
		default:
			f.Close()
			return func() {}, nil
		}
	}
}
