package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	registrypb "github.com/buffdb/buffdbd/api/proto/registrypb"
	"github.com/buffdb/buffdbd/registry"
)

// abandonAny is --abandon-uploads given without a value: any upload session no push is streaming to.
const abandonAny = "any"

// newGCCmd is `buffdbd gc [--abandon-uploads[=AGE]] [NAME:VERSION...]`.
func newGCCmd(g *globalFlags) *cobra.Command {
	var abandon string
	cmd := &cobra.Command{
		Use:   "gc [--abandon-uploads[=AGE] [NAME:VERSION...]]",
		Short: "Collect unreferenced chunks, expired upload sessions and orphaned payload files",
		Long: `gc removes what nothing uses: upload sessions past upload_session_expiry, chunks no version or
remaining session holds, and orphaned payload files. An interrupted push keeps its session (and the
chunks it sent) resumable until it expires, so plain gc does not free them; it reports what they hold.

--abandon-uploads also drops upload sessions before they expire, with their chunks and partly received
chunk files: every session no push is streaming to, or with --abandon-uploads=AGE (e.g. 2h) only those
idle for at least AGE (since their last push began or stopped). With NAME:VERSION arguments, only those
versions' sessions. A push of a dropped version later starts over. A push still streaming is never
dropped: stop it first.`,
		Example: `  buffdbd gc
  buffdbd gc --abandon-uploads              # e.g. after a push failed on a full disk
  buffdbd gc --abandon-uploads=6h
  buffdbd gc --abandon-uploads resnet:1.2`,
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("abandon-uploads") {
				if len(args) > 0 {
					return usagef("gc takes NAME:VERSION arguments only with --abandon-uploads")
				}
				return nil
			}
			if abandon != abandonAny {
				if d, err := time.ParseDuration(abandon); err != nil || d < 0 {
					return usagef("--abandon-uploads=%q: want an age such as 30m or 2h (or no value: any idle session)", abandon)
				}
			}
			for _, a := range args {
				if _, err := time.ParseDuration(a); err == nil {
					return usagef("%q: write the age as --abandon-uploads=%s", a, a)
				}
				r, err := registry.ParseRef(a)
				if err == nil && (r.Version == "" || r.Alias != "") {
					err = fmt.Errorf("want NAME:VERSION")
				}
				if err != nil {
					return usagef("%q: %v", a, err)
				}
			}
			return nil
		},
		RunE: withRegistry(g, func(cmd *cobra.Command, c *registry.Client, args []string) error {
			req := &registrypb.CollectGarbageRequest{}
			if cmd.Flags().Changed("abandon-uploads") {
				req.AbandonUploads, req.Versions = true, args
				if abandon != abandonAny {
					d, _ := time.ParseDuration(abandon) // checked by PreRunE
					req.IdleSeconds = uint64((d + time.Second - 1) / time.Second)
				}
			}
			resp, err := c.RPC().CollectGarbage(cmd.Context(), req)
			if err != nil {
				return err
			}
			if req.AbandonUploads && !resp.AbandonSupported {
				return fmt.Errorf("the daemon predates --abandon-uploads; it ran a plain gc (nothing dropped): upgrade it, or stop it and run gc again")
			}
			w := cmd.OutOrStdout()
			if req.AbandonUploads {
				fmt.Fprintf(w, "dropped %d interrupted upload sessions, %d partly received chunk files (%s)\n",
					resp.AbandonedSessions, resp.PartialFiles, ibytes(int64(resp.PartialBytes)))
			}
			fmt.Fprintf(w, "removed %d expired upload sessions, %d chunks (%s), %d payload files (%s)\n",
				resp.Sessions, resp.Chunks, ibytes(int64(resp.Bytes)), resp.Files, ibytes(int64(resp.FileBytes)))
			if kept, live := resp.KeptSessions, resp.LiveSessions; kept > 0 {
				var why []string
				if live > 0 {
					why = append(why, fmt.Sprintf("%d with a push streaming to it", live))
				}
				if idle := kept - live; idle > 0 && req.AbandonUploads {
					why = append(why, fmt.Sprintf("%d idle for less than %s", idle, abandon))
				} else if idle > 0 {
					why = append(why, fmt.Sprintf("%d of interrupted pushes, resumable until they expire: `buffdbd gc --abandon-uploads` drops them", idle))
				}
				fmt.Fprintf(w, "kept %d upload sessions holding %s (%s)\n", kept, ibytes(int64(resp.KeptBytes)), strings.Join(why, "; "))
			}
			return nil
		}),
	}
	cmd.Flags().StringVar(&abandon, "abandon-uploads", "",
		"also drop upload sessions of interrupted pushes no push is streaming to (=AGE: only those idle at least AGE, e.g. 2h)")
	cmd.Flags().Lookup("abandon-uploads").NoOptDefVal = abandonAny
	return cmd
}
