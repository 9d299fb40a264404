// Package store owns buffdbd's data directory: one SQLite database (modernc.org/sqlite, WAL) holding
// every piece of metadata — KV pairs, blob rows, secondary indexes, and the tables of packages layered
// on top — plus immutable content-addressed payload files for large blob bytes.
//
// Guarantees: a write acknowledged to a caller is committed (and fsynced under DurabilitySync); a row is
// never committed pointing at a payload file that is not durable; blob ids are never reused; a kill -9
// at any moment leaves a consistent store (orphaned payload files are collected later).
package store
