// Package store owns buffdbd's data directory: one SQLite database (modernc.org/sqlite, WAL) holding
// every piece of metadata — KV pairs, blob rows, secondary indexes, and the tables of packages layered
// on top — plus immutable content-addressed payload files for large blob bytes.
//
// Guarantees: a write acknowledged to a caller is committed (and fsynced under DurabilitySync); a row is
// never committed pointing at a payload file that is not durable; blob ids are never reused; a kill -9
// at any moment leaves a consistent store (orphaned payload files are collected later); secondary
// indexes change in the same SQLite statement as the KV write that affects them, whichever path made it.
//
// Writes are group-committed: many small writes share one transaction and one fsync. DESIGN.md explains
// the crash-safety argument, group commit, payload reference counting and GC, the transaction model and
// its trade-off, and what raw SQL sees.
package store
