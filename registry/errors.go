package registry

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/buffdb/buffdbd/store"
)

// Sentinel errors. Callers test with errors.Is; messages wrap them with the model, version, alias or
// path involved. The API layer maps each to one gRPC code.
var (
	// ErrNotFound: a model, version, alias, file or upload session does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: a version with this name and version is already published.
	ErrExists = errors.New("already exists")
	// ErrInvalid: a malformed name, version, alias, reference, path, shape or protocol message.
	ErrInvalid = errors.New("invalid argument")
	// ErrBudget: the version does not fit in Options.MaxBytes even after evicting every evictable
	// version; nothing was changed.
	ErrBudget = errors.New("registry disk budget exceeded")
	// ErrTooLarge: a single input exceeds a fixed limit (a chunk larger than MaxChunkSize, too many
	// files, an over-long manifest).
	ErrTooLarge = errors.New("too large")
	// ErrChecksum: received or stored bytes do not match their sha256 (a file, a chunk, or a chunk
	// found corrupt on disk by Verify).
	ErrChecksum = errors.New("sha256 mismatch")
	// ErrResumeMismatch: a chunk completed from the part an interrupted push left did not hash to
	// its digest: the sender that left that part sent wrong bytes. The part was dropped, so pushing
	// again sends the chunk whole; worth retrying, unlike ErrChecksum.
	ErrResumeMismatch = errors.New("resumed chunk does not hash to its digest")
	// ErrAliased: a delete was refused because an alias points at the version (use force).
	ErrAliased = errors.New("version is aliased")
	// ErrPinned: eviction or a non-forced delete was refused because the version is pinned.
	ErrPinned = errors.New("version is pinned")
	// ErrIncomplete: a commit arrived before every offered chunk's bytes, or with a chunk the
	// registry no longer has (the client must offer it again).
	ErrIncomplete = errors.New("upload incomplete")
	// ErrDiskFull: the data directory's filesystem is out of space (ENOSPC). Nothing partial is
	// visible; chunks already durable stay pinned to the upload session for a retry.
	ErrDiskFull = errors.New("disk full")
	// ErrClosed: the Service has been closed.
	ErrClosed = errors.New("registry closed")
	// ErrBusy: another pull is writing into the same directory.
	ErrBusy = errors.New("directory busy")
	// ErrNotLink: Client.PullLink was given a path that exists and is not a symbolic link (a
	// directory holding a model, say); it is left as it is.
	ErrNotLink = errors.New("not a symbolic link")
	// ErrUnverified: SwitchLink was asked to switch a link to a directory that does not hold a
	// whole version: its pull did not complete, a file is missing or has another size than the
	// version's, or there is no record of a completed pull into it. The link is left as it is.
	ErrUnverified = errors.New("not a whole version")
	// ErrChanged: Client.Push found a source file written to (size or modification time changed)
	// while it was pushed. Nothing was published: the server verifies every chunk against the
	// digest offered for it, and a file read while written would mix two contents.
	ErrChanged = errors.New("changed during the push")
)

// classifyIO wraps an out-of-space error from the filesystem with ErrDiskFull so callers (and the
// gRPC edge) can tell it from a bug.
func classifyIO(err error) error {
	if err != nil && (errors.Is(err, syscall.ENOSPC) || errors.Is(err, store.ErrNoSpace)) && !errors.Is(err, ErrDiskFull) {
		return fmt.Errorf("%w: %w", ErrDiskFull, err)
	}
	return err
}

func errorf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{sentinel}, args...)...)
}
