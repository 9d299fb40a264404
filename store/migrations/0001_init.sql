-- The store's own schema. Raw SQL (the Query service) sees these tables as they are.

-- kv holds every key/value pair. WITHOUT ROWID: the key is the only access path, so the table is the
-- primary-key b-tree itself (one lookup, no separate rowid index).
CREATE TABLE kv (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- blob holds every blob. AUTOINCREMENT (not just INTEGER PRIMARY KEY) so ids are never reused, not even
-- after the highest id is deleted or the file is vacuumed: sqlite_sequence remembers the high-water mark.
-- data is the inline bytes, or NULL when the bytes live in the content-addressed payload file named by
-- sha256 (see payload). sha256 is stored for every blob so equality checks compare digests.
CREATE TABLE blob (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    size     INTEGER NOT NULL,
    sha256   BLOB NOT NULL,
    data     BLOB NULL,
    metadata TEXT NULL
);
-- Finds blobs by content: HasPayload, copying inline content, and verification reports.
CREATE INDEX blob_sha256 ON blob(sha256);

-- payload counts the blob rows referencing each external payload file payloads/ab/<sha256hex>.
-- A row exists exactly while refs > 0; the file is unlinked after the commit that deletes the row.
CREATE TABLE payload (
    sha256 BLOB PRIMARY KEY,
    size   INTEGER NOT NULL,
    refs   INTEGER NOT NULL CHECK (refs > 0)
) WITHOUT ROWID;

-- kv_index defines the secondary indexes over kv values. Each index is maintained by SQLite triggers
-- on kv (named kv_index_<id>_ins/_upd/_del), so every write path — including raw SQL — keeps it current
-- inside the writing transaction.
CREATE TABLE kv_index (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL UNIQUE,
    type       INTEGER NOT NULL,  -- 0 hash, 1 btree
    is_unique  INTEGER NOT NULL,
    json_path  TEXT NOT NULL,     -- '' = the whole value
    key_prefix TEXT NOT NULL,
    kind       INTEGER NOT NULL   -- 0 string, 1 number
);

-- kv_index_entry holds one row per indexed key. value is TEXT for string indexes and INTEGER/REAL for
-- number indexes, so numbers compare numerically.
CREATE TABLE kv_index_entry (
    index_id  INTEGER NOT NULL,
    value     NOT NULL,  -- no declared type = no affinity: text stays text, numbers stay numbers
    key       TEXT NOT NULL,
    is_unique INTEGER NOT NULL,
    PRIMARY KEY (index_id, value, key)
) WITHOUT ROWID;
-- Lets the triggers remove a key's entry without knowing its old value.
CREATE INDEX kv_index_entry_key ON kv_index_entry(index_id, key);
-- Enforces unique indexes inside SQLite: a violating write fails its statement and changes nothing.
CREATE UNIQUE INDEX kv_index_entry_unique ON kv_index_entry(index_id, value) WHERE is_unique;
