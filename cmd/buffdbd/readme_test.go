package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestREADME_ConfigDefaults: the README's configuration table shows DefaultConfig's values, so a
// changed default cannot leave the documentation behind. Keys whose default is computed (empty in
// DefaultConfig: directories, socket) or a list are described in words there and skipped.
func TestREADME_ConfigDefaults(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	// Rows are "| `key` | `value` | …" or "| `a` / `b` | `x` / `y` | …".
	documented := map[string]string{}
	tick := regexp.MustCompile("`([^`]*)`")
	for _, line := range strings.Split(string(b), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}
		keys, vals := tick.FindAllStringSubmatch(cells[1], -1), tick.FindAllStringSubmatch(cells[2], -1)
		for i, k := range keys {
			if i < len(vals) && (len(keys) == len(vals) || i == 0) {
				documented[k[1]] = vals[i][1]
			}
		}
	}
	def := DefaultConfig()
	checked := 0
	for _, k := range configKeys {
		p := k.field(&def)
		if _, list := p.(*[]string); list {
			continue
		}
		want := formatValue(p)
		if want == "" {
			continue
		}
		got, ok := documented[k.name]
		if !ok {
			t.Errorf("README configuration table has no row for %s", k.name)
			continue
		}
		if got != want {
			t.Errorf("README: %s default %q, DefaultConfig %q", k.name, got, want)
		}
		checked++
	}
	if checked < 10 {
		t.Fatalf("only %d keys checked; has the table's format changed?", checked)
	}
}
