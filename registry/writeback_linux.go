package registry

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to begin writing [off, off+n) of f to disk now, without waiting.
// The final fsync then has little left to flush, so a pull's disk writes overlap its network
// transfer instead of following it. Errors are ignored: the fsync that follows reports any real
// write failure.
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
