package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"
)

// Payload files are installed the same way whether their temp file is unnamed (Linux) or a named
// file renamed into place (elsewhere, or where O_TMPFILE is refused), including replacing a
// damaged payload, and neither leaves anything in tmp/.
func TestPayloadTempFiles(t *testing.T) {
	ctx := context.Background()
	for _, unnamed := range []bool{false, true} {
		t.Run(map[bool]string{false: "named", true: "unnamed"}[unnamed], func(t *testing.T) {
			dir := t.TempDir()
			db, err := Open(ctx, dir, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if unnamed && !db.unnamedTemps {
				t.Skip("O_TMPFILE is not supported here")
			}
			db.unnamedTemps = unnamed
			data := bytes.Repeat([]byte("payload "), 20000)
			sum := sha256.Sum256(data)
			p, err := db.WritePayload(ctx, bytes.NewReader(data), &sum)
			if err != nil {
				t.Fatal(err)
			}
			p.Release()
			if b, err := os.ReadFile(db.payloadPath(sum)); err != nil || !bytes.Equal(b, data) {
				t.Fatalf("payload file: %d bytes, %v", len(b), err)
			}
			// A damaged copy is replaced by RewritePayload, and only by it.
			os.WriteFile(db.payloadPath(sum), bytes.Repeat([]byte("x"), len(data)), 0o640)
			p, err = db.RewritePayload(ctx, bytes.NewReader(data), sum)
			if err != nil {
				t.Fatal(err)
			}
			p.Release()
			if b, _ := os.ReadFile(db.payloadPath(sum)); !bytes.Equal(b, data) {
				t.Fatal("RewritePayload did not replace the damaged file")
			}
			left, _ := os.ReadDir(filepath.Join(dir, tmpDir))
			scratch, _ := filepath.Glob(db.payloadPath(sum) + ".*")
			if len(left) != 0 || len(scratch) != 0 {
				t.Fatalf("left behind: %v in tmp/, %v beside the payload", left, scratch)
			}
		})
	}
}
