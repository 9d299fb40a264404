package main

import (
	"context"
	"log/slog"
	"strconv"
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
	// status is the STATUS= of the last READY=1, sent again when a reload ends.
	status string
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
	s.status = status
	s.notify(daemon.SdNotifyReady + "\nSTATUS=" + status)
}

// reloading tells systemd a reload (SIGHUP) began; reloaded ends it. MONOTONIC_USEC is what
// Type=notify-reload (systemd 253+) requires with RELOADING=1; Type=notify accepts it as well.
func (s *systemd) reloading() {
	state := daemon.SdNotifyReloading + "\nSTATUS=reloading the configuration"
	if us := monotonicUsec(); us > 0 {
		state += "\nMONOTONIC_USEC=" + strconv.FormatInt(us, 10)
	}
	s.notify(state)
}

// reloaded tells systemd the reload is over and the daemon serves as before.
func (s *systemd) reloaded() {
	s.notify(daemon.SdNotifyReady + "\nSTATUS=" + s.status)
}

// stopping tells systemd shutdown began, so it does not treat the drain as a hang. drain is how
// long the shutdown may take (shutdown_timeout plus closing the store): EXTEND_TIMEOUT_USEC makes
// systemd wait at least that long before its SIGKILL even when the unit's TimeoutStopSec is
// shorter (it never shortens it), so an operator who raises shutdown_timeout does not also have to
// edit the unit, and a drain is never cut off half-way by a kill the daemon did not choose.
func (s *systemd) stopping(drain time.Duration) {
	state := daemon.SdNotifyStopping + "\nSTATUS=shutting down"
	if drain > 0 {
		state += "\nEXTEND_TIMEOUT_USEC=" + strconv.FormatInt(drain.Microseconds(), 10)
	}
	s.notify(state)
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
