package directio

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

var errInvalid error = syscall.EINVAL

// setDirect turns O_DIRECT on or off for f's open file description.
func setDirect(f *os.File, on bool) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		flags, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
		if err != nil {
			ferr = err
			return
		}
		want := flags &^ unix.O_DIRECT
		if on {
			want |= unix.O_DIRECT
		}
		if want != flags {
			_, ferr = unix.FcntlInt(fd, unix.F_SETFL, want)
		}
	}); err != nil {
		return err
	}
	return ferr
}

func openDirect(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
}
