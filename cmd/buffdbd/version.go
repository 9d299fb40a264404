package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Set at link time by release builds:
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.commit=$(git rev-parse HEAD)" ./cmd/buffdbd
//
// Otherwise they come from the module and VCS information `go build` embeds.
var (
	version = ""
	commit  = ""
)

// buildInfo is what `buffdbd version` prints and buffdbd_build_info exports.
type buildInfo struct {
	Version   string // module version or ldflags; "devel" for an untagged build
	Commit    string // VCS revision, "+dirty" when built from a modified tree; "unknown" if absent
	GoVersion string
	Platform  string
}

// readBuildInfo merges ldflags values with what debug.ReadBuildInfo knows (ldflags win: a release
// pipeline knows better than a shallow clone).
func readBuildInfo() buildInfo {
	b := buildInfo{Version: version, Commit: commit, GoVersion: runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if b.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			b.Version = bi.Main.Version
		}
		if b.Commit == "" {
			var rev string
			var dirty bool
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.modified":
					dirty = s.Value == "true"
				}
			}
			if rev != "" && dirty {
				rev += "+dirty"
			}
			b.Commit = rev
		}
	}
	if b.Version == "" {
		b.Version = "devel"
	}
	if b.Commit == "" {
		b.Commit = "unknown"
	}
	return b
}

func (b buildInfo) print(w io.Writer) {
	fmt.Fprintf(w, "buffdbd %s\ncommit  %s\ngo      %s %s\n", b.Version, b.Commit, b.GoVersion, b.Platform)
}

// newVersionCommand is `buffdbd version`.
func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print version, commit and Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			readBuildInfo().print(cmd.OutOrStdout())
			return nil
		},
	}
}
