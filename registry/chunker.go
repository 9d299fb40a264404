package registry

import (
	"errors"
	"io"
)

// Chunk size bounds for content-defined chunking (FastCDC with a gear hash and normalized chunking).
//
// Why these sizes: every chunk costs a payload file, an fsync, a rename, a directory fsync and a few
// rows, so per-GB overhead falls with chunk size; on this class of hardware fsync costs ~1-3 ms, so
// 2 MiB average chunks keep that overhead to a few hundred fsyncs per GB (well under 10% of a
// 1.5 GB/s raw write). Edge links are slow, so a delta must stay fine-grained: a change touches on
// average one 2 MiB chunk (plus the two neighbours whose boundaries it may shift), which for a 1 GiB
// model is <1% re-sent. The 512 KiB minimum skips hashing the first quarter of each chunk (FastCDC's
// "cut-point skipping", which is where its speed comes from) and bounds row count for small files;
// the maximum bounds server memory per in-flight chunk and caps the damage of a low-entropy region
// (zeros) that never hits a cut point.
//
// The maximum is just under 4 MiB because BuffDB clients load a model by fetching each blob in
// blob_ids with one Blob.Get, whose response carries the whole chunk in one message, and gRPC
// clients (grpc-js, grpcio, grpc-go) refuse to receive messages above 4 MiB by default. MaxChunkSize
// leaves 4 KiB for the protobuf framing of GetResponse. With the normalized masks below, about 2% of
// random-data chunks reach the maximum; the cut after such a chunk is again content-defined.
//
// These values and the gear table are part of the on-disk and wire identity of chunks: changing them
// changes every chunk digest, and dedupe against existing versions stops working. Never change them.
const (
	MinChunkSize = 512 << 10
	AvgChunkSize = 2 << 20
	MaxChunkSize = 4<<20 - 4<<10

	// Normalized chunking (FastCDC level 2): a stricter mask (2 more bits) before the average size
	// and a looser one (2 fewer bits) after it pulls chunk sizes towards the average.
	maskS uint64 = ((1 << 23) - 1) << (64 - 23)
	maskL uint64 = ((1 << 19) - 1) << (64 - 19)
)

// gear is FastCDC's table of 256 random 64-bit values, generated from a fixed seed with splitmix64
// so it is reproducible without a 2 KB literal. The mask bits are taken from the top of the
// fingerprint: with fp = fp<<1 + gear[b], bit k depends on the last k+1 bytes, so the top bits see a
// 64-byte window.
var gear = func() (t [256]uint64) {
	x := uint64(0x62756666646264) // "buffdbd"
	for i := range t {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		t[i] = z ^ (z >> 31)
	}
	return t
}()

// gear2 is gear shifted left by one: a step over two bytes b0, b1 adds gear2[b0] + gear[b1].
var gear2 = func() (t [256]uint64) {
	for i, g := range gear {
		t[i] = g << 1
	}
	return t
}()

// cutPoint returns the length of the first chunk of data. data holds either at least MaxChunkSize
// bytes or everything that remains of the stream.
func cutPoint(data []byte) int {
	n := len(data)
	if n <= MinChunkSize {
		return n
	}
	if n > MaxChunkSize {
		n = MaxChunkSize
	}
	normal := AvgChunkSize
	if n < normal {
		normal = n
	}
	var fp uint64
	if i, ok := scan(&fp, data[MinChunkSize:normal], maskS); ok {
		return MinChunkSize + i
	}
	if i, ok := scan(&fp, data[normal:n], maskL); ok {
		return normal + i
	}
	return n
}

// scan rolls the gear fingerprint fp over s and returns the length of s up to and including the
// first byte after which fp&mask == 0. The fingerprint after each byte is fp<<1 + gear[b]; the
// loop advances two bytes per step (fp<<2 + gear2[b0] + gear[b1], the same value) so the chain of
// dependent operations, which bounds the speed of the one-byte loop, is half as long, and checks
// the fingerprint after the first byte off that chain. The cut points are exactly the one-byte
// loop's (TestChunker_Golden).
func scan(fp *uint64, s []byte, mask uint64) (int, bool) {
	h := *fp
	i := 0
	for ; i+1 < len(s); i += 2 {
		b0, b1 := s[i], s[i+1]
		mid := h<<1 + gear[b0]
		h = h<<2 + (gear2[b0] + gear[b1])
		if mid&mask == 0 {
			return i + 1, true
		}
		if h&mask == 0 {
			return i + 2, true
		}
	}
	if i < len(s) {
		h = h<<1 + gear[s[i]]
		if h&mask == 0 {
			return i + 1, true
		}
	}
	*fp = h
	return len(s), false
}

// Chunker splits a stream into content-defined chunks without holding more than 2×MaxChunkSize bytes.
type Chunker struct {
	r          io.Reader
	buf        []byte
	start, end int
	eof        bool
	off        int64
}

// NewChunker returns a Chunker reading r.
func NewChunker(r io.Reader) *Chunker {
	return &Chunker{r: r, buf: make([]byte, 2*MaxChunkSize)}
}

// Next returns the next chunk and its offset in the stream. The slice is valid until the next call.
// At the end of the stream it returns io.EOF; an empty stream has no chunks.
func (c *Chunker) Next() (chunk []byte, offset int64, err error) {
	if c.end-c.start < MaxChunkSize && !c.eof {
		copy(c.buf, c.buf[c.start:c.end])
		c.end -= c.start
		c.start = 0
		for c.end < len(c.buf) && !c.eof {
			n, err := c.r.Read(c.buf[c.end:])
			c.end += n
			if errors.Is(err, io.EOF) {
				c.eof = true
			} else if err != nil {
				return nil, 0, err
			}
		}
	}
	if c.start == c.end {
		return nil, 0, io.EOF
	}
	n := cutPoint(c.buf[c.start:c.end])
	chunk = c.buf[c.start : c.start+n]
	offset = c.off
	c.start += n
	c.off += int64(n)
	return chunk, offset, nil
}
