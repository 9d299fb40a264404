package registry_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/buffdb/buffdbd/registry"
)

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

type chunkInfo struct {
	off  int64
	size int
	sum  [32]byte
}

func chunks(t testing.TB, data []byte) []chunkInfo {
	t.Helper()
	c := registry.NewChunker(bytes.NewReader(data))
	var out []chunkInfo
	for {
		b, off, err := c.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, chunkInfo{off, len(b), sha256.Sum256(b)})
	}
}

func TestChunker_Bounds(t *testing.T) {
	data := randomBytes(1, 64<<20)
	cs := chunks(t, data)
	var total int64
	for i, c := range cs {
		if c.off != total {
			t.Fatalf("chunk %d at %d, want %d", i, c.off, total)
		}
		if c.size > registry.MaxChunkSize || (i < len(cs)-1 && c.size < registry.MinChunkSize) {
			t.Fatalf("chunk %d has %d bytes, outside [%d, %d]", i, c.size, registry.MinChunkSize, registry.MaxChunkSize)
		}
		total += int64(c.size)
	}
	if total != int64(len(data)) {
		t.Fatalf("chunks cover %d bytes, want %d", total, len(data))
	}
	avg := total / int64(len(cs))
	if avg < registry.AvgChunkSize/2 || avg > registry.AvgChunkSize*2 {
		t.Fatalf("average chunk %d bytes over %d chunks, want near %d", avg, len(cs), registry.AvgChunkSize)
	}
}

func TestChunker_InsertionResyncs(t *testing.T) {
	data := randomBytes(2, 48<<20)
	edited := append(append(append([]byte{}, data[:10<<20]...), randomBytes(3, 4096)...), data[10<<20:]...)
	a, b := chunks(t, data), chunks(t, edited)
	have := map[[32]byte]bool{}
	for _, c := range a {
		have[c.sum] = true
	}
	var newBytes int
	for _, c := range b {
		if !have[c.sum] {
			newBytes += c.size
		}
	}
	// An insertion changes the chunk it lands in and possibly a neighbour; everything else is shared.
	if newBytes > 3*registry.MaxChunkSize || newBytes == 0 {
		t.Fatalf("%d bytes of new chunks after a 4 KiB insertion into 48 MiB", newBytes)
	}
}

func TestChunker_SmallAndEmpty(t *testing.T) {
	if cs := chunks(t, nil); len(cs) != 0 {
		t.Fatalf("empty stream gave %d chunks", len(cs))
	}
	small := randomBytes(4, 1000)
	cs := chunks(t, small)
	if len(cs) != 1 || cs[0].size != 1000 || cs[0].sum != sha256.Sum256(small) {
		t.Fatalf("1000-byte stream gave %+v", cs)
	}
	zeros := make([]byte, 20<<20) // no cut point ever fires: every chunk is MaxChunkSize
	cs = chunks(t, zeros)
	if tail := 20<<20 - 5*registry.MaxChunkSize; len(cs) != 6 || cs[0].size != registry.MaxChunkSize || cs[5].size != tail {
		t.Fatalf("20 MiB of zeros gave %d chunks: %+v", len(cs), cs)
	}
}

func BenchmarkChunker(b *testing.B) {
	data := randomBytes(5, 64<<20)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		c := registry.NewChunker(bytes.NewReader(data))
		for {
			if _, _, err := c.Next(); err != nil {
				break
			}
		}
	}
}

// TestChunker_Golden pins the chunk boundaries: they are part of every stored chunk's identity
// (see chunker.go), so an optimisation of the chunker must reproduce them exactly. The digest
// covers every chunk's size, over random data and over data with long low-entropy runs (which
// exercise the maximum size and the cut points right after it).
func TestChunker_Golden(t *testing.T) {
	structured := randomBytes(7, 24<<20)
	for i := 3 << 20; i < 9<<20; i++ {
		structured[i] = 0 // a 6 MiB run of zeros: chunks at the maximum size
	}
	for i := 15 << 20; i < 17<<20; i++ {
		structured[i] = byte(i % 7) // short period: cut points either everywhere or nowhere
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"Random", randomBytes(5, 64<<20), "28:5314845fab4206fc465b8138"},
		{"Structured", structured, "9:f6a3828419e3c32d9392d2a9"},
		{"OddTail", randomBytes(8, 9<<20+12347), "4:0e7df79d80a87bae8761f5ff"},
	} {
		h := sha256.New()
		n := 0
		for _, c := range chunks(t, tc.data) {
			fmt.Fprintf(h, "%d,", c.size)
			n++
		}
		if got := fmt.Sprintf("%d:%x", n, h.Sum(nil)[:12]); got != tc.want {
			t.Errorf("%s: chunk boundaries %s, want %s: chunk identities changed", tc.name, got, tc.want)
		}
	}
}

// pieceReader returns its data in pieces of random length (1 byte to 600 KiB), as a network or a
// follower of a download does: the chunker must find the same cut points however reads split it.
type pieceReader struct {
	data []byte
	rng  *rand.Rand
}

func (r *pieceReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 1+r.rng.IntN(600<<10))], r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestChunker_NextIntoPieces(t *testing.T) {
	data := randomBytes(9, 40<<20+777)
	for i := 20 << 20; i < 30<<20; i++ {
		data[i] = 0 // chunks at the maximum size, whose cut is not content-defined
	}
	want := chunks(t, data)
	c := registry.NewChunker(&pieceReader{data, rand.New(rand.NewPCG(1, 2))})
	bufs := [][]byte{make([]byte, registry.MaxChunkSize), make([]byte, registry.MaxChunkSize+1<<20)}
	var got []chunkInfo
	for i := 0; ; i++ {
		dst := bufs[i%2]
		for j := range dst {
			dst[j] = 0xa5 // stale bytes of an earlier chunk must not leak into this one
		}
		b, off, err := c.NextInto(dst)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if &b[0] != &dst[0] {
			t.Fatalf("chunk %d is not at the start of the buffer it was read into", i)
		}
		got = append(got, chunkInfo{off, len(b), sha256.Sum256(b)})
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("NextInto over random-sized reads gave %d chunks, Next over whole reads %d; they differ", len(got), len(want))
	}
}

func TestChunker_NextIntoSmallBuffer(t *testing.T) {
	data := randomBytes(10, 3000)
	c := registry.NewChunker(bytes.NewReader(data))
	b, _, err := c.NextInto(make([]byte, 1000))
	if err != nil || len(b) != 1000 || !bytes.Equal(b, data[:1000]) {
		t.Fatalf("into a 1000-byte buffer: %d bytes, %v; want the first 1000 bytes", len(b), err)
	}
	b, off, err := c.NextInto(make([]byte, 4096))
	if err != nil || off != 1000 || !bytes.Equal(b, data[1000:]) {
		t.Fatalf("then into a larger one: %d bytes at %d, %v; want the remaining 2000 at 1000", len(b), off, err)
	}
	if _, _, err := c.NextInto(make([]byte, 4096)); !errors.Is(err, io.EOF) {
		t.Fatalf("after the end: %v, want io.EOF", err)
	}
}
