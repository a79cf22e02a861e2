//! The cache's SQL, apart from the eviction queries, and the readers that turn its rows into
//! typed values.
//!
//! Kept together so a schema change (a renamed column, a new index) is checked against one file
//! (the victim queries, which are the eviction policies' business, live with them), and kept as
//! constants because `prepare_cached` keys its cache on the statement text: a statement on the
//! hot path is prepared once per connection, never rebuilt per call.

use rusqlite::{Connection, OptionalExtension};

use crate::clock::Millis;

pub(super) const GET_SQL: &str = "SELECT value, encoding, raw_size, charged_bytes, expires_at, rowid, namespace \
     FROM cache_entries WHERE full_key = ?1";
pub(super) const CONTAINS_SQL: &str = "SELECT expires_at FROM cache_entries WHERE full_key = ?1";
pub(super) const TOUCH_SQL: &str = "UPDATE cache_entries SET last_access = max(last_access, ?2), \
     access_count = access_count + ?3 WHERE full_key = ?1";
pub(super) const OLD_SIZE_SQL: &str = "SELECT namespace, charged_bytes, raw_size, length(value) \
     FROM cache_entries WHERE full_key = ?1";
pub(super) const UPSERT_SQL: &str = "INSERT INTO cache_entries \
     (full_key, tenant, namespace, value, encoding, raw_size, charged_bytes, created_at, expires_at, last_access, access_count) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?8, 0) \
     ON CONFLICT (full_key) DO UPDATE SET value = excluded.value, encoding = excluded.encoding, \
     raw_size = excluded.raw_size, charged_bytes = excluded.charged_bytes, created_at = excluded.created_at, \
     expires_at = excluded.expires_at, last_access = excluded.last_access \
     RETURNING rowid";
pub(super) const DELETE_SQL: &str = "DELETE FROM cache_entries WHERE full_key = ?1 \
     RETURNING namespace, charged_bytes, raw_size, length(value), expires_at, rowid";
pub(super) const DELETE_EXPIRED_KEY_SQL: &str = "DELETE FROM cache_entries WHERE full_key = ?1 AND expires_at <= ?2 \
     RETURNING namespace, charged_bytes, raw_size, length(value), rowid";
pub(super) const PURGE_SQL: &str = "DELETE FROM cache_entries WHERE rowid IN \
     (SELECT rowid FROM cache_entries WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2) \
     RETURNING namespace, charged_bytes, raw_size, length(value), full_key, rowid";
pub(super) const DELETE_ROWID_SQL: &str = "DELETE FROM cache_entries WHERE rowid = ?1 \
     RETURNING namespace, charged_bytes, raw_size, length(value), full_key";
/// A namespace's rows as its policy is rebuilt from them: oldest access first.
pub(super) const REBUILD_SQL: &str = "SELECT rowid, charged_bytes, expires_at, access_count, full_key \
     FROM cache_entries WHERE namespace = ?1 ORDER BY last_access, rowid";
/// Bytes of a namespace's expired rows other than the key being written (?1 namespace, ?2 key,
/// ?3 now): what a `noeviction` namespace can free.
pub(super) const EXPIRED_BYTES_SQL: &str = "SELECT coalesce(sum(charged_bytes), 0) FROM cache_entries \
     WHERE namespace = ?1 AND full_key <> ?2 AND expires_at <= ?3";
pub(super) const USAGE_SQL: &str = "SELECT namespace, count(*), sum(charged_bytes), sum(raw_size), sum(length(value)) \
     FROM cache_entries GROUP BY namespace";

/// The initial state of a key watch (?1 the full key) and of a prefix watch (?1 the prefix, ?2
/// the first full key past it), in `[full_key, read_value's columns]` order. The prefix form is a
/// range scan of the `full_key` index.
pub(super) const WATCH_KEY_SQL: &str = "SELECT full_key, value, encoding, raw_size, charged_bytes, expires_at, rowid, namespace \
     FROM cache_entries WHERE full_key = ?1";
pub(super) const WATCH_RANGE_SQL: &str = "SELECT full_key, value, encoding, raw_size, charged_bytes, expires_at, rowid, namespace \
     FROM cache_entries WHERE full_key >= ?1 AND full_key < ?2 ORDER BY full_key";

/// A row as `get` reads it.
pub(super) struct StoredValue {
    pub(super) value: Vec<u8>,
    pub(super) encoding: i64,
    pub(super) raw_size: i64,
    pub(super) charged: i64,
    pub(super) expires_at: Option<Millis>,
    /// The row's id, by which its namespace's policy knows it.
    pub(super) rowid: i64,
    pub(super) namespace: i64,
}

impl StoredValue {
    /// Reads the columns of `GET_SQL` starting at column `first`.
    pub(super) fn from_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            value: r.get(first)?,
            encoding: r.get(first + 1)?,
            raw_size: r.get(first + 2)?,
            charged: r.get(first + 3)?,
            expires_at: r.get(first + 4)?,
            rowid: r.get(first + 5)?,
            namespace: r.get(first + 6)?,
        })
    }
}

pub(super) fn read_value(
    conn: &Connection,
    full_key: &str,
) -> rusqlite::Result<Option<StoredValue>> {
    conn.prepare_cached(GET_SQL)?
        .query_row([full_key], |r| StoredValue::from_row(r, 0))
        .optional()
}
