//go:build !linux

package main

// monotonicUsec is 0 where there is no systemd: MONOTONIC_USEC is then not sent.
func monotonicUsec() int64 { return 0 }

// freeBytes is -1 (unknown) outside Linux.
func freeBytes(string) int64 { return -1 }
