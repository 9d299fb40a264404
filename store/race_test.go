//go:build race

package store_test

// raceDetector is true when the tests run under the race detector, which slows SQLite's writes
// about fifty-fold.
const raceDetector = true
