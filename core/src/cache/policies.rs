//! Each namespace's eviction policy ([`crate::policy`]), kept in memory beside the usage ledger
//! and told of every row the cache writes, reads or removes.
//!
//! The policies know a row as a [`RowKey`]: its SQLite `rowid`, by which a victim is deleted
//! (an overwrite keeps its rowid, `ON CONFLICT … DO UPDATE`, so the policy sees the same
//! entry), and a 64-bit hash of its full key, by which the adaptive policy's frequency sketch
//! remembers the key. The hash is what makes admission work: a value turned away and written
//! again later comes back with the frequency it earned, while a rowid that SQLite hands to
//! another key after a delete carries none of the old key's history (which it would, keyed by
//! rowid alone, and a scan of new keys reusing one rowid would then look popular). The key
//! string itself is not stored twice. They change inside the write transaction whose rows
//! they describe, since a put's victims must be deleted in the transaction that makes the room;
//! a transaction that rolls back would leave them ahead of the table, so every namespace it
//! touched is marked stale and rebuilt from the table at the start of the next write
//! transaction (`rebuild`), the way the cache builds them all when it opens. A rebuild replays
//! the rows in `last_access` order with their `access_count` (capped), which is what the batched
//! access statistics persist: recency and frequency survive a restart, the sketch's finer
//! history does not.
//!
//! Which policy a namespace runs: `adaptive` for the namespaces whose table policy is
//! `allkeys-lru` or `allkeys-lfu` (the platform's "dynamic eviction"), the table's own policy
//! for `volatile-lru`, `volatile-ttl` and `noeviction`, or the table's policy for every namespace
//! under [`Eviction::Table`].

use std::hash::{BuildHasher, Hash, Hasher};

use kryonix_protocol::{DeviceProfile, EvictionPolicy, Namespace, NetworkClass};
use rusqlite::{OptionalExtension, Transaction};

use super::ledger::{Change, Removal, RowSize};
use super::sql::{DELETE_ROWID_SQL, REBUILD_SQL};
use super::stats::NS_COUNT;
use super::{CacheError, to_u64};
use crate::clock::Millis;
use crate::policy::{Cost, Entry, Kind, Policy};

/// Hits replayed per entry at most, when a rebuild replays `access_count` or a flush replays a
/// batch of reads: the adaptive policy's counters stop at 15, and the bound keeps a rebuild
/// linear in the number of rows.
pub(super) const MAX_REPLAYED_HITS: u32 = 16;

/// A row as the policies know it. Equal keys have equal hashes (the contract of `Hash`):
/// equality compares both fields, and only the key's hash is hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RowKey {
    rowid: i64,
    key: u64,
}

impl RowKey {
    pub(super) fn new(rowid: i64, full_key: &str) -> Self {
        // A fixed-key SipHash: the same key hashes the same for the life of the process,
        // which is as long as a policy lives (they are rebuilt when the cache opens).
        let key =
            std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(full_key);
        Self { rowid, key }
    }

    pub(super) fn rowid(self) -> i64 {
        self.rowid
    }
}

impl Hash for RowKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.key);
    }
}

/// Which policies the namespaces run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Eviction {
    /// `adaptive` (W-TinyLFU with a hill-climbing window) for the `allkeys-lru` and
    /// `allkeys-lfu` namespaces; the table's policy for the others.
    #[default]
    Adaptive,
    /// The namespace table's policy everywhere: plain LRU and LFU.
    Table,
}

impl Eviction {
    /// The policy `namespace` runs.
    pub fn kind(self, namespace: Namespace) -> Kind {
        match (namespace.eviction(), self) {
            (EvictionPolicy::AllkeysLru | EvictionPolicy::AllkeysLfu, Self::Adaptive) => {
                Kind::Adaptive
            }
            (EvictionPolicy::AllkeysLru, Self::Table) => Kind::Lru,
            (EvictionPolicy::AllkeysLfu, Self::Table) => Kind::Lfu,
            (EvictionPolicy::VolatileLru, _) => Kind::VolatileLru,
            (EvictionPolicy::VolatileTtl, _) => Kind::VolatileTtl,
            (EvictionPolicy::Noeviction, _) => Kind::NoEviction,
        }
    }
}

/// What a miss costs on the device's network: its bytes over a slow or metered radio (the
/// platform's `mobile_priority` rule), one refetch otherwise.
pub(super) fn cost_for(profile: DeviceProfile) -> Cost {
    if profile.network.metered || profile.network.class == NetworkClass::CellularSlow {
        Cost::Bytes
    } else {
        Cost::Count
    }
}

/// The policies of the sixteen namespaces, indexed by namespace id.
#[derive(Debug)]
pub(super) struct Policies {
    eviction: Eviction,
    budgets: [u64; NS_COUNT],
    by_ns: [Box<dyn Policy<RowKey>>; NS_COUNT],
    cost: Cost,
    /// Namespaces changed by the running transaction (bit per id).
    touched: u16,
    /// Namespaces to rebuild before the next transaction uses them.
    stale: u16,
}

impl Policies {
    /// Empty policies, every namespace stale: the first write transaction (the one `open` runs)
    /// fills them from the table.
    pub(super) fn new(eviction: Eviction, budgets: [u64; NS_COUNT], cost: Cost) -> Self {
        let by_ns = std::array::from_fn(|id| fresh(eviction, &budgets, id, cost));
        Self {
            eviction,
            budgets,
            by_ns,
            cost,
            touched: 0,
            stale: u16::MAX,
        }
    }

    /// The policy of `namespace`, marked as changed by the running transaction.
    pub(super) fn of(&mut self, namespace: Namespace) -> &mut dyn Policy<RowKey> {
        let ns = usize::from(namespace.id());
        self.touched |= bit(ns);
        // In bounds: a namespace's id is below the number of namespaces, NS_COUNT.
        self.by_ns[ns].as_mut()
    }

    /// The policy of namespace id `ns` (as a row stores it), marked as changed by the running
    /// transaction.
    fn get(&mut self, ns: usize) -> Option<&mut dyn Policy<RowKey>> {
        self.touched |= bit(ns);
        Some(self.by_ns.get_mut(ns)?.as_mut())
    }

    /// The policy of namespace `ns`, to be told of reads: not marked as changed.
    pub(super) fn hits(&mut self, ns: usize) -> Option<&mut dyn Policy<RowKey>> {
        Some(self.by_ns.get_mut(ns)?.as_mut())
    }

    /// Forgets a row removed by the running transaction (deleted, expired, evicted by a query).
    pub(super) fn forget(&mut self, ns: usize, row: RowKey) {
        if let Some(policy) = self.get(ns) {
            policy.remove(&row);
        }
    }

    /// Starts a write transaction: switches the cost if the network changed, and rebuilds what
    /// an earlier rollback left stale.
    pub(super) fn begin(
        &mut self,
        tx: &Transaction<'_>,
        profile: DeviceProfile,
        change: &mut Change,
    ) -> Result<(), CacheError> {
        self.touched = 0;
        let cost = cost_for(profile);
        if cost != self.cost {
            self.cost = cost;
            for policy in &mut self.by_ns {
                policy.set_cost(cost);
            }
        }
        let stale = std::mem::take(&mut self.stale);
        if let Err(e) = self.rebuild_mask(tx, stale, change) {
            // Still stale: the next transaction tries again.
            self.stale |= stale;
            return Err(e);
        }
        // A rebuild may have deleted rows; should this transaction roll back, those namespaces
        // are rebuilt again.
        self.touched = stale;
        Ok(())
    }

    /// The running transaction failed and rolls back: what it touched no longer matches the
    /// table.
    pub(super) fn rolled_back(&mut self) {
        self.stale |= std::mem::take(&mut self.touched);
    }

    /// The namespaces touched so far, cleared (for a savepoint inside a transaction).
    pub(super) fn take_touched(&mut self) -> u16 {
        std::mem::take(&mut self.touched)
    }

    /// Marks the namespaces of `mask` as changed by the running transaction (put back what
    /// `take_touched` took).
    pub(super) fn mark_touched(&mut self, mask: u16) {
        self.touched |= mask;
    }

    /// Rebuilds the namespaces of `mask` from the table (a savepoint rolled back).
    pub(super) fn rebuild_mask(
        &mut self,
        tx: &Transaction<'_>,
        mask: u16,
        change: &mut Change,
    ) -> Result<(), CacheError> {
        for ns in (0..NS_COUNT).filter(|ns| mask & bit(*ns) != 0) {
            self.rebuild(tx, ns, change)?;
        }
        Ok(())
    }

    /// Replaces namespace `ns`'s policy with one built from its rows: each row inserted in
    /// `last_access` order, then counted as often as it was read (capped). A row the new policy
    /// cannot keep — the budget shrank since it was written — is deleted as an eviction.
    fn rebuild(
        &mut self,
        tx: &Transaction<'_>,
        ns: usize,
        change: &mut Change,
    ) -> Result<(), CacheError> {
        let mut policy = fresh(self.eviction, &self.budgets, ns, self.cost);
        let mut evicted = Vec::new();
        {
            let mut rows = tx.prepare_cached(REBUILD_SQL)?;
            let mut rows = rows.query([i64::try_from(ns).unwrap_or(i64::MAX)])?;
            while let Some(row) = rows.next()? {
                let full_key: String = row.get(4)?;
                let key = RowKey::new(row.get(0)?, &full_key);
                let entry = Entry {
                    weight: to_u64(row.get(1)?),
                    expires_at: row.get::<_, Option<Millis>>(2)?.map(to_u64),
                };
                let hits = u32::try_from(row.get::<_, i64>(3)?)
                    .unwrap_or(0)
                    .min(MAX_REPLAYED_HITS);
                if policy.insert(key, entry, &mut evicted).is_err() {
                    // Heavier than the whole budget, or over a budget the policy may not
                    // evict from: the row cannot stay.
                    evicted.push(key);
                    continue;
                }
                // Replayed as writes of the resident entry, not as hits: the adaptive policy
                // does not count hits inside its window (reads right after a write are one
                // burst, not popularity), but a persisted count spans the row's whole life, and
                // the last rows rebuilt sit in the window. For the other policies a rewrite of a
                // resident entry is a hit.
                for _ in 0..hits {
                    if policy.insert(key, entry, &mut evicted).is_err() {
                        break;
                    }
                }
            }
        }
        if !evicted.is_empty() {
            tracing::warn!(
                namespace = ns,
                rows = evicted.len(),
                "cache: rows over the namespace budget evicted while rebuilding its policy"
            );
        }
        for key in evicted {
            policy.remove(&key);
            delete_row(tx, key.rowid, Removal::Evicted, change)?;
        }
        if let Some(slot) = self.by_ns.get_mut(ns) {
            *slot = policy;
        }
        Ok(())
    }

    /// Total weight each policy holds (tests compare it with the ledger).
    #[cfg(test)]
    pub(super) fn weights(&self) -> Vec<u64> {
        self.by_ns.iter().map(|p| p.weight()).collect()
    }

    /// How many rows namespace `ns`'s policy holds (tests).
    #[cfg(test)]
    pub(super) fn len(&self, ns: usize) -> usize {
        self.by_ns.get(ns).map_or(0, |p| p.len())
    }

    /// What a miss costs now (tests).
    #[cfg(test)]
    pub(super) fn cost(&self) -> Cost {
        self.cost
    }

    /// Whether any namespace waits for a rebuild (tests).
    #[cfg(test)]
    pub(super) fn any_stale(&self) -> bool {
        self.stale != 0
    }
}

/// Deletes the row `rowid` for `why`, telling the ledger and the watchers, and returns what it
/// was (size and key). A row already gone (deleted earlier in the same transaction) is
/// skipped. The caller tells the policy.
pub(super) fn delete_row(
    tx: &Transaction<'_>,
    rowid: i64,
    why: Removal,
    change: &mut Change,
) -> Result<Option<(RowSize, RowKey)>, CacheError> {
    let Some((size, full_key)) = tx
        .prepare_cached(DELETE_ROWID_SQL)?
        .query_row([rowid], |r| {
            Ok((RowSize::from_row(r, 0)?, r.get::<_, String>(4)?))
        })
        .optional()?
    else {
        return Ok(None);
    };
    change.removed(size, why, &full_key);
    Ok(Some((size, RowKey::new(rowid, &full_key))))
}

fn fresh(
    eviction: Eviction,
    budgets: &[u64; NS_COUNT],
    ns: usize,
    cost: Cost,
) -> Box<dyn Policy<RowKey>> {
    let kind = u8::try_from(ns)
        .ok()
        .and_then(|id| Namespace::from_id(id).ok())
        .map_or(Kind::NoEviction, |namespace| eviction.kind(namespace));
    let mut policy = kind.build(budgets.get(ns).copied().unwrap_or(0));
    policy.set_cost(cost);
    policy
}

fn bit(ns: usize) -> u16 {
    u32::try_from(ns)
        .ok()
        .and_then(|ns| 1u16.checked_shl(ns))
        .unwrap_or(0)
}
