package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver; only this package imports it
)

// Defaults for the zero Options.
const (
	defaultInlineMax    = 16 << 10 // small enough that inline rows stay a few pages; big bytes go to files
	defaultTxTimeout    = 30 * time.Second
	defaultMaxTxTimeout = 5 * time.Minute
	defaultMaxOpenTx    = 64

	// busyTimeoutMS bounds how long a connection waits for SQLite's own locks (a checkpoint, a second
	// process such as the CLI opening the store read-only) before failing with SQLITE_BUSY. Writes inside
	// this process never contend on it: they are serialized by the committer and writeLock first.
	busyTimeoutMS = 10000

	// pageSize is SQLite's page size. 4 KiB matches the filesystem block and flash page size: the store
	// holds metadata, small KV values and inline blobs (≤ InlineMax), so most commits touch a handful of
	// b-tree leaves, and every touched page is written to the WAL whole — larger pages would multiply
	// the bytes written per small commit. Large blob bytes never go through SQLite (payload files), which
	// is where bigger pages would have paid off (the 0.55 GB/s at 64 KiB vs 0.23 at 4 KiB).
	pageSize = 4096

	// journalSizeLimit truncates the WAL back to this size after a checkpoint, so a burst of writes
	// does not leave a huge -wal file on small edge disks.
	journalSizeLimit = 64 << 20

	dbFileName = "buffdb.sqlite"
)

// DB is an open data directory: one SQLite database plus the payload files beside it.
// All methods are safe for concurrent use.
type DB struct {
	dir  string
	path string
	opts Options
	log  *slog.Logger

	wdb   *sql.DB   // writable connections: the committer's and at most one read-write client tx
	wconn *sql.Conn // the committer's connection, owned by the committer goroutine
	rdb   *sql.DB   // read-only connections (mode=ro): autocommit reads, View, read-only tx, Query
	rstmt stmtCache // prepared statements on rdb
	wq    stmtCache // prepared statements on wconn (committer only)

	// writeLock is the in-process write mutex (a 1-slot semaphore so it can be acquired with a
	// context). The committer holds it per batch; a read-write client transaction holds it from
	// Begin to Commit/Rollback.
	writeLock chan struct{}

	queue       chan *op
	queuedBytes *semaphore.Weighted // see maxQueuedBytes
	closeMu     sync.RWMutex        // submitters hold it shared from their closed check to their send
	closed      atomic.Bool
	done        chan struct{} // closed when the committer has exited
	lock        io.Closer     // the data directory's exclusive process lock

	pend pendingSet
	// unnamedTemps: payload temp files are unnamed (tmpfile_linux.go) rather than named files in
	// tmp/ that are renamed into place.
	unnamedTemps bool

	stopJanitor context.CancelFunc
	janitorDone chan struct{}

	txMu    sync.Mutex
	txs     map[string]*clientTx
	openTx  int             // open + being begun; guarded by txMu
	expired map[string]bool // recently expired ids, to word their ErrNotFound
}

// Open opens (creating if needed) the data directory dir, applies migrations, and starts the group
// committer and the janitor (expired transactions, orphaned payload files). It fails if another
// process has the directory open (the error says so and wraps ErrLocked).
func Open(ctx context.Context, dir string, opts Options) (*DB, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if dir == "" {
		return nil, fmt.Errorf("open store: empty data directory: %w", ErrInvalid)
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	for _, d := range []string{dir, filepath.Join(dir, payloadDir), filepath.Join(dir, tmpDir)} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("open store %s: %w", dir, err)
		}
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	db := &DB{
		dir:         dir,
		path:        filepath.Join(dir, dbFileName),
		opts:        opts,
		log:         opts.Logger,
		writeLock:   make(chan struct{}, 1),
		queue:       make(chan *op, queueLen),
		queuedBytes: semaphore.NewWeighted(maxQueuedBytes),
		done:        make(chan struct{}),
		lock:        lock,
		txs:         make(map[string]*clientTx),
		expired:     make(map[string]bool),
	}
	db.pend.init()
	db.unnamedTemps = unnamedWorks(filepath.Join(dir, tmpDir))
	if err := db.open(ctx); err != nil {
		db.closeConns()
		lock.Close()
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	go db.commitLoop()
	jctx, cancel := context.WithCancel(context.Background())
	db.stopJanitor = cancel
	db.janitorDone = make(chan struct{})
	go db.janitor(jctx)
	return db, nil
}

func (o Options) withDefaults() (Options, error) {
	if o.InlineMax == 0 {
		o.InlineMax = defaultInlineMax
	}
	if o.DefaultTxTimeout == 0 {
		o.DefaultTxTimeout = defaultTxTimeout
	}
	if o.MaxTxTimeout == 0 {
		o.MaxTxTimeout = defaultMaxTxTimeout
	}
	if o.MaxOpenTx == 0 {
		o.MaxOpenTx = defaultMaxOpenTx
	}
	if o.MaxQueryValueBytes == 0 {
		o.MaxQueryValueBytes = 64 << 20 // the API's default largest message is 65 MiB
	}
	if o.StalledReadWALBytes == 0 {
		o.StalledReadWALBytes = defaultStalledReadWALBytes
	}
	if o.GCInterval == 0 {
		o.GCInterval = time.Hour // orphans only appear after abandoned uploads; hourly bounds their space cheaply
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.InlineMax < 0:
		return o, fmt.Errorf("store options: InlineMax must be >= 0: %w", ErrInvalid)
	case o.DefaultTxTimeout < 0 || o.MaxTxTimeout < 0:
		return o, fmt.Errorf("store options: transaction timeouts must be > 0: %w", ErrInvalid)
	case o.MaxOpenTx < 0:
		return o, fmt.Errorf("store options: MaxOpenTx must be > 0: %w", ErrInvalid)
	case o.MaxQueryValueBytes < 0:
		return o, fmt.Errorf("store options: MaxQueryValueBytes must be > 0: %w", ErrInvalid)
	case o.Durability != DurabilitySync && o.Durability != DurabilityProcess:
		return o, fmt.Errorf("store options: unknown durability %d: %w", o.Durability, ErrInvalid)
	}
	if o.DefaultTxTimeout > o.MaxTxTimeout {
		o.DefaultTxTimeout = o.MaxTxTimeout
	}
	return o, nil
}

// dsn builds a modernc DSN: a file: URI (so mode=ro works and odd characters in the path survive)
// plus _pragma parameters the driver runs on every new connection, in order.
func (db *DB) dsn(readOnly bool) string {
	u := url.URL{Scheme: "file", Opaque: (&url.URL{Path: db.path}).EscapedPath()}
	q := []string{}
	if readOnly {
		// mode=ro makes SQLite itself refuse writes on these connections: the Query service's
		// read-only guarantee does not depend on parsing SQL, and "PRAGMA query_only=0" cannot undo it.
		q = append(q, "mode=ro")
	} else {
		// page_size must come before journal_mode: it only takes effect on a new, empty database.
		q = append(q, "_pragma=page_size(4096)", "_pragma=journal_mode(WAL)",
			fmt.Sprintf("_pragma=journal_size_limit(%d)", journalSizeLimit))
	}
	// WAL + synchronous=FULL fsyncs the WAL on every commit (survives power loss); NORMAL fsyncs only at
	// checkpoints, which in WAL mode still survives a crash or kill -9 of the process.
	sync := "FULL"
	if db.opts.Durability == DurabilityProcess {
		sync = "NORMAL"
	}
	q = append(q,
		fmt.Sprintf("_pragma=busy_timeout(%d)", busyTimeoutMS),
		"_pragma=foreign_keys(1)", // layered packages' schemas (the registry) rely on enforced FKs
		"_pragma=synchronous("+sync+")",
	)
	s := u.String() + "?"
	for i, p := range q {
		if i > 0 {
			s += "&"
		}
		s += p
	}
	return s
}

func (db *DB) open(ctx context.Context) error {
	var err error
	db.wdb, err = sql.Open("sqlite", db.dsn(false))
	if err != nil {
		return err
	}
	// Two writable connections: the committer's, and the one a read-write client transaction holds
	// (there is at most one, because it holds writeLock).
	db.wdb.SetMaxOpenConns(2)
	db.wdb.SetMaxIdleConns(2)
	db.wdb.SetConnMaxIdleTime(0)
	db.wconn, err = db.wdb.Conn(ctx)
	if err != nil {
		return err
	}
	db.wq.init(db.wconn)
	var mode string
	if err := db.wconn.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return err
	}
	if mode != "wal" {
		return fmt.Errorf("journal_mode is %q, want wal (filesystem without shared memory support?)", mode)
	}
	if err := db.migrate(ctx); err != nil {
		return err
	}
	if err := db.refreshIndexTriggers(ctx); err != nil {
		return fmt.Errorf("refresh index triggers: %w", err)
	}
	db.rdb, err = sql.Open("sqlite", db.dsn(true))
	if err != nil {
		return err
	}
	// Read-only transactions each hold a connection for their lifetime, so the pool must fit
	// MaxOpenTx of them plus the autocommit readers and queries.
	db.rdb.SetMaxOpenConns(db.opts.MaxOpenTx + readConns)
	db.rdb.SetMaxIdleConns(readConns)
	db.rstmt.init(db.rdb)
	// Orphans from a crash (a payload written but never committed, or committed-unref'd but not yet
	// unlinked) are collected now, while nothing else is writing.
	if res, err := db.collectGarbage(ctx, true); err != nil {
		return fmt.Errorf("collect orphaned payloads: %w", err)
	} else if res.Files > 0 {
		db.log.Info("removed orphaned payload files", "files", res.Files, "bytes", res.Bytes)
	}
	return nil
}

// readConns is the idle read pool size: enough for the gRPC handlers' concurrent autocommit reads on
// a 2–4 core edge device without keeping many page caches around.
const readConns = 4

// Close rolls back open transactions, stops background work and closes the database. Writes already
// queued are committed first. Methods called after Close fail with ErrClosed.
func (db *DB) Close() error {
	if db.closed.Swap(true) {
		return nil
	}
	db.stopJanitor()
	<-db.janitorDone
	// Roll back client transactions before waiting for submitters: one of them may hold writeLock,
	// and a submitter blocked on a full queue waits for the committer, which waits for writeLock.
	db.rollbackAll()
	db.closeMu.Lock() // no submitter is between its closed check and its send any more
	close(db.queue)
	db.closeMu.Unlock()
	<-db.done
	err := db.closeConns()
	if db.lock != nil {
		err = errors.Join(err, db.lock.Close())
	}
	return err
}

func (db *DB) closeConns() error {
	var err error
	db.rstmt.close()
	db.wq.close()
	if db.wconn != nil {
		err = errors.Join(err, db.wconn.Close())
	}
	if db.rdb != nil {
		err = errors.Join(err, db.rdb.Close())
	}
	if db.wdb != nil {
		err = errors.Join(err, db.wdb.Close())
	}
	return err
}

// Dir is the data directory.
func (db *DB) Dir() string { return db.dir }

func (db *DB) checkOpen() error {
	if db.closed.Load() {
		return ErrClosed
	}
	return nil
}

// janitor periodically collects orphaned payload files. Expired transactions need no polling: each
// has its own timer (see Begin).
func (db *DB) janitor(ctx context.Context) {
	defer close(db.janitorDone)
	if db.opts.GCInterval < 0 {
		return
	}
	t := time.NewTicker(db.opts.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			res, err := db.collectGarbage(ctx, false)
			if err != nil && ctx.Err() == nil {
				db.log.Warn("collect orphaned payloads", "err", err)
			} else if res.Files > 0 {
				db.log.Info("removed orphaned payload files", "files", res.Files, "bytes", res.Bytes)
			}
		}
	}
}
