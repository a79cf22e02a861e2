//! Making room in a namespace that is over its budget: which rows go, and deleting them.
//!
//! Expired entries go first under every policy, since they already read as misses; after them
//! the namespace's own policy picks live victims, or, under `noeviction`, refuses. A policy is
//! only a choice of victim query here (each served by one of the schema's `cache_*` indexes),
//! and this is the one place that turns a policy into victims. Victims are fetched and deleted
//! in small batches until enough bytes are free, so a put that needs a little room does not read
//! a namespace's whole candidate list. Everything runs inside the caller's write transaction:
//! when the room cannot be made the caller fails and every deletion made here rolls back with it.

use kryonix_protocol::{EvictionPolicy, Namespace};
use rusqlite::{Transaction, params};

use super::ledger::{Change, Removal, RowSize};
use super::sql::DELETE_ROWID_SQL;
use super::{CacheError, to_u64};
use crate::clock::Millis;

/// Eviction candidates fetched per query while making room.
const VICTIM_BATCH: i64 = 64;

// Victim queries: ?1 namespace, ?2 the key being written (never its own victim), ?3 now, ?4 limit.
// Each is served by one of the schema's cache_* indexes. The key comes back for the watchers.
const EXPIRED_VICTIMS_SQL: &str = "SELECT rowid, namespace, charged_bytes, raw_size, length(value), full_key \
     FROM cache_entries WHERE namespace = ?1 AND full_key <> ?2 AND expires_at <= ?3 \
     ORDER BY expires_at LIMIT ?4";
const LRU_VICTIMS_SQL: &str = "SELECT rowid, namespace, charged_bytes, raw_size, length(value), full_key \
     FROM cache_entries WHERE namespace = ?1 AND full_key <> ?2 \
     AND (expires_at IS NULL OR expires_at > ?3) ORDER BY last_access, rowid LIMIT ?4";
const LFU_VICTIMS_SQL: &str = "SELECT rowid, namespace, charged_bytes, raw_size, length(value), full_key \
     FROM cache_entries WHERE namespace = ?1 AND full_key <> ?2 \
     AND (expires_at IS NULL OR expires_at > ?3) ORDER BY access_count, last_access, rowid LIMIT ?4";
const VOLATILE_LRU_VICTIMS_SQL: &str = "SELECT rowid, namespace, charged_bytes, raw_size, length(value), full_key \
     FROM cache_entries WHERE namespace = ?1 AND full_key <> ?2 AND expires_at > ?3 \
     ORDER BY last_access, rowid LIMIT ?4";
const VOLATILE_TTL_VICTIMS_SQL: &str = "SELECT rowid, namespace, charged_bytes, raw_size, length(value), full_key \
     FROM cache_entries WHERE namespace = ?1 AND full_key <> ?2 AND expires_at > ?3 \
     ORDER BY expires_at, rowid LIMIT ?4";

/// Deletes rows picked by `victims_sql` until `need` bytes are freed or no candidate is left.
/// Returns the bytes still missing.
fn drain(
    tx: &Transaction<'_>,
    room: &Room<'_>,
    victims_sql: &str,
    mut need: u64,
    why: Removal,
    change: &mut Change,
) -> Result<u64, CacheError> {
    let mut select = tx.prepare_cached(victims_sql)?;
    let mut delete = tx.prepare_cached(DELETE_ROWID_SQL)?;
    loop {
        let batch = select
            .query_map(
                params![
                    i64::from(room.namespace.id()),
                    room.full_key,
                    room.now,
                    VICTIM_BATCH
                ],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        RowSize::from_row(r, 1)?,
                        r.get::<_, String>(5)?,
                    ))
                },
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if batch.is_empty() {
            return Ok(need);
        }
        for (rowid, size, full_key) in batch {
            delete.execute([rowid])?;
            change.removed(size, why, &full_key);
            need = need.saturating_sub(to_u64(size.charged));
            if need == 0 {
                return Ok(0);
            }
        }
    }
}

/// Frees at least `need` bytes of `namespace` for the entry being written under `full_key`:
/// expired entries first, then victims of the namespace's policy. Returns `false` when the
/// policy runs out of candidates; the caller then fails, and its transaction rolls back every
/// deletion made here.
pub(super) fn make_room(
    tx: &Transaction<'_>,
    namespace: Namespace,
    full_key: &str,
    now: Millis,
    need: u64,
    change: &mut Change,
) -> Result<bool, CacheError> {
    let room = Room {
        namespace,
        full_key,
        now,
    };
    let need = drain(
        tx,
        &room,
        EXPIRED_VICTIMS_SQL,
        need,
        Removal::Expired,
        change,
    )?;
    if need == 0 {
        return Ok(true);
    }
    let Some(victims_sql) = victims_sql(namespace.eviction()) else {
        return Ok(false);
    };
    let need = drain(tx, &room, victims_sql, need, Removal::Evicted, change)?;
    Ok(need == 0)
}

/// The query that picks live victims under `policy`, best victim first; `None` when the policy
/// allows no eviction. Everything a policy decides is in this choice.
fn victims_sql(policy: EvictionPolicy) -> Option<&'static str> {
    match policy {
        EvictionPolicy::AllkeysLru => Some(LRU_VICTIMS_SQL),
        EvictionPolicy::AllkeysLfu => Some(LFU_VICTIMS_SQL),
        EvictionPolicy::VolatileLru => Some(VOLATILE_LRU_VICTIMS_SQL),
        EvictionPolicy::VolatileTtl => Some(VOLATILE_TTL_VICTIMS_SQL),
        EvictionPolicy::Noeviction => None,
    }
}

/// Where room is being made.
struct Room<'a> {
    namespace: Namespace,
    /// The key being written: never its own victim.
    full_key: &'a str,
    now: Millis,
}
