package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/buffdb/buffdbd/store"
)

// KV keys of BuffDB's model conventions.
func metadataKey(name, version string) string { return "model:" + name + ":" + version + ":metadata" }
func manifestKey(name, version string) string { return "model:" + name + ":" + version + ":blobs" }
func modelIndexKey(name string) string        { return "model:" + name + ":index" }

const globalIndexKey = "model:global:index"

// publishRequest is a fully received version: every chunk durable, every file hash verified.
type publishRequest struct {
	info      ModelInfo
	manifest  *Manifest
	aliases   []string
	sessionID string // deleted with its pins in the publishing transaction; "" for none
}

// publishResult says what the publishing transaction did besides publishing.
type publishResult struct {
	info      ModelInfo
	evicted   []Ref
	freed     int64
	moved     map[string]string // alias -> previous version ("" if new)
	republish bool              // the version was already published with this content: nothing new
}

// publish makes a version visible in one store transaction: rows, KV metadata, manifest, both
// indexes, latest and the requested aliases, budget enforcement (evicting first if needed). If any
// step fails nothing is applied.
func (s *Service) publish(ctx context.Context, req publishRequest) (publishResult, error) {
	var res publishResult
	info := req.info
	s.pinMu.Lock()
	defer s.pinMu.Unlock()
	err := s.db.Update(ctx, func(tx *store.Tx) error {
		res = publishResult{moved: map[string]string{}}
		if ok, err := versionExists(tx, info.Name, info.Version); err != nil {
			return err
		} else if ok {
			return s.republishTx(tx, req, &res)
		}
		info.BlobIDs = info.BlobIDs[:0]
		for fi := range req.manifest.Files {
			f := &req.manifest.Files[fi]
			for ci := range f.Chunks {
				c := &f.Chunks[ci]
				var blobID, corrupt int64
				found := false
				err := tx.Query(`SELECT blob_id, corrupt FROM reg_chunks WHERE sha256 = ?`, []any{c.SHA256[:]},
					func(scan func(...any) error) error { found = true; return scan(&blobID, &corrupt) })
				if err != nil {
					return err
				}
				if !found || corrupt != 0 {
					return fmt.Errorf("%w: chunk %s of %s is not stored; offer it again", ErrIncomplete, c.SHA256, f.Path)
				}
				c.BlobID = uint64(blobID)
				info.BlobIDs = append(info.BlobIDs, c.BlobID)
			}
		}
		seq, err := nextSeq(tx, "seq")
		if err != nil {
			return err
		}
		used, err := nextSeq(tx, "last_used")
		if err != nil {
			return err
		}
		params, _ := json.Marshal(nonNilMap(info.Parameters))
		if _, err := tx.Exec(`INSERT INTO reg_versions (name, version, seq, framework, parameters, created_at, size, last_used)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, info.Name, info.Version, seq, info.Framework, string(params),
			info.CreatedAt.UnixNano(), req.manifest.Size(), used); err != nil {
			return err
		}
		for fi, f := range req.manifest.Files {
			if _, err := tx.Exec(`INSERT INTO reg_files (name, version, idx, path, size, sha256) VALUES (?, ?, ?, ?, ?, ?)`,
				info.Name, info.Version, fi, f.Path, f.Size, f.SHA256[:]); err != nil {
				return fmt.Errorf("record file %s: %w", f.Path, err)
			}
			var off int64
			for ci, c := range f.Chunks {
				if _, err := tx.Exec(`INSERT INTO reg_refs (name, version, file, seq, off, chunk) VALUES (?, ?, ?, ?, ?, ?)`,
					info.Name, info.Version, fi, ci, off, c.SHA256[:]); err != nil {
					return err
				}
				off += c.Size
			}
		}
		for _, a := range append([]string{LatestAlias}, req.aliases...) {
			prev, err := setAliasTx(tx, info.Name, a, info.Version)
			if err != nil {
				return err
			}
			res.moved[a] = prev
		}
		if err := s.enforceBudget(tx, info.Name, info.Version, &res); err != nil {
			return err
		}
		meta, err := marshalInfo(info)
		if err != nil {
			return err
		}
		if err := tx.Set(metadataKey(info.Name, info.Version), meta); err != nil {
			return err
		}
		man, err := marshalManifest(req.manifest)
		if err != nil {
			return err
		}
		if err := tx.Set(manifestKey(info.Name, info.Version), man); err != nil {
			return err
		}
		if err := indexAdd(tx, modelIndexKey(info.Name), info.Version); err != nil {
			return err
		}
		if err := indexAdd(tx, globalIndexKey, info.Name); err != nil {
			return err
		}
		if req.sessionID != "" {
			if err := deleteSessionTx(tx, req.sessionID); err != nil {
				return err
			}
		}
		res.info = info
		return nil
	})
	if err != nil {
		return publishResult{}, err
	}
	return res, nil
}

// enforceBudget evicts least recently used, unpinned, un-aliased versions (never the one being
// published) until the registry's referenced chunks fit MaxBytes; ErrBudget if they cannot.
func (s *Service) enforceBudget(tx *store.Tx, keepName, keepVersion string, res *publishResult) error {
	if s.opts.MaxBytes <= 0 {
		return nil
	}
	for {
		used, err := usedBytes(tx)
		if err != nil {
			return err
		}
		if used <= s.opts.MaxBytes {
			return nil
		}
		var candidates []Ref
		err = tx.Query(`SELECT name, version FROM reg_versions v WHERE pinned = 0
				AND NOT (name = ? AND version = ?)
				AND NOT EXISTS (SELECT 1 FROM reg_aliases a WHERE a.name = v.name AND a.version = v.version)
				ORDER BY last_used`, []any{keepName, keepVersion},
			func(scan func(...any) error) error {
				var r Ref
				if err := scan(&r.Name, &r.Version); err != nil {
					return err
				}
				candidates = append(candidates, r)
				return nil
			})
		if err != nil {
			return err
		}
		found := len(candidates) > 0
		var victim Ref
		if found {
			// The least recently used version that frees something: one whose chunks all stay
			// referenced by other versions costs nothing to keep, and evicting it lost it for
			// nothing. If none frees anything alone (candidates sharing chunks among themselves),
			// the least recently used goes, which may free the next.
			victim = candidates[0]
			for _, c := range candidates {
				n, err := uniqueBytes(tx, c)
				if err != nil {
					return err
				}
				if n > 0 {
					victim = c
					break
				}
			}
		}
		if !found {
			var others int
			if err := tx.Query(`SELECT count(*) FROM reg_versions WHERE NOT (name = ? AND version = ?)`, []any{keepName, keepVersion},
				func(scan func(...any) error) error { return scan(&others) }); err != nil {
				return err
			}
			why := "every other version is pinned or aliased"
			if others == 0 {
				why = "it is the only version"
			} else if len(res.evicted) > 0 {
				why = fmt.Sprintf("%d versions were evicted and the rest are pinned or aliased", len(res.evicted))
			}
			return fmt.Errorf("%w: %s:%s needs %d bytes with what stays, over the budget of %d, and %s",
				ErrBudget, keepName, keepVersion, used, s.opts.MaxBytes, why)
		}
		freed, err := s.deleteVersionTx(tx, victim.Name, victim.Version)
		if err != nil {
			return fmt.Errorf("evict %s: %w", victim, err)
		}
		res.evicted = append(res.evicted, victim)
		res.freed += freed
	}
}

// uniqueBytes is the size of the chunks v references that no other published version does: what
// evicting it takes off usedBytes.
func uniqueBytes(tx *store.Tx, v Ref) (int64, error) {
	var n int64
	err := tx.Query(`SELECT COALESCE(SUM(c.size), 0) FROM reg_chunks c
			WHERE c.sha256 IN (SELECT chunk FROM reg_refs WHERE name = ? AND version = ?)
			AND NOT EXISTS (SELECT 1 FROM reg_refs r WHERE r.chunk = c.sha256 AND NOT (r.name = ? AND r.version = ?))`,
		[]any{v.Name, v.Version, v.Name, v.Version}, func(scan func(...any) error) error { return scan(&n) })
	return n, err
}

// usedBytes is the size of the distinct chunks referenced by published versions.
func usedBytes(tx *store.Tx) (int64, error) {
	var used int64
	err := tx.Query(`SELECT COALESCE(SUM(size), 0) FROM reg_chunks c WHERE EXISTS (SELECT 1 FROM reg_refs r WHERE r.chunk = c.sha256)`,
		nil, func(scan func(...any) error) error { return scan(&used) })
	return used, err
}

// deleteVersionTx removes a version: rows, aliases, KV keys, index entries, and the chunks only it
// referenced (unless an upload session or a live stream pins them). It returns the chunk bytes freed.
// The caller holds pinMu.
func (s *Service) deleteVersionTx(tx *store.Tx, name, version string) (int64, error) {
	var chunks [][]byte
	err := tx.Query(`SELECT DISTINCT chunk FROM reg_refs WHERE name = ? AND version = ?`, []any{name, version},
		func(scan func(...any) error) error {
			var c []byte
			if err := scan(&c); err != nil {
				return err
			}
			chunks = append(chunks, c)
			return nil
		})
	if err != nil {
		return 0, err
	}
	for _, q := range []string{
		`DELETE FROM reg_refs WHERE name = ? AND version = ?`,
		`DELETE FROM reg_files WHERE name = ? AND version = ?`,
		`DELETE FROM reg_aliases WHERE name = ? AND version = ?`,
		`DELETE FROM reg_versions WHERE name = ? AND version = ?`,
	} {
		if _, err := tx.Exec(q, name, version); err != nil {
			return 0, err
		}
	}
	for _, k := range []string{metadataKey(name, version), manifestKey(name, version)} {
		if err := tx.Delete(k); err != nil && !errors.Is(err, store.ErrNotFound) {
			return 0, err
		}
	}
	empty, err := indexRemove(tx, modelIndexKey(name), version)
	if err != nil {
		return 0, err
	}
	if empty {
		if err := tx.Delete(modelIndexKey(name)); err != nil && !errors.Is(err, store.ErrNotFound) {
			return 0, err
		}
		if _, err := indexRemove(tx, globalIndexKey, name); err != nil {
			return 0, err
		}
	}
	var freed int64
	for _, c := range chunks {
		n, err := s.dropChunkIfUnusedTx(tx, c)
		if err != nil {
			return 0, err
		}
		freed += n
	}
	return freed, nil
}

// dropChunkIfUnusedTx deletes a chunk row and its blob if no version, session or live stream
// references it, returning its size (0 if kept). The caller holds pinMu.
func (s *Service) dropChunkIfUnusedTx(tx *store.Tx, sum []byte) (int64, error) {
	var d [32]byte
	copy(d[:], sum)
	if s.pins[d] > 0 {
		return 0, nil
	}
	var blobID, size int64
	found := false
	err := tx.Query(`SELECT blob_id, size FROM reg_chunks c WHERE sha256 = ?
			AND NOT EXISTS (SELECT 1 FROM reg_refs r WHERE r.chunk = c.sha256)
			AND NOT EXISTS (SELECT 1 FROM reg_pins p WHERE p.chunk = c.sha256)`, []any{sum},
		func(scan func(...any) error) error { found = true; return scan(&blobID, &size) })
	if err != nil || !found {
		return 0, err
	}
	if _, err := tx.Exec(`DELETE FROM reg_chunks WHERE sha256 = ?`, sum); err != nil {
		return 0, err
	}
	if err := tx.DeleteBlob(uint64(blobID)); err != nil && !errors.Is(err, store.ErrNotFound) {
		return 0, fmt.Errorf("delete chunk blob %d: %w", blobID, err)
	}
	return size, nil
}

// republishTx ends the upload of a version that is already published: the same content (every
// file's path, size and sha256 as published) only deletes the session, whose chunks repaired any
// corrupt ones as they were stored, and sets the requested aliases; other content is ErrExists.
func (s *Service) republishTx(tx *store.Tx, req publishRequest, res *publishResult) error {
	info := req.info
	vi, err := versionInfoTx(tx, info.Name, info.Version, false)
	if err != nil {
		return err
	}
	same := len(vi.Files) == len(req.manifest.Files)
	for i := 0; same && i < len(vi.Files); i++ {
		a, b := vi.Files[i], req.manifest.Files[i]
		same = a.Path == b.Path && a.Size == b.Size && a.SHA256 == b.SHA256
	}
	if !same {
		return fmt.Errorf("%w: %s:%s is already published with other content", ErrExists, info.Name, info.Version)
	}
	for _, a := range req.aliases {
		if a == LatestAlias {
			continue
		}
		prev, err := setAliasTx(tx, info.Name, a, info.Version)
		if err != nil {
			return err
		}
		res.moved[a] = prev
	}
	if req.sessionID != "" {
		if err := deleteSessionTx(tx, req.sessionID); err != nil {
			return err
		}
	}
	res.info, res.republish = vi.Info, true
	return nil
}

func versionExists(tx *store.Tx, name, version string) (bool, error) {
	found := false
	err := tx.Query(`SELECT 1 FROM reg_versions WHERE name = ? AND version = ?`, []any{name, version},
		func(scan func(...any) error) error { found = true; return nil })
	return found, err
}

// nextSeq returns one more than the largest value of column col in reg_versions (a logical clock
// that orders publishes and uses without depending on the wall clock's resolution).
func nextSeq(tx *store.Tx, col string) (int64, error) {
	var n int64
	err := tx.Query(`SELECT COALESCE(MAX(`+col+`), 0) + 1 FROM reg_versions`, nil,
		func(scan func(...any) error) error { return scan(&n) })
	return n, err
}

// setAliasTx points alias at version and returns the version it pointed at before ("" if none).
func setAliasTx(tx *store.Tx, name, alias, version string) (string, error) {
	prev := ""
	err := tx.Query(`SELECT version FROM reg_aliases WHERE name = ? AND alias = ?`, []any{name, alias},
		func(scan func(...any) error) error { return scan(&prev) })
	if err != nil {
		return "", err
	}
	_, err = tx.Exec(`INSERT INTO reg_aliases (name, alias, version) VALUES (?, ?, ?)
		ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version`, name, alias, version)
	return prev, err
}

// indexAdd appends item to the JSON array at key (creating it) unless present.
func indexAdd(tx *store.Tx, key, item string) error {
	list, rebuilt, err := readIndex(tx, key)
	if err != nil {
		return err
	}
	if slices.Contains(list, item) && !rebuilt {
		return nil
	}
	if !slices.Contains(list, item) {
		list = append(list, item)
	}
	b, _ := json.Marshal(list)
	return tx.Set(key, string(b))
}

// indexRemove removes item from the JSON array at key and reports whether the array is now empty.
func indexRemove(tx *store.Tx, key, item string) (bool, error) {
	list, _, err := readIndex(tx, key)
	if err != nil {
		return false, err
	}
	list = slices.DeleteFunc(list, func(s string) bool { return s == item })
	if len(list) == 0 {
		if key == globalIndexKey {
			return true, tx.Set(key, "[]")
		}
		return true, nil
	}
	b, _ := json.Marshal(list)
	return false, tx.Set(key, string(b))
}

// readIndex reads the JSON array at key; rebuilt says it was not one and was rebuilt from the
// registry tables (so it must be written back).
func readIndex(tx *store.Tx, key string) (list []string, rebuilt bool, err error) {
	v, err := tx.Get(key)
	if errors.Is(err, store.ErrNotFound) {
		return []string{}, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if err := json.Unmarshal([]byte(v), &list); err != nil {
		// Someone wrote a non-array through the KV API; the registry tables are authoritative, so
		// rebuild the index from them rather than fail every publish or lose the other entries.
		list, err = rebuildIndex(tx, key)
		return list, true, err
	}
	return list, false, nil
}

// rebuildIndex lists what index key should hold, from the registry tables: the model names in
// order of first publish (model:global:index) or a model's versions in publish order.
func rebuildIndex(tx *store.Tx, key string) ([]string, error) {
	q := `SELECT name FROM reg_versions GROUP BY name ORDER BY min(seq)`
	var args []any
	if key != globalIndexKey {
		name := strings.TrimSuffix(strings.TrimPrefix(key, "model:"), ":index")
		q, args = `SELECT version FROM reg_versions WHERE name = ? ORDER BY seq`, []any{name}
	}
	list := []string{}
	err := tx.Query(q, args, func(scan func(...any) error) error {
		var s string
		if err := scan(&s); err != nil {
			return err
		}
		list = append(list, s)
		return nil
	})
	return list, err
}

func nonNilMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}
