package huggingface_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/buffdb/buffdbd/huggingface"
	"github.com/buffdb/buffdbd/registry"
)

func TestParseRef(t *testing.T) {
	for _, tc := range []struct{ in, repo, rev string }{
		{"hf:org/model", "org/model", "main"},
		{"hf:org/model@v1.0", "org/model", "v1.0"},
		{"hf:org/model@refs/pr/1", "org/model", "refs/pr/1"},
		{"hf:gpt2", "gpt2", "main"},
		{"org/model@0123456789abcdef0123456789abcdef01234567", "org/model", "0123456789abcdef0123456789abcdef01234567"},
	} {
		got, err := huggingface.ParseRef(tc.in)
		if err != nil {
			t.Fatalf("ParseRef(%q): %v", tc.in, err)
		}
		if got.Repo != tc.repo || got.Revision != tc.rev {
			t.Fatalf("ParseRef(%q) = %+v, want %s@%s", tc.in, got, tc.repo, tc.rev)
		}
	}
	for _, bad := range []string{"", "hf:", "hf:org/model@", "hf:../etc", "hf:a/b/c", "hf:org/mo del", "hf:org/model@a b",
		"hf:/abs", "hf:org/-x", "hf:org/x--y", "hf:org/model@x\x00", `hf:org\model`, "hf:org/model@a@b"} {
		if _, err := huggingface.ParseRef(bad); !errors.Is(err, huggingface.ErrInvalidRef) {
			t.Fatalf("ParseRef(%q) err = %v, want ErrInvalidRef", bad, err)
		}
	}
}

func TestAliasFor(t *testing.T) {
	for rev, want := range map[string]string{"main": "main", "refs/pr/1": "refs+pr+1", "v1.0": "v1.0", "feature/x": "feature+x"} {
		got, ok := huggingface.AliasFor(rev)
		if !ok || got != want {
			t.Fatalf("AliasFor(%q) = %q, %v; want %q", rev, got, ok, want)
		}
		if err := registry.ValidateAlias(got); err != nil {
			t.Fatalf("AliasFor(%q) = %q, which the registry refuses: %v", rev, got, err)
		}
	}
	if a, ok := huggingface.AliasFor("0123456789abcdef0123456789abcdef01234567"); ok {
		t.Fatalf("a commit got alias %q", a)
	}
}

// FuzzParseRef: whatever parses must be a repo id the registry accepts as a model name, and a
// revision whose alias (if any) the registry accepts; nothing with '..', NUL or '\' gets through.
func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"hf:org/model@main", "hf:gpt2", "hf:org/m@refs/pr/1", "hf:../x@..", "hf:a/b@\x00", `hf:a\b`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := huggingface.ParseRef(s)
		if err != nil {
			return
		}
		if err := registry.ValidateName(r.Repo); err != nil {
			t.Fatalf("ParseRef(%q) accepted repo %q the registry refuses: %v", s, r.Repo, err)
		}
		if strings.ContainsAny(r.Repo+r.Revision, "\x00\\") || strings.Contains(r.Repo, "..") {
			t.Fatalf("ParseRef(%q) = %+v lets a dangerous character through", s, r)
		}
		if a, ok := huggingface.AliasFor(r.Revision); ok {
			if err := registry.ValidateAlias(a); err != nil {
				t.Fatalf("AliasFor(%q) = %q, refused by the registry: %v", r.Revision, a, err)
			}
		}
	})
}

func TestFilter_Match(t *testing.T) {
	f, err := huggingface.NewFilter([]string{"*.safetensors", "config.json", "tokenizer*", "onnx/"}, []string{"*fp16*", "[!a-z]*"})
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{
		"model.safetensors":         true,
		"sub/dir/model.safetensors": true, // '*' crosses '/', as in fnmatch
		"model.fp16.safetensors":    false,
		"config.json":               true,
		"sub/config.json":           false,
		"tokenizer.json":            true,
		"onnx/model.onnx":           true,
		"README.md":                 false,
		"1.safetensors":             false,
	} {
		if got := f.Match(p); got != want {
			t.Fatalf("Match(%q) = %v, want %v", p, got, want)
		}
	}
	if !(huggingface.Filter{}).Match("anything") {
		t.Fatal("the zero Filter must select everything")
	}
	if _, err := huggingface.NewFilter([]string{"[abc"}, nil); err == nil {
		t.Fatal("an unterminated class was accepted")
	}
}
