package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/buffdb/buffdbd/api"
	registrypb "github.com/buffdb/buffdbd/api/proto/registrypb"
	"github.com/buffdb/buffdbd/registry"
	"github.com/buffdb/buffdbd/store"
)

// The registry's tables and its gRPC service, for the daemon and the CLI's in-process server.
var (
	_ = func() struct{} { storeMigrations = append(storeMigrations, registry.Migrations...); return struct{}{} }()
	_ = addServiceHook(registerRegistry)
)

var (
	registriesMu sync.Mutex
	registries   = map[*store.DB]*registry.Service{}
)

// registryFor returns the one registry.Service over db, creating it (with cfg's budget, session
// expiry, GC and scrub intervals, and metrics hooks from ctx) on first use. Other service hooks
// (the Hugging Face fetcher) call it to share the same Service; the registry hook closes it.
func registryFor(ctx context.Context, db *store.DB, cfg Config, log *slog.Logger) (*registry.Service, error) {
	registriesMu.Lock()
	defer registriesMu.Unlock()
	if svc := registries[db]; svc != nil {
		return svc, nil
	}
	var svc *registry.Service
	metrics := observersFrom(ctx).Registry(func(ctx context.Context) (registry.Stats, error) { return svc.Stats(ctx) },
		int64(cfg.Registry.MaxBytes))
	svc, err := registry.New(db, registry.Options{
		MaxBytes:      int64(cfg.Registry.MaxBytes),
		SessionTTL:    cfg.Registry.UploadSessionExpiry,
		GCInterval:    cfg.Registry.GCInterval,
		ScrubInterval: cfg.Registry.ScrubInterval,
		Metrics:       metrics,
		Logger:        log.With("component", "registry"),
	})
	if err != nil {
		return nil, err
	}
	registries[db] = svc
	return svc, nil
}

func registerRegistry(ctx context.Context, db *store.DB, srv *api.Server, cfg Config, log *slog.Logger) (io.Closer, error) {
	svc, err := registryFor(ctx, db, cfg, log)
	if err != nil {
		return nil, err
	}
	srv.Register(&registrypb.Registry_ServiceDesc, withFetch(ctx, api.NewRegistry(svc, log), svc, cfg, log))
	// The daemon cancels ctx at the first signal, before the graceful stop: end Watch streams then,
	// or the stop waits its whole timeout for watchers that never hang up.
	closed := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			svc.Drain()
		case <-closed:
		}
	}()
	return closerFunc(func() error {
		close(closed)
		registriesMu.Lock()
		delete(registries, db)
		registriesMu.Unlock()
		return svc.Close()
	}), nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// withRegistry runs fn with a registry client over a daemon or the in-process server.
func withRegistry(g *globalFlags, fn func(cmd *cobra.Command, c *registry.Client, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		cc, err := dial(cmd, g)
		if err != nil {
			return err
		}
		defer cc.Close()
		return fn(cmd, registry.NewClient(cc), args)
	}
}

func newModelCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "model", Short: "Push, pull and manage versioned models"}
	cmd.AddCommand(newModelPushCmd(g), newModelPullCmd(g), newModelLsCmd(g), newModelShowCmd(g), newModelRmCmd(g),
		newModelTagCmd(g), newModelUntagCmd(g), newModelPinCmd(g, true), newModelPinCmd(g, false), newModelVerifyCmd(g),
		newModelWatchCmd(g), newModelSwitchCmd())
	return cmd
}

func newModelPushCmd(g *globalFlags) *cobra.Command {
	var info registry.ModelInfo
	var params, aliases []string
	var inShape, outShape string
	var retries int
	cmd := &cobra.Command{
		Use:         "push <DIR|FILE> --name N --version V",
		Annotations: createsStoreAnnotation,
		Short:       "Push a model version (a file, or every file under a directory)",
		Long: `Push uploads a model version. Only chunks the registry does not already have are sent, and an
interrupted push resumes where it stopped (run the same command again). The version becomes
visible, with the "latest" alias and any --alias, only once every byte is stored and verified.`,
		Args: exactArgs(1),
		// Flags are checked before connecting, so a typo does not open (or create) a store.
		PreRunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if info.Parameters, err = parseParams(params); err != nil {
				return err
			}
			if info.InputShape, err = parseShape("--input-shape", inShape); err != nil {
				return err
			}
			if info.OutputShape, err = parseShape("--output-shape", outShape); err != nil {
				return err
			}
			if err := registry.ValidateName(info.Name); err != nil {
				return usagef("--name: %v", err)
			}
			if err := registry.ValidateVersion(info.Version); err != nil {
				return usagef("--version: %v", err)
			}
			// A mistyped source must not leave a new store behind in a mistyped --data-dir.
			if _, err := os.Stat(args[0]); err != nil {
				return err
			}
			return nil
		},
		RunE: withRegistry(g, func(cmd *cobra.Command, c *registry.Client, args []string) error {
			p := newProgress(cmd.ErrOrStderr(), "push "+info.Name+":"+info.Version)
			res, err := c.Push(cmd.Context(), args[0], registry.PushOptions{Info: info, Aliases: aliases, Retries: retries, Progress: p.update})
			p.finish(err == nil)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pushed %s:%s: %d files, %s; sent %s, %s already stored\n",
				res.Info.Name, res.Info.Version, res.Files, ibytes(res.Bytes), ibytes(res.BytesSent), ibytes(res.BytesReused))
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&info.Name, "name", "", "model name, e.g. org/model (required)")
	f.StringVar(&info.Version, "version", "", "version, e.g. v1 or 1.2.0 (required)")
	f.StringVar(&info.Framework, "framework", "", "framework, e.g. onnx, pytorch, tensorflow")
	f.StringVar(&info.Description, "description", "", "free-text description")
	f.StringArrayVar(&params, "param", nil, "parameter key=value (repeatable)")
	f.StringArrayVar(&aliases, "alias", nil, "alias to point at this version once published, e.g. canary (repeatable)")
	f.StringVar(&inShape, "input-shape", "", "input shape, comma-separated, -1 for dynamic (e.g. -1,3,224,224)")
	f.StringVar(&outShape, "output-shape", "", "output shape, comma-separated")
	f.IntVar(&retries, "retries", 10, "how many lost connections in a row to resume after (an attempt that gets further starts the count again)")
	return cmd
}

func newModelPullCmd(g *globalFlags) *cobra.Command {
	var out, link, versions string
	var retries, keep int
	var noDelta bool
	cmd := &cobra.Command{
		Use:   "pull <REF> (-o <DIR> | --link <PATH>)",
		Short: "Pull a model version (name, name:version or name@alias) into a directory",
		Long: `Pull downloads a model version into DIR. Files already in DIR (e.g. the previous version) are
reused chunk by chunk, an interrupted pull resumes (run it again), and files appear in DIR only
after every file of the version has been verified against its sha256. Files in DIR that the version
does not contain are left alone.

With --link PATH, the version is pulled into a directory of its own (--versions DIR/<name>:<version>,
by default beside PATH in .<PATH's name>.versions, or -o DIR), reusing the chunks of the version PATH
points to, and then the symbolic link PATH is switched to it atomically: a serving process reading
through PATH sees the old version or the new one, never a mix. The previous version's directory is
kept ("model switch --link PATH --previous" switches back, without the registry); older ones this
command created are removed (--keep). A PATH that exists and is not a symbolic link is refused.`,
		Args: refArgs(1, 1),
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if out == "" && link == "" {
				return usagef("-o/--output or --link is required")
			}
			if link == "" && (cmd.Flags().Changed("keep") || versions != "") {
				return usagef("--keep and --versions go with --link")
			}
			if out != "" && versions != "" {
				return usagef("-o/--output and --versions exclude each other: -o names the version's directory itself")
			}
			if keep == 1 || keep < 0 {
				return usagef("--keep %d: keep at least 2 version directories (the link's target and the previous one), or 0 to keep every one", keep)
			}
			return nil
		},
		RunE: withRegistry(g, func(cmd *cobra.Command, c *registry.Client, args []string) error {
			p := newProgress(cmd.ErrOrStderr(), "pull "+args[0])
			opts := registry.PullOptions{Retries: retries, NoDelta: noDelta, Progress: p.update}
			if link == "" {
				res, err := c.Pull(cmd.Context(), args[0], out, opts)
				p.finish(err == nil)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "pulled %s:%s into %s: %d files, %s; received %s, reused %s locally\n",
					res.Info.Name, res.Info.Version, out, res.Files, ibytes(res.Bytes), ibytes(res.BytesReceived), ibytes(res.BytesLocal))
				return nil
			}
			k := keep
			if k == 0 {
				k = -1 // --keep 0: every version
			}
			res, err := c.PullLink(cmd.Context(), args[0], link, registry.LinkOptions{PullOptions: opts, Dir: out, VersionsDir: versions, Keep: k})
			p.finish(err == nil)
			if errors.Is(err, registry.ErrNotLink) {
				return &notLinkError{link: link, err: err}
			}
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "pulled %s:%s into %s: %d files, %s; received %s, reused %s locally\n",
				res.Info.Name, res.Info.Version, res.Dir, res.Files, ibytes(res.Bytes), ibytes(res.BytesReceived), ibytes(res.BytesLocal))
			prev := ""
			if res.Previous != "" {
				prev = " (was " + res.Previous + ")"
			}
			fmt.Fprintf(w, "%s -> %s%s\n", link, res.Target, prev)
			for _, d := range res.Removed {
				fmt.Fprintf(w, "removed %s\n", d)
			}
			return nil
		}),
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "output directory (required without --link; with it, the version's directory)")
	cmd.Flags().StringVar(&link, "link", "", "symbolic link to switch atomically to the pulled version")
	cmd.Flags().StringVar(&versions, "versions", "", "with --link: where version directories are created (default: .<link name>.versions beside the link)")
	cmd.Flags().IntVar(&keep, "keep", 2, "with --link: version directories to keep, counting the link's target (0: all)")
	cmd.Flags().IntVar(&retries, "retries", 10, "how many lost connections in a row to resume after (an attempt that gets further starts the count again)")
	cmd.Flags().BoolVar(&noDelta, "no-delta", false, "do not reuse chunks of files already in the output directory (or the link's target)")
	return cmd
}

// notLinkError reports a --link path that is a directory or file: its own sentence and a hint to
// turn it into a link without a download (see reportError).
type notLinkError struct {
	link string
	err  error
}

func (e *notLinkError) Error() string {
	return e.err.Error() + " (--link switches a symbolic link, and replaces nothing else)"
}

func (e *notLinkError) Unwrap() error { return e.err }

// ExitCode is exitError: the command line was well formed; the file system is not as it expects.
func (e *notLinkError) ExitCode() int { return exitError }

// Hint shows how to make the path a link while keeping its files as the delta source.
func (e *notLinkError) Hint() string {
	l := strings.TrimSuffix(e.link, "/")
	if fi, err := os.Lstat(l); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Sprintf("--link names a link to a version's directory; give a new name (e.g. %s.d) and point the server at the file inside it", l)
	}
	if b := filepath.Base(l); b == "." || b == ".." || b == string(filepath.Separator) {
		return "give the path of the link itself, e.g. ./model, not a directory that holds it"
	}
	return fmt.Sprintf("to keep serving it and reuse its files: mv %[1]s %[1]s.orig && ln -s %[2]s.orig %[1]s, then pull again (buffdbd never removes %[1]s.orig)",
		l, filepath.Base(l))
}

func newModelSwitchCmd() *cobra.Command {
	var link, versions string
	var previous, list, asJSON, verify, force bool
	cmd := &cobra.Command{
		Use:   "switch --link <PATH> (<NAME:VERSION> | --previous | --list)",
		Short: "Switch a --link PATH to a version kept beside it (a rollback), without the registry",
		Long: `Switch points the symbolic link PATH, which "model pull --link" manages, at a version directory
it kept (--keep), atomically and under the same lock as a pull's switch. It reads nothing but the
versions directory: no daemon, store or network is needed, so a device can roll back while its link
is down. --previous switches to what PATH pointed to before its last switch; run twice, it switches
forward again (like "cd -"). --list shows the versions PATH can be switched to.

A directory is switched to only if a pull completed it: the pull records the version's files with
their sizes and sha256 once it has verified them, and switch checks that every file is there with
its size (--verify: re-hashes them). A directory whose pull did not complete, with a missing or
truncated file, or that a pull is writing into, is refused and PATH is left as it is. A directory
without a record (the one PATH pointed to before its first --link pull) needs --force.`,
		Args: rangeArgs(0, 1),
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if link == "" {
				return usagef("--link is required")
			}
			n := len(args)
			for _, b := range []bool{previous, list} {
				if b {
					n++
				}
			}
			if n != 1 {
				return usagef("give exactly one of NAME:VERSION, --previous or --list")
			}
			if asJSON && !list {
				return usagef("--json goes with --list")
			}
			if list && (verify || force) {
				return usagef("--verify and --force go with a switch, not --list")
			}
			if len(args) == 1 {
				r, err := registry.ParseRef(args[0])
				if err != nil {
					return usagef("%v", err)
				}
				if r.Version == "" {
					return usagef("%q: switch takes NAME:VERSION; an alias (or a bare name, its latest) needs the registry: pull it with --link", args[0])
				}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			w := cmd.OutOrStdout()
			if list {
				vs, err := registry.LinkVersions(link, versions)
				if err != nil {
					return switchErr(link, err)
				}
				if asJSON {
					return printJSON(w, linkVersionsJSON(vs))
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "VERSION\tFILES\tSIZE\tLINK\tDIR\tSWITCHABLE")
				for _, v := range vs {
					ver, files, size := "-", "-", "-"
					if v.Name != "" {
						ver, files, size = v.Name+":"+v.Version, strconv.Itoa(v.Files), ibytes(v.Bytes)
					}
					role := "-"
					if v.Current {
						role = "current"
					} else if v.Previous {
						role = "previous"
					}
					ok := "yes"
					if v.Problem != "" {
						ok = "no: " + v.Problem
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", ver, files, size, role, v.Dir, ok)
				}
				return tw.Flush()
			}
			opts := registry.SwitchOptions{VersionsDir: versions, Verify: verify, Force: force}
			if len(args) == 1 {
				opts.Ref = args[0]
			}
			res, err := registry.SwitchLink(cmd.Context(), link, opts)
			if err != nil {
				return switchErr(link, err)
			}
			what := res.Dir
			if res.Info.Name != "" {
				what = fmt.Sprintf("%s:%s (%d files, %s)", res.Info.Name, res.Info.Version, res.Files, ibytes(res.Bytes))
			}
			if res.Unchanged {
				fmt.Fprintf(w, "%s already points to %s: %s\n", link, res.Target, what)
				return nil
			}
			prev := ""
			if res.Previous != "" {
				prev = " (was " + res.Previous + ")"
			}
			fmt.Fprintf(w, "switched to %s\n%s -> %s%s\n", what, link, res.Target, prev)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&link, "link", "", "the symbolic link to switch (as given to model pull --link)")
	f.StringVar(&versions, "versions", "", "the versions directory the pulls used (default: .<link name>.versions beside the link, else found from the link's target)")
	f.BoolVar(&previous, "previous", false, "switch to the directory the link pointed to before its last switch")
	f.BoolVar(&list, "list", false, "list the versions the link can be switched to, and whether each is whole")
	f.BoolVar(&asJSON, "json", false, "with --list: print JSON")
	f.BoolVar(&verify, "verify", false, "re-hash the version's files against their sha256 before switching (slower; sizes are always checked)")
	f.BoolVar(&force, "force", false, "switch to a directory without a record of a completed pull (one buffdbd did not pull)")
	return cmd
}

// linkVersionJSON is a kept version as switch --list --json prints it; name and version are ""
// for a directory without a record.
type linkVersionJSON struct {
	Name     string `json:"name"`
	Version  string `json:"version"`
	Dir      string `json:"dir"`
	Current  bool   `json:"current"`
	Previous bool   `json:"previous"`
	Files    int    `json:"files"`
	Bytes    int64  `json:"bytes"`
	Recorded bool   `json:"recorded"`
	Problem  string `json:"problem"` // why switch would refuse it; "" if it would not
}

func linkVersionsJSON(vs []registry.LinkVersion) []linkVersionJSON {
	out := []linkVersionJSON{}
	for _, v := range vs {
		out = append(out, linkVersionJSON{Name: v.Name, Version: v.Version, Dir: v.Dir, Current: v.Current, Previous: v.Previous,
			Files: v.Files, Bytes: v.Bytes, Recorded: v.Recorded, Problem: v.Problem})
	}
	return out
}

// switchError reports a refused switch with a hint: what can be switched to, and the manual
// switch as a last resort.
type switchError struct {
	link string
	err  error
}

func switchErr(link string, err error) error {
	if errors.Is(err, context.Canceled) {
		return err // "interrupted", as any command
	}
	if errors.Is(err, registry.ErrNotLink) {
		return &notLinkError{link: link, err: err}
	}
	return &switchError{link: link, err: err}
}

func (e *switchError) Error() string { return e.err.Error() }
func (e *switchError) Unwrap() error { return e.err }

// ExitCode is exitNotFound for a version or previous target there is no directory of, else
// exitError.
func (e *switchError) ExitCode() int {
	if errors.Is(e.err, registry.ErrNotFound) {
		return exitNotFound
	}
	return exitError
}

// Hint points at --list, and at the manual switch (a rename, as the command does) as a last resort.
func (e *switchError) Hint() string {
	if errors.Is(e.err, registry.ErrBusy) {
		return "a pull is still writing into it; switch once it has finished (or stop it)"
	}
	l := strings.TrimSuffix(e.link, "/")
	return fmt.Sprintf("see what can be switched to: buffdbd model switch --link %[1]s --list; to switch by hand, in the directory holding %[2]s: ln -s DIR %[2]s.new && mv -T %[2]s.new %[2]s",
		l, filepath.Base(l))
}

func newModelLsCmd(g *globalFlags) *cobra.Command {
	var req registrypb.ListModelsRequest
	var params []string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls [NAME]",
		Short: "List models (or one model's versions) with their aliases",
		Args:  rangeArgs(0, 1),
		RunE: withRegistry(g, func(cmd *cobra.Command, c *registry.Client, args []string) error {
			var err error
			if req.Parameters, err = parseParams(params); err != nil {
				return err
			}
			ctx := cmd.Context()
			w := cmd.OutOrStdout()
			if len(args) == 1 {
				resp, err := c.RPC().ListVersions(ctx, &registrypb.ListVersionsRequest{Name: args[0]})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(w, versionsJSON(resp.Versions))
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "VERSION\tFRAMEWORK\tSIZE\tCREATED\tALIASES\tPINNED\tLAST PULLED")
				for _, v := range resp.Versions {
					printVersionRow(tw, "", v)
				}
				return tw.Flush()
			}
			resp, err := c.RPC().ListModels(ctx, &req)
			if err != nil {
				return err
			}
			if asJSON {
				type modelJSON struct {
					Name     string        `json:"name"`
					Versions []versionJSON `json:"versions"`
				}
				out := []modelJSON{}
				for _, m := range resp.Models {
					out = append(out, modelJSON{m.Name, versionsJSON(m.Versions)})
				}
				return printJSON(w, out)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "MODEL\tVERSION\tFRAMEWORK\tSIZE\tCREATED\tALIASES\tPINNED\tLAST PULLED")
			for _, m := range resp.Models {
				for _, v := range m.Versions {
					printVersionRow(tw, m.Name+"\t", v)
				}
			}
			return tw.Flush()
		}),
	}
	f := cmd.Flags()
	f.StringVar(&req.Prefix, "prefix", "", "only models whose name starts with this")
	f.StringVar(&req.Framework, "framework", "", "only versions with this framework")
	f.StringArrayVar(&params, "param", nil, "only versions with parameter key=value (repeatable)")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// versionJSON is a version as ls --json prints it: every field present, times in RFC 3339,
// last_pulled null when never.
type versionJSON struct {
	Version    string     `json:"version"`
	Framework  string     `json:"framework"`
	Size       uint64     `json:"size"`
	CreatedAt  time.Time  `json:"created_at"`
	Aliases    []string   `json:"aliases"`
	Pinned     bool       `json:"pinned"`
	LastPulled *time.Time `json:"last_pulled"`
}

func versionsJSON(vs []*registrypb.VersionSummary) []versionJSON {
	out := []versionJSON{}
	for _, v := range vs {
		out = append(out, versionJSON{Version: v.Version, Framework: v.Framework, Size: v.Size, CreatedAt: v.CreatedAt.AsTime(),
			Aliases: append([]string{}, v.Aliases...), Pinned: v.Pinned, LastPulled: timeOrNil(v.LastPulled)})
	}
	return out
}

// timeOrNil is t as a time, nil when absent (never happened).
func timeOrNil(t *timestamppb.Timestamp) *time.Time {
	if t == nil {
		return nil
	}
	v := t.AsTime()
	return &v
}

func printVersionRow(w io.Writer, prefix string, v *registrypb.VersionSummary) {
	pulled := "never"
	if v.LastPulled != nil {
		pulled = humanize.Time(v.LastPulled.AsTime())
	}
	pinned := ""
	if v.Pinned {
		pinned = "pinned"
	}
	fmt.Fprintf(w, "%s%s\t%s\t%s\t%s\t%s\t%s\t%s\n", prefix, v.Version, dash(v.Framework), ibytes(int64(v.Size)),
		v.CreatedAt.AsTime().Format(time.DateTime), dash(strings.Join(v.Aliases, ",")), pinned, pulled)
}

func newModelShowCmd(g *globalFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show <REF>",
		Short: "Show a version: metadata, files, aliases, pin, last pull",
		Args:  refArgs(1, 1),
		RunE: withRegistry(g, func(cmd *cobra.Command, c *registry.Client, args []string) error {
			resp, err := c.RPC().Show(cmd.Context(), &registrypb.ShowRequest{Ref: args[0]})
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			info := registry.InfoFromProto(resp.Info)
			if asJSON {
				files, _ := registry.FilesFromProto(resp.Files)
				return printJSON(w, map[string]any{"info": info, "files": files, "size": resp.Size,
					"aliases": append([]string{}, resp.Aliases...), "pinned": resp.Pinned, "last_pulled": timeOrNil(resp.LastPulled)})
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "name:\t%s\nversion:\t%s\nframework:\t%s\ndescription:\t%s\n", info.Name, info.Version, dash(info.Framework), dash(info.Description))
			fmt.Fprintf(tw, "created:\t%s\nsize:\t%s\naliases:\t%s\npinned:\t%v\n", info.CreatedAt.Format(time.RFC3339), ibytes(int64(resp.Size)),
				dash(strings.Join(resp.Aliases, ", ")), resp.Pinned)
			pulled := "never"
			if resp.LastPulled != nil {
				pulled = resp.LastPulled.AsTime().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "last pulled:\t%s\n", pulled)
			if len(info.InputShape)+len(info.OutputShape) > 0 {
				fmt.Fprintf(tw, "input shape:\t%v\noutput shape:\t%v\n", info.InputShape, info.OutputShape)
			}
			for k, v := range info.Parameters {
				fmt.Fprintf(tw, "param %s:\t%s\n", k, v)
			}
			tw.Flush()
			fmt.Fprintln(w)
			tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "FILE\tSIZE\tCHUNKS\tSHA256")
			for _, f := range resp.Files {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%x\n", f.Path, ibytes(int64(f.Size)), len(f.Chunks), f.Sha256)
			}
			return tw.Flush()
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newModelRmCmd(g *globalFlags) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm <REF>",
		Short: "Delete a version (refused while an alias points at it or it is pinned, unless --force)",
		Args:  refArgs(1, 1),
		RunE: withRegistry(g, func(cmd *cobra.Command, c *registry.Client, args []string) error {
			resp, err := c.RPC().DeleteVersion(cmd.Context(), &registrypb.DeleteVersionRequest{Ref: args[0], Force: force})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %s:%s\n", resp.Name, resp.Version)
			return nil
		}),
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete even if aliased or pinned (its aliases are removed)")
	return cmd
}

// refArgs checks the argument count and that the first argument, if any, is a well-formed model
// reference: a malformed one is a usage error (exit 2) for every command, as for tag.
func refArgs(lo, hi int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := rangeArgs(lo, hi)(cmd, args); err != nil {
			return err
		}
		if len(args) > 0 {
			if _, err := registry.ParseRef(args[0]); err != nil {
				return usageError{err}
			}
		}
		return nil
	}
}

func newModelTagCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "tag <NAME:VERSION> <ALIAS>",
		Short: "Point ALIAS (e.g. production) at a version, atomically",
		Args:  refArgs(2, 2),
		RunE: withRegistry(g, func(cmd *cobra.Command, c *registry.Client, args []string) error {
			ref, err := registry.ParseRef(args[0])
			if err != nil {
				return usageError{err}
			}
			if ref.Version == "" {
				r, err := c.RPC().Show(cmd.Context(), &registrypb.ShowRequest{Ref: args[0]})
				if err != nil {
					return err
				}
				ref.Version = r.Info.GetVersion()
			}
			resp, err := c.RPC().SetAlias(cmd.Context(), &registrypb.SetAliasRequest{Name: ref.Name, Alias: args[1], Version: ref.Version})
			if err != nil {
				return err
			}
			from := ""
			if resp.Previous != "" && resp.Previous != ref.Version {
				from = " (was " + resp.Previous + ")"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s@%s -> %s%s\n", ref.Name, args[1], ref.Version, from)
			return nil
		}),
	}
}

func newModelUntagCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "untag <NAME@ALIAS>",
		Short: "Remove an alias",
		Args:  exactArgs(1),
		RunE: withRegistry(g, func(cmd *cobra.Command, c *registry.Client, args []string) error {
			ref, err := registry.ParseRef(args[0])
			if err != nil || ref.Alias == "" || !strings.Contains(args[0], "@") {
				return usagef("untag takes NAME@ALIAS, got %q", args[0])
			}
			resp, err := c.RPC().RemoveAlias(cmd.Context(), &registrypb.RemoveAliasRequest{Name: ref.Name, Alias: ref.Alias})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s@%s (was %s)\n", ref.Name, ref.Alias, resp.Previous)
			return nil
		}),
	}
}

func newModelPinCmd(g *globalFlags, pin bool) *cobra.Command {
	use, short, verb := "pin <REF>", "Pin a version: never evicted to fit the disk budget", "pinned"
	if !pin {
		use, short, verb = "unpin <REF>", "Unpin a version", "unpinned"
	}
	return &cobra.Command{
		Use: use, Short: short, Args: refArgs(1, 1),
		RunE: withRegistry(g, func(cmd *cobra.Command, c *registry.Client, args []string) error {
			resp, err := c.RPC().SetPinned(cmd.Context(), &registrypb.SetPinnedRequest{Ref: args[0], Pinned: pin})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s:%s\n", verb, resp.Name, resp.Version)
			return nil
		}),
	}
}

func newModelVerifyCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "verify [REF]",
		Short: "Re-hash stored chunks (of one version, or all) and report corrupt ones",
		Args:  refArgs(0, 1),
		RunE: withRegistry(g, func(cmd *cobra.Command, c *registry.Client, args []string) error {
			req := &registrypb.VerifyRequest{}
			if len(args) == 1 {
				req.Ref = args[0]
			}
			resp, err := c.RPC().Verify(cmd.Context(), req)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			for _, cc := range resp.Corrupt {
				fmt.Fprintf(w, "CORRUPT chunk %x (blob %d) used by %s: %s\n", cc.Sha256, cc.BlobId, dash(strings.Join(cc.Versions, ", ")), cc.Error)
			}
			fmt.Fprintf(w, "verified %d chunks, %s: %d corrupt\n", resp.Chunks, ibytes(int64(resp.Bytes)), len(resp.Corrupt))
			if len(resp.Corrupt) > 0 {
				return fmt.Errorf("%d corrupt chunks; the versions using them cannot be pulled", len(resp.Corrupt))
			}
			return nil
		}),
	}
}

func newModelWatchCmd(g *globalFlags) *cobra.Command {
	var reconnect bool
	cmd := &cobra.Command{
		Use:   "watch [NAME]",
		Short: "Print version and alias changes as they happen (all models, or one)",
		Long: "Print version and alias changes as they happen, one line each: time, kind, model, version=, alias=, previous=.\n" +
			"When the connection is lost (the daemon restarts, the link drops) the watch reconnects and prints a\n" +
			"'resync' line: changes made meanwhile were not reported, so re-read the state you depend on.",
		Args: rangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cc, err := dial(cmd, g)
			if err != nil {
				return err
			}
			defer cc.Close()
			if cc.Local {
				// In-process, nothing else can change the registry while this holds the data
				// directory (and a daemon could not start): there is nothing to watch.
				return errors.New("model watch needs a running daemon (start one with buffdbd run, or give --addr): " +
					"without one, this command would hold the data directory and see no change")
			}
			opts := registry.WatchOptions{Retries: -1}
			if len(args) == 1 {
				opts.Name = args[0]
			}
			if !reconnect {
				opts.Retries = 0
			}
			w := cmd.OutOrStdout()
			line := func(kind, name, version, alias, previous string) {
				fmt.Fprintf(w, "%s %s %s version=%s alias=%s previous=%s\n", time.Now().UTC().Format(time.RFC3339),
					kind, dash(name), dash(version), dash(alias), dash(previous))
			}
			opts.Resync = func() error {
				line("resync", opts.Name, "", "", "")
				return nil
			}
			return registry.NewClient(cc).Watch(cmd.Context(), opts, func(ev *registrypb.WatchEvent) error {
				line(strings.ToLower(ev.Kind.String()), ev.Name, ev.Version, ev.Alias, ev.Previous)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&reconnect, "reconnect", true, "reconnect after a lost connection (and print a resync line) instead of exiting")
	return cmd
}

func parseParams(kvs []string) (map[string]string, error) {
	m := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usagef("--param %q: want key=value", kv)
		}
		m[k] = v
	}
	return m, nil
}

func parseShape(flag, s string) ([]int64, error) {
	if s == "" {
		return nil, nil
	}
	var out []int64
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.ParseInt(strings.TrimSpace(p), 10, 64)
		if err != nil || n < -1 {
			return nil, usagef("%s %q: want comma-separated integers (-1 for dynamic)", flag, s)
		}
		out = append(out, n)
	}
	return out, nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func ibytes(n int64) string { return humanize.IBytes(uint64(max(n, 0))) }

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// progress shows transfer progress: a bar with bytes, rate and ETA on a terminal (mpb, as `fetch`
// uses), plain lines (every 10% or 10 s) otherwise, so logs of unattended pulls stay readable.
type progress struct {
	w       io.Writer
	label   string
	p       *mpb.Progress
	bar     *mpb.Bar
	start   time.Time
	lastPct int64
	lastAt  time.Time
	done    int64
	total   int64
}

func newProgress(w io.Writer, label string) *progress {
	p := &progress{w: w, label: label, start: time.Now(), lastPct: -1}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.p = mpb.New(mpb.WithOutput(w), mpb.WithRefreshRate(150*time.Millisecond))
	}
	return p
}

func (p *progress) update(done, total int64) {
	p.done, p.total = done, total
	if p.p != nil {
		if p.bar == nil {
			p.bar = p.p.AddBar(total,
				mpb.PrependDecorators(decor.Name(p.label+" ", decor.WCSyncSpaceR), decor.Counters(decor.SizeB1024(0), "% .1f / % .1f")),
				mpb.AppendDecorators(decor.EwmaSpeed(decor.SizeB1024(0), "% .1f", 30), decor.Name(" ETA "), decor.EwmaETA(decor.ET_STYLE_GO, 30)))
		}
		p.bar.SetTotal(total, false)
		p.bar.EwmaSetCurrent(done, time.Since(p.lastAt))
		p.lastAt = time.Now()
		return
	}
	pct := int64(100)
	if total > 0 {
		pct = done * 100 / total
	}
	if pct/10 == p.lastPct/10 && time.Since(p.lastAt) < 10*time.Second {
		return
	}
	p.lastPct, p.lastAt = pct, time.Now()
	fmt.Fprintf(p.w, "%s: %s / %s (%d%%)%s\n", p.label, ibytes(done), ibytes(total), pct, p.rateETA())
}

// rateETA is ", RATE/s, ETA D" for a plain line: the average rate so far, and the time left at it.
// Both are left out until the transfer has run for minRateWindow (the first bytes' rate says
// little, and an ETA from it can be off by hours), except the rate on the last line.
func (p *progress) rateETA() string {
	const minRateWindow = time.Second
	elapsed := time.Since(p.start)
	if elapsed < minRateWindow && p.done < p.total {
		return ""
	}
	s := ", " + ibytes(p.rate()) + "/s"
	if elapsed >= minRateWindow {
		s += p.eta()
	}
	return s
}

func (p *progress) rate() int64 {
	secs := time.Since(p.start).Seconds()
	if secs <= 0 {
		return 0
	}
	return int64(float64(p.done) / secs)
}

func (p *progress) eta() string {
	r := p.rate()
	if r <= 0 || p.done >= p.total {
		return ""
	}
	return ", ETA " + time.Duration(float64(p.total-p.done)/float64(r)*float64(time.Second)).Round(time.Second).String()
}

func (p *progress) finish(ok bool) {
	if p.p == nil {
		return
	}
	if p.bar != nil {
		if ok {
			p.bar.SetTotal(p.total, true)
		} else {
			p.bar.Abort(false)
		}
	}
	p.p.Wait()
}
