//go:build !unix

package huggingface

import (
	"context"
	"os"
)

// flockStaging only creates dir where flock is unavailable: processes sharing a cache directory
// are then the user's to keep apart.
func flockStaging(_ context.Context, dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return func() {}, nil
}
