// Command buffdbd is the edge model-registry daemon and its command-line client: `buffdbd run`
// serves the store over gRPC; the other commands talk to a running daemon (over the data
// directory's unix socket, or --addr) or, when none runs, open the store directly.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		cancel() // graceful: run drains in-flight RPCs, CLI commands abort their call
		<-sigs
		fmt.Fprintln(os.Stderr, "buffdbd: second signal, exiting now")
		os.Exit(exitError)
	}()
	code := execute(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	cancel()
	os.Exit(code)
}

// execute runs the command line args with the given standard streams and returns the exit code.
// Tests call it in-process.
func execute(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	return reportError(stderr, err)
}

// globalFlags are flags every command accepts.
type globalFlags struct {
	dataDir  string
	addr     string
	config   string
	logLevel string
}

func (g *globalFlags) logger(cmd *cobra.Command) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
}

// newRootCmd builds the whole command tree. Each command group is added here explicitly.
func newRootCmd() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "buffdbd",
		Short: "Edge model-registry daemon with a BuffDB-compatible gRPC store",
		Long: `buffdbd stores key-value pairs, blobs and models in one data directory and serves them over
gRPC, wire-compatible with BuffDB clients. "buffdbd run" starts the daemon; the other commands use
a running daemon (its unix socket in the data directory, or --addr) or open the store directly.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.dataDir, "data-dir", "", "data directory (default $STATE_DIRECTORY, else $XDG_DATA_HOME/buffdbd, else ~/.local/share/buffdbd)")
	pf.StringVar(&g.addr, "addr", "", "gRPC address of a buffdbd daemon (host:port or unix:///path); default: the data directory's socket, else the store directly")
	pf.StringVar(&g.config, "config", "", "configuration file (read by run and config; default "+defaultConfigFile+" when present)")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })

	root.AddCommand(
		newRunCmd(g),
		newKVCmd(g),
		newBlobCmd(g),
		newQueryCmd(g),
		newIndexCmd(g),
		newModelCmd(g),
		newGCCmd(g),
		newBenchCmd(g),
		newFetchCmd(g),
		newConfigCommand(),
		newVersionCommand(),
	)
	return root
}
