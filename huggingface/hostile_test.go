package huggingface_test

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/buffdb/buffdbd/huggingface"
	"github.com/buffdb/buffdbd/huggingface/hubtest"
	"github.com/buffdb/buffdbd/registry"
)

// TestFetcher_CDNQuirks: a CDN or proxy that misbehaves on a few responses (as a flaky cache node
// does) costs retries, never the fetch, and never puts its bytes into the published file.
func TestFetcher_CDNQuirks(t *testing.T) {
	for _, tc := range []struct {
		name  string
		quirk hubtest.Quirk
	}{
		{"OKIgnoreRange", hubtest.QuirkIgnoreRange},
		{"OKNoContentRange", hubtest.QuirkNoContentRange},
		{"OKOtherRange", hubtest.QuirkOtherRange},
		{"OKGzip", hubtest.QuirkGzip},
		{"OKChunked", hubtest.QuirkChunked},
		{"OKLongBody", hubtest.QuirkLongBody},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newFetchEnv(t)
			e.hub.AddRepo("org/model", hubtest.RepoOptions{})
			w := randomBytes(9, 400<<10)
			sha := commitFiles(e.hub, "org/model", "main", map[string][]byte{"model.safetensors": w})
			e.hub.QuirkNext(tc.quirk, tc.quirk, tc.quirk)
			if _, err := e.fetch(t, "", "hf:org/model"); err != nil {
				t.Fatal(err)
			}
			if got := pullAll(t, e.reg, "org/model", sha); !bytes.Equal(got["model.safetensors"], w) {
				t.Fatal("published bytes differ from the Hub's")
			}
		})
	}
	t.Run("ErrProtocolGzipEveryTime", func(t *testing.T) {
		e := newFetchEnv(t)
		e.hub.AddRepo("org/model", hubtest.RepoOptions{})
		commitFiles(e.hub, "org/model", "main", map[string][]byte{"model.safetensors": randomBytes(9, 400<<10)})
		for range 200 {
			e.hub.QuirkNext(hubtest.QuirkGzip)
		}
		_, err := e.fetch(t, "", "hf:org/model")
		if !errors.Is(err, huggingface.ErrProtocol) || !strings.Contains(err.Error(), "gzip") {
			t.Fatalf("err = %v, want ErrProtocol naming the encoding (not a checksum failure)", err)
		}
		if v, _ := e.reg.ListVersions(t.Context(), "org/model"); len(v) != 0 {
			t.Fatalf("published %v", v)
		}
	})
}

// TestFetcher_RangelessServer: behind a proxy or mirror that answers every Range request with the
// whole body (CDN, or the Hub for regular files), a fetch downloads each file in one stream, says so
// in the file's progress, and publishes the Hub's bytes. What does not make a server range-less stays
// refused: an encoded body, a 206 for another range.
func TestFetcher_RangelessServer(t *testing.T) {
	for _, tc := range []struct{ name, server string }{{"OKCDN", "cdn"}, {"OKHub", "hub"}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newFetchEnv(t)
			e.hub.AddRepo("org/model", hubtest.RepoOptions{})
			files := map[string][]byte{"model.safetensors": randomBytes(3, 1<<20+5), "tokenizer.json": randomBytes(4, 1<<20+7), "config.json": []byte("{}")}
			sha := e.hub.Commit("org/model", "main", []hubtest.FileSpec{
				{Path: "model.safetensors", Content: hubtest.Bytes(files["model.safetensors"]), LFS: true},
				{Path: "tokenizer.json", Content: hubtest.Bytes(files["tokenizer.json"])}, // regular: from the Hub
				{Path: "config.json", Content: hubtest.Bytes(files["config.json"])},
			})
			e.hub.IgnoreRanges(tc.server == "cdn", tc.server == "hub")
			single := map[string]bool{}
			var mu sync.Mutex
			res, err := e.fetch(t, "", "hf:org/model", func(r *huggingface.Request) {
				r.OnProgress = func(p huggingface.Progress) {
					mu.Lock()
					defer mu.Unlock()
					for _, f := range p.Files {
						single[f.Path] = single[f.Path] || f.SingleStream
					}
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			got := pullAll(t, e.reg, "org/model", sha)
			for p, b := range files {
				if !bytes.Equal(got[p], b) {
					t.Fatalf("%s: published bytes differ from the Hub's", p)
				}
			}
			want := "model.safetensors"
			if tc.server == "hub" {
				want = "tokenizer.json"
			}
			mu.Lock()
			defer mu.Unlock()
			if len(single) != 3 || !single[want] || single["config.json"] {
				t.Fatalf("single-stream files in progress = %v, want %s only", single, want)
			}
			if res.Downloaded != res.Bytes || e.hub.RangesIgnored() == 0 {
				t.Fatalf("downloaded %d of %d bytes; ranges ignored %d", res.Downloaded, res.Bytes, e.hub.RangesIgnored())
			}
		})
	}
	t.Run("ErrProtocolGzip", func(t *testing.T) {
		e := newFetchEnv(t)
		e.hub.AddRepo("org/model", hubtest.RepoOptions{})
		commitFiles(e.hub, "org/model", "main", map[string][]byte{"model.safetensors": randomBytes(9, 1<<20)})
		e.hub.IgnoreRanges(true, false)
		for range 200 {
			e.hub.QuirkNext(hubtest.QuirkGzip)
		}
		_, err := e.fetch(t, "", "hf:org/model")
		if !errors.Is(err, huggingface.ErrProtocol) || !strings.Contains(err.Error(), "gzip") {
			t.Fatalf("err = %v, want ErrProtocol naming the encoding", err)
		}
	})
	t.Run("ErrProtocolOtherContentRange", func(t *testing.T) {
		e := newFetchEnv(t)
		e.hub.AddRepo("org/model", hubtest.RepoOptions{})
		commitFiles(e.hub, "org/model", "main", map[string][]byte{"model.safetensors": randomBytes(9, 1<<20)})
		for range 200 {
			e.hub.QuirkNext(hubtest.QuirkOtherRange)
		}
		_, err := e.fetch(t, "", "hf:org/model")
		if !errors.Is(err, huggingface.ErrProtocol) || !strings.Contains(err.Error(), "Content-Range") {
			t.Fatalf("err = %v, want ErrProtocol naming the Content-Range", err)
		}
	})
}

// TestFetcher_HostileListing: a listing the Hub should never send is refused before anything is
// downloaded or published, with ErrProtocol, except a harmless repetition.
func TestFetcher_HostileListing(t *testing.T) {
	lfsEdit := func(f func(*hubtest.TreeEntry)) func([]hubtest.TreeEntry) []hubtest.TreeEntry {
		return func(es []hubtest.TreeEntry) []hubtest.TreeEntry {
			for i := range es {
				if es[i].LFS != nil {
					f(&es[i])
				}
			}
			return es
		}
	}
	for _, tc := range []struct {
		name string
		edit func([]hubtest.TreeEntry) []hubtest.TreeEntry
		want error
	}{
		{"OKRepeatedEntries", func(es []hubtest.TreeEntry) []hubtest.TreeEntry { return append(es, es...) }, nil},
		{"OKUpperCaseSHA256", lfsEdit(func(e *hubtest.TreeEntry) { e.LFS.OID = strings.ToUpper(e.LFS.OID) }), nil},
		{"ErrProtocolSamePathOtherContent", func(es []hubtest.TreeEntry) []hubtest.TreeEntry {
			for _, e := range es {
				if e.Type == "file" && e.LFS == nil {
					e.OID = strings.Repeat("1", 40)
					return append(es, e)
				}
			}
			return es
		}, huggingface.ErrProtocol},
		{"ErrProtocolNonHexSHA256", lfsEdit(func(e *hubtest.TreeEntry) { e.LFS.OID = "zz" + e.LFS.OID[2:] }), huggingface.ErrProtocol},
		{"ErrProtocolNonHexBlobID", func(es []hubtest.TreeEntry) []hubtest.TreeEntry {
			for i := range es {
				if es[i].Type == "file" && es[i].LFS == nil {
					es[i].OID = "-x" + es[i].OID[2:]
				}
			}
			return es
		}, huggingface.ErrProtocol},
		{"ErrProtocolFileAndDirectory", func(es []hubtest.TreeEntry) []hubtest.TreeEntry {
			return append(es, hubtest.TreeEntry{Type: "file", OID: strings.Repeat("2", 40), Size: 1, Path: "config.json/x"})
		}, huggingface.ErrProtocol},
		{"ErrNoSpaceHugeSize", lfsEdit(func(e *hubtest.TreeEntry) { e.Size, e.LFS.Size = 1<<62, 1<<62 }), huggingface.ErrNoSpace},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newFetchEnv(t)
			e.hub.AddRepo("org/model", hubtest.RepoOptions{})
			files := map[string][]byte{"model.safetensors": randomBytes(9, 200<<10), "config.json": []byte("{}")}
			sha := commitFiles(e.hub, "org/model", "main", files)
			e.hub.EditTree(tc.edit)
			_, err := e.fetch(t, "", "hf:org/model")
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				got := pullAll(t, e.reg, "org/model", sha)
				if len(got) != len(files) || !bytes.Equal(got["model.safetensors"], files["model.safetensors"]) {
					t.Fatalf("published %d files, want %d with the Hub's bytes", len(got), len(files))
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if _, err := e.reg.Show(t.Context(), registry.Ref{Name: "org/model", Version: sha}); !errors.Is(err, registry.ErrNotFound) {
				t.Fatalf("version visible after a refused listing: %v", err)
			}
		})
	}
}

// TestFetcher_EndpointCredentialsNotStored: a mirror's credentials in the endpoint URL
// (https://user:pass@mirror/...) are for the mirror, not for the model's metadata, which every
// registry client can read.
func TestFetcher_EndpointCredentialsNotStored(t *testing.T) {
	e := newFetchEnv(t)
	e.hub.AddRepo("org/model", hubtest.RepoOptions{})
	sha := commitFiles(e.hub, "org/model", "main", map[string][]byte{"config.json": []byte("{}")})
	endpoint := strings.Replace(e.hub.Endpoint(), "http://", "http://mirror-user:s3cret@", 1)
	f, err := huggingface.New(e.reg, huggingface.Options{
		Client:   huggingface.ClientOptions{Endpoint: endpoint, Backoff: fastBackoff},
		CacheDir: e.cache,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Fetch(t.Context(), huggingface.Request{Ref: huggingface.Ref{Repo: "org/model", Revision: "main"}}); err != nil {
		t.Fatal(err)
	}
	vi, err := e.reg.Show(t.Context(), registry.Ref{Name: "org/model", Version: sha})
	if err != nil {
		t.Fatal(err)
	}
	if u := vi.Info.Parameters["source_url"]; strings.Contains(u, "s3cret") || u != e.hub.Endpoint()+"/org/model/tree/"+sha {
		t.Fatalf("source_url = %q, want it without the endpoint's credentials", u)
	}
}
