package huggingface_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/huggingface"
	"github.com/buffdb/buffdbd/huggingface/hubtest"
)

var fastBackoff = huggingface.Backoff{Base: time.Millisecond, Max: 20 * time.Millisecond, Attempts: 5}

func newClient(t testing.TB, hub *hubtest.Server, token string) *huggingface.Client {
	t.Helper()
	c, err := huggingface.NewClient(huggingface.ClientOptions{Endpoint: hub.Endpoint(), Token: token, Backoff: fastBackoff})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newHub(t testing.TB) *hubtest.Server {
	t.Helper()
	hub := hubtest.New()
	t.Cleanup(hub.Close)
	return hub
}

func TestClient_Revision(t *testing.T) {
	hub := newHub(t)
	hub.AddRepo("org/model", hubtest.RepoOptions{LibraryName: "transformers"})
	hub.AddRepo("gpt2", hubtest.RepoOptions{})
	main := hub.Commit("org/model", "main", []hubtest.FileSpec{{Path: "a", Content: hubtest.Bytes([]byte("a"))}})
	pr := hub.Commit("org/model", "refs/pr/1", []hubtest.FileSpec{{Path: "b", Content: hubtest.Bytes([]byte("b"))}})
	legacy := hub.Commit("gpt2", "main", []hubtest.FileSpec{{Path: "c", Content: hubtest.Bytes([]byte("c"))}})
	c := newClient(t, hub, "")
	ctx := context.Background()
	for _, tc := range []struct{ repo, rev, want string }{
		{"org/model", "main", main},
		{"org/model", "refs/pr/1", pr},
		{"org/model", main, main},
		{"gpt2", "main", legacy},
	} {
		info, err := c.Revision(ctx, tc.repo, tc.rev)
		if err != nil {
			t.Fatalf("%s@%s: %v", tc.repo, tc.rev, err)
		}
		if info.Commit != tc.want {
			t.Fatalf("%s@%s resolved to %s, want %s", tc.repo, tc.rev, info.Commit, tc.want)
		}
	}
	// refs/pr/1 must travel as one escaped segment.
	found := false
	for _, r := range hub.Requests() {
		found = found || strings.HasSuffix(r.Path, "/revision/refs%2Fpr%2F1")
	}
	if !found {
		t.Fatalf("no request with the revision escaped as refs%%2Fpr%%2F1: %+v", hub.Requests())
	}
	t.Run("ErrRevisionNotFound", func(t *testing.T) {
		_, err := c.Revision(ctx, "org/model", "nope")
		if !errors.Is(err, huggingface.ErrRevisionNotFound) {
			t.Fatalf("err = %v, want ErrRevisionNotFound", err)
		}
	})
	t.Run("ErrRepoNotFound", func(t *testing.T) {
		_, err := c.Revision(ctx, "org/missing", "main")
		if !errors.Is(err, huggingface.ErrRepoNotFound) {
			t.Fatalf("err = %v, want ErrRepoNotFound", err)
		}
	})
	t.Run("ErrUnauthorizedEvenOnPublicRepo", func(t *testing.T) {
		_, err := newClient(t, hub, "hf_bogus").Revision(ctx, "org/model", "main")
		if !errors.Is(err, huggingface.ErrUnauthorized) {
			t.Fatalf("err = %v, want ErrUnauthorized", err)
		}
	})
	t.Run("OKRenamedRepo", func(t *testing.T) {
		hub.AddRepo("old/name", hubtest.RepoOptions{})
		sha := hub.Commit("old/name", "main", []hubtest.FileSpec{{Path: "x", Content: hubtest.Bytes([]byte("x"))}})
		hub.Rename("old/name", "new/name")
		info, err := c.Revision(ctx, "old/name", "main")
		if err != nil || info.Commit != sha {
			t.Fatalf("renamed repo: %v, %+v", err, info)
		}
	})
}

func TestClient_RateLimited(t *testing.T) {
	hub := newHub(t)
	hub.AddRepo("org/model", hubtest.RepoOptions{})
	sha := hub.Commit("org/model", "main", []hubtest.FileSpec{{Path: "a", Content: hubtest.Bytes([]byte("a"))}})
	c, err := huggingface.NewClient(huggingface.ClientOptions{Endpoint: hub.Endpoint(), Backoff: huggingface.Backoff{Base: time.Millisecond, Max: 5 * time.Second, Attempts: 3}})
	if err != nil {
		t.Fatal(err)
	}
	t.Run("OKAfterRetryAfter", func(t *testing.T) {
		hub.RateLimitNext(1, "1", "")
		info, err := c.Revision(context.Background(), "org/model", "main")
		if err != nil || info.Commit != sha {
			t.Fatalf("after 429: %v", err)
		}
		reqs := hub.Requests()
		last, prev := reqs[len(reqs)-1], reqs[len(reqs)-2]
		// The server asked for one second; the backoff alone would have waited milliseconds.
		if gap := last.Time.Sub(prev.Time); gap < time.Second {
			t.Fatalf("retried %v after a 429 with Retry-After: 1", gap)
		}
	})
	t.Run("ErrRateLimited", func(t *testing.T) {
		hub.RateLimitNext(3, "", `"api";r=5;t=0`)
		_, err := c.Revision(context.Background(), "org/model", "main")
		if !errors.Is(err, huggingface.ErrRateLimited) {
			t.Fatalf("err = %v, want ErrRateLimited", err)
		}
	})
}

func TestClient_ListFilesPaginated(t *testing.T) {
	hub := newHub(t)
	hub.AddRepo("org/model", hubtest.RepoOptions{})
	var specs []hubtest.FileSpec
	for i := range 23 {
		specs = append(specs, hubtest.FileSpec{Path: fmt.Sprintf("d%d/f%02d.txt", i%3, i), Content: hubtest.Bytes([]byte{byte(i)})})
	}
	sha := hub.Commit("org/model", "main", specs)
	hub.SetTreePageSize(5)
	files, err := newClient(t, hub, "").ListFiles(context.Background(), "org/model", sha)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(specs) {
		t.Fatalf("listed %d files, want %d", len(files), len(specs))
	}
	pages := 0
	for _, r := range hub.Requests() {
		if strings.Contains(r.Path, "/tree/") {
			pages++
		}
	}
	if pages < 6 { // 23 files + 3 directories in pages of 5
		t.Fatalf("tree pages fetched = %d, want ≥ 6", pages)
	}
}

func TestClient_Resolve(t *testing.T) {
	hub := newHub(t)
	hub.AddRepo("org/gated", hubtest.RepoOptions{Gated: true})
	sha := hub.Commit("org/gated", "main", []hubtest.FileSpec{
		{Path: "model.safetensors", Content: hubtest.Random(1, 1000), LFS: true},
		{Path: "config.json", Content: hubtest.Bytes([]byte(`{}`))},
	})
	hub.AddToken("hf_granted", "alice")
	hub.AddToken("hf_other", "bob")
	hub.Grant("org/gated", "alice")
	ctx := context.Background()
	t.Run("ErrGatedWithoutToken", func(t *testing.T) {
		_, err := newClient(t, hub, "").Resolve(ctx, "org/gated", sha, "config.json")
		var he *huggingface.HTTPError
		if !errors.Is(err, huggingface.ErrGated) || !errors.As(err, &he) || he.Status != http.StatusUnauthorized {
			t.Fatalf("err = %v, want ErrGated (401)", err)
		}
	})
	t.Run("ErrGatedNotGranted", func(t *testing.T) {
		_, err := newClient(t, hub, "hf_other").Resolve(ctx, "org/gated", sha, "config.json")
		var he *huggingface.HTTPError
		if !errors.Is(err, huggingface.ErrGated) || !errors.As(err, &he) || he.Status != http.StatusForbidden {
			t.Fatalf("err = %v, want ErrGated (403)", err)
		}
	})
	t.Run("OKLFSRedirectMetadata", func(t *testing.T) {
		loc, err := newClient(t, hub, "hf_granted").Resolve(ctx, "org/gated", sha, "model.safetensors")
		if err != nil {
			t.Fatal(err)
		}
		if loc.Auth || !strings.HasPrefix(loc.URL, hub.CDN.URL) || loc.Size != 1000 || len(loc.ETag) != 64 || loc.Commit != sha {
			t.Fatalf("location = %+v, want the CDN URL without auth and the X-Linked-* metadata", loc)
		}
	})
	t.Run("OKRegularRelativeRedirect", func(t *testing.T) {
		loc, err := newClient(t, hub, "hf_granted").Resolve(ctx, "org/gated", sha, "config.json")
		if err != nil {
			t.Fatal(err)
		}
		if !loc.Auth || !strings.HasPrefix(loc.URL, hub.Hub.URL) || loc.Size != 2 {
			t.Fatalf("location = %+v, want the hub's own resolve cache with auth", loc)
		}
	})
	t.Run("ErrEntryNotFound", func(t *testing.T) {
		_, err := newClient(t, hub, "hf_granted").Resolve(ctx, "org/gated", sha, "nope.bin")
		if !errors.Is(err, huggingface.ErrEntryNotFound) {
			t.Fatalf("err = %v, want ErrEntryNotFound", err)
		}
	})
}

// TestClient_ListFilesLinkLoop: a server whose pagination Link leads back to a page already read
// (a cursor bug, a misconfigured mirror) is refused at once, not read 10000 times over.
func TestClient_ListFilesLinkLoop(t *testing.T) {
	var pages atomic.Int64
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := pages.Add(1)
		// Page 1 → page 2 → page 1 again (same URL, query parameters reordered and all).
		next := srv.URL + r.URL.Path + "?recursive=true&expand=false&cursor=2"
		if r.URL.Query().Get("cursor") == "2" {
			next = srv.URL + r.URL.Path + "?expand=false&recursive=true"
		}
		w.Header().Set("Link", "<"+next+`>; rel="next"`)
		fmt.Fprintf(w, `[{"type":"file","oid":"%040d","size":1,"path":"f%d"}]`, 0, n)
	}))
	t.Cleanup(srv.Close)
	c, err := huggingface.NewClient(huggingface.ClientOptions{Endpoint: srv.URL, Backoff: fastBackoff})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.ListFiles(context.Background(), "org/model", strings.Repeat("a", 40))
	if !errors.Is(err, huggingface.ErrProtocol) {
		t.Fatalf("err = %v, want ErrProtocol", err)
	}
	if n := pages.Load(); n != 2 {
		t.Fatalf("read %d pages of a two-page loop", n)
	}
}
