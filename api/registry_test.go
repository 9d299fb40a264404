package api_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/buffdb/buffdbd/api"
	blobpb "github.com/buffdb/buffdbd/api/proto/blobpb"
	registrypb "github.com/buffdb/buffdbd/api/proto/registrypb"
	"github.com/buffdb/buffdbd/internal/linktest"
	"github.com/buffdb/buffdbd/registry"
	"github.com/buffdb/buffdbd/store"
)

func push(t testing.TB, e *regEnv, src, name, version string, aliases ...string) registry.PushResult {
	t.Helper()
	res, err := e.client.Push(context.Background(), src, registry.PushOptions{
		Info:    registry.ModelInfo{Name: name, Version: version, Framework: "onnx", Parameters: map[string]string{"task": "nlp"}},
		Aliases: aliases,
	})
	if err != nil {
		t.Fatalf("push %s:%s: %v", name, version, err)
	}
	return res
}

func TestRegistry_PushPull(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	src := t.TempDir()
	files := map[string][]byte{
		"config.json":            []byte(`{"hidden": 768}`),
		"model.safetensors":      randBytes(1, 21<<20+17),
		"onnx/model.onnx":        randBytes(2, 3<<20),
		"tokenizer/vocab.txt":    randBytes(3, 100),
		"empty.txt":              {},
		"onnx/dup-of-model.onnx": randBytes(2, 3<<20), // identical content: stored once
	}
	writeFiles(t, src, files)
	res := push(t, e, src, "org/bert", "v1", "production")
	if res.Files != len(files) || res.Info.Version != "v1" {
		t.Fatalf("push result %+v", res)
	}
	if res.BytesSent >= res.Bytes {
		t.Errorf("sent %d of %d bytes; the duplicate file should not be sent twice", res.BytesSent, res.Bytes)
	}

	out := t.TempDir()
	pr, err := e.client.Pull(context.Background(), "org/bert@production", out, registry.PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, files)
	if dup := int64(len(files["onnx/dup-of-model.onnx"])); pr.BytesReceived != pr.Bytes-dup || pr.BytesLocal != dup {
		t.Errorf("pull into an empty dir received %d and copied %d of %d bytes; want all but the duplicate received", pr.BytesReceived, pr.BytesLocal, pr.Bytes)
	}

	show, err := e.rpc.Show(context.Background(), &registrypb.ShowRequest{Ref: "org/bert:v1"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(show.Aliases, []string{"latest", "production"}) || show.LastPulled == nil || len(show.Files) != len(files) {
		t.Errorf("show = aliases %v, last pulled %v, %d files", show.Aliases, show.LastPulled, len(show.Files))
	}
	for _, f := range show.Files {
		if want := sha256.Sum256(files[f.Path]); string(f.Sha256) != string(want[:]) || f.Size != uint64(len(files[f.Path])) {
			t.Errorf("show %s: size %d sha %x", f.Path, f.Size, f.Sha256)
		}
	}
	list, err := e.rpc.ListModels(context.Background(), &registrypb.ListModelsRequest{Framework: "onnx", Parameters: map[string]string{"task": "nlp"}})
	if err != nil || len(list.Models) != 1 || list.Models[0].Aliases["production"] != "v1" {
		t.Fatalf("list = %v, %v", list, err)
	}
	for _, f := range []*registrypb.ListModelsRequest{{Framework: "pytorch"}, {Parameters: map[string]string{"task": "cv"}}, {Prefix: "other"}} {
		if list, err := e.rpc.ListModels(context.Background(), f); err != nil || len(list.Models) != 0 {
			t.Errorf("list %v = %v, %v; want none", f, list, err)
		}
	}
}

// TestRegistry_BuffDBKeys checks BuffDB's conventions: ModelInfo JSON with exactly its fields, the
// indexes, and blob_ids that concatenate to a single-file model when fetched the way BuffDB clients
// do, one Blob.Get per id over a connection with gRPC's default 4 MiB receive limit.
func TestRegistry_BuffDBKeys(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	// Zeros never hit a cut point, so the file holds chunks of exactly MaxChunkSize: the largest
	// message a BuffDB client can be sent for a model.
	data := append(randBytes(7, 9<<20+3), make([]byte, 9<<20)...)
	src := filepath.Join(t.TempDir(), "weights.bin")
	writeFiles(t, filepath.Dir(src), map[string][]byte{"weights.bin": data})
	push(t, e, src, "resnet", "1.0")
	push(t, e, src, "resnet", "1.1")
	ctx := context.Background()
	meta, err := e.db.Get(ctx, "", "model:resnet:1.0:metadata")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(meta), &m); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	want := []string{"blob_ids", "created_at", "description", "framework", "input_shape", "name", "output_shape", "parameters", "version"}
	if !slices.Equal(keys, want) {
		t.Fatalf("metadata fields %v, want %v", keys, want)
	}
	var info registry.ModelInfo
	if err := json.Unmarshal([]byte(meta), &info); err != nil {
		t.Fatal(err)
	}
	get, err := blobpb.NewBlobClient(e.conn).Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var joined []byte
	for _, id := range info.BlobIDs {
		if err := get.Send(&blobpb.GetRequest{Id: id}); err != nil {
			t.Fatal(err)
		}
		r, err := get.Recv()
		if err != nil {
			t.Fatalf("Blob.Get(%d) with default client limits: %v", id, err)
		}
		joined = append(joined, r.GetBytes()...)
	}
	get.CloseSend()
	if string(joined) != string(data) {
		t.Fatalf("blob_ids %v concatenate to %d bytes, not the pushed file", info.BlobIDs, len(joined))
	}
	for key, want := range map[string]string{"model:resnet:index": `["1.0","1.1"]`, "model:global:index": `["resnet"]`} {
		if got, err := e.db.Get(ctx, "", key); err != nil || got != want {
			t.Errorf("%s = %s, %v; want %s", key, got, err, want)
		}
	}
	if _, err := e.rpc.DeleteVersion(ctx, &registrypb.DeleteVersionRequest{Ref: "resnet:1.0"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.db.Get(ctx, "", "model:resnet:index"); got != `["1.1"]` {
		t.Errorf("index after delete = %s", got)
	}
	if _, err := e.db.Get(ctx, "", "model:resnet:1.0:metadata"); err == nil {
		t.Error("metadata of a deleted version is still there")
	}
	// The shared chunks are still referenced by 1.1 and must still be readable.
	out := t.TempDir()
	if _, err := e.client.Pull(ctx, "resnet", out, registry.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, map[string][]byte{"weights.bin": data})
}

func sharedVersions(t testing.TB) (v1, v2 map[string][]byte) {
	base := randBytes(11, 40<<20)
	// v2: a 64 KiB patch overwritten in the middle, 1 MiB inserted later, and a changed config.
	edited := slices.Clone(base)
	copy(edited[12<<20:], randBytes(12, 64<<10))
	edited = slices.Concat(edited[:30<<20], randBytes(13, 1<<20), edited[30<<20:])
	return map[string][]byte{"model.bin": base, "config.json": []byte(`{"v": 1}`)},
		map[string][]byte{"model.bin": edited, "config.json": []byte(`{"v": 2}`)}
}

func TestRegistry_DeltaPushPull(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	v1, v2 := sharedVersions(t)
	s1, s2 := t.TempDir(), t.TempDir()
	writeFiles(t, s1, v1)
	writeFiles(t, s2, v2)
	push(t, e, s1, "llm", "v1")
	res := push(t, e, s2, "llm", "v2")
	// Only the chunks around the two edits travel: at most ~4 average chunks plus the inserted MiB.
	if limit := int64(4*registry.AvgChunkSize + 1<<20); res.BytesSent > limit || res.BytesSent == 0 {
		t.Errorf("delta push sent %d of %d bytes, want (0, %d]", res.BytesSent, res.Bytes, limit)
	}
	if res.BytesReused+res.BytesSent != res.Bytes {
		t.Errorf("sent %d + reused %d != %d", res.BytesSent, res.BytesReused, res.Bytes)
	}

	dev := t.TempDir()
	if _, err := e.client.Pull(context.Background(), "llm:v1", dev, registry.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	pr, err := e.client.Pull(context.Background(), "llm:v2", dev, registry.PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertTree(t, dev, v2)
	if limit := int64(4*registry.AvgChunkSize + 1<<20); pr.BytesReceived > limit || pr.BytesReceived == 0 {
		t.Errorf("delta pull received %d of %d bytes, want (0, %d]", pr.BytesReceived, pr.Bytes, limit)
	}
	// Pulling again is a no-op: every file is already complete.
	pr, err = e.client.Pull(context.Background(), "llm:v2", dev, registry.PullOptions{})
	if err != nil || pr.BytesReceived != 0 {
		t.Errorf("repeated pull received %d bytes, %v", pr.BytesReceived, err)
	}
}

func TestRegistry_ResumePush(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	data := randBytes(21, 48<<20)
	src := t.TempDir()
	writeFiles(t, src, map[string][]byte{"m.bin": data})
	ctx, cancel := context.WithCancel(context.Background())
	var cutAt int64
	_, err := e.client.Push(ctx, src, registry.PushOptions{
		Info: registry.ModelInfo{Name: "cut", Version: "v1"},
		Progress: func(done, total int64) {
			if done >= total*3/4 && cutAt == 0 {
				cutAt = done
				cancel() // the client vanishes mid-push
			}
		},
	})
	if status.Code(err) != codes.Canceled {
		t.Fatalf("cut push: %v", err)
	}
	if ok, _ := e.reg.HasVersion(context.Background(), "cut", "v1"); ok {
		t.Fatal("a cut push left a visible version")
	}
	res, err := e.client.Push(context.Background(), src, registry.PushOptions{Info: registry.ModelInfo{Name: "cut", Version: "v1"}})
	if err != nil {
		t.Fatal(err)
	}
	// What was durable before the cut is not sent again: at most the chunks in flight at the cut.
	if max := res.Bytes - cutAt + 3*registry.MaxChunkSize; res.BytesSent > max || res.BytesReused == 0 {
		t.Errorf("resumed push sent %d bytes (reused %d) after a cut at %d of %d", res.BytesSent, res.BytesReused, cutAt, res.Bytes)
	}
	out := t.TempDir()
	if _, err := e.client.Pull(context.Background(), "cut:v1", out, registry.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, map[string][]byte{"m.bin": data})
}

func TestRegistry_ResumePull(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	files := map[string][]byte{"a.bin": randBytes(31, 20<<20), "b.bin": randBytes(32, 20<<20)}
	src := t.TempDir()
	writeFiles(t, src, files)
	push(t, e, src, "big", "v1")
	out := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	var cutAt int64
	_, err := e.client.Pull(ctx, "big", out, registry.PullOptions{NoDelta: true, Progress: func(done, total int64) {
		if done >= total*3/4 && cutAt == 0 {
			cutAt = done
			cancel()
		}
	}})
	if status.Code(err) != codes.Canceled && !errors.Is(err, context.Canceled) {
		t.Fatalf("cut pull: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, "b.bin")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a cut pull left a final file: %v", err)
	}
	pr, err := e.client.Pull(context.Background(), "big", out, registry.PullOptions{NoDelta: true})
	if err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, files)
	// The resumed file is checked chunk by chunk: what follows its last whole chunk is fetched again.
	if pr.BytesReceived > pr.Bytes-cutAt+registry.PullPieceSize+registry.MaxChunkSize || pr.BytesLocal == 0 {
		t.Errorf("resumed pull received %d (local %d) after a cut at %d of %d", pr.BytesReceived, pr.BytesLocal, cutAt, pr.Bytes)
	}
}

// TestRegistry_PushSymlinks: a Hugging Face cache snapshot (every file a symlink into blobs/) pushes
// the files the links point at, under the links' names, also when the snapshot directory itself is
// given through a symlink; a link to a directory or a broken link is an error naming it.
func TestRegistry_PushSymlinks(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	cache := t.TempDir()
	files := map[string][]byte{"model.safetensors": randBytes(51, 3<<20), "config.json": []byte(`{"a":1}`), "onnx/model.onnx": randBytes(52, 100<<10)}
	snap := filepath.Join(cache, "snapshots", "abc")
	for i, name := range []string{"model.safetensors", "config.json", "onnx/model.onnx"} {
		blob := filepath.Join(cache, "blobs", fmt.Sprint("b", i))
		os.MkdirAll(filepath.Dir(blob), 0o755)
		os.WriteFile(blob, files[name], 0o644)
		link := filepath.Join(snap, name)
		os.MkdirAll(filepath.Dir(link), 0o755)
		rel, _ := filepath.Rel(filepath.Dir(link), blob)
		if err := os.Symlink(rel, link); err != nil {
			t.Fatal(err)
		}
	}
	current := filepath.Join(cache, "current")
	os.Symlink(snap, current)
	for i, src := range []string{snap, current} {
		v := fmt.Sprint("v", i)
		res := push(t, e, src, "snap", v)
		if res.Files != len(files) {
			t.Fatalf("push of %s: %d files, want %d", src, res.Files, len(files))
		}
		out := t.TempDir()
		if _, err := e.client.Pull(context.Background(), "snap:"+v, out, registry.PullOptions{}); err != nil {
			t.Fatal(err)
		}
		assertTree(t, out, files)
	}
	for name, target := range map[string]string{"dirlink": filepath.Join(cache, "blobs"), "broken": filepath.Join(cache, "nothing")} {
		bad := t.TempDir()
		os.WriteFile(filepath.Join(bad, "ok.bin"), []byte("x"), 0o644)
		os.Symlink(target, filepath.Join(bad, name))
		_, err := e.client.Push(context.Background(), bad, registry.PushOptions{Info: registry.ModelInfo{Name: "bad", Version: name}})
		if err == nil || !strings.Contains(err.Error(), filepath.Join(bad, name)) {
			t.Fatalf("push with a %s: %v, want an error naming it", name, err)
		}
	}
}

// TestRegistry_RepushRepairs: pushing a published version again with the same content succeeds,
// sends nothing and announces no new version; after verify marked a chunk corrupt, the re-push
// sends just that chunk and the version pulls again.
func TestRegistry_RepushRepairs(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	ctx := context.Background()
	data := randBytes(81, 9<<20)
	src := t.TempDir()
	writeFiles(t, src, map[string][]byte{"w.bin": data})
	first := push(t, e, src, "rp", "v1")
	again := push(t, e, src, "rp", "v1", "prod")
	if again.BytesSent != 0 {
		t.Fatalf("re-push of unchanged content sent %d bytes", again.BytesSent)
	}
	if v, err := e.reg.ResolveAlias(ctx, "rp", "prod"); err != nil || v != "v1" {
		t.Fatalf("alias given with the re-push: %q, %v", v, err)
	}
	vi, err := e.reg.Show(ctx, registry.Ref{Name: "rp", Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	c := vi.Files[0].Chunks[2]
	payload := filepath.Join(e.db.Dir(), "payloads", hex.EncodeToString(c.SHA256[:1]), hex.EncodeToString(c.SHA256[:]))
	f, err := os.OpenFile(payload, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("rot"), 7)
	f.Close()
	if res, err := e.reg.Verify(ctx, nil, nil); err != nil || len(res.Corrupt) != 1 {
		t.Fatalf("verify: %+v, %v", res, err)
	}
	healed := push(t, e, src, "rp", "v1")
	if healed.BytesSent != c.Size {
		t.Fatalf("repairing re-push sent %d bytes, want the damaged chunk's %d (first push sent %d)", healed.BytesSent, c.Size, first.BytesSent)
	}
	if res, err := e.reg.Verify(ctx, nil, nil); err != nil || len(res.Corrupt) != 0 {
		t.Fatalf("verify after the re-push: %+v, %v", res, err)
	}
	out := t.TempDir()
	if _, err := e.client.Pull(ctx, "rp:v1", out, registry.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, map[string][]byte{"w.bin": data})
}

// TestRegistry_ChunkBlobsProtected: the Blob API cannot delete or replace the blob of a registry
// chunk (every version sharing it would break); metadata stays writable; model rm frees it.
func TestRegistry_ChunkBlobsProtected(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	ctx := context.Background()
	data := randBytes(71, 3<<20)
	src := t.TempDir()
	writeFiles(t, src, map[string][]byte{"w.bin": data})
	push(t, e, src, "prot", "v1")
	vi, err := e.reg.Show(ctx, registry.Ref{Name: "prot", Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	id := vi.Info.BlobIDs[0]
	bc := blobpb.NewBlobClient(e.conn)
	del, _ := bc.Delete(ctx)
	del.Send(&blobpb.DeleteRequest{Id: id})
	if _, err := del.Recv(); status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "chunk of the model registry") {
		t.Fatalf("Blob Delete of a chunk: %v, want FAILED_PRECONDITION naming the registry", err)
	}
	meta := "note"
	for _, req := range []*blobpb.UpdateRequest{{Id: id, Bytes: []byte("other")}, {Id: id, ShouldUpdateMetadata: true, Metadata: &meta}} {
		up, _ := bc.Update(ctx)
		up.Send(req)
		_, err := up.Recv()
		if req.Bytes != nil && status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("Blob Update of a chunk's bytes: %v, want FAILED_PRECONDITION", err)
		}
		if req.Bytes == nil && err != nil {
			t.Fatalf("Blob Update of a chunk's metadata: %v", err)
		}
	}
	out := t.TempDir()
	if _, err := e.client.Pull(ctx, "prot:v1", out, registry.PullOptions{}); err != nil {
		t.Fatalf("pull after refused blob writes: %v", err)
	}
	if _, err := e.reg.DeleteVersion(ctx, registry.Ref{Name: "prot", Version: "v1"}, false); err != nil {
		t.Fatal(err)
	}
	e.reg.CollectGarbage(ctx)
	if _, err := e.db.GetBlob(ctx, "", id); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the chunk's blob after model rm: %v, want it deleted by the registry", err)
	}
}

// TestRegistry_ResumeOtherVersionsPartial: a partial file left by an interrupted pull of another
// version (same path and size, other bytes) is not resumed as if it were this version's.
func TestRegistry_ResumeOtherVersionsPartial(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	a, b := map[string][]byte{"w.bin": randBytes(91, 12<<20)}, map[string][]byte{"w.bin": randBytes(92, 12<<20)}
	for v, files := range map[string]map[string][]byte{"a": a, "b": b} {
		src := t.TempDir()
		writeFiles(t, src, files)
		push(t, e, src, "up", v)
	}
	out := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	e.client.Pull(ctx, "up:a", out, registry.PullOptions{NoDelta: true, Progress: func(done, total int64) {
		if done >= total/2 {
			cancel()
		}
	}})
	if _, err := os.Stat(filepath.Join(out, "w.bin"+registry.PartialSuffix)); err != nil {
		t.Fatalf("the cut pull left no partial file: %v", err)
	}
	if _, err := e.client.Pull(context.Background(), "up:b", out, registry.PullOptions{NoDelta: true}); err != nil {
		t.Fatalf("pull of b over a's partial file: %v", err)
	}
	assertTree(t, out, b)
}

// TestRegistry_PullBlockedByDirectory: a directory where a file of the version goes fails the pull
// before any file is moved into place, so the output never holds half the version.
func TestRegistry_PullBlockedByDirectory(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	files := map[string][]byte{"a.json": []byte("{}"), "w.bin": randBytes(61, 1<<20)}
	src := t.TempDir()
	writeFiles(t, src, files)
	push(t, e, src, "blk", "v1")
	out := t.TempDir()
	os.MkdirAll(filepath.Join(out, "w.bin", "inner"), 0o755)
	_, err := e.client.Pull(context.Background(), "blk:v1", out, registry.PullOptions{})
	if err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Fatalf("pull onto a directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, "a.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a.json was moved into place although the pull failed: %v", err)
	}
	os.RemoveAll(filepath.Join(out, "w.bin"))
	if _, err := e.client.Pull(context.Background(), "blk:v1", out, registry.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, files)
}

// TestRegistry_PullDirBusy: a second pull into a directory a pull is writing is refused (they would
// share partial files, and one could report success with the other version's bytes); the first
// completes with its own bytes, and the directory is free again afterwards.
func TestRegistry_PullDirBusy(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	v1 := map[string][]byte{"w.bin": randBytes(41, 12<<20)}
	v2 := map[string][]byte{"w.bin": randBytes(42, 12<<20)}
	for v, files := range map[string]map[string][]byte{"v1": v1, "v2": v2} {
		src := t.TempDir()
		writeFiles(t, src, files)
		push(t, e, src, "m", v)
	}
	out := t.TempDir()
	started := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	first := make(chan error, 1)
	go func() {
		_, err := e.client.Pull(context.Background(), "m:v1", out, registry.PullOptions{Progress: func(done, total int64) {
			once.Do(func() { close(started); <-release }) // hold the pull mid-way
		}})
		first <- err
	}()
	<-started
	_, err := e.client.Pull(context.Background(), "m:v2", out, registry.PullOptions{})
	close(release)
	if !errors.Is(err, registry.ErrBusy) {
		t.Fatalf("second pull into a busy directory: %v, want ErrBusy", err)
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, v1)
	if _, err := e.client.Pull(context.Background(), "m:v2", out, registry.PullOptions{}); err != nil {
		t.Fatalf("pull after the first ended: %v", err)
	}
	assertTree(t, out, v2)
}

func TestRegistry_RangePull(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	data := randBytes(41, 10<<20)
	pushOneFile(t, e, "r", "v1", data)
	stream, err := e.rpc.Pull(context.Background(), &registrypb.PullRequest{Ref: "r:v1",
		Ranges: []*registrypb.FileRange{{Path: "m.bin", Offset: 3<<20 + 5, Length: 4 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	var got []byte
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if d := m.GetData(); d != nil {
			if len(d.Data) > registry.PullPieceSize || d.Offset != uint64(3<<20+5+len(got)) {
				t.Fatalf("piece of %d bytes at %d", len(d.Data), d.Offset)
			}
			got = append(got, d.Data...)
		}
	}
	if string(got) != string(data[3<<20+5:7<<20+5]) {
		t.Fatalf("range pull returned %d bytes that differ", len(got))
	}
}

func TestRegistry_Eviction(t *testing.T) {
	const size = 3 << 20
	e := startRegistry(t, registry.Options{MaxBytes: 3*size + size/2})
	ctx := context.Background()
	src := func(seed uint64, n int) string {
		d := t.TempDir()
		writeFiles(t, d, map[string][]byte{"m.bin": randBytes(seed, n)})
		return d
	}
	push(t, e, src(1, size), "m", "v1")
	push(t, e, src(2, size), "m", "v2")
	push(t, e, src(3, size), "m", "v3")
	if _, err := e.client.Pull(ctx, "m:v1", t.TempDir(), registry.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	versions := func() []string {
		vs, err := e.reg.ListVersions(ctx, "m")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, v := range vs {
			out = append(out, v.Version)
		}
		return out
	}
	// v4 does not fit with v1..v3: v2 is the least recently used (v1 was pulled, v3 was latest).
	push(t, e, src(4, size), "m", "v4")
	if got := versions(); !slices.Equal(got, []string{"v1", "v3", "v4"}) {
		t.Fatalf("after v4: %v, want v2 evicted", got)
	}
	// A pinned or aliased version is never evicted: pin v3 (now the LRU), alias v1.
	if _, err := e.rpc.SetPinned(ctx, &registrypb.SetPinnedRequest{Ref: "m:v3", Pinned: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.rpc.SetAlias(ctx, &registrypb.SetAliasRequest{Name: "m", Alias: "prod", Version: "v1"}); err != nil {
		t.Fatal(err)
	}
	push(t, e, src(5, size), "m", "v5")
	if got := versions(); !slices.Equal(got, []string{"v1", "v3", "v5"}) {
		t.Fatalf("after v5: %v, want v4 evicted", got)
	}
	// A version that cannot fit even after evicting everything evictable (v5, which would lose
	// latest) fails with RESOURCE_EXHAUSTED and changes nothing: v5 is still there and still latest.
	before, _ := e.reg.Stats(ctx)
	_, err := e.client.Push(ctx, src(6, 2*size), registry.PushOptions{Info: registry.ModelInfo{Name: "m", Version: "v6"}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("push over budget: %v, want ResourceExhausted", err)
	}
	if got := versions(); !slices.Equal(got, []string{"v1", "v3", "v5"}) {
		t.Fatalf("after failed v6: %v", got)
	}
	if v, _ := e.reg.ResolveAlias(ctx, "m", "latest"); v != "v5" {
		t.Fatalf("latest = %s after a failed push", v)
	}
	after, _ := e.reg.Stats(ctx)
	if after.Versions != before.Versions {
		t.Fatalf("stats changed: %+v -> %+v", before, after)
	}
}

func TestRegistry_Watch(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	src := t.TempDir()
	writeFiles(t, src, map[string][]byte{"m.bin": randBytes(51, 1<<20)})
	push(t, e, src, "w", "v1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := e.rpc.Watch(ctx, &registrypb.WatchRequest{Name: "w"})
	if err != nil {
		t.Fatal(err)
	}
	recv := func() *registrypb.WatchEvent {
		t.Helper()
		ev, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	if ev := recv(); ev.Kind != registrypb.WatchEvent_READY {
		t.Fatalf("first event %v, want READY", ev)
	}
	writeFiles(t, src, map[string][]byte{"m.bin": randBytes(52, 1<<20)})
	push(t, e, src, "w", "v2")
	if ev := recv(); ev.Kind != registrypb.WatchEvent_PUBLISHED || ev.Version != "v2" {
		t.Fatalf("got %v, want PUBLISHED v2", ev)
	}
	if ev := recv(); ev.Kind != registrypb.WatchEvent_ALIAS_SET || ev.Alias != "latest" || ev.Version != "v2" || ev.Previous != "v1" {
		t.Fatalf("got %v, want latest v1 -> v2", ev)
	}
	if _, err := e.rpc.SetAlias(ctx, &registrypb.SetAliasRequest{Name: "w", Alias: "production", Version: "v2"}); err != nil {
		t.Fatal(err)
	}
	if ev := recv(); ev.Kind != registrypb.WatchEvent_ALIAS_SET || ev.Alias != "production" || ev.Version != "v2" {
		t.Fatalf("got %v, want production -> v2", ev)
	}
	if _, err := e.rpc.SetAlias(ctx, &registrypb.SetAliasRequest{Name: "w", Alias: "production", Version: "v1"}); err != nil {
		t.Fatal(err)
	}
	if ev := recv(); ev.Alias != "production" || ev.Version != "v1" || ev.Previous != "v2" {
		t.Fatalf("got %v, want production v2 -> v1", ev)
	}
}

func TestRegistry_Errors(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	ctx := context.Background()
	src := t.TempDir()
	writeFiles(t, src, map[string][]byte{"m.bin": randBytes(61, 2<<20)})
	push(t, e, src, "e", "v1", "prod")

	code := func(err error) codes.Code { return status.Code(err) }
	cases := []struct {
		name string
		err  error
		want codes.Code
	}{}
	add := func(name string, err error, want codes.Code) {
		cases = append(cases, struct {
			name string
			err  error
			want codes.Code
		}{name, err, want})
	}
	_, err := e.client.Push(ctx, src, registry.PushOptions{Info: registry.ModelInfo{Name: "bad:name", Version: "v1"}})
	add("InvalidName", err, codes.InvalidArgument)
	_, err = e.client.Push(ctx, src, registry.PushOptions{Info: registry.ModelInfo{Name: "e", Version: "../v"}})
	add("InvalidVersion", err, codes.InvalidArgument)
	other := t.TempDir()
	writeFiles(t, other, map[string][]byte{"m.bin": randBytes(62, 2<<20)}) // same path and size, other bytes
	_, err = e.client.Push(ctx, other, registry.PushOptions{Info: registry.ModelInfo{Name: "e", Version: "v1"}})
	add("Exists", err, codes.AlreadyExists)
	writeFiles(t, other, map[string][]byte{"other.bin": []byte("x")})
	_, err = e.client.Push(ctx, other, registry.PushOptions{Info: registry.ModelInfo{Name: "e", Version: "v1"}})
	add("ExistsOtherFiles", err, codes.AlreadyExists)
	_, err = e.rpc.Show(ctx, &registrypb.ShowRequest{Ref: "e:v9"})
	add("ShowMissing", err, codes.NotFound)
	_, err = e.rpc.Show(ctx, &registrypb.ShowRequest{Ref: "e@nope"})
	add("AliasMissing", err, codes.NotFound)
	_, err = e.rpc.DeleteVersion(ctx, &registrypb.DeleteVersionRequest{Ref: "e:v1"})
	add("DeleteAliased", err, codes.FailedPrecondition)
	_, err = e.rpc.SetAlias(ctx, &registrypb.SetAliasRequest{Name: "e", Alias: "x", Version: "v9"})
	add("AliasToMissing", err, codes.NotFound)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if code(c.err) != c.want {
				t.Fatalf("got %v, want %v", c.err, c.want)
			}
		})
	}

	// A bare name means name@latest; when nothing by that name exists, the error says the model
	// is missing, not an alias. A missing alias of an existing model lists the aliases it has.
	t.Run("NotFoundSaysWhat", func(t *testing.T) {
		for _, tc := range []struct{ ref, want string }{
			{"nobody", "model nobody"},
			{"e@nope", "alias e@nope (its aliases: latest, prod)"},
		} {
			_, err := e.rpc.Show(ctx, &registrypb.ShowRequest{Ref: tc.ref})
			if code(err) != codes.NotFound || !strings.Contains(status.Convert(err).Message(), tc.want) {
				t.Fatalf("Show %s: %v, want NOT_FOUND naming %q", tc.ref, err, tc.want)
			}
		}
	})
	// latest is the registry's: moving or removing it by hand would break bare-name refs.
	t.Run("ErrLatestByHand", func(t *testing.T) {
		if _, err := e.rpc.RemoveAlias(ctx, &registrypb.RemoveAliasRequest{Name: "e", Alias: "latest"}); code(err) != codes.InvalidArgument ||
			!strings.Contains(status.Convert(err).Message(), "maintained automatically") {
			t.Fatalf("remove latest: %v, want INVALID_ARGUMENT", err)
		}
		if _, err := e.rpc.SetAlias(ctx, &registrypb.SetAliasRequest{Name: "e", Alias: "latest", Version: "v1"}); code(err) != codes.InvalidArgument {
			t.Fatalf("set latest: %v, want INVALID_ARGUMENT", err)
		}
		if _, err := e.rpc.Show(ctx, &registrypb.ShowRequest{Ref: "e"}); err != nil {
			t.Fatalf("Show e after refused changes to latest: %v", err)
		}
	})

	raw := func(t *testing.T, msgs ...*registrypb.PushRequest) error {
		t.Helper()
		stream, err := e.rpc.Push(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if err := stream.Send(m); err != nil {
				break
			}
		}
		stream.CloseSend()
		for {
			if _, err := stream.Recv(); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
		}
	}
	open := &registrypb.PushRequest{Msg: &registrypb.PushRequest_Open{Open: &registrypb.PushOpen{Info: &registrypb.ModelInfo{Name: "raw", Version: "v1"}}}}
	begin := func(p string, n uint64) *registrypb.PushRequest {
		return &registrypb.PushRequest{Msg: &registrypb.PushRequest_FileBegin{FileBegin: &registrypb.FileBegin{Path: p, Size: n}}}
	}
	data := []byte("hello world")
	sum := sha256.Sum256(data)
	offer := &registrypb.PushRequest{Msg: &registrypb.PushRequest_Offer{Offer: &registrypb.ChunkOffer{Sha256: sum[:], Size: uint64(len(data))}}}
	send := func(b []byte) *registrypb.PushRequest {
		return &registrypb.PushRequest{Msg: &registrypb.PushRequest_Data{Data: &registrypb.ChunkData{Data: b}}}
	}
	end := func(s []byte) *registrypb.PushRequest {
		return &registrypb.PushRequest{Msg: &registrypb.PushRequest_FileEnd{FileEnd: &registrypb.FileEnd{Sha256: s}}}
	}
	commit := &registrypb.PushRequest{Msg: &registrypb.PushRequest_Commit{Commit: &registrypb.Commit{}}}
	wrong := sha256.Sum256([]byte("other"))
	sum2 := sha256.Sum256([]byte("fresh"))
	offer2 := &registrypb.PushRequest{Msg: &registrypb.PushRequest_Offer{Offer: &registrypb.ChunkOffer{Sha256: sum2[:], Size: 5}}}
	sum3 := sha256.Sum256([]byte("third"))
	offer3 := &registrypb.PushRequest{Msg: &registrypb.PushRequest_Offer{Offer: &registrypb.ChunkOffer{Sha256: sum3[:], Size: 5}}}

	for _, c := range []struct {
		name string
		msgs []*registrypb.PushRequest
		want codes.Code
	}{
		{"PathEscapes", []*registrypb.PushRequest{open, begin("../etc/passwd", 11)}, codes.InvalidArgument},
		{"PathAbsolute", []*registrypb.PushRequest{open, begin("/etc/passwd", 11)}, codes.InvalidArgument},
		{"PathNUL", []*registrypb.PushRequest{open, begin("a\x00b", 11)}, codes.InvalidArgument},
		{"ChunkMismatch", []*registrypb.PushRequest{open, begin("f", 11), offer, send([]byte("HELLO WORLD")), end(sum[:]), commit}, codes.DataLoss},
		{"FileMismatch", []*registrypb.PushRequest{open, begin("f", 11), offer, send(data), end(wrong[:]), commit}, codes.DataLoss},
		{"ChunkMismatchNoFileSum", []*registrypb.PushRequest{open, begin("f", 5), offer3, send([]byte("THIRD")), end(nil), commit}, codes.DataLoss},
		{"ShortDigest", []*registrypb.PushRequest{open, begin("f", 11), offer, send(data), end(sum[:31]), commit}, codes.InvalidArgument},
		{"Oversize", []*registrypb.PushRequest{open, begin("f", 1<<30), {Msg: &registrypb.PushRequest_Offer{Offer: &registrypb.ChunkOffer{Sha256: sum[:], Size: 64 << 20}}}}, codes.ResourceExhausted},
		{"MissingData", []*registrypb.PushRequest{open, begin("f", 5), offer2, end(sum2[:]), commit}, codes.FailedPrecondition},
		{"NoCommit", []*registrypb.PushRequest{open, begin("f", 11), offer, send(data), end(sum[:])}, codes.InvalidArgument},
		{"NoOpen", []*registrypb.PushRequest{begin("f", 11)}, codes.InvalidArgument},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := raw(t, c.msgs...); status.Code(err) != c.want {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			if ok, _ := e.reg.HasVersion(ctx, "raw", "v1"); ok {
				t.Fatal("a failed push left a visible version")
			}
		})
	}
	t.Run("RawOK", func(t *testing.T) {
		okData := []byte("fresh bytes for the successful push")
		okSum := sha256.Sum256(okData)
		okOffer := &registrypb.PushRequest{Msg: &registrypb.PushRequest_Offer{Offer: &registrypb.ChunkOffer{Sha256: okSum[:], Size: uint64(len(okData))}}}
		if err := raw(t, open, begin("f", uint64(len(okData))), okOffer, send(okData), end(okSum[:]), commit); err != nil {
			t.Fatal(err)
		}
		if ok, _ := e.reg.HasVersion(ctx, "raw", "v1"); !ok {
			t.Fatal("version not visible after commit")
		}
	})
}

func TestRegistry_GCAndVerify(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { return now }
	e := startRegistry(t, registry.Options{SessionTTL: time.Hour, Now: clock})
	ctx := context.Background()
	src := t.TempDir()
	writeFiles(t, src, map[string][]byte{"m.bin": randBytes(71, 24<<20)})
	push(t, e, src, "g", "v1")
	// An abandoned push of different content leaves durable chunks pinned to its session. It is
	// driven through the Go API so that it has fully ended (writers done) before GC runs.
	up, err := e.reg.OpenUpload(ctx, registry.ModelInfo{Name: "g", Version: "v2"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	orphan := randBytes(72, 3<<20)
	if err := up.BeginFile("m.bin", 24<<20); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		piece := orphan[i<<20 : (i+1)<<20]
		need, err := up.Offer(ctx, sha256.Sum256(piece), int64(len(piece)))
		if err != nil || !need {
			t.Fatalf("offer: %v, %v", need, err)
		}
		if err := up.Write(piece); err != nil {
			t.Fatal(err)
		}
	}
	up.Close()
	st, _ := e.reg.Stats(ctx)
	if st.SessionsOpen != 1 {
		t.Fatalf("%d sessions open after an abandoned push", st.SessionsOpen)
	}
	// Not expired yet: GC keeps the session's chunks so the push can resume.
	res, err := e.reg.CollectGarbage(ctx)
	if err != nil || res.Chunks != 0 || res.Sessions != 0 {
		t.Fatalf("gc before expiry = %+v, %v", res, err)
	}
	now = now.Add(2 * time.Hour)
	res, err = e.reg.CollectGarbage(ctx)
	if err != nil || res.Sessions != 1 || res.Chunks == 0 {
		t.Fatalf("gc after expiry = %+v, %v", res, err)
	}
	after, _ := e.reg.Stats(ctx)
	if after.Chunks >= st.Chunks || after.StoredBytes != after.LogicalBytes {
		t.Fatalf("after gc: %+v (before %+v)", after, st)
	}

	v, err := e.rpc.Verify(ctx, &registrypb.VerifyRequest{})
	if err != nil || len(v.Corrupt) != 0 || v.Bytes != 24<<20 {
		t.Fatalf("verify = %v, %v", v, err)
	}
	// Corrupt one payload file on disk: verify reports it and pulls fail with DATA_LOSS.
	corruptOnePayload(t, e.dir, 1<<20)
	v, err = e.rpc.Verify(ctx, &registrypb.VerifyRequest{Ref: "g:v1"})
	if err != nil || len(v.Corrupt) != 1 || !slices.Equal(v.Corrupt[0].Versions, []string{"g:v1"}) {
		t.Fatalf("verify after corruption = %v, %v", v, err)
	}
	_, err = e.client.Pull(ctx, "g:v1", t.TempDir(), registry.PullOptions{})
	if status.Code(err) != codes.DataLoss {
		t.Fatalf("pull of a corrupt version: %v, want DataLoss", err)
	}

	// Healing: a push of the same bytes (here as another version) re-sends the corrupt chunk,
	// whose verified bytes replace the damaged file; g:v1 pulls and verifies clean again.
	res2, err := e.client.Push(ctx, src, registry.PushOptions{Info: registry.ModelInfo{Name: "g", Version: "v2"}})
	if err != nil || res2.BytesSent == 0 || res2.BytesSent >= res2.Bytes {
		t.Fatalf("healing push: %+v, %v (want only the corrupt chunk re-sent)", res2, err)
	}
	dst := t.TempDir()
	if _, err := e.client.Pull(ctx, "g:v1", dst, registry.PullOptions{}); err != nil {
		t.Fatalf("pull after healing: %v", err)
	}
	got, _ := os.ReadFile(filepath.Join(dst, "m.bin"))
	want, _ := os.ReadFile(filepath.Join(src, "m.bin"))
	if !bytes.Equal(got, want) {
		t.Fatal("pulled bytes differ after healing")
	}
	v, err = e.rpc.Verify(ctx, &registrypb.VerifyRequest{})
	if err != nil || len(v.Corrupt) != 0 {
		t.Fatalf("verify after healing = %v, %v", v, err)
	}
}

// A chunk whose payload file lost bytes on disk (not yet found by verify) fails the pull with
// DATA_LOSS part way through, without a hang and without a final file, and the version pulls
// again once verify has found the chunk and a push has healed it.
func TestRegistry_PullTruncatedChunk(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	data := randBytes(91, 24<<20)
	src := pushOneFile(t, e, "tr", "v1", data)
	var target string
	filepath.Walk(filepath.Join(e.dir, "payloads"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && fi.Size() > 1<<20 {
			target = p // the last in walk order: usually not the file's first chunk
		}
		return nil
	})
	if target == "" {
		t.Fatal("no payload file found")
	}
	if err := os.Truncate(target, 1<<20); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	_, err := e.client.Pull(context.Background(), "tr:v1", out, registry.PullOptions{})
	if status.Code(err) != codes.DataLoss {
		t.Fatalf("pull with a truncated chunk: %v, want DataLoss", err)
	}
	if _, err := os.Stat(filepath.Join(out, "m.bin")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed pull left the final file: %v", err)
	}
	// Healing: verify marks the chunk, and pushing the bytes again (as any version) restores it.
	if v, err := e.rpc.Verify(context.Background(), &registrypb.VerifyRequest{}); err != nil || len(v.Corrupt) != 1 {
		t.Fatalf("verify = %v, %v; want the truncated chunk", v, err)
	}
	push(t, e, src, "tr", "v2")
	if _, err := e.client.Pull(context.Background(), "tr:v1", out, registry.PullOptions{}); err != nil {
		t.Fatalf("pull after healing: %v", err)
	}
	assertTree(t, out, map[string][]byte{"m.bin": data})
}

// corruptOnePayload flips a byte in the first payload file under dir larger than min bytes.
func corruptOnePayload(t testing.TB, dir string, min int64) {
	t.Helper()
	var target string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && target == "" && fi.Mode().IsRegular() && fi.Size() > min && !strings.Contains(p, ".db") && !strings.Contains(p, "-wal") {
			target = p
		}
		return nil
	})
	if target == "" {
		t.Fatal("no payload file found")
	}
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	f.ReadAt(b, 1000)
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, 1000); err != nil {
		t.Fatal(err)
	}
}

// NewRegistry also works on a plain grpc-go server, whose default codec copies what buffdbd's lends
// (sendLent): pulls stay byte-identical and every lent buffer comes back, or the pull would stall
// once its buffers ran out (the model is many times their number).
func TestRegistry_PlainGRPCServer(t *testing.T) {
	ctx := context.Background()
	_, reg := openRegistry(t, t.TempDir(), registry.Options{})
	defer reg.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	registrypb.RegisterRegistryServer(srv, api.NewRegistry(reg, nil))
	go srv.Serve(l)
	defer srv.Stop()
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := registry.NewClient(conn)
	src := t.TempDir()
	data := randBytes(81, 24<<20)
	writeFiles(t, src, map[string][]byte{"m.bin": data})
	if _, err := c.Push(ctx, src, registry.PushOptions{Info: registry.ModelInfo{Name: "plain", Version: "v1"}}); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	if _, err := c.Pull(ctx, "plain:v1", dst, registry.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dst, "m.bin")); !bytes.Equal(got, data) {
		t.Fatal("pulled bytes differ")
	}
}

// fileEndWatcher is a client stream interceptor that records the sha256 every FileEnd carries and,
// with oldServer, removes hashes_files from the server's PushOpened, as a server from before that
// field answers.
type fileEndWatcher struct {
	oldServer bool
	sums      [][]byte
}

func (w *fileEndWatcher) intercept(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	return &watchedStream{ClientStream: s, w: w}, err
}

type watchedStream struct {
	grpc.ClientStream
	w *fileEndWatcher
}

func (s *watchedStream) SendMsg(m any) error {
	if end := m.(interface{ GetFileEnd() *registrypb.FileEnd }).GetFileEnd(); end != nil {
		s.w.sums = append(s.w.sums, end.Sha256)
	}
	return s.ClientStream.SendMsg(m)
}

func (s *watchedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if r, ok := m.(*registrypb.PushResponse); ok && err == nil && s.w.oldServer && r.GetOpened() != nil {
		r.GetOpened().HashesFiles = false
	}
	return err
}

// The push client leaves each file's sha256 to a server that computes it (the chunk digests verify
// every byte), and the server records the right one; to a server that does not say so, it declares
// each file's sha256 as before.
func TestRegistry_PushFileHashes(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	src := t.TempDir()
	files := map[string][]byte{"model.bin": randBytes(81, 9<<20+17), "config.json": []byte(`{"a":1}`), "empty": {}}
	writeFiles(t, src, files)
	for _, old := range []bool{false, true} {
		w := &fileEndWatcher{oldServer: old}
		conn, err := grpc.NewClient(e.conn.Target(), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithStreamInterceptor(w.intercept))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		version := fmt.Sprintf("old-server-%v", old)
		if _, err := registry.NewClient(conn).Push(context.Background(), src, registry.PushOptions{
			Info: registry.ModelInfo{Name: "h", Version: version}}); err != nil {
			t.Fatalf("push to old server %v: %v", old, err)
		}
		if len(w.sums) != len(files) {
			t.Fatalf("old server %v: %d FileEnd messages for %d files", old, len(w.sums), len(files))
		}
		for _, s := range w.sums {
			if declared := len(s) > 0; declared != old {
				t.Errorf("old server %v: FileEnd declared a sha256: %v", old, declared)
			}
		}
		show, err := e.rpc.Show(context.Background(), &registrypb.ShowRequest{Ref: "h:" + version})
		if err != nil {
			t.Fatal(err)
		}
		for i, f := range show.Files {
			want := sha256.Sum256(files[f.Path])
			if !bytes.Equal(f.Sha256, want[:]) {
				t.Errorf("old server %v: %s recorded with sha256 %x, want %x", old, f.Path, f.Sha256, want)
			}
			if old && !bytes.Equal(w.sums[i], want[:]) {
				t.Errorf("old server %v: FileEnd for %s declared %x, want %x", old, f.Path, w.sums[i], want)
			}
		}
	}
}

// TestRegistry_PushFileChanged: a source file rewritten in place (same size) while it is pushed
// fails the push with ErrChanged naming it, and nothing is published. Before, the push failed with
// the server's "received bytes do not hash to the offered digest", which did not say why.
func TestRegistry_PushFileChanged(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	src := t.TempDir()
	data := randBytes(41, 12<<20)
	writeFiles(t, src, map[string][]byte{"m.bin": data})
	path := filepath.Join(src, "m.bin")
	var once sync.Once
	_, err := e.client.Push(context.Background(), src, registry.PushOptions{
		Info: registry.ModelInfo{Name: "m", Version: "v1"},
		Progress: func(done, total int64) {
			once.Do(func() { // the first chunk is on its way: rewrite the rest of the file
				f, err := os.OpenFile(path, os.O_WRONLY, 0)
				if err != nil {
					t.Error(err)
					return
				}
				f.WriteAt(randBytes(42, 8<<20), 4<<20)
				f.Close()
				// A later time than the listing saw, whatever the clock's granularity.
				later := time.Now().Add(time.Minute)
				os.Chtimes(path, later, later)
			})
		},
	})
	if !errors.Is(err, registry.ErrChanged) || !strings.Contains(err.Error(), path) {
		t.Fatalf("push of a file rewritten midway: err = %v, want ErrChanged naming %s", err, path)
	}
	if _, err := e.rpc.Show(context.Background(), &registrypb.ShowRequest{Ref: "m:v1"}); status.Code(err) != codes.NotFound {
		t.Fatalf("show after the failed push: %v, want NotFound", err)
	}
}

// TestRegistry_FlakyLink: over a link that drops every few MB, a push and a pull resume on each
// new connection and finish with the exact bytes, with Retries bounding only failures in a row.
// Before, a pull resumed a cut file at its last whole chunk, so a link dropping before a chunk (up
// to 4 MiB) was through fetched the same chunk forever and gave up; a push whose connection broke
// under its sender ended with ErrIncomplete or a bare context error, which it did not retry; and
// both gave up after Retries connections however far each got.
func TestRegistry_FlakyLink(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	addr := e.conn.Target()
	files := map[string][]byte{"w.bin": randBytes(51, 24<<20), "config.json": []byte(`{"a":1}`)}
	src := t.TempDir()
	writeFiles(t, src, files)
	push(t, e, src, "m", "v0") // for the pull, over a good link
	dial := func(link string) *registry.Client {
		cc, err := grpc.NewClient(link, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return registry.NewClient(cc)
	}

	t.Run("Push", func(t *testing.T) {
		link := linktest.Start(t, addr, linktest.Options{After: 5 << 20}) // more than the largest chunk
		src := t.TempDir()
		writeFiles(t, src, map[string][]byte{"w.bin": randBytes(52, 24<<20)})
		res, err := dial(link.Addr).Push(context.Background(), src, registry.PushOptions{
			Info: registry.ModelInfo{Name: "n", Version: "v1"}, Retries: 2})
		if err != nil || link.Failed() < 3 {
			t.Fatalf("push over a link dropping every 5 MiB: %v (%d drops, %d attempts)", err, link.Failed(), res.Attempts)
		}
	})
	t.Run("Pull", func(t *testing.T) {
		link := linktest.Start(t, addr, linktest.Options{After: 3 << 20}) // less than the largest chunk
		out := t.TempDir()
		var last, backwards int64 // progress must not restart from 0 on each connection
		res, err := dial(link.Addr).Pull(context.Background(), "m:v0", out, registry.PullOptions{Retries: 2,
			Progress: func(done, total int64) {
				if done < last {
					backwards = last - done
				}
				last = done
			}})
		if err != nil || link.Failed() < 3 {
			t.Fatalf("pull over a link dropping every 3 MiB: %v (%d drops, %d attempts)", err, link.Failed(), res.Attempts)
		}
		assertTree(t, out, files)
		if backwards > 0 {
			t.Errorf("progress went back by %d bytes on a resume", backwards)
		}
		if res.BytesReceived+res.BytesLocal != res.Bytes {
			t.Fatalf("received %d + local %d bytes for a %d-byte version", res.BytesReceived, res.BytesLocal, res.Bytes)
		}
	})
}

// TestRegistry_PullLongFileName: a file whose name is near NAME_MAX (254 bytes here) is pulled;
// before, its partial file (name + ".buffdbd-partial") was too long a name to create, so a version
// that pushed fine failed every pull with ENAMETOOLONG.
func TestRegistry_PullLongFileName(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	long := strings.Repeat("n", 250) + ".bin"
	files := map[string][]byte{long: randBytes(61, 6<<20), "d/" + long: []byte("small"), "config.json": []byte("{}")}
	src := t.TempDir()
	writeFiles(t, src, files)
	push(t, e, src, "m", "v1")
	out := t.TempDir()
	if _, err := e.client.Pull(context.Background(), "m:v1", out, registry.PullOptions{}); err != nil {
		t.Fatalf("pull of a version with a %d-byte file name: %v", len(long), err)
	}
	assertTree(t, out, files)
}

// TestRegistry_ServerKeepalive: a push whose client went silent mid-stream (a stalled link: no
// bytes, no FIN) is ended by the server's keepalive, so its upload session stops counting as live
// and GC can collect it. Before, the server kept such a stream for grpc-go's default two hours.
func TestRegistry_ServerKeepalive(t *testing.T) {
	dir := t.TempDir()
	db, reg := openRegistry(t, dir, registry.Options{SessionTTL: time.Nanosecond})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// grpc-go's shortest: one second without a frame, one second for the ping's answer.
	srv := api.NewServer(db, api.Options{Keepalive: keepalive.ServerParameters{Time: time.Second, Timeout: time.Second}})
	srv.Register(&registrypb.Registry_ServiceDesc, api.NewRegistry(reg, nil))
	go srv.Serve(l)
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		reg.Close()
		checkIntegrity(t, db)
		db.Close()
	})
	link := linktest.Start(t, l.Addr().String(), linktest.Options{After: 4 << 20, Stall: true})
	cc, err := grpc.NewClient(link.Addr, grpc.WithTransportCredentials(insecure.NewCredentials())) // no client keepalive
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	src := t.TempDir()
	writeFiles(t, src, map[string][]byte{"w.bin": randBytes(71, 16<<20)})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go registry.NewClient(cc).Push(ctx, src, registry.PushOptions{Info: registry.ModelInfo{Name: "m", Version: "v1"}})
	for link.Failed() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	// The session expired at once (TTL 1 ns) but is not collected while its push is live.
	deadline := time.Now().Add(time.Minute)
	for {
		res, err := reg.CollectGarbage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if res.Sessions == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a push behind a stalled link still holds its session after a minute of server keepalive at 1 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRegistry_EvictionSkipsFreeVersions: eviction passes over a least recently used version
// whose chunks other versions keep anyway (evicting it frees nothing) and evicts the next one that
// frees space. Before, the free one was evicted too, lost for nothing.
func TestRegistry_EvictionSkipsFreeVersions(t *testing.T) {
	const size = 3 << 20
	e := startRegistry(t, registry.Options{MaxBytes: 3*size + size/2})
	src := func(seed uint64) string {
		d := t.TempDir()
		writeFiles(t, d, map[string][]byte{"m.bin": randBytes(seed, size)})
		return d
	}
	x := src(1)
	push(t, e, x, "m", "v1")
	push(t, e, src(2), "m", "v2")
	push(t, e, x, "m", "v3") // v1's bytes again: v1 now costs nothing while v3 stays
	push(t, e, src(4), "m", "v4")
	push(t, e, src(5), "m", "v5") // over budget by one version's size
	vs, err := e.reg.ListVersions(context.Background(), "m")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range vs {
		got = append(got, v.Version)
	}
	if !slices.Equal(got, []string{"v1", "v3", "v4", "v5"}) {
		t.Fatalf("versions after v5: %v, want only v2 evicted (evicting v1 frees nothing)", got)
	}
}

// TestRegistry_PullRetriesResolve: a pull started while the link is down retries resolving the
// reference as it retries the transfer. Before, the first Show failed the pull at once.
func TestRegistry_PullRetriesResolve(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	files := map[string][]byte{"m.bin": []byte("weights")}
	src := t.TempDir()
	writeFiles(t, src, files)
	push(t, e, src, "m", "v1")
	cc, err := grpc.NewClient(linktest.Start(t, e.conn.Target(), linktest.Options{Refuse: 2}).Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	out := t.TempDir()
	if _, err := registry.NewClient(cc).Pull(context.Background(), "m", out, registry.PullOptions{Retries: 5}); err != nil {
		t.Fatalf("pull over a link down for two connections: %v", err)
	}
	assertTree(t, out, files)
}

// TestRegistry_PullDamagedChunkKeepsTheRest: a chunk whose stored bytes went bad (not yet found by
// verify, so the daemon sends them) fails the pull naming the chunk, and the file's sound chunks
// before it are kept: once the chunk is repaired, the next pull fetches only the rest. Before, the
// whole partial file was removed, and every pull moved the whole file again to the same failure.
func TestRegistry_PullDamagedChunkKeepsTheRest(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	data := randBytes(81, 24<<20)
	src := pushOneFile(t, e, "dc", "v1", data)
	show, err := e.rpc.Show(context.Background(), &registrypb.ShowRequest{Ref: "dc:v1"})
	if err != nil {
		t.Fatal(err)
	}
	chunks := show.Files[0].Chunks
	if len(chunks) < 4 {
		t.Fatalf("%d chunks; want at least 4", len(chunks))
	}
	var before uint64 // the bytes of the chunks before the damaged one
	for _, c := range chunks[:2] {
		before += c.Size
	}
	sum := hex.EncodeToString(chunks[2].Sha256)
	corruptOnePayload(t, filepath.Join(e.dir, "payloads", sum[:2], sum), 0)

	out := t.TempDir()
	_, err = e.client.Pull(context.Background(), "dc:v1", out, registry.PullOptions{})
	if !errors.Is(err, registry.ErrChecksum) || !strings.Contains(err.Error(), sum) || !strings.Contains(err.Error(), "model verify") {
		t.Fatalf("pull of a damaged chunk: %v, want ErrChecksum naming chunk %s and what to do", err, sum)
	}
	st, err := os.Stat(filepath.Join(out, "m.bin"+registry.PartialSuffix))
	if err != nil || uint64(st.Size()) != before {
		t.Fatalf("partial file after the failure: %v, %v; want the %d bytes before the damaged chunk", st, err, before)
	}
	// Repair: verify marks the chunk, pushing the version again re-sends it.
	if v, err := e.rpc.Verify(context.Background(), &registrypb.VerifyRequest{}); err != nil || len(v.Corrupt) != 1 {
		t.Fatalf("verify = %v, %v; want the damaged chunk", v, err)
	}
	push(t, e, src, "dc", "v1")
	res, err := e.client.Pull(context.Background(), "dc:v1", out, registry.PullOptions{})
	if err != nil {
		t.Fatalf("pull after repair: %v", err)
	}
	if uint64(res.BytesReceived) != uint64(len(data))-before {
		t.Fatalf("pull after repair received %d bytes, want the %d after the kept prefix", res.BytesReceived, uint64(len(data))-before)
	}
	assertTree(t, out, map[string][]byte{"m.bin": data})
}

// TestRegistry_PullIdenticalFilesOnce: files of a version with the same content (hard links,
// copies) cross the link once; the others are copied locally. Before, each was transferred.
func TestRegistry_PullIdenticalFilesOnce(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	same := randBytes(95, 6<<20)
	other := randBytes(96, 1<<20)
	files := map[string][]byte{"a.bin": same, "b/copy.bin": same, "c.bin": other, "d/copy2.bin": same, "empty": {}, "empty2": {}}
	src := t.TempDir()
	writeFiles(t, src, files)
	push(t, e, src, "dup", "v1")
	out := t.TempDir()
	res, err := e.client.Pull(context.Background(), "dup:v1", out, registry.PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, files)
	if want := int64(len(same) + len(other)); res.BytesReceived != want {
		t.Fatalf("received %d bytes, want %d: each distinct file once", res.BytesReceived, want)
	}
	// Again into a directory holding a.bin only: the copies come from it, nothing is transferred.
	out = t.TempDir()
	writeFiles(t, out, map[string][]byte{"a.bin": same})
	if res, err = e.client.Pull(context.Background(), "dup:v1", out, registry.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, files)
	if want := int64(len(other)); res.BytesReceived != want {
		t.Fatalf("received %d bytes, want %d", res.BytesReceived, want)
	}
}

// TestRegistry_PullRepeatedChunksOnce: chunks repeated within a version (a sparse file's zeros,
// the shared start of two different files) cross the link once, also over a link that keeps
// dropping. Before, every occurrence was sent.
func TestRegistry_PullRepeatedChunksOnce(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	x := randBytes(97, 6<<20)
	files := map[string][]byte{
		"sparse.bin": append(make([]byte, 24<<20), randBytes(98, 1<<20)...),
		"a.bin":      x,
		"b.bin":      append(append([]byte{}, x...), randBytes(99, 2<<20)...),
	}
	src := t.TempDir()
	writeFiles(t, src, files)
	push(t, e, src, "rep", "v1")
	show, err := e.rpc.Show(context.Background(), &registrypb.ShowRequest{Ref: "rep:v1"})
	if err != nil {
		t.Fatal(err)
	}
	distinct := map[string]uint64{}
	for _, f := range show.Files {
		for _, c := range f.Chunks {
			distinct[string(c.Sha256)] = c.Size
		}
	}
	var want int64
	for _, n := range distinct {
		want += int64(n)
	}
	out := t.TempDir()
	res, err := e.client.Pull(context.Background(), "rep:v1", out, registry.PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, files)
	if res.BytesReceived != want || res.BytesReceived+res.BytesLocal != res.Bytes {
		t.Fatalf("received %d (local %d) of %d bytes; want each of the %d distinct chunk bytes once", res.BytesReceived, res.BytesLocal, res.Bytes, want)
	}

	link := linktest.Start(t, e.conn.Target(), linktest.Options{After: 3 << 20})
	cc, err := grpc.NewClient(link.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	out = t.TempDir()
	res, err = registry.NewClient(cc).Pull(context.Background(), "rep:v1", out, registry.PullOptions{Retries: 3})
	if err != nil {
		t.Fatalf("pull over a link dropping every 3 MiB: %v (%d drops)", err, link.Failed())
	}
	assertTree(t, out, files)
	// A resumed attempt copies the repeats from the whole chunks its partial files kept, even when
	// the link drops before a repeated chunk gets through whole in one connection.
	if res.BytesReceived > res.Bytes/2 {
		t.Fatalf("over a link dropping every 3 MiB: received %d of %d bytes (%d distinct), %d drops", res.BytesReceived, res.Bytes, want, link.Failed())
	}
}

// oldPuller makes a client's pulls look like a client without send_chunks_once.
type oldPuller struct{ grpc.ClientStream }

func (s oldPuller) SendMsg(m any) error {
	if r, ok := m.(*registrypb.PullRequest); ok {
		r = proto.Clone(r).(*registrypb.PullRequest)
		r.SendChunksOnce = false
		m = r
	}
	return s.ClientStream.SendMsg(m)
}

// TestRegistry_PullRepeatedChunksOldServer: a server that does not honour send_chunks_once (its
// manifest does not say it does) sends every occurrence, and the client takes them all.
func TestRegistry_PullRepeatedChunksOldServer(t *testing.T) {
	e := startRegistry(t, registry.Options{})
	files := map[string][]byte{"sparse.bin": append(make([]byte, 16<<20), 1)}
	src := t.TempDir()
	writeFiles(t, src, files)
	push(t, e, src, "rep", "v1")
	cc, err := grpc.NewClient(e.conn.Target(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
			streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			s, err := streamer(ctx, desc, cc, method, opts...)
			return oldPuller{s}, err
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	out := t.TempDir()
	res, err := registry.NewClient(cc).Pull(context.Background(), "rep:v1", out, registry.PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertTree(t, out, files)
	if res.BytesReceived != res.Bytes {
		t.Fatalf("received %d of %d bytes from a server sending every occurrence", res.BytesReceived, res.Bytes)
	}
}
