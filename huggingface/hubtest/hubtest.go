// Package hubtest is a Hugging Face Hub emulator for tests and benchmarks: a real net/http server
// with two listeners, the Hub (API, resolve redirects, small files) and a CDN (signed LFS URLs with
// Range support), behaving like the real Hub as documented in issue 4 — relative 307s, absolute
// 302s carrying X-Linked-* headers, X-Error-Code errors, gated and private repositories, tree
// pagination with Link headers — plus fault injection (429s, cut connections, stalls, corrupted
// bytes, expired signatures, per-connection throttling, misbehaving caches, servers without Range
// support) and counters of what was served.
package hubtest

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// FileSpec is one file of a commit. LFS files are served from the CDN behind a 302; regular files
// from the Hub behind a relative 307, as the real Hub does.
type FileSpec struct {
	Path    string
	Content Content
	LFS     bool
}

// RepoOptions describe a repository.
type RepoOptions struct {
	Gated       bool // downloads need a token whose user was Granted access
	Private     bool // invisible without a granted token
	LibraryName string
	PipelineTag string
	Tags        []string
	Description string // served as cardData.description
}

// Request is one request the emulator received.
type Request struct {
	Time   time.Time
	Server string // "hub" or "cdn"
	Method string
	Path   string // escaped path
	Auth   string // Authorization header
	Range  string
}

// Server is the emulator. Configure it before or during a test; all methods are safe for
// concurrent use.
type Server struct {
	Hub *httptest.Server
	CDN *httptest.Server

	mu       sync.Mutex
	repos    map[string]*repo
	renamed  map[string]string
	tokens   map[string]string // token -> user
	seq      int
	sigGen   int // signatures issued before this generation are expired
	log      []Request
	pageSize int

	rateLimit  int    // next n Hub requests get 429
	retryAfter string // their Retry-After
	rateHeader string // their RateLimit header
	cuts       []int64
	stalls     []stall
	corrupt    map[string]bool  // blob id -> flip a byte
	short      map[string]int64 // blob id -> the CDN has only this many bytes
	throttle   int64            // CDN bytes/s per connection, 0 = unlimited
	statusNext []int            // next CDN responses get these statuses
	quirks     []Quirk          // next CDN bodies misbehave so
	noRangeCDN bool             // the CDN answers every Range request with the whole body
	noRangeHub bool             // so does the Hub's file download (resolve-cache)
	editTree   func([]TreeEntry) []TreeEntry

	bytesServed   atomic.Int64
	cdnAuth       atomic.Int64
	rangesIgnored atomic.Int64
}

type stall struct {
	after int64
	d     time.Duration
}

type repo struct {
	id      string
	opts    RepoOptions
	granted map[string]bool
	refs    map[string]string
	commits map[string]*commit
}

type commit struct {
	sha   string
	files []*file
}

type file struct {
	path    string
	content Content
	lfs     bool
	sha256  string
	blobID  string // git sha1 of the content, or of the LFS pointer
	pointer int
}

// New starts an emulator on two loopback listeners. Close it when done.
func New() *Server {
	s := &Server{repos: map[string]*repo{}, renamed: map[string]string{}, tokens: map[string]string{}, corrupt: map[string]bool{}, short: map[string]int64{}, pageSize: 50}
	s.Hub = httptest.NewServer(http.HandlerFunc(s.serveHub))
	s.CDN = httptest.NewServer(http.HandlerFunc(s.serveCDN))
	return s
}

// Close stops both listeners.
func (s *Server) Close() {
	s.Hub.CloseClientConnections()
	s.CDN.CloseClientConnections()
	s.Hub.Close()
	s.CDN.Close()
}

// Endpoint is the Hub URL to pass as the client endpoint.
func (s *Server) Endpoint() string { return s.Hub.URL }

// AddRepo creates a repository (ids are "org/name" or a legacy single segment).
func (s *Server) AddRepo(id string, o RepoOptions) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.repos[id] = &repo{id: id, opts: o, granted: map[string]bool{}, refs: map[string]string{}, commits: map[string]*commit{}}
}

// Commit records a new commit holding exactly files and points ref (a branch, tag or refs/pr/N)
// at it. It returns the 40-hex commit id. Hashes of the content are computed here.
func (s *Server) Commit(repoID, ref string, files []FileSpec) string {
	c := &commit{}
	for _, fs := range files {
		f := &file{path: fs.Path, content: fs.Content, lfs: fs.LFS}
		h256, h1 := sha256.New(), sha1.New()
		fmt.Fprintf(h1, "blob %d\x00", fs.Content.Size())
		io.Copy(io.MultiWriter(h256, h1), io.NewSectionReader(fs.Content, 0, fs.Content.Size()))
		f.sha256 = hex.EncodeToString(h256.Sum(nil))
		f.blobID = hex.EncodeToString(h1.Sum(nil))
		if fs.LFS {
			ptr := fmt.Sprintf("version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n", f.sha256, fs.Content.Size())
			f.pointer = len(ptr)
			f.blobID = GitBlobSHA1([]byte(ptr))
		}
		c.files = append(c.files, f)
	}
	sort.Slice(c.files, func(i, j int) bool { return c.files[i].path < c.files[j].path })
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.repos[repoID]
	if r == nil {
		panic("hubtest: Commit on unknown repo " + repoID)
	}
	s.seq++
	sum := sha1.Sum([]byte(fmt.Sprintf("%s/%d", repoID, s.seq)))
	c.sha = hex.EncodeToString(sum[:])
	r.commits[c.sha] = c
	r.refs[ref] = c.sha
	return c.sha
}

// GitBlobSHA1 is git's object id of a blob: sha1("blob <len>\0" + data), hex.
func GitBlobSHA1(data []byte) string {
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", len(data))
	h.Write(data)
	return hex.EncodeToString(h.Sum(nil))
}

// SetRef points ref at an existing commit.
func (s *Server) SetRef(repoID, ref, sha string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.repos[repoID].refs[ref] = sha
}

// AddToken makes token valid, belonging to user.
func (s *Server) AddToken(token, user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[token] = user
}

// Grant gives user access to a gated or private repository.
func (s *Server) Grant(repoID, user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.repos[repoID].granted[user] = true
}

// Rename moves a repository; requests for the old id get a 307 to the new one.
func (s *Server) Rename(oldID, newID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.repos[oldID]
	delete(s.repos, oldID)
	r.id = newID
	s.repos[newID] = r
	s.renamed[oldID] = newID
}

// SetTreePageSize sets how many entries one tree API page holds (default 50).
func (s *Server) SetTreePageSize(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pageSize = n
}

// RateLimitNext makes the next n Hub requests answer 429 with the given Retry-After and RateLimit
// header values (either may be empty).
func (s *Server) RateLimitNext(n int, retryAfter, rateLimit string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rateLimit, s.retryAfter, s.rateHeader = n, retryAfter, rateLimit
}

// CutNext makes the next len(after) file bodies (CDN or Hub) close the connection after the
// given numbers of bytes.
func (s *Server) CutNext(after ...int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cuts = append(s.cuts, after...)
}

// StallNext makes the next n file bodies stop sending after `after` bytes for d (or until the
// client gives up).
func (s *Server) StallNext(n int, after int64, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.stalls = append(s.stalls, stall{after, d})
	}
}

// StatusNext makes the next CDN responses answer these statuses instead of the content.
func (s *Server) StatusNext(codes ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.statusNext = append(s.statusNext, codes...)
}

// Quirk is a way a CDN or proxy misbehaves when serving a file body, as seen in the field.
type Quirk int

const (
	// QuirkIgnoreRange answers a Range request with 200 and the whole body.
	QuirkIgnoreRange Quirk = iota + 1
	// QuirkNoContentRange answers a Range request with 206 but no Content-Range header.
	QuirkNoContentRange
	// QuirkOtherRange answers a Range request with 206 for bytes one block later than asked,
	// saying so in Content-Range (a cache serving a neighbouring object range).
	QuirkOtherRange
	// QuirkGzip gzips the body and says Content-Encoding: gzip although the client asked for
	// identity.
	QuirkGzip
	// QuirkChunked sends no Content-Length (chunked transfer encoding).
	QuirkChunked
	// QuirkLongBody sends garbage after the bytes asked for, past the announced length.
	QuirkLongBody
)

// ClearFaults drops the faults queued and not yet used (CutNext, StallNext, StatusNext, QuirkNext,
// RateLimitNext), so a test can interrupt a download with them and then resume it cleanly.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cuts, s.stalls, s.statusNext, s.quirks, s.rateLimit = nil, nil, nil, nil, 0
}

// IgnoreRanges makes the CDN (cdn) and the Hub's downloads of regular files (hub) answer every
// Range request with 200 and the whole body, without Accept-Ranges, as an HTTP proxy or a simple
// mirror without range support does every time (QuirkIgnoreRange is a single such answer).
// false restores range support.
func (s *Server) IgnoreRanges(cdn, hub bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.noRangeCDN, s.noRangeHub = cdn, hub
}

// RangesIgnored counts file bodies served whole to a request that asked for a Range (by
// IgnoreRanges or QuirkIgnoreRange).
func (s *Server) RangesIgnored() int64 { return s.rangesIgnored.Load() }

// QuirkNext makes the next len(q) CDN file bodies misbehave as q says, one quirk each.
func (s *Server) QuirkNext(q ...Quirk) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.quirks = append(s.quirks, q...)
}

// TreeEntry is one entry of the tree API's answer (GET /api/models/{repo}/tree/{rev}).
type TreeEntry struct {
	Type string   `json:"type"` // "file" or "directory"
	OID  string   `json:"oid"`  // git blob sha1
	Size int64    `json:"size"`
	Path string   `json:"path"`
	LFS  *TreeLFS `json:"lfs,omitempty"`
}

// TreeLFS is the lfs member of a TreeEntry.
type TreeLFS struct {
	OID         string `json:"oid"` // sha256
	Size        int64  `json:"size"`
	PointerSize int    `json:"pointerSize"`
}

// EditTree makes the tree API answer edit(entries) instead of the commit's entries (before
// pagination), to serve listings the real Hub should never send: duplicates, bad hashes, sizes.
// Downloads still serve the commit's real files. nil restores the truthful listing.
func (s *Server) EditTree(edit func([]TreeEntry) []TreeEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.editTree = edit
}

// Corrupt flips one byte in the middle of the named file whenever it is served. The CDN is
// content-addressed, so other files with the same content are corrupted too.
func (s *Server) Corrupt(repoID, path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.repos[repoID].commits {
		for _, f := range c.files {
			if f.path == path {
				s.corrupt[f.blobID] = true
			}
		}
	}
}

// Shorten makes the servers hold only the first n bytes of the named file while the Hub's metadata
// still announces its full size (a truncated object on the CDN).
func (s *Server) Shorten(repoID, path string, n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.repos[repoID].commits {
		for _, f := range c.files {
			if f.path == path {
				s.short[f.blobID] = n
			}
		}
	}
}

// ExpireSignatures makes every CDN URL issued so far answer 403, as signed URLs do after their
// lifetime.
func (s *Server) ExpireSignatures() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sigGen++
}

// Throttle limits each CDN response to bytesPerSec (0: unlimited).
func (s *Server) Throttle(bytesPerSec int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.throttle = bytesPerSec
}

// BytesServed is the number of file body bytes sent by both servers.
func (s *Server) BytesServed() int64 { return s.bytesServed.Load() }

// CDNAuthorizations counts CDN requests that carried an Authorization header (should be 0).
func (s *Server) CDNAuthorizations() int64 { return s.cdnAuth.Load() }

// Requests returns the request log.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.log...)
}

// LFSURL returns a currently valid CDN URL for an LFS file (for benchmarks comparing with curl).
func (s *Server) LFSURL(repoID, ref, path string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.repos[repoID]
	c := r.commits[r.refs[ref]]
	for _, f := range c.files {
		if f.path == path {
			return s.signedURL(f)
		}
	}
	return ""
}

func (s *Server) signedURL(f *file) string {
	return fmt.Sprintf("%s/lfs/%s?gen=%d&sig=%s", s.CDN.URL, f.sha256, s.sigGen, f.blobID[:16])
}

func (s *Server) record(server string, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log = append(s.log, Request{Time: time.Now(), Server: server, Method: r.Method, Path: r.URL.EscapedPath(), Auth: r.Header.Get("Authorization"), Range: r.Header.Get("Range")})
}

func hubError(w http.ResponseWriter, status int, code, msg string) {
	if code != "" {
		w.Header().Set("X-Error-Code", code)
	}
	w.Header().Set("X-Error-Message", msg)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, "{%q:%q}", "error", msg)
}

func (s *Server) takeRateLimit(w http.ResponseWriter) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rateLimit <= 0 {
		return false
	}
	s.rateLimit--
	if s.retryAfter != "" {
		w.Header().Set("Retry-After", s.retryAfter)
	}
	if s.rateHeader != "" {
		w.Header().Set("RateLimit", s.rateHeader)
	}
	hubError(w, http.StatusTooManyRequests, "", "You have been rate-limited")
	return true
}

// splitRepo splits "org/name/rest..." where the repo id may have one or two segments and kind is
// the marker after it ("revision", "tree", "resolve"). It returns the id and the rest after kind.
func splitRepo(p, kind string) (id, rest string, ok bool) {
	segs := strings.Split(p, "/")
	for n := 1; n <= 2 && n < len(segs); n++ {
		if segs[n] == kind {
			return strings.Join(segs[:n], "/"), strings.Join(segs[n+1:], "/"), true
		}
	}
	return "", "", false
}

// access checks the Authorization header against the repository's visibility. For downloads of a
// gated repository it also checks the grant.
func (s *Server) access(w http.ResponseWriter, r *http.Request, id string, download bool) (*repo, bool) {
	auth := r.Header.Get("Authorization")
	user, hasToken := "", false
	s.mu.Lock()
	if tok, ok := strings.CutPrefix(auth, "Bearer "); ok {
		u, valid := s.tokens[tok]
		if !valid {
			s.mu.Unlock()
			hubError(w, http.StatusUnauthorized, "", "Invalid credentials in Authorization header")
			return nil, false
		}
		user, hasToken = u, true
	}
	rp := s.repos[id]
	s.mu.Unlock()
	notFound := func() {
		status := http.StatusNotFound
		if !hasToken {
			status = http.StatusUnauthorized
		}
		hubError(w, status, "RepoNotFound", "Repository Not Found for url: "+r.URL.Path+". Please make sure you specified the correct repo_id and repo_type. If you are trying to access a private or gated repo, make sure you are authenticated.")
	}
	if rp == nil || rp.opts.Private && !rp.granted[user] {
		notFound()
		return nil, false
	}
	if download && rp.opts.Gated && !rp.granted[user] {
		if !hasToken {
			hubError(w, http.StatusUnauthorized, "GatedRepo", "Access to model "+id+" is restricted. You must have access to it and be authenticated to access it. Please log in.")
		} else {
			hubError(w, http.StatusForbidden, "GatedRepo", "Access to model "+id+" is restricted and you are not in the authorized list. Visit https://huggingface.co/"+id+" to ask for access.")
		}
		return nil, false
	}
	return rp, true
}

func (s *Server) lookup(rp *repo, rev string) *commit {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := rp.commits[rev]; ok {
		return c
	}
	if sha, ok := rp.refs[rev]; ok {
		return rp.commits[sha]
	}
	return nil
}

func unescape(p string) string {
	// PathUnescape keeps a literal "+" and decodes %2F, as a path segment needs.
	u, err := urlPathUnescape(p)
	if err != nil {
		return "\x00invalid"
	}
	return u
}
