package huggingface

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultEndpoint is the public Hub.
const DefaultEndpoint = "https://huggingface.co"

// maxRedirects bounds redirect chains; the Hub uses at most two (rename, then CDN).
const maxRedirects = 10

// maxAPIBody bounds an API JSON answer read into memory. A tree page of 1000 entries is ~300 KB;
// 64 MiB leaves room for huge repos while keeping a hostile server from exhausting memory.
const maxAPIBody = 64 << 20

// ClientOptions configure NewClient. Zero fields take the documented defaults.
type ClientOptions struct {
	Endpoint  string // Hub base URL; default DefaultEndpoint
	Token     string // bearer token, surrounding white space ignored; sent only to the Endpoint's host
	UserAgent string // default "buffdbd"
	// Transport carries every request; default a clone of http.DefaultTransport with compression
	// disabled (we always send Accept-Encoding: identity so a CDN honours Range) and HTTP/1.1
	// only (each byte range on a connection of its own).
	Transport http.RoundTripper
	Backoff   Backoff
	// Observer, if set, is told about retries (RetryObserved) as they happen.
	Observer Observer
}

// Client talks to the Hub's HTTP API. It is safe for concurrent use.
type Client struct {
	endpoint *url.URL
	token    string
	ua       string
	http     *http.Client
	backoff  Backoff
	obs      Observer
}

// NewClient returns a Client. The only error is a malformed Endpoint (not absolute http(s)).
func NewClient(o ClientOptions) (*Client, error) {
	ep := o.Endpoint
	if ep == "" {
		ep = DefaultEndpoint
	}
	u, err := url.Parse(strings.TrimRight(ep, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("hugging face endpoint %q: want an absolute http(s) URL", ep)
	}
	tr := o.Transport
	if tr == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.DisableCompression = true
		// One connection per byte range in flight; the default of 2 idle per host would make
		// every range after the first pair pay a new TCP+TLS handshake.
		t.MaxIdleConnsPerHost = 64
		t.ResponseHeaderTimeout = 60 * time.Second
		// HTTP/1.1 only. Over HTTPS the Hub's CDN offers HTTP/2, which would multiplex every
		// byte range on one TCP connection: one congestion window and one per-connection CDN
		// throttle for the whole download, and one lost packet stalling all ranges. Parallel
		// ranges are worth having only on parallel connections, as hf_transfer and aria2 use.
		var protos http.Protocols
		protos.SetHTTP1(true)
		t.Protocols = &protos
		tr = t
	}
	ua := o.UserAgent
	if ua == "" {
		ua = "buffdbd"
	}
	return &Client{
		endpoint: u,
		// As huggingface_hub does: a token read from a file or pasted keeps its line end, which
		// no header may carry (the request would fail before reaching the network).
		token: strings.TrimSpace(o.Token),
		ua:    ua,
		// Redirects are followed by hand: metadata lives on the redirect responses themselves,
		// and the token must never follow a redirect to another host.
		http: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}},
		backoff: o.Backoff.withDefaults(),
		obs:     o.Observer,
	}, nil
}

// Endpoint returns the Hub base URL in use, without credentials a mirror's URL may carry
// (user:password@): it ends up in model metadata and messages.
func (c *Client) Endpoint() string { return redact(c.endpoint) }

// File is one file of a repository revision, as listed by the Hub.
type File struct {
	Path   string // as listed; validated with registry.CleanPath rules before use
	Size   int64  // bytes of the real content (for LFS files, the LFS object's size)
	BlobID string // git blob sha1 (hex) of the file in the repo (for LFS files, of the pointer)
	LFS    *LFS   // nil for regular files
}

// LFS describes the large-file object behind an LFS pointer.
type LFS struct {
	SHA256      string // hex
	Size        int64
	PointerSize int64
}

// RepoInfo is what the Hub says about a repository at a revision.
type RepoInfo struct {
	ID          string   `json:"id"`
	Commit      string   `json:"sha"`
	LibraryName string   `json:"library_name"`
	PipelineTag string   `json:"pipeline_tag"`
	Tags        []string `json:"tags"`
	Gated       any      `json:"gated"` // false, "auto" or "manual"
	CardData    struct {
		License  any    `json:"license"`
		Language any    `json:"language"`
		Desc     string `json:"description"`
	} `json:"cardData"`
	LastModified string `json:"lastModified"`
	Siblings     []struct {
		RFilename string `json:"rfilename"`
		Size      int64  `json:"size"`
		BlobID    string `json:"blobId"`
		LFS       *struct {
			SHA256      string `json:"sha256"`
			Size        int64  `json:"size"`
			PointerSize int64  `json:"pointerSize"`
		} `json:"lfs"`
	} `json:"siblings"`
}

// escapeAll percent-encodes everything but RFC 3986 unreserved characters, like Python's
// quote(s, safe=""): the revision "refs/pr/1" becomes "refs%2Fpr%2F1", one path segment.
func escapeAll(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// escapePath escapes each '/'-separated segment of p, keeping the slashes.
func escapePath(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = escapeAll(s)
	}
	return strings.Join(segs, "/")
}

// Revision resolves rev (branch, tag, PR ref or commit) of repo to its commit and metadata.
// Errors: ErrRepoNotFound, ErrRevisionNotFound, ErrGated, ErrUnauthorized, ErrRateLimited,
// ErrOffline, ErrProtocol.
func (c *Client) Revision(ctx context.Context, repo, rev string) (*RepoInfo, error) {
	u := c.endpoint.String() + "/api/models/" + repo + "/revision/" + escapeAll(rev) + "?blobs=true"
	var info RepoInfo
	if _, err := c.getJSON(ctx, u, ErrRepoNotFound, &info); err != nil {
		return nil, fmt.Errorf("resolve %s@%s: %w", repo, rev, err)
	}
	if !IsCommit(info.Commit) {
		return nil, fmt.Errorf("resolve %s@%s: %w: commit id %q is not 40 hex characters", repo, rev, ErrProtocol, info.Commit)
	}
	return &info, nil
}

// treeEntry is one entry of GET /api/models/{repo}/tree/{rev}.
type treeEntry struct {
	Type string `json:"type"`
	OID  string `json:"oid"`
	Size int64  `json:"size"`
	Path string `json:"path"`
	LFS  *struct {
		OID         string `json:"oid"`
		Size        int64  `json:"size"`
		PointerSize int64  `json:"pointerSize"`
	} `json:"lfs"`
}

// maxTreePages stops a server whose Link headers loop from keeping us busy forever.
const maxTreePages = 10000

// ListFiles lists every file of repo at commit, following the tree API's pagination
// (Link: <...>; rel="next"). Paths are returned as the Hub sent them; the caller validates them.
func (c *Client) ListFiles(ctx context.Context, repo, commit string) ([]File, error) {
	next := c.endpoint.String() + "/api/models/" + repo + "/tree/" + escapeAll(commit) + "?recursive=true&expand=false"
	var files []File
	// A Link back to a page already read would repeat the listing until maxTreePages, holding
	// every copy in memory.
	seen := map[string]bool{pageKey(next): true}
	for page := 0; next != ""; page++ {
		if page >= maxTreePages {
			return nil, fmt.Errorf("list files of %s@%s: %w: more than %d pages", repo, commit, ErrProtocol, maxTreePages)
		}
		var entries []treeEntry
		resp, err := c.getJSON(ctx, next, ErrRevisionNotFound, &entries)
		if err != nil {
			return nil, fmt.Errorf("list files of %s@%s: %w", repo, commit, err)
		}
		for _, e := range entries {
			if e.Type != "file" {
				continue
			}
			f := File{Path: e.Path, Size: e.Size, BlobID: e.OID}
			if e.LFS != nil {
				f.LFS = &LFS{SHA256: e.LFS.OID, Size: e.LFS.Size, PointerSize: e.LFS.PointerSize}
				f.Size = e.LFS.Size
			}
			files = append(files, f)
		}
		next = ""
		if link := nextLink(resp.Header); link != "" {
			ref, err := url.Parse(link)
			if err != nil {
				return nil, fmt.Errorf("list files of %s@%s: %w: bad Link %q", repo, commit, ErrProtocol, link)
			}
			nu := resp.Request.URL.ResolveReference(ref)
			if nu.Host != c.endpoint.Host {
				// Pagination must stay on the Hub: a Link elsewhere would leak the token.
				return nil, fmt.Errorf("list files of %s@%s: %w: pagination link to another host %s", repo, commit, ErrProtocol, nu.Host)
			}
			next = nu.String()
			if seen[pageKey(next)] {
				return nil, fmt.Errorf("list files of %s@%s: %w: pagination links back to a page already read", repo, commit, ErrProtocol)
			}
			seen[pageKey(next)] = true
		}
	}
	return files, nil
}

// pageKey identifies a page URL: query parameters in any order name the same page.
func pageKey(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	p.RawQuery, p.Fragment = p.Query().Encode(), ""
	return p.String()
}

// nextLink extracts the rel="next" target of an RFC 8288 Link header.
func nextLink(h http.Header) string {
	for _, v := range h.Values("Link") {
		for _, part := range strings.Split(v, ",") {
			part = strings.TrimSpace(part)
			lt, gt := strings.IndexByte(part, '<'), strings.IndexByte(part, '>')
			if lt != 0 || gt < 0 {
				continue
			}
			for _, p := range strings.Split(part[gt+1:], ";") {
				k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
				if strings.EqualFold(k, "rel") && strings.Trim(v, `"`) == "next" {
					return part[1:gt]
				}
			}
		}
	}
	return ""
}

// getJSON GETs u (following redirects by hand, retrying transient failures) and decodes the JSON
// body into v. notFound is the sentinel for a 404 without X-Error-Code.
func (c *Client) getJSON(ctx context.Context, u string, notFound error, v any) (*http.Response, error) {
	resp, _, err := c.follow(ctx, http.MethodGet, u, notFound, false)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAPIBody+1))
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s: %v", ErrOffline, redact(resp.Request.URL), err)
	}
	if len(body) > maxAPIBody {
		return nil, fmt.Errorf("%w: %s answered more than %d bytes", ErrProtocol, redact(resp.Request.URL), maxAPIBody)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrProtocol, redact(resp.Request.URL), err)
	}
	return resp, nil
}

// Location is where a file's bytes can be fetched, and what the Hub said about them.
type Location struct {
	URL    string // final URL (a signed CDN URL for LFS files)
	Auth   bool   // whether URL is on the Hub's host, so the token may be sent
	Size   int64  // X-Linked-Size or Content-Length; -1 if unknown
	ETag   string // X-Linked-Etag (sha256 for LFS) or ETag, unquoted
	Commit string // X-Repo-Commit, if sent
}

// Resolve finds where to download path of repo at commit: a HEAD on /{repo}/resolve/{commit}/{path},
// following same-host (relative) redirects with the token and stopping at the first redirect to
// another host (the CDN), whose Location is returned with the metadata of the redirect response.
func (c *Client) Resolve(ctx context.Context, repo, commit, path string) (Location, error) {
	u := c.endpoint.String() + "/" + repo + "/resolve/" + escapeAll(commit) + "/" + escapePath(path)
	resp, loc, err := c.follow(ctx, http.MethodHead, u, ErrEntryNotFound, true)
	if err != nil {
		return Location{}, fmt.Errorf("resolve %s: %w", path, err)
	}
	resp.Body.Close()
	return loc, nil
}

// follow sends method to u, following redirects by hand: the token goes only to the endpoint's
// host, X-Linked-* metadata is collected from every redirect, and with stopAtCDN the chain stops
// at the first cross-host redirect (its target is the Location). Transient failures are retried.
// On success the response (status 2xx, or the cross-host redirect) is returned unread.
func (c *Client) follow(ctx context.Context, method, u string, notFound error, stopAtCDN bool) (*http.Response, Location, error) {
	loc := Location{Size: -1}
	for hops := 0; ; hops++ {
		if hops > maxRedirects {
			return nil, loc, fmt.Errorf("%w: more than %d redirects from %s", ErrProtocol, maxRedirects, u)
		}
		cur, err := url.Parse(u)
		if err != nil {
			return nil, loc, fmt.Errorf("%w: bad URL %q", ErrProtocol, u)
		}
		auth := cur.Host == c.endpoint.Host && cur.Scheme == c.endpoint.Scheme
		resp, err := c.do(ctx, method, u, auth, nil, notFound)
		if err != nil {
			return nil, loc, err
		}
		mergeMeta(&loc, resp.Header)
		if resp.StatusCode >= 300 && resp.StatusCode < 400 {
			resp.Body.Close()
			target, err := cur.Parse(resp.Header.Get("Location"))
			if err != nil || resp.Header.Get("Location") == "" {
				return nil, loc, fmt.Errorf("%w: redirect without a valid Location from %s", ErrProtocol, redact(cur))
			}
			if target.Scheme != "http" && target.Scheme != "https" {
				return nil, loc, fmt.Errorf("%w: redirect to %s URL", ErrProtocol, target.Scheme)
			}
			if stopAtCDN && target.Host != c.endpoint.Host {
				loc.URL, loc.Auth = target.String(), false
				return resp, loc, nil
			}
			u = target.String()
			continue
		}
		loc.URL, loc.Auth = u, auth
		if loc.Size < 0 && resp.ContentLength >= 0 && method == http.MethodHead {
			loc.Size = resp.ContentLength
		}
		if loc.ETag == "" {
			loc.ETag = strings.Trim(strings.TrimPrefix(resp.Header.Get("ETag"), "W/"), `"`)
		}
		return resp, loc, nil
	}
}

func mergeMeta(loc *Location, h http.Header) {
	if v := h.Get("X-Linked-Size"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			loc.Size = n
		}
	}
	if v := h.Get("X-Linked-Etag"); v != "" {
		loc.ETag = strings.Trim(strings.TrimPrefix(v, "W/"), `"`)
	}
	if v := h.Get("X-Repo-Commit"); v != "" {
		loc.Commit = v
	}
}

// do sends one request with retries on network errors, 408, 429 and 5xx (honouring Retry-After
// and RateLimit). Any status < 400 is returned to the caller; other statuses become an HTTPError.
func (c *Client) do(ctx context.Context, method, u string, auth bool, hdr http.Header, notFound error) (*http.Response, error) {
	var lastErr error
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, method, u, nil)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		c.decorate(req, auth)
		resp, err := c.http.Do(req)
		var retryHdr http.Header
		if err != nil {
			if isCtxErr(ctx, err) {
				return nil, ctx.Err()
			}
			lastErr = networkError(req.URL, err)
		} else if resp.StatusCode < 400 {
			return resp, nil
		} else {
			lastErr = c.statusError(resp, notFound)
			drain(resp)
			if !retryableStatus(resp.StatusCode) {
				return nil, lastErr
			}
			retryHdr = resp.Header
		}
		if attempt+1 >= c.backoff.Attempts {
			return nil, lastErr
		}
		if c.obs != nil {
			c.obs.RetryObserved(lastErr)
		}
		if err := sleepCtx(ctx, c.backoff.delay(attempt, retryHdr)); err != nil {
			return nil, err
		}
	}
}

// decorate sets the headers every request carries. The token is added only when auth is true,
// i.e. the request goes to the Hub's own host.
func (c *Client) decorate(req *http.Request, auth bool) {
	req.Header.Set("User-Agent", c.ua)
	// identity: some CDNs ignore Range on compressible responses when gzip is acceptable.
	req.Header.Set("Accept-Encoding", "identity")
	if auth && c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
}

// statusError maps a Hub error response to a sentinel, reading X-Error-Code/X-Error-Message.
func (c *Client) statusError(resp *http.Response, notFound error) error {
	e := &HTTPError{
		Status:  resp.StatusCode,
		Code:    resp.Header.Get("X-Error-Code"),
		Message: resp.Header.Get("X-Error-Message"),
		URL:     redact(resp.Request.URL),
	}
	hasToken := c.token != "" && resp.Request.Header.Get("Authorization") != ""
	switch {
	case e.Code == "GatedRepo":
		e.Sentinel = ErrGated
	case e.Code == "RepoNotFound":
		e.Sentinel = ErrRepoNotFound
	case e.Code == "RevisionNotFound":
		e.Sentinel = ErrRevisionNotFound
	case e.Code == "EntryNotFound":
		e.Sentinel = ErrEntryNotFound
	case resp.StatusCode == http.StatusUnauthorized && hasToken:
		e.Sentinel = ErrUnauthorized
	case resp.StatusCode == http.StatusUnauthorized:
		e.Sentinel = ErrRepoNotFound
	case resp.StatusCode == http.StatusForbidden:
		e.Sentinel = ErrUnauthorized
	case resp.StatusCode == http.StatusNotFound:
		e.Sentinel = notFound
	case resp.StatusCode == http.StatusTooManyRequests:
		e.Sentinel = ErrRateLimited
	case retryableStatus(resp.StatusCode):
		e.Sentinel = ErrOffline
	default:
		e.Sentinel = ErrProtocol
	}
	return e
}

// networkError wraps a transport failure in ErrOffline, naming the host but not the signed query.
func networkError(u *url.URL, err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w: %s timed out", ErrOffline, u.Host)
	}
	return fmt.Errorf("%w: %s: %v", ErrOffline, u.Host, unwrapURLError(err))
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// redact drops the query (signed CDN URLs carry credentials there) from a URL for messages.
func redact(u *url.URL) string {
	if u == nil {
		return ""
	}
	c := *u
	c.RawQuery, c.User, c.Fragment = "", nil, ""
	return c.String()
}

// drain discards a small error body so the connection can be reused, then closes it.
func drain(resp *http.Response) {
	io.CopyN(io.Discard, resp.Body, 64<<10)
	resp.Body.Close()
}
