package huggingface

import (
	"os"

	"golang.org/x/sys/unix"
)

// datasync flushes f's data. fdatasync skips the inode timestamps fsync would also write; the
// file's size was fixed by the preallocating Truncate, whose metadata the first sync made durable.
func datasync(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }
