package registry

import (
	"errors"
	"fmt"
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

// chunkReadSize is how much a Chunker reads at a time. It reads only until the next cut point is
// in what it has read, so the bytes it read past a cut, which it moves to the start of the next
// chunk, are less than one read: ~6% of the bytes for 2 MiB chunks. Reading a whole maximum-size
// window ahead instead moved most of every chunk once more, which cost as much CPU as the gear scan.
const chunkReadSize = 256 << 10

// Chunker splits a stream into content-defined chunks, reading each chunk into one buffer (its own,
// or the caller's with NextInto) so that it is read, scanned and handed on without being copied.
type Chunker struct {
	r     io.Reader
	buf   []byte // Next's chunk buffer, allocated on first use
	carry []byte // bytes read past the last cut: the start of the next chunk
	eof   bool
	off   int64
}

// NewChunker returns a Chunker reading r.
func NewChunker(r io.Reader) *Chunker {
	return &Chunker{r: r, carry: make([]byte, 0, chunkReadSize)}
}

// Next returns the next chunk and its offset in the stream. The slice is valid until the next call.
// At the end of the stream it returns io.EOF; an empty stream has no chunks.
func (c *Chunker) Next() (chunk []byte, offset int64, err error) {
	if c.buf == nil {
		c.buf = make([]byte, MaxChunkSize)
	}
	return c.NextInto(c.buf)
}

// NextInto is Next reading the chunk into dst, which must have room (up to its capacity) for
// MaxChunkSize bytes or for the rest of the stream: a chunk that dst cannot hold is cut where dst is
// full. The chunk is dst's first bytes; the Chunker keeps no reference to dst.
func (c *Chunker) NextInto(dst []byte) (chunk []byte, offset int64, err error) {
	dst = dst[:cap(dst)]
	if len(c.carry) > len(dst) {
		return nil, 0, fmt.Errorf("registry: chunk buffer of %d bytes is too small", len(dst))
	}
	n := copy(dst, c.carry)
	limit := min(len(dst), MaxChunkSize)
	// The cut is the first position past MinChunkSize (skipped unscanned) where the fingerprint
	// matches maskS before AvgChunkSize and maskL after it, or limit. Scanning in pieces as the
	// bytes arrive finds the same positions as scanning the whole window at once.
	var fp uint64
	scanned := MinChunkSize
	cut := -1
	for cut < 0 {
		if end := min(n, limit); scanned < end {
			if scanned < AvgChunkSize {
				e := min(end, AvgChunkSize)
				if i, ok := scan(&fp, dst[scanned:e], maskS); ok {
					cut = scanned + i
					break
				}
				scanned = e
			}
			if scanned < end {
				if i, ok := scan(&fp, dst[scanned:end], maskL); ok {
					cut = scanned + i
					break
				}
				scanned = end
			}
		}
		switch {
		case n >= limit:
			cut = limit
		case c.eof:
			cut = n
		default:
			m, err := c.r.Read(dst[n:min(len(dst), n+chunkReadSize)])
			n += m
			if errors.Is(err, io.EOF) {
				c.eof = true
			} else if err != nil {
				return nil, 0, err
			}
		}
	}
	c.carry = append(c.carry[:0], dst[cut:n]...)
	if cut == 0 {
		return nil, 0, io.EOF
	}
	offset = c.off
	c.off += int64(cut)
	return dst[:cut], offset, nil
}
