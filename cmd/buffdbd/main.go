// Command buffdbd is the edge model-registry daemon and its command-line client: `buffdbd run`
// serves the store over gRPC; the other commands talk to a running daemon (over the data
// directory's unix socket, or --addr) or, when none runs, open the store directly.
package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/buffdb/buffdbd/internal/gotune"
)

func main() {
	gotune.RaiseProcs() // see there: the Ps that fsync-heavy writes need
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
	if f, ok := stderr.(*os.File); ok && err != nil && detectLogTarget(f).Journal {
		// The line saying why the service stopped must not be filed at journald's default info
		// priority, below what `journalctl -p warning` shows.
		return reportError(&journalPrefix{w: stderr}, err)
	}
	return reportError(stderr, err)
}

// globalFlags are the flags every command accepts that are not configuration keys. The
// configuration flags (--config, --data-dir, --socket, --durability, --log-level, …) are persistent
// flags of the root command too, read through LoadConfig, so `run` and every CLI command see one
// configuration.
type globalFlags struct {
	addr string
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
	pf.StringVar(&g.addr, "addr", "", "gRPC address of a buffdbd daemon (host:port or unix:///path); default: the configured socket, else the store directly")
	// Every configuration key is a flag of every command: the CLI opens the store, or finds the
	// daemon's socket, with exactly the configuration `run` would use.
	addConfigFlags(pf)
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
	rejectUnknownSubcommands(root)
	return root
}

// rejectUnknownSubcommands makes every command group below root (kv, blob, model, …) fail with a
// usage error on an unknown subcommand. Cobra only does this for the root: a group printed its help
// and exited 0, so a script's `v=$(buffdbd kv gte k)` got the help text as the value.
func rejectUnknownSubcommands(root *cobra.Command) {
	for _, c := range root.Commands() {
		rejectUnknownSubcommands(c)
		if !c.HasSubCommands() || c.Runnable() {
			continue
		}
		c.RunE = func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				msg += "; did you mean " + strings.Join(s, " or ") + "?"
			}
			return usagef("%s", msg)
		}
	}
}

// journalPrefix marks each line written through it with the syslog priority err ("<3>"), which
// journald reads from the start of a line on a stream it collects.
type journalPrefix struct{ w io.Writer }

func (j *journalPrefix) Write(p []byte) (int, error) {
	var b []byte
	for _, line := range bytes.SplitAfter(p, []byte("\n")) {
		if len(line) > 0 {
			b = append(append(b, "<3>"...), line...)
		}
	}
	if _, err := j.w.Write(b); err != nil {
		return 0, err
	}
	return len(p), nil
}
