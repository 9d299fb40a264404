package registry

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// SwitchOptions configure SwitchLink.
type SwitchOptions struct {
	// VersionsDir is the versions directory PullLink used for the link (LinkOptions.VersionsDir);
	// empty: its default, "."+<link's name>+".versions" beside the link, or if that holds no
	// bookkeeping, the nearest directory above the link's target whose bookkeeping records the link.
	VersionsDir string
	// Ref names the kept version to switch to, "name:version" (an alias needs the registry to be
	// resolved); empty: the directory the link pointed to before its last switch.
	Ref string
	// Verify re-hashes every file of the version against the sha256 its pull verified before
	// switching; without it each file's presence and size are checked.
	Verify bool
	// Force allows a directory the bookkeeping has no record of a completed pull into (the one
	// the link pointed to before PullLink first switched it): the caller vouches for its files. A
	// directory a pull is writing into, or whose pull did not complete, is refused even so.
	Force bool
}

// LinkVersion is a directory a link can be switched to: a version directory PullLink completed,
// or the link's target or previous target.
type LinkVersion struct {
	// Name and Version of the version it holds; empty for a directory without a record.
	Name, Version string
	Dir           string
	// Current: the link points to it. Previous: the link pointed to it before its last switch
	// (what SwitchLink switches to without a Ref).
	Current, Previous bool
	Files             int
	Bytes             int64
	// Problem says why SwitchLink would refuse it, "" if it would not: a pull is writing into
	// it, its pull did not complete, a file is missing or has another size than the version's,
	// or it has no record (switchable with SwitchOptions.Force).
	Problem string
	// Recorded: the bookkeeping has a record of a completed pull into it.
	Recorded bool
}

// SwitchLink points link at a version directory PullLink kept, atomically and with the same lock as
// PullLink's switch, without the registry: it reads nothing but the versions directory. It is how a
// device rolls back while its network is down. With opts.Ref empty it switches to the link's
// previous target, and records the one it leaves as the previous one, so a second call switches
// forward again (like `cd -`).
//
// A directory is switched to only if a pull completed it (the bookkeeping records the version's
// files, their sizes and sha256 once the pull verified them), every file is there with its
// size (opts.Verify: and its sha256), and no pull is writing into it; otherwise the error wraps
// ErrUnverified (or ErrChecksum, or ErrBusy) and names what is wrong, and the link is left as it
// is. A Ref with no kept directory, or no previous target: ErrNotFound. A link that exists and is
// not a symbolic link: ErrNotLink. If the link already points to the directory nothing changes and
// the result's Unchanged is set.
func SwitchLink(ctx context.Context, link string, opts SwitchOptions) (LinkResult, error) {
	var res LinkResult
	link, root, err := linkRoot(link, opts.VersionsDir)
	if err != nil {
		return res, err
	}
	if err := checkLink(link); err != nil {
		return res, err
	}
	var want Ref
	if opts.Ref != "" {
		if want, err = ParseRef(opts.Ref); err != nil {
			return res, err
		}
		if want.Version == "" {
			return res, fmt.Errorf("%w: %q: a switch takes name:version (an alias or a bare name is resolved by the registry)", ErrInvalid, opts.Ref)
		}
	}
	if dirInfo(root) == nil {
		return res, fmt.Errorf("%w: no versions directory %s: nothing was pulled with --link %s there (or pass the versions directory it used)", ErrNotFound, root, link)
	}

	// Pick the directory and lock it shared under the versions directory's lock: from then on no
	// prune removes it and no pull writes into it, while its files are checked without the lock
	// (re-hashing gigabytes must not hold up other switches).
	unlockRoot, err := lockDirWait(root)
	if err != nil {
		return res, err
	}
	st := loadLinkState(root)
	var rec *linkStateDir
	if want.Version != "" {
		rec = st.findVersion(root, want.Name, want.Version)
		if d := st.find(want.String()); rec == nil && d != nil && dirInfo(d.path(root)) != nil {
			rec = d // its pull did not complete: refused below, saying so
		}
		if rec == nil {
			unlockRoot()
			return res, fmt.Errorf("%w: no kept directory of %s in %s (kept: %s); pull it with the registry reachable", ErrNotFound,
				want, root, orNone(st.keptNames(root)))
		}
		res.Dir = rec.path(root)
	} else {
		res.Dir = st.Links[link]
		if res.Dir == "" || dirInfo(res.Dir) == nil {
			unlockRoot()
			if res.Dir != "" {
				return res, fmt.Errorf("%w: %s, the directory %s pointed to before, is gone", ErrNotFound, res.Dir, link)
			}
			return res, fmt.Errorf("%w: %s has no previous version recorded in %s (it was switched once or never)", ErrNotFound, link, root)
		}
		rec = st.lookup(root, dirInfo(res.Dir))
	}
	unlockDir, ok, err := tryLockShared(res.Dir)
	unlockRoot()
	if err != nil {
		return res, err
	}
	if !ok {
		return res, fmt.Errorf("%w: a pull is writing into %s; wait for it", ErrBusy, res.Dir)
	}
	defer unlockDir()
	if cur := linkTarget(link); cur != nil && os.SameFile(cur, dirInfo(res.Dir)) {
		res.Unchanged = true
	}
	if rec != nil {
		res.Info.Name, res.Info.Version = rec.ref()
		res.Files = len(rec.Files)
		for _, f := range rec.Files {
			res.Bytes += f.Size
		}
	}
	what := res.Dir
	if res.Info.Name != "" {
		what = fmt.Sprintf("%s (%s:%s)", res.Dir, res.Info.Name, res.Info.Version)
	}
	if res.Unchanged {
		// Nothing to switch. Checked only when asked to verify (a directory without a record has
		// nothing to be verified against).
		res.Target, _ = os.Readlink(link)
		if opts.Verify {
			if err := checkVersionDir(ctx, res.Dir, rec, true, true); err != nil {
				return res, fmt.Errorf("%s points to %s, which fails its check: %w", link, what, err)
			}
		}
		return res, nil
	}
	if err := checkVersionDir(ctx, res.Dir, rec, opts.Verify, opts.Force); err != nil {
		return res, fmt.Errorf("%s is left as it is: %s: %w", link, what, err)
	}

	unlockRoot, err = lockDirWait(root)
	if err != nil {
		return res, err
	}
	defer unlockRoot()
	st = loadLinkState(root) // as another switch may have left it
	res.Target, res.Previous, err = replaceLink(link, res.Dir)
	if err != nil {
		return res, err
	}
	st.Gen++
	if rec := st.lookup(root, dirInfo(res.Dir)); rec != nil {
		rec.Switched = st.Gen
	}
	st.setPrevious(link, res.Previous)
	return res, st.save(root)
}

// LinkVersions lists the directories link can be switched to with SwitchLink (versionsDir as
// SwitchOptions.VersionsDir): the version directories a pull completed in the versions directory
// (and those of PullLink's LinkOptions.Dir), and the link's target and previous target, most
// recently switched to first. Each says whether SwitchLink would refuse it and why, from the
// presence and size of its files. A missing versions directory lists the link's target alone.
func LinkVersions(link, versionsDir string) ([]LinkVersion, error) {
	link, root, err := linkRoot(link, versionsDir)
	if err != nil {
		return nil, err
	}
	if err := checkLink(link); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(link); errors.Is(err, fs.ErrNotExist) && dirInfo(root) == nil {
		// A mistyped path must not look like a link with nothing kept.
		return nil, fmt.Errorf("%w: no link %s and no versions directory %s: nothing was pulled with --link there", ErrNotFound, link, root)
	}
	st := &linkState{}
	if dirInfo(root) != nil {
		// Under the lock: a switch or prune is then not half done.
		unlock, err := lockDirWait(root)
		if err != nil {
			return nil, err
		}
		st = loadLinkState(root)
		unlock()
	}
	cur, prev := linkTarget(link), dirInfo(st.Links[link])
	if st.Links[link] == "" {
		prev = nil
	}
	dirs := slices.Clone(st.Dirs)
	slices.SortStableFunc(dirs, func(a, b linkStateDir) int { return -cmpUint(max(a.Switched, a.Created), max(b.Switched, b.Created)) })
	var out []LinkVersion
	seen := func(fi os.FileInfo) bool {
		return slices.ContainsFunc(out, func(v LinkVersion) bool { return os.SameFile(dirInfo(v.Dir), fi) })
	}
	add := func(dir string, rec *linkStateDir) {
		fi := dirInfo(dir)
		if fi == nil || seen(fi) {
			return
		}
		v := LinkVersion{Dir: dir, Current: cur != nil && os.SameFile(cur, fi), Previous: prev != nil && os.SameFile(prev, fi)}
		if rec != nil {
			v.Name, v.Version = rec.ref()
			v.Files, v.Recorded = len(rec.Files), rec.Complete
			for _, f := range rec.Files {
				v.Bytes += f.Size
			}
		}
		if unlock, ok, err := tryLockShared(dir); err == nil && !ok {
			v.Problem = "a pull is writing into it"
		} else {
			if err == nil {
				unlock()
			}
			if err := checkVersionDir(context.Background(), dir, rec, false, false); err != nil {
				v.Problem = problemOf(err)
			}
		}
		out = append(out, v)
	}
	if cur != nil {
		p := linkPath(link)
		add(p, st.lookup(root, cur))
	}
	if prev != nil {
		add(st.Links[link], st.lookup(root, prev))
	}
	for i := range dirs {
		add(dirs[i].path(root), &dirs[i])
	}
	return out, nil
}

// problemOf is what is wrong, from a checkVersionDir error: without the sentinel's prefix and the
// advice that follows.
func problemOf(err error) string {
	msg := strings.TrimPrefix(err.Error(), ErrUnverified.Error()+": ")
	msg, _, _ = strings.Cut(msg, "; ")
	return msg
}

// linkRoot returns link as an absolute path and its versions directory: versionsDir; else
// PullLink's default if it has bookkeeping; else the nearest directory above the link's target with
// bookkeeping that records the link (the pulls used a --versions the operator need not remember);
// else PullLink's default.
func linkRoot(link, versionsDir string) (string, string, error) {
	link, err := filepath.Abs(link)
	if err != nil {
		return "", "", err
	}
	if versionsDir != "" {
		root, err := filepath.Abs(versionsDir)
		return link, root, err
	}
	root := filepath.Join(filepath.Dir(link), shortName("."+filepath.Base(link)+".versions"))
	if _, err := os.Stat(filepath.Join(root, linkStateFile)); err == nil {
		return link, root, nil
	}
	if t := linkPath(link); t != "" {
		for d := filepath.Dir(t); d != filepath.Dir(d); d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, linkStateFile)); err != nil {
				continue
			}
			if _, ok := loadLinkState(d).Links[link]; ok {
				return link, d, nil
			}
		}
	}
	return link, root, nil
}

// checkVersionDir checks that dir holds the version rec records as complete: every file present
// with its size, and with verify its sha256. Without a record (rec nil, or a directory PullLink
// switched to before it recorded files) it fails unless force; one whose pull did not complete
// fails always. The error says what is wrong, not which directory.
func checkVersionDir(ctx context.Context, dir string, rec *linkStateDir, verify, force bool) error {
	switch {
	case rec != nil && !rec.Own && !rec.Complete && rec.Switched == 0:
		return fmt.Errorf("%w: its pull did not complete (interrupted, or still running); pull the version again to finish it", ErrUnverified)
	case rec == nil || !rec.Complete:
		if force {
			return nil
		}
		return fmt.Errorf("%w: no record of a completed pull into it (not pulled by buffdbd, or before it kept records); force the switch if you know it is whole", ErrUnverified)
	}
	var bad []string
	for _, f := range rec.Files {
		p := filepath.Join(dir, filepath.FromSlash(f.Path))
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			bad = append(bad, f.Path+" is missing")
		case err != nil:
			bad = append(bad, fmt.Sprintf("%s: %v", f.Path, err))
		case !fi.Mode().IsRegular():
			bad = append(bad, f.Path+" is not a regular file")
		case fi.Size() != f.Size:
			bad = append(bad, fmt.Sprintf("%s has %d bytes, not %d", f.Path, fi.Size(), f.Size))
		}
		if len(bad) == 3 { // enough to tell a damaged directory from one wrong file
			break
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %s; pull the version again", ErrUnverified, strings.Join(bad, ", "))
	}
	if !verify {
		return nil
	}
	for _, f := range rec.Files {
		sum, err := hashFile(ctx, filepath.Join(dir, filepath.FromSlash(f.Path)))
		if err != nil {
			return err
		}
		if sum != f.SHA256 {
			return fmt.Errorf("%w: %s has sha256 %s, the version's is %s; pull the version again", ErrChecksum, f.Path, sum, f.SHA256)
		}
	}
	return nil
}

// hashFile returns the sha256 of the file at p, stopping when ctx is done.
func hashFile(ctx context.Context, p string) (Digest, error) {
	f, err := os.Open(p)
	if err != nil {
		return Digest{}, err
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for {
		if err := ctx.Err(); err != nil {
			return Digest{}, err
		}
		n, err := f.Read(buf)
		h.Write(buf[:n])
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Digest{}, err
		}
	}
	return Digest(h.Sum(nil)), nil
}

// findVersion returns the record of a complete directory of name:version, the most recently
// switched to if there are several (a version directory and a LinkOptions.Dir), nil if none.
func (st *linkState) findVersion(root, name, version string) *linkStateDir {
	var best *linkStateDir
	for i := range st.Dirs {
		d := &st.Dirs[i]
		if d.Name != name || d.Version != version || !d.Complete || dirInfo(d.path(root)) == nil {
			continue
		}
		if best == nil || d.Switched > best.Switched {
			best = d
		}
	}
	return best
}

// ref returns the name and version d holds: recorded once complete, else from the name of a
// version directory PullLink created (<name>:<version>); "" if neither.
func (d *linkStateDir) ref() (name, version string) {
	if d.Name != "" || d.Own {
		return d.Name, d.Version
	}
	if i := strings.LastIndexByte(d.Dir, ':'); i > 0 {
		return d.Dir[:i], d.Dir[i+1:]
	}
	return "", ""
}

// lookup returns the record of the directory fi, nil if none.
func (st *linkState) lookup(root string, fi os.FileInfo) *linkStateDir {
	if fi == nil {
		return nil
	}
	for i := range st.Dirs {
		if di := dirInfo(st.Dirs[i].path(root)); di != nil && os.SameFile(di, fi) {
			return &st.Dirs[i]
		}
	}
	return nil
}

// keptNames lists the versions of the complete directories, for an error message.
func (st *linkState) keptNames(root string) string {
	var names []string
	for _, d := range st.Dirs {
		if d.Complete && dirInfo(d.path(root)) != nil {
			names = append(names, d.Name+":"+d.Version)
		}
	}
	return strings.Join(names, ", ")
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
