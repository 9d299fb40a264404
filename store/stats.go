package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// Stats are computed on demand for metrics and `buffdbd` status output.
type Stats struct {
	DatabaseBytes int64 // main database file
	WALBytes      int64
	PayloadBytes  int64 // referenced payload files (orphans awaiting GC are not counted)
	PayloadFiles  int64
	Keys          int64
	Blobs         int64
	OpenTx        int
}

// Stats reports sizes and counts. It counts rows (O(rows) in SQLite), so call it at metrics-scrape
// frequency, not per request.
func (db *DB) Stats(ctx context.Context) (Stats, error) {
	if err := db.checkOpen(); err != nil {
		return Stats{}, err
	}
	var s Stats
	if st, err := os.Stat(db.path); err == nil {
		s.DatabaseBytes = st.Size()
	}
	if st, err := os.Stat(db.path + "-wal"); err == nil {
		s.WALBytes = st.Size()
	}
	err := db.readView(ctx, func(q querier) error {
		if err := q.queryRow(ctx, "SELECT count(*) FROM kv").Scan(&s.Keys); err != nil {
			return err
		}
		if err := q.queryRow(ctx, "SELECT count(*) FROM blob").Scan(&s.Blobs); err != nil {
			return err
		}
		// From the refcount table, not a directory walk: cheap on slow SD cards with 100k+ files.
		return q.queryRow(ctx, "SELECT count(*), coalesce(sum(size), 0) FROM payload").Scan(&s.PayloadFiles, &s.PayloadBytes)
	})
	db.txMu.Lock()
	s.OpenTx = len(db.txs)
	db.txMu.Unlock()
	return s, mapErr(err)
}

// VerifyPayloads re-hashes every blob's bytes (payload files and inline data) and calls fn for each
// blob whose bytes are missing or do not match its recorded sha256 (err wraps ErrCorrupt). It
// returns early only for ctx or database errors.
func (db *DB) VerifyPayloads(ctx context.Context, fn func(bad BlobInfo, err error)) error {
	if err := db.checkOpen(); err != nil {
		return err
	}
	// Payload files: list them first (small rows), then hash each without holding a read transaction.
	type pl struct {
		sum  [32]byte
		size int64
	}
	var pls []pl
	rows, err := db.rstmt.query(ctx, "SELECT sha256, size FROM payload")
	if err != nil {
		return mapErr(err)
	}
	for rows.Next() {
		var b []byte
		var p pl
		if err := rows.Scan(&b, &p.size); err != nil {
			rows.Close()
			return err
		}
		copy(p.sum[:], b)
		pls = append(pls, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return mapErr(err)
	}
	for _, p := range pls {
		if err := ctx.Err(); err != nil {
			return err
		}
		bad := db.checkPayloadFile(p.sum, p.size)
		if bad == nil {
			continue
		}
		if err := db.reportBlobs(ctx, "SELECT id, size, sha256, metadata FROM blob WHERE sha256 = ? AND data IS NULL",
			[]any{p.sum[:]}, bad, fn); err != nil {
			return err
		}
	}
	// Inline bytes, in id pages so no read transaction stays open for long.
	var after int64
	for {
		n := 0
		var badIDs []int64
		rows, err := db.rstmt.query(ctx, "SELECT id, sha256, data FROM blob WHERE id > ? AND data IS NOT NULL ORDER BY id LIMIT 256", after)
		if err != nil {
			return mapErr(err)
		}
		for rows.Next() {
			var id int64
			var sum, data []byte
			if err := rows.Scan(&id, &sum, &data); err != nil {
				rows.Close()
				return err
			}
			n++
			after = id
			if got := sha256.Sum256(data); string(got[:]) != string(sum) {
				badIDs = append(badIDs, id)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return mapErr(err)
		}
		for _, id := range badIDs {
			if err := db.reportBlobs(ctx, "SELECT id, size, sha256, metadata FROM blob WHERE id = ?", []any{id},
				fmt.Errorf("blob %d: inline bytes do not match their sha256: %w", id, ErrCorrupt), fn); err != nil {
				return err
			}
		}
		if n == 0 {
			return nil
		}
	}
}

func (db *DB) checkPayloadFile(sum [32]byte, size int64) error {
	f, err := os.Open(db.payloadPath(sum))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("payload %x: file missing: %w", sum, ErrCorrupt)
	}
	if err != nil {
		return fmt.Errorf("payload %x: %v: %w", sum, err, ErrCorrupt)
	}
	defer f.Close()
	h := sha256.New()
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	// Through a LimitedReader: an *os.File's WriteTo would make CopyBuffer ignore bp and read
	// 32 KiB at a time. One byte past size is enough to tell a longer file.
	n, err := io.CopyBuffer(h, io.LimitReader(f, size+1), *bp)
	if err != nil {
		return fmt.Errorf("payload %x: read: %v: %w", sum, err, ErrCorrupt)
	}
	var got [32]byte
	h.Sum(got[:0])
	if n != size || got != sum {
		return fmt.Errorf("payload %x: content does not match (%d bytes, sha256 %x): %w", sum, n, got, ErrCorrupt)
	}
	return nil
}

func (db *DB) reportBlobs(ctx context.Context, q string, args []any, bad error, fn func(BlobInfo, error)) error {
	var infos []BlobInfo
	rows, err := db.rstmt.query(ctx, q, args...)
	if err != nil {
		return mapErr(err)
	}
	for rows.Next() {
		var bi BlobInfo
		var id int64
		var sum []byte
		var meta *string
		if err := rows.Scan(&id, &bi.Size, &sum, &meta); err != nil {
			rows.Close()
			return err
		}
		bi.ID = uint64(id)
		copy(bi.SHA256[:], sum)
		bi.Metadata = meta
		infos = append(infos, bi)
	}
	rows.Close()
	for _, bi := range infos {
		fn(bi, bad)
	}
	return mapErr(rows.Err())
}
