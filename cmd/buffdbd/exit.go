package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buffdb/buffdbd/api"
	"github.com/buffdb/buffdbd/huggingface"
	"github.com/buffdb/buffdbd/registry"
	"github.com/buffdb/buffdbd/store"
)

// Exit codes, documented in the README.
const (
	exitOK       = 0
	exitFalse    = 1 // eq/not-eq style checks answered false
	exitUsage    = 2 // bad command line
	exitNotFound = 3 // a key, blob id, index or transaction does not exist
	exitError    = 4 // anything else
	// exitConfig (78, EX_CONFIG, defined in config.go): invalid configuration file, value or key
)

// errFalse makes a check command exit with exitFalse without printing anything more.
var errFalse = errors.New("false")

// usageError marks a bad command line.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// usagef returns a usageError with a formatted message.
func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// Argument validators that report usage errors (cobra's own return plain errors).
func noArgs(cmd *cobra.Command, args []string) error { return wrapUsage(cobra.NoArgs(cmd, args)) }
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error { return wrapUsage(cobra.ExactArgs(n)(cmd, args)) }
}
func rangeArgs(lo, hi int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		return wrapUsage(cobra.RangeArgs(lo, hi)(cmd, args))
	}
}
func minArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error { return wrapUsage(cobra.MinimumNArgs(n)(cmd, args)) }
}

func wrapUsage(err error) error {
	if err == nil {
		return nil
	}
	return usageError{err}
}

// reportError prints err as one sentence (plus a hint where one helps) on w and returns the exit code.
func reportError(w io.Writer, err error) int {
	if err == nil {
		return exitOK
	}
	if errors.Is(err, errFalse) {
		return exitFalse
	}
	if errors.Is(err, ErrConfig) {
		// One line naming the key; systemd's RestartPreventExitStatus=78 stops a restart loop.
		fmt.Fprintf(w, "buffdbd: configuration: %s\n", oneLine(err.Error()))
		return exitConfig
	}
	var ue usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") {
		fmt.Fprintf(w, "buffdbd: %s\nRun 'buffdbd --help' for usage.\n", oneLine(err.Error()))
		return exitUsage
	}
	// Commands with their own documented exit codes (fetch) carry them, and a hint, on the error.
	var coded interface {
		ExitCode() int
		Hint() string
	}
	if errors.As(err, &coded) {
		fmt.Fprintf(w, "buffdbd: %s\n", strings.TrimSpace(err.Error()))
		if h := coded.Hint(); h != "" {
			fmt.Fprintf(w, "hint: %s\n", h)
		}
		return coded.ExitCode()
	}
	code := api.Code(err)
	msg := err.Error()
	s, fromServer := status.FromError(err) // else the command's own error (a missing file, ...)
	if fromServer {
		code, msg = s.Code(), s.Message()
	}
	hint := ""
	switch {
	case strings.Contains(msg, sqliteNotADB) || strings.Contains(msg, sqliteMalformed):
		// Restart=on-failure retries this every few seconds forever; the log must say what to do.
		hint = "the store's database file (buffdb.sqlite in the data directory) is damaged: restore it from a backup, or salvage what is readable with sqlite3's .recover into a new file; buffdbd does not start on it and never replaces it"
	case errors.Is(err, store.ErrLocked):
		// The CLI's own lockedError (conn.go) carries a fuller hint; this covers any other path.
		hint = "another buffdbd process has this data directory open; connect to its daemon (--socket or --addr) or wait for it to finish"
	case code == codes.Unavailable:
		hint = unavailableHint(msg)
	case code == codes.Canceled || errors.Is(err, context.Canceled):
		msg = "interrupted"
	case code == codes.ResourceExhausted:
		hint = resourceExhaustedHint(err, msg)
	case code == codes.Internal && fromServer:
		// The server withheld the details: a daemon logs them; a command without a daemon printed
		// them above (localLogger). The command's own errors are complete as they are.
		hint = "the details are in the daemon's log or, if no daemon was running, printed above"
	}
	// A status wrapped by the client ("pull w.bin: rpc error: code = DataLoss desc = ...") keeps
	// its context but not grpc-go's formatting.
	msg = grpcPrefix.ReplaceAllString(msg, "")
	msg = oneLine(msg)
	fmt.Fprintf(w, "buffdbd: %s\n", msg)
	if hint != "" {
		fmt.Fprintf(w, "hint: %s\n", hint)
	}
	if code == codes.NotFound {
		return exitNotFound
	}
	return exitError
}

// oneLine joins the lines of an error message: SQLite, YAML and remote errors may span several,
// and an error is one sentence on stderr.
func oneLine(msg string) string {
	lines := strings.FieldsFunc(msg, func(r rune) bool { return r == '\n' || r == '\r' })
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	var b strings.Builder
	for _, l := range slices.DeleteFunc(lines, func(l string) bool { return l == "" }) {
		switch s := b.String(); {
		case s == "":
		case strings.HasSuffix(s, ":"), strings.HasSuffix(s, "?"):
			b.WriteString(" ")
		default:
			b.WriteString("; ")
		}
		b.WriteString(l)
	}
	return b.String()
}

// SQLite's messages for a database file that is not one (SQLITE_NOTADB, 26) or whose pages are
// damaged (SQLITE_CORRUPT, 11). The store passes them through unclassified, and only cmd formats
// them, so the hint keys on SQLite's own fixed wording.
const (
	sqliteNotADB    = "file is not a database (26)"
	sqliteMalformed = "database disk image is malformed (11)"
)

// grpcPrefix is how grpc-go's status errors format their code.
var grpcPrefix = regexp.MustCompile(`rpc error: code = [A-Za-z]+ desc = `)

// resourceExhaustedHint names the fix for the resource that ran out. RESOURCE_EXHAUSTED covers
// several causes (api's error table maps budget, disk-full and size limits to it, and grpc-go uses
// it for oversized messages); from a daemon only the status message tells them apart, so both the
// wrapped error and the message text are checked.
func resourceExhaustedHint(err error, msg string) string {
	has := func(target error) bool { return errors.Is(err, target) || strings.Contains(msg, target.Error()) }
	switch {
	case has(registry.ErrBudget):
		return "the registry's disk budget is full: raise registry.max_bytes or remove/unpin versions (buffdbd model rm, unpin, untag)"
	case has(registry.ErrDiskFull) || has(store.ErrNoSpace) || errors.Is(err, syscall.ENOSPC) || strings.Contains(msg, syscall.ENOSPC.Error()):
		return "the filesystem holding the data directory is full: free space there (`buffdbd gc --abandon-uploads` drops the chunks interrupted pushes hold) or move data_dir"
	case strings.Contains(msg, "larger than max"):
		// grpc-go's "received/trying to send message larger than max (N vs. M)".
		return "the message is larger than the server accepts; see grpc.max_message_bytes"
	case has(huggingface.ErrRateLimited):
		return "the Hugging Face Hub is rate limiting this client: retry later, or set a token (huggingface.token_file)"
	}
	return ""
}

// unavailableHint names the likeliest reason a daemon could not be reached. grpc-go reports TLS
// trouble as UNAVAILABLE with the transport's own words, which users rarely connect with a flag.
func unavailableHint(msg string) string {
	switch {
	case strings.Contains(msg, "x509:") || strings.Contains(msg, "certificate signed by unknown authority"):
		return "the daemon's certificate was not trusted: pass --tls-ca with the CA that signed it (and --tls-server-name if it names another host)"
	case strings.Contains(msg, "certificate required") || strings.Contains(msg, "bad certificate") ||
		strings.Contains(msg, "unknown certificate authority"):
		return "the daemon admits only clients with a certificate: pass --tls-client-cert and --tls-client-key (signed by the daemon's grpc.tls_client_ca_file)"
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return "the daemon does not speak TLS on that address: drop --tls/--tls-ca"
	case strings.Contains(msg, "server preface"):
		return "is the daemon running and reachable (check --addr)? If it serves TLS, pass --tls or --tls-ca FILE"
	}
	return "is the daemon running and reachable (check --addr)?"
}
