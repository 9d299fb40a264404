package api_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	registrypb "github.com/buffdb/buffdbd/api/proto/registrypb"
	"github.com/buffdb/buffdbd/internal/linktest"
	"github.com/buffdb/buffdbd/registry"
)

// TestRegistry_PushResumesInsideChunks: over a link that drops every connection after about
// 1 MiB, less than most chunks, a push completes and pulls back byte for byte, and the daemon
// receives each byte about once. Before, a chunk cut mid-transfer was sent again from its first
// byte, so no chunk larger than what one connection carries ever got through and the push gave up.
func TestRegistry_PushResumesInsideChunks(t *testing.T) {
	var received atomic.Int64 // chunk bytes the daemon received, all attempts
	e := startRegistry(t, registry.Options{Metrics: registry.Metrics{BytesReceived: func(n int64) { received.Add(n) }}})
	data := randBytes(91, 8<<20)
	src := t.TempDir()
	writeFiles(t, src, map[string][]byte{"w.bin": data})
	link := linktest.Start(t, e.conn.Target(), linktest.Options{After: 1 << 20})
	cc, err := grpc.NewClient(link.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	var last, backwards int64 // progress must not restart from 0 on each connection
	res, err := registry.NewClient(cc).Push(context.Background(), src, registry.PushOptions{
		Info: registry.ModelInfo{Name: "m", Version: "v1"}, Retries: 3,
		Progress: func(done, total int64) {
			if done < last {
				backwards = max(backwards, last-done)
			}
			last = done
		}})
	if err != nil {
		t.Fatalf("push over a link dropping every 1 MiB: %v (%d drops, %d attempts)", err, link.Failed(), res.Attempts)
	}
	if link.Failed() < 4 {
		t.Fatalf("the link dropped %d connections; the test needs several cuts inside chunks", link.Failed())
	}
	if backwards > 0 || last != int64(len(data)) {
		t.Errorf("progress went back by up to %d bytes on a resume, and ended at %d of %d", backwards, last, len(data))
	}
	out := t.TempDir()
	if _, err := e.client.Pull(context.Background(), "m:v1", out, registry.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, map[string][]byte{"w.bin": data})
	// Each cut chunk is resumed where the cut left it: what the daemon received beyond the
	// file is what was in flight at a cut and not yet kept, a small part of one connection's
	// worth. Resending cut chunks whole would have cost the received part of each, ~1 MiB per cut.
	if extra := received.Load() - int64(len(data)); extra > 1<<20 {
		t.Errorf("the daemon received %d bytes for an %d-byte file over %d connections (%d beyond it)",
			received.Load(), len(data), link.Accepted(), extra)
	}
	if ents, err := os.ReadDir(filepath.Join(e.dir, "uploads")); err != nil || len(ents) != 0 {
		t.Errorf("partial chunks left after the push: %v, %v", ents, err)
	}
}

// TestRegistry_PushResumeCompat: a client that does not resume inside chunks (before
// PushOpen.resume_in_chunk) is asked for whole chunks even where a cut push left part of one,
// and its push completes.
func TestRegistry_PushResumeCompat(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	data := randBytes(92, 1<<20+999)
	sum := sha256.Sum256(data)
	info := &registrypb.ModelInfo{Name: "m", Version: "v1"}
	open := func(ctx context.Context, resume bool) registrypb.Registry_PushClient {
		t.Helper()
		stream, err := e.rpc.Push(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range []*registrypb.PushRequest{
			{Msg: &registrypb.PushRequest_Open{Open: &registrypb.PushOpen{Info: info, ResumeInChunk: resume}}},
			{Msg: &registrypb.PushRequest_FileBegin{FileBegin: &registrypb.FileBegin{Path: "w.bin", Size: uint64(len(data))}}},
			{Msg: &registrypb.PushRequest_Offer{Offer: &registrypb.ChunkOffer{Sha256: sum[:], Size: uint64(len(data))}}},
		} {
			if err := stream.Send(m); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := stream.Recv(); err != nil { // opened
			t.Fatal(err)
		}
		return stream
	}
	answer := func(stream registrypb.Registry_PushClient) *registrypb.ChunkAnswer {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil || resp.GetAnswer() == nil {
			t.Fatalf("answer: %v, %v", resp, err)
		}
		return resp.GetAnswer()
	}
	data1 := func(b []byte) *registrypb.PushRequest {
		return &registrypb.PushRequest{Msg: &registrypb.PushRequest_Data{Data: &registrypb.ChunkData{Data: b}}}
	}

	// A resuming client's stream ends after 600 KiB of the chunk.
	stream := open(context.Background(), true)
	if a := answer(stream); !a.Need || a.Offset != 0 {
		t.Fatalf("first answer %v", a)
	}
	if err := stream.Send(data1(data[:600<<10])); err != nil {
		t.Fatal(err)
	}
	stream.CloseSend()
	if _, err := stream.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a push stream ended before its commit: %v", err)
	}
	// The daemon has kept the bytes once it asks a resuming client for the rest only; the
	// status may reach the client before the daemon's handler has finished. This waits on
	// state, not on time.
	for deadline := time.Now().Add(30 * time.Second); ; {
		stream := open(context.Background(), true)
		a := answer(stream)
		stream.CloseSend()
		for _, err := stream.Recv(); err == nil; _, err = stream.Recv() {
		}
		if a.Offset == 600<<10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon never kept the 600 KiB received of a cut chunk (answer %v)", a)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// An older client is asked for the whole chunk, and its push completes.
	stream = open(context.Background(), false)
	if a := answer(stream); !a.Need || a.Offset != 0 {
		t.Fatalf("answer to a client that does not resume inside chunks: %v", a)
	}
	for _, m := range []*registrypb.PushRequest{
		data1(data[:1<<20]), data1(data[1<<20:]),
		{Msg: &registrypb.PushRequest_FileEnd{FileEnd: &registrypb.FileEnd{Sha256: sum[:]}}},
		{Msg: &registrypb.PushRequest_Commit{Commit: &registrypb.Commit{}}},
	} {
		if err := stream.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := stream.Recv()
	if err != nil || resp.GetCommitted() == nil || resp.GetCommitted().BytesReceived != uint64(len(data)) {
		t.Fatalf("commit: %v, %v", resp, err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after commit: %v", err)
	}
	out := t.TempDir()
	if _, err := e.client.Pull(context.Background(), "m:v1", out, registry.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, map[string][]byte{"w.bin": data})
}

// oldServerStream removes resume_in_chunk from PushOpen, so the server answers as one from before
// the field, which ignores it.
type oldServerStream struct{ grpc.ClientStream }

func (s oldServerStream) SendMsg(m any) error {
	if open := m.(interface{ GetOpen() *registrypb.PushOpen }).GetOpen(); open != nil {
		open = proto.Clone(open).(*registrypb.PushOpen)
		open.ResumeInChunk = false
		m = &registrypb.PushRequest{Msg: &registrypb.PushRequest_Open{Open: open}}
	}
	return s.ClientStream.SendMsg(m)
}

// TestRegistry_PushResumeOldServer: to a server that does not resume inside chunks, the client
// sends cut chunks whole again, over a link that carries a whole chunk per connection.
func TestRegistry_PushResumeOldServer(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	data := randBytes(93, 16<<20)
	src := t.TempDir()
	writeFiles(t, src, map[string][]byte{"w.bin": data})
	link := linktest.Start(t, e.conn.Target(), linktest.Options{After: 5 << 20}) // more than the largest chunk
	cc, err := grpc.NewClient(link.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
			streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			s, err := streamer(ctx, desc, cc, method, opts...)
			return oldServerStream{s}, err
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	res, err := registry.NewClient(cc).Push(context.Background(), src, registry.PushOptions{
		Info: registry.ModelInfo{Name: "m", Version: "v1"}, Retries: 3})
	if err != nil || link.Failed() < 2 || res.BytesResumed != 0 {
		t.Fatalf("push to an old server over a link dropping every 5 MiB: %v (%d drops, %d resumed)", err, link.Failed(), res.BytesResumed)
	}
	out := t.TempDir()
	if _, err := e.client.Pull(context.Background(), "m:v1", out, registry.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, map[string][]byte{"w.bin": data})
	if ents, err := os.ReadDir(filepath.Join(e.dir, "uploads")); err == nil && len(ents) != 0 {
		t.Errorf("a push that did not resume inside chunks left partial chunks: %v", ents)
	}
}
