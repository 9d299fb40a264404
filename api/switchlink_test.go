package api_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
	}
	for _, v := range []string{"A", "B", "C", "D"} {
		src := t.TempDir()
		writeFiles(t, src, vs[v])
		push(t, e, src, "m", v)
	}
	link := t.TempDir() + "/m"
	ra := pullLink(t, e, "m:A", link, registry.LinkOptions{})
	// a.bin comes first and over the wire: the pull is held before it reads b.bin from A.
	finish := heldPullLink(t, e, "m:B", link)
	pullLink(t, e, "m:C", link, registry.LinkOptions{})
	rd := pullLink(t, e, "m:D", link, registry.LinkOptions{})
	for _, d := range rd.Removed {
		if d == ra.Dir {
			t.Errorf("the switch to D removed %s, the delta source of a running pull", d)
		}
	}
	rb, err := finish()
	if err != nil {
		t.Fatalf("the held pull: %v", err)
	}
	assertTree(t, link+"/", vs["B"])
	if rb.BytesLocal < int64(len(shared)) {
		t.Errorf("the held pull took %d bytes locally, want b.bin's %d from A", rb.BytesLocal, len(shared))
	}
	// With the pull done, A is an old version like any other: its own switch removes it.
	if !slices.Contains(rb.Removed, ra.Dir) {
		t.Errorf("the switch to B removed %v, want A's %s among them", rb.Removed, ra.Dir)
	}
}

// stopRegistry shuts the registry's server down and drops the client's connection: what follows
// runs with no registry reachable.
func stopRegistry(t testing.TB, e *regEnv) {
	t.Helper()
	e.conn.Close()
	e.srv.Shutdown(context.Background())
	if _, err := e.client.Pull(context.Background(), "m:A", t.TempDir(), registry.PullOptions{}); err == nil {
		t.Fatal("a pull succeeded with the registry stopped")
	}
}

// TestSwitchLink_OfflineToggles pulls A then B through a link, stops the registry, and switches
// the link back and forth with no Ref (the previous target, like cd -) while readers read through
// it: every switch goes to the other version, every read sees one version's files, whole.
func TestSwitchLink_OfflineToggles(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	vs := linkVersions(t, e, "A", "B")
	link := filepath.Join(t.TempDir(), "serving", "m")
	ra := pullLink(t, e, "m:A", link, registry.LinkOptions{})
	rb := pullLink(t, e, "m:B", link, registry.LinkOptions{})
	stopRegistry(t, e)

	r := startLinkReader(link, vs, false)
	dirs := map[string]string{"A": ra.Dir, "B": rb.Dir}
	cur, other := "B", "A"
	for i := range 10 {
		res, err := registry.SwitchLink(context.Background(), link, registry.SwitchOptions{})
		if err != nil {
			t.Fatalf("switch %d to the previous version (%s): %v", i, other, err)
		}
		if res.Dir != dirs[other] || res.Previous != dirs[cur] || res.Info.Version != other || res.Unchanged {
			t.Fatalf("switch %d: to %s (%s) from %s, unchanged %v; want to %s from %s", i, res.Dir, res.Info.Version, res.Previous,
				res.Unchanged, dirs[other], dirs[cur])
		}
		cur, other = other, cur
		r.await(t, i, cur)
	}
	r.close(t)
	assertTree(t, link+"/", vs[cur])

	// By name and version; to the one it points to already: nothing changes.
	if res, err := registry.SwitchLink(context.Background(), link, registry.SwitchOptions{Ref: "m:A", Verify: true}); err != nil || res.Dir != ra.Dir {
		t.Fatalf("switch to m:A: %+v, %v", res, err)
	}
	res, err := registry.SwitchLink(context.Background(), link, registry.SwitchOptions{Ref: "m:A"})
	if err != nil || !res.Unchanged || res.Previous != "" {
		t.Fatalf("switch to m:A again: unchanged %v, previous %q, %v; want unchanged", res.Unchanged, res.Previous, err)
	}
	assertTree(t, link+"/", vs["A"])
	// The previous one is still B: an unchanged switch does not make A its own previous.
	if res, err := registry.SwitchLink(context.Background(), link, registry.SwitchOptions{}); err != nil || res.Dir != rb.Dir {
		t.Fatalf("switch to the previous after an unchanged one: %s, %v; want %s", res.Dir, err, rb.Dir)
	}
	assertTree(t, link+"/", vs["B"])
}

// TestSwitchLink_List lists what a link can be switched to, current and previous marked, and
// what is wrong with the directories a switch would refuse.
func TestSwitchLink_List(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	linkVersions(t, e, "A", "B", "C")
	link := filepath.Join(t.TempDir(), "m")
	ra := pullLink(t, e, "m:A", link, registry.LinkOptions{})
	rb := pullLink(t, e, "m:B", link, registry.LinkOptions{})
	rc := cutPull(t, e, "m:C", link)
	if err := os.Truncate(filepath.Join(ra.Dir, "b.bin"), 10); err != nil {
		t.Fatal(err)
	}
	stopRegistry(t, e)
	vs, err := registry.LinkVersions(link, "")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]registry.LinkVersion{}
	for _, v := range vs {
		got[v.Dir] = v
	}
	if len(vs) != 3 {
		t.Fatalf("listed %d directories, want 3: %+v", len(vs), vs)
	}
	if v := got[rb.Dir]; !v.Current || v.Previous || v.Problem != "" || v.Name != "m" || v.Version != "B" || v.Files != 2 || v.Bytes != rb.Bytes {
		t.Errorf("B: %+v", v)
	}
	if v := got[ra.Dir]; v.Current || !v.Previous || !strings.Contains(v.Problem, "b.bin has 10 bytes") || v.Version != "A" {
		t.Errorf("A (truncated): %+v", v)
	}
	if v := got[rc.Dir]; v.Current || v.Previous || !strings.Contains(v.Problem, "did not complete") || v.Version != "C" {
		t.Errorf("C (cancelled): %+v", v)
	}
	if vs[0].Dir != rb.Dir || vs[1].Dir != ra.Dir {
		t.Errorf("listed %s, %s first; want the current then the previous", vs[0].Dir, vs[1].Dir)
	}
}

// cutPull runs a PullLink of ref cancelled once some bytes arrived, and returns its result: its
// version directory is left incomplete.
func cutPull(t testing.TB, e *regEnv, ref, link string) registry.LinkResult {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res, err := e.client.PullLink(ctx, ref, link, registry.LinkOptions{PullOptions: registry.PullOptions{Progress: func(done, total int64) {
		if done > 0 {
			cancel()
		}
	}}})
	if err == nil {
		t.Fatalf("pull %s cancelled midway succeeded", ref)
	}
	return res
}

// TestSwitchLink_Refuses: a directory that does not hold the whole version is never switched to,
// and the link stays where it was: a pull that did not complete, one still writing, a missing or
// truncated file, a damaged one (Verify), one with no record (unless Force).
func TestSwitchLink_Refuses(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	vs := linkVersions(t, e, "A", "B", "C", "D")
	parent := t.TempDir()
	link := filepath.Join(parent, "m")
	// The link pointed to a directory of the user's before buffdbd first switched it.
	orig := filepath.Join(parent, "m.orig")
	writeFiles(t, orig, map[string][]byte{"a.bin": []byte("the user's")})
	if err := os.Symlink("m.orig", link); err != nil {
		t.Fatal(err)
	}
	ra := pullLink(t, e, "m:A", link, registry.LinkOptions{})
	rb := pullLink(t, e, "m:B", link, registry.LinkOptions{Keep: -1})

	// D's pull held while it writes: its directory is busy.
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	slow := make(chan error, 1)
	go func() {
		_, err := e.client.PullLink(context.Background(), "m:D", link, registry.LinkOptions{Keep: -1, PullOptions: registry.PullOptions{Progress: func(done, total int64) {
			if done > 0 {
				once.Do(func() { close(held); <-release })
			}
		}}})
		slow <- err
	}()
	<-held
	switchTo := func(opts registry.SwitchOptions) error {
		t.Helper()
		_, err := registry.SwitchLink(context.Background(), link, opts)
		if err != nil && linkedDir(t, link) != rb.Dir {
			t.Fatalf("a refused switch (%v) moved the link to %s", err, linkedDir(t, link))
		}
		return err
	}
	if err := switchTo(registry.SwitchOptions{Ref: "m:D"}); !errors.Is(err, registry.ErrBusy) {
		t.Errorf("switch to D while its pull writes: %v, want ErrBusy", err)
	}
	close(release)
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	if err := switchTo(registry.SwitchOptions{Ref: "m:B"}); err != nil { // back from D
		t.Fatal(err)
	}
	cutPull(t, e, "m:C", link)
	stopRegistry(t, e)

	if err := switchTo(registry.SwitchOptions{Ref: "m:C"}); !errors.Is(err, registry.ErrUnverified) || !strings.Contains(err.Error(), "did not complete") {
		t.Errorf("switch to C, cut midway: %v, want ErrUnverified saying its pull did not complete", err)
	}
	if err := switchTo(registry.SwitchOptions{Ref: "m:C", Force: true}); !errors.Is(err, registry.ErrUnverified) {
		t.Errorf("forced switch to C, cut midway: %v, want ErrUnverified", err)
	}
	if err := switchTo(registry.SwitchOptions{Ref: "m:E"}); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("switch to a version never pulled: %v, want ErrNotFound", err)
	}
	if err := switchTo(registry.SwitchOptions{Ref: "m@latest"}); !errors.Is(err, registry.ErrInvalid) {
		t.Errorf("switch to an alias: %v, want ErrInvalid", err)
	}

	aBin := filepath.Join(ra.Dir, "a.bin")
	if err := os.Rename(aBin, aBin+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := switchTo(registry.SwitchOptions{Ref: "m:A"}); !errors.Is(err, registry.ErrUnverified) || !strings.Contains(err.Error(), "a.bin is missing") {
		t.Errorf("switch to A without a.bin: %v, want ErrUnverified naming a.bin", err)
	}
	os.Rename(aBin+".moved", aBin)
	if err := os.Truncate(aBin, 100); err != nil {
		t.Fatal(err)
	}
	if err := switchTo(registry.SwitchOptions{Ref: "m:A"}); !errors.Is(err, registry.ErrUnverified) || !strings.Contains(err.Error(), "a.bin has 100 bytes") {
		t.Errorf("switch to A with a.bin truncated: %v, want ErrUnverified naming a.bin", err)
	}
	damaged := bytes.Clone(vs["A"]["a.bin"])
	damaged[12345] ^= 1
	writeFiles(t, ra.Dir, map[string][]byte{"a.bin": damaged})
	if err := switchTo(registry.SwitchOptions{Ref: "m:A", Verify: true}); !errors.Is(err, registry.ErrChecksum) || !strings.Contains(err.Error(), "a.bin") {
		t.Errorf("verified switch to A with a.bin damaged: %v, want ErrChecksum naming a.bin", err)
	}
	assertTree(t, link+"/", vs["B"])

	// Force is for a directory without a record; a recorded one is checked all the same.
	if err := os.Truncate(aBin, 100); err != nil {
		t.Fatal(err)
	}
	if err := switchTo(registry.SwitchOptions{Ref: "m:A", Force: true}); !errors.Is(err, registry.ErrUnverified) {
		t.Errorf("forced switch to A with a.bin truncated: %v, want ErrUnverified", err)
	}
	assertTree(t, link+"/", vs["B"])

	// The user's directory, which the link pointed to first: no record of a pull, so only with
	// Force. Back to it by hand, then to B: it is B's previous target.
	os.Symlink("m.orig", filepath.Join(parent, "tmp"))
	os.Rename(filepath.Join(parent, "tmp"), link)
	if err := switchTo(registry.SwitchOptions{Ref: "m:B"}); err != nil {
		t.Fatal(err)
	}
	if err := switchTo(registry.SwitchOptions{}); !errors.Is(err, registry.ErrUnverified) || !strings.Contains(err.Error(), "no record") {
		t.Errorf("switch to the user's directory: %v, want ErrUnverified saying there is no record", err)
	}
	if _, err := registry.SwitchLink(context.Background(), link, registry.SwitchOptions{Force: true}); err != nil {
		t.Fatalf("forced switch to the user's directory: %v", err)
	}
	assertTree(t, link+"/", map[string][]byte{"a.bin": []byte("the user's")})
}

// TestSwitchLink_FindsVersionsDir: pulls that used a versions directory of their own are switched
// back without naming it again (found from the link's target), or naming it.
func TestSwitchLink_FindsVersionsDir(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	vs := linkVersions(t, e, "A", "B")
	link := filepath.Join(t.TempDir(), "m")
	versions := filepath.Join(t.TempDir(), "store", "versions")
	ra := pullLink(t, e, "m:A", link, registry.LinkOptions{VersionsDir: versions})
	pullLink(t, e, "m:B", link, registry.LinkOptions{VersionsDir: versions})
	stopRegistry(t, e)
	res, err := registry.SwitchLink(context.Background(), link, registry.SwitchOptions{})
	if err != nil || res.Dir != ra.Dir {
		t.Fatalf("switch back without the versions directory: %s, %v; want %s", res.Dir, err, ra.Dir)
	}
	assertTree(t, link+"/", vs["A"])
	if _, err := registry.SwitchLink(context.Background(), link, registry.SwitchOptions{VersionsDir: versions, Ref: "m:B"}); err != nil {
		t.Fatal(err)
	}
	assertTree(t, link+"/", vs["B"])
	if _, err := registry.SwitchLink(context.Background(), link, registry.SwitchOptions{VersionsDir: t.TempDir()}); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("switch with a versions directory that has no bookkeeping: %v, want ErrNotFound", err)
	}
}

// TestSwitchLink_ThenPull: after a rollback from B to A, the next pull (C) keeps A, the version it
// replaces, and removes B, the bad one: the prune counts the rollback as A's latest switch.
func TestSwitchLink_ThenPull(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	vs := linkVersions(t, e, "A", "B", "C")
	link := filepath.Join(t.TempDir(), "m")
	ra := pullLink(t, e, "m:A", link, registry.LinkOptions{})
	rb := pullLink(t, e, "m:B", link, registry.LinkOptions{})
	if _, err := registry.SwitchLink(context.Background(), link, registry.SwitchOptions{}); err != nil {
		t.Fatal(err)
	}
	rc := pullLink(t, e, "m:C", link, registry.LinkOptions{})
	if rc.Previous != ra.Dir || len(rc.Removed) != 1 || rc.Removed[0] != rb.Dir {
		t.Fatalf("pull after the rollback: previous %s, removed %v; want previous %s, removed [%s]", rc.Previous, rc.Removed, ra.Dir, rb.Dir)
	}
	assertTree(t, link+"/", vs["C"])
	if res, err := registry.SwitchLink(context.Background(), link, registry.SwitchOptions{}); err != nil || res.Dir != ra.Dir {
		t.Fatalf("rollback from C: %s, %v; want %s", res.Dir, err, ra.Dir)
	}
	assertTree(t, link+"/", vs["A"])
}

// TestSwitchLink_OwnDir: a version pulled into the caller's directory (LinkOptions.Dir) can be
// switched back to; once a pull of another version into it starts, it no longer can.
func TestSwitchLink_OwnDir(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	vs := linkVersions(t, e, "A", "B")
	link := filepath.Join(t.TempDir(), "m")
	own := filepath.Join(t.TempDir(), "own")
	pullLink(t, e, "m:A", link, registry.LinkOptions{Dir: own})
	pullLink(t, e, "m:B", link, registry.LinkOptions{})
	if res, err := registry.SwitchLink(context.Background(), link, registry.SwitchOptions{Ref: "m:A"}); err != nil || res.Dir != own {
		t.Fatalf("switch to A in the caller's directory: %s, %v", res.Dir, err)
	}
	assertTree(t, link+"/", vs["A"])
	if _, err := registry.SwitchLink(context.Background(), link, registry.SwitchOptions{Ref: "m:B"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := e.client.PullLink(ctx, "m:B", filepath.Join(t.TempDir(), "other"), registry.LinkOptions{Dir: own, VersionsDir: filepath.Dir(link) + "/.m.versions",
		PullOptions: registry.PullOptions{NoDelta: true, Progress: func(done, total int64) {
			if done > 0 {
				cancel()
			}
		}}}); err == nil {
		t.Fatal("the cancelled pull succeeded")
	}
	if _, err := registry.SwitchLink(context.Background(), link, registry.SwitchOptions{Ref: "m:A"}); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("switch to A once B is being pulled over it: %v, want ErrNotFound", err)
	}
	assertTree(t, link+"/", vs["B"])
}

// TestClient_PullLink_PruneStaysInVersionsDir: bookkeeping edited (or damaged) to list a directory
// outside the versions directory never gets it removed.
func TestClient_PullLink_PruneStaysInVersionsDir(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	linkVersions(t, e, "A", "B", "C")
	parent := t.TempDir()
	link := filepath.Join(parent, "m")
	outside := filepath.Join(parent, "precious")
	writeFiles(t, outside, map[string][]byte{"x": []byte("keep me")})
	root := filepath.Join(parent, ".m.versions")
	writeFiles(t, root, map[string][]byte{"+buffdbd-link.json": []byte(`{"gen": 5, "dirs": [{"dir": "../precious", "created": 1, "switched": 1}]}`)})
	for _, v := range []string{"A", "B", "C"} {
		pullLink(t, e, "m:"+v, link, registry.LinkOptions{})
	}
	assertTree(t, outside, map[string][]byte{"x": []byte("keep me")})
}
