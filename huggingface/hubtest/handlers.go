package hubtest

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"
)

func urlPathUnescape(p string) (string, error) { return url.PathUnescape(p) }

func (s *Server) serveHub(w http.ResponseWriter, r *http.Request) {
	s.record("hub", r)
	p := strings.TrimPrefix(r.URL.EscapedPath(), "/")
	// Renamed repositories redirect (relative, same host) to the canonical path.
	s.mu.Lock()
	for old, nu := range s.renamed {
		for _, prefix := range []string{"api/models/", ""} {
			if strings.HasPrefix(p, prefix+old+"/") {
				target := "/" + prefix + nu + "/" + strings.TrimPrefix(p, prefix+old+"/")
				if r.URL.RawQuery != "" {
					target += "?" + r.URL.RawQuery
				}
				s.mu.Unlock()
				w.Header().Set("Location", target)
				w.WriteHeader(http.StatusTemporaryRedirect)
				return
			}
		}
	}
	s.mu.Unlock()
	if s.takeRateLimit(w) {
		return
	}
	switch {
	case strings.HasPrefix(p, "api/models/"):
		s.serveAPI(w, r, strings.TrimPrefix(p, "api/models/"))
	case strings.HasPrefix(p, "api/resolve-cache/models/"):
		s.serveResolveCache(w, r, strings.TrimPrefix(p, "api/resolve-cache/models/"))
	default:
		s.serveResolve(w, r, p)
	}
}

func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request, p string) {
	if id, rest, ok := splitRepo(p, "revision"); ok {
		rp, ok := s.access(w, r, id, false)
		if !ok {
			return
		}
		rev := unescape(rest)
		c := s.lookup(rp, rev)
		if c == nil {
			hubError(w, http.StatusNotFound, "RevisionNotFound", "Invalid rev id: "+rev)
			return
		}
		type lfs struct {
			SHA256      string `json:"sha256"`
			Size        int64  `json:"size"`
			PointerSize int    `json:"pointerSize"`
		}
		type sibling struct {
			RFilename string `json:"rfilename"`
			Size      int64  `json:"size"`
			BlobID    string `json:"blobId"`
			LFS       *lfs   `json:"lfs,omitempty"`
		}
		sibs := []sibling{}
		for _, f := range c.files {
			sb := sibling{RFilename: f.path, Size: f.content.Size(), BlobID: f.blobID}
			if f.lfs {
				sb.LFS = &lfs{f.sha256, f.content.Size(), f.pointer}
			}
			sibs = append(sibs, sb)
		}
		var gated any = false
		if rp.opts.Gated {
			gated = "manual"
		}
		tags := rp.opts.Tags
		if tags == nil {
			tags = []string{}
		}
		writeJSON(w, http.StatusOK, map[string]any{
			"_id": "x", "id": rp.id, "modelId": rp.id, "sha": c.sha, "private": rp.opts.Private, "gated": gated,
			"library_name": rp.opts.LibraryName, "pipeline_tag": rp.opts.PipelineTag, "tags": tags,
			"cardData":     map[string]any{"description": rp.opts.Description, "license": "apache-2.0"},
			"lastModified": "2024-01-01T00:00:00.000Z", "siblings": sibs,
		})
		return
	}
	if id, rest, ok := splitRepo(p, "tree"); ok {
		rp, ok := s.access(w, r, id, false)
		if !ok {
			return
		}
		revEsc, _, _ := strings.Cut(rest, "/")
		rev := unescape(revEsc)
		c := s.lookup(rp, rev)
		if c == nil {
			hubError(w, http.StatusNotFound, "RevisionNotFound", "Invalid rev id: "+rev)
			return
		}
		// Directories appear as entries too, as on the real Hub.
		var all []TreeEntry
		dirs := map[string]bool{}
		for _, f := range c.files {
			for i := strings.Index(f.path, "/"); i > 0; i = nextSlash(f.path, i) {
				if d := f.path[:i]; !dirs[d] {
					dirs[d] = true
					all = append(all, TreeEntry{Type: "directory", OID: "0000000000000000000000000000000000000000", Path: d})
				}
			}
			e := TreeEntry{Type: "file", OID: f.blobID, Size: f.content.Size(), Path: f.path}
			if f.lfs {
				e.LFS = &TreeLFS{f.sha256, f.content.Size(), f.pointer}
			}
			all = append(all, e)
		}
		cursor, _ := strconv.Atoi(r.URL.Query().Get("cursor"))
		s.mu.Lock()
		size, edit := s.pageSize, s.editTree
		s.mu.Unlock()
		if edit != nil {
			all = edit(all)
		}
		end := min(cursor+size, len(all))
		if cursor > len(all) {
			cursor = len(all)
		}
		if end < len(all) {
			q := r.URL.Query()
			q.Set("cursor", strconv.Itoa(end))
			w.Header().Set("Link", fmt.Sprintf(`<%s%s?%s>; rel="next"`, s.Hub.URL, r.URL.EscapedPath(), q.Encode()))
		}
		page := all[cursor:end]
		if page == nil {
			page = []TreeEntry{}
		}
		writeJSON(w, http.StatusOK, page)
		return
	}
	hubError(w, http.StatusNotFound, "", "Sorry, we can't find the page you are looking for.")
}

func nextSlash(p string, i int) int {
	j := strings.Index(p[i+1:], "/")
	if j < 0 {
		return -1
	}
	return i + 1 + j
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// serveResolve answers /{repo}/resolve/{rev}/{path}: a 302 to the CDN for LFS files (metadata
// on the redirect itself), a relative 307 to the resolve cache for regular files.
func (s *Server) serveResolve(w http.ResponseWriter, r *http.Request, p string) {
	id, rest, ok := splitRepo(p, "resolve")
	if !ok {
		hubError(w, http.StatusNotFound, "", "Sorry, we can't find the page you are looking for.")
		return
	}
	rp, ok := s.access(w, r, id, true)
	if !ok {
		return
	}
	revEsc, pathEsc, _ := strings.Cut(rest, "/")
	rev := unescape(revEsc)
	c := s.lookup(rp, rev)
	if c == nil {
		hubError(w, http.StatusNotFound, "RevisionNotFound", "Invalid rev id: "+rev)
		return
	}
	f := findFile(c, unescape(pathEsc))
	if f == nil {
		hubError(w, http.StatusNotFound, "EntryNotFound", "Entry not found")
		return
	}
	w.Header().Set("X-Repo-Commit", c.sha)
	if f.lfs {
		s.mu.Lock()
		target := s.signedURL(f)
		s.mu.Unlock()
		w.Header().Set("X-Linked-Size", strconv.FormatInt(f.content.Size(), 10))
		w.Header().Set("X-Linked-Etag", `"`+f.sha256+`"`)
		w.Header().Set("ETag", `"`+f.blobID+`"`)
		w.Header().Set("Location", target)
		w.WriteHeader(http.StatusFound)
		return
	}
	w.Header().Set("Location", "/api/resolve-cache/models/"+id+"/"+c.sha+"/"+pathEsc)
	w.WriteHeader(http.StatusTemporaryRedirect)
}

func findFile(c *commit, path string) *file {
	for _, f := range c.files {
		if f.path == path {
			return f
		}
	}
	return nil
}

func (s *Server) serveResolveCache(w http.ResponseWriter, r *http.Request, p string) {
	segs := strings.Split(p, "/")
	var id, sha, pathEsc string
	for n := 1; n <= 2 && n < len(segs); n++ {
		if len(segs[n]) == 40 {
			id, sha, pathEsc = strings.Join(segs[:n], "/"), segs[n], strings.Join(segs[n+1:], "/")
			break
		}
	}
	rp, ok := s.access(w, r, id, true)
	if !ok {
		return
	}
	c := s.lookup(rp, sha)
	var f *file
	if c != nil {
		f = findFile(c, unescape(pathEsc))
	}
	if f == nil {
		hubError(w, http.StatusNotFound, "EntryNotFound", "Entry not found")
		return
	}
	w.Header().Set("X-Repo-Commit", c.sha)
	w.Header().Set("ETag", `"`+f.blobID+`"`)
	s.serveContent(w, r, f, "hub")
}

func (s *Server) serveCDN(w http.ResponseWriter, r *http.Request) {
	s.record("cdn", r)
	if r.Header.Get("Authorization") != "" {
		s.cdnAuth.Add(1)
	}
	s.mu.Lock()
	if len(s.statusNext) > 0 {
		code := s.statusNext[0]
		s.statusNext = s.statusNext[1:]
		s.mu.Unlock()
		w.WriteHeader(code)
		return
	}
	gen, _ := strconv.Atoi(r.URL.Query().Get("gen"))
	expired := gen < s.sigGen
	sha := strings.TrimPrefix(r.URL.Path, "/lfs/")
	var f *file
	for _, rp := range s.repos {
		for _, c := range rp.commits {
			for _, cf := range c.files {
				if cf.lfs && cf.sha256 == sha {
					f = cf
				}
			}
		}
	}
	s.mu.Unlock()
	if expired {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprint(w, "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>")
		return
	}
	if f == nil || r.URL.Query().Get("sig") != f.blobID[:16] {
		w.WriteHeader(http.StatusForbidden)
		return
	}
	w.Header().Set("ETag", `"`+f.sha256+`"`)
	s.serveContent(w, r, f, "cdn")
}

// serveContent writes f's bytes for server ("hub" or "cdn") honouring a single Range (unless told
// to ignore ranges), with the configured faults.
func (s *Server) serveContent(w http.ResponseWriter, r *http.Request, f *file, server string) {
	size := f.content.Size()
	s.mu.Lock()
	if n, ok := s.short[f.blobID]; ok && n < size {
		size = n
	}
	noRange := server == "cdn" && s.noRangeCDN || server == "hub" && s.noRangeHub
	s.mu.Unlock()
	start, end := int64(0), size // [start, end)
	status := http.StatusOK
	if !noRange {
		w.Header().Set("Accept-Ranges", "bytes")
	} else if r.Header.Get("Range") != "" && r.Method != http.MethodHead {
		s.rangesIgnored.Add(1)
	}
	if rg := r.Header.Get("Range"); rg != "" && !noRange {
		spec, ok := strings.CutPrefix(rg, "bytes=")
		a, b, ok2 := strings.Cut(spec, "-")
		sa, err1 := strconv.ParseInt(a, 10, 64)
		if !ok || !ok2 || err1 != nil || sa < 0 {
			http.Error(w, "bad range", http.StatusBadRequest)
			return
		}
		if sa >= size {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return
		}
		start = sa
		if b != "" {
			sb, err := strconv.ParseInt(b, 10, 64)
			if err != nil || sb < sa {
				http.Error(w, "bad range", http.StatusBadRequest)
				return
			}
			end = min(sb+1, size)
		}
		status = http.StatusPartialContent
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, size))
	}
	w.Header().Set("Content-Length", strconv.FormatInt(end-start, 10))
	w.Header().Set("Content-Type", "application/octet-stream")
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return // faults apply to bodies only
	}
	s.mu.Lock()
	var quirk Quirk
	if len(s.quirks) > 0 {
		quirk, s.quirks = s.quirks[0], s.quirks[1:]
	}
	s.mu.Unlock()
	switch quirk {
	case QuirkIgnoreRange:
		if status == http.StatusPartialContent {
			s.rangesIgnored.Add(1)
		}
		start, end, status = 0, size, http.StatusOK
		w.Header().Del("Content-Range")
		w.Header().Set("Content-Length", strconv.FormatInt(end-start, 10))
	case QuirkNoContentRange:
		w.Header().Del("Content-Range")
	case QuirkOtherRange:
		if status == http.StatusPartialContent {
			shift := min(4096, size-end)
			if shift == 0 {
				shift = -min(4096, start)
			}
			start, end = start+shift, end+shift
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, size))
		}
	case QuirkGzip:
		w.Header().Del("Content-Length")
		w.Header().Set("Content-Encoding", "gzip")
		w.WriteHeader(status)
		zw := gzip.NewWriter(w)
		io.Copy(zw, io.NewSectionReader(f.content, start, end-start))
		zw.Close()
		return
	case QuirkChunked, QuirkLongBody:
		w.Header().Del("Content-Length")
		w.WriteHeader(status)
		w.(http.Flusher).Flush() // headers out now: the body goes chunked
	}
	if quirk == QuirkLongBody {
		defer w.Write(bytes.Repeat([]byte("garbage!"), 512))
	}
	s.mu.Lock()
	cut, st := int64(-1), stall{after: -1}
	if len(s.cuts) > 0 {
		cut, s.cuts = s.cuts[0], s.cuts[1:]
	}
	if len(s.stalls) > 0 {
		st, s.stalls = s.stalls[0], s.stalls[1:]
	}
	corrupt := s.corrupt[f.blobID]
	var lim *rate.Limiter
	if s.throttle > 0 {
		// Burst of 64 KiB: one socket write's worth, so the rate is smooth at millisecond scale.
		lim = rate.NewLimiter(rate.Limit(s.throttle), 64<<10)
	}
	s.mu.Unlock()
	if quirk != QuirkChunked && quirk != QuirkLongBody {
		w.WriteHeader(status) // else already written
	}
	buf := make([]byte, 64<<10)
	sent := int64(0)
	for off := start; off < end; {
		n := int(min(int64(len(buf)), end-off))
		if cut >= 0 && sent+int64(n) > cut {
			n = int(cut - sent)
		}
		if st.after >= 0 && sent+int64(n) > st.after && sent <= st.after {
			n = int(st.after - sent)
		}
		if n > 0 {
			m, _ := f.content.ReadAt(buf[:n], off)
			if corrupt && off <= size/2 && size/2 < off+int64(m) {
				buf[size/2-off] ^= 0xff
			}
			if lim != nil {
				if err := lim.WaitN(r.Context(), m); err != nil {
					return
				}
			}
			if _, err := w.Write(buf[:m]); err != nil {
				return
			}
			s.bytesServed.Add(int64(m))
			sent += int64(m)
			off += int64(m)
		}
		if cut >= 0 && sent >= cut {
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // closes the connection mid-body
		}
		// A stall at the very end of the body would hold a complete response open, and the
		// connection with it, though the client has every byte and reuses the connection.
		if st.after >= 0 && sent >= st.after && off < end {
			w.(http.Flusher).Flush()
			select {
			case <-time.After(st.d):
			case <-r.Context().Done():
				return
			}
			st.after = -1
		}
	}
}
