//! Batched access statistics: the hits the eviction policies need, kept in memory between
//! writes.
//!
//! Writing `last_access`/`access_count` on every read would turn each cache hit into a write
//! transaction and a WAL append (`docs/adr/0003-cache-access-stats-in-memory.md`). Hits are
//! summed here per key instead and given, at the start of the next write transaction and before
//! any victim is chosen, both to the namespace's policy (oldest first, so the policy sees them
//! in the order they happened, each key's reads replayed up to a bound) and to
//! `last_access`/`access_count`, from which a policy is rebuilt when the cache opens. If that transaction rolls back the
//! hits are put back, merged with those recorded meanwhile; a crash loses only these hints,
//! never a value. The map is bounded: past a few thousand keys the hits are flushed on their own.

use std::collections::HashMap;

use rusqlite::{Transaction, params};

use super::policies::{MAX_REPLAYED_HITS, Policies, RowKey};
use super::sql::TOUCH_SQL;
use super::{Cache, lock};
use crate::clock::Millis;

/// Distinct keys whose hits are held in memory before they are flushed on their own.
pub(super) const MAX_PENDING_ACCESSES: usize = 4096;

/// Reads not yet written to `last_access` / `access_count`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Access {
    last: Millis,
    count: u32,
    /// Where the row was when it was read. A row deleted between the read and the flush is no
    /// longer in its policy, and the hit is ignored.
    ns: usize,
    rowid: i64,
}

/// Writes batched hits into the table and the policies; runs first in every write transaction
/// of the cache.
pub(super) fn flush_accesses(
    tx: &Transaction<'_>,
    accesses: &HashMap<String, Access>,
    policies: &mut Policies,
) -> rusqlite::Result<()> {
    if accesses.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(TOUCH_SQL)?;
    let mut order = Vec::with_capacity(accesses.len());
    for (key, access) in accesses {
        stmt.execute(params![key, access.last, access.count])?;
        order.push((access, RowKey::new(access.rowid, key)));
    }
    order.sort_unstable_by_key(|(a, _)| (a.last, a.rowid));
    for (access, row) in order {
        // Hits do not mark the policy as changed by the transaction: replayed again after a
        // rollback, they only count twice as a hint.
        if let Some(policy) = policies.hits(access.ns) {
            for _ in 0..access.count.min(MAX_REPLAYED_HITS) {
                policy.hit(&row);
            }
        }
    }
    Ok(())
}

impl Cache {
    pub(super) fn record_access(&self, full_key: &str, ns: usize, rowid: i64, now: Millis) {
        let full = {
            let mut accesses = lock(&self.accesses);
            if let Some(a) = accesses.get_mut(full_key) {
                a.last = a.last.max(now);
                a.count = a.count.saturating_add(1);
                a.ns = ns;
                a.rowid = rowid;
                false
            } else {
                accesses.insert(
                    full_key.to_owned(),
                    Access {
                        last: now,
                        count: 1,
                        ns,
                        rowid,
                    },
                );
                accesses.len() >= MAX_PENDING_ACCESSES
            }
        };
        if full {
            // Keep memory bounded when an app only reads: write the hints on their own.
            if let Err(error) = self.flush_access_stats() {
                tracing::warn!(%error, "could not write cache access statistics; kept for later");
            }
        }
    }

    pub(super) fn take_accesses(&self) -> HashMap<String, Access> {
        std::mem::take(&mut *lock(&self.accesses))
    }

    /// Puts back hints whose transaction rolled back, merging with hits recorded meanwhile.
    pub(super) fn restore_accesses(&self, taken: HashMap<String, Access>) {
        let mut accesses = lock(&self.accesses);
        for (key, a) in taken {
            accesses
                .entry(key)
                .and_modify(|b| {
                    // `b` was read more recently: its rowid is the current one.
                    b.last = b.last.max(a.last);
                    b.count = b.count.saturating_add(a.count);
                })
                .or_insert(a);
        }
    }
}
