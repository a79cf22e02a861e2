//! Batched access statistics: the hits LRU and LFU need, kept in memory between writes.
//!
//! Writing `last_access`/`access_count` on every read would turn each cache hit into a write
//! transaction and a WAL append (`docs/adr/0003-cache-access-stats-in-memory.md`). Hits are
//! summed here per key instead and written at the start of the next write transaction, before
//! any victim is chosen, so eviction always decides on them. If that transaction rolls back the
//! hits are put back, merged with those recorded meanwhile; a crash loses only these hints,
//! never a value. The map is bounded: past a few thousand keys the hits are flushed on their own.

use std::collections::HashMap;

use rusqlite::{Transaction, params};

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
}

/// Writes batched hits; runs first in every write transaction of the cache.
pub(super) fn flush_accesses(
    tx: &Transaction<'_>,
    accesses: &HashMap<String, Access>,
) -> rusqlite::Result<()> {
    if accesses.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(TOUCH_SQL)?;
    for (key, access) in accesses {
        stmt.execute(params![key, access.last, access.count])?;
    }
    Ok(())
}

impl Cache {
    pub(super) fn record_access(&self, full_key: &str, now: Millis) {
        let full = {
            let mut accesses = lock(&self.accesses);
            if let Some(a) = accesses.get_mut(full_key) {
                a.last = a.last.max(now);
                a.count = a.count.saturating_add(1);
                false
            } else {
                accesses.insert(
                    full_key.to_owned(),
                    Access {
                        last: now,
                        count: 1,
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
                    b.last = b.last.max(a.last);
                    b.count = b.count.saturating_add(a.count);
                })
                .or_insert(a);
        }
    }
}
