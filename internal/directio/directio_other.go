//go:build !linux

package directio

import (
	"errors"
	"os"
	"syscall"
)

var errInvalid error = syscall.EINVAL

// setDirect reports that O_DIRECT is not used: elsewhere writes go through the page cache.
func setDirect(f *os.File, on bool) error {
	if !on {
		return nil
	}
	return errors.ErrUnsupported
}

func openDirect(path string) (*os.File, error) { return nil, errors.ErrUnsupported }
