package store

import (
	"context"
	"embed"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// storeMigrations returns the store's own schema steps from migrations/NNNN_name.sql.
func storeMigrations() ([]Migration, error) {
	entries, err := migrationFS.ReadDir("migrations")
	if err != nil {
		return nil, err
	}
	var ms []Migration
	for _, e := range entries {
		n, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(n)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration file %s: name must start with a number", e.Name())
		}
		b, err := migrationFS.ReadFile(path.Join("migrations", e.Name()))
		if err != nil {
			return nil, err
		}
		ms = append(ms, Migration{Domain: "store", Version: v, SQL: string(b)})
	}
	return ms, nil
}

// migrate applies the store's migrations, then Options.Migrations, each not yet recorded in
// schema_migrations, each in its own IMMEDIATE transaction together with its record, in version order
// per domain. A crash mid-step rolls that step back whole, so a restart simply retries it.
func (db *DB) migrate(ctx context.Context) error {
	own, err := storeMigrations()
	if err != nil {
		return err
	}
	sort.Slice(own, func(i, j int) bool { return own[i].Version < own[j].Version })
	extra := append([]Migration(nil), db.opts.Migrations...)
	sort.SliceStable(extra, func(i, j int) bool {
		if extra[i].Domain != extra[j].Domain {
			return extra[i].Domain < extra[j].Domain
		}
		return extra[i].Version < extra[j].Version
	})
	all := append(own, extra...)
	seen := map[string]bool{}
	for _, m := range all {
		k := m.Domain + "\x00" + strconv.Itoa(m.Version)
		if m.Domain == "" || m.Version <= 0 {
			return fmt.Errorf("migration %q/%d: needs a domain and a version > 0: %w", m.Domain, m.Version, ErrInvalid)
		}
		if seen[k] {
			return fmt.Errorf("migration %s/%d: duplicate version: %w", m.Domain, m.Version, ErrInvalid)
		}
		seen[k] = true
	}

	c := db.wconn
	if _, err := c.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		domain     TEXT NOT NULL,
		version    INTEGER NOT NULL,
		applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
		PRIMARY KEY (domain, version)
	) WITHOUT ROWID`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	if err := db.checkNotNewer(ctx, all); err != nil {
		return err
	}
	for _, m := range all {
		if err := db.applyMigration(ctx, m); err != nil {
			return fmt.Errorf("migration %s/%d: %w", m.Domain, m.Version, err)
		}
	}
	return nil
}

// checkNotNewer refuses a database that a newer binary has migrated beyond the schema this one
// knows, in any domain it knows: after a rollback to an older buffdbd, writing through the old
// schema could corrupt what the newer one stored. Domains this binary has no migrations for are
// not its business.
func (db *DB) checkNotNewer(ctx context.Context, known []Migration) error {
	latest := map[string]int{}
	for _, m := range known {
		latest[m.Domain] = max(latest[m.Domain], m.Version)
	}
	rows, err := db.wconn.QueryContext(ctx, "SELECT domain, max(version) FROM schema_migrations GROUP BY domain")
	if err != nil {
		return fmt.Errorf("read schema_migrations: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var domain string
		var v int
		if err := rows.Scan(&domain, &v); err != nil {
			return fmt.Errorf("read schema_migrations: %w", err)
		}
		if have, ok := latest[domain]; ok && v > have {
			return fmt.Errorf("the data directory's %s schema is at version %d, newer than the %d this buffdbd knows: "+
				"it was written by a newer buffdbd; run that version (or newer) on it: %w", domain, v, have, ErrInvalid)
		}
	}
	return rows.Err()
}

func (db *DB) applyMigration(ctx context.Context, m Migration) (err error) {
	c := db.wconn
	if _, err := c.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			c.ExecContext(context.Background(), "ROLLBACK")
		}
	}()
	var n int
	if err := c.QueryRowContext(ctx, "SELECT count(*) FROM schema_migrations WHERE domain = ? AND version = ?",
		m.Domain, m.Version).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		_, err = c.ExecContext(ctx, "COMMIT")
		return err
	}
	if _, err := c.ExecContext(ctx, m.SQL); err != nil {
		return err
	}
	if _, err := c.ExecContext(ctx, "INSERT INTO schema_migrations(domain, version) VALUES (?, ?)",
		m.Domain, m.Version); err != nil {
		return err
	}
	db.log.Info("applied migration", "domain", m.Domain, "version", m.Version)
	_, err = c.ExecContext(ctx, "COMMIT")
	return err
}
