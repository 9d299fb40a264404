package api_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/buffdb/buffdbd/registry"
)

// linkVersions pushes versions of model "m" (two files each, every byte derived from the version's
// seed, so a reader can tell which version a file belongs to) and returns their files.
func linkVersions(t testing.TB, e *regEnv, versions ...string) map[string]map[string][]byte {
	t.Helper()
	all := map[string]map[string][]byte{}
	for i, v := range versions {
		files := map[string][]byte{"a.bin": randBytes(uint64(100+i), 3<<20), "b.bin": randBytes(uint64(200+i), 1<<20+5)}
		src := t.TempDir()
		writeFiles(t, src, files)
		push(t, e, src, "m", v)
		all[v] = files
	}
	return all
}

func pullLink(t testing.TB, e *regEnv, ref, link string, opts registry.LinkOptions) registry.LinkResult {
	t.Helper()
	res, err := e.client.PullLink(context.Background(), ref, link, opts)
	if err != nil {
		t.Fatalf("pull %s --link %s: %v", ref, link, err)
	}
	return res
}

// linkedDir returns the directory link resolves to.
func linkedDir(t testing.TB, link string) string {
	t.Helper()
	d, err := filepath.EvalSymlinks(link)
	if err != nil {
		t.Fatalf("resolve %s: %v", link, err)
	}
	return d
}

// linkReader reads the files a.bin and b.bin through a link being switched between versions vs,
// until closed, and reports each version it saw; it stops at the first read that fails or that
// finds the files of one resolved directory of different versions.
type linkReader struct {
	stop  chan struct{}
	reads chan map[string]bool // versions seen since the last receive
	errc  chan error
}

// startLinkReader starts a linkReader; viaPath also reads a.bin by its path through the link, as
// a server opening a file by path does, besides resolving the link once per round.
func startLinkReader(link string, vs map[string]map[string][]byte, viaPath bool) *linkReader {
	which := func(name string, b []byte) string {
		for v, files := range vs {
			if bytes.Equal(files[name], b) {
				return v
			}
		}
		return ""
	}
	r := &linkReader{stop: make(chan struct{}), reads: make(chan map[string]bool), errc: make(chan error, 1)}
	go func() {
		seen := map[string]bool{}
		for {
			select {
			case <-r.stop:
				r.errc <- nil
				return
			case r.reads <- seen:
				seen = map[string]bool{}
			default:
			}
			if viaPath {
				b, err := os.ReadFile(filepath.Join(link, "a.bin"))
				if err != nil {
					r.errc <- err
					return
				}
				v := which("a.bin", b)
				if v == "" {
					r.errc <- errors.New("a.bin read through the link is neither version's")
					return
				}
				seen[v] = true
			}
			// Resolved once, as a server loading a model directory does: both files one version's.
			dir, err := filepath.EvalSymlinks(link)
			if err != nil {
				r.errc <- err
				return
			}
			a, errA := os.ReadFile(filepath.Join(dir, "a.bin"))
			b, errB := os.ReadFile(filepath.Join(dir, "b.bin"))
			if err := errors.Join(errA, errB); err != nil {
				r.errc <- err
				return
			}
			va, vb := which("a.bin", a), which("b.bin", b)
			if va == "" || va != vb {
				r.errc <- fmt.Errorf("the files of one resolved directory are of versions %q and %q", va, vb)
				return
			}
			seen[va] = true
		}
	}()
	return r
}

// await returns once the reader has seen version v (after switch i), failing t if it stopped.
func (r *linkReader) await(t *testing.T, i int, v string) {
	t.Helper()
	for seen := map[string]bool{}; !seen[v]; {
		select {
		case s := <-r.reads:
			seen = s
		case err := <-r.errc:
			t.Fatalf("switch %d (to %s): reader: %v", i, v, err)
		}
	}
}

// close stops the reader, failing t if it had failed.
func (r *linkReader) close(t *testing.T) {
	t.Helper()
	close(r.stop)
	if err := <-r.errc; err != nil {
		t.Fatalf("reader: %v", err)
	}
}

// TestClient_PullLink_ReadersSeeOneVersion switches a link between two versions while a reader
// keeps reading through it: every read succeeds, every file read is wholly one version's, and the
// two files of a directory resolved once are of the same version.
func TestClient_PullLink_ReadersSeeOneVersion(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	vs := linkVersions(t, e, "A", "B")
	link := filepath.Join(t.TempDir(), "serving", "m")
	pullLink(t, e, "m:A", link, registry.LinkOptions{})
	assertTree(t, link+"/", vs["A"])

	r := startLinkReader(link, vs, true)

	// A second reader only opens the file through the link, thousands of times per switch: the
	// moment a link that is replaced by removing it and creating it again (ln -sfn) is missing.
	statErr := make(chan error, 1)
	go func() {
		for {
			select {
			case <-r.stop:
				statErr <- nil
				return
			default:
			}
			f, err := os.Open(filepath.Join(link, "b.bin"))
			if err != nil {
				statErr <- err
				return
			}
			f.Close()
		}
	}()
	// Every switch is followed by reads that see the new version (the reader reports what it saw
	// since it was last asked): the reader ran across each switch, with no clock involved.
	for i, v := range strings.Split(strings.Repeat("B,A,", 10)+"B", ",") {
		pullLink(t, e, "m:"+v, link, registry.LinkOptions{})
		r.await(t, i, v)
	}
	r.close(t)
	if err := <-statErr; err != nil {
		t.Fatalf("opening a file through the link: %v", err)
	}
	assertTree(t, link+"/", vs["B"])
}

// TestClient_PullLink_DeltaFromLinkedVersion: the version the link points to is the delta source
// of the next, so a switch moves only what changed.
func TestClient_PullLink_DeltaFromLinkedVersion(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	v1, v2 := sharedVersions(t)
	for v, files := range map[string]map[string][]byte{"v1": v1, "v2": v2} {
		src := t.TempDir()
		writeFiles(t, src, files)
		push(t, e, src, "llm", v)
	}
	link := filepath.Join(t.TempDir(), "llm")
	pullLink(t, e, "llm:v1", link, registry.LinkOptions{})
	res := pullLink(t, e, "llm:v2", link, registry.LinkOptions{})
	assertTree(t, link+"/", v2)
	if limit := int64(4*registry.AvgChunkSize + 1<<20); res.BytesReceived > limit || res.BytesReceived == 0 {
		t.Errorf("delta pull from the linked version received %d of %d bytes, want (0, %d]", res.BytesReceived, res.Bytes, limit)
	}
	if res.BytesReceived+res.BytesLocal != res.Bytes {
		t.Errorf("received %d + local %d != %d", res.BytesReceived, res.BytesLocal, res.Bytes)
	}
	// Rolling back to the kept previous version moves nothing.
	back := pullLink(t, e, "llm:v1", link, registry.LinkOptions{})
	assertTree(t, link+"/", v1)
	if back.BytesReceived != 0 || back.Previous != res.Dir {
		t.Errorf("rollback received %d bytes (want 0), previous %q (want %q)", back.BytesReceived, back.Previous, res.Dir)
	}
	// NoDelta: every byte over the wire.
	nd := pullLink(t, e, "llm:v2", filepath.Join(t.TempDir(), "nd"), registry.LinkOptions{PullOptions: registry.PullOptions{NoDelta: true}})
	if nd.BytesReceived != nd.Bytes {
		t.Errorf("NoDelta received %d of %d bytes", nd.BytesReceived, nd.Bytes)
	}
}

// TestClient_PullLink_CancelKeepsLink: a pull cut off midway leaves the link on the version it
// pointed to, complete; run again, it resumes and switches.
func TestClient_PullLink_CancelKeepsLink(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	a := map[string][]byte{"w.bin": randBytes(301, 20<<20)}
	b := map[string][]byte{"w.bin": randBytes(302, 20<<20)}
	for v, files := range map[string]map[string][]byte{"A": a, "B": b} {
		src := t.TempDir()
		writeFiles(t, src, files)
		push(t, e, src, "cut", v)
	}
	link := filepath.Join(t.TempDir(), "cut")
	ra := pullLink(t, e, "cut:A", link, registry.LinkOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	_, err := e.client.PullLink(ctx, "cut:B", link, registry.LinkOptions{PullOptions: registry.PullOptions{Progress: func(done, total int64) {
		if done >= total/2 {
			cancel()
		}
	}}})
	if err == nil {
		t.Fatal("a pull cancelled midway succeeded")
	}
	if got := linkedDir(t, link); got != ra.Dir {
		t.Fatalf("after a cancelled pull the link points to %s, want %s", got, ra.Dir)
	}
	assertTree(t, link+"/", a)
	rb := pullLink(t, e, "cut:B", link, registry.LinkOptions{})
	assertTree(t, link+"/", b)
	if rb.BytesReceived >= rb.Bytes || rb.Previous != ra.Dir {
		t.Errorf("resumed pull received %d of %d bytes (want what the cancelled one had not), previous %q", rb.BytesReceived, rb.Bytes, rb.Previous)
	}
}

// TestClient_PullLink_RefusesNonLink: a directory, a file or a link to a file where the link goes
// is left as it is, before anything is downloaded.
func TestClient_PullLink_RefusesNonLink(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	linkVersions(t, e, "A")
	parent := t.TempDir()
	dir := filepath.Join(parent, "m")
	writeFiles(t, dir, map[string][]byte{"model.onnx": []byte("serving")})
	file := filepath.Join(parent, "f")
	writeFiles(t, parent, map[string][]byte{"f": []byte("a file")})
	// A server configured with the path of its model file, through a link: replacing that link
	// with one to a directory would break the server.
	fileLink := filepath.Join(parent, "model.onnx")
	if err := os.Symlink("f", fileLink); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, file, dir + "/", fileLink} {
		res, err := e.client.PullLink(context.Background(), "m:A", p, registry.LinkOptions{})
		if !errors.Is(err, registry.ErrNotLink) {
			t.Fatalf("pull --link %s: %v, want ErrNotLink", p, err)
		}
		if res.BytesReceived != 0 {
			t.Errorf("pull --link %s received %d bytes before refusing", p, res.BytesReceived)
		}
	}
	assertTree(t, dir, map[string][]byte{"model.onnx": []byte("serving")})
	if b, err := os.ReadFile(file); err != nil || string(b) != "a file" {
		t.Fatalf("the file became %q, %v", b, err)
	}
	if dest, err := os.Readlink(fileLink); err != nil || dest != "f" {
		t.Fatalf("the link to a file now points to %q, %v", dest, err)
	}
	ents, _ := os.ReadDir(parent)
	if len(ents) != 3 {
		t.Errorf("a refused pull left %d entries in the link's directory, want 3", len(ents))
	}
}

// TestClient_PullLink_Prune: the link's target and its previous one are kept; older version
// directories PullLink created are removed; nothing else is (a directory of the user's in the
// versions directory, a -o directory), and Keep < 0 keeps all.
func TestClient_PullLink_Prune(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	vs := linkVersions(t, e, "v1", "v2", "v3", "v4", "v5")
	parent := t.TempDir()
	link := filepath.Join(parent, "m")
	root := filepath.Join(parent, ".m.versions")
	own := filepath.Join(parent, "own-v2")
	r1 := pullLink(t, e, "m:v1", link, registry.LinkOptions{})
	if r1.Dir != filepath.Join(root, "m:v1") || r1.Target != filepath.Join(".m.versions", "m:v1") {
		t.Fatalf("version directory %s, link target %s", r1.Dir, r1.Target)
	}
	writeFiles(t, filepath.Join(root, "m", "mine"), map[string][]byte{"x": []byte("user's")})
	writeFiles(t, filepath.Join(root, "other"), map[string][]byte{"y": []byte("user's")})
	r2 := pullLink(t, e, "m:v2", link, registry.LinkOptions{Dir: own}) // the caller's directory
	r3 := pullLink(t, e, "m:v3", link, registry.LinkOptions{})
	if len(r2.Removed)+len(r3.Removed) != 0 {
		t.Fatalf("removed %v %v while within Keep", r2.Removed, r3.Removed)
	}
	r4 := pullLink(t, e, "m:v4", link, registry.LinkOptions{})
	if len(r4.Removed) != 1 || r4.Removed[0] != r1.Dir {
		t.Fatalf("switch to v4 removed %v, want [%s]", r4.Removed, r1.Dir)
	}
	r5 := pullLink(t, e, "m:v5", link, registry.LinkOptions{})
	if len(r5.Removed) != 1 || r5.Removed[0] != r3.Dir {
		t.Fatalf("switch to v5 removed %v, want [%s]", r5.Removed, r3.Dir)
	}
	assertTree(t, link+"/", vs["v5"])
	assertTree(t, r4.Dir, vs["v4"]) // the previous one, for a rollback
	assertTree(t, own, vs["v2"])
	assertTree(t, filepath.Join(root, "m", "mine"), map[string][]byte{"x": []byte("user's")})
	assertTree(t, filepath.Join(root, "other"), map[string][]byte{"y": []byte("user's")})
	for v, want := range map[string]bool{"v1": false, "v2": false, "v3": false, "v4": true, "v5": true} {
		if _, err := os.Stat(filepath.Join(root, "m:"+v)); (err == nil) != want {
			t.Errorf("version directory of %s: %v, want it there: %v", v, err, want)
		}
	}

	all := filepath.Join(t.TempDir(), "all")
	for _, v := range []string{"v1", "v2", "v3"} {
		if r := pullLink(t, e, "m:"+v, all, registry.LinkOptions{Keep: -1}); len(r.Removed) != 0 {
			t.Fatalf("Keep -1 removed %v", r.Removed)
		}
	}
}

// TestClient_PullLink_Concurrent: a pull held midway while another switches the link (and prunes)
// keeps its directory, then switches the link itself: the link always points to a whole version.
func TestClient_PullLink_Concurrent(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	vs := linkVersions(t, e, "A", "B", "C", "D")
	link := filepath.Join(t.TempDir(), "m")
	pullLink(t, e, "m:A", link, registry.LinkOptions{})
	finish := heldPullLink(t, e, "m:B", link)
	// Meanwhile: switches to C and D, which prune: B's directory, unswitched, older than them and
	// being written, must be left alone.
	pullLink(t, e, "m:C", link, registry.LinkOptions{})
	rd := pullLink(t, e, "m:D", link, registry.LinkOptions{})
	assertTree(t, link+"/", vs["D"])
	rb, err := finish()
	if err != nil {
		t.Fatalf("the held pull: %v", err)
	}
	assertTree(t, link+"/", vs["B"])
	if rb.Previous != rd.Dir {
		t.Errorf("the held pull replaced %q, want %q", rb.Previous, rd.Dir)
	}
	// No temporary link is left beside the link.
	ents, _ := os.ReadDir(filepath.Dir(link))
	for _, en := range ents {
		if strings.Contains(en.Name(), "buffdbd-link") {
			t.Errorf("left behind: %s", en.Name())
		}
	}
}

// heldPullLink starts PullLink(ref, link) and returns once it has received its first bytes, held
// there until finish is called; finish lets it go on and returns its result.
func heldPullLink(t *testing.T, e *regEnv, ref, link string) (finish func() (registry.LinkResult, error)) {
	t.Helper()
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	type result struct {
		res registry.LinkResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := e.client.PullLink(context.Background(), ref, link, registry.LinkOptions{PullOptions: registry.PullOptions{Progress: func(n, total int64) {
			if n > 0 {
				once.Do(func() { close(held); <-release })
			}
		}}})
		done <- result{res, err}
	}()
	select {
	case <-held:
	case r := <-done:
		t.Fatalf("the pull to hold ended before receiving anything: %v", r.err)
	}
	return func() (registry.LinkResult, error) {
		close(release)
		r := <-done
		return r.res, r.err
	}
}

// TestClient_PullLink_OutputIsLinkTarget: -o naming the directory the link points to would change
// the files being served; it is refused.
func TestClient_PullLink_OutputIsLinkTarget(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	vs := linkVersions(t, e, "A", "B")
	link := filepath.Join(t.TempDir(), "m")
	ra := pullLink(t, e, "m:A", link, registry.LinkOptions{})
	if _, err := e.client.PullLink(context.Background(), "m:B", link, registry.LinkOptions{Dir: ra.Dir}); !errors.Is(err, registry.ErrInvalid) {
		t.Fatalf("pull into the link's target: %v, want ErrInvalid", err)
	}
	assertTree(t, link+"/", vs["A"])
}

// TestClient_PullLink_PrunesAbandoned: the directory of a pull that did not complete is removed by
// a later switch that began after it, not by one that was running alongside it.
func TestClient_PullLink_PrunesAbandoned(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	linkVersions(t, e, "A", "B", "C")
	link := filepath.Join(t.TempDir(), "m")
	pullLink(t, e, "m:A", link, registry.LinkOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	rb, err := e.client.PullLink(ctx, "m:B", link, registry.LinkOptions{PullOptions: registry.PullOptions{Progress: func(done, total int64) {
		if done > 0 {
			cancel()
		}
	}}})
	if err == nil {
		t.Fatal("the cancelled pull succeeded")
	}
	if _, err := os.Stat(rb.Dir); err != nil {
		t.Fatalf("the cancelled pull's directory: %v", err)
	}
	rc := pullLink(t, e, "m:C", link, registry.LinkOptions{})
	if len(rc.Removed) != 1 || rc.Removed[0] != rb.Dir {
		t.Fatalf("the switch to C removed %v, want the abandoned %s", rc.Removed, rb.Dir)
	}
	if _, err := os.Stat(rb.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the abandoned directory: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Dir(rb.Dir)); len(ents) != 3 { // the bookkeeping, A, C
		t.Errorf("versions directory holds %d entries, want 3", len(ents))
	}
}

// TestClient_PullLink_NestedModelNames: model org's version m and model org/m's versions, switched
// on one link, have directories of their own: neither is pulled into the other's, which is served.
func TestClient_PullLink_NestedModelNames(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	outer := map[string][]byte{"o.bin": randBytes(501, 1<<20)}
	inner := map[string][]byte{"i.bin": randBytes(502, 1<<20)}
	for _, m := range []struct {
		name, version string
		files         map[string][]byte
	}{{"org", "m", outer}, {"org/m", "v1", inner}} {
		src := t.TempDir()
		writeFiles(t, src, m.files)
		push(t, e, src, m.name, m.version)
	}
	link := filepath.Join(t.TempDir(), "serving")
	ro := pullLink(t, e, "org:m", link, registry.LinkOptions{})
	ri := pullLink(t, e, "org/m:v1", link, registry.LinkOptions{})
	assertTree(t, link+"/", inner)
	assertTree(t, ro.Dir, outer)
	if within := strings.HasPrefix(ri.Dir, ro.Dir+string(filepath.Separator)); within {
		t.Fatalf("org/m:v1 went into %s, inside org:m's %s", ri.Dir, ro.Dir)
	}
}

// TestClient_PullLink_NotIntoServed: a versions directory or -o directory in what the link points to
// (or the link itself) is refused before anything is written there.
func TestClient_PullLink_NotIntoServed(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	vs := linkVersions(t, e, "A", "B")
	link := filepath.Join(t.TempDir(), "m")
	ra := pullLink(t, e, "m:A", link, registry.LinkOptions{})
	for _, o := range []registry.LinkOptions{
		{VersionsDir: link}, {VersionsDir: filepath.Join(link, "v")}, {VersionsDir: ra.Dir},
		{Dir: link}, {Dir: filepath.Join(link, "sub")}, {Dir: filepath.Join(ra.Dir, "sub")},
	} {
		if _, err := e.client.PullLink(context.Background(), "m:B", link, o); !errors.Is(err, registry.ErrInvalid) {
			t.Errorf("PullLink with %+v: %v, want ErrInvalid", o, err)
		}
	}
	assertTree(t, link+"/", vs["A"])
}

// TestClient_PullLink_RemovesStaleTempLink: a temporary link a crash left beside the link (between
// creating it and renaming it over the link) is removed by the next switch.
func TestClient_PullLink_RemovesStaleTempLink(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	linkVersions(t, e, "A")
	parent := t.TempDir()
	stale := filepath.Join(parent, ".m.buffdbd-link-0123456789abcdef")
	if err := os.Symlink("nowhere", stale); err != nil {
		t.Fatal(err)
	}
	pullLink(t, e, "m:A", filepath.Join(parent, "m"), registry.LinkOptions{})
	if _, err := os.Lstat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale temporary link: %v", err)
	}
}
