package registry_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	registrypb "github.com/buffdb/buffdbd/api/proto/registrypb"
	"github.com/buffdb/buffdbd/registry"
)

// FuzzFilesFromProto: a manifest from a remote server either fails with ErrInvalid or yields paths
// that stay inside any directory they are joined under and chunks that cover each file exactly.
func FuzzFilesFromProto(f *testing.F) {
	f.Add("model.bin", uint64(10), uint64(10), 32)
	f.Add("../x", uint64(1), uint64(1), 32)
	f.Add("a/b", uint64(5), uint64(4), 31)
	f.Fuzz(func(t *testing.T, path string, size, chunk uint64, sumLen int) {
		if sumLen < 0 || sumLen > 64 {
			return
		}
		sum := make([]byte, sumLen)
		pf := &registrypb.File{Path: path, Size: size, Sha256: make([]byte, 32),
			Chunks: []*registrypb.Chunk{{Sha256: sum, Size: chunk}}}
		files, err := registry.FilesFromProto([]*registrypb.File{pf, pf})
		if err == nil {
			t.Fatalf("a manifest naming %q twice was accepted", path)
		}
		files, err = registry.FilesFromProto([]*registrypb.File{pf})
		if err != nil {
			if !errors.Is(err, registry.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		joined := filepath.Join("/out", filepath.FromSlash(files[0].Path))
		if !strings.HasPrefix(joined, "/out/") {
			t.Fatalf("path %q escapes to %q", path, joined)
		}
		if files[0].Size != int64(chunk) || chunk == 0 || chunk > registry.MaxChunkSize {
			t.Fatalf("chunks of %d bytes accepted for a %d-byte file", chunk, size)
		}
	})
}
