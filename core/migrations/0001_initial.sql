-- Schema version 1: sync metadata, the multi-tenant cache and the outbox.

-- Key/value sync metadata (pull cursor, last server version, ...). Lives in the same database
-- as the data it describes so both commit in one transaction.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
) WITHOUT ROWID;

-- One row per cached value. `full_key` is the validated `tenant:{t}:{ns}:{key}`.
CREATE TABLE cache_entries (
    full_key     TEXT NOT NULL UNIQUE,
    tenant       TEXT NOT NULL,
    namespace    INTEGER NOT NULL CHECK (namespace BETWEEN 0 AND 15),
    value        BLOB NOT NULL,
    encoding     INTEGER NOT NULL CHECK (encoding BETWEEN 0 AND 2),
    raw_size     INTEGER NOT NULL,
    -- Bytes charged to the namespace budget: stored value plus key.
    stored_size  INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    -- Milliseconds since the epoch; NULL for a value that never expires.
    expires_at   INTEGER,
    last_access  INTEGER NOT NULL,
    access_count INTEGER NOT NULL DEFAULT 0
);
-- Victim selection per eviction policy, and the incremental purge of expired rows.
CREATE INDEX cache_by_recency   ON cache_entries (namespace, last_access);
CREATE INDEX cache_by_frequency ON cache_entries (namespace, access_count, last_access);
CREATE INDEX cache_by_expiry    ON cache_entries (namespace, expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX cache_expired      ON cache_entries (expires_at) WHERE expires_at IS NOT NULL;

-- The durable upload queue. `seq` (the rowid) gives FIFO order: SQLite hands out a rowid larger
-- than every existing one, so a newer item always sorts after every item still queued.
CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    tier            INTEGER NOT NULL CHECK (tier BETWEEN 1 AND 4),
    namespace       INTEGER NOT NULL CHECK (namespace BETWEEN 0 AND 15),
    key             TEXT NOT NULL,
    op              TEXT NOT NULL CHECK (op IN ('put', 'delete', 'event')),
    payload         BLOB NOT NULL,
    created_at      INTEGER NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'in_flight', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    dead_code       TEXT,
    dead_reason     TEXT,
    dead_at         INTEGER
);
CREATE INDEX outbox_queue ON outbox (state, tier, seq);
