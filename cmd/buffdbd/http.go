package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/singleflight"
)

// readinessCheck reports nil when the daemon can serve: store open, migrations applied, not
// shutting down. It must be cheap; /readyz and the systemd watchdog call it.
type readinessCheck func(ctx context.Context) error

// readyTimeout bounds /readyz's check (a variable so tests need not wait for it).
var readyTimeout = 5 * time.Second

// errReadyTimeout is /readyz's answer when the store did not answer within readyTimeout.
var errReadyTimeout = errors.New("store did not answer within the readiness timeout")

// errShuttingDown is what readiness reports once shutdown began, so load balancers drain first.
var errShuttingDown = errors.New("shutting down")

// newHTTPHandler serves /metrics from the private registry, /healthz (liveness: the process
// answers HTTP) and /readyz (readiness: ready returns nil).
func newHTTPHandler(reg *prometheus.Registry, ready readinessCheck, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		// A failing collector (e.g. the store during shutdown) must not hide every other metric.
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		// Adds promhttp_metric_handler_errors_total to the registry.
		Registry: reg,
		// A scraper and an operator's curl at once; beyond that, requests get 503 rather than
		// piling up work on a small device.
		MaxRequestsInFlight: 2,
		Timeout:             10 * time.Second,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	// One readiness check at a time, shared by concurrent probes and bounded by readyTimeout: a
	// store on a hung disk blocks inside SQLite's I/O where no context reaches, and /readyz then
	// never answered; a probe that gets no answer learns less than one that gets 503.
	var checks singleflight.Group
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		ch := checks.DoChan("ready", func() (any, error) {
			ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
			defer cancel()
			return nil, ready(ctx)
		})
		t := time.NewTimer(readyTimeout)
		defer t.Stop()
		var err error
		select {
		case res := <-ch:
			err = res.Err
		case <-t.C:
			err = errReadyTimeout
		case <-r.Context().Done():
			return
		}
		if err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: " + err.Error() + "\n"))
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// newHTTPServer wraps h with timeouts: the listener is for scrapers and probes, never for slow
// uploads, so short timeouts protect it from stuck or hostile clients.
func newHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// serveHTTP serves srv on ln until Shutdown; errors other than a clean close are logged.
func serveHTTP(srv *http.Server, ln net.Listener, log *slog.Logger) {
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("http server stopped", "err", err)
	}
}
