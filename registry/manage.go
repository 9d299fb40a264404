package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/buffdb/buffdbd/store"
)

// Resolve turns a reference into a concrete name and version. ErrNotFound names what is missing.
func (s *Service) Resolve(ctx context.Context, ref Ref) (Ref, error) {
	var out Ref
	err := s.db.View(ctx, func(tx *store.Tx) error {
		var err error
		out, err = resolveTx(tx, ref)
		return err
	})
	return out, err
}

func resolveTx(tx *store.Tx, ref Ref) (Ref, error) {
	if ref.Version != "" {
		ok, err := versionExists(tx, ref.Name, ref.Version)
		if err != nil {
			return Ref{}, err
		}
		if !ok {
			return Ref{}, fmt.Errorf("%w: model version %s:%s", ErrNotFound, ref.Name, ref.Version)
		}
		return Ref{Name: ref.Name, Version: ref.Version}, nil
	}
	v := ""
	err := tx.Query(`SELECT version FROM reg_aliases WHERE name = ? AND alias = ?`, []any{ref.Name, ref.Alias},
		func(scan func(...any) error) error { return scan(&v) })
	if err != nil {
		return Ref{}, err
	}
	if v == "" {
		return Ref{}, aliasNotFound(tx, ref)
	}
	return Ref{Name: ref.Name, Version: v}, nil
}

// aliasNotFound says which part of name@alias is missing: the whole model (a plain `name` means
// name@latest, and a user who typed just a name should hear that the model does not exist), or
// only the alias, listing those the model has.
func aliasNotFound(tx *store.Tx, ref Ref) error {
	versions := 0
	err := tx.Query(`SELECT COUNT(*) FROM reg_versions WHERE name = ?`, []any{ref.Name},
		func(scan func(...any) error) error { return scan(&versions) })
	if err != nil {
		return err
	}
	if versions == 0 {
		return fmt.Errorf("%w: model %s", ErrNotFound, ref.Name)
	}
	var aliases []string
	err = tx.Query(`SELECT alias FROM reg_aliases WHERE name = ? ORDER BY alias`, []any{ref.Name},
		func(scan func(...any) error) error {
			var a string
			err := scan(&a)
			aliases = append(aliases, a)
			return err
		})
	if err != nil {
		return err
	}
	has := "it has none; name a version as " + ref.Name + ":VERSION"
	if len(aliases) > 0 {
		has = "its aliases: " + strings.Join(aliases, ", ")
	}
	return fmt.Errorf("%w: alias %s@%s (%s)", ErrNotFound, ref.Name, ref.Alias, has)
}

// ResolveAlias returns the version alias points at; ErrNotFound if the alias does not exist.
func (s *Service) ResolveAlias(ctx context.Context, name, alias string) (string, error) {
	if err := ValidateName(name); err != nil {
		return "", err
	}
	if err := ValidateAlias(alias); err != nil {
		return "", err
	}
	r, err := s.Resolve(ctx, Ref{Name: name, Alias: alias})
	return r.Version, err
}

// HasVersion reports whether name:version is published.
func (s *Service) HasVersion(ctx context.Context, name, version string) (bool, error) {
	if err := ValidateName(name); err != nil {
		return false, err
	}
	if err := ValidateVersion(version); err != nil {
		return false, err
	}
	var ok bool
	err := s.db.View(ctx, func(tx *store.Tx) (err error) { ok, err = versionExists(tx, name, version); return })
	return ok, err
}

// soundFile is the SQL condition that the reg_files row f has every chunk stored and none marked
// corrupt: only such a copy may stand in for downloading or sending a file's content again (a
// corrupt chunk is healed by receiving the content, which the copy would skip).
const soundFile = `NOT EXISTS (SELECT 1 FROM reg_refs r LEFT JOIN reg_chunks c ON c.sha256 = r.chunk
	WHERE r.name = f.name AND r.version = f.version AND r.file = f.idx AND (c.sha256 IS NULL OR c.corrupt != 0))`

// HasContent reports whether some published version has a sound file (every chunk stored, none
// corrupt) with this sha256: Import can then reuse it with ImportFile.Open nil.
func (s *Service) HasContent(ctx context.Context, sum [32]byte) (bool, error) {
	found := false
	err := s.db.View(ctx, func(tx *store.Tx) error {
		return tx.Query(`SELECT 1 FROM reg_files f WHERE f.sha256 = ? AND `+soundFile+` LIMIT 1`, []any{sum[:]},
			func(scan func(...any) error) error { found = true; return nil })
	})
	return found, err
}

// VersionInfo describes one published version.
type VersionInfo struct {
	Info       ModelInfo
	Files      []File // with Chunks only from Manifest; Show fills them
	Size       int64  // sum of file sizes
	Aliases    []string
	Pinned     bool
	LastPulled time.Time // zero if never pulled
}

// Show returns a version with its files (and their chunks), aliases, pin and last pull.
func (s *Service) Show(ctx context.Context, ref Ref) (VersionInfo, error) {
	var vi VersionInfo
	err := s.db.View(ctx, func(tx *store.Tx) error {
		r, err := resolveTx(tx, ref)
		if err != nil {
			return err
		}
		vi, err = versionInfoTx(tx, r.Name, r.Version, true)
		return err
	})
	return vi, err
}

// Manifest returns the files and chunks (with blob ids) of a version.
func (s *Service) Manifest(ctx context.Context, ref Ref) (ModelInfo, *Manifest, error) {
	vi, err := s.Show(ctx, ref)
	if err != nil {
		return ModelInfo{}, nil, err
	}
	return vi.Info, &Manifest{Files: vi.Files}, nil
}

func versionInfoTx(tx *store.Tx, name, version string, withChunks bool) (VersionInfo, error) {
	var vi VersionInfo
	meta, err := tx.Get(metadataKey(name, version))
	if err != nil {
		return vi, fmt.Errorf("read metadata of %s:%s: %w", name, version, err)
	}
	if err := json.Unmarshal([]byte(meta), &vi.Info); err != nil {
		return vi, fmt.Errorf("decode metadata of %s:%s: %w", name, version, err)
	}
	var pinned, lastPulled int64
	err = tx.Query(`SELECT size, pinned, last_pulled FROM reg_versions WHERE name = ? AND version = ?`, []any{name, version},
		func(scan func(...any) error) error { return scan(&vi.Size, &pinned, &lastPulled) })
	if err != nil {
		return vi, err
	}
	vi.Pinned = pinned != 0
	if lastPulled != 0 {
		vi.LastPulled = time.Unix(0, lastPulled).UTC()
	}
	err = tx.Query(`SELECT alias FROM reg_aliases WHERE name = ? AND version = ? ORDER BY alias`, []any{name, version},
		func(scan func(...any) error) error {
			var a string
			if err := scan(&a); err != nil {
				return err
			}
			vi.Aliases = append(vi.Aliases, a)
			return nil
		})
	if err != nil {
		return vi, err
	}
	err = tx.Query(`SELECT path, size, sha256 FROM reg_files WHERE name = ? AND version = ? ORDER BY idx`, []any{name, version},
		func(scan func(...any) error) error {
			var f File
			var sum []byte
			if err := scan(&f.Path, &f.Size, &sum); err != nil {
				return err
			}
			copy(f.SHA256[:], sum)
			vi.Files = append(vi.Files, f)
			return nil
		})
	if err != nil || !withChunks {
		return vi, err
	}
	err = tx.Query(`SELECT r.file, r.chunk, c.size, c.blob_id FROM reg_refs r JOIN reg_chunks c ON c.sha256 = r.chunk
			WHERE r.name = ? AND r.version = ? ORDER BY r.file, r.seq`, []any{name, version},
		func(scan func(...any) error) error {
			var fi int
			var sum []byte
			var c ChunkRef
			if err := scan(&fi, &sum, &c.Size, &c.BlobID); err != nil {
				return err
			}
			if fi < 0 || fi >= len(vi.Files) {
				return fmt.Errorf("%s:%s: chunk of unknown file %d", name, version, fi)
			}
			copy(c.SHA256[:], sum)
			vi.Files[fi].Chunks = append(vi.Files[fi].Chunks, c)
			return nil
		})
	return vi, err
}

// ListFilter selects models for ListModels. Empty fields match everything.
type ListFilter struct {
	Prefix     string            // name prefix
	Framework  string            // exact framework of at least one version
	Parameters map[string]string // every pair must be among a version's parameters
}

// ModelSummary is one model in ListModels.
type ModelSummary struct {
	Name     string
	Versions []VersionSummary // matching versions, oldest first
	Aliases  map[string]string
}

// VersionSummary is one version in a listing.
type VersionSummary struct {
	Version    string
	Framework  string
	Size       int64
	CreatedAt  time.Time
	Pinned     bool
	LastPulled time.Time
	Aliases    []string
}

// ListModels returns the models (sorted by name) having at least one version matching f.
func (s *Service) ListModels(ctx context.Context, f ListFilter) ([]ModelSummary, error) {
	var out []ModelSummary
	err := s.db.View(ctx, func(tx *store.Tx) error {
		q := `SELECT name, version, framework, parameters, size, created_at, pinned, last_pulled FROM reg_versions WHERE 1=1`
		var args []any
		if f.Prefix != "" {
			// substr comparison rather than LIKE: names may contain '_' and '%' is not allowed, but
			// LIKE is also case-insensitive for ASCII, which names are not.
			q += ` AND substr(name, 1, ?) = ?`
			args = append(args, len(f.Prefix), f.Prefix)
		}
		// Versions with the framework, found through the store's secondary index over the metadata
		// JSON; if that index is missing (dropped by a user), the version table's own column.
		var withFramework map[Ref]bool
		if f.Framework != "" {
			withFramework = map[Ref]bool{}
			err := tx.Find(FrameworkIndex, f.Framework, 0, func(key, _ string) error {
				if r, ok := parseMetadataKey(key); ok {
					withFramework[r] = true
				}
				return nil
			})
			if errors.Is(err, store.ErrNotFound) {
				withFramework = nil
				q += ` AND framework = ?`
				args = append(args, f.Framework)
			} else if err != nil {
				return err
			}
		}
		q += ` ORDER BY name, seq`
		byName := map[string]int{}
		err := tx.Query(q, args, func(scan func(...any) error) error {
			var name, params string
			var vs VersionSummary
			var created, pinned, pulled int64
			if err := scan(&name, &vs.Version, &vs.Framework, &params, &vs.Size, &created, &pinned, &pulled); err != nil {
				return err
			}
			if withFramework != nil && !withFramework[Ref{Name: name, Version: vs.Version}] {
				return nil
			}
			if len(f.Parameters) > 0 {
				var p map[string]string
				_ = json.Unmarshal([]byte(params), &p)
				for k, v := range f.Parameters {
					if got, ok := p[k]; !ok || got != v {
						return nil
					}
				}
			}
			vs.CreatedAt = time.Unix(0, created).UTC()
			vs.Pinned = pinned != 0
			if pulled != 0 {
				vs.LastPulled = time.Unix(0, pulled).UTC()
			}
			i, ok := byName[name]
			if !ok {
				i = len(out)
				byName[name] = i
				out = append(out, ModelSummary{Name: name, Aliases: map[string]string{}})
			}
			out[i].Versions = append(out[i].Versions, vs)
			return nil
		})
		if err != nil {
			return err
		}
		for i := range out {
			m := &out[i]
			err := tx.Query(`SELECT alias, version FROM reg_aliases WHERE name = ? ORDER BY alias`, []any{m.Name},
				func(scan func(...any) error) error {
					var a, v string
					if err := scan(&a, &v); err != nil {
						return err
					}
					m.Aliases[a] = v
					for j := range m.Versions {
						if m.Versions[j].Version == v {
							m.Versions[j].Aliases = append(m.Versions[j].Aliases, a)
						}
					}
					return nil
				})
			if err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// parseMetadataKey splits model:{name}:{version}:metadata (names and versions never contain ':').
func parseMetadataKey(key string) (Ref, bool) {
	rest, ok := strings.CutPrefix(key, "model:")
	if !ok {
		return Ref{}, false
	}
	rest, ok = strings.CutSuffix(rest, ":metadata")
	if !ok {
		return Ref{}, false
	}
	name, version, ok := strings.Cut(rest, ":")
	if !ok || strings.Contains(version, ":") {
		return Ref{}, false
	}
	return Ref{Name: name, Version: version}, true
}

// ListVersions returns every version of name, oldest first; ErrNotFound if it has none.
func (s *Service) ListVersions(ctx context.Context, name string) ([]VersionSummary, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	ms, err := s.ListModels(ctx, ListFilter{Prefix: name})
	if err != nil {
		return nil, err
	}
	for _, m := range ms {
		if m.Name == name {
			return m.Versions, nil
		}
	}
	return nil, fmt.Errorf("%w: model %s", ErrNotFound, name)
}

// DeleteVersion deletes a version and the chunks only it used. Without force it refuses with
// ErrAliased while an alias other than latest points at it, and ErrPinned while it is pinned.
// Deleting the latest version moves latest to the most recent remaining version.
func (s *Service) DeleteVersion(ctx context.Context, ref Ref, force bool) (Ref, error) {
	var r Ref
	var evs []Event
	var freed int64
	s.eventMu.Lock()
	s.pinMu.Lock()
	err := s.db.Update(ctx, func(tx *store.Tx) error {
		evs = nil
		var err error
		if r, err = resolveTx(tx, ref); err != nil {
			return err
		}
		vi, err := versionInfoTx(tx, r.Name, r.Version, false)
		if err != nil {
			return err
		}
		others := slices.DeleteFunc(slices.Clone(vi.Aliases), func(a string) bool { return a == LatestAlias })
		if !force && len(others) > 0 {
			return fmt.Errorf("%w: %s is behind alias %s (remove the alias or force)", ErrAliased, r, strings.Join(others, ", "))
		}
		if !force && vi.Pinned {
			return fmt.Errorf("%w: %s (unpin it or force)", ErrPinned, r)
		}
		if freed, err = s.deleteVersionTx(tx, r.Name, r.Version); err != nil {
			return err
		}
		evs = append(evs, Event{Kind: EventDeleted, Name: r.Name, Version: r.Version})
		for _, a := range vi.Aliases {
			evs = append(evs, Event{Kind: EventAliasRemoved, Name: r.Name, Alias: a, Previous: r.Version})
		}
		if slices.Contains(vi.Aliases, LatestAlias) {
			next := ""
			err := tx.Query(`SELECT version FROM reg_versions WHERE name = ? ORDER BY seq DESC LIMIT 1`, []any{r.Name},
				func(scan func(...any) error) error { return scan(&next) })
			if err != nil {
				return err
			}
			if next != "" {
				if _, err := setAliasTx(tx, r.Name, LatestAlias, next); err != nil {
					return err
				}
				evs = append(evs, Event{Kind: EventAliasSet, Name: r.Name, Alias: LatestAlias, Version: next})
			}
		}
		return nil
	})
	s.pinMu.Unlock()
	if err == nil {
		s.watch.publish(evs...)
	}
	s.eventMu.Unlock()
	if err != nil {
		return Ref{}, err
	}
	if freed > 0 {
		s.collectPayloads(ctx)
	}
	return r, nil
}

// SetAlias points alias at name:version atomically and returns the version it pointed at before
// ("" if it is new). ErrNotFound if the version does not exist.
func (s *Service) SetAlias(ctx context.Context, name, alias, version string) (string, error) {
	if err := ValidateName(name); err != nil {
		return "", err
	}
	if err := ValidateAlias(alias); err != nil {
		return "", err
	}
	if alias == LatestAlias {
		return "", fmt.Errorf("%w: alias %s is maintained automatically (the most recently published version)", ErrInvalid, LatestAlias)
	}
	if err := ValidateVersion(version); err != nil {
		return "", err
	}
	var prev string
	s.eventMu.Lock()
	defer s.eventMu.Unlock()
	err := s.db.Update(ctx, func(tx *store.Tx) error {
		ok, err := versionExists(tx, name, version)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: model version %s:%s", ErrNotFound, name, version)
		}
		prev, err = setAliasTx(tx, name, alias, version)
		return err
	})
	if err != nil {
		return "", err
	}
	if prev != version {
		s.watch.publish(Event{Kind: EventAliasSet, Name: name, Alias: alias, Version: version, Previous: prev})
	}
	return prev, nil
}

// RemoveAlias deletes alias and returns the version it pointed at; ErrNotFound if it does not exist.
func (s *Service) RemoveAlias(ctx context.Context, name, alias string) (string, error) {
	if err := ValidateName(name); err != nil {
		return "", err
	}
	if err := ValidateAlias(alias); err != nil {
		return "", err
	}
	if alias == LatestAlias {
		return "", fmt.Errorf("%w: alias %s is maintained automatically (the most recently published version)", ErrInvalid, LatestAlias)
	}
	var prev string
	s.eventMu.Lock()
	defer s.eventMu.Unlock()
	err := s.db.Update(ctx, func(tx *store.Tx) error {
		r, err := resolveTx(tx, Ref{Name: name, Alias: alias})
		if err != nil {
			return err
		}
		prev = r.Version
		_, err = tx.Exec(`DELETE FROM reg_aliases WHERE name = ? AND alias = ?`, name, alias)
		return err
	})
	if err != nil {
		return "", err
	}
	s.watch.publish(Event{Kind: EventAliasRemoved, Name: name, Alias: alias, Previous: prev})
	return prev, nil
}

// SetPinned pins (exempts from eviction) or unpins a version.
func (s *Service) SetPinned(ctx context.Context, ref Ref, pinned bool) (Ref, error) {
	var r Ref
	err := s.db.Update(ctx, func(tx *store.Tx) error {
		var err error
		if r, err = resolveTx(tx, ref); err != nil {
			return err
		}
		_, err = tx.Exec(`UPDATE reg_versions SET pinned = ? WHERE name = ? AND version = ?`, pinned, r.Name, r.Version)
		return err
	})
	return r, err
}

// markPulled records a pull for LRU eviction and `show`.
func (s *Service) markPulled(ctx context.Context, r Ref) error {
	return s.db.Update(ctx, func(tx *store.Tx) error {
		used, err := nextSeq(tx, "last_used")
		if err != nil {
			return err
		}
		_, err = tx.Exec(`UPDATE reg_versions SET last_pulled = ?, last_used = ? WHERE name = ? AND version = ?`,
			s.now().UnixNano(), used, r.Name, r.Version)
		return err
	})
}

// afterPublish reports a committed publish: events, metrics, payload reclamation after eviction.
func (s *Service) afterPublish(res publishResult) {
	n := res.info.Name
	var evs []Event
	if !res.republish {
		evs = append(evs, Event{Kind: EventPublished, Name: n, Version: res.info.Version})
	}
	for _, v := range res.evicted {
		evs = append(evs, Event{Kind: EventEvicted, Name: v.Name, Version: v.Version})
	}
	for _, a := range slices.Sorted(maps.Keys(res.moved)) {
		if prev := res.moved[a]; prev != res.info.Version {
			evs = append(evs, Event{Kind: EventAliasSet, Name: n, Alias: a, Version: res.info.Version, Previous: prev})
		}
	}
	s.watch.publish(evs...)
	if len(res.evicted) > 0 {
		if f := s.opts.Metrics.Eviction; f != nil {
			f(len(res.evicted), res.freed)
		}
		s.log.Info("evicted versions to fit the disk budget", "count", len(res.evicted), "bytes", res.freed)
		s.collectPayloads(context.Background())
	}
}

// collectPayloads asks the store to remove payload files no blob references any more, so freed
// chunks return their disk space now rather than at the next GC.
func (s *Service) collectPayloads(ctx context.Context) {
	if _, err := s.db.CollectGarbage(ctx); err != nil && !errors.Is(err, context.Canceled) {
		s.log.Warn("reclaim payload files", "err", err)
	}
}

// Stats are registry gauges for metrics and status output.
type Stats struct {
	Models        int64
	Versions      int64
	Chunks        int64
	StoredBytes   int64 // distinct chunk bytes stored
	LogicalBytes  int64 // sum of version sizes (what a store without dedupe would hold)
	SessionsOpen  int64
	CorruptChunks int64
}

// Stats computes the registry gauges.
func (s *Service) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	err := s.db.View(ctx, func(tx *store.Tx) error {
		return tx.Query(`SELECT
				(SELECT COUNT(DISTINCT name) FROM reg_versions),
				(SELECT COUNT(*) FROM reg_versions),
				(SELECT COUNT(*) FROM reg_chunks),
				(SELECT COALESCE(SUM(size), 0) FROM reg_chunks),
				(SELECT COALESCE(SUM(size), 0) FROM reg_versions),
				(SELECT COUNT(*) FROM reg_sessions),
				(SELECT COUNT(*) FROM reg_chunks WHERE corrupt != 0)`, nil,
			func(scan func(...any) error) error {
				return scan(&st.Models, &st.Versions, &st.Chunks, &st.StoredBytes, &st.LogicalBytes, &st.SessionsOpen, &st.CorruptChunks)
			})
	})
	return st, err
}
