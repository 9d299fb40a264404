package huggingface

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
)

// A journal records, for one partial file, how many bytes of each byte range are durable. Its
// invariant is that a record is written only after the data it describes was fsynced, so after a
// kill -9 (or power loss) every byte the journal claims is on disk; a lost journal write only costs
// re-downloading. Records carry a CRC so a torn tail is recognized and ignored.
//
// Layout: a 40-byte header (magic, file size, range size, first 8 bytes of sha256(identity), ramp
// length — see rangeLayout), then 16-byte records (range index u32, durable bytes in the range u64,
// crc32 of the first 12 bytes).
type journal struct {
	f         *os.File
	size      int64
	rangeSize int64
	ramp      int64
	done      map[uint32]int64
}

// journalMagic names the format and the rangeLayout it was written with: version 3 tapers the last
// ranges. A journal of another version is discarded (its ranges would not line up), which costs
// re-downloading one interrupted file after an upgrade, never wrong bytes.
var journalMagic = [8]byte{'B', 'H', 'F', 'J', 'R', 'N', 'L', '3'}

const (
	journalHeader = 40
	journalRecord = 16
)

func identityTag(identity string) [8]byte {
	s := sha256.Sum256([]byte(identity))
	var t [8]byte
	copy(t[:], s[:8])
	return t
}

// openJournal opens or creates the journal at path for a file of the given size and identity
// (its expected hash). A journal written for other content or size is discarded (fresh=true): the
// partial file's bytes cannot be trusted then. An existing journal keeps its own range layout (range
// size and ramp) so changing options between runs does not invalidate progress.
func openJournal(path string, size, rangeSize, ramp int64, identity string) (j *journal, fresh bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("open journal: %w", err)
	}
	j = &journal{f: f, size: size, rangeSize: rangeSize, ramp: ramp, done: map[uint32]int64{}}
	data, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, false, fmt.Errorf("read journal: %w", err)
	}
	if rs, rp, done, good, ok := parseJournal(data, size, identity); ok {
		j.rangeSize, j.ramp, j.done = rs, rp, done
		if good != len(data) {
			if err := f.Truncate(int64(good)); err != nil {
				f.Close()
				return nil, false, fmt.Errorf("truncate journal: %w", err)
			}
		}
		if _, err := f.Seek(int64(good), io.SeekStart); err != nil {
			f.Close()
			return nil, false, err
		}
		return j, false, nil
	}
	// New or foreign journal: start over.
	tag := identityTag(identity)
	var hdr [journalHeader]byte
	copy(hdr[:], journalMagic[:])
	binary.LittleEndian.PutUint64(hdr[8:], uint64(size))
	binary.LittleEndian.PutUint64(hdr[16:], uint64(rangeSize))
	copy(hdr[24:], tag[:])
	binary.LittleEndian.PutUint64(hdr[32:], uint64(ramp))
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, false, fmt.Errorf("reset journal: %w", err)
	}
	if _, err := f.WriteAt(hdr[:], 0); err != nil {
		f.Close()
		return nil, false, fmt.Errorf("write journal: %w", err)
	}
	if _, err := f.Seek(journalHeader, io.SeekStart); err != nil {
		f.Close()
		return nil, false, err
	}
	return j, true, nil
}

// parseJournal reads a journal's content for a file of the given size and identity: its range
// layout, the durable bytes of each range, and the length of its valid prefix (a torn or garbage
// tail is not). ok is false for a journal of another format, file or identity.
func parseJournal(data []byte, size int64, identity string) (rangeSize, ramp int64, done map[uint32]int64, good int, ok bool) {
	tag := identityTag(identity)
	if len(data) < journalHeader || !bytes.Equal(data[:8], journalMagic[:]) ||
		int64(binary.LittleEndian.Uint64(data[8:])) != size || !bytes.Equal(data[24:32], tag[:]) {
		return 0, 0, nil, 0, false
	}
	rangeSize = int64(binary.LittleEndian.Uint64(data[16:]))
	ramp = int64(binary.LittleEndian.Uint64(data[32:]))
	if rangeSize <= 0 || ramp < 0 || ramp > 1<<16 {
		return 0, 0, nil, 0, false
	}
	done = map[uint32]int64{}
	good = journalHeader
	for off := journalHeader; off+journalRecord <= len(data); off += journalRecord {
		rec := data[off : off+journalRecord]
		if crc32.ChecksumIEEE(rec[:12]) != binary.LittleEndian.Uint32(rec[12:]) {
			break // torn or garbage tail: everything before it is still valid
		}
		idx, n := binary.LittleEndian.Uint32(rec), int64(binary.LittleEndian.Uint64(rec[4:]))
		if n > done[idx] {
			done[idx] = n
		}
		good = off + journalRecord
	}
	return rangeSize, ramp, done, good, true
}

// durableBytes is how many bytes of a file of the given size and identity the journal at path
// vouches for, read without changing anything (0 if it is missing or foreign). It is what a
// download will resume from, if its partial file is intact.
func durableBytes(path string, size int64, identity string) int64 {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	rs, ramp, done, _, ok := parseJournal(data, size, identity)
	if !ok {
		return 0
	}
	var n int64
	for i, b := range rangeLayout(size, rs, ramp) {
		n += min(done[uint32(i)], b[1]-b[0])
	}
	return n
}

// record appends "range idx has n durable bytes". The caller must have fsynced those bytes.
// Writes are serialized by the caller. The journal itself is not fsynced: losing a record only
// loses progress, never correctness.
func (j *journal) record(idx uint32, n int64) error {
	var rec [journalRecord]byte
	binary.LittleEndian.PutUint32(rec[:], idx)
	binary.LittleEndian.PutUint64(rec[4:], uint64(n))
	binary.LittleEndian.PutUint32(rec[12:], crc32.ChecksumIEEE(rec[:12]))
	if _, err := j.f.Write(rec[:]); err != nil {
		return fmt.Errorf("write journal: %w", err)
	}
	return nil
}

func (j *journal) close() error {
	if j == nil || j.f == nil {
		return nil
	}
	err := j.f.Close()
	j.f = nil
	return err
}
