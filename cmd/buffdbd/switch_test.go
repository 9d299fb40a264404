package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCLI_ModelSwitchOffline pulls two versions through a link from a daemon, kills the daemon and
// removes its data directory, then rolls the link back and forth with `model switch`, lists what it
// can switch to, and is refused a version directory that lost part of a file.
func TestCLI_ModelSwitchOffline(t *testing.T) {
	data := t.TempDir()
	p := startProc(t, data)
	files := map[string][]byte{}
	for _, v := range []string{"v1", "v2"} {
		b := make([]byte, 2<<20)
		rand.NewChaCha8([32]byte{byte(len(v)), v[1]}).Read(b)
		files[v] = b
		src := t.TempDir()
		os.WriteFile(filepath.Join(src, "w.bin"), b, 0o644)
		must(t, exitOK, "", "--addr", p.addr, "model", "push", src, "--name", "org/m", "--version", v)
	}
	parent := t.TempDir()
	link := filepath.Join(parent, "m")
	for _, v := range []string{"v1", "v2"} {
		must(t, exitOK, "", "--addr", p.addr, "model", "pull", "org/m:"+v, "--link", link)
	}
	p.kill(t)
	if err := os.RemoveAll(data); err != nil {
		t.Fatal(err)
	}
	served := func() string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(link, "w.bin"))
		if err != nil {
			t.Fatal(err)
		}
		for v, want := range files {
			if bytes.Equal(b, want) {
				return v
			}
		}
		t.Fatal("w.bin through the link is neither version's")
		return ""
	}
	dir := func(v string) string { return filepath.Join(parent, ".m.versions", "org", "m:"+v) }

	// --data-dir names the removed directory: the command must not need (or create) a store.
	r := must(t, exitOK, "", "--data-dir", data, "model", "switch", "--link", link, "--previous")
	want := "switched to org/m:v1 (1 files, 2.0 MiB)\n" + link + " -> " + filepath.Join(".m.versions", "org", "m:v1") + " (was " + dir("v2") + ")\n"
	if r.stdout != want || served() != "v1" {
		t.Fatalf("switch --previous: %q, serving %s; want %q", r.stdout, served(), want)
	}
	if _, err := os.Stat(data); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the switch created the data directory: %v", err)
	}
	// Twice: forward again.
	must(t, exitOK, "", "--addr", p.addr, "model", "switch", "--link", link, "--previous")
	if served() != "v2" {
		t.Fatal("a second switch --previous did not go back to v2")
	}
	must(t, exitOK, "", "model", "switch", "--link", link, "org/m:v1", "--verify")
	if served() != "v1" {
		t.Fatal("switch org/m:v1 did not switch to v1")
	}
	r = must(t, exitOK, "", "model", "switch", "--link", link, "org/m:v1")
	if !strings.Contains(r.stdout, "already points to") {
		t.Fatalf("switch to the current version: %q", r.stdout)
	}

	r = must(t, exitOK, "", "model", "switch", "--link", link, "--list", "--json")
	var list []struct {
		Name, Version, Dir, Problem string
		Current, Previous           bool
		Files                       int
	}
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("--list --json: %v\n%s", err, r.stdout)
	}
	if len(list) != 2 || list[0].Version != "v1" || !list[0].Current || list[1].Version != "v2" || !list[1].Previous ||
		list[0].Problem+list[1].Problem != "" || list[0].Dir != dir("v1") || list[1].Name != "org/m" || list[1].Files != 1 {
		t.Fatalf("--list --json: %s", r.stdout)
	}

	// Part of v2's file lost: refused, naming it; the link stays on v1.
	if err := os.Truncate(filepath.Join(dir("v2"), "w.bin"), 1000); err != nil {
		t.Fatal(err)
	}
	r = must(t, exitError, "", "model", "switch", "--link", link, "--previous")
	if !strings.Contains(r.stderr, "w.bin has 1000 bytes, not 2097152") || !strings.Contains(r.stderr, "hint: ") || served() != "v1" {
		t.Fatalf("switch to a truncated version: %q, serving %s", r.stderr, served())
	}
	r = must(t, exitOK, "", "model", "switch", "--link", link, "--list")
	if !strings.Contains(r.stdout, "no: w.bin has 1000 bytes") {
		t.Fatalf("--list does not show v2's problem:\n%s", r.stdout)
	}
	must(t, exitNotFound, "", "model", "switch", "--link", link, "org/m:v3")
	r = must(t, exitNotFound, "", "model", "switch", "--link", link+"-typo", "--list")
	if !strings.Contains(r.stderr, "no link "+link+"-typo") || r.stdout != "" {
		t.Fatalf("--list of a mistyped link: stdout %q, stderr %q", r.stdout, r.stderr)
	}
	must(t, exitUsage, "", "model", "switch", "--link", link)
	must(t, exitUsage, "", "model", "switch", "--link", link, "org/m@latest")
	must(t, exitUsage, "", "model", "switch", "--link", link, "--previous", "org/m:v2")
	must(t, exitUsage, "", "model", "switch", "org/m:v2")

	// The released binary, as an operator runs it with the daemon gone.
	out, err := exec.Command(buffdbdBin, "model", "switch", "--link", link, "--list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), dir("v1")) {
		t.Fatalf("buffdbd model switch --list: %v\n%s", err, out)
	}
}
