package huggingface

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/huggingface/hubtest"
	"github.com/buffdb/buffdbd/internal/cpustat"
	"github.com/buffdb/buffdbd/internal/gotune"
	"github.com/buffdb/buffdbd/registry"
	"github.com/buffdb/buffdbd/store"
)

// BenchmarkFetch compares a fetch of one LFS file from the emulator on loopback with curl and
// aria2c fetching the same URL in the same run, unthrottled and with the CDN throttled per
// connection (as real CDNs are). The fetch runs in a child process so its peak RSS is its own.
// Size: $BUFFDBD_BENCH_FETCH_BYTES (default 64 MiB; the figure is 1 GiB). Run with
//
//	go test -run '^$' -bench BenchmarkFetch -benchtime 1x ./huggingface/
//
// Reported: MB/s of each tool, the ratios, and the fetch's peak RSS. "dl" is download+verify (what
// curl does); "total" is until the version is published (the registry chunks, hashes and stores
// the file while it downloads, so the two share the machine).
func BenchmarkFetch(b *testing.B) {
	size := int64(64 << 20)
	if s := os.Getenv("BUFFDBD_BENCH_FETCH_BYTES"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		size = n
	}
	const throttle = 50e6 // bytes/s per connection, the throttled setting
	conc := benchConc()   // aria2c's maximum per server (-x16), for a like-for-like comparison
	hub := hubtest.New()
	defer hub.Close()
	hub.AddRepo("bench/model", hubtest.RepoOptions{})
	hub.Commit("bench/model", "main", []hubtest.FileSpec{{Path: "model.safetensors", Content: hubtest.Random(42, size), LFS: true}})
	mb := func(d time.Duration) float64 { return float64(size) / 1e6 / d.Seconds() }

	for i := 0; i < b.N; i++ {
		for _, limit := range []int64{0, throttle} {
			hub.Throttle(limit)
			label := "loopback"
			if limit > 0 {
				label = "throttled50MBps"
			}
			cf := filepath.Join(b.TempDir(), "f")
			c0 := cpustat.Read()
			curl := timeCmd(b, "curl", "-s", "-f", "-o", cf, hub.LFSURL("bench/model", "main", "model.safetensors"))
			curlCores := c0.CoresSince()
			// curl verifies nothing; a fetch always checks sha256. curl followed by sha256sum is
			// the like-for-like baseline for a verified download.
			curlSum := curl + timeCmd(b, "sha256sum", cf)
			aria := timeCmd(b, "aria2c", "-q", "-x16", "-s16", "-k1M", "--file-allocation=none", "--allow-overwrite=true",
				"-d", b.TempDir(), "-o", "f", hub.LFSURL("bench/model", "main", "model.safetensors"))
			r := runFetchChild(b, hub.Endpoint(), conc)
			b.ReportMetric(mb(curl), label+"_curl_MB/s")
			b.ReportMetric(mb(aria), label+"_aria2c_MB/s")
			b.ReportMetric(mb(r.Download), label+"_fetch_dl_MB/s")
			b.ReportMetric(mb(r.Total), label+"_fetch_total_MB/s")
			b.ReportMetric(curl.Seconds()/r.Download.Seconds(), label+"_dl_x_curl")
			b.ReportMetric(curl.Seconds()/r.Total.Seconds(), label+"_total_x_curl")
			b.ReportMetric(curlSum.Seconds()/r.Download.Seconds(), label+"_dl_x_curl_sha256sum")
			b.ReportMetric(aria.Seconds()/r.Download.Seconds(), label+"_dl_x_aria2c")
			b.ReportMetric(float64(r.MaxRSS)/(1<<20), label+"_fetch_peak_RSS_MiB")
			b.ReportMetric(r.DownloadCores, label+"_fetch_dl_cores")
			b.ReportMetric(curlCores, label+"_curl_cores")
			b.ReportMetric(float64(r.DownloadRSS)/(1<<20), label+"_download_peak_RSS_MiB")
		}
	}
}

func timeCmd(b *testing.B, name string, args ...string) time.Duration {
	b.Helper()
	if _, err := exec.LookPath(name); err != nil {
		b.Skipf("%s not installed", name)
	}
	start := time.Now()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		b.Fatalf("%s: %v\n%s", name, err, out)
	}
	return time.Since(start)
}

type benchResult struct {
	Download, Total time.Duration
	MaxRSS          int64   // peak RSS of the whole fetch (download, verify, publish)
	DownloadRSS     int64   // peak RSS when the download and verification ended
	DownloadCores   float64 // cores busy machine-wide (emulator included) while downloading
}

const benchChildEnv = "BUFFDBD_HF_BENCH_CHILD"

func runFetchChild(b *testing.B, endpoint string, conc int) benchResult {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), benchChildEnv+"="+endpoint+"|"+b.TempDir()+"|"+strconv.Itoa(conc))
	var out, errw bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errw
	if err := cmd.Run(); err != nil {
		b.Fatalf("fetch child: %v\n%s", err, errw.String())
	}
	var r benchResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		b.Fatalf("fetch child output %q: %v", out.String(), err)
	}
	// Maxrss is in KiB on Linux.
	r.MaxRSS = int64(cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) << 10
	return r
}

// benchChild fetches bench/model into a fresh registry and prints its timings as JSON.
func benchChild(spec string) int {
	parts := strings.Split(spec, "|")
	conc, _ := strconv.Atoi(parts[2])
	// With the Go runtime settings of `buffdbd fetch`.
	gotune.RaiseProcs()
	gotune.LimitMemory(gotune.DefaultMemoryLimit)
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(parts[1], "data"), store.Options{Migrations: registry.Migrations})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer db.Close()
	reg, err := registry.New(db, registry.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer reg.Close()
	f, err := New(reg, Options{
		Client:   ClientOptions{Endpoint: parts[0]},
		Engine:   benchEngine(conc),
		CacheDir: filepath.Join(parts[1], "cache"),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if p := os.Getenv("BUFFDBD_HF_BENCH_CPUPROFILE"); p != "" {
		pf, err := os.Create(p)
		if err == nil {
			pprof.StartCPUProfile(pf)
			defer pprof.StopCPUProfile()
		}
	}
	var start, published time.Time
	var dlRSS int64
	var c0 cpustat.Sample
	var dlCores float64
	_, err = f.Fetch(ctx, Request{Ref: Ref{Repo: "bench/model", Revision: "main"}, OnProgress: func(p Progress) {
		if p.Phase == "downloading" && start.IsZero() {
			start, c0 = time.Now(), cpustat.Read()
		}
		if p.Phase == "publishing" && published.IsZero() {
			published, dlCores = time.Now(), c0.CoresSince()
			dlRSS = peakRSS()
		}
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	json.NewEncoder(os.Stdout).Encode(benchResult{Download: published.Sub(start), Total: time.Since(start), DownloadRSS: dlRSS, DownloadCores: dlCores})
	if os.Getenv("BUFFDBD_HF_BENCH_CPUPROFILE") != "" {
		pprof.StopCPUProfile()
	}
	return 0
}

func benchConc() int {
	if n, err := strconv.Atoi(os.Getenv("BUFFDBD_BENCH_FETCH_CONC")); err == nil && n > 0 {
		return n
	}
	return 16
}

// peakRSS reads the process's peak resident set (VmHWM) from /proc; 0 where unavailable.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// benchEngine is the engine configuration of the benchmark; BUFFDBD_BENCH_FETCH_LAZYSYNC=1 journals
// only when a file stops, to measure what durability checkpoints cost on this disk.
func benchEngine(conc int) EngineOptions {
	o := EngineOptions{Concurrency: conc}
	if os.Getenv("BUFFDBD_BENCH_FETCH_LAZYSYNC") != "" {
		o.Checkpoint, o.SyncInterval = 1<<62, time.Hour
	}
	return o
}
