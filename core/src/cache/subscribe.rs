//! Starting a watch ([`crate::watch`]) on the cache: registering it and reading its initial
//! state from the one database snapshot its notices continue from.
//!
//! Every write transaction of the cache holds the ledger lock from before it begins until its
//! watchers have been told (`Cache::write_rows`). A watch registers while holding that lock and
//! takes its read snapshot before letting go, so each commit is either in the initial state or
//! told to the watch afterwards: none is missed. The rest of the read, and the decompression,
//! happen after the lock is released, so watching a large namespace does not hold up writers;
//! the initial state then fills in only the keys no newer notice has already set.

use std::sync::Arc;

use kryonix_protocol::{Namespace, TenantId, TenantKey};
use rusqlite::types::{ToSqlOutput, ValueRef};

use super::sql::{StoredValue, WATCH_KEY_SQL, WATCH_RANGE_SQL};
use super::{Cache, CacheError, decode_row, lock};
use crate::clock::Millis;
use crate::watch::{Cause, Filter, KeyChange, Watch};

impl Cache {
    /// Watches one key: its current value first (`None` when it has none), then each change.
    pub fn watch_key(&self, key: &TenantKey) -> Result<Watch, CacheError> {
        let (filter, key_start) = Filter::key(key);
        self.watch(filter, key_start)
    }

    /// Watches the keys of `namespace` (for `tenant`) that start with `prefix`, every key when it
    /// is empty: every live entry first, then each change.
    pub fn watch_prefix(
        &self,
        tenant: &TenantId,
        namespace: Namespace,
        prefix: &str,
    ) -> Result<Watch, CacheError> {
        let (filter, key_start) = Filter::prefix(tenant, namespace, prefix)?;
        self.watch(filter, key_start)
    }

    /// How many watches are live.
    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// Ends every watch once it has read what is pending; a watch started later ends at once.
    pub fn close_watches(&self) {
        self.watchers.close();
    }

    fn watch(&self, filter: Filter, key_start: usize) -> Result<Watch, CacheError> {
        let now = self.clock.now_ms();
        let ledger = lock(&self.ledger);
        let (watch, rows) = self.store.read(|conn| -> Result<_, CacheError> {
            // A deferred read transaction: its snapshot is fixed by the query's first step,
            // taken below while the ledger is still held.
            let tx = conn.unchecked_transaction()?;
            let (low, high) = filter.range();
            let mut rows = Vec::new();
            let watch = {
                let mut stmt;
                let mut query = match &high {
                    None => {
                        stmt = tx.prepare_cached(WATCH_KEY_SQL)?;
                        stmt.query([low])?
                    }
                    Some(high) => {
                        stmt = tx.prepare_cached(WATCH_RANGE_SQL)?;
                        // The bound may not be valid UTF-8 (a raised last byte); SQLite compares
                        // text bytewise and never checks it.
                        let high = ToSqlOutput::Borrowed(ValueRef::Text(high));
                        stmt.query(rusqlite::params![low, high])?
                    }
                };
                if let Some(row) = query.next()? {
                    rows.push(read_row(row)?);
                }
                let watch = self.watchers.subscribe(filter.clone(), key_start);
                drop(ledger);
                while let Some(row) = query.next()? {
                    rows.push(read_row(row)?);
                }
                watch
            };
            drop(tx);
            Ok((watch, rows))
        })?;
        watch.seed(initial_state(&filter, key_start, rows, now)?);
        Ok(watch)
    }
}

fn read_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, StoredValue)> {
    Ok((row.get(0)?, StoredValue::from_row(row, 1)?))
}

/// The initial state: each live entry read, and for a key watch its absence too. Expired entries
/// read as absent, as they do for `get` (they are removed when a read or purge notices them).
fn initial_state(
    filter: &Filter,
    key_start: usize,
    rows: Vec<(String, StoredValue)>,
    now: Millis,
) -> Result<Vec<KeyChange>, CacheError> {
    let initial = |full_key: &str, value: Option<Arc<[u8]>>| KeyChange {
        key: full_key.get(key_start..).unwrap_or_default().to_owned(),
        value,
        cause: Cause::Initial,
    };
    let mut state = Vec::with_capacity(rows.len().max(1));
    for (full_key, row) in rows {
        if row.expires_at.is_some_and(|at| at <= now) {
            continue;
        }
        let (_, value) = decode_row(row)?;
        state.push(initial(&full_key, Some(Arc::from(value))));
    }
    if let (Filter::Key(full_key), true) = (filter, state.is_empty()) {
        state.push(initial(full_key, None));
    }
    Ok(state)
}
