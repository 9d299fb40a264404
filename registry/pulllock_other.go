//go:build !unix

package registry

// lockPullDir does nothing where flock is unavailable: concurrent pulls into one directory are
// then the user's to avoid.
func lockPullDir(string) (func(), error) { return func() {}, nil }

func tryLockDir(string) (func(), bool, error) { return func() {}, true, nil }

func tryLockShared(string) (func(), bool, error) { return func() {}, true, nil }

func lockDirWait(string) (func(), error) { return func() {}, nil }
