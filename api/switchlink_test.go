package api_test

import (
	"context"
	"sync"
	"testing"

	"github.com/buffdb/buffdbd/registry"
)

// TestClient_PullLink_DeltaSourceNotPruned: a pull of B that takes chunks from A (the link's target
// when it started) is held mid-transfer while the link is switched to C and then D, whose prune
// would remove A (neither the link's target nor its previous one any more). A is kept while the
// pull reads it, the pull completes from it, and a later switch removes A.
func TestClient_PullLink_DeltaSourceNotPruned(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	shared := randBytes(600, 3<<20)
	vs := map[string]map[string][]byte{
		"A": {"a.bin": randBytes(601, 3<<20), "b.bin": shared},
		"B": {"a.bin": randBytes(602, 3<<20), "b.bin": shared}, // b.bin only from A's directory
		"C": {"a.bin": randBytes(603, 1<<20)},
		"D": {"a.bin": randBytes(604, 1<<20)},
		"E": {"a.bin": randBytes(605, 1<<20)},
	}
	for _, v := range []string{"A", "B", "C", "D", "E"} {
		src := t.TempDir()
		writeFiles(t, src, vs[v])
		push(t, e, src, "m", v)
	}
	link := t.TempDir() + "/m"
	ra := pullLink(t, e, "m:A", link, registry.LinkOptions{})
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	slow := make(chan error, 1)
	var rb registry.LinkResult
	go func() {
		var err error
		// a.bin comes first and over the wire: the pull is held before it reads b.bin from A.
		rb, err = e.client.PullLink(context.Background(), "m:B", link, registry.LinkOptions{PullOptions: registry.PullOptions{Progress: func(done, total int64) {
			if done > 0 {
				once.Do(func() { close(held); <-release })
			}
		}}})
		slow <- err
	}()
	<-held
	pullLink(t, e, "m:C", link, registry.LinkOptions{})
	rd := pullLink(t, e, "m:D", link, registry.LinkOptions{})
	for _, d := range rd.Removed {
		if d == ra.Dir {
			t.Errorf("the switch to D removed %s, the delta source of a running pull", d)
		}
	}
	close(release)
	if err := <-slow; err != nil {
		t.Fatalf("the held pull: %v", err)
	}
	assertTree(t, link+"/", vs["B"])
	if rb.BytesLocal < int64(len(shared)) {
		t.Errorf("the held pull took %d bytes locally, want b.bin's %d from A", rb.BytesLocal, len(shared))
	}
	// With the pull done, A is an old version like any other.
	re := pullLink(t, e, "m:E", link, registry.LinkOptions{})
	removed := map[string]bool{}
	for _, d := range append(append(rd.Removed, rb.Removed...), re.Removed...) {
		removed[d] = true
	}
	if !removed[ra.Dir] {
		t.Errorf("A's directory was never removed: %v, %v, %v", rd.Removed, rb.Removed, re.Removed)
	}
}
