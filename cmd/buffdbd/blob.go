package main

import (
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	blobpb "github.com/buffdb/buffdbd/api/proto/blobpb"
)

func newBlobCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "blob", Short: "Store, get, update, delete and compare blobs"}
	var getMode string
	get := &cobra.Command{
		Use:   "get <ID>",
		Short: "Write blob ID's data to stdout (or its metadata with --mode metadata)",
		Long: `Write blob ID's data to stdout. --mode metadata prints its metadata on one line (nothing when
the blob has none); --mode all prints the metadata line, then the data.`,
		Args: exactArgs(1),
		RunE: withClient(g, blobpb.NewBlobClient, func(cmd *cobra.Command, c blobpb.BlobClient, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			if getMode != "data" && getMode != "metadata" && getMode != "all" {
				return usagef("--mode must be data, metadata or all, got %q", getMode)
			}
			resp, err := roundTrip(cmd.Context(), c.Get, &blobpb.GetRequest{Id: id})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if getMode != "data" && resp.Metadata != nil {
				fmt.Fprintln(out, resp.GetMetadata())
			}
			if getMode != "metadata" {
				_, err = out.Write(resp.GetBytes())
			}
			return err
		}),
	}
	get.Flags().StringVar(&getMode, "mode", "data", "what to print: data, metadata or all")

	cmd.AddCommand(
		get,
		&cobra.Command{
			Use:         "store <FILE|-> [METADATA]",
			Annotations: createsStoreAnnotation,
			Short:       "Store FILE (or stdin for -) as a new blob and print its id",
			Args:        rangeArgs(1, 2),
			RunE: withClient(g, blobpb.NewBlobClient, func(cmd *cobra.Command, c blobpb.BlobClient, args []string) error {
				data, err := readInput(cmd, args[0])
				if err != nil {
					return err
				}
				req := &blobpb.StoreRequest{Bytes: data}
				if len(args) == 2 {
					req.Metadata = &args[1]
				}
				resp, err := roundTrip(cmd.Context(), c.Store, req)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(cmd.OutOrStdout(), resp.GetId())
				return err
			}),
		},
		&cobra.Command{
			Use:   "update <ID> data <FILE|-> | metadata [METADATA] | all <FILE|-> [METADATA]",
			Short: "Replace blob ID's data, metadata, or both",
			Long: `Replace blob ID's data ("data FILE"), its metadata ("metadata [METADATA]"; without METADATA
the metadata is removed), or both ("all FILE [METADATA]"). FILE "-" reads stdin.`,
			Args: rangeArgs(2, 4),
			RunE: withClient(g, blobpb.NewBlobClient, func(cmd *cobra.Command, c blobpb.BlobClient, args []string) error {
				id, err := parseID(args[0])
				if err != nil {
					return err
				}
				req := &blobpb.UpdateRequest{Id: id}
				rest := args[2:]
				switch args[1] {
				case "data":
					if len(rest) != 1 {
						return usagef("blob update <ID> data takes exactly one FILE")
					}
				case "metadata":
					if len(rest) > 1 {
						return usagef("blob update <ID> metadata takes at most one METADATA")
					}
					req.ShouldUpdateMetadata = true
					if len(rest) == 1 {
						req.Metadata = &rest[0]
					}
				case "all":
					if len(rest) < 1 {
						return usagef("blob update <ID> all takes FILE [METADATA]")
					}
					req.ShouldUpdateMetadata = true
					if len(rest) == 2 {
						req.Metadata = &rest[1]
					}
				default:
					return usagef("blob update: want data, metadata or all, got %q", args[1])
				}
				if args[1] != "metadata" {
					if req.Bytes, err = readInput(cmd, rest[0]); err != nil {
						return err
					}
				}
				_, err = roundTrip(cmd.Context(), c.Update, req)
				return err
			}),
		},
		&cobra.Command{
			Use: "delete <ID>", Short: "Delete blob ID", Args: exactArgs(1),
			RunE: withClient(g, blobpb.NewBlobClient, func(cmd *cobra.Command, c blobpb.BlobClient, args []string) error {
				id, err := parseID(args[0])
				if err != nil {
					return err
				}
				_, err = roundTrip(cmd.Context(), c.Delete, &blobpb.DeleteRequest{Id: id})
				return err
			}),
		},
		&cobra.Command{
			Use: "eq-data <ID>...", Short: "Exit 0 if every blob has the same data, 1 if not", Args: minArgs(1),
			RunE: withClient(g, blobpb.NewBlobClient, func(cmd *cobra.Command, c blobpb.BlobClient, args []string) error {
				ids, err := parseIDs(args)
				if err != nil {
					return err
				}
				return checkResult(cmd)(sendAll(cmd.Context(), c.EqData, ids, func(id uint64) *blobpb.EqDataRequest {
					return &blobpb.EqDataRequest{Id: id}
				}))
			}),
		},
		&cobra.Command{
			Use: "not-eq-data <ID>...", Short: "Exit 0 if the blobs' data are pairwise different, 1 if not", Args: minArgs(1),
			RunE: withClient(g, blobpb.NewBlobClient, func(cmd *cobra.Command, c blobpb.BlobClient, args []string) error {
				ids, err := parseIDs(args)
				if err != nil {
					return err
				}
				return checkResult(cmd)(sendAll(cmd.Context(), c.NotEqData, ids, func(id uint64) *blobpb.NotEqDataRequest {
					return &blobpb.NotEqDataRequest{Id: id}
				}))
			}),
		},
	)
	return cmd
}

// readInput reads a whole file, or stdin for "-". BuffDB's Store sends a blob in one message, so it
// is held in memory; the server's message limit (64 MiB by default) bounds it.
func readInput(cmd *cobra.Command, name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(cmd.InOrStdin())
	}
	return os.ReadFile(name) // its errors name the file and the operation ("open FILE: ...")
}

func parseID(s string) (uint64, error) {
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, usagef("blob id must be a non-negative integer, got %q", s)
	}
	return id, nil
}

func parseIDs(ss []string) ([]uint64, error) {
	ids := make([]uint64, len(ss))
	for i, s := range ss {
		var err error
		if ids[i], err = parseID(s); err != nil {
			return nil, err
		}
	}
	return ids, nil
}
