package store

// This file is the store's public contract. Bodies marked "skeleton" are filled in by the store
// implementation; signatures may grow (new methods, new Options fields) but must not change shape
// without updating every caller.

import (
	"context"
	"errors"
	"io"
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
	// or a transaction was rolled back by its timeout.
	ErrAborted = errors.New("aborted")
	// ErrCorrupt: a payload file is missing or does not match its recorded sha256.
	ErrCorrupt = errors.New("corrupt payload")
	// ErrClosed: the DB has been closed.
	ErrClosed = errors.New("store closed")
)

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
	// Migrations are extra numbered schema steps from packages layered on the store (the registry),
	// applied after the store's own, each once, in a transaction.
	Migrations []Migration
	Logger     *slog.Logger
}

// Migration is one schema step. Versions are unique across all migrations of one Domain.
type Migration struct {
	Domain  string // "store", "registry"
	Version int
	SQL     string
}

// DB is an open data directory: one SQLite database plus the payload files beside it.
// All methods are safe for concurrent use.
type DB struct{}

// Open opens (creating if needed) the data directory dir, applies migrations, and starts the group
// committer and the janitor (expired transactions, orphaned payload files).
func Open(ctx context.Context, dir string, opts Options) (*DB, error) { panic("skeleton") }

// Close rolls back open transactions, stops background work and closes the database.
func (db *DB) Close() error { panic("skeleton") }

// Dir is the data directory.
func (db *DB) Dir() string { panic("skeleton") }

// --- KV (autocommit when txID is "", else inside that transaction) ---

// Get returns the value of key; ErrNotFound names the key.
func (db *DB) Get(ctx context.Context, txID, key string) (string, error) { panic("skeleton") }

// Set stores key=value durably (group-committed), maintaining indexes; ErrExists on a unique violation.
func (db *DB) Set(ctx context.Context, txID, key, value string) error { panic("skeleton") }

// Delete removes key; ErrNotFound if missing.
func (db *DB) Delete(ctx context.Context, txID, key string) error { panic("skeleton") }

// --- BLOB ---

// Blob is a blob's content. Metadata nil means absent (NULL), distinct from "".
type Blob struct {
	ID       uint64
	Data     []byte
	Metadata *string
}

// BlobInfo describes a blob without reading its data.
type BlobInfo struct {
	ID       uint64
	Size     int64
	SHA256   [32]byte
	Metadata *string
}

// GetBlob returns blob id with its data in memory (for BuffDB's Get; use OpenBlob to stream).
func (db *DB) GetBlob(ctx context.Context, txID string, id uint64) (Blob, error) { panic("skeleton") }

// StatBlob returns a blob's size, sha256 and metadata.
func (db *DB) StatBlob(ctx context.Context, txID string, id uint64) (BlobInfo, error) {
	panic("skeleton")
}

// StoreBlob stores data and returns its new id (ids start at 1, never reused).
func (db *DB) StoreBlob(ctx context.Context, txID string, data []byte, metadata *string) (uint64, error) {
	panic("skeleton")
}

// BlobUpdate says what UpdateBlob changes, following BuffDB: Data non-nil replaces the bytes (an empty
// non-nil slice makes them empty); SetMetadata replaces the metadata with Metadata (nil → NULL).
type BlobUpdate struct {
	Data        []byte
	SetMetadata bool
	Metadata    *string
}

// UpdateBlob applies u to blob id; ErrNotFound if missing, except a metadata-only update to NULL,
// which succeeds on a missing id (BuffDB's exception).
func (db *DB) UpdateBlob(ctx context.Context, txID string, id uint64, u BlobUpdate) error {
	panic("skeleton")
}

// DeleteBlob removes blob id; ErrNotFound if missing.
func (db *DB) DeleteBlob(ctx context.Context, txID string, id uint64) error { panic("skeleton") }

// BlobReader streams one blob's bytes. It also implements io.ReaderAt.
type BlobReader interface {
	io.ReadSeekCloser
	io.ReaderAt
	Info() BlobInfo
}

// OpenBlob opens blob id for streaming reads without loading it into memory.
func (db *DB) OpenBlob(ctx context.Context, id uint64) (BlobReader, error) { panic("skeleton") }

// --- Pipelined writes (one client stream) ---

// Writer pipelines the writes of one client stream through group commit: Submit* return at once and
// the returned Futures complete in submission order, each after its write is durable. If a write
// fails, later writes of the same Writer are not applied and fail with ErrAborted.
// Writes carrying a txID run inside that transaction (in order) instead.
type Writer struct{}

// NewWriter returns a Writer. Close it when the stream ends.
func (db *DB) NewWriter() *Writer { panic("skeleton") }

func (w *Writer) Set(txID, key, value string) *Future                          { panic("skeleton") }
func (w *Writer) Delete(txID, key string) *Future                              { panic("skeleton") }
func (w *Writer) StoreBlob(txID string, data []byte, metadata *string) *Future { panic("skeleton") }
func (w *Writer) UpdateBlob(txID string, id uint64, u BlobUpdate) *Future      { panic("skeleton") }
func (w *Writer) DeleteBlob(txID string, id uint64) *Future                    { panic("skeleton") }

// Close waits for outstanding writes.
func (w *Writer) Close() { panic("skeleton") }

// Future is the outcome of one pipelined write.
type Future struct{}

// Wait blocks until the write is committed or failed. ID is the new blob id for StoreBlob, the
// affected id for blob writes, 0 for KV writes.
func (f *Future) Wait(ctx context.Context) (id uint64, err error) { panic("skeleton") }

// --- Client transactions (the gRPC BeginTransaction/Commit/Rollback) ---

// Begin starts a transaction and returns its id. timeout 0 means Options.DefaultTxTimeout; larger
// than MaxTxTimeout is capped. A transaction not ended by its deadline is rolled back.
func (db *DB) Begin(ctx context.Context, readOnly bool, timeout time.Duration) (string, error) {
	panic("skeleton")
}

// Commit commits transaction id durably; ErrNotFound if unknown (or already ended/expired).
func (db *DB) Commit(ctx context.Context, id string) error { panic("skeleton") }

// Rollback discards transaction id; ErrNotFound if unknown.
func (db *DB) Rollback(ctx context.Context, id string) error { panic("skeleton") }

// --- Internal transactions for layered packages (the registry) ---

// Update runs fn in a write transaction that is group-committed; it returns after the commit is
// durable. If fn returns an error nothing fn did is applied.
func (db *DB) Update(ctx context.Context, fn func(tx *Tx) error) error { panic("skeleton") }

// View runs fn in a read-only snapshot.
func (db *DB) View(ctx context.Context, fn func(tx *Tx) error) error { panic("skeleton") }

// Tx is a transaction handle passed to Update/View fns. Not safe for use after fn returns.
type Tx struct{}

func (tx *Tx) Get(key string) (string, error) { panic("skeleton") }
func (tx *Tx) Set(key, value string) error    { panic("skeleton") }
func (tx *Tx) Delete(key string) error        { panic("skeleton") }

// Scan calls fn for each key with prefix, in key order, starting after `after` ("" = from the start).
// fn returning an error stops the scan and Scan returns it.
func (tx *Tx) Scan(prefix, after string, fn func(key, value string) error) error { panic("skeleton") }

func (tx *Tx) StatBlob(id uint64) (BlobInfo, error)                    { panic("skeleton") }
func (tx *Tx) StoreBlob(data []byte, metadata *string) (uint64, error) { panic("skeleton") }
func (tx *Tx) DeleteBlob(id uint64) error                              { panic("skeleton") }

// StorePayloadBlob creates a blob whose bytes are the already-durable payload p (see WritePayload).
func (tx *Tx) StorePayloadBlob(p Payload, metadata *string) (uint64, error) { panic("skeleton") }

// Exec runs a statement against the layered package's own tables; returns rows affected.
func (tx *Tx) Exec(query string, args ...any) (int64, error) { panic("skeleton") }

// Query runs a query and calls fn once per row with a scan function (database/sql semantics).
func (tx *Tx) Query(query string, args []any, fn func(scan func(dest ...any) error) error) error {
	panic("skeleton")
}

// Find/FindRange also work inside a Tx (see DB.Find).
func (tx *Tx) Find(index, value string, limit int, fn func(key, value string) error) error {
	panic("skeleton")
}

// --- Payloads: large data written durably before any row references it ---

// Payload identifies durable content by its sha256 and size.
type Payload struct {
	SHA256 [32]byte
	Size   int64
}

// PendingPayload is a payload written durably but not yet referenced by a committed row. Until
// Release is called, garbage collection will not remove it. Release after the referencing Update
// commits (or is abandoned).
type PendingPayload struct{}

func (p *PendingPayload) Payload() Payload { panic("skeleton") }
func (p *PendingPayload) Release()         { panic("skeleton") }

// WritePayload streams r into a content-addressed payload (temp file, fsync, rename, dir fsync; or
// inline when small), deduplicating identical content, without holding it in memory.
// If wantSHA256 is non-nil and the content differs, it returns ErrCorrupt and keeps nothing.
func (db *DB) WritePayload(ctx context.Context, r io.Reader, wantSHA256 *[32]byte) (*PendingPayload, error) {
	panic("skeleton")
}

// HasPayload reports whether content with this sha256 is stored (referenced by some blob).
func (db *DB) HasPayload(ctx context.Context, sum [32]byte) (bool, error) { panic("skeleton") }

// --- Indexes ---

// IndexType selects what lookups an index supports.
type IndexType int

const (
	IndexHash  IndexType = iota // exact match
	IndexBTree                  // exact match and ranges
)

// ValueKind says how indexed values compare.
type ValueKind int

const (
	KindString ValueKind = iota
	KindNumber           // values that do not parse as numbers are not indexed
)

// IndexDef defines a secondary index over KV values.
type IndexDef struct {
	Name      string
	Type      IndexType
	Unique    bool
	JSONPath  string // "" indexes the whole value; else e.g. "$.framework"
	KeyPrefix string // "" indexes every key
	Kind      ValueKind
}

// CreateIndex creates and backfills an index, returning how many keys it indexed. ErrExists if the
// name is taken or existing data violates uniqueness; ErrInvalid for a bad definition.
func (db *DB) CreateIndex(ctx context.Context, def IndexDef) (uint64, error) { panic("skeleton") }

// DropIndex removes an index; ErrNotFound if missing.
func (db *DB) DropIndex(ctx context.Context, name string) error { panic("skeleton") }

// ListIndexes returns all index definitions ordered by name.
func (db *DB) ListIndexes(ctx context.Context) ([]IndexDef, error) { panic("skeleton") }

// Find calls fn for each key whose indexed value equals value, in key order; limit 0 = unlimited.
func (db *DB) Find(ctx context.Context, txID, index, value string, limit int, fn func(key, value string) error) error {
	panic("skeleton")
}

// Bound is one end of a range; nil means open.
type Bound struct {
	Value     string
	Inclusive bool
}

// Range selects indexed values for FindRange.
type Range struct {
	Lower, Upper *Bound
	Limit        int
	Descending   bool
}

// FindRange calls fn for keys whose indexed value is within r (btree only; ErrInvalid for hash).
func (db *DB) FindRange(ctx context.Context, txID, index string, r Range, fn func(key, value string) error) error {
	panic("skeleton")
}

// --- Raw SQL (the Query service) ---

// Query runs sql and calls fn per row. Column values are int64, float64, string, []byte or nil.
// Unless Options.QueryWrites, SQLite itself refuses writes (ErrReadOnly). Memory stays bounded.
func (db *DB) Query(ctx context.Context, sql string, fn func(columns []string, row []any) error) error {
	panic("skeleton")
}

// Execute runs sql and returns rows changed; ErrReadOnly unless Options.QueryWrites.
func (db *DB) Execute(ctx context.Context, sql string) (int64, error) { panic("skeleton") }

// --- Operations ---

// Stats are computed on demand for metrics and `buffdbd` status output.
type Stats struct {
	DatabaseBytes int64 // main database file
	WALBytes      int64
	PayloadBytes  int64 // payload files on disk
	PayloadFiles  int64
	Keys          int64
	Blobs         int64
	OpenTx        int
}

func (db *DB) Stats(ctx context.Context) (Stats, error) { panic("skeleton") }

// GCResult reports what CollectGarbage removed.
type GCResult struct {
	Files int64
	Bytes int64
}

// CollectGarbage removes payload files no committed row references and no pending write pins.
// Safe to run alongside writes.
func (db *DB) CollectGarbage(ctx context.Context) (GCResult, error) { panic("skeleton") }

// VerifyPayloads re-hashes payloads and returns the ids of blobs whose bytes are missing or corrupt.
func (db *DB) VerifyPayloads(ctx context.Context, fn func(bad BlobInfo, err error)) error {
	panic("skeleton")
}
