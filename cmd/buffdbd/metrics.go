package main

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	blobpb "github.com/buffdb/buffdbd/api/proto/blobpb"
	indexpb "github.com/buffdb/buffdbd/api/proto/indexpb"
	kvpb "github.com/buffdb/buffdbd/api/proto/kvpb"
	querypb "github.com/buffdb/buffdbd/api/proto/querypb"
	registrypb "github.com/buffdb/buffdbd/api/proto/registrypb"
	"github.com/buffdb/buffdbd/registry"
	"github.com/buffdb/buffdbd/store"
)

// metricsNamespace prefixes every buffdbd-specific metric.
const metricsNamespace = "buffdbd"

// grpcHandlingBuckets spans a 1 ms KV call to a 10 minute model pull over a slow edge link;
// prometheus.DefBuckets stop at 10 s, which would put every pull in +Inf.
var grpcHandlingBuckets = []float64{.001, .005, .01, .05, .1, .5, 1, 5, 30, 120, 600}

// metrics owns buffdbd's private Prometheus registry (never the global one: no stray collectors from
// libraries, and tests can build many daemons in one process).
type metrics struct {
	registry *prometheus.Registry
	grpc     *grpcServerMetrics

	// Layered services' metrics are registered once per daemon, however often a hook asks.
	mu       sync.Mutex
	regHooks *registry.Metrics
	fetch    *fetchMetrics
}

// newMetrics registers the go and process collectors, buffdbd_build_info and the gRPC server
// metrics (go-grpc-middleware's standard grpc_server_* names, with handling-time histograms; see
// grpcServerMetrics).
func newMetrics(bi buildInfo) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		grpc:     newGRPCServerMetrics(grpcHandlingBuckets),
	}
	buildInfoGauge := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: metricsNamespace,
		Name:      "build_info",
		Help:      "A metric with a constant '1' value labeled by the version, revision and Go version buffdbd was built with.",
	}, []string{"version", "revision", "goversion"})
	buildInfoGauge.WithLabelValues(bi.Version, bi.Commit, bi.GoVersion).Set(1)
	m.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfoGauge,
		m.grpc,
	)
	return m
}

// unaryInterceptor and streamInterceptor feed grpc_server_*.
func (m *metrics) unaryInterceptor() grpc.UnaryServerInterceptor {
	return m.grpc.unaryInterceptor()
}
func (m *metrics) streamInterceptor() grpc.StreamServerInterceptor {
	return m.grpc.streamInterceptor()
}

// servedServices are the services whose grpc_server_* series are created at zero before their
// first call (so rate() and absent() work from the start). Services a hook adds later still get
// series on first use.
var servedServices = []*grpc.ServiceDesc{
	&kvpb.Kv_ServiceDesc, &blobpb.Blob_ServiceDesc, &querypb.Query_ServiceDesc, &indexpb.Index_ServiceDesc,
	&registrypb.Registry_ServiceDesc, &healthpb.Health_ServiceDesc,
}

// initialize pre-creates the grpc_server_* series of servedServices.
func (m *metrics) initialize() { m.grpc.initialize(servedServices) }

// storeStats is store.Stats; the alias keeps collector signatures short.
type storeStats = store.Stats

// statsTimeout bounds one scrape's store query; Prometheus' default scrape timeout is 10 s and a
// slow SD card should not make the whole scrape fail. A variable so tests need not wait for it.
var statsTimeout = 5 * time.Second

// errStatsTimeout is a scrape-time stats call still running at statsTimeout.
var errStatsTimeout = errors.New("store did not answer in time; stats skipped from this scrape")

// gauge is one scrape-time gauge read from a stats snapshot of type S.
type gauge[S any] struct {
	name, help string
	value      func(S) float64
}

// statsCollector computes a subsystem's gauges at scrape time from one stats call, so they are
// always current and cost nothing between scrapes. The store and the registry each have one.
type statsCollector[S any] struct {
	stats  func(context.Context) (S, error)
	gauges []gauge[S]
	descs  []*prometheus.Desc
	// calls runs one stats call at a time, shared by concurrent scrapes (see snapshot).
	calls singleflight.Group
}

func newStatsCollector[S any](subsystem string, stats func(context.Context) (S, error), gauges []gauge[S]) *statsCollector[S] {
	c := &statsCollector[S]{stats: stats, gauges: gauges}
	for _, g := range gauges {
		c.descs = append(c.descs, prometheus.NewDesc(
			prometheus.BuildFQName(metricsNamespace, subsystem, g.name), g.help, nil, nil))
	}
	return c
}

func (c *statsCollector[S]) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// snapshot runs the stats call, giving up on it after statsTimeout. The context alone does not
// bound it: a store on a hung disk (a dying SD card, a frozen filesystem) blocks inside SQLite's
// I/O where no context reaches, and the whole scrape then failed at promhttp's timeout: no Go,
// process or gRPC metrics either, just when an operator needs them to see what is stuck. The
// abandoned call goes on in the background and later scrapes wait on it rather than pile up more.
func (c *statsCollector[S]) snapshot() (S, error) {
	ch := c.calls.DoChan("stats", func() (any, error) {
		ctx, cancel := context.WithTimeout(context.Background(), statsTimeout)
		defer cancel()
		return c.stats(ctx)
	})
	t := time.NewTimer(statsTimeout)
	defer t.Stop()
	var zero S
	select {
	case r := <-ch:
		if r.Err != nil {
			return zero, r.Err
		}
		return r.Val.(S), nil
	case <-t.C:
		return zero, errStatsTimeout
	}
}

func (c *statsCollector[S]) Collect(ch chan<- prometheus.Metric) {
	s, err := c.snapshot()
	for i, g := range c.gauges {
		if err != nil {
			// Served as a scrape error (HTTP handler ContinueOnError) rather than stale zeros.
			ch <- prometheus.NewInvalidMetric(c.descs[i], err)
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.descs[i], prometheus.GaugeValue, g.value(s))
	}
}

// storeGauges lists the store gauges and how each is read from store.Stats.
var storeGauges = []gauge[storeStats]{
	{"database_bytes", "Size of the SQLite database file.", func(s storeStats) float64 { return float64(s.DatabaseBytes) }},
	{"wal_bytes", "Size of the SQLite write-ahead log.", func(s storeStats) float64 { return float64(s.WALBytes) }},
	{"payload_bytes", "Bytes of blob payload files on disk (outside SQLite).", func(s storeStats) float64 { return float64(s.PayloadBytes) }},
	{"payload_files", "Blob payload files on disk.", func(s storeStats) float64 { return float64(s.PayloadFiles) }},
	{"keys", "KV keys stored.", func(s storeStats) float64 { return float64(s.Keys) }},
	{"blobs", "Blobs stored.", func(s storeStats) float64 { return float64(s.Blobs) }},
	{"open_transactions", "Client transactions currently open.", func(s storeStats) float64 { return float64(s.OpenTx) }},
}

func newStoreCollector(stats func(context.Context) (storeStats, error)) *statsCollector[storeStats] {
	return newStatsCollector("store", stats, storeGauges)
}

// registerStore adds the scrape-time store gauges.
func (m *metrics) registerStore(stats func(context.Context) (storeStats, error)) {
	m.registry.MustRegister(newStoreCollector(stats))
}
