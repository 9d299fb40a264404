package huggingface

import (
	"errors"
	"fmt"
	"syscall"
)

// Sentinel errors. Every error a Fetch returns wraps at most one of them (or registry.ErrBudget),
// so callers (the CLI's exit codes, the API's gRPC codes) can tell them apart with errors.Is.
var (
	// ErrInvalidRef: a reference such as "hf:org/name@rev" is malformed.
	ErrInvalidRef = errors.New("invalid Hugging Face reference")
	// ErrRepoNotFound: the repository does not exist, or it is private and the token (if any)
	// cannot see it.
	ErrRepoNotFound = errors.New("repository not found")
	// ErrRevisionNotFound: the repository exists but the branch, tag, PR ref or commit does not.
	ErrRevisionNotFound = errors.New("revision not found")
	// ErrEntryNotFound: a file listed for the revision cannot be downloaded from it.
	ErrEntryNotFound = errors.New("file not found in repository")
	// ErrGated: the repository is gated; the request had no token or the token's user has not
	// been granted access.
	ErrGated = errors.New("gated repository")
	// ErrUnauthorized: the Hub rejected the token (invalid or expired). The Hub answers 401 even
	// for public repositories when a bad token is sent.
	ErrUnauthorized = errors.New("invalid Hugging Face token")
	// ErrRateLimited: the Hub kept answering 429 after every retry.
	ErrRateLimited = errors.New("rate limited by the Hub")
	// ErrOffline: the Hub could not be reached (network error, DNS, persistent 5xx), or --offline
	// was asked and the revision is not cached.
	ErrOffline = errors.New("Hugging Face Hub unreachable")
	// ErrChecksum: a downloaded file does not match its announced size, sha256 or git blob sha1.
	ErrChecksum = errors.New("downloaded file failed verification")
	// ErrUnsafePath: the Hub listed a filename that could escape the model directory (absolute,
	// "..", NUL, backslash, control characters).
	ErrUnsafePath = errors.New("unsafe filename from the Hub")
	// ErrNoSpace: the filesystem of the download cache is full (ENOSPC), the user's quota is used
	// up (EDQUOT), or it cannot hold a file that large (EFBIG). What was downloaded stays for a
	// resume once there is room.
	ErrNoSpace = errors.New("no space left for the download")
	// ErrProtocol: the Hub, its CDN or a proxy in between answered something this client does not
	// understand (bad JSON, a missing commit id, a redirect loop, an invalid listing, a byte range
	// other than the one asked for, a compressed body).
	ErrProtocol = errors.New("unexpected answer from the Hub")
)

// HTTPError is the detail of a Hub error response. It wraps the matching sentinel error, so
// errors.Is(err, ErrGated) works on it, and its message includes the Hub's own X-Error-Message.
type HTTPError struct {
	Sentinel error  // one of the sentinel errors above
	Status   int    // HTTP status code
	Code     string // X-Error-Code, if any
	Message  string // X-Error-Message, if any
	URL      string // the request URL, without query (signed URLs carry credentials in the query)
}

func (e *HTTPError) Error() string {
	msg := fmt.Sprintf("%v (HTTP %d", e.Sentinel, e.Status)
	if e.Code != "" {
		msg += " " + e.Code
	}
	msg += ")"
	if e.Message != "" {
		msg += ": " + e.Message
	}
	return msg
}

func (e *HTTPError) Unwrap() error { return e.Sentinel }

// classifyIO wraps a filesystem error that means "no room" in ErrNoSpace, so the user is told to
// free space rather than shown an internal error.
func classifyIO(err error) error {
	if err == nil || errors.Is(err, ErrNoSpace) {
		return err
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EFBIG) {
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	}
	return err
}
