package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/internal/linktest"
)

// modelSuite drives the model commands the way a user does; base selects the store or daemon.
func modelSuite(t *testing.T, base ...string) {
	a := func(args ...string) []string { return append(append([]string{}, base...), args...) }
	src := t.TempDir()
	weights := make([]byte, 5<<20+3)
	rand.Read(weights)
	os.MkdirAll(filepath.Join(src, "onnx"), 0o755)
	os.WriteFile(filepath.Join(src, "onnx", "model.onnx"), weights, 0o644)
	os.WriteFile(filepath.Join(src, "config.json"), []byte(`{"layers": 12}`), 0o644)

	r := must(t, exitOK, "", a("model", "push", src, "--name", "org/bert", "--version", "v1", "--framework", "onnx",
		"--param", "task=nlp", "--alias", "production", "--input-shape", "-1,128")...)
	if !strings.Contains(r.stdout, "pushed org/bert:v1: 2 files") {
		t.Fatalf("push stdout %q", r.stdout)
	}
	if !strings.Contains(r.stderr, "(100%)") {
		t.Fatalf("no plain progress lines without a terminal: %q", r.stderr)
	}
	// The same content as another version: nothing is sent again.
	r = must(t, exitOK, "", a("model", "push", src, "--name", "org/bert", "--version", "v2")...)
	if !strings.Contains(r.stdout, "sent 0 B") {
		t.Fatalf("identical push re-sent bytes: %q", r.stdout)
	}

	r = must(t, exitOK, "", a("model", "ls")...)
	if !strings.Contains(r.stdout, "org/bert") || !strings.Contains(r.stdout, "production") {
		t.Fatalf("ls = %q", r.stdout)
	}
	if r := must(t, exitOK, "", a("model", "ls", "--framework", "pytorch")...); strings.Contains(r.stdout, "org/bert") {
		t.Fatalf("ls --framework pytorch = %q", r.stdout)
	}
	r = must(t, exitOK, "", a("model", "show", "org/bert@production")...)
	for _, want := range []string{"version: v1", "onnx/model.onnx", "param task: nlp", "input shape: [-1 128]", "aliases: production"} {
		if !strings.Contains(strings.Join(strings.Fields(r.stdout), " "), want) {
			t.Fatalf("show lacks %q:\n%s", want, r.stdout)
		}
	}

	// JSON: every field present, times as RFC 3339, a version never pulled has last_pulled null.
	r = must(t, exitOK, "", a("model", "ls", "--json")...)
	var models []struct {
		Name     string           `json:"name"`
		Versions []map[string]any `json:"versions"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &models); err != nil || len(models) != 1 || len(models[0].Versions) != 2 {
		t.Fatalf("ls --json = %s (%v)", r.stdout, err)
	}
	for _, v := range models[0].Versions {
		created, _ := v["created_at"].(string)
		if _, err := time.Parse(time.RFC3339, created); err != nil || v["last_pulled"] != nil || v["pinned"] != false || v["framework"] == nil {
			t.Fatalf("ls --json version %v", v)
		}
	}
	r = must(t, exitOK, "", a("model", "show", "--json", "org/bert:v2")...)
	if !strings.Contains(r.stdout, `"last_pulled": null`) {
		t.Fatalf("show --json of a version never pulled: %s", r.stdout)
	}

	out := t.TempDir()
	must(t, exitOK, "", a("model", "pull", "org/bert@production", "-o", out)...)
	got, err := os.ReadFile(filepath.Join(out, "onnx", "model.onnx"))
	if err != nil || !bytes.Equal(got, weights) {
		t.Fatalf("pulled file differs: %v", err)
	}

	must(t, exitOK, "", a("model", "tag", "org/bert:v2", "canary")...)
	must(t, exitOK, "", a("model", "pin", "org/bert:v2")...)
	r = must(t, exitError, "", a("model", "rm", "org/bert:v1")...)
	if !strings.Contains(r.stderr, "alias production") {
		t.Fatalf("rm of an aliased version: %q", r.stderr)
	}
	must(t, exitOK, "", a("model", "untag", "org/bert@production")...)
	must(t, exitOK, "", a("model", "rm", "org/bert:v1")...)
	must(t, exitNotFound, "", a("model", "show", "org/bert:v1")...)
	must(t, exitError, "", a("model", "rm", "org/bert:v2")...) // pinned (and latest, canary)
	must(t, exitOK, "", a("model", "unpin", "org/bert:v2")...)
	must(t, exitOK, "", a("model", "verify")...)
	must(t, exitOK, "", a("gc")...)

	must(t, exitUsage, "", a("model", "push", src, "--name", "bad:name", "--version", "v1")...)
	must(t, exitUsage, "", a("model", "push", src, "--version", "v1")...)
	must(t, exitUsage, "", a("model", "pull", "org/bert")...)
	must(t, exitUsage, "", a("model", "show", "../etc")...) // a malformed reference
}

func TestCLI_ModelWithoutDaemon(t *testing.T) {
	modelSuite(t, "--data-dir", t.TempDir())
}

func TestCLI_ModelWithDaemon(t *testing.T) {
	dir := t.TempDir()
	startDaemon(t, dir)
	modelSuite(t, "--data-dir", dir)
}

// TestProgress_PlainLines: without a terminal, progress is a line per 10%; the rate and ETA wait
// until the transfer has run a while (an ETA from its first bytes is noise), except that the last
// line reports the rate achieved.
func TestProgress_PlainLines(t *testing.T) {
	var w bytes.Buffer
	p := newProgress(&w, "pull org/m@latest")
	p.update(8, 5_000_000)
	p.update(9, 5_000_000) // same 10% step: no line
	p.update(5_000_000, 5_000_000)
	lines := strings.Split(strings.TrimSpace(w.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("lines = %q, want one at 0%% and one at 100%%", lines)
	}
	if lines[0] != "pull org/m@latest: 8 B / 4.8 MiB (0%)" {
		t.Fatalf("first line = %q: no rate or ETA from the first bytes", lines[0])
	}
	if !strings.HasPrefix(lines[1], "pull org/m@latest: 4.8 MiB / 4.8 MiB (100%), ") || !strings.HasSuffix(lines[1], "/s") {
		t.Fatalf("last line = %q, want the rate achieved and no ETA", lines[1])
	}
	w.Reset()
	p.start = p.start.Add(-2 * time.Second) // as if two seconds in
	p.update(2_600_000, 5_000_000)
	if !strings.Contains(w.String(), "(52%), ") || !strings.Contains(w.String(), "/s, ETA ") {
		t.Fatalf("line after 2 s = %q, want rate and ETA", w.String())
	}
}

// stallingLink relays connections to addr; the first one falls silent for good after 4 MiB (no
// bytes, no FIN), as a NAT that dropped the connection's state leaves it. Later ones relay normally.
func stallingLink(t testing.TB, addr string) *linktest.Link {
	return linktest.Start(t, addr, linktest.Options{After: 4 << 20, Stall: true, Faulty: func(n int32) bool { return n == 1 }})
}

// TestModel_StalledLinkResumes: a push and a pull whose connection goes silent mid-transfer (no
// bytes, no FIN) notice it through keepalive, resume on a new connection and finish with the
// exact bytes. Before, both waited forever.
func TestModel_StalledLinkResumes(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out a keepalive (grpc-go pings no sooner than 10 s)")
	}
	saved := clientKeepalive
	clientKeepalive.Time, clientKeepalive.Timeout = time.Second, time.Second // raised to 10 s + 1 s
	t.Cleanup(func() { clientKeepalive = saved })
	m := startDaemon(t, t.TempDir())
	var addr string
	for _, a := range m.Addrs() {
		if a.Network() == "tcp" {
			addr = a.String()
		}
	}
	src := t.TempDir()
	data := make([]byte, 12<<20)
	rand.Read(data)
	os.WriteFile(filepath.Join(src, "model.bin"), data, 0o644)

	t.Run("Push", func(t *testing.T) {
		link := stallingLink(t, addr)
		r := must(t, exitOK, "", "--addr", link.Addr, "model", "push", src, "--name", "m", "--version", "v1")
		if !strings.Contains(r.stdout, "pushed m:v1") || link.Accepted() < 2 {
			t.Fatalf("push over a stalling link: %d connections, stdout %q", link.Accepted(), r.stdout)
		}
	})
	t.Run("Pull", func(t *testing.T) {
		link := stallingLink(t, addr)
		out := t.TempDir()
		must(t, exitOK, "", "--addr", link.Addr, "model", "pull", "m:v1", "-o", out)
		got, err := os.ReadFile(filepath.Join(out, "model.bin"))
		if err != nil || !bytes.Equal(got, data) || link.Accepted() < 2 {
			t.Fatalf("pull over a stalling link: %d connections, file differs: %v", link.Accepted(), err)
		}
	})
}

// TestModelWatch_Reconnects: `model watch` follows the registry across a daemon restart. It
// reconnects, says resync (what changed while it was down was not reported), and reports later
// changes. Before, it exited with "registry closed", and a script reading it stopped following.
func TestModelWatch_Reconnects(t *testing.T) {
	dir := t.TempDir()
	p := startProc(t, dir)
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "model.bin"), []byte("weights v1"), 0o644)

	watch := exec.Command(buffdbdBin, "--addr", p.addr, "model", "watch", "m")
	out, err := watch.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	watch.Stderr = &stderr
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { watch.Process.Kill(); watch.Wait() })
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// next returns the next line with the given kind (after the timestamp), skipping others.
	next := func(kind string) string {
		t.Helper()
		timeout := time.After(time.Minute) // a hang guard, not a measurement
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("watch exited waiting for %q; stderr: %s", kind, stderr.String())
				}
				if f := strings.Fields(l); len(f) > 2 && f[1] == kind {
					return l
				}
			case <-timeout:
				t.Fatalf("no %q line from watch; stderr: %s", kind, stderr.String())
			}
		}
	}
	// The watch is open once a change made now is reported: tag until one is.
	must(t, exitOK, "", "--addr", p.addr, "model", "push", src, "--name", "m", "--version", "v1")
	reported := func() bool { // a line for the tag just set, within a moment
		for wait := time.After(200 * time.Millisecond); ; {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("watch exited; stderr: %s", stderr.String())
				}
				if strings.Contains(l, " alias_set m version=v1 alias=a") {
					return true
				}
			case <-wait:
				return false
			}
		}
	}
	for i := 0; ; i++ {
		must(t, exitOK, "", "--addr", p.addr, "model", "tag", "m:v1", fmt.Sprintf("a%d", i))
		if reported() {
			break
		}
	}

	p.kill(t)
	p = startProcAt(t, dir, p.addr)
	if l := next("resync"); !strings.Contains(l, " m version=- ") {
		t.Fatalf("resync line = %q", l)
	}
	os.WriteFile(filepath.Join(src, "model.bin"), []byte("weights v2"), 0o644)
	must(t, exitOK, "", "--addr", p.addr, "model", "push", src, "--name", "m", "--version", "v2")
	if l := next("published"); !strings.Contains(l, " m version=v2 ") {
		t.Fatalf("published line after the restart = %q", l)
	}
}
