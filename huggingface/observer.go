package huggingface

import "time"

// Observer receives metric events from fetches; the operations layer implements it with
// Prometheus counters. Methods are called concurrently and must be cheap and non-blocking.
type Observer interface {
	// BytesDownloaded is called as payload bytes arrive (after rate limiting), in chunks.
	BytesDownloaded(n int64)
	// FileDownloaded is called once per file that was downloaded and verified.
	FileDownloaded()
	// RetryObserved is called before each retry of a request or byte range.
	RetryObserved(err error)
	// DownloadsActive is called with +1/-1 as byte-range downloads start and end.
	DownloadsActive(delta int)
	// FetchDone is called once per Fetch with its duration and a bounded result label (see
	// ResultLabel).
	FetchDone(result string, d time.Duration)
}

// ResultLabel maps a Fetch error to a bounded label for metrics: "ok", "not_found", "gated",
// "unauthorized", "rate_limited", "offline", "checksum", "budget", "no_space", "protocol",
// "canceled", "invalid" or "error".
func ResultLabel(err error) string {
	return resultLabel(err)
}
