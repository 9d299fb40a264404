package registry_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/buffdb/buffdbd/registry"
)

func TestValidateName(t *testing.T) {
	ok := []string{"bert", "org/bert-base", "a.b_c-d", "Org/Name/v2", "global/x", "org/global"}
	bad := []string{"", "a:b", "/a", "a/", "a//b", "./a", "a/..", "a b", "a@b", "a\x00", strings.Repeat("a", 201), "ä",
		"global"} // model:global:index is the list of models
	for _, n := range ok {
		if err := registry.ValidateName(n); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", n, err)
		}
	}
	for _, n := range bad {
		if err := registry.ValidateName(n); !errors.Is(err, registry.ErrInvalid) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalid", n, err)
		}
	}
	for _, v := range []string{"v1", "1.0.0+build", "main", "0123abcd"} {
		if err := registry.ValidateVersion(v); err != nil {
			t.Errorf("ValidateVersion(%q) = %v", v, err)
		}
	}
	for _, v := range []string{"", "a/b", "a:b", "..", ".", "a@b", "\n"} {
		if err := registry.ValidateVersion(v); !errors.Is(err, registry.ErrInvalid) {
			t.Errorf("ValidateVersion(%q) = %v, want ErrInvalid", v, err)
		}
	}
	// The character named is the one written, not its first UTF-8 byte.
	if err := registry.ValidateName("modèle"); err == nil || !strings.Contains(err.Error(), `contains 'è'`) {
		t.Errorf("ValidateName(modèle) = %v, want it to name 'è'", err)
	}
}

func TestCleanPath(t *testing.T) {
	long := strings.Repeat("x", 255) // NAME_MAX: the longest file name Linux filesystems hold
	for _, p := range []string{"model.bin", "onnx/model.onnx", "a b/c.json", "ünicode.txt", long, "d/" + long} {
		if got, err := registry.CleanPath(p); err != nil || got != p {
			t.Errorf("CleanPath(%q) = %q, %v", p, got, err)
		}
	}
	for _, p := range []string{"", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a/", "a\\b", "a\x00b", "a\nb", "..", "\xff",
		"w.buffdbd-partial", "d/w.buffdbd-partial", // a pull's name for its unfinished file w
		long + "x", long + "x/a", "d/" + strings.Repeat("ü", 128)} { // a segment no pull could create
		if _, err := registry.CleanPath(p); !errors.Is(err, registry.ErrInvalid) {
			t.Errorf("CleanPath(%q) = %v, want ErrInvalid", p, err)
		}
	}
}

func TestParseRef(t *testing.T) {
	cases := []struct {
		in   string
		want registry.Ref
	}{
		{"bert", registry.Ref{Name: "bert", Alias: "latest"}},
		{"org/bert:v2", registry.Ref{Name: "org/bert", Version: "v2"}},
		{"org/bert@production", registry.Ref{Name: "org/bert", Alias: "production"}},
	}
	for _, c := range cases {
		got, err := registry.ParseRef(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseRef(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
		if c.want.Alias != "latest" && got.String() != c.in {
			t.Errorf("Ref.String() = %q, want %q", got.String(), c.in)
		}
	}
	for _, in := range []string{"", ":v1", "a:", "a@", "a:b:c", "a@b@c", "../a:v", "a:v/1", "a@x:y"} {
		if _, err := registry.ParseRef(in); !errors.Is(err, registry.ErrInvalid) {
			t.Errorf("ParseRef(%q) = %v, want ErrInvalid", in, err)
		}
	}
}

// FuzzParseRef: whatever parses must re-validate, contain no key separator or path escape in the
// name, and round-trip through String.
func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"bert", "org/bert:v2", "a@b", "../x", "a:b@c", "a/./b", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := registry.ParseRef(s)
		if err != nil {
			if !errors.Is(err, registry.ErrInvalid) {
				t.Fatalf("ParseRef(%q) error %v does not wrap ErrInvalid", s, err)
			}
			return
		}
		if strings.ContainsAny(r.Name, ":@\x00\\") || strings.Contains("/"+r.Name+"/", "/../") || strings.HasPrefix(r.Name, "/") {
			t.Fatalf("ParseRef(%q) accepted name %q", s, r.Name)
		}
		if registry.ValidateName(r.Name) != nil || (r.Version != "" && registry.ValidateVersion(r.Version) != nil) {
			t.Fatalf("ParseRef(%q) = %+v does not re-validate", s, r)
		}
		back, err := registry.ParseRef(r.String())
		if err != nil || back != r {
			t.Fatalf("round trip of %q: %+v -> %q -> %+v, %v", s, r, r.String(), back, err)
		}
	})
}

// FuzzCleanPath: an accepted path never escapes the directory it is joined under.
func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"a/b", "../a", "/abs", "a\x00b", "a\\..\\b", "a/./b", "ok.bin"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := registry.CleanPath(s)
		if err != nil {
			if !errors.Is(err, registry.ErrInvalid) {
				t.Fatalf("CleanPath(%q) error %v does not wrap ErrInvalid", s, err)
			}
			return
		}
		if p != s || strings.HasPrefix(p, "/") || strings.ContainsAny(p, "\x00\\") {
			t.Fatalf("CleanPath(%q) accepted %q", s, p)
		}
		for _, seg := range strings.Split(p, "/") {
			if seg == "" || seg == "." || seg == ".." {
				t.Fatalf("CleanPath(%q) accepted segment %q", s, seg)
			}
		}
	})
}
