//go:build unix

package registry

import (
	"fmt"
	"os"
	"syscall"
)

// lockPullDir takes an exclusive, non-blocking flock on the directory dir itself for the length of
// a pull. Two pulls into one directory would share its *.buffdbd-partial files: one could rename
// the other's bytes into place and report success for the wrong version. The lock is on the
// directory's inode, so nothing is added to it, and the kernel drops it if the process dies.
func lockPullDir(dir string) (unlock func(), err error) {
	unlock, ok, err := tryLockDir(dir)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: another pull is writing into %s, or reading chunks from it; wait for it or pull elsewhere", ErrBusy, dir)
	}
	return unlock, nil
}

// tryLockDir is lockPullDir's lock without its error: ok is false if another process (or another
// pull of this one) holds it. Pruning old version directories skips those a pull is writing.
func tryLockDir(dir string) (unlock func(), ok bool, err error) {
	return tryFlock(dir, syscall.LOCK_EX)
}

// tryLockShared takes a shared, non-blocking flock on the directory dir: a pull reading chunks from
// it (the version a link pointed to) or a switch to it holds one, so a prune (which needs
// tryLockDir's exclusive lock) leaves the directory alone and no pull writes into it meanwhile.
// ok is false if a pull is writing into it. Shared locks do not exclude each other.
func tryLockShared(dir string) (unlock func(), ok bool, err error) {
	return tryFlock(dir, syscall.LOCK_SH)
}

// tryFlock takes a non-blocking flock of kind how (LOCK_EX or LOCK_SH) on dir; ok is false if a
// conflicting lock is held.
func tryFlock(dir string, how int) (unlock func(), ok bool, err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, false, err
	}
	if err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB); err != nil {
		f.Close()
		if err == syscall.EWOULDBLOCK {
			return nil, false, nil
		}
		// A filesystem without flock (some network mounts answer ENOLCK or EOPNOTSUPP): pulling
		// unguarded is what happened before there was a lock, better than not pulling at all.
		return func() {}, true, nil
	}
	return func() { f.Close() }, true, nil
}

// lockDirWait takes an exclusive flock on dir, waiting for it: the lock serializing the switches of
// links (and the bookkeeping of their version directories) held for a few file-system operations.
func lockDirWait(dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	// Without flock on this filesystem (err != nil), switches are the user's to keep apart, as
	// pulls into one directory are.
	return func() { f.Close() }, nil
}
