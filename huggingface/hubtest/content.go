package hubtest

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
)

// Content is a file's bytes as the emulator serves them. Random content lets benchmarks serve
// gigabytes without holding them in memory.
type Content interface {
	io.ReaderAt
	Size() int64
}

// Bytes is Content held in memory.
func Bytes(b []byte) Content { return bytesContent{bytes.NewReader(b)} }

type bytesContent struct{ *bytes.Reader }

func (b bytesContent) Size() int64 { return b.Reader.Size() }

// randomBlock is the period of Random's base pattern; each block is the base XOR a per-block key,
// so no two blocks are equal (content-defined chunking cannot deduplicate them) yet generating a
// byte costs one XOR.
const randomBlock = 1 << 20

// Random is size bytes of deterministic pseudo-random content derived from seed.
func Random(seed uint64, size int64) Content {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	base := make([]byte, randomBlock)
	for i := 0; i < len(base); i += 8 {
		binary.LittleEndian.PutUint64(base[i:], r.Uint64())
	}
	return &randomContent{base: base, size: size, seed: seed}
}

type randomContent struct {
	base []byte
	size int64
	seed uint64
}

func (c *randomContent) Size() int64 { return c.size }

func (c *randomContent) ReadAt(p []byte, off int64) (int, error) {
	if off >= c.size {
		return 0, io.EOF
	}
	n := len(p)
	if int64(n) > c.size-off {
		n = int(c.size - off)
	}
	for done := 0; done < n; {
		pos := off + int64(done)
		blk := uint64(pos / randomBlock)
		in := int(pos % randomBlock)
		m := min(n-done, randomBlock-in)
		var key [8]byte
		binary.LittleEndian.PutUint64(key[:], (blk+1)*0x9e3779b97f4a7c15^c.seed)
		dst, src := p[done:done+m], c.base[in:in+m]
		i := 0
		if in%8 == 0 {
			k := binary.LittleEndian.Uint64(key[:])
			for ; i+8 <= m; i += 8 {
				binary.LittleEndian.PutUint64(dst[i:], binary.LittleEndian.Uint64(src[i:])^k)
			}
		}
		for ; i < m; i++ {
			dst[i] = src[i] ^ key[(in+i)&7]
		}
		done += m
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
