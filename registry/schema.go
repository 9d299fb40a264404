package registry

import "github.com/buffdb/buffdbd/store"

// Migrations are the registry's schema steps; pass them in store.Options.Migrations when opening the
// store the Service will use. The tables are the registry's source of truth for queries (reference
// counts, eviction order, filters); the model:* KV keys are BuffDB's view, written in the same
// transactions.
var Migrations = []store.Migration{{
	Domain:  "registry",
	Version: 1,
	SQL: `
-- One row per stored chunk: its content digest, the store blob holding its bytes, and whether Verify
-- found it corrupt. A chunk is referenced by reg_refs rows (published versions) and reg_pins rows
-- (upload sessions); garbage collection deletes the rest. Reference counts are not stored: they are
-- derived from reg_refs through its chunk index, so a crash can never leave a count out of step.
CREATE TABLE reg_chunks (
	sha256  BLOB PRIMARY KEY,
	blob_id INTEGER NOT NULL,
	size    INTEGER NOT NULL,
	corrupt INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Published versions. seq orders publishes (latest); last_used orders eviction (least recently
-- pulled or published first).
CREATE TABLE reg_versions (
	name       TEXT NOT NULL,
	version    TEXT NOT NULL,
	seq        INTEGER NOT NULL,
	framework  TEXT NOT NULL,
	parameters TEXT NOT NULL,
	created_at INTEGER NOT NULL,
	size       INTEGER NOT NULL,
	pinned     INTEGER NOT NULL DEFAULT 0,
	last_pulled INTEGER NOT NULL DEFAULT 0,
	last_used  INTEGER NOT NULL,
	PRIMARY KEY (name, version)
) WITHOUT ROWID;
CREATE INDEX reg_versions_framework ON reg_versions (framework);
CREATE INDEX reg_versions_used ON reg_versions (last_used);

-- The files of each version, in manifest order.
CREATE TABLE reg_files (
	name    TEXT NOT NULL,
	version TEXT NOT NULL,
	idx     INTEGER NOT NULL,
	path    TEXT NOT NULL,
	size    INTEGER NOT NULL,
	sha256  BLOB NOT NULL,
	PRIMARY KEY (name, version, idx),
	UNIQUE (name, version, path)
) WITHOUT ROWID;
CREATE INDEX reg_files_sha256 ON reg_files (sha256);

-- The ordered chunks of each file.
CREATE TABLE reg_refs (
	name    TEXT NOT NULL,
	version TEXT NOT NULL,
	file    INTEGER NOT NULL,
	seq     INTEGER NOT NULL,
	off     INTEGER NOT NULL,
	chunk   BLOB NOT NULL,
	PRIMARY KEY (name, version, file, seq)
) WITHOUT ROWID;
CREATE INDEX reg_refs_chunk ON reg_refs (chunk);

CREATE TABLE reg_aliases (
	name    TEXT NOT NULL,
	alias   TEXT NOT NULL,
	version TEXT NOT NULL,
	PRIMARY KEY (name, alias)
) WITHOUT ROWID;
CREATE INDEX reg_aliases_version ON reg_aliases (name, version);

-- Resumable upload sessions, one per (name, version) being pushed, and the chunks each has made
-- durable (pinned against garbage collection until the session expires or commits).
CREATE TABLE reg_sessions (
	id         TEXT PRIMARY KEY,
	name       TEXT NOT NULL,
	version    TEXT NOT NULL,
	created_at INTEGER NOT NULL,
	expires_at INTEGER NOT NULL,
	UNIQUE (name, version)
);
CREATE TABLE reg_pins (
	session TEXT NOT NULL,
	chunk   BLOB NOT NULL,
	PRIMARY KEY (session, chunk)
) WITHOUT ROWID;
CREATE INDEX reg_pins_chunk ON reg_pins (chunk);
`,
}, {
	Domain:  "registry",
	Version: 2,
	SQL: `
-- A chunk's blob belongs to the registry: removing or replacing it through the BuffDB Blob API would
-- break every version sharing the chunk. The registry itself first points reg_chunks elsewhere (or
-- deletes the row), so these never fire for it. Metadata updates stay allowed.
CREATE INDEX reg_chunks_blob ON reg_chunks (blob_id);
CREATE TRIGGER reg_chunk_blob_delete BEFORE DELETE ON blob
	WHEN EXISTS (SELECT 1 FROM reg_chunks WHERE blob_id = OLD.id)
	BEGIN SELECT RAISE(ABORT, '` + store.InUseMarker + `the blob holds a chunk of the model registry; delete the model versions using it (buffdbd model rm) instead'); END;
CREATE TRIGGER reg_chunk_blob_update BEFORE UPDATE OF size, sha256, data ON blob
	WHEN EXISTS (SELECT 1 FROM reg_chunks WHERE blob_id = OLD.id)
		AND (NEW.sha256 IS NOT OLD.sha256 OR NEW.size IS NOT OLD.size OR NEW.data IS NOT OLD.data)
	BEGIN SELECT RAISE(ABORT, '` + store.InUseMarker + `the blob holds a chunk of the model registry; its bytes cannot be replaced'); END;
`,
}}
