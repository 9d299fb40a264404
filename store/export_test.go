package store

import "time"

// SetStallCheckInterval sets how often a streaming read waiting for its consumer checks the WAL,
// for the test's duration.
func SetStallCheckInterval(tb interface{ Cleanup(func()) }, d time.Duration) {
	old := stallCheckInterval
	stallCheckInterval = d
	tb.Cleanup(func() { stallCheckInterval = old })
}

// OnStalledRead calls f, for the test's duration, each time a streaming read was ended because
// its consumer stalled, after it released its snapshot.
func OnStalledRead(tb interface{ Cleanup(func()) }, f func()) {
	stalledReadEnded = f
	tb.Cleanup(func() { stalledReadEnded = nil })
}
