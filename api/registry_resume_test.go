package api_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
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

// rawPush drives one Push stream message by message, as a client of any version could.
type rawPush struct {
	t      *testing.T
	stream registrypb.Registry_PushClient
}

// startRawPush opens a push of name:v1 with one file of size bytes and offers its first chunk.
func startRawPush(t *testing.T, rpc registrypb.RegistryClient, resume bool, size int, chunk []byte) *rawPush {
	t.Helper()
	stream, err := rpc.Push(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	p := &rawPush{t: t, stream: stream}
	sum := sha256.Sum256(chunk)
	p.send(&registrypb.PushRequest{Msg: &registrypb.PushRequest_Open{Open: &registrypb.PushOpen{
		Info: &registrypb.ModelInfo{Name: "m", Version: "v1"}, ResumeInChunk: resume}}})
	p.send(&registrypb.PushRequest{Msg: &registrypb.PushRequest_FileBegin{FileBegin: &registrypb.FileBegin{Path: "w.bin", Size: uint64(size)}}})
	p.send(&registrypb.PushRequest{Msg: &registrypb.PushRequest_Offer{Offer: &registrypb.ChunkOffer{Sha256: sum[:], Size: uint64(len(chunk))}}})
	if resp, err := stream.Recv(); err != nil || resp.GetOpened() == nil {
		t.Fatalf("open: %v, %v", resp, err)
	}
	return p
}

func (p *rawPush) send(m *registrypb.PushRequest) {
	p.t.Helper()
	if err := p.stream.Send(m); err != nil {
		p.t.Fatal(err)
	}
}

func (p *rawPush) data(b []byte) {
	p.t.Helper()
	p.send(&registrypb.PushRequest{Msg: &registrypb.PushRequest_Data{Data: &registrypb.ChunkData{Data: b}}})
}

func (p *rawPush) answer() *registrypb.ChunkAnswer {
	p.t.Helper()
	resp, err := p.stream.Recv()
	if err != nil || resp.GetAnswer() == nil {
		p.t.Fatalf("answer: %v, %v", resp, err)
	}
	return resp.GetAnswer()
}

// cut ends the stream before its commit, as a client whose connection broke after the bytes
// it sent arrived, and waits for the server's answer.
func (p *rawPush) cut() {
	p.t.Helper()
	p.stream.CloseSend()
	if _, err := p.stream.Recv(); status.Code(err) != codes.InvalidArgument {
		p.t.Fatalf("a push stream ended before its commit: %v", err)
	}
}

// TestRegistry_PushResumeCompat: a client that does not resume inside chunks (before
// PushOpen.resume_in_chunk) is asked for whole chunks even where a cut push left part of one,
// and its push completes.
func TestRegistry_PushResumeCompat(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	data := randBytes(92, 1<<20+999)
	sum := sha256.Sum256(data)

	// A resuming client's stream ends after 600 KiB of the chunk.
	p := startRawPush(t, e.rpc, true, len(data), data)
	if a := p.answer(); !a.Need || a.Offset != 0 {
		t.Fatalf("first answer %v", a)
	}
	p.data(data[:600<<10])
	p.cut()
	// The daemon has kept the bytes once it asks a resuming client for the rest only; the
	// status may reach the client before the daemon's handler has finished. This waits on
	// state, not on time.
	for deadline := time.Now().Add(30 * time.Second); ; {
		p := startRawPush(t, e.rpc, true, len(data), data)
		a := p.answer()
		p.cut()
		if a.Offset == 600<<10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon never kept the 600 KiB received of a cut chunk (answer %v)", a)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// An older client is asked for the whole chunk, and its push completes.
	p = startRawPush(t, e.rpc, false, len(data), data)
	if a := p.answer(); !a.Need || a.Offset != 0 {
		t.Fatalf("answer to a client that does not resume inside chunks: %v", a)
	}
	p.data(data[:1<<20])
	p.data(data[1<<20:])
	p.send(&registrypb.PushRequest{Msg: &registrypb.PushRequest_FileEnd{FileEnd: &registrypb.FileEnd{Sha256: sum[:]}}})
	p.send(&registrypb.PushRequest{Msg: &registrypb.PushRequest_Commit{Commit: &registrypb.Commit{}}})
	resp, err := p.stream.Recv()
	if err != nil || resp.GetCommitted() == nil || resp.GetCommitted().BytesReceived != uint64(len(data)) {
		t.Fatalf("commit: %v, %v", resp, err)
	}
	if _, err := p.stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after commit: %v", err)
	}
	out := t.TempDir()
	if _, err := e.client.Pull(context.Background(), "m:v1", out, registry.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, map[string][]byte{"w.bin": data})
}

// TestRegistry_KillDaemonKeepsPartialChunk: the part of a chunk a cut push left survives a
// SIGKILL of the daemon, and the push resumes from it after the restart.
func TestRegistry_KillDaemonKeepsPartialChunk(t *testing.T) {
	if testing.Short() {
		t.Skip("starts daemons")
	}
	dir := t.TempDir()
	data := randBytes(94, 6<<20)
	first, _, err := registry.NewChunker(bytes.NewReader(data)).Next()
	if err != nil {
		t.Fatal(err)
	}
	const cut = 600 << 10
	if len(first) <= cut {
		t.Fatalf("the test needs a first chunk over %d bytes, got %d", cut, len(first))
	}
	first = bytes.Clone(first)
	d := startDaemon(t, dir, 0)
	p := startRawPush(t, d.rpc, true, len(data), first)
	if a := p.answer(); !a.Need || a.Offset != 0 {
		t.Fatalf("first answer %v", a)
	}
	p.data(first[:cut])
	p.cut()
	sum := sha256.Sum256(first)
	kept := filepath.Join(dir, "uploads", "*", hex.EncodeToString(sum[:]))
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if m, _ := filepath.Glob(kept); len(m) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the daemon never kept the part received of a cut chunk")
		}
	}
	d.kill()

	d = startDaemon(t, dir, 0)
	src := t.TempDir()
	writeFiles(t, src, map[string][]byte{"w.bin": data})
	res, err := d.client.Push(context.Background(), src, registry.PushOptions{Info: registry.ModelInfo{Name: "m", Version: "v1"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.BytesResumed != cut || res.BytesSent != int64(len(data))-cut {
		t.Errorf("push after a restart resumed %d and sent %d bytes; want %d and %d", res.BytesResumed, res.BytesSent, cut, len(data)-cut)
	}
	out := t.TempDir()
	if _, err := d.client.Pull(context.Background(), "m:v1", out, registry.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, map[string][]byte{"w.bin": data})
	if ents, err := os.ReadDir(filepath.Join(dir, "uploads")); err != nil || len(ents) != 0 {
		t.Errorf("partial chunks left after the push: %v, %v", ents, err)
	}
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

// dataSizes is a client stream interceptor that records the size of every ChunkData message,
// per push stream.
type dataSizes struct {
	mu      sync.Mutex
	streams [][]int
}

func (d *dataSizes) intercept(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
	streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	d.mu.Lock()
	d.streams = append(d.streams, nil)
	i := len(d.streams) - 1
	d.mu.Unlock()
	return &sizedStream{ClientStream: s, d: d, i: i}, err
}

type sizedStream struct {
	grpc.ClientStream
	d *dataSizes
	i int
}

func (s *sizedStream) SendMsg(m any) error {
	if data := m.(interface{ GetData() *registrypb.ChunkData }).GetData(); data != nil {
		s.d.mu.Lock()
		s.d.streams[s.i] = append(s.d.streams[s.i], len(data.Data))
		s.d.mu.Unlock()
	}
	return s.ClientStream.SendMsg(m)
}

// TestRegistry_PushPiecesAfterACut: after a connection broke, a push sends 64 KiB messages (a
// message cut in flight is lost), and back to 1 MiB ones once the new connection has carried
// 16 MiB, so one blip does not slow the rest of a large push.
func TestRegistry_PushPiecesAfterACut(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	data := randBytes(95, 24<<20)
	src := t.TempDir()
	writeFiles(t, src, map[string][]byte{"w.bin": data})
	link := linktest.Start(t, e.conn.Target(), linktest.Options{After: 2 << 20, Faulty: func(n int32) bool { return n == 1 }})
	var sizes dataSizes
	cc, err := grpc.NewClient(link.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithStreamInterceptor(sizes.intercept))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := registry.NewClient(cc).Push(context.Background(), src, registry.PushOptions{
		Info: registry.ModelInfo{Name: "m", Version: "v1"}, Retries: 1}); err != nil || link.Failed() != 1 {
		t.Fatalf("push over a link that drops its first connection: %v (%d drops)", err, link.Failed())
	}
	if len(sizes.streams) != 2 {
		t.Fatalf("%d push streams, want 2", len(sizes.streams))
	}
	var small, large, sent int
	for _, n := range sizes.streams[1] {
		switch {
		case n > 64<<10:
			large++
			if sent < 16<<20 {
				t.Errorf("a %d-byte message after %d bytes of the attempt after a cut", n, sent)
			}
		default:
			small++
		}
		sent += n
	}
	if small == 0 || large == 0 {
		t.Errorf("after a cut: %d messages of at most 64 KiB, %d larger; want both", small, large)
	}
}

// TestRegistry_PushForgedPartRetried: a chunk completed from a kept part that verifies against its
// own checksum but holds wrong bytes fails ABORTED, never stored; the client's retry sends the
// chunk whole and the push completes.
func TestRegistry_PushForgedPartRetried(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	data := randBytes(96, 3<<20)
	first, _, err := registry.NewChunker(bytes.NewReader(data)).Next()
	if err != nil {
		t.Fatal(err)
	}
	first = bytes.Clone(first)
	const cut = 500 << 10
	p := startRawPush(t, e.rpc, true, len(data), first)
	if a := p.answer(); !a.Need || a.Offset != 0 {
		t.Fatalf("first answer %v", a)
	}
	p.data(first[:cut])
	p.cut()
	sum := sha256.Sum256(first)
	var kept string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if m, _ := filepath.Glob(filepath.Join(e.dir, "uploads", "*", hex.EncodeToString(sum[:]))); len(m) == 1 {
			kept = m[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the daemon never kept the part received of a cut chunk")
		}
	}
	forged := bytes.Clone(first[:cut])
	forged[12345] ^= 0x80
	check := sha256.Sum256(forged)
	if err := os.WriteFile(kept, append(forged, check[:]...), 0o600); err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	writeFiles(t, src, map[string][]byte{"w.bin": data})
	res, err := e.client.Push(context.Background(), src, registry.PushOptions{Info: registry.ModelInfo{Name: "m", Version: "v1"}, Retries: 1})
	if err != nil || res.Attempts != 2 {
		t.Fatalf("push after a forged part: %v in %d attempts; want success in 2", err, res.Attempts)
	}
	out := t.TempDir()
	if _, err := e.client.Pull(context.Background(), "m:v1", out, registry.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, map[string][]byte{"w.bin": data})
	vr, err := e.rpc.Verify(context.Background(), &registrypb.VerifyRequest{})
	if err != nil || len(vr.Corrupt) != 0 {
		t.Fatalf("verify after the push: %v, %v", vr, err)
	}
}
