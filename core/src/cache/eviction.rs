//! Making room with SQL: expired rows before any policy is asked, and the emergency path of a
//! full disk.
//!
//! The namespaces' policies ([`super::policies`]) choose the live victims of a put that does not
//! fit its budget. Two removals are not theirs to choose and are queries here, each served by
//! one of the schema's `cache_*` indexes:
//!
//! - **Expired rows go first** under every policy: they already read as misses, so dropping
//!   them costs no hit. A put over budget drains its namespace's expired rows, soonest expired
//!   first, before the policy evicts anything live.
//! - **A full disk** (SQLite could not grow the file) needs room that the budgets did not
//!   foresee. The namespace table's own order (`allkeys-lru` by `last_access`, `allkeys-lfu` by
//!   `access_count`, the volatile ones among rows with a TTL, none under `noeviction`) picks
//!   rows straight from the table: it is a rare path, and asking a policy for victims without
//!   an insert is not something policies answer.
//!
//! Every row deleted here is forgotten by its namespace's policy in the same transaction, and
//! everything runs inside the caller's write transaction: when the caller fails, every deletion
//! rolls back with it.

use kryonix_protocol::{EvictionPolicy, Namespace};
use rusqlite::{Transaction, params};

use super::ledger::{Change, Removal};
use super::policies::{Policies, delete_row};
use super::{CacheError, to_u64};
use crate::clock::Millis;

/// Candidates fetched per query while making room.
const VICTIM_BATCH: i64 = 64;

// Victim queries: ?1 namespace, ?2 the key being written (never its own victim), ?3 now, ?4 limit.
const EXPIRED_VICTIMS_SQL: &str = "SELECT rowid FROM cache_entries \
     WHERE namespace = ?1 AND full_key <> ?2 AND expires_at <= ?3 ORDER BY expires_at LIMIT ?4";
const LRU_VICTIMS_SQL: &str = "SELECT rowid FROM cache_entries WHERE namespace = ?1 AND full_key <> ?2 \
     AND (expires_at IS NULL OR expires_at > ?3) ORDER BY last_access, rowid LIMIT ?4";
const LFU_VICTIMS_SQL: &str = "SELECT rowid FROM cache_entries WHERE namespace = ?1 AND full_key <> ?2 \
     AND (expires_at IS NULL OR expires_at > ?3) ORDER BY access_count, last_access, rowid LIMIT ?4";
const VOLATILE_LRU_VICTIMS_SQL: &str = "SELECT rowid FROM cache_entries \
     WHERE namespace = ?1 AND full_key <> ?2 AND expires_at > ?3 ORDER BY last_access, rowid LIMIT ?4";
const VOLATILE_TTL_VICTIMS_SQL: &str = "SELECT rowid FROM cache_entries \
     WHERE namespace = ?1 AND full_key <> ?2 AND expires_at > ?3 ORDER BY expires_at, rowid LIMIT ?4";

/// Where room is being made.
pub(super) struct Room<'a> {
    pub(super) namespace: Namespace,
    /// The key being written: never its own victim.
    pub(super) full_key: &'a str,
    pub(super) now: Millis,
}

/// Deletes rows picked by `victims_sql` until `need` bytes are freed or no candidate is left.
/// Returns the bytes still missing.
fn drain(
    tx: &Transaction<'_>,
    room: &Room<'_>,
    victims_sql: &str,
    mut need: u64,
    why: Removal,
    change: &mut Change,
    policies: &mut Policies,
) -> Result<u64, CacheError> {
    let ns = usize::from(room.namespace.id());
    let mut select = tx.prepare_cached(victims_sql)?;
    loop {
        let batch = select
            .query_map(
                params![
                    i64::from(room.namespace.id()),
                    room.full_key,
                    room.now,
                    VICTIM_BATCH
                ],
                |r| r.get::<_, i64>(0),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if batch.is_empty() {
            return Ok(need);
        }
        for rowid in batch {
            let Some((size, row)) = delete_row(tx, rowid, why, change)? else {
                continue;
            };
            policies.forget(ns, row);
            need = need.saturating_sub(to_u64(size.charged));
            if need == 0 {
                return Ok(0);
            }
        }
    }
}

/// Deletes expired rows of the namespace, soonest expired first, until `need` bytes are free.
/// Returns the bytes still missing.
pub(super) fn drain_expired(
    tx: &Transaction<'_>,
    room: &Room<'_>,
    need: u64,
    change: &mut Change,
    policies: &mut Policies,
) -> Result<u64, CacheError> {
    drain(
        tx,
        room,
        EXPIRED_VICTIMS_SQL,
        need,
        Removal::Expired,
        change,
        policies,
    )
}

/// Frees up to `need` bytes of the namespace for a full disk: expired rows, then live rows in
/// the namespace table's order. Returns the bytes still missing.
pub(super) fn free_by_table_order(
    tx: &Transaction<'_>,
    room: &Room<'_>,
    need: u64,
    change: &mut Change,
    policies: &mut Policies,
) -> Result<u64, CacheError> {
    let need = drain_expired(tx, room, need, change, policies)?;
    let Some(victims_sql) = victims_sql(room.namespace.eviction()).filter(|_| need > 0) else {
        return Ok(need);
    };
    drain(
        tx,
        room,
        victims_sql,
        need,
        Removal::Evicted,
        change,
        policies,
    )
}

/// The query that picks live victims under `policy`, best victim first; `None` when the policy
/// allows no eviction.
fn victims_sql(policy: EvictionPolicy) -> Option<&'static str> {
    match policy {
        EvictionPolicy::AllkeysLru => Some(LRU_VICTIMS_SQL),
        EvictionPolicy::AllkeysLfu => Some(LFU_VICTIMS_SQL),
        EvictionPolicy::VolatileLru => Some(VOLATILE_LRU_VICTIMS_SQL),
        EvictionPolicy::VolatileTtl => Some(VOLATILE_TTL_VICTIMS_SQL),
        EvictionPolicy::Noeviction => None,
    }
}
