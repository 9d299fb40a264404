//go:build unix

package main

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// checkOwner refuses to open, as root, a data directory another user owns (the service's
// /var/lib/buffdbd, owned by buffdbd). Root would create payload directories and files that user
// cannot read, and the service would then fail to start until someone chowned them by hand: a
// device down because of one `sudo buffdbd kv set` while the service was stopped.
func checkOwner(dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	st, err := os.Stat(dir)
	if err != nil {
		return nil // not there yet: root creates and owns it
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok || sys.Uid == 0 {
		return nil
	}
	name := strconv.Itoa(int(sys.Uid))
	if u, err := user.LookupId(name); err == nil {
		name = u.Username
	}
	return ownerError{dir: dir, user: name}
}

// ownerError is checkOwner's refusal, with the way out as its hint.
type ownerError struct{ dir, user string }

func (e ownerError) Error() string {
	return fmt.Sprintf("the data directory %s belongs to user %s; as root buffdbd would leave files there that %s cannot use", e.dir, e.user, e.user)
}

func (e ownerError) ExitCode() int { return exitError }

func (e ownerError) Hint() string {
	return fmt.Sprintf("start the daemon (systemctl start buffdbd) and run the command again, or run it as that user: sudo -u %s buffdbd ...", e.user)
}
