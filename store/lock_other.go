//go:build !unix

package store

import (
	"os"
	"path/filepath"
)

// lockDir is a no-op beyond creating the LOCK file on platforms without flock; buffdbd targets Linux.
func lockDir(dir string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o640)
}
