//go:build !linux

package huggingface

import "os"

// datasync flushes f's data (fsync where fdatasync is not available).
func datasync(f *os.File) error { return f.Sync() }

// preallocate sets f's size (a sparse file: no portable way to allocate).
func preallocate(f *os.File, size int64) error { return f.Truncate(size) }
