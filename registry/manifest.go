package registry

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
)

// Manifest lists a version's files in order. It is stored as JSON under model:{name}:{version}:blobs
// (BuffDB's blob_key) for readers of the KV view, and in the reg_files/reg_refs tables.
type Manifest struct {
	Files []File `json:"files"`
}

// File is one file of a version.
type File struct {
	Path   string     `json:"path"`
	Size   int64      `json:"size"`
	SHA256 Digest     `json:"sha256"`
	Chunks []ChunkRef `json:"chunks"`
}

// ChunkRef is one chunk of a file, in order. BlobID is the store blob holding its bytes.
type ChunkRef struct {
	SHA256 Digest `json:"sha256"`
	Size   int64  `json:"size"`
	BlobID uint64 `json:"blob_id,omitempty"`
}

// Digest is a sha256, encoded as lowercase hex in JSON.
type Digest [32]byte

// String is the lowercase hex form.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// MarshalText encodes d as hex.
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText decodes 64 hex characters; ErrInvalid otherwise.
func (d *Digest) UnmarshalText(b []byte) error {
	if len(b) != 64 {
		return fmt.Errorf("%w: sha256 %q is not 64 hex characters", ErrInvalid, b)
	}
	if _, err := hex.Decode(d[:], b); err != nil {
		return fmt.Errorf("%w: sha256 %q: %v", ErrInvalid, b, err)
	}
	return nil
}

// DigestFromBytes converts a 32-byte slice; ErrInvalid otherwise.
func DigestFromBytes(b []byte) (Digest, error) {
	var d Digest
	if len(b) != len(d) {
		return d, fmt.Errorf("%w: sha256 is %d bytes, want 32", ErrInvalid, len(b))
	}
	copy(d[:], b)
	return d, nil
}

// Size is the sum of the file sizes.
func (m *Manifest) Size() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

func marshalManifest(m *Manifest) (string, error) {
	b, err := json.Marshal(m)
	return string(b), err
}

func isAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}
