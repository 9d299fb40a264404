package main

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// systemd speaks the sd_notify protocol through coreos/go-systemd (pure Go, no libsystemd). Every
// call is a no-op when NOTIFY_SOCKET is unset, i.e. outside a Type=notify unit.
type systemd struct {
	log    *slog.Logger
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newSystemd(log *slog.Logger) *systemd { return &systemd{log: log} }

func (s *systemd) notify(state string) {
	// false: keep NOTIFY_SOCKET set; STOPPING=1 and WATCHDOG=1 are sent after READY=1.
	if _, err := daemon.SdNotify(false, state); err != nil {
		s.log.Warn("sd_notify failed", "state", state, "err", err)
	}
}

// ready tells systemd the listeners are bound and serving (Type=notify start completes). status is
// shown by `systemctl status`.
func (s *systemd) ready(status string) {
	s.notify(daemon.SdNotifyReady + "\nSTATUS=" + status)
}

// stopping tells systemd shutdown began, so it does not treat the drain as a hang.
func (s *systemd) stopping() {
	s.notify(daemon.SdNotifyStopping + "\nSTATUS=shutting down")
}

// startWatchdog pings WATCHDOG=1 at half of WatchdogSec (the interval sd_watchdog_enabled(3)
// recommends) as long as check passes; a daemon whose store is wedged stops pinging and systemd
// restarts it. No-op without WATCHDOG_USEC. Stop with stopWatchdog.
func (s *systemd) startWatchdog(check readinessCheck) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		s.log.Warn("systemd watchdog settings invalid; not pinging", "err", err)
		return
	}
	if interval <= 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(interval / 2)
		defer t.Stop()
		for {
			cctx, ccancel := context.WithTimeout(ctx, interval/2)
			err := check(cctx)
			ccancel()
			if err == nil {
				s.notify(daemon.SdNotifyWatchdog)
			} else if ctx.Err() == nil {
				s.log.Warn("watchdog: not pinging, daemon unhealthy", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// stopWatchdog stops pinging and waits for the pinger to exit.
func (s *systemd) stopWatchdog() {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
}
