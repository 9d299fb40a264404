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
	for _, m := range all {
		if err := db.applyMigration(ctx, m); err != nil {
			return fmt.Errorf("migration %s/%d: %w", m.Domain, m.Version, err)
		}
	}
	return nil
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
