package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// parseLevel parses a log.level value.
func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("must be debug, info, warn or error, got %q", s)
}

// logTarget describes where logs go, so "auto" can pick a format.
type logTarget struct {
	// TTY: a person is watching; use readable text with timestamps.
	TTY bool
	// Journal: stderr is connected to journald, which timestamps lines itself and understands
	// "<N>" syslog priority prefixes.
	Journal bool
}

// detectLogTarget inspects f (stderr). JOURNAL_STREAM holds "dev:inode" of the journal stream
// systemd connected; comparing it with f's own device and inode is how sd_journal_stream_fd(3)
// clients tell they really write to the journal (not a redirect in a child process).
func detectLogTarget(f *os.File) logTarget {
	var t logTarget
	fi, err := f.Stat()
	if err != nil {
		return t
	}
	t.TTY = fi.Mode()&os.ModeCharDevice != 0
	if js := os.Getenv("JOURNAL_STREAM"); js != "" {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			t.Journal = js == fmt.Sprintf("%d:%d", st.Dev, st.Ino)
		}
	}
	return t
}

// newLogger builds the process logger from log.level and log.format. format "auto" chooses text on
// a terminal, journald text under systemd, JSON otherwise (log shippers parse it).
func newLogger(w io.Writer, level, format string, target logTarget) (*slog.Logger, error) {
	lvl, err := parseLevel(level)
	if err != nil {
		return nil, err
	}
	lv := new(slog.LevelVar)
	lv.Set(lvl)
	return newLevelLogger(w, lv, format, target)
}

// newLevelLogger is newLogger with its level in lv, which the daemon changes on a reload (SIGHUP).
func newLevelLogger(w io.Writer, lvl *slog.LevelVar, format string, target logTarget) (*slog.Logger, error) {
	if format == "auto" {
		switch {
		case target.TTY:
			format = "text"
		case target.Journal:
			format = "journald"
		default:
			format = "json"
		}
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		// Durations as Go writes them ("1.6ms", "10s"), as the other formats print them: encoding/json
		// would give bare nanoseconds, with no unit in the field name.
		opts.ReplaceAttr = func(_ []string, a slog.Attr) slog.Attr {
			if a.Value.Kind() == slog.KindDuration {
				return slog.String(a.Key, a.Value.Duration().String())
			}
			return a
		}
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "journald":
		return slog.New(newJournaldHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format must be auto, text, json or journald, got %q", format)
}

// journaldHandler writes logfmt lines without a timestamp (journald adds its own) and prefixed with a
// syslog priority ("<3>" error … "<7>" debug), which systemd's stream transport turns into the
// entry's PRIORITY so `journalctl -p warning` works.
type journaldHandler struct {
	mu    *sync.Mutex
	w     io.Writer
	inner slog.Handler
}

func newJournaldHandler(w io.Writer, opts *slog.HandlerOptions) *journaldHandler {
	o := *opts
	o.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey) {
			return slog.Attr{} // the journal records both
		}
		return a
	}
	return &journaldHandler{mu: new(sync.Mutex), w: w, inner: slog.NewTextHandler(w, &o)}
}

func (h *journaldHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *journaldHandler) Handle(ctx context.Context, r slog.Record) error {
	prio := 6 // LOG_INFO
	switch {
	case r.Level >= slog.LevelError:
		prio = 3
	case r.Level >= slog.LevelWarn:
		prio = 4
	case r.Level < slog.LevelInfo:
		prio = 7
	}
	// One lock around prefix and line keeps concurrent records from interleaving.
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, err := fmt.Fprintf(h.w, "<%d>", prio); err != nil {
		return err
	}
	return h.inner.Handle(ctx, r)
}

func (h *journaldHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &journaldHandler{mu: h.mu, w: h.w, inner: h.inner.WithAttrs(as)}
}

func (h *journaldHandler) WithGroup(name string) slog.Handler {
	return &journaldHandler{mu: h.mu, w: h.w, inner: h.inner.WithGroup(name)}
}

// requestLogInterceptors log each RPC at debug: method, status code and duration — never keys,
// values or metadata (which may carry tokens). When debug is off they cost one Enabled check.
func requestLogInterceptors(log *slog.Logger) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	logRPC := func(ctx context.Context, method string, start time.Time, err error) {
		st := status.Convert(err)
		log.LogAttrs(ctx, slog.LevelDebug, "rpc",
			slog.String("method", method),
			slog.String("code", st.Code().String()),
			slog.Duration("duration", time.Since(start)))
	}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if !log.Enabled(ctx, slog.LevelDebug) {
			return h(ctx, req)
		}
		start := time.Now()
		resp, err := h(ctx, req)
		logRPC(ctx, info.FullMethod, start, err)
		return resp, err
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		ctx := ss.Context()
		if !log.Enabled(ctx, slog.LevelDebug) {
			return h(srv, ss)
		}
		start := time.Now()
		err := h(srv, ss)
		logRPC(ctx, info.FullMethod, start, err)
		return err
	}
	return unary, stream
}
