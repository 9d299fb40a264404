// Package directio writes large, write-once files (blob payloads, model files, downloads) with
// O_DIRECT where the filesystem supports it, and reads them back the same way.
//
// Why: buffdbd writes gigabytes that are read rarely and never rewritten. Through the page cache
// every byte is copied into a freshly allocated cache page first; measured on the 2-core VMs we
// benchmark on, that cost 0.3–3.2 s of kernel CPU per GiB (page allocation dominates, and varies with
// the host), against 35 ms with O_DIRECT, which moves the bytes from our buffer to the device. It
// also keeps a pull or fetch from evicting the page cache of the model being served, which is what
// an edge device is for.
//
// Direct I/O needs aligned offsets, lengths and memory. A Writer stages unaligned input in an
// aligned buffer, writes whole aligned blocks with O_DIRECT and the final partial block through the
// page cache. Where O_DIRECT is refused (tmpfs, some network and FUSE filesystems, other systems),
// it silently writes through the page cache, so callers never need a second code path. Durability
// is unchanged: callers still fsync, which also commits the file's size and block allocation.
package directio

import (
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Align is the offset, length and memory alignment used for direct I/O: 4096 satisfies every
// logical block size in use (512-byte and 4Kn devices).
const Align = 4096

// BufSize is the size of a Writer's staging buffer: large enough that each O_DIRECT write keeps the
// device busy (measured: 1 MiB writes reach the device's sequential rate), small enough for many
// concurrent writers.
const BufSize = 1 << 20

var bufPool = sync.Pool{New: func() any { b := AlignedBuffer(BufSize); return &b }}

// AlignedBuffer returns a zeroed n-byte slice whose first byte is Align-aligned.
func AlignedBuffer(n int) []byte {
	b := make([]byte, n+Align)
	off := 0
	if r := int(uintptr(unsafe.Pointer(unsafe.SliceData(b))) % Align); r != 0 {
		off = Align - r
	}
	return b[off : off+n : off+n]
}

// Pool recycles aligned buffers of one size: a stream of large messages decoded into fresh memory
// has the runtime zero it and the kernel fault it in, which on the benchmark VM cost more than
// the copy itself. It keeps at most keep spares; Get allocates when none is free.
type Pool struct {
	free chan []byte
	size int
}

// NewPool returns a Pool of size-byte buffers keeping up to keep spares.
func NewPool(size, keep int) *Pool { return &Pool{free: make(chan []byte, keep), size: size} }

// Size is the size of the Pool's buffers.
func (p *Pool) Size() int { return p.size }

// Get returns a spare buffer (reused true) or a new one.
func (p *Pool) Get() (b []byte, reused bool) {
	select {
	case b := <-p.free:
		return b, true
	default:
		return AlignedBuffer(p.size), false
	}
}

// Put keeps b as a spare if it is one of the Pool's size and there is room; b must no longer be
// used by anyone.
func (p *Pool) Put(b []byte) {
	if cap(b) != p.size {
		return
	}
	select {
	case p.free <- b[:cap(b)]:
	default:
	}
}

// Aligned reports whether p is non-empty and starts at an Align-aligned address.
func Aligned(p []byte) bool {
	return len(p) > 0 && uintptr(unsafe.Pointer(unsafe.SliceData(p)))%Align == 0
}

// Writer writes a file sequentially from a starting offset, using O_DIRECT for aligned blocks.
// It is not safe for concurrent use, and the file must not be written through other descriptors
// sharing its open file description (O_DIRECT is a property of the description) while it is in use.
type Writer struct {
	f      *os.File
	direct bool
	pos    int64   // file offset of buf[0]
	buf    []byte  // staged bytes not yet written; aligned, capacity BufSize
	bp     *[]byte // buf's pool entry
	err    error
	staged int64 // bytes copied into buf over the Writer's life (for tests)
	synced bool  // a direct write has succeeded synchronously: later ones may go asynchronously

	// Asynchronous direct writes of WriteOwned (see SetAsync).
	slots   chan struct{} // one per write allowed in flight; nil: every write is synchronous
	async   sync.WaitGroup
	amu     sync.Mutex
	pending []*span // dispatched asynchronous writes in file order, until the oldest completes
	aerr    error
}

// span is one asynchronous write.
type span struct {
	start int64
	done  bool
}

// NewWriter returns a Writer that writes f from offset off on. It switches f to O_DIRECT when the
// filesystem allows; Close switches it back.
func NewWriter(f *os.File, off int64) *Writer {
	w := &Writer{f: f, pos: off}
	w.direct = setDirect(f, true) == nil
	if w.direct {
		w.bp = bufPool.Get().(*[]byte)
		w.buf = (*w.bp)[:0]
		// The bytes up to the next aligned offset (a resumed file's tail) go through the page cache
		// when the Writer flushes; stage them like any others.
	}
	return w
}

// Direct reports whether the Writer is using O_DIRECT.
func (w *Writer) Direct() bool { return w.direct }

// SetAsync lets WriteOwned keep up to n direct writes in flight (n ≤ 1: none, the default). On a
// device that is busy with other I/O, and on a file whose blocks are already allocated (by
// fallocate), overlapping writes keep the device queue full: measured on the benchmark VM next
// to a reader of the same disk, one write at a time reached 1.0 GB/s, two 1.3–1.5 GB/s. Call it
// before the first write.
func (w *Writer) SetAsync(n int) {
	if n > 1 && w.direct {
		w.slots = make(chan struct{}, n)
	}
}

// Write writes p at the Writer's position. With O_DIRECT, whole aligned blocks are written before
// Write returns and the rest is staged until the next Write, Flush or Close.
func (w *Writer) Write(p []byte) (int, error) {
	return w.write(p, nil)
}

// WriteOwned writes p like Write, except that the caller hands p over until release is called:
// with SetAsync, p's aligned blocks may still be in flight when WriteOwned returns. release is
// called exactly once, from any goroutine, possibly before WriteOwned returns. The error of an
// asynchronous write is returned by a later write or Close.
func (w *Writer) WriteOwned(p []byte, release func()) error {
	o := &owned{release: release}
	o.refs.Store(1)
	_, err := w.write(p, o)
	o.done()
	return err
}

// owned counts the asynchronous writes still using a WriteOwned buffer, plus one for the call.
type owned struct {
	refs    atomic.Int32
	release func()
}

func (o *owned) done() {
	if o.refs.Add(-1) == 0 {
		o.release()
	}
}

func (w *Writer) write(p []byte, o *owned) (int, error) {
	if w.err == nil {
		w.err = w.asyncErr()
	}
	if w.err != nil {
		return 0, w.err
	}
	if !w.direct {
		n, err := w.f.WriteAt(p, w.pos)
		w.pos += int64(n)
		w.err = err
		return n, err
	}
	n := len(p)
	for len(p) > 0 {
		// Zero copy: nothing staged, an aligned position and aligned memory (a large Go
		// allocation, e.g. a received message) go straight to the device.
		if len(w.buf) == 0 && w.pos%Align == 0 && Aligned(p) && len(p) >= Align {
			k := len(p) &^ (Align - 1)
			if o != nil && w.slots != nil && w.synced {
				w.writeAsync(p[:k], o)
			} else if err := w.writeDirect(p[:k]); err != nil {
				return n - len(p), err
			}
			p = p[k:]
			continue
		}
		// Staged bytes that p's memory continues in phase (p's bytes after the staged block's end
		// are aligned, as a receiver placing pieces by file offset arranges): complete the block
		// from p and write everything staged, so the rest of p goes the zero-copy way above.
		if k := (Align - len(w.buf)%Align) % Align; len(w.buf) > 0 && w.pos%Align == 0 &&
			len(p) >= k+Align && Aligned(p[k:]) {
			w.buf = append(w.buf, p[:k]...)
			w.staged += int64(k)
			p = p[k:]
			if err := w.flushBlocks(); err != nil {
				return n - len(p), err
			}
			continue
		}
		k := copy(w.buf[len(w.buf):cap(w.buf)], p)
		w.staged += int64(k)
		w.buf = w.buf[:len(w.buf)+k]
		p = p[k:]
		if len(w.buf) == cap(w.buf) {
			if err := w.flushBlocks(); err != nil {
				return n - len(p), err
			}
		}
	}
	return n, nil
}

// writeAsync writes p (aligned) at the Writer's position on another goroutine, once one of the
// slots is free, and advances the position at once.
func (w *Writer) writeAsync(p []byte, o *owned) {
	w.slots <- struct{}{}
	sp := &span{start: w.pos}
	w.amu.Lock()
	w.pending = append(w.pending, sp)
	w.amu.Unlock()
	o.refs.Add(1)
	w.async.Add(1)
	off := w.pos
	w.pos += int64(len(p))
	go func() {
		defer w.async.Done()
		_, err := w.f.WriteAt(p, off)
		w.amu.Lock()
		sp.done = true
		if err != nil && w.aerr == nil {
			w.aerr = err
		}
		w.amu.Unlock()
		<-w.slots
		o.done()
	}()
}

func (w *Writer) asyncErr() error {
	if w.slots == nil {
		return nil
	}
	w.amu.Lock()
	defer w.amu.Unlock()
	return w.aerr
}

// Written is the file offset below which every byte passed to the Writer has been written (not
// counting staged bytes): where a resumed write could start.
func (w *Writer) Written() int64 {
	w.amu.Lock()
	defer w.amu.Unlock()
	for len(w.pending) > 0 && w.pending[0].done {
		w.pending = w.pending[1:]
	}
	if len(w.pending) > 0 {
		return w.pending[0].start
	}
	return w.pos
}

// flushBlocks writes the staged bytes up to the last aligned file offset and keeps the rest staged.
func (w *Writer) flushBlocks() error {
	// A staged run that starts unaligned (a resumed file) first completes its block through the page
	// cache, which also aligns the position for everything after it.
	if r := w.pos % Align; r != 0 {
		k := min(int(Align-r), len(w.buf))
		if err := w.writeBuffered(w.buf[:k]); err != nil {
			return err
		}
		w.shift(k)
	}
	k := len(w.buf) &^ (Align - 1)
	if k == 0 {
		return nil
	}
	if err := w.writeDirect(w.buf[:k]); err != nil {
		return err
	}
	w.shift(k)
	return nil
}

// shift drops the first k staged bytes, moving the rest to the (aligned) start of the buffer.
func (w *Writer) shift(k int) {
	rest := copy(w.buf[:cap(w.buf)], w.buf[k:])
	w.buf = w.buf[:rest]
}

func (w *Writer) writeDirect(p []byte) error {
	_, err := w.f.WriteAt(p, w.pos)
	if err != nil && w.direct && errors.Is(err, errInvalid) {
		// The filesystem accepted O_DIRECT at open but not this request (an alignment it needs
		// that we cannot know): continue through the page cache.
		w.direct = false
		if serr := setDirect(w.f, false); serr != nil {
			w.err = serr
			return serr
		}
		_, err = w.f.WriteAt(p, w.pos)
	}
	if err != nil {
		w.err = err
		return err
	}
	w.pos += int64(len(p))
	w.synced = w.direct
	return nil
}

func (w *Writer) writeBuffered(p []byte) error {
	if err := setDirect(w.f, false); err != nil {
		w.err = err
		return err
	}
	_, err := w.f.WriteAt(p, w.pos)
	if err == nil {
		err = setDirect(w.f, true)
	}
	if err != nil {
		w.err = err
		return err
	}
	w.pos += int64(len(p))
	return nil
}

// Offset is the file offset the next Write writes at (staged bytes included).
func (w *Writer) Offset() int64 { return w.pos + int64(len(w.buf)) }

// Close writes what is staged (the unaligned tail through the page cache) and returns the file to
// buffered mode. It does not close or fsync the file. The Writer must not be used afterwards.
func (w *Writer) Close() error {
	w.async.Wait()
	if w.err == nil {
		w.err = w.asyncErr()
	}
	err := w.err
	if err == nil && w.direct {
		err = w.flushBlocks()
	}
	if w.direct {
		w.direct = false
		if serr := setDirect(w.f, false); err == nil {
			err = serr
		}
	}
	if err == nil && len(w.buf) > 0 {
		var n int
		n, err = w.f.WriteAt(w.buf, w.pos)
		w.pos += int64(n)
	}
	if w.bp != nil {
		bufPool.Put(w.bp)
		w.bp, w.buf = nil, nil
	}
	w.err = errClosed
	return err
}

var errClosed = errors.New("directio: writer closed")

// OpenReader opens path a second time with O_DIRECT for ReadAt; it returns nil where the
// filesystem refuses direct I/O (callers then read through their ordinary descriptor).
func OpenReader(path string) *os.File {
	f, err := openDirect(path)
	if err != nil {
		return nil
	}
	return f
}

// ReadAt reads len(p) bytes at off like f.ReadAt, taking the aligned part from the device through
// direct (from OpenReader; may be nil) when off and p's memory are aligned, and any unaligned rest
// through f.
func ReadAt(direct, f *os.File, p []byte, off int64) (int, error) {
	done := 0
	if k := len(p) &^ (Align - 1); direct != nil && k > 0 && off%Align == 0 && Aligned(p) {
		n, err := direct.ReadAt(p[:k], off)
		done = n
		if n < k || err != nil {
			// End of file (a short read) or an error: report it as f.ReadAt would.
			if err == nil {
				err = io.EOF
			}
			return n, err
		}
	}
	n, err := f.ReadAt(p[done:], off+int64(done))
	return done + n, err
}

// Reader reads a file sequentially, taking whole aligned blocks from the device with direct I/O
// where the filesystem allows. A goroutine reads one BufSize block ahead of the caller, so the
// device's latency overlaps the caller's work (hashing, chunking) instead of adding to it.
type Reader struct {
	f, direct *os.File
	free      chan *[]byte
	full      chan filled
	stop      chan struct{}
	done      chan struct{}
	cur       []byte
	curBuf    *[]byte
	err       error
}

type filled struct {
	bp  *[]byte
	n   int
	err error
}

// readAhead is how many BufSize buffers a Reader holds: one with the caller, one being filled.
const readAhead = 4

// Open opens path for sequential reading with direct I/O where possible.
func Open(path string) (*Reader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	r := &Reader{f: f, direct: OpenReader(path), free: make(chan *[]byte, readAhead),
		full: make(chan filled, readAhead), stop: make(chan struct{}), done: make(chan struct{})}
	for range readAhead {
		r.free <- bufPool.Get().(*[]byte)
	}
	go r.fill()
	return r, nil
}

func (r *Reader) fill() {
	defer close(r.done)
	var off int64
	for {
		var bp *[]byte
		select {
		case bp = <-r.free:
		case <-r.stop:
			return
		}
		n, err := ReadAt(r.direct, r.f, *bp, off)
		off += int64(n)
		select {
		case r.full <- filled{bp, n, err}:
		case <-r.stop:
			r.free <- bp
			return
		}
		if err != nil {
			return
		}
	}
}

func (r *Reader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.curBuf != nil {
			r.free <- r.curBuf
			r.curBuf = nil
		}
		if r.err != nil {
			return 0, r.err
		}
		c := <-r.full
		r.curBuf, r.cur, r.err = c.bp, (*c.bp)[:c.n], c.err
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// Close stops the read-ahead and closes the file.
func (r *Reader) Close() error {
	close(r.stop)
	<-r.done
	if r.curBuf != nil {
		bufPool.Put(r.curBuf)
	}
	for {
		select {
		case bp := <-r.free:
			bufPool.Put(bp)
			continue
		case c := <-r.full:
			bufPool.Put(c.bp)
			continue
		default:
		}
		break
	}
	if r.direct != nil {
		r.direct.Close()
	}
	return r.f.Close()
}

// Enable turns O_DIRECT on for f's open file description; it fails where the filesystem refuses
// direct I/O. Writes through f must then be aligned (see Congruent).
func Enable(f *os.File) error { return setDirect(f, true) }

// Congruent reports whether p's memory address is congruent to the file offset off modulo Align,
// so that p's whole blocks at aligned offsets are also aligned in memory.
func Congruent(p []byte, off int64) bool {
	return len(p) > 0 && int64(uintptr(unsafe.Pointer(unsafe.SliceData(p)))%Align) == off%Align
}
