package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestNewLogger_Formats(t *testing.T) {
	for _, tc := range []struct {
		name, format string
		target       logTarget
		check        func(t *testing.T, out string)
	}{
		{"AutoTTYIsText", "auto", logTarget{TTY: true}, func(t *testing.T, out string) {
			if !strings.HasPrefix(out, "time=") || !strings.Contains(out, `level=WARN msg="disk low" free=3`) {
				t.Fatalf("got %q", out)
			}
		}},
		{"AutoPipeIsJSON", "auto", logTarget{}, func(t *testing.T, out string) {
			var m map[string]any
			if err := json.Unmarshal([]byte(out), &m); err != nil || m["msg"] != "disk low" || m["level"] != "WARN" {
				t.Fatalf("got %q (%v)", out, err)
			}
		}},
		{"AutoJournal", "auto", logTarget{Journal: true}, func(t *testing.T, out string) {
			// Priority 4 = warning; no timestamp, no level key: the journal records both.
			if out != "<4>msg=\"disk low\" free=3\n" {
				t.Fatalf("got %q", out)
			}
		}},
		{"ExplicitJSONOnTTY", "json", logTarget{TTY: true}, func(t *testing.T, out string) {
			if !json.Valid([]byte(out)) {
				t.Fatalf("got %q", out)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := newLogger(&buf, "info", tc.format, tc.target)
			if err != nil {
				t.Fatal(err)
			}
			log.Debug("hidden")
			log.Warn("disk low", "free", 3)
			tc.check(t, buf.String())
		})
	}
}

func TestNewLogger_JSONDurations(t *testing.T) {
	// A duration reads as in the other formats, not as bare nanoseconds.
	var buf bytes.Buffer
	log, _ := newLogger(&buf, "info", "json", logTarget{})
	log.Info("rpc", "duration", 1600*time.Microsecond, "timeout", 10*time.Second)
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil || m["duration"] != "1.6ms" || m["timeout"] != "10s" {
		t.Fatalf("got %s (%v)", buf.String(), err)
	}
}

func TestJournaldHandler_Priorities(t *testing.T) {
	var buf bytes.Buffer
	log, err := newLogger(&buf, "debug", "journald", logTarget{})
	if err != nil {
		t.Fatal(err)
	}
	log = log.With("component", "registry")
	log.Debug("d")
	log.Info("i")
	log.Warn("w")
	log.Error("e")
	want := "<7>component=registry msg=d\n<6>component=registry msg=i\n<4>component=registry msg=w\n<3>component=registry msg=e\n"
	// TextHandler puts msg before attrs; accept its order by comparing per line.
	got := buf.String()
	for _, l := range strings.Split(strings.TrimSpace(want), "\n") {
		prio, msg := l[:3], l[strings.Index(l, "msg="):]
		found := false
		for _, g := range strings.Split(got, "\n") {
			if strings.HasPrefix(g, prio) && strings.Contains(g, msg) && strings.Contains(g, "component=registry") {
				found = true
			}
		}
		if !found {
			t.Fatalf("no line %q in\n%s", l, got)
		}
	}
}

func TestNewLogger_BadLevel(t *testing.T) {
	if _, err := newLogger(&bytes.Buffer{}, "loud", "text", logTarget{}); err == nil {
		t.Fatal("want error")
	}
}

func TestRequestLogInterceptors(t *testing.T) {
	const secret = "value-that-must-not-be-logged"
	handler := func(ctx context.Context, req any) (any, error) {
		return nil, status.Error(codes.NotFound, "key "+secret+" not found")
	}
	info := &grpc.UnaryServerInfo{FullMethod: "/buffdb.kv.Kv/Get"}

	t.Run("Debug", func(t *testing.T) {
		var buf bytes.Buffer
		log, _ := newLogger(&buf, "debug", "text", logTarget{})
		unary, _ := requestLogInterceptors(log)
		_, _ = unary(context.Background(), secret, info, handler)
		out := buf.String()
		if !strings.Contains(out, "method=/buffdb.kv.Kv/Get") || !strings.Contains(out, "code=NotFound") ||
			!strings.Contains(out, "duration=") {
			t.Fatalf("got %q", out)
		}
		if strings.Contains(out, secret) {
			t.Fatalf("request log leaks a value: %q", out)
		}
	})
	t.Run("InfoSilent", func(t *testing.T) {
		var buf bytes.Buffer
		log, _ := newLogger(&buf, "info", "text", logTarget{})
		unary, _ := requestLogInterceptors(log)
		if _, err := unary(context.Background(), secret, info, handler); status.Code(err) != codes.NotFound {
			t.Fatalf("error not passed through: %v", err)
		}
		if buf.Len() != 0 {
			t.Fatalf("logged at info: %q", buf.String())
		}
	})
}

// stderrFile is a file standing in for stderr, and its stat, whose device and inode are what
// JOURNAL_STREAM names when systemd connects stderr to the journal.
func stderrFile(t *testing.T) (*os.File, syscall.Stat_t) {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return f, st
}

func TestDetectLogTarget(t *testing.T) {
	f, st := stderrFile(t)
	t.Run("Journal", func(t *testing.T) {
		t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
		if got := detectLogTarget(f); !got.Journal || got.TTY {
			t.Fatalf("got %+v", got)
		}
	})
	t.Run("InheritedFromParent", func(t *testing.T) {
		// A child whose stderr was redirected elsewhere must not think it writes to the journal.
		t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino+1))
		if got := detectLogTarget(f); got.Journal {
			t.Fatalf("got %+v", got)
		}
	})
}
