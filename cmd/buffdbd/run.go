package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/buffdb/buffdbd/api"
	"github.com/buffdb/buffdbd/internal/gotune"
	"github.com/buffdb/buffdbd/store"
)

// serviceHook adds services layered on the store (the model registry) to a server. It runs for the
// daemon and for the CLI's in-process server alike, so both serve the same service set. The returned
// closer (may be nil) stops the hook's background work; it runs before the store closes.
type serviceHook func(ctx context.Context, db *store.DB, srv *api.Server, cfg Config, log *slog.Logger) (io.Closer, error)

// serviceHooks are registered from other files' var blocks with addServiceHook, e.g. in model.go:
//
//	var _ = addServiceHook(registerRegistry)
var serviceHooks []serviceHook

func addServiceHook(h serviceHook) struct{} {
	serviceHooks = append(serviceHooks, h)
	return struct{}{}
}

// storeMigrations are schema steps of packages layered on the store, added like serviceHooks.
var storeMigrations []store.Migration

// openStore opens cfg's data directory with cfg's store options.
func openStore(ctx context.Context, cfg Config, log *slog.Logger) (*store.DB, error) {
	d, err := store.ParseDurability(cfg.Store.Durability)
	if err != nil {
		return nil, fmt.Errorf("store.durability: %w", err)
	}
	if err := checkOwner(cfg.DataDir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	if err := checkDatabaseNotLost(cfg.DataDir); err != nil {
		return nil, err
	}
	walLimit := int64(cfg.Store.StalledReadWALBytes)
	if walLimit == 0 {
		walLimit = -1 // the configuration's 0 disables; the store's 0 means its default
	}
	db, err := store.Open(ctx, cfg.DataDir, store.Options{
		Durability:          d,
		DefaultTxTimeout:    cfg.Store.DefaultTxTimeout,
		MaxTxTimeout:        cfg.Store.MaxTxTimeout,
		MaxOpenTx:           cfg.Store.MaxOpenTx,
		QueryWrites:         cfg.Store.QueryWrites,
		StalledReadWALBytes: walLimit,
		// A raw SQL value no response could carry is refused before it is built.
		MaxQueryValueBytes: int64(cfg.GRPC.MaxMessageBytes),
		Migrations:         storeMigrations,
		Logger:             log,
	})
	if err != nil && !errors.Is(err, store.ErrNoSpace) {
		// On a full disk SQLite often fails before any write it would report as SQLITE_FULL: growing
		// its shared-memory index gives "disk I/O error (4874)", which reads as failing hardware.
		// Name the real cause, with the hint and exit status of a full disk.
		if free := freeBytes(cfg.DataDir); free >= 0 && free < openMinFree {
			return nil, fmt.Errorf("%w (%d bytes free): %w", store.ErrNoSpace, free, err)
		}
	}
	return db, err
}

// openMinFree is the free space below which a failed open is put down to a full disk: opening
// needs a few pages of WAL and a 32 KiB shared-memory index, and migrations a little more.
const openMinFree = 1 << 20

// The store's database file and payload directory inside the data directory (store/db.go and
// store/payload.go); TestOpenStore_DatabaseLost fails if they move.
const (
	storeDBFile     = "buffdb.sqlite"
	storePayloadDir = "payloads"
)

// databaseLostError refuses to open a data directory whose payload files survive but whose
// database is gone or empty; it carries its own hint (see reportError).
type databaseLostError struct {
	db    string
	state string
}

func (e databaseLostError) Error() string {
	return fmt.Sprintf("database %s is %s, but the data directory holds payload files: refusing to start a new, empty store over them", e.db, e.state)
}

func (databaseLostError) ExitCode() int { return exitError }

func (databaseLostError) Hint() string {
	return "restore the database file from a backup; to start over on purpose, move the whole data directory aside"
}

// checkDatabaseNotLost refuses a data directory whose database file is missing or empty while
// payload files remain: the database was deleted, truncated or not restored with the rest.
// SQLite would silently create a new empty database there, and the store's startup clean-up
// would then delete every payload file as unreferenced, destroying what a restore could still
// have saved. A store that was ever opened always has a non-empty database (the migrations write
// it before any payload exists), so a fresh or crashed-while-created store is not refused.
func checkDatabaseNotLost(dir string) error {
	db := filepath.Join(dir, storeDBFile)
	state := ""
	switch fi, err := os.Stat(db); {
	case errors.Is(err, os.ErrNotExist):
		state = "missing"
	case err != nil:
		return nil // store.Open reports it
	case fi.Size() == 0:
		state = "empty (0 bytes)"
	default:
		return nil
	}
	found := errors.New("found")
	err := filepath.WalkDir(filepath.Join(dir, storePayloadDir), func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			return found
		}
		return nil // unreadable or absent: not evidence of lost data
	})
	if errors.Is(err, found) {
		return databaseLostError{db: db, state: state}
	}
	return nil
}

// services is a server with its layered services, built the same way for the daemon and the CLI.
type services struct {
	srv     *api.Server
	closers []io.Closer
}

func buildServices(ctx context.Context, db *store.DB, cfg Config, log *slog.Logger, opts api.Options) (*services, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler) // hooks may log unconditionally
	}
	opts.MaxMessageBytes = int(cfg.GRPC.MaxMessageBytes)
	opts.Logger = log
	s := &services{srv: api.NewServer(db, opts)}
	for _, h := range serviceHooks {
		c, err := h(ctx, db, s.srv, cfg, log)
		if err != nil {
			s.close()
			return nil, err
		}
		if c != nil {
			s.closers = append(s.closers, c)
		}
	}
	return s, nil
}

// close stops the layered services' background work, last registered first.
func (s *services) close() error {
	var errs []error
	for i := len(s.closers) - 1; i >= 0; i-- {
		errs = append(errs, s.closers[i].Close())
	}
	return errors.Join(errs...)
}

// Main is the running daemon: the store, the gRPC server and its listeners. Open brings them up in
// order; Close takes them down in reverse.
type Main struct {
	Config Config
	Logger *slog.Logger
	// ServerOptions customise the gRPC server (interceptors for metrics, keepalive).
	ServerOptions api.Options
	// OnReady, if set, runs once every listener is bound and the server is SERVING (systemd READY=1).
	OnReady func()

	DB       *store.DB
	Services *services

	listeners []net.Listener
	addrs     []net.Addr
	socket    string
	// socketLink is <data_dir>/buffdbd.sock pointing at a socket elsewhere ($RUNTIME_DIRECTORY), so
	// CLI calls that only know the data directory still find the daemon.
	socketLink string
	serveErr   chan error
	wg         sync.WaitGroup

	// Operations: metrics (nil when http.listen is empty), the HTTP listener, systemd notification.
	metrics  *metrics
	http     *http.Server
	httpLn   net.Listener
	httpAddr net.Addr
	systemd  *systemd
	ready    atomic.Bool
	// endServices cancels the context the layered services were built with (see Open).
	endServices context.CancelFunc
	// draining is set when shutdown begins, before health turns NOT_SERVING (endHealthWatches).
	draining atomic.Bool
	// readyDB is the store while serving, nil before and once shutdown begins; readiness uses it
	// without racing Close's m.DB = nil.
	readyDB atomic.Pointer[store.DB]
}

// NewMain returns a Main for cfg; nothing runs until Open.
func NewMain(cfg Config, log *slog.Logger) *Main {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Main{Config: cfg, Logger: log, serveErr: make(chan error, 1), systemd: newSystemd(log)}
}

// Open opens the store, builds the services, binds every listener and starts serving. On error
// everything opened so far is closed again.
func (m *Main) Open(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			m.Close(context.Background())
		}
	}()
	if err := m.Config.resolveDirs(); err != nil {
		return err
	}
	if err := m.Config.Validate(); err != nil {
		return err
	}
	m.instrument()
	tlsFiles, err := newServerTLS(m.Config.GRPC, m.Logger)
	if err != nil {
		return err
	}
	// Bind the socket first: a daemon already serving this data directory answers on it, and
	// refusing here gives a clearer message than the store's lock would.
	if m.socket = socketPath(m.Config); m.socket != "" {
		if err := os.MkdirAll(filepath.Dir(m.socket), 0o700); err != nil {
			return fmt.Errorf("create socket directory: %w", err)
		}
		l, err := listenUnix(m.socket)
		if err != nil {
			return err
		}
		m.listeners = append(m.listeners, l)
		if err := m.linkSocket(); err != nil {
			return err
		}
	}
	if m.DB, err = openStore(ctx, m.Config, m.Logger); err != nil {
		return err
	}
	if m.metrics != nil {
		m.metrics.registerStore(m.DB.Stats)
		ctx = withObservers(ctx, m.metrics)
	}
	// The services' context ends when Close begins, whatever started it (a signal, a failed
	// listener, a test): the registry then ends its Watch streams, which would otherwise hold the
	// graceful stop for its whole timeout.
	ctx, m.endServices = context.WithCancel(ctx)
	if m.Services, err = buildServices(ctx, m.DB, m.Config, m.Logger, m.ServerOptions); err != nil {
		return err
	}
	if m.Config.HTTP.Listen != "" {
		if m.httpLn, err = net.Listen("tcp", m.Config.HTTP.Listen); err != nil {
			return fmt.Errorf("http.listen: listen on %s: %w", m.Config.HTTP.Listen, err)
		}
		m.httpAddr = m.httpLn.Addr()
	}
	for _, a := range m.Config.GRPC.Listen {
		l, err := net.Listen("tcp", a)
		if err != nil {
			if isIPv6Unavailable(a, err) {
				// Hosts with IPv6 disabled still serve BuffDB's 127.0.0.1 clients.
				m.Logger.Warn("IPv6 loopback unavailable; not listening on it", "addr", a, "err", err)
				continue
			}
			return fmt.Errorf("listen on %s: %w", a, err)
		}
		if tlsFiles != nil {
			l = tlsFiles.listener(l)
		} else if !isLoopback(a) {
			m.Logger.Warn("gRPC listens beyond loopback without TLS: anyone who can reach it can read and change the store;"+
				" set grpc.tls_cert_file and grpc.tls_key_file (and grpc.tls_client_ca_file to admit only clients with a certificate)", "addr", a)
		}
		m.listeners = append(m.listeners, l)
	}
	if len(m.listeners) == 0 {
		return errors.New("no listener could be bound")
	}
	for _, l := range m.listeners {
		m.addrs = append(m.addrs, l.Addr())
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			if err := m.Services.srv.Serve(l); err != nil {
				select {
				case m.serveErr <- fmt.Errorf("serve %s: %w", l.Addr(), err):
				default:
				}
			}
		}()
	}
	if m.httpLn != nil {
		srv, ln := newHTTPServer(newHTTPHandler(m.metrics.registry, m.readiness, m.Logger), m.Logger), m.httpLn
		m.http = srv
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			// Pre-creating every method's series takes ~1.5 ms; doing it here, before the first
			// scrape can be served, keeps it off the start-to-ready path.
			m.metrics.initialize()
			serveHTTP(srv, ln, m.Logger) // not m.http: Close may clear it before this goroutine runs
		}()
	}
	m.Services.srv.SetServing()
	m.readyDB.Store(m.DB)
	m.ready.Store(true)
	m.Logger.Info("buffdbd serving", "data_dir", m.Config.DataDir, "addrs", addrStrings(m.addrs),
		"http", addrString(m.httpAddr))
	// Every listener is bound and serving: only now may systemd consider the unit started.
	status := "serving gRPC on " + strings.Join(addrStrings(m.addrs), ", ")
	if m.httpAddr != nil {
		status += "; HTTP on " + m.httpAddr.String()
	}
	m.systemd.ready(status)
	m.systemd.startWatchdog(m.readiness)
	if m.OnReady != nil {
		m.OnReady()
	}
	return nil
}

// instrument sets up metrics and request logging before the gRPC server is built: interceptors
// are fixed at construction. Metrics exist only when something can scrape them (http.listen set).
func (m *Main) instrument() {
	if m.Config.HTTP.Listen != "" {
		m.metrics = newMetrics(readBuildInfo())
		m.ServerOptions.UnaryInterceptors = append(m.ServerOptions.UnaryInterceptors, m.metrics.unaryInterceptor())
		m.ServerOptions.StreamInterceptors = append(m.ServerOptions.StreamInterceptors, m.metrics.streamInterceptor())
	}
	unary, stream := requestLogInterceptors(m.Logger)
	m.ServerOptions.UnaryInterceptors = append(m.ServerOptions.UnaryInterceptors, unary)
	m.ServerOptions.StreamInterceptors = append(m.ServerOptions.StreamInterceptors, stream, m.endHealthWatches)
}

// endHealthWatches ends a grpc.health.v1.Health/Watch stream once it has told its client
// NOT_SERVING during shutdown. Load balancers and grpc-go's client-side health checking hold one
// such stream per connection for as long as it lives; the graceful stop waits for every stream,
// so without this each stop with a health watcher attached lasted the whole shutdown_timeout and
// then cut off every other in-flight RPC too. The client hears UNAVAILABLE, gRPC's "go elsewhere
// and retry".
func (m *Main) endHealthWatches(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if info.FullMethod != healthpb.Health_Watch_FullMethodName {
		return h(srv, ss)
	}
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	w := &healthWatchStream{ServerStream: ss, ctx: ctx, cancel: cancel, draining: &m.draining}
	err := h(srv, w)
	if w.ended.Load() {
		return status.Error(codes.Unavailable, "server shutting down")
	}
	return err
}

// healthWatchStream is a Health/Watch stream whose context endHealthWatches cancels after it sent
// NOT_SERVING while the server drains.
type healthWatchStream struct {
	grpc.ServerStream
	ctx      context.Context
	cancel   context.CancelFunc
	draining *atomic.Bool
	ended    atomic.Bool
}

func (s *healthWatchStream) Context() context.Context { return s.ctx }

func (s *healthWatchStream) SendMsg(msg any) error {
	err := s.ServerStream.SendMsg(msg)
	if r, ok := msg.(*healthpb.HealthCheckResponse); ok && err == nil && s.draining.Load() &&
		r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		s.ended.Store(true)
		s.cancel()
	}
	return err
}

// readiness is nil once the store is open (migrations applied) and the listeners serve, as long
// as the store answers, until shutdown begins. /readyz and the systemd watchdog use it.
func (m *Main) readiness(ctx context.Context) error {
	db := m.readyDB.Load()
	if !m.ready.Load() || db == nil {
		return errShuttingDown
	}
	// An empty read transaction proves the database still answers (not wedged on a lock or a
	// dead disk): the watchdog stops pinging and systemd restarts a daemon whose store hangs.
	if err := db.View(ctx, func(*store.Tx) error { return nil }); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// HTTPAddr is the bound HTTP listener address (nil when http.listen is empty).
func (m *Main) HTTPAddr() net.Addr { return m.httpAddr }

// linkSocket points <data_dir>/buffdbd.sock at a socket bound elsewhere (systemd's runtime
// directory), replacing a stale link from a crashed daemon.
func (m *Main) linkSocket() error {
	link := filepath.Join(m.Config.DataDir, "buffdbd.sock")
	if link == m.socket || m.Config.GRPC.Socket != "" {
		return nil // the socket is in the data directory, or placed explicitly by the operator
	}
	if err := os.MkdirAll(m.Config.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	if fi, err := os.Lstat(link); err == nil {
		if fi.Mode()&(os.ModeSymlink|os.ModeSocket) == 0 {
			m.Logger.Warn("not linking the socket into the data directory: the path exists and is not a socket or link",
				"path", link, "kind", fileKind(fi))
			return nil
		}
		if fi.Mode()&os.ModeSymlink == 0 && daemonAnswers(link) {
			return alreadyServingError{link}
		}
		_ = os.Remove(link)
	}
	if err := os.Symlink(m.socket, link); err != nil {
		// The CLI can still be pointed at the socket with --addr; not worth refusing to start.
		m.Logger.Warn("cannot link the socket into the data directory", "err", err)
		return nil
	}
	m.socketLink = link
	return nil
}

// Addrs are the bound listener addresses (TCP ones resolve a :0 port), the unix socket included.
func (m *Main) Addrs() []net.Addr { return m.addrs }

// Err receives the first error a listener's Serve returns (a daemon should then shut down).
func (m *Main) Err() <-chan error { return m.serveErr }

// Close shuts down in reverse order: health NOT_SERVING and stop accepting, let in-flight RPCs finish
// until ctx is done (then cancel them), stop layered services, close the store, remove the socket.
func (m *Main) Close(ctx context.Context) error {
	var errs []error
	m.readyDB.Store(nil)
	if m.ready.Swap(false) {
		m.systemd.stopping(m.Config.ShutdownTimeout + closeAllowance)
	}
	m.systemd.stopWatchdog()
	m.draining.Store(true)
	if m.endServices != nil {
		m.endServices()
	}
	if m.Services != nil {
		m.Services.srv.Shutdown(ctx)
	}
	for _, l := range m.listeners {
		l.Close() // those never handed to Serve (a failed Open); the rest report "already closed"
	}
	// HTTP goes last among the listeners: /healthz and /metrics stay up while gRPC drains. Its own
	// requests are short, so a fresh short deadline suffices even when ctx has expired.
	if m.http != nil {
		hctx, cancel := context.WithTimeout(context.Background(), httpShutdownTimeout)
		if err := m.http.Shutdown(hctx); err != nil {
			m.http.Close()
		}
		cancel()
		m.http = nil
	} else if m.httpLn != nil {
		m.httpLn.Close()
	}
	m.wg.Wait()
	if m.Services != nil {
		errs = append(errs, m.Services.close())
		m.Services = nil
	}
	if m.DB != nil {
		errs = append(errs, m.DB.Close())
		m.DB = nil
	}
	if m.socket != "" && len(m.listeners) > 0 {
		os.Remove(m.socket) // usually gone already: net.UnixListener.Close unlinks it
	}
	if m.socketLink != "" {
		os.Remove(m.socketLink)
		m.socketLink = ""
	}
	m.listeners = nil
	return errors.Join(errs...)
}

// alreadyServingError refuses to start a daemon on a data directory another one serves; it
// carries its own hint (see reportError).
type alreadyServingError struct{ socket string }

func (e alreadyServingError) Error() string {
	return "another buffdbd is already serving this data directory (socket " + e.socket + ")"
}

func (alreadyServingError) ExitCode() int { return exitError }

func (alreadyServingError) Hint() string {
	return "stop it first (for the service: systemctl stop buffdbd), or start this one with its own --data-dir; CLI commands use the running daemon as they are"
}

// listenUnix binds the CLI's socket, removing a stale one left by a crashed daemon but refusing to
// start when a live daemon answers on it.
func listenUnix(path string) (net.Listener, error) {
	// sun_path holds 108 bytes on Linux, including the terminating NUL.
	if len(path) > 107 {
		return nil, fmt.Errorf("socket path %s is longer than the 107 bytes a unix socket allows; set grpc.socket to a shorter path or %q", path, socketNone)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSymlink != 0 && staleSocketLink(path) {
			// The link linkSocket leaves in the data directory when the service (socket in
			// /run/buffdbd) crashed or the machine rebooted; `buffdbd run` by hand on that
			// directory then refused to start. Only a link to a socket or to nothing is replaced.
			if daemonAnswers(path) {
				return nil, alreadyServingError{path}
			}
			if err := os.Remove(path); err != nil {
				return nil, fmt.Errorf("remove stale socket link: %w", err)
			}
		}
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			// A typo in grpc.socket must not cost the operator a file.
			return nil, fmt.Errorf("socket path %s exists and is not a socket (%s); refusing to replace it", path, fileKind(fi))
		}
		if daemonAnswers(path) {
			return nil, alreadyServingError{path}
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on socket %s: %w", path, err)
	}
	return l, nil
}

// staleSocketLink reports whether the symbolic link path points at a socket or at nothing.
func staleSocketLink(path string) bool {
	fi, err := os.Stat(path)
	return errors.Is(err, os.ErrNotExist) || (err == nil && fi.Mode()&os.ModeSocket != 0)
}

// fileKind names what fi is, for an error about a path that should have been a socket.
func fileKind(fi os.FileInfo) string {
	switch m := fi.Mode(); {
	case m.IsDir():
		return "a directory"
	case m.IsRegular():
		return "a regular file"
	case m&os.ModeSymlink != 0:
		return "a symbolic link"
	default:
		return "a " + m.Type().String() + " file"
	}
}

// daemonAnswers reports whether something accepts connections on the unix socket path. A stale
// socket file refuses at once, so the timeout only matters for a daemon too busy to accept.
func daemonAnswers(path string) bool {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func isIPv6Unavailable(addr string, err error) bool {
	host, _, _ := net.SplitHostPort(addr)
	return strings.Contains(host, ":") &&
		(errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EPROTONOSUPPORT))
}

// systemDataDir is where the systemd unit keeps the data (StateDirectory=buffdbd).
var systemDataDir = "/var/lib/buffdbd"

// resolveDataDir returns dir, or when empty the embedded default: $STATE_DIRECTORY (set by systemd's
// StateDirectory=; the first entry if it lists several), else /var/lib/buffdbd when it exists and
// this user may use it (so CLI calls on a device running the service reach the service's data and
// socket without --data-dir), else $XDG_DATA_HOME/buffdbd, else ~/.local/share/buffdbd. The result
// is absolute so the socket path does not depend on the cwd.
func resolveDataDir(dir string) (string, error) {
	if dir == "" {
		switch {
		case os.Getenv("STATE_DIRECTORY") != "":
			dir, _, _ = strings.Cut(os.Getenv("STATE_DIRECTORY"), ":")
		case usableDir(systemDataDir):
			dir = systemDataDir
		case os.Getenv("XDG_DATA_HOME") != "":
			dir = filepath.Join(os.Getenv("XDG_DATA_HOME"), "buffdbd")
		default:
			home, err := os.UserHomeDir()
			if err != nil {
				return "", fmt.Errorf("no data directory: set --data-dir (%w)", err)
			}
			dir = filepath.Join(home, ".local", "share", "buffdbd")
		}
	}
	return filepath.Abs(dir)
}

// usableDir reports whether dir is a directory this process may list, read and write.
func usableDir(dir string) bool {
	fi, err := os.Stat(dir)
	if err != nil || !fi.IsDir() {
		return false
	}
	// R_OK|W_OK|X_OK (7): access(2) answers for the real uid, as the CLI user runs it.
	return syscall.Access(dir, 7) == nil
}

// socketPath is cfg's unix socket, "" when disabled.
func socketPath(cfg Config) string {
	switch cfg.GRPC.Socket {
	case socketNone:
		return ""
	case "":
		// systemd's RuntimeDirectory= (/run/buffdbd); the daemon links it into the data directory.
		if d := firstDir(os.Getenv("RUNTIME_DIRECTORY")); d != "" {
			return filepath.Join(d, "buffdbd.sock")
		}
		return filepath.Join(cfg.DataDir, "buffdbd.sock")
	}
	return cfg.GRPC.Socket
}

func addrStrings(as []net.Addr) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.String()
	}
	return out
}

// closeAllowance is what systemd is told a shutdown needs beyond shutdown_timeout: the HTTP
// listener's shutdown, the registry's background work and the store's final WAL checkpoint and
// fsync, which on a slow SD card after a burst of writes take seconds, not milliseconds.
const closeAllowance = 30 * time.Second

// httpShutdownTimeout bounds the HTTP listener's shutdown: scrapes and probes take milliseconds.
const httpShutdownTimeout = 2 * time.Second

func newRunCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the daemon: serve the store over gRPC until SIGINT/SIGTERM",
		Long: `Run the daemon: serve buffdb.kv, buffdb.blob, buffdb.query, buffdb.index, health and reflection
over gRPC on the --listen addresses and on the unix socket (used by local CLI calls), and
/metrics, /healthz and /readyz over HTTP on --http-listen, until SIGINT or SIGTERM. A second
signal exits at once. SIGHUP (systemctl reload) re-reads the configuration: log.level applies at
once, other changed keys are logged as needing a restart, an invalid file is logged and ignored.

Configuration comes from flags, then BUFFDBD_* environment variables, then the config file
(--config, default /etc/buffdbd/buffdbd.yaml when present), then defaults; see
'buffdbd config print'. An invalid configuration exits with code 78.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// From here on SIGHUP reloads (see reload) instead of killing the daemon, Go's default:
			// `kill -HUP`, the reflex for "re-read your config", must never stop a service.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			// A log pipe whose reader went away (a restarted log shipper, `buffdbd run | logger`)
			// must cost log lines, not the daemon: Go's default for SIGPIPE on stderr is to die
			// on the spot, with no drain. Ignored, the write fails with EPIPE and slog drops it.
			signal.Ignore(syscall.SIGPIPE)
			cfg, file, warnings, err := LoadConfig(cmd.Flags())
			if err != nil {
				return err
			}
			if err := cfg.CheckFiles(); err != nil {
				return err
			}
			target := logTarget{}
			if f, ok := cmd.ErrOrStderr().(*os.File); ok {
				target = detectLogTarget(f)
			}
			level := new(slog.LevelVar)
			lvl, err := parseLevel(cfg.Log.Level)
			if err != nil {
				return configErrorf("log.level: %v", err)
			}
			level.Set(lvl)
			log, err := newLevelLogger(cmd.ErrOrStderr(), level, cfg.Log.Format, target)
			if err != nil {
				return configErrorf("log: %v", err)
			}
			bi := readBuildInfo()
			log.Info("starting buffdbd", "version", bi.Version, "commit", bi.Commit, "go", bi.GoVersion,
				"config_file", file)
			for _, w := range warnings {
				log.Warn(w)
			}
			gotune.LimitMemory(int64(cfg.MemoryLimit))
			gotune.RelaxGC(int64(cfg.MemoryLimit))
			return runDaemon(cmd.Context(), cfg, log, &reloader{signals: hup, level: level,
				load: func() (Config, error) {
					cfg, _, warnings, err := LoadConfig(cmd.Flags())
					if err == nil {
						err = cfg.CheckFiles()
					}
					for _, w := range warnings {
						log.Warn(w)
					}
					return cfg, err
				}})
		},
	}
	return cmd
}

// reloader is what SIGHUP does to a running daemon: re-read and validate the configuration (file,
// environment and the original flags), apply what can change live (log.level) and name in the log
// the changed keys that take effect only after a restart. An invalid configuration is reported and
// the daemon keeps running with the one it has: a reload never stops a service.
type reloader struct {
	signals <-chan os.Signal
	// load reads the configuration as at startup.
	load  func() (Config, error)
	level *slog.LevelVar
}

// liveKeys are the configuration keys a reload applies without a restart.
var liveKeys = map[string]bool{"log.level": true}

// reload re-reads the configuration; running is the configuration the daemon runs with, which it
// updates with the keys applied live.
func (r *reloader) reload(running *Config, log *slog.Logger, sd *systemd) {
	sd.reloading()
	defer sd.reloaded()
	cfg, err := r.load()
	if err == nil {
		err = cfg.resolveDirs()
	}
	if err != nil {
		log.Error("reload: configuration not applied; still running with the previous one",
			"err", oneLine(err.Error()))
		return
	}
	applied, restart := []string{}, []string{}
	for _, k := range configKeys {
		if yamlValue(k, &cfg, false) == yamlValue(k, running, false) {
			continue
		}
		if !liveKeys[k.name] {
			restart = append(restart, k.name)
			continue
		}
		applied = append(applied, k.name)
	}
	if lvl, err := parseLevel(cfg.Log.Level); err == nil { // Validate checked it
		r.level.Set(lvl)
		running.Log.Level = cfg.Log.Level
	}
	if len(restart) > 0 {
		log.Warn("reload: changed keys take effect only after a restart (systemctl restart buffdbd)",
			"applied", applied, "restart_needed", restart)
		return
	}
	log.Info("configuration reloaded", "applied", applied)
}

// runDaemon serves until ctx is cancelled (the first signal) or a listener fails, then shuts down:
// health NOT_SERVING and systemd STOPPING=1, stop accepting, in-flight RPCs finish within
// cfg.ShutdownTimeout (then are cancelled), store closed. It returns nil after a clean shutdown.
// Signals on r.signals (SIGHUP) reload the configuration; r may be nil.
func runDaemon(ctx context.Context, cfg Config, log *slog.Logger, r *reloader) error {
	m := NewMain(cfg, log)
	if err := m.Open(ctx); err != nil {
		if ctx.Err() != nil {
			// SIGTERM while the store opened (migrations can take a while): a requested stop,
			// not a failure, or systemd marks the unit failed. Open closed what it had opened.
			log.Info("stopped before serving", "reason", "signal during startup", "err", err)
			return nil
		}
		return err
	}
	log.Info("effective configuration", m.Config.maskedAttrs()...)
	var hup <-chan os.Signal
	if r != nil {
		hup = r.signals
	}
	var serveErr error
wait:
	for {
		select {
		case <-hup:
			log.Info("SIGHUP: reloading the configuration")
			r.reload(&m.Config, log, m.systemd)
		case <-ctx.Done():
			log.Info("shutting down", "timeout", cfg.ShutdownTimeout)
			break wait
		case serveErr = <-m.Err():
			log.Error("listener failed; shutting down", "err", serveErr)
			break wait
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	err := errors.Join(serveErr, m.Close(sctx))
	if err == nil {
		log.Info("stopped cleanly")
	}
	return err
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
