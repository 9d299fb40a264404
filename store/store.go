package store

// This file holds the store's public types and sentinel errors; the methods live beside the concept
// they implement (kv.go, blob.go, writer.go, ...). Signatures may grow but must not change shape
// without updating every caller.

import (
	"errors"
	"log/slog"
	"time"
)

// Sentinel errors. Callers test with errors.Is; messages wrap them with the key, id or name involved.
var (
	// ErrNotFound: a key, blob id, index, or transaction id does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: a unique index would be violated, or an index name is taken.
	ErrExists = errors.New("already exists")
	// ErrReadOnly: a write was attempted in a read-only transaction or through the read-only query path.
	ErrReadOnly = errors.New("read-only")
	// ErrInvalid: malformed input (an empty index name, a bad JSON path, a bad range, ...).
	ErrInvalid = errors.New("invalid argument")
	// ErrTooLarge: an input exceeds a configured limit.
	ErrTooLarge = errors.New("too large")
	// ErrAborted: a pipelined write was not applied because an earlier write on the same Writer failed,
	// a transaction was rolled back by its timeout, or a streaming read whose consumer stalled was
	// ended (Options.StalledReadWALBytes).
	ErrAborted = errors.New("aborted")
	// ErrInUse: the write would remove or change something a layered package still relies on (a
	// blob holding a registry chunk); the package's triggers refuse it (see InUseMarker).
	ErrInUse = errors.New("in use")
	// ErrNoSpace: the disk holding the data directory is full (or the user's quota is used up).
	ErrNoSpace = errors.New("no space left on the data directory's disk")
	// ErrCorrupt: a payload file is missing or does not match its recorded sha256.
	ErrCorrupt = errors.New("corrupt payload")
	// ErrClosed: the DB has been closed.
	ErrClosed = errors.New("store closed")
	// ErrLocked: the data directory is already open in another process (the daemon is running; talk
	// to it instead of opening the store directly).
	ErrLocked = errors.New("data directory in use by another process")
)

// InUseMarker starts the RAISE(ABORT, ...) message of a layered package's trigger that protects its
// rows from raw writes through the store's own API (a registry chunk's blob from Blob Delete): the
// store reports such a failure as ErrInUse with the rest of the message.
const InUseMarker = "buffdbd in use: "

// Durability chooses what an acknowledged write survives.
type Durability int

const (
	// DurabilitySync fsyncs every commit: acknowledged writes survive power loss. The default.
	DurabilitySync Durability = iota
	// DurabilityProcess survives a crash or kill -9 of the process, not power loss; faster.
	DurabilityProcess
)

// ParseDurability parses "sync" or "process"; ErrInvalid otherwise.
func ParseDurability(s string) (Durability, error) {
	switch s {
	case "sync", "":
		return DurabilitySync, nil
	case "process":
		return DurabilityProcess, nil
	}
	return 0, errors.Join(ErrInvalid, errors.New(`durability must be "sync" or "process"`))
}

// String returns the name ParseDurability accepts.
func (d Durability) String() string {
	if d == DurabilityProcess {
		return "process"
	}
	return "sync"
}

// Options configure Open. The zero value is usable: every zero field takes its documented default.
type Options struct {
	Durability Durability
	// InlineMax is the largest payload kept inside SQLite; larger payloads are content-addressed files.
	// Default 16 KiB.
	InlineMax int64
	// DefaultTxTimeout applies to transactions begun without a timeout. Default 30s.
	DefaultTxTimeout time.Duration
	// MaxTxTimeout caps every transaction's timeout. Default 5m.
	MaxTxTimeout time.Duration
	// MaxOpenTx caps concurrently open client transactions (ErrTooLarge beyond). Default 64.
	MaxOpenTx int
	// QueryWrites lets Query write and enables Execute. Default false: SQLite itself refuses writes.
	QueryWrites bool
	// MaxQueryValueBytes caps any string or blob that raw SQL (Query, Execute) builds or reads
	// (SQLite's SQLITE_LIMIT_LENGTH on its connection); beyond it the statement fails with
	// ErrTooLarge. One cheap statement like SELECT randomblob(900000000) otherwise makes the daemon
	// allocate gigabytes — enough to get it killed on an edge device — for a result no gRPC message
	// could carry. Set it to the API's largest message. Default 64 MiB.
	MaxQueryValueBytes int64
	// Migrations are extra numbered schema steps from packages layered on the store (the registry),
	// applied after the store's own, each once, in a transaction.
	Migrations []Migration
	// StalledReadWALBytes bounds what a streaming read outside a transaction (Query, Find,
	// FindRange) whose consumer is not taking its rows may cost: while it is open SQLite cannot
	// checkpoint the WAL past its snapshot, and the WAL grows with every write. When the WAL is
	// larger than this and the read has waited for its consumer, the read ends with ErrAborted.
	// Default 256 MiB; negative disables (the WAL then grows for as long as a client stalls).
	StalledReadWALBytes int64
	// GCInterval is how often the janitor collects orphaned payload files (abandoned uploads, failed
	// unlinks). Default 1h; negative disables (Open and CollectGarbage still collect).
	GCInterval time.Duration
	Logger     *slog.Logger
}

// Migration is one schema step. Versions are unique across all migrations of one Domain.
type Migration struct {
	Domain  string // "store", "registry"
	Version int
	SQL     string
}
