package registry

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// LinkOptions configure PullLink.
type LinkOptions struct {
	PullOptions
	// Dir, if set, is the directory the version is pulled into. It is the caller's: PullLink never
	// removes it. Empty: VersionsDir/<name>:<version>.
	Dir string
	// VersionsDir holds the version directories PullLink creates. Empty: beside the link (not in
	// it, where a server reading the link's directory would see a version being pulled), named
	// "."+<link's name>+".versions".
	VersionsDir string
	// Keep is how many version directories PullLink created are kept, counting the one the link
	// points to; 0 means 2 (the link's target and the one it pointed to before, for a rollback), a
	// negative value keeps every one. The link's target and its previous target are always kept.
	Keep int
}

// LinkResult reports a PullLink.
type LinkResult struct {
	PullResult
	// Dir is the version's directory; Target is what the link now holds (Dir relative to the
	// link's directory when Dir is under it, so the pair can be moved or bind-mounted together).
	Dir, Target string
	// Previous is the directory the link pointed to before, "" if none.
	Previous string
	// Removed lists the old version directories removed (see LinkOptions.Keep).
	Removed []string
	// Unchanged: SwitchLink found the link pointing to the directory already and did nothing.
	Unchanged bool
}

// Names inside a versions directory that no model name can take ('+' is not allowed in names):
// the bookkeeping of the directories PullLink created, and directories being removed.
const (
	linkStateFile  = "+buffdbd-link.json"
	removingPrefix = "+removing."
)

// PullLink pulls ref into a directory of its own and then switches link, a symbolic link, to it
// atomically: a process that opens files through link sees the previous version or this one,
// whole, never a mix and never a missing file. It is how a serving process switches versions.
//
// The version is pulled into opts.Dir or VersionsDir/<name>:<version>, verified and fsynced like
// Pull; chunks are also taken from the files of the directory link points to, so only what
// changed crosses the network. Then a new symbolic link is created beside link and renamed over it
// (rename(2) replaces a link atomically, where `ln -sfn` removes it first), and the directory is
// fsynced. An error or interruption before that leaves link as it was; run PullLink again to
// resume.
//
// Afterwards version directories PullLink created beyond opts.Keep are removed, the oldest switched
// to first, never the one a link points to, its previous target, one a pull is writing into or
// reading chunks from, or one SwitchLink is switching to; a version directory never switched to (a
// pull that did not complete) is removed by a later switch that began after it was created.
// Nothing PullLink did not create is removed. The versions directory's bookkeeping records each
// version directory a pull completed, with its files' sizes and sha256, so SwitchLink can switch
// the link back to one without the registry.
//
// If link exists and is not a symbolic link (a directory with the model in it) the error wraps
// ErrNotLink and nothing is done. Two PullLinks switching one link both complete, and the link
// points to whichever switched last; two pulling the same version into the same directory: the
// second fails with ErrBusy.
func (c *Client) PullLink(ctx context.Context, ref, link string, opts LinkOptions) (LinkResult, error) {
	var res LinkResult
	link, err := filepath.Abs(link)
	if err != nil {
		return res, err
	}
	parent := filepath.Dir(link)
	if err := checkLink(link); err != nil {
		return res, err
	}
	var files []File
	res.PullResult, files, err = c.resolve(ctx, ref, opts.PullOptions)
	if err != nil {
		return res, err
	}
	// The name and version become path segments: checked here too, whatever the server sends.
	info := res.Info
	if err := ValidateName(info.Name); err != nil {
		return res, err
	}
	if err := ValidateVersion(info.Version); err != nil {
		return res, err
	}
	root := opts.VersionsDir
	if root == "" {
		root = filepath.Join(parent, shortName("."+filepath.Base(link)+".versions"))
	}
	if root, err = filepath.Abs(root); err != nil {
		return res, err
	}
	// <name>:<version>, as in a reference: ':' is in no name or version, so the directory of one
	// version is never inside another's (with <name>/<version>, model org's version m would hold
	// model org/m's versions).
	rel := filepath.FromSlash(info.Name) + ":" + info.Version // the directory's name in root
	res.Dir = filepath.Join(root, rel)
	if opts.Dir != "" {
		rel = ""
		if res.Dir, err = filepath.Abs(opts.Dir); err != nil {
			return res, err
		}
	}
	// Neither the versions directory nor the version's may be in what the link points to: the
	// version served would change under the pull, and the link come to point into itself.
	served := ""
	if linkTarget(link) != nil {
		served, _ = filepath.EvalSymlinks(link)
	}
	for _, p := range []string{root, res.Dir} {
		if p == res.Dir && rel != "" {
			continue // in root; the same version's directory may be the one served (a repair)
		}
		if within(link, p) || served != "" && within(served, resolveExisting(p)) {
			return res, fmt.Errorf("%w: %s is in the directory %s points to: pulling there would change the files being served; pull elsewhere",
				ErrInvalid, p, link)
		}
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return res, err
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return res, err
	}

	// Create (and record) the version directory and lock it under the versions directory's lock,
	// which a prune holds: it cannot then remove the directory before this pull has it locked, and
	// skips it after. The directory the link points to, a source of chunks, is locked shared under
	// it too: two other switches of the link could otherwise make it neither the link's target nor
	// its previous one, and prune it while this pull reads from it.
	unlockRoot, err := lockDirWait(root)
	if err != nil {
		return res, err
	}
	st := loadLinkState(root)
	startGen := st.Gen
	if rel != "" {
		if _, err := os.Lstat(res.Dir); errors.Is(err, fs.ErrNotExist) {
			if err := os.MkdirAll(res.Dir, 0o755); err != nil {
				unlockRoot()
				return res, err
			}
			st.Gen++
			st.created(filepath.ToSlash(rel), st.Gen)
			if err := st.save(root); err != nil {
				unlockRoot()
				return res, err
			}
		}
	} else if err := os.MkdirAll(res.Dir, 0o755); err != nil {
		unlockRoot()
		return res, err
	}
	unlockDir, err := lockPullDir(res.Dir)
	if err != nil {
		unlockRoot()
		return res, err
	}
	defer unlockDir() // held until the link is switched: a prune skips the directory meanwhile
	// The caller's directory may hold another version, recorded as whole: no more, once this pull
	// starts moving its files in one after another.
	if d := st.find(filepath.ToSlash(res.Dir)); rel == "" && d != nil && (d.Name != info.Name || d.Version != info.Version) {
		st.forget(d.Dir)
		if err := st.save(root); err != nil {
			unlockRoot()
			return res, err
		}
	}
	var seeds []string
	unlockSeed := func() {}
	if cur := linkPath(link); cur != "" && !opts.NoDelta {
		if a, b := linkTarget(link), dirInfo(res.Dir); a != nil && b != nil && !os.SameFile(a, b) {
			// A pull writing into it (a repair of the served version) holds it exclusively: its
			// files are then not a source this pull can count on.
			if unlock, ok, err := tryLockShared(cur); err == nil && ok {
				unlockSeed = unlock
				seeds = append(seeds, cur)
			}
		}
	}
	unlockRoot()

	err = c.pullInto(ctx, res.Dir, seeds, files, opts.PullOptions, &res.PullResult)
	unlockSeed() // read from no more: this pull's own switch may prune it
	if err != nil {
		return res, err
	}
	// The files and the directories they were renamed into are synced; the version directory's
	// own entries, up to the link's directory, must be too before a link points at them.
	stop := filepath.Dir(root)
	if rel == "" {
		stop = filepath.Dir(res.Dir)
	}
	for d := res.Dir; ; d = filepath.Dir(d) {
		if err := syncDir(d); err != nil {
			return res, err
		}
		if d == stop || d == filepath.Dir(d) {
			break
		}
	}
	trash, err := switchLink(ctx, link, root, rel, files, startGen, opts.Keep, &res)
	for _, d := range trash {
		_ = os.RemoveAll(d) // outside the lock: removing gigabytes takes a while
	}
	return res, err
}

// switchLink records res.Dir as holding the whole version (files, verified by the pull), points
// link at it unless ctx is done, and prunes the versions directory root, under root's lock. rel is
// res.Dir's name in root, "" if it is not one of root's. It returns the directories moved aside
// for removal.
func switchLink(ctx context.Context, link, root, rel string, files []File, startGen uint64, keep int, res *LinkResult) (trash []string, err error) {
	unlock, err := lockDirWait(root)
	if err != nil {
		return nil, err
	}
	defer unlock()
	trash = removingLeftovers(root)
	st := loadLinkState(root)
	key := filepath.ToSlash(rel)
	if rel == "" {
		key = filepath.ToSlash(res.Dir)
	}
	// Recorded before the switch: a switch that does not happen (cancelled, or the link became a
	// directory) leaves a whole version that SwitchLink can switch to later.
	st.complete(key, res.Info, files)
	if err := ctx.Err(); err != nil {
		return trash, errors.Join(err, st.save(root)) // interrupted: the link stays where it was
	}
	res.Target, res.Previous, err = replaceLink(link, res.Dir)
	if err != nil {
		return trash, errors.Join(err, st.save(root))
	}
	st.Gen++
	st.switched(key, st.Gen)
	st.setPrevious(link, res.Previous)
	moved := st.prune(root, startGen, keep)
	for _, m := range moved {
		res.Removed = append(res.Removed, filepath.Join(root, filepath.FromSlash(m.from)))
		trash = append(trash, m.to)
	}
	return trash, st.save(root)
}

// removingLeftovers returns the directories in root that a removal a crash cut short left: named so
// only PullLink creates them. The caller holds root's lock.
func removingLeftovers(root string) []string {
	var trash []string
	if ents, err := os.ReadDir(root); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), removingPrefix) {
				trash = append(trash, filepath.Join(root, e.Name()))
			}
		}
	}
	return trash
}

// replaceLink points link at dir atomically: a new symbolic link beside it renamed over it, then
// the link's directory fsynced. target is what the link holds (dir relative to the link's
// directory when under it), previous the directory it pointed to before ("" if none, or dir). The
// caller holds the lock of the versions directory.
func replaceLink(link, dir string) (target, previous string, err error) {
	if err := checkLink(link); err != nil {
		return "", "", err
	}
	parent := filepath.Dir(link)
	prev, prevInfo := linkPath(link), linkTarget(link)
	target = dir
	if r, err := filepath.Rel(parent, dir); err == nil && filepath.IsLocal(r) {
		target = r
	}
	// A temporary link a crash left between its creation and its rename: hidden, but beside the
	// link, where a server scanning the directory would see it.
	tmpPrefix := "." + filepath.Base(link) + ".buffdbd-link-"
	if ents, err := os.ReadDir(parent); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), tmpPrefix) && e.Type()&fs.ModeSymlink != 0 {
				_ = os.Remove(filepath.Join(parent, e.Name()))
			}
		}
	}
	tmp := filepath.Join(parent, shortName(tmpPrefix+randomHex()))
	if err := os.Symlink(target, tmp); err != nil {
		return target, "", err
	}
	if err := os.Rename(tmp, link); err != nil {
		_ = os.Remove(tmp)
		if errors.Is(err, syscall.EISDIR) || errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.ENOTEMPTY) {
			return target, "", fmt.Errorf("%w: %s became a directory: %v", ErrNotLink, link, err)
		}
		return target, "", err
	}
	if cur := dirInfo(dir); prevInfo != nil && (cur == nil || !os.SameFile(prevInfo, cur)) {
		previous = prev
	}
	if err := syncDir(parent); err != nil {
		return target, previous, fmt.Errorf("%s points to %s, but syncing %s failed (a crash may undo the switch): %w", link, dir, parent, err)
	}
	return target, previous, nil
}

// within reports whether p is dir or inside it, by their names.
func within(dir, p string) bool {
	r, err := filepath.Rel(dir, p)
	return err == nil && (r == "." || filepath.IsLocal(r))
}

// resolveExisting returns p with the symbolic links in its longest existing prefix resolved.
func resolveExisting(p string) string {
	var rest []string
	for q := p; ; q = filepath.Dir(q) {
		if r, err := filepath.EvalSymlinks(q); err == nil {
			slices.Reverse(rest)
			return filepath.Join(append([]string{r}, rest...)...)
		}
		if q == filepath.Dir(q) {
			return p
		}
		rest = append(rest, filepath.Base(q))
	}
}

// checkLink returns an error wrapping ErrNotLink if link exists and is not a symbolic link, or is
// a symbolic link to something other than a directory: a link to a file (a server configured with
// the path of its model.onnx) would be turned into a link to a directory, breaking that server,
// with no previous version to switch back to. A dangling link is replaced.
func checkLink(link string) error {
	fi, err := os.Lstat(link)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		if t, err := os.Stat(link); err == nil && !t.IsDir() {
			dest, _ := os.Readlink(link)
			return fmt.Errorf("%w: %s is a link to %s, which is not a directory; it is left as it is", ErrNotLink, link, dest)
		}
		return nil
	}
	what := "a file"
	if fi.IsDir() {
		what = "a directory"
	}
	return fmt.Errorf("%w: %s is %s; it is left as it is", ErrNotLink, link, what)
}

// linkPath returns the directory link points to, "" if link is not a symbolic link to one.
func linkPath(link string) string {
	t, err := os.Readlink(link)
	if err != nil {
		return ""
	}
	if !filepath.IsAbs(t) {
		t = filepath.Join(filepath.Dir(link), t)
	}
	if dirInfo(t) == nil {
		return ""
	}
	return filepath.Clean(t)
}

// linkTarget returns the directory link resolves to, nil if none.
func linkTarget(link string) os.FileInfo {
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		return nil
	}
	return dirInfo(link)
}

func dirInfo(p string) os.FileInfo {
	fi, err := os.Stat(p)
	if err != nil || !fi.IsDir() {
		return nil
	}
	return fi
}

// shortName returns name, or if it is longer than a file name may be, a name of fixed length
// derived from it, with the same first and last 16 bytes so it stays recognisable.
func shortName(name string) string {
	if len(name) <= maxSegmentLen {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return name[:16] + hex.EncodeToString(sum[:16]) + name[len(name)-16:]
}

func randomHex() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// linkState is the bookkeeping of a versions directory, in its linkStateFile: which version
// directories PullLink created (only those are ever removed) or pulled into, which of them hold a
// whole version and its files (what SwitchLink checks before switching to one), when a link was
// last switched to each, and the links switched from it with their previous targets. Gen is a
// counter, not a clock: edge devices often boot with the wrong time.
type linkState struct {
	Gen   uint64            `json:"gen"`
	Dirs  []linkStateDir    `json:"dirs"`
	Links map[string]string `json:"links,omitempty"` // link -> the directory it pointed to before
}

type linkStateDir struct {
	// Dir is relative to the versions directory, slash-separated; or absolute, for a directory
	// elsewhere (LinkOptions.Dir).
	Dir string `json:"dir"`
	// Own marks a directory PullLink did not create (the caller's, or one it found in place):
	// recorded so a link can be switched back to it, never removed.
	Own      bool   `json:"own,omitempty"`
	Created  uint64 `json:"created"`            // Gen when PullLink created it
	Switched uint64 `json:"switched,omitempty"` // Gen when a link was last switched to it; 0: never
	// Complete: a pull verified and fsynced the whole version Name:Version into it, and Files are
	// its files. Until then (a pull that did not complete) the directory is no switch's target.
	Complete bool         `json:"complete,omitempty"`
	Name     string       `json:"name,omitempty"`
	Version  string       `json:"version,omitempty"`
	Files    []linkedFile `json:"files,omitempty"`
}

// linkedFile is a file of a version directory as the pull that completed it verified it.
type linkedFile struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 Digest `json:"sha256"`
}

// path returns where d is, root being the versions directory.
func (d *linkStateDir) path(root string) string {
	if p := filepath.FromSlash(d.Dir); filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(root, filepath.FromSlash(d.Dir))
}

// loadLinkState reads root's bookkeeping. A missing or unreadable file is an empty one: what it
// would have listed is then never removed, the safe side.
func loadLinkState(root string) *linkState {
	st := &linkState{}
	b, err := os.ReadFile(filepath.Join(root, linkStateFile))
	if err == nil && json.Unmarshal(b, st) != nil {
		st = &linkState{}
	}
	return st
}

// save writes the bookkeeping atomically and durably (a temporary file renamed over it).
func (st *linkState) save(root string) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(root, linkStateFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(root, linkStateFile))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return syncDir(root)
}

func (st *linkState) find(rel string) *linkStateDir {
	for i := range st.Dirs {
		if st.Dirs[i].Dir == rel {
			return &st.Dirs[i]
		}
	}
	return nil
}

func (st *linkState) created(rel string, gen uint64) {
	if d := st.find(rel); d != nil {
		*d = linkStateDir{Dir: rel, Created: gen}
		return
	}
	st.Dirs = append(st.Dirs, linkStateDir{Dir: rel, Created: gen})
}

func (st *linkState) switched(key string, gen uint64) {
	if d := st.find(key); d != nil {
		d.Switched = gen
	}
}

// complete records that the directory key (as in linkStateDir.Dir) holds the whole version info,
// with files. A directory not recorded yet was not created by PullLink: it is recorded as Own.
func (st *linkState) complete(key string, info ModelInfo, files []File) {
	d := st.find(key)
	if d == nil {
		st.Dirs = append(st.Dirs, linkStateDir{Dir: key, Own: true, Created: st.Gen})
		d = &st.Dirs[len(st.Dirs)-1]
	}
	d.Complete, d.Name, d.Version, d.Files = true, info.Name, info.Version, make([]linkedFile, 0, len(files))
	for _, f := range files {
		d.Files = append(d.Files, linkedFile{Path: f.Path, Size: f.Size, SHA256: f.SHA256})
	}
}

// forget drops the record of the directory key.
func (st *linkState) forget(key string) {
	st.Dirs = slices.DeleteFunc(st.Dirs, func(d linkStateDir) bool { return d.Dir == key })
}

// setPrevious records the directory link pointed to before its last switch ("" keeps the one
// recorded: the link pointed nowhere, or already to the new target).
func (st *linkState) setPrevious(link, previous string) {
	if st.Links == nil {
		st.Links = map[string]string{}
	}
	if previous != "" {
		st.Links[link] = previous
	} else if _, ok := st.Links[link]; !ok {
		st.Links[link] = ""
	}
}

type movedDir struct{ from, to string }

// prune moves the version directories beyond keep (see LinkOptions.Keep) out of the way, to names
// starting with removingPrefix in root, and forgets them; the caller removes them. A pull that began
// at startGen removes unswitched directories created before it.
func (st *linkState) prune(root string, startGen uint64, keep int) []movedDir {
	if keep == 0 || keep == 1 {
		keep = 2
	}
	// Never removed: what any link recorded here points to, and what it pointed to before.
	var protect []os.FileInfo
	for l, prev := range st.Links {
		if _, err := os.Lstat(l); errors.Is(err, fs.ErrNotExist) {
			delete(st.Links, l) // the link was removed: it protects nothing any more
			continue
		}
		if fi := linkTarget(l); fi != nil {
			protect = append(protect, fi)
		}
		if fi := dirInfo(prev); prev != "" && fi != nil {
			protect = append(protect, fi)
		}
	}
	dirs := slices.Clone(st.Dirs)
	slices.SortStableFunc(dirs, func(a, b linkStateDir) int { return -cmpUint(a.Switched, b.Switched) })
	var kept []linkStateDir
	var moved []movedDir
	switchedSeen := 0
	for _, d := range dirs {
		path := d.path(root)
		fi := dirInfo(path)
		if fi == nil {
			continue // removed by someone else: forget it
		}
		// Only what PullLink created in root is removed: never the caller's directory, nor
		// anything outside root a damaged or edited bookkeeping file might name.
		if d.Own || !filepath.IsLocal(filepath.FromSlash(d.Dir)) {
			kept = append(kept, d)
			continue
		}
		if d.Switched > 0 {
			switchedSeen++
		}
		switch {
		case slices.ContainsFunc(protect, func(p os.FileInfo) bool { return os.SameFile(p, fi) }),
			d.Switched > 0 && (keep < 0 || switchedSeen <= keep),
			d.Switched == 0 && d.Created > startGen:
			kept = append(kept, d)
			continue
		}
		unlock, ok, err := tryLockDir(path)
		if err != nil || !ok {
			kept = append(kept, d) // a pull is writing into it or reading from it, or a switch checks it
			continue
		}
		to := filepath.Join(root, removingPrefix+randomHex())
		err = os.Rename(path, to)
		unlock()
		if err != nil {
			kept = append(kept, d)
			continue
		}
		moved = append(moved, movedDir{from: d.Dir, to: to})
		// The model's directories that held only this version: removed while the lock keeps a
		// pull from creating a version directory in them.
		for p := filepath.Dir(path); p != root && strings.HasPrefix(p, root); p = filepath.Dir(p) {
			if os.Remove(p) != nil {
				break
			}
		}
	}
	slices.SortStableFunc(kept, func(a, b linkStateDir) int { return cmpUint(a.Created, b.Created) })
	st.Dirs = kept
	return moved
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
