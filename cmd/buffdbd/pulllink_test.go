package main

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/internal/linktest"
)

// linkSuite drives `model pull --link` the way a user does; base selects the store or daemon.
func linkSuite(t *testing.T, base ...string) {
	a := func(args ...string) []string { return append(append([]string{}, base...), args...) }
	v1 := make([]byte, 3<<20)
	rand.NewChaCha8([32]byte{1}).Read(v1)
	v2 := append(bytes.Clone(v1), "and more"...)
	// In order: v2, pushed last, is what @latest names.
	for _, v := range []struct {
		name string
		data []byte
	}{{"v1", v1}, {"v2", v2}} {
		v, data := v.name, v.data
		src := t.TempDir()
		os.WriteFile(filepath.Join(src, "w.bin"), data, 0o644)
		os.WriteFile(filepath.Join(src, "config.json"), []byte(`{"v":"`+v+`"}`), 0o644)
		must(t, exitOK, "", a("model", "push", src, "--name", "org/m", "--version", v)...)
	}
	parent := t.TempDir()
	link := filepath.Join(parent, "m")
	r := must(t, exitOK, "", a("model", "pull", "org/m:v1", "--link", link)...)
	if want := link + " -> " + filepath.Join(".m.versions", "org", "m:v1") + "\n"; !strings.Contains(r.stdout, want) {
		t.Fatalf("stdout %q lacks %q", r.stdout, want)
	}
	if b, _ := os.ReadFile(filepath.Join(link, "config.json")); string(b) != `{"v":"v1"}` {
		t.Fatalf("config.json through the link = %q", b)
	}
	r = must(t, exitOK, "", a("model", "pull", "org/m@latest", "--link", link)...)
	if !strings.Contains(r.stdout, "(was "+filepath.Join(parent, ".m.versions", "org", "m:v1")+")") || strings.Contains(r.stdout, "reused 0 B") {
		t.Fatalf("switch to v2: %q; want the previous version named and its chunks reused", r.stdout)
	}
	if b, _ := os.ReadFile(filepath.Join(link, "w.bin")); !bytes.Equal(b, v2) {
		t.Fatal("w.bin through the link is not v2's")
	}

	// A directory where the link goes is refused, with the way to make it a link.
	real := filepath.Join(parent, "real")
	os.MkdirAll(real, 0o755)
	os.WriteFile(filepath.Join(real, "model.onnx"), []byte("serving"), 0o644)
	r = must(t, exitError, "", a("model", "pull", "org/m:v1", "--link", real)...)
	if !strings.Contains(r.stderr, "is a directory") || !strings.Contains(r.stderr, "hint: ") || !strings.Contains(r.stderr, "ln -s real.orig") {
		t.Fatalf("refusal: %q", r.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(real, "model.onnx")); string(b) != "serving" {
		t.Fatalf("the refused directory changed: %q", b)
	}
	// A link to a file (a server given the path of its model file) is not replaced either.
	os.Symlink(filepath.Join("real", "model.onnx"), filepath.Join(parent, "model.onnx"))
	r = must(t, exitError, "", a("model", "pull", "org/m:v1", "--link", filepath.Join(parent, "model.onnx"))...)
	if !strings.Contains(r.stderr, "which is not a directory") || !strings.Contains(r.stderr, "give a new name") {
		t.Fatalf("refusal of a link to a file: %q", r.stderr)
	}
	// The directory holding the link is not the link: the hint says so instead of suggesting mv . ..orig.
	r = must(t, exitError, "", a("model", "pull", "org/m:v1", "--link", parent+"/.")...)
	if strings.Contains(r.stderr, ".orig") || !strings.Contains(r.stderr, "path of the link itself") {
		t.Fatalf("refusal of a directory given as .: %q", r.stderr)
	}
	must(t, exitUsage, "", a("model", "pull", "org/m:v1", "--link", link, "--keep", "1")...)
	must(t, exitUsage, "", a("model", "pull", "org/m:v1", "-o", parent, "--keep", "3")...)
	must(t, exitUsage, "", a("model", "pull", "org/m:v1", "--link", link, "-o", parent, "--versions", parent)...)
}

func TestCLI_ModelPullLinkWithoutDaemon(t *testing.T) {
	linkSuite(t, "--data-dir", t.TempDir())
}

func TestCLI_ModelPullLinkWithDaemon(t *testing.T) {
	dir := t.TempDir()
	startDaemon(t, dir)
	linkSuite(t, "--data-dir", dir)
}

// TestModelPullLink_KilledKeepsLink kills -9 a `model pull --link` midway: the link still points
// to the previous version, whole; run again, the pull resumes and switches.
func TestModelPullLink_KilledKeepsLink(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 24 MiB through a throttled link")
	}
	p := startProc(t, t.TempDir())
	defer p.kill(t)
	data := map[string][]byte{"v1": make([]byte, 4<<20), "v2": make([]byte, 24<<20)}
	for v, b := range data {
		rand.NewChaCha8([32]byte{byte(len(v) + len(b))}).Read(b)
		src := filepath.Join(t.TempDir(), "model.bin")
		if err := os.WriteFile(src, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(buffdbdBin, "--addr", p.addr, "model", "push", src, "--name", "m", "--version", v).CombinedOutput(); err != nil {
			t.Fatalf("push: %v\n%s", err, out)
		}
	}
	link := filepath.Join(t.TempDir(), "m")
	if out, err := exec.Command(buffdbdBin, "--addr", p.addr, "model", "pull", "m:v1", "--link", link).CombinedOutput(); err != nil {
		t.Fatalf("pull v1: %v\n%s", err, out)
	}
	partial := filepath.Join(filepath.Dir(link), ".m.versions", "m:v2", "model.bin.buffdbd-partial")
	slow := linktest.Start(t, p.addr, linktest.Options{DownRate: 8 << 20})
	pull := exec.Command(buffdbdBin, "--addr", slow.Addr, "model", "pull", "m:v2", "--link", link)
	if err := pull.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute) // a bound on waiting, not an assertion
	for time.Now().Before(deadline) {
		if st, err := os.Stat(partial); err == nil && st.Size() > 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	pull.Process.Kill()
	pull.Wait()
	if _, err := os.Stat(partial); err != nil {
		t.Fatalf("killed the pull before it wrote anything: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(link, "model.bin")); err != nil || !bytes.Equal(got, data["v1"]) {
		t.Fatalf("after the kill, model.bin through the link is not v1's (%v)", err)
	}
	out, err := exec.Command(buffdbdBin, "--addr", p.addr, "model", "pull", "m:v2", "--link", link).CombinedOutput()
	if err != nil {
		t.Fatalf("pull again: %v\n%s", err, out)
	}
	if got, err := os.ReadFile(filepath.Join(link, "model.bin")); err != nil || !bytes.Equal(got, data["v2"]) {
		t.Fatalf("after the second pull, model.bin through the link is not v2's (%v)\n%s", err, out)
	}
	if !strings.Contains(string(out), "(was ") {
		t.Fatalf("the second pull did not report the switch from v1:\n%s", out)
	}
}
