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
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if err == syscall.EWOULDBLOCK {
			return nil, fmt.Errorf("%w: another pull is writing into %s; wait for it or pull elsewhere", ErrBusy, dir)
		}
		// A filesystem without flock (some network mounts answer ENOLCK or EOPNOTSUPP): pulling
		// unguarded is what happened before there was a lock, better than not pulling at all.
		return func() {}, nil
	}
	return func() { f.Close() }, nil
}
