package registry

import (
	"errors"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// writtenAttr is the extended attribute of a preallocated partial file that records how many of
// its leading bytes are written: its length no longer says so, being the full size from the start.
const writtenAttr = "user.buffdbd.written"

// preallocate marks f (a partial file holding off written bytes) as preallocated and allocates its
// blocks up to size, so that the pull's direct writes neither allocate blocks nor extend the file
// (ext4 serializes extending direct writes and waits for each). It reports whether it did; where
// the filesystem has no user extended attributes or no fallocate, f is left as it was and the
// pull writes it sequentially, its length saying how much is written.
func preallocate(f *os.File, off, size int64) bool {
	if markWritten(f, off) != nil {
		return false
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		clearWritten(f)
		return false
	}
	return true
}

// markWritten records that f's first n bytes are written.
func markWritten(f *os.File, n int64) error {
	return unix.Fsetxattr(int(f.Fd()), writtenAttr, strconv.AppendInt(nil, n, 10), 0)
}

// clearWritten removes the mark, once f is complete (or no longer preallocated).
func clearWritten(f *os.File) error {
	err := unix.Fremovexattr(int(f.Fd()), writtenAttr)
	if errors.Is(err, unix.ENODATA) {
		return nil
	}
	return err
}

// ownerAttr is the extended attribute of a partial file naming the sha256 of the file it becomes.
// A pull resuming a partial file of that same content may trust all of its written bytes, not
// only its whole chunks (see Pull).
const ownerAttr = "user.buffdbd.sha256"

// markOwner records that f's bytes are the file hashing to sum.
func markOwner(f *os.File, sum Digest) error {
	return unix.Fsetxattr(int(f.Fd()), ownerAttr, []byte(sum.String()), 0)
}

// clearOwner removes the owner mark, once f is complete.
func clearOwner(f *os.File) error {
	err := unix.Fremovexattr(int(f.Fd()), ownerAttr)
	if errors.Is(err, unix.ENODATA) {
		return nil
	}
	return err
}

// ownerMark returns the sha256 recorded on the partial file at path, if any.
func ownerMark(path string) (Digest, bool) {
	buf := make([]byte, 2*len(Digest{})+1)
	n, err := unix.Getxattr(path, ownerAttr, buf)
	if err != nil {
		return Digest{}, false
	}
	var d Digest
	return d, d.UnmarshalText(buf[:n]) == nil
}

// writtenMark returns the written length recorded on the partial file at path, if any.
func writtenMark(path string) (int64, bool) {
	buf := make([]byte, 32)
	n, err := unix.Getxattr(path, writtenAttr, buf)
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseInt(string(buf[:n]), 10, 64)
	return v, err == nil && v >= 0
}
