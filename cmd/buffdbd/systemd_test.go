package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// notifySocket listens on a real unixgram socket and points NOTIFY_SOCKET at it, as systemd does.
func notifySocket(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return conn
}

// readNotify reads one datagram; the deadline only bounds a broken test, it asserts nothing.
func readNotify(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("read notify socket: %v", err)
	}
	return string(buf[:n])
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestSystemd_ReadyStopping(t *testing.T) {
	conn := notifySocket(t)
	sd := newSystemd(discardLogger())
	sd.ready("serving")
	if got := readNotify(t, conn); got != "READY=1\nSTATUS=serving" {
		t.Fatalf("got %q", got)
	}
	sd.stopping(40 * time.Second)
	// EXTEND_TIMEOUT_USEC: systemd waits for the whole drain even past a shorter TimeoutStopSec.
	if got := readNotify(t, conn); got != "STOPPING=1\nSTATUS=shutting down\nEXTEND_TIMEOUT_USEC=40000000" {
		t.Fatalf("got %q", got)
	}
	sd.ready("serving again")
	readNotify(t, conn)
	sd.reloading()
	if got := readNotify(t, conn); !strings.HasPrefix(got, "RELOADING=1\nSTATUS=reloading the configuration\nMONOTONIC_USEC=") {
		t.Fatalf("got %q", got)
	}
	sd.reloaded()
	if got := readNotify(t, conn); got != "READY=1\nSTATUS=serving again" {
		t.Fatalf("got %q", got)
	}
}

func TestSystemd_NoSocketIsNoop(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET")
	t.Setenv("WATCHDOG_USEC", "")
	sd := newSystemd(discardLogger())
	sd.ready("serving")
	sd.reloading()
	sd.reloaded()
	sd.stopping(time.Second)
	sd.startWatchdog(func(context.Context) error { return nil }) // never pinged
	sd.stopWatchdog()
}

func TestSystemd_Watchdog(t *testing.T) {
	t.Run("OK", func(t *testing.T) {
		conn := notifySocket(t)
		// 20 ms: pings every 10 ms, so the test sees several quickly.
		t.Setenv("WATCHDOG_USEC", "20000")
		t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
		sd := newSystemd(discardLogger())
		sd.startWatchdog(func(context.Context) error { return nil })
		defer sd.stopWatchdog()
		for range 3 {
			if got := readNotify(t, conn); got != "WATCHDOG=1" {
				t.Fatalf("got %q", got)
			}
		}
	})
	t.Run("UnhealthyNoPing", func(t *testing.T) {
		conn := notifySocket(t)
		t.Setenv("WATCHDOG_USEC", "20000")
		t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
		var checks atomic.Int32
		called := make(chan struct{}, 16)
		sd := newSystemd(discardLogger())
		sd.startWatchdog(func(context.Context) error {
			checks.Add(1)
			called <- struct{}{}
			return errors.New("store wedged")
		})
		// Three failed checks: had any pinged, its datagram would already be queued.
		for range 3 {
			<-called
		}
		sd.stopWatchdog()
		_ = conn.SetReadDeadline(time.Now())
		if n, err := conn.Read(make([]byte, 64)); err == nil {
			t.Fatalf("pinged while unhealthy (%d bytes)", n)
		}
	})
	t.Run("OtherPID", func(t *testing.T) {
		// WATCHDOG_PID names another process: the setting is not ours, do not ping.
		conn := notifySocket(t)
		t.Setenv("WATCHDOG_USEC", "20000")
		t.Setenv("WATCHDOG_PID", "1")
		var checked atomic.Bool
		sd := newSystemd(discardLogger())
		sd.startWatchdog(func(context.Context) error { checked.Store(true); return nil })
		sd.stopWatchdog()
		if checked.Load() {
			t.Fatal("watchdog started for another pid")
		}
		_ = conn
	})
}
