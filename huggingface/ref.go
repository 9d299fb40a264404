package huggingface

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// DefaultRevision is the revision fetched when a reference names none.
const DefaultRevision = "main"

// Ref names a Hub repository revision: "hf:org/name@rev".
type Ref struct {
	Repo     string // "org/name", or a legacy single-segment id such as "gpt2"
	Revision string // branch, tag, "refs/pr/N" or a 40-hex commit; never empty after ParseRef
}

// String formats r as ParseRef accepts it.
func (r Ref) String() string { return "hf:" + r.Repo + "@" + r.Revision }

// ParseRef parses "hf:<repo_id>[@<revision>]". The "hf:" prefix is optional. The repo id follows
// the Hub's rules (one or two segments of [A-Za-z0-9._-], each at most 96 characters, not starting
// or ending with '.' or '-', no "--" or ".."); the revision defaults to "main" and may contain '/'
// (refs/pr/1) but no control characters or spaces. Errors wrap ErrInvalidRef and say what is wrong.
func ParseRef(s string) (Ref, error) {
	body := strings.TrimPrefix(s, "hf:")
	repo, rev, hasRev := strings.Cut(body, "@")
	if !hasRev {
		rev = DefaultRevision
	}
	if err := ValidateRepoID(repo); err != nil {
		return Ref{}, fmt.Errorf("%w %q: %v (want hf:org/name[@revision])", ErrInvalidRef, s, err)
	}
	if err := validateRevision(rev); err != nil {
		return Ref{}, fmt.Errorf("%w %q: %v", ErrInvalidRef, s, err)
	}
	return Ref{Repo: repo, Revision: rev}, nil
}

// ValidateRepoID checks a Hub repository id with the Hub's own rules. The error says which rule
// failed; it does not wrap a sentinel (ParseRef wraps it in ErrInvalidRef).
func ValidateRepoID(id string) error {
	if id == "" {
		return fmt.Errorf("empty repository id")
	}
	segs := strings.Split(id, "/")
	if len(segs) > 2 {
		return fmt.Errorf("repository id %q has more than one '/'", id)
	}
	for _, seg := range segs {
		// 96 is the Hub's limit on each of namespace and name.
		if seg == "" || len(seg) > 96 {
			return fmt.Errorf("repository id %q: each part must be 1-96 characters", id)
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
				return fmt.Errorf("repository id %q contains %q (allowed: letters, digits, '.', '_', '-')", id, c)
			}
		}
		if strings.ContainsAny(seg[:1], ".-") || strings.ContainsAny(seg[len(seg)-1:], ".-") {
			return fmt.Errorf("repository id %q: a part may not start or end with '.' or '-'", id)
		}
		if strings.Contains(seg, "--") || strings.Contains(seg, "..") {
			return fmt.Errorf("repository id %q: '--' and '..' are not allowed", id)
		}
	}
	return nil
}

func validateRevision(rev string) error {
	if rev == "" {
		return fmt.Errorf("empty revision after '@'")
	}
	// Git refs are limited only by the filesystem; 255 keeps them usable as file names and aliases.
	if len(rev) > 255 {
		return fmt.Errorf("revision is %d bytes, longer than 255", len(rev))
	}
	if !utf8.ValidString(rev) {
		return fmt.Errorf("revision is not valid UTF-8")
	}
	for _, r := range rev {
		if r <= ' ' || r == 0x7f || r == '\\' || r == '@' {
			return fmt.Errorf("revision %q contains %q", rev, r)
		}
	}
	return nil
}

// IsCommit reports whether rev is a full 40-hex git commit id (lower case, as the Hub returns).
func IsCommit(rev string) bool {
	if len(rev) != 40 {
		return false
	}
	for i := 0; i < len(rev); i++ {
		c := rev[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// AliasFor maps a revision to the registry alias that follows it. Registry aliases cannot contain
// '/', so each '/' becomes '+' (a character git forbids nowhere but which the registry allows and
// which branch names rarely use): "main" → "main", "refs/pr/1" → "refs+pr+1", "v1.0" → "v1.0".
// A commit id gets no alias (ok=false): the version already is the commit. Revisions whose mapping
// is still not a valid alias (other punctuation) also get none; the fetch still publishes the
// version and says so.
func AliasFor(rev string) (alias string, ok bool) {
	if IsCommit(rev) {
		return "", false
	}
	a := strings.ReplaceAll(rev, "/", "+")
	if len(a) > 128 || a == "." || a == ".." || a == "latest" {
		return "", false
	}
	for i := 0; i < len(a); i++ {
		c := a[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '+') {
			return "", false
		}
	}
	return a, true
}
