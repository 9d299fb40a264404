//go:build !linux

package main

// monotonicUsec is 0 where there is no systemd: MONOTONIC_USEC is then not sent.
func monotonicUsec() int64 { return 0 }
