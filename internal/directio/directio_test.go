package directio_test

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/buffdb/buffdbd/internal/directio"
)

// TestWriter_Content writes the same bytes in many shapes (aligned and unaligned memory, sizes
// around the alignment and the staging buffer, resumed from unaligned offsets) and checks the file
// is exactly what a plain write would give.
func TestWriter_Content(t *testing.T) {
	src := make([]byte, 5*directio.BufSize+12345)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range src {
		src[i] = byte(r.Uint32())
	}
	al := directio.AlignedBuffer(len(src) + directio.Align)
	copy(al, src)
	cases := map[string]struct {
		start  int64  // resume offset: the file already holds src[:start]
		pieces []int  // write sizes, repeated until src is used up
		mem    []byte // where the bytes to write live (aligned or not)
	}{
		"OneAlignedWrite":     {pieces: []int{len(src)}, mem: al},
		"AlignedMiBPieces":    {pieces: []int{1 << 20}, mem: al},
		"UnalignedMemory":     {pieces: []int{1 << 20}, mem: append([]byte{0}, src...)[1:]},
		"SmallOddPieces":      {pieces: []int{1, 4095, 4097, 100000, 7}, mem: al},
		"ResumeUnaligned":     {start: 10001, pieces: []int{65536, 3}, mem: al},
		"ResumeAligned":       {start: 3 * directio.Align, pieces: []int{1 << 20}, mem: al},
		"ShorterThanOneBlock": {pieces: []int{100}, mem: al[:1000]},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			want := c.mem[:min(len(c.mem), len(src))]
			path := filepath.Join(t.TempDir(), "f")
			if err := os.WriteFile(path, want[:c.start], 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			w := directio.NewWriter(f, c.start)
			t.Logf("direct: %v", w.Direct())
			rest := want[c.start:]
			for i := 0; len(rest) > 0; i++ {
				k := min(c.pieces[i%len(c.pieces)], len(rest))
				if n, err := w.Write(rest[:k]); err != nil || n != k {
					t.Fatalf("Write(%d bytes) = %d, %v", k, n, err)
				}
				rest = rest[k:]
			}
			if got := w.Offset(); got != int64(len(want)) {
				t.Fatalf("Offset() = %d, want %d", got, len(want))
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("file has %d bytes, differing from the %d written", len(got), len(want))
			}
		})
	}
}

// TestWriter_UsesDirectIO checks O_DIRECT is really used where the filesystem offers it (ext4 and
// xfs do; the test directory's filesystem decides), and that the file works normally afterwards.
func TestWriter_UsesDirectIO(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := directio.NewWriter(f, 0)
	if !w.Direct() {
		t.Skip("the test directory's filesystem refuses O_DIRECT; the page-cache path is tested by Content")
	}
	if _, err := w.Write(directio.AlignedBuffer(3 * directio.Align)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// Back in buffered mode, an unaligned write at an unaligned offset works.
	if _, err := f.WriteAt([]byte("tail"), 3*directio.Align+1); err != nil {
		t.Fatalf("buffered write after Close: %v", err)
	}
	if _, err := w.Write([]byte("x")); err == nil {
		t.Fatal("Write after Close succeeded")
	}
}

// TestWriter_InPhasePieces writes pieces of odd sizes (as a pull receives them: cut at chunk
// boundaries) each from its own aligned buffer, once placed at the memory phase of its file offset
// and once at phase 0. In phase, only the bytes completing a block at each piece boundary are
// staged; out of phase, nearly everything is. The file is right either way.
func TestWriter_InPhasePieces(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var sizes []int
	total := 0
	for total < 8<<20 {
		n := 300<<10 + r.IntN(800<<10)
		sizes = append(sizes, n)
		total += n
	}
	src := make([]byte, total)
	for i := range src {
		src[i] = byte(r.Uint32())
	}
	for _, inPhase := range []bool{true, false} {
		path := filepath.Join(t.TempDir(), "f")
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		w := directio.NewWriter(f, 0)
		if !w.Direct() {
			f.Close()
			t.Skip("the test directory's filesystem refuses O_DIRECT")
		}
		off := 0
		for _, n := range sizes {
			phase := 0
			if inPhase {
				phase = off % directio.Align
			}
			p := directio.AlignedBuffer(phase + n)[phase:]
			copy(p, src[off:off+n])
			if _, err := w.Write(p); err != nil {
				t.Fatal(err)
			}
			off += n
		}
		staged := directio.Staged(w)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, src) {
			t.Fatalf("in phase %v: file differs from the bytes written (%v)", inPhase, err)
		}
		limit := int64(len(sizes) * directio.Align)
		t.Logf("in phase %v: %d of %d bytes staged", inPhase, staged, total)
		if inPhase && staged > limit {
			t.Errorf("in phase: %d bytes staged, want at most one block per piece (%d)", staged, limit)
		}
		if !inPhase && staged < int64(total)/2 {
			t.Errorf("out of phase: only %d of %d bytes staged; the test no longer tells the two apart", staged, total)
		}
	}
}

// TestReadAt reads a file through OpenReader in aligned and unaligned shapes, including reads that
// run into the end of the file, and checks bytes and errors match os.File.ReadAt.
func TestReadAt(t *testing.T) {
	const size = 3*directio.BufSize + 777
	src := make([]byte, size)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range src {
		src[i] = byte(r.Uint32())
	}
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, src, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	direct := directio.OpenReader(path)
	if direct != nil {
		defer direct.Close()
	}
	for _, c := range []struct {
		off int64
		n   int
		mem string
	}{
		{0, directio.BufSize, "aligned"},
		{directio.Align, 3 * directio.Align, "aligned"},
		{0, directio.Align + 5, "aligned"},
		{10, directio.BufSize, "aligned"},
		{0, directio.BufSize, "unaligned"},
		{size - 777, directio.BufSize, "aligned"},               // past the end: short read, io.EOF
		{2 * directio.BufSize, 2 * directio.BufSize, "aligned"}, // into the end
		{size - 777, 777, "aligned"},                            // exactly to the end
	} {
		p := directio.AlignedBuffer(c.n + 1)[:c.n]
		if c.mem == "unaligned" {
			p = directio.AlignedBuffer(c.n + 1)[1:]
		}
		n, err := directio.ReadAt(direct, f, p, c.off)
		want := make([]byte, c.n)
		wn, werr := f.ReadAt(want, c.off)
		if n != wn || (err == nil) != (werr == nil) || !bytes.Equal(p[:n], want[:wn]) {
			t.Errorf("ReadAt(%d bytes at %d, %s) = %d, %v; os.File.ReadAt = %d, %v", c.n, c.off, c.mem, n, err, wn, werr)
		}
	}
}

// TestReader reads files of several sizes through Open with odd-sized reads and compares them.
func TestReader(t *testing.T) {
	for _, size := range []int{0, 1, directio.Align, directio.BufSize, 2*directio.BufSize + 4097} {
		src := make([]byte, size)
		r := rand.New(rand.NewPCG(uint64(size), 5))
		for i := range src {
			src[i] = byte(r.Uint32())
		}
		path := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(path, src, 0o644); err != nil {
			t.Fatal(err)
		}
		rd, err := directio.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		p := make([]byte, 100003)
		for {
			n, err := rd.Read(p)
			got = append(got, p[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("size %d: Read: %v", size, err)
			}
		}
		if err := rd.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, src) {
			t.Fatalf("size %d: read %d bytes that differ from the file", size, len(got))
		}
	}
	// Closing before the end stops the read-ahead.
	path := filepath.Join(t.TempDir(), "g")
	os.WriteFile(path, make([]byte, 4*directio.BufSize), 0o644)
	rd, err := directio.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rd.Read(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if err := rd.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestWriter_Async writes pieces with WriteOwned and two writes in flight into a preallocated file.
// Each buffer is scribbled over the moment it is released, so a release before its write finished
// would show in the file; every buffer must be released exactly once; Written never runs ahead of
// what was handed over, and reaches the end once the Writer is closed.
func TestWriter_Async(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	src := make([]byte, 24<<20+777)
	for i := range src {
		src[i] = byte(r.Uint32())
	}
	path := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(len(src))); err != nil {
		t.Fatal(err)
	}
	w := directio.NewWriter(f, 0)
	if !w.Direct() {
		t.Skip("the test directory's filesystem refuses O_DIRECT")
	}
	w.SetAsync(2)
	var mu sync.Mutex
	releases := map[int]int{}
	off, i := 0, 0
	for off < len(src) {
		n := min(len(src)-off, 200<<10+r.IntN(1<<20))
		phase := off % directio.Align
		p := directio.AlignedBuffer(phase + n)[phase:]
		copy(p, src[off:off+n])
		id := i
		if err := w.WriteOwned(p, func() {
			mu.Lock()
			releases[id]++
			mu.Unlock()
			for j := range p {
				p[j] = 0xff
			}
		}); err != nil {
			t.Fatal(err)
		}
		off += n
		i++
		if got := w.Written(); got > int64(off) {
			t.Fatalf("Written() = %d after %d bytes handed over", got, off)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got := w.Written(); got != int64(len(src)) {
		t.Fatalf("Written() = %d after Close, want %d", got, len(src))
	}
	for id := range i {
		if releases[id] != 1 {
			t.Fatalf("piece %d released %d times", id, releases[id])
		}
	}
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, src) {
		t.Fatalf("file differs from the bytes written (%v)", err)
	}
}
