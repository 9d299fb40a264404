package main

import (
	"context"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/buffdb/buffdbd/huggingface"
	"github.com/buffdb/buffdbd/registry"
)

var _ huggingface.Observer = (*fetchMetrics)(nil)

// registryResults are the result labels registry.Metrics promises; anything else is counted as
// "error" so a future label cannot grow cardinality unnoticed.
var registryResults = []string{"ok", "invalid", "checksum", "budget", "canceled", "error"}

// fetchResults are huggingface.ResultLabel's values, bounded the same way.
var fetchResults = []string{"ok", "not_found", "gated", "unauthorized", "rate_limited", "offline",
	"checksum", "budget", "no_space", "protocol", "canceled", "invalid", "error"}

func boundedLabel(v string, allowed []string) string {
	if slices.Contains(allowed, v) {
		return v
	}
	return "error"
}

// registryMetrics are the registry's counters (fed by registry.Options.Metrics hooks) and its
// scrape-time gauges (from registry.Service.Stats).
type registryMetrics struct {
	pushes, pulls                           *prometheus.CounterVec
	received, sent, deduped                 prometheus.Counter
	evictedVersions, evictedBytes           prometheus.Counter
	gcRuns, gcBytes, gcSessions, verifyFail prometheus.Counter
}

func newRegistryMetrics(reg prometheus.Registerer) *registryMetrics {
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: "registry", Name: name, Help: help})
		reg.MustRegister(c)
		return c
	}
	byResult := func(name, help string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: "registry", Name: name, Help: help}, []string{"result"})
		for _, r := range registryResults {
			c.WithLabelValues(r) // series exist at 0, so rate() works from the first push
		}
		reg.MustRegister(c)
		return c
	}
	return &registryMetrics{
		pushes:          byResult("pushes_total", "Model pushes and imports finished, by result."),
		pulls:           byResult("pulls_total", "Model pulls finished, by result."),
		received:        counter("received_bytes_total", "Chunk bytes received by pushes and imports."),
		sent:            counter("sent_bytes_total", "File bytes sent by pulls."),
		deduped:         counter("deduplicated_bytes_total", "Chunk bytes a push or pull did not have to move because they were already present."),
		evictedVersions: counter("evicted_versions_total", "Model versions evicted to stay within registry.max_bytes."),
		evictedBytes:    counter("evicted_bytes_total", "Bytes freed by evictions."),
		gcRuns:          counter("gc_runs_total", "Garbage collection runs."),
		gcBytes:         counter("gc_reclaimed_bytes_total", "Payload file bytes removed by garbage collection."),
		gcSessions:      counter("gc_expired_sessions_total", "Expired upload sessions removed by garbage collection."),
		verifyFail:      counter("verify_failures_total", "Chunks found missing or corrupt by verify and scrub."),
	}
}

// hooks returns the registry.Metrics that feed these counters.
func (m *registryMetrics) hooks() registry.Metrics {
	return registry.Metrics{
		Push:          func(r string) { m.pushes.WithLabelValues(boundedLabel(r, registryResults)).Inc() },
		Pull:          func(r string) { m.pulls.WithLabelValues(boundedLabel(r, registryResults)).Inc() },
		BytesReceived: func(n int64) { m.received.Add(float64(n)) },
		BytesSent:     func(n int64) { m.sent.Add(float64(n)) },
		BytesDeduped:  func(n int64) { m.deduped.Add(float64(n)) },
		Eviction: func(versions int, bytes int64) {
			m.evictedVersions.Add(float64(versions))
			m.evictedBytes.Add(float64(bytes))
		},
		GC: func(res registry.GCResult) {
			m.gcRuns.Inc()
			m.gcBytes.Add(float64(res.FileBytes))
			m.gcSessions.Add(float64(res.Sessions))
		},
		VerifyFailure: func(chunks int) { m.verifyFail.Add(float64(chunks)) },
	}
}

// registryGauges lists the registry gauges; maxBytes is the configured budget, served beside them.
func registryGauges(maxBytes int64) []gauge[registry.Stats] {
	return []gauge[registry.Stats]{
		{"models", "Models with at least one version.", func(s registry.Stats) float64 { return float64(s.Models) }},
		{"versions", "Model versions stored.", func(s registry.Stats) float64 { return float64(s.Versions) }},
		{"chunks", "Distinct chunks stored.", func(s registry.Stats) float64 { return float64(s.Chunks) }},
		{"stored_bytes", "Distinct chunk bytes stored (what counts against registry.max_bytes).", func(s registry.Stats) float64 { return float64(s.StoredBytes) }},
		{"logical_bytes", "Sum of all version sizes, as if nothing were deduplicated.", func(s registry.Stats) float64 { return float64(s.LogicalBytes) }},
		{"dedupe_saved_bytes", "Bytes deduplication saves: logical minus stored.", func(s registry.Stats) float64 {
			return float64(max(0, s.LogicalBytes-s.StoredBytes))
		}},
		{"upload_sessions", "Resumable upload sessions open.", func(s registry.Stats) float64 { return float64(s.SessionsOpen) }},
		{"corrupt_chunks", "Chunks marked corrupt by verify or scrub.", func(s registry.Stats) float64 { return float64(s.CorruptChunks) }},
		{"max_bytes", "The configured disk budget (registry.max_bytes).", func(registry.Stats) float64 { return float64(maxBytes) }},
	}
}

// registerRegistry adds the registry counters and scrape-time gauges and returns the hooks to put
// in registry.Options.Metrics.
func (m *metrics) registerRegistry(stats func(context.Context) (registry.Stats, error), maxBytes int64) registry.Metrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.regHooks != nil {
		return *m.regHooks
	}
	m.registry.MustRegister(newStatsCollector("registry", stats, registryGauges(maxBytes)))
	hooks := newRegistryMetrics(m.registry).hooks()
	m.regHooks = &hooks
	return hooks
}

// fetchMetrics implements huggingface.Observer with Prometheus metrics. A nil *fetchMetrics is a
// valid no-op observer.
type fetchMetrics struct {
	fetches    *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	downloaded prometheus.Counter
	files      prometheus.Counter
	retries    prometheus.Counter
	active     prometheus.Gauge
}

// fetchDurationBuckets span a cached re-resolve (under a second) to a multi-gigabyte model over a
// slow link (hours).
var fetchDurationBuckets = []float64{1, 5, 30, 120, 600, 1800, 3600, 4 * 3600}

// registerFetch adds the fetcher metrics; pass the result as huggingface.Options.Observer.
func (m *metrics) registerFetch() *fetchMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fetch != nil {
		return m.fetch
	}
	f := &fetchMetrics{
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: "fetch",
			Name: "completed_total", Help: "Hugging Face fetches finished, by result."}, []string{"result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: metricsNamespace, Subsystem: "fetch",
			Name: "duration_seconds", Help: "Duration of Hugging Face fetches, by result.", Buckets: fetchDurationBuckets}, []string{"result"}),
		downloaded: prometheus.NewCounter(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: "fetch",
			Name: "downloaded_bytes_total", Help: "Payload bytes downloaded from the Hub."}),
		files: prometheus.NewCounter(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: "fetch",
			Name: "files_total", Help: "Files downloaded and verified."}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: "fetch",
			Name: "retries_total", Help: "Requests and byte ranges retried after a transient failure."}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metricsNamespace, Subsystem: "fetch",
			Name: "active_downloads", Help: "Byte-range downloads in progress."}),
	}
	for _, r := range []string{"ok", "error"} {
		f.fetches.WithLabelValues(r)
	}
	m.registry.MustRegister(f.fetches, f.duration, f.downloaded, f.files, f.retries, f.active)
	m.fetch = f
	return f
}

// BytesDownloaded implements huggingface.Observer.
func (f *fetchMetrics) BytesDownloaded(n int64) {
	if f == nil {
		return
	}
	f.downloaded.Add(float64(n))
}

// FileDownloaded implements huggingface.Observer.
func (f *fetchMetrics) FileDownloaded() {
	if f == nil {
		return
	}
	f.files.Inc()
}

// RetryObserved implements huggingface.Observer. The error is not a label: its text is unbounded.
func (f *fetchMetrics) RetryObserved(error) {
	if f == nil {
		return
	}
	f.retries.Inc()
}

// DownloadsActive implements huggingface.Observer.
func (f *fetchMetrics) DownloadsActive(delta int) {
	if f == nil {
		return
	}
	f.active.Add(float64(delta))
}

// FetchDone implements huggingface.Observer.
func (f *fetchMetrics) FetchDone(result string, d time.Duration) {
	if f == nil {
		return
	}
	r := boundedLabel(result, fetchResults)
	f.fetches.WithLabelValues(r).Inc()
	f.duration.WithLabelValues(r).Observe(d.Seconds())
}

// observers hand layered services (registry, fetcher) their metrics hooks. serviceHooks get them
// with observersFrom(ctx):
//
//	obs := observersFrom(ctx)
//	var svc *registry.Service
//	opts.Metrics = obs.Registry(func(ctx context.Context) (registry.Stats, error) { return svc.Stats(ctx) },
//		int64(cfg.Registry.MaxBytes))
//	svc = registry.NewService(db, opts)
//	hfOpts.Observer = obs.Fetch() // a nil *fetchMetrics is a no-op observer
//
// Without metrics (http.listen empty, or the CLI's in-process server) every hook is a no-op.
type observers struct{ m *metrics }

type observersKey struct{}

// withObservers attaches m's hooks to the context serviceHooks receive.
func withObservers(ctx context.Context, m *metrics) context.Context {
	return context.WithValue(ctx, observersKey{}, observers{m})
}

// observersFrom returns the hooks attached by withObservers (no-ops when none are).
func observersFrom(ctx context.Context) observers {
	o, _ := ctx.Value(observersKey{}).(observers)
	return o
}

// Registry registers the registry's counters and scrape-time gauges (computed by stats, which may
// be bound to a service created after this call) and returns the registry.Options.Metrics hooks.
func (o observers) Registry(stats func(context.Context) (registry.Stats, error), maxBytes int64) registry.Metrics {
	if o.m == nil {
		return registry.Metrics{}
	}
	return o.m.registerRegistry(stats, maxBytes)
}

// Fetch registers the fetcher metrics and returns the huggingface.Observer; nil without metrics.
func (o observers) Fetch() *fetchMetrics {
	if o.m == nil {
		return nil
	}
	return o.m.registerFetch()
}
