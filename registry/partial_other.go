//go:build !linux

package registry

import (
	"errors"
	"os"
)

// Elsewhere partial files are not preallocated: their length says how much is written.

func preallocate(f *os.File, off, size int64) bool { return false }
func markWritten(f *os.File, n int64) error        { return nil }
func clearWritten(f *os.File) error                { return nil }
func writtenMark(path string) (int64, bool)        { return 0, false }
func markOwner(f *os.File, sum Digest) error       { return errors.ErrUnsupported }
func clearOwner(f *os.File) error                  { return nil }
func ownerMark(path string) (Digest, bool)         { return Digest{}, false }
