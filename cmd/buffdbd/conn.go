package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/test/bufconn"

	"github.com/buffdb/buffdbd/api"
	"github.com/buffdb/buffdbd/internal/gotune"
	"github.com/buffdb/buffdbd/store"
)

// clientConn is a connection for one CLI command: to a daemon, or to an in-process server over the
// store opened directly. Either way the command speaks the same gRPC, so it has one code path.
type clientConn struct {
	*grpc.ClientConn
	// Local is true when no daemon was found and the store was opened in this process.
	Local  bool
	closer func() error
}

// Close closes the connection and, for an in-process server, the server and the store.
func (c *clientConn) Close() error { return c.closer() }

// dial connects to --addr if set; else to the daemon on the data directory's socket if one answers;
// else opens the store in-process and serves the same services (registry included) on an in-memory
// listener. Callers Close the result.
func dial(cmd *cobra.Command, g *globalFlags) (*clientConn, error) {
	// The same configuration as `run` (--config / /etc/buffdbd/buffdbd.yaml, BUFFDBD_* variables,
	// --data-dir), so the CLI finds the daemon's data directory and, without a daemon, opens the
	// store with the daemon's settings (durability, query writes, message size).
	cfg, _, _, err := LoadConfig(cmd.Flags())
	if err != nil {
		return nil, err
	}
	// CLI commands run under memory_limit too: a push, pull or fetch allocates as the daemon does.
	gotune.LimitMemory(int64(cfg.MemoryLimit))
	creds := insecure.NewCredentials()
	if g.addr != "" && !strings.HasPrefix(g.addr, "unix:") { // a socket is plaintext, guarded by its permissions
		tc, err := clientTLS(cfg.Client)
		if err != nil {
			return nil, err
		}
		if tc != nil {
			creds = tc
		}
	}
	dialOpts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(int(cfg.GRPC.MaxMessageBytes)),
			grpc.MaxCallSendMsgSize(int(cfg.GRPC.MaxMessageBytes)),
			grpc.ForceCodecV2(api.Codec{})),
		grpc.WithKeepaliveParams(clientKeepalive),
	}
	if g.addr != "" {
		return remote(g.addr, dialOpts)
	}
	if err := cfg.resolveDirs(); err != nil {
		return nil, err
	}
	// The daemon's socket, or the link to it that a systemd-run daemon keeps in the data directory.
	for _, sock := range []string{socketPath(cfg), filepath.Join(cfg.DataDir, "buffdbd.sock")} {
		if sock != "" && daemonAnswers(sock) {
			return remote("unix://"+sock, dialOpts)
		}
	}
	if !createsStore(cmd) {
		if err := checkStoreExists(cfg.DataDir); err != nil {
			return nil, err
		}
	}
	return local(cmd.Context(), cfg, dialOpts, cmd.ErrOrStderr())
}

// createsStoreKey is the cobra annotation of a command that may create a new store when it finds
// none: one that adds data (kv set, blob store, index create, model push, fetch, query --execute).
// Every other command needs what an existing store holds, so on an empty new one it could only
// answer "empty" or "not found", which after a mistyped --data-dir misleads and leaves a store
// behind. Opt-in, so a new command that forgets to say does not litter.
const createsStoreKey = "buffdbd/creates-store"

// createsStoreAnnotation marks a command that creates the store (see createsStoreKey).
var createsStoreAnnotation = map[string]string{createsStoreKey: "true"}

func createsStore(cmd *cobra.Command) bool { return cmd.Annotations[createsStoreKey] == "true" }

// noStoreError refuses a command that only reads, or changes what exists, on a data directory
// holding no store. It carries its own sentence and hint (see reportError).
type noStoreError struct {
	dir, why string
}

func (e *noStoreError) Error() string {
	return fmt.Sprintf("no store in %s (%s) and no daemon is serving it", e.dir, e.why)
}

// ExitCode is exitError, not exitNotFound: nothing asked for was looked up, and a script treating
// 3 as "key absent" must not go on to write into a mistyped directory.
func (e *noStoreError) ExitCode() int { return exitError }

// Hint names the likely causes: a mistyped directory, another configuration, a daemon not running.
func (e *noStoreError) Hint() string {
	return "check --data-dir (or data_dir, BUFFDBD_DATA_DIR, --config); to reach a daemon, start it or pass --socket or --addr;" +
		" a command that adds data (kv set, blob store, model push, fetch) creates a new store"
}

// checkStoreExists reports a data directory that does not exist or holds no database file. A
// store that was opened once always has one (and checkDatabaseNotLost deals with a lost one).
// Other errors (permissions) are left for opening the store to report with its own wording.
func checkStoreExists(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return &noStoreError{dir: dir, why: "the directory does not exist"}
	case err == nil && !fi.IsDir():
		return &noStoreError{dir: dir, why: "it is not a directory"}
	case err != nil:
		return nil
	}
	if _, err := os.Stat(filepath.Join(dir, storeDBFile)); errors.Is(err, os.ErrNotExist) {
		if err := checkDatabaseNotLost(dir); err != nil {
			return err // payload files without their database: say so, not "no store"
		}
		return &noStoreError{dir: dir, why: "the directory holds no " + storeDBFile}
	}
	return nil
}

// clientKeepalive makes a command notice a link that went silent: a NAT or firewall that dropped
// the connection's state, a peer that lost power, a middlebox that stalls. TCP alone does not
// (its keepalive is answered by whatever middlebox holds the connection, and a send waits out
// the retransmission timeout, ~15 minutes), so a push, pull or watch hung forever. When nothing
// has arrived for Time, grpc-go pings; without an answer within Timeout it closes the
// connection, the stream fails UNAVAILABLE, and push and pull resume on a new connection (their
// --retries). 20 s + 20 s: two missed round trips of even a bad satellite link are far shorter,
// the daemon accepts pings twice a second, and a stream receiving data never pings at all. A
// variable so tests need not wait it out (grpc-go raises Time to at least 10 s).
var clientKeepalive = keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 20 * time.Second}

func remote(addr string, opts []grpc.DialOption) (*clientConn, error) {
	target := addr
	if !strings.Contains(addr, "://") {
		// passthrough: a bare host:port dials exactly that address, as users expect from --addr.
		target = "passthrough:///" + addr
	}
	cc, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, usagef("--addr %q: %v", addr, err)
	}
	return &clientConn{ClientConn: cc, closer: cc.Close}, nil
}

// lockWait bounds how long a CLI command waits for another process to release the store; CLI
// commands hold it for well under a second, so this only expires behind a long one (a big push) or
// a daemon whose socket this user cannot reach. A variable so tests need not wait it out.
var lockWait = 10 * time.Second

// lockRetry is how often the wait tries the lock (and the daemon's socket) again: short next to a
// CLI command's lifetime, long next to the cost of a failed flock.
const lockRetry = 50 * time.Millisecond

// lockedError reports a data directory held by another process whose daemon socket did not answer.
// It carries its own sentence and hint (see reportError) and wraps store.ErrLocked.
type lockedError struct {
	dir, socket string
	err         error
}

func (e *lockedError) Error() string {
	return "another buffdbd process is using the data directory " + e.dir
}

func (e *lockedError) Unwrap() error { return e.err }

// ExitCode is exitError: nothing was found missing, the store was just unavailable to us.
func (e *lockedError) ExitCode() int { return exitError }

// Hint names the likeliest cause: a daemon (often the systemd service, running as its own user)
// holds the store but this user cannot connect to its socket.
func (e *lockedError) Hint() string {
	sock := "its socket"
	if e.socket != "" {
		sock = "its socket (" + e.socket + " did not answer)"
	}
	return "if a daemon serves it, possibly under a different user, connect through " + sock +
		": check you may use the socket (e.g. the service's group), or pass --socket PATH or --addr host:port;" +
		" otherwise wait for the other command to finish"
}

// localLogger is the log of a CLI command's in-process server. Its errors go to the command's
// stderr: an internal error reaches the command as a generic status (the server keeps internals
// from clients) and there is no daemon log to look in, so the detail is printed where the user
// sees it, before the command's own one-line error. log.level debug shows everything.
func localLogger(cfg Config, stderr io.Writer) *slog.Logger {
	level := slog.LevelError
	if cfg.Log.Level == "debug" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{} // a command's output, not a log file
			}
			return a
		}}))
}

// inProcessBufferBytes sizes the in-memory pipe between the CLI and its in-process server; like a
// socket buffer, larger only costs memory.
const inProcessBufferBytes = 1 << 20

func local(ctx context.Context, cfg Config, opts []grpc.DialOption, stderr io.Writer) (*clientConn, error) {
	log := localLogger(cfg, stderr)
	db, err := openStore(ctx, cfg, log)
	// Another short-lived CLI command (or a daemon starting up) may hold the store's lock. Wait
	// for it rather than fail a script that runs commands in parallel, and switch to the daemon
	// if one appears meanwhile.
	for deadline := time.Now().Add(lockWait); errors.Is(err, store.ErrLocked) && time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(lockRetry):
		}
		if sock := filepath.Join(cfg.DataDir, "buffdbd.sock"); daemonAnswers(sock) {
			return remote("unix://"+sock, opts)
		}
		db, err = openStore(ctx, cfg, log)
	}
	if errors.Is(err, store.ErrLocked) {
		return nil, &lockedError{dir: cfg.DataDir, socket: socketPath(cfg), err: err}
	}
	if err != nil {
		return nil, fmt.Errorf("open store in %s (no daemon is serving it): %w", cfg.DataDir, err)
	}
	svcs, err := buildServices(ctx, db, cfg, log, api.Options{})
	if err != nil {
		db.Close()
		return nil, err
	}
	lis := bufconn.Listen(inProcessBufferBytes)
	done := make(chan struct{})
	go func() { defer close(done); svcs.srv.Serve(lis) }()
	svcs.srv.SetServing()
	opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return lis.DialContext(ctx)
	}))
	cc, err := grpc.NewClient("passthrough:///buffdbd-in-process", opts...)
	closeAll := func() error {
		if cc != nil {
			cc.Close()
		}
		svcs.srv.Shutdown(context.Background())
		<-done
		return errors.Join(svcs.close(), db.Close())
	}
	if err != nil {
		closeAll()
		return nil, err
	}
	return &clientConn{ClientConn: cc, Local: true, closer: closeAll}, nil
}

// withClient returns a cobra RunE that dials (see dial), builds a client with newClient, and runs
// fn with it, closing the connection afterwards.
func withClient[C any](g *globalFlags, newClient func(grpc.ClientConnInterface) C, fn func(*cobra.Command, C, []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		cc, err := dial(cmd, g)
		if err != nil {
			return err
		}
		defer cc.Close()
		return fn(cmd, newClient(cc), args)
	}
}
