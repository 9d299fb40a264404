// Linux system calls the daemon's operations use: sd_notify's clock, free space on the data directory.

package main

import "golang.org/x/sys/unix"

// monotonicUsec is CLOCK_MONOTONIC in microseconds, the clock sd_notify's MONOTONIC_USEC uses.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1000
}

// freeBytes is the space an unprivileged process may still write on the filesystem holding dir
// (statfs f_bavail: without the blocks reserved for root), or -1 when unknown.
func freeBytes(dir string) int64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return -1
	}
	return int64(st.Bavail) * int64(st.Bsize) // Bsize is int32 on 32-bit ARM
}
