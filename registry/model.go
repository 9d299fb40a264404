package registry

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// ModelInfo is BuffDB's model metadata, stored as JSON under model:{name}:{version}:metadata with
// exactly BuffDB's fields (clients deserialize it strictly, e.g. Python's ModelInfo(**json)):
// name, version, framework, description, input_shape, output_shape, blob_ids, created_at (RFC 3339)
// and parameters. BlobIDs are the ordered chunk blob ids of the version's files in manifest order,
// so for a single-file model concatenating them yields the file.
type ModelInfo struct {
	Name        string            `json:"name"`
	Version     string            `json:"version"`
	Framework   string            `json:"framework"`
	Description string            `json:"description"`
	InputShape  []int64           `json:"input_shape"`
	OutputShape []int64           `json:"output_shape"`
	BlobIDs     []uint64          `json:"blob_ids"`
	CreatedAt   time.Time         `json:"created_at"`
	Parameters  map[string]string `json:"parameters"`
}

// marshalInfo encodes info with empty arrays and maps rather than null, because BuffDB's clients
// index into them without a null check.
func marshalInfo(info ModelInfo) (string, error) {
	if info.InputShape == nil {
		info.InputShape = []int64{}
	}
	if info.OutputShape == nil {
		info.OutputShape = []int64{}
	}
	if info.BlobIDs == nil {
		info.BlobIDs = []uint64{}
	}
	if info.Parameters == nil {
		info.Parameters = map[string]string{}
	}
	info.CreatedAt = info.CreatedAt.UTC()
	b, err := json.Marshal(info)
	return string(b), err
}

// Limits on names. They keep keys short and paths portable; they are not BuffDB's (it had none).
const (
	maxNameLen     = 200  // Hugging Face repo ids are at most 96 chars each side of the '/'.
	maxVersionLen  = 128  // room for a 40-hex commit id plus a readable prefix.
	maxPathLen     = 4096 // PATH_MAX on Linux.
	maxSegmentLen  = 255  // NAME_MAX of Linux filesystems: a longer file name could not be pulled.
	maxFiles       = 100000
	maxDescription = 64 << 10
	maxParams      = 256
)

// ValidateName checks a model name: 1–200 characters of [A-Za-z0-9._-] in one or more
// '/'-separated segments (Hugging Face's org/name), no empty, "." or ".." segment. ':' (the key
// separator) and '@' (the alias separator) are therefore rejected. Errors wrap ErrInvalid.
func ValidateName(name string) error {
	if err := validateSegments("model name", name, maxNameLen, true); err != nil {
		return err
	}
	if name == "global" {
		// model:global:index is BuffDB's list of model names; a model named global would have its
		// version list under the same key.
		return fmt.Errorf("%w: model name %q is reserved (model:global:index lists all models)", ErrInvalid, name)
	}
	return nil
}

// ValidateVersion checks a version or alias: 1–128 characters of [A-Za-z0-9._+-], not "." or "..".
// Errors wrap ErrInvalid.
func ValidateVersion(v string) error {
	return validateSegments("version", v, maxVersionLen, false)
}

// ValidateAlias checks an alias name with the rules of ValidateVersion. Errors wrap ErrInvalid.
func ValidateAlias(a string) error {
	return validateSegments("alias", a, maxVersionLen, false)
}

func validateSegments(what, s string, max int, slashes bool) error {
	if s == "" {
		return fmt.Errorf("%w: %s is empty", ErrInvalid, what)
	}
	if len(s) > max {
		return fmt.Errorf("%w: %s is %d bytes, longer than %d", ErrInvalid, what, len(s), max)
	}
	seg := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '/' {
			c := s[i]
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
			if !slashes && c == '+' {
				ok = true
			}
			if !ok {
				r, _ := utf8.DecodeRuneInString(s[i:]) // name the character, not its first byte
				return fmt.Errorf("%w: %s %q contains %q (allowed: letters, digits, '.', '_', '-'%s)",
					ErrInvalid, what, s, r, map[bool]string{true: ", '/' between segments", false: ", '+'"}[slashes])
			}
			continue
		}
		if i < len(s) && !slashes {
			return fmt.Errorf("%w: %s %q contains '/'", ErrInvalid, what, s)
		}
		part := s[seg:i]
		switch part {
		case "":
			return fmt.Errorf("%w: %s %q has an empty segment (leading, trailing or doubled '/')", ErrInvalid, what, s)
		case ".", "..":
			return fmt.Errorf("%w: %s %q has a %q segment", ErrInvalid, what, s, part)
		}
		seg = i + 1
	}
	return nil
}

// CleanPath validates a manifest path (a file inside a model) and returns it unchanged: relative,
// '/'-separated, valid UTF-8, no empty, "." or ".." segment, no backslash, NUL or other control
// character, at most 4096 bytes. A path that passes can be joined under any directory without
// escaping it. Errors wrap ErrInvalid.
func CleanPath(p string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("%w: empty file path", ErrInvalid)
	}
	if len(p) > maxPathLen {
		return "", fmt.Errorf("%w: file path is %d bytes, longer than %d", ErrInvalid, len(p), maxPathLen)
	}
	if !utf8.ValidString(p) {
		return "", fmt.Errorf("%w: file path %q is not UTF-8", ErrInvalid, p)
	}
	if p[0] == '/' {
		return "", fmt.Errorf("%w: file path %q is absolute", ErrInvalid, p)
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return "", fmt.Errorf("%w: file path %q contains control character %U", ErrInvalid, p, r)
		}
		if r == '\\' {
			return "", fmt.Errorf("%w: file path %q contains a backslash", ErrInvalid, p)
		}
	}
	for _, part := range strings.Split(p, "/") {
		switch part {
		case "":
			return "", fmt.Errorf("%w: file path %q has an empty segment", ErrInvalid, p)
		case ".", "..":
			return "", fmt.Errorf("%w: file path %q has a %q segment", ErrInvalid, p, part)
		}
		if len(part) > maxSegmentLen {
			return "", fmt.Errorf("%w: file path %q has a name of %d bytes, longer than %d", ErrInvalid, p, len(part), maxSegmentLen)
		}
	}
	if strings.HasSuffix(p, PartialSuffix) {
		// A pull writes file X as X.buffdbd-partial until it is verified: a file of that name
		// would be taken for (and overwritten as) another file's partial copy.
		return "", fmt.Errorf("%w: file path %q ends in %s, the suffix of a pull's unfinished files", ErrInvalid, p, PartialSuffix)
	}
	return p, nil
}

// Ref is a parsed model reference: name, name:version or name@alias. Exactly one of Version and
// Alias is set after resolution; a bare name parses with Alias "latest".
type Ref struct {
	Name    string
	Version string
	Alias   string
}

// String formats r in the syntax ParseRef accepts.
func (r Ref) String() string {
	switch {
	case r.Version != "":
		return r.Name + ":" + r.Version
	case r.Alias != "":
		return r.Name + "@" + r.Alias
	}
	return r.Name
}

// LatestAlias is maintained automatically: it points at the most recently published version.
const LatestAlias = "latest"

// ParseRef parses name, name:version or name@alias; a bare name means name@latest. Errors wrap
// ErrInvalid and say which part is wrong.
func ParseRef(s string) (Ref, error) {
	if i := strings.LastIndexByte(s, '@'); i >= 0 {
		r := Ref{Name: s[:i], Alias: s[i+1:]}
		if err := ValidateName(r.Name); err != nil {
			return Ref{}, fmt.Errorf("reference %q: %w", s, err)
		}
		if err := ValidateAlias(r.Alias); err != nil {
			return Ref{}, fmt.Errorf("reference %q: %w", s, err)
		}
		return r, nil
	}
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		r := Ref{Name: s[:i], Version: s[i+1:]}
		if err := ValidateName(r.Name); err != nil {
			return Ref{}, fmt.Errorf("reference %q: %w", s, err)
		}
		if err := ValidateVersion(r.Version); err != nil {
			return Ref{}, fmt.Errorf("reference %q: %w", s, err)
		}
		return r, nil
	}
	if err := ValidateName(s); err != nil {
		return Ref{}, fmt.Errorf("reference %q: %w", s, err)
	}
	return Ref{Name: s, Alias: LatestAlias}, nil
}

// validateInfo checks the caller-supplied parts of info.
func validateInfo(info *ModelInfo) error {
	if err := ValidateName(info.Name); err != nil {
		return err
	}
	if err := ValidateVersion(info.Version); err != nil {
		return err
	}
	if len(info.Description) > maxDescription {
		return fmt.Errorf("%w: description is %d bytes, longer than %d", ErrInvalid, len(info.Description), maxDescription)
	}
	if len(info.Framework) > maxVersionLen || strings.ContainsAny(info.Framework, "\x00\n\r") {
		return fmt.Errorf("%w: framework %q is over-long or has control characters", ErrInvalid, info.Framework)
	}
	if len(info.Parameters) > maxParams {
		return fmt.Errorf("%w: %d parameters, more than %d", ErrInvalid, len(info.Parameters), maxParams)
	}
	for k, v := range info.Parameters {
		if k == "" || len(k) > 256 || len(v) > 4096 || !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fmt.Errorf("%w: parameter %q is empty, over-long or not UTF-8", ErrInvalid, k)
		}
	}
	for _, d := range append(append([]int64{}, info.InputShape...), info.OutputShape...) {
		if d < -1 {
			return fmt.Errorf("%w: shape dimension %d (use -1 for a dynamic dimension)", ErrInvalid, d)
		}
	}
	return nil
}
