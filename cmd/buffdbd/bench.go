package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/buffdb/buffdbd/api"
	blobpb "github.com/buffdb/buffdbd/api/proto/blobpb"
	kvpb "github.com/buffdb/buffdbd/api/proto/kvpb"
	"github.com/buffdb/buffdbd/internal/cpustat"
	"github.com/buffdb/buffdbd/internal/directio"
	"github.com/buffdb/buffdbd/internal/gotune"
)

func newBenchCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Short: "Measure throughput on this machine (results as ratios to its own limits)"}
	cmd.AddCommand(newBenchStoreCmd(g))
	return cmd
}

type benchStoreFlags struct {
	keys       int
	blobs      int
	blobSize   int
	cpuProfile string
}

func newBenchStoreCmd(g *globalFlags) *cobra.Command {
	f := &benchStoreFlags{}
	cmd := &cobra.Command{
		Use:   "store",
		Short: "KV Set/Get ops/s and blob Store/Get MB/s on one gRPC stream over loopback, next to a raw file write",
		Long: `Starts the store and gRPC server in-process on a scratch data directory (--data-dir, default a
temporary directory that is removed; data_dir from the config file or environment is deliberately
not used, so a benchmark never writes into a live store) with the configuration run would use
(store.durability, grpc.max_message_bytes, …) and a loopback TCP port, then measures on ONE bidirectional
stream each: KV Set and Get ops/s, blob Store and Get MB/s. In the same run it writes the same blob
bytes to a plain file and fsyncs it, and prints each blob rate as a ratio to that.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return benchStore(cmd, g, f) },
	}
	fl := cmd.Flags()
	fl.IntVar(&f.keys, "keys", 100_000, "KV pairs to Set and then Get")
	fl.IntVar(&f.blobs, "blobs", 256, "blobs to Store and then Get")
	fl.IntVar(&f.blobSize, "blob-size", 1<<20, "bytes per blob")
	fl.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run (client and server) to this file")
	return cmd
}

func benchStore(cmd *cobra.Command, g *globalFlags, f *benchStoreFlags) error {
	ctx := cmd.Context()
	if f.keys < 1 || f.blobs < 1 || f.blobSize < 8 {
		return usagef("--keys and --blobs must be >= 1 and --blob-size >= 8")
	}
	// The same configuration as run (file, BUFFDBD_*, flags such as --durability), except where
	// the data goes: only an explicit --data-dir, never the configured (possibly live) one.
	cfg, _, _, err := LoadConfig(cmd.Flags())
	if err != nil {
		return err
	}
	// The server runs in this process with `run`'s memory settings; the limit grows by what the
	// in-process client holds (its blob ring and transport buffers), which a real client keeps in
	// its own process.
	if cfg.MemoryLimit > 0 {
		gotune.LimitMemory(int64(cfg.MemoryLimit + storeRingBytes + 16*MiB))
		gotune.RelaxGC(int64(cfg.MemoryLimit))
	}
	dir := ""
	if f := cmd.Flags().Lookup("data-dir"); f != nil && f.Changed {
		dir = f.Value.String()
	}
	if dir != "" {
		// The raw-write probes go into dir before the store (which would create it) opens; 0700 as
		// for any data directory.
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create data directory: %w", err)
		}
	} else {
		tmp, err := os.MkdirTemp("", "buffdbd-bench")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	cfg.DataDir = dir
	if cfg.GRPC.MaxMessageBytes < ByteSize(f.blobSize)+MiB {
		cfg.GRPC.MaxMessageBytes = ByteSize(f.blobSize) + MiB
	}

	// Blob contents: one random buffer, each blob made unique by a counter in its first 8 bytes so
	// the store cannot deduplicate them. Writers stamp the counter into a buffer they reuse, so
	// generating a blob costs nothing measurable.
	base := make([]byte, f.blobSize)
	rand.NewChaCha8([32]byte{}).Read(base)
	total := float64(f.blobs) * float64(f.blobSize)
	if f.cpuProfile != "" {
		pf, err := os.Create(f.cpuProfile)
		if err != nil {
			return err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	// The raw write is the faster of writing through the page cache and with O_DIRECT (as the
	// store writes payloads): the machine's limit, not the slower way to reach it.
	rawDur, err := rawWrite(filepath.Join(dir, "raw-write-probe"), f.blobs, base, false)
	if err != nil {
		return fmt.Errorf("raw write: %w", err)
	}
	rawDirectDur, err := rawWrite(filepath.Join(dir, "raw-write-probe"), f.blobs, base, true)
	if err != nil {
		return fmt.Errorf("raw write: %w", err)
	}
	rawBufferedDur := rawDur
	rawDur = min(rawDur, rawDirectDur)
	// The probe's files stay until the run ends: deleting them now would slow the store's own file
	// creation, not the machine's. On ext4 without a journal each new inode skips every inode of its
	// group deleted in the last 30 s, reading its inode block, so a thousand fresh deletions cost
	// every payload file created after them ~0.3 ms of CPU.
	rawFilesDir := filepath.Join(dir, "raw-files-probe")
	defer os.RemoveAll(rawFilesDir)
	rawFilesDur, err := rawWriteFiles(rawFilesDir, f.blobs, base)
	if err != nil {
		return fmt.Errorf("raw write: %w", err)
	}

	db, err := openStore(ctx, cfg, nil)
	if err != nil {
		return err
	}
	defer db.Close()
	svcs, err := buildServices(ctx, db, cfg, nil, api.Options{})
	if err != nil {
		return err
	}
	defer svcs.close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go svcs.srv.Serve(lis)
	defer svcs.srv.Shutdown(context.Background())
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(int(cfg.GRPC.MaxMessageBytes)), grpc.MaxCallSendMsgSize(int(cfg.GRPC.MaxMessageBytes)),
			grpc.ForceCodecV2(api.Codec{})))
	if err != nil {
		return err
	}
	defer conn.Close()
	kv := kvpb.NewKvClient(conn)
	bc := blobpb.NewBlobClient(conn)

	key := func(i int) string { return fmt.Sprintf("bench:%08d", i) }
	setDur, err := timeStream(ctx, kv.Set, f.keys, func(i int) *kvpb.SetRequest {
		return &kvpb.SetRequest{Key: key(i), Value: "value-" + key(i)}
	})
	if err != nil {
		return fmt.Errorf("kv set: %w", err)
	}
	getDur, err := timeStream(ctx, kv.Get, f.keys, func(i int) *kvpb.GetRequest { return &kvpb.GetRequest{Key: key(i)} })
	if err != nil {
		return fmt.Errorf("kv get: %w", err)
	}
	// The store's own Get rate, without gRPC, one caller: what the stream's Get is built on.
	directStart := time.Now()
	for i := range f.keys {
		if _, err := db.Get(ctx, "", key(i)); err != nil {
			return fmt.Errorf("direct get: %w", err)
		}
	}
	directGetDur := time.Since(directStart)

	c0 := cpustat.Read()
	storeDur, ids, err := timeStore(ctx, bc, f.blobs, base)
	storeCores := c0.CoresSince()
	if err != nil {
		return fmt.Errorf("blob store: %w", err)
	}
	blobGetDur, err := timeStream(ctx, bc.Get, len(ids), func(i int) *blobpb.GetRequest { return &blobpb.GetRequest{Id: ids[i]} })
	if err != nil {
		return fmt.Errorf("blob get: %w", err)
	}

	mbps := func(d time.Duration) float64 { return total / d.Seconds() / 1e6 }
	rawMBps := mbps(rawDur)
	w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "buffdbd bench store: one stream over loopback, durability=%s, data dir %s\n", cfg.Store.Durability, dir)
	fmt.Fprintf(w, "KV Set\t%d values\t%.0f ops/s\t\n", f.keys, float64(f.keys)/setDur.Seconds())
	fmt.Fprintf(w, "KV Get\t%d values\t%.0f ops/s\t%.2fx store.Get without gRPC (%.0f ops/s, one caller)\n", f.keys,
		float64(f.keys)/getDur.Seconds(), directGetDur.Seconds()/getDur.Seconds(), float64(f.keys)/directGetDur.Seconds())
	fmt.Fprintf(w, "raw file write+fsync\t%d x %d B\t%.0f MB/s\t1.00x (page cache %.0f MB/s, O_DIRECT %.0f MB/s)\n", f.blobs, f.blobSize, rawMBps,
		mbps(rawBufferedDur), mbps(rawDirectDur))
	fmt.Fprintf(w, "raw files, one per blob, each fsynced\t%d x %d B\t%.0f MB/s\t%.2fx\n", f.blobs, f.blobSize, mbps(rawFilesDur), mbps(rawFilesDur)/rawMBps)
	fmt.Fprintf(w, "Blob Store\t%d x %d B\t%.0f MB/s\t%.2fx raw (%.2fx raw files); %.2f of %d cores busy\n", f.blobs, f.blobSize, mbps(storeDur),
		mbps(storeDur)/rawMBps, mbps(storeDur)/mbps(rawFilesDur), storeCores, runtime.NumCPU())
	fmt.Fprintf(w, "Blob Get\t%d x %d B\t%.0f MB/s\t%.2fx raw write\n", f.blobs, f.blobSize, mbps(blobGetDur), mbps(blobGetDur)/rawMBps)
	return w.Flush()
}

// rawWrite writes the blobs' bytes to one file and fsyncs it: the machine's sequential write limit,
// measured in the same run as the store.
func rawWrite(path string, n int, base []byte, direct bool) (time.Duration, error) {
	defer os.Remove(path)
	b := directio.AlignedBuffer(len(base))
	copy(b, base)
	start := time.Now()
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	var w io.Writer = f
	var dw *directio.Writer
	if direct {
		dw = directio.NewWriter(f, 0)
		w = dw
	}
	for i := range n {
		binary.LittleEndian.PutUint64(b, uint64(i)+1)
		if _, err := w.Write(b); err != nil {
			f.Close()
			return 0, err
		}
	}
	if dw != nil {
		if err := dw.Close(); err != nil {
			f.Close()
			return 0, err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// rawWriteFiles writes each blob to its own file and fsyncs it, one after another: what durable
// storage of separate payloads costs without a database, measured in the same run.
func rawWriteFiles(dir string, n int, base []byte) (time.Duration, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	b := bytes.Clone(base)
	start := time.Now()
	for i := range n {
		f, err := os.Create(filepath.Join(dir, fmt.Sprint(i)))
		if err != nil {
			return 0, err
		}
		binary.LittleEndian.PutUint64(b, uint64(i)+1)
		_, err = f.Write(b)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// storeRingBytes is how many blob bytes timeStore keeps in flight: more than the server pipelines
// (store.Writer prepares up to 64 MiB at once), so the client never holds the server back.
const storeRingBytes = 48 << 20

// timeStore stores n blobs (base, stamped with a counter) on one Store stream and returns the time
// until the last id arrived, and the ids. A blob's buffer is reused once its id has arrived — the
// server then holds every byte of it — so the client neither allocates nor copies per blob: what
// is measured is the server.
func timeStore(ctx context.Context, bc blobpb.BlobClient, n int, base []byte) (time.Duration, []uint64, error) {
	free := make(chan []byte, max(2, storeRingBytes/len(base)))
	for range cap(free) {
		free <- bytes.Clone(base)
	}
	sent := make(chan []byte, cap(free)) // buffers in request order, until answered
	start := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := bc.Store(ctx)
	if err != nil {
		return 0, nil, err
	}
	go func() {
		for i := range n {
			var b []byte
			select {
			case b = <-free:
			case <-ctx.Done():
				return
			}
			binary.LittleEndian.PutUint64(b, uint64(i)+1)
			sent <- b
			if s.Send(&blobpb.StoreRequest{Bytes: b}) != nil {
				return
			}
		}
		s.CloseSend()
	}()
	ids := make([]uint64, 0, n)
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, nil, err
		}
		ids = append(ids, r.GetId())
		free <- <-sent
	}
	if len(ids) != n {
		return 0, nil, fmt.Errorf("%d answers for %d blobs", len(ids), n)
	}
	return time.Since(start), ids, nil
}

// timeStream sends n requests on one bidi stream while receiving the answers concurrently, and
// returns the time until the last answer arrived.
func timeStream[Req, Resp any](ctx context.Context, open func(context.Context, ...grpc.CallOption) (grpc.BidiStreamingClient[Req, Resp], error),
	n int, mk func(int) *Req, onResp ...func(*Resp)) (time.Duration, error) {
	start := time.Now()
	s, err := open(ctx)
	if err != nil {
		return 0, err
	}
	go func() {
		for i := range n {
			if s.Send(mk(i)) != nil {
				return
			}
		}
		s.CloseSend()
	}()
	got := 0
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, err
		}
		got++
		for _, fn := range onResp {
			fn(r)
		}
	}
	if got != n {
		return 0, fmt.Errorf("%d answers for %d requests", got, n)
	}
	return time.Since(start), nil
}
