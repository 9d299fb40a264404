package huggingface

import (
	"fmt"
	"regexp"
	"strings"
)

// Filter selects repository files with fnmatch-style globs, as `hf download --include/--exclude`
// does: '*' matches any run of characters including '/', '?' one character, "[abc]" and "[!abc]"
// character classes. A file is selected if it matches some include (or there are none) and no
// exclude. The zero Filter selects everything.
type Filter struct {
	include, exclude []*regexp.Regexp
}

// NewFilter compiles include and exclude globs. A malformed glob (an unterminated '[') is an
// error naming it.
func NewFilter(include, exclude []string) (Filter, error) {
	var f Filter
	for _, g := range include {
		re, err := compileGlob(g)
		if err != nil {
			return Filter{}, err
		}
		f.include = append(f.include, re)
	}
	for _, g := range exclude {
		re, err := compileGlob(g)
		if err != nil {
			return Filter{}, err
		}
		f.exclude = append(f.exclude, re)
	}
	return f, nil
}

// Match reports whether path is selected.
func (f Filter) Match(path string) bool {
	ok := len(f.include) == 0
	for _, re := range f.include {
		if re.MatchString(path) {
			ok = true
			break
		}
	}
	if !ok {
		return false
	}
	for _, re := range f.exclude {
		if re.MatchString(path) {
			return false
		}
	}
	return true
}

// compileGlob translates a glob into an anchored regexp the way Python's fnmatch.translate does,
// so patterns behave exactly as users of huggingface_hub expect ("*.safetensors" matches
// "sub/dir/x.safetensors"). A trailing '/' means "everything under", like hf download.
func compileGlob(g string) (*regexp.Regexp, error) {
	if strings.HasSuffix(g, "/") {
		g += "*"
	}
	var b strings.Builder
	b.WriteString(`(?s)\A`)
	for i := 0; i < len(g); i++ {
		switch c := g[i]; c {
		case '*':
			b.WriteString(`.*`)
		case '?':
			b.WriteString(`.`)
		case '[':
			j := i + 1
			if j < len(g) && g[j] == '!' {
				j++
			}
			if j < len(g) && g[j] == ']' {
				j++
			}
			for j < len(g) && g[j] != ']' {
				j++
			}
			if j >= len(g) {
				return nil, fmt.Errorf("glob %q: unterminated '['", g)
			}
			class := g[i+1 : j]
			b.WriteByte('[')
			if strings.HasPrefix(class, "!") {
				b.WriteByte('^')
				class = class[1:]
			}
			b.WriteString(strings.NewReplacer(`\`, `\\`, `[`, `\[`).Replace(class))
			b.WriteByte(']')
			i = j
		default:
			// Byte-wise is safe: QuoteMeta escapes only ASCII, so UTF-8 sequences pass through intact.
			b.WriteString(regexp.QuoteMeta(g[i : i+1]))
		}
	}
	b.WriteString(`\z`)
	re, err := regexp.Compile(b.String())
	if err != nil {
		return nil, fmt.Errorf("glob %q: %v", g, err)
	}
	return re, nil
}
