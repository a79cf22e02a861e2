//! The device cache: values per tenant and namespace, in the same SQLite file as the outbox.
//!
//! Apps read through the cache while offline, so a hit must cost little more than the SQLite
//! lookup underneath it, and the cache must never grow past what the user's phone can spare. That
//! shapes the design:
//!
//! - **One row per value** in `cache_entries`, keyed by the validated
//!   `tenant:{tenant}:{namespace}:{key}` ([`TenantKey`]), so tenants can never see each other's
//!   values: the tenant is part of every lookup.
//! - **Budgets per namespace.** The device budget (64 MiB by default) is split in the proportions
//!   of the namespace table; a value is charged its stored size plus its key. When a put does not
//!   fit, expired entries of the namespace go first, then the namespace's policy object
//!   ([`crate::policy`], kept in `policies`) picks victims: adaptive for the `allkeys-*`
//!   namespaces (unless [`Eviction::Table`]), the table's `volatile-lru` / `volatile-ttl`
//!   otherwise, and `noeviction` refuses the write with [`CacheError::NamespaceFull`] rather than
//!   drop data. Eviction and the insert run in one write transaction: a refused put changes
//!   nothing. The adaptive policy may decline the value being put (a cache under pressure
//!   keeps what is worth more); the put then succeeds and the value counts as evicted.
//! - **Usage in memory.** Each namespace's bytes and entries are summed once when the cache
//!   opens and then kept in a ledger that changes only after a transaction commits, so a put never
//!   scans the table to learn whether it fits.
//! - **Access statistics are batched.** The policies need every read, but a write per read would
//!   turn every cache hit into a transaction (and a WAL append). Hits are recorded in memory and
//!   given to the policies and to `last_access`/`access_count` at the start of the next write
//!   transaction, before any victim is chosen, so eviction always sees them. A crash loses only
//!   these hints, never a value; the policies are rebuilt from the columns at open.
//! - **Expiry on read.** An entry past its TTL is a miss the moment it expires, even before it is
//!   removed; reading it removes it, and [`Cache::purge_expired`] reclaims the rest in small steps.
//! - **Compression** above 1 KiB per the device profile ([`codec`]), with the encoding stored in
//!   the row and values that do not shrink stored as they are.
//! - **Watchers are told after the commit.** While anyone watches ([`crate::watch`]), a write
//!   transaction collects what each key became and why, and the registry tells the matching
//!   subscribers once it has committed, before the next transaction can start.
//!
//! This file holds the [`Cache`] itself, its configuration, errors and public API, and the
//! write of one value (`upsert`). The rest is split by concern: `sql` (the statements and row
//! readers), `ledger` (what a transaction changes in the usage, applied after it commits),
//! `policies` (each namespace's eviction policy, rebuilt after a rollback), `access` (the
//! batched access statistics), `eviction` (the SQL removals: expired rows, a full disk's
//! victims), `remote` (applying pulled pages), `subscribe` (starting a watch from the right
//! snapshot), [`stats`] and [`codec`].

mod access;
pub mod codec;
mod eviction;
mod ledger;
mod policies;
mod remote;
mod sql;
pub mod stats;
mod subscribe;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use kryonix_protocol::{
    DeviceProfile, Encoding, EvictionPolicy, KeyError, Namespace, TenantKey, default_ttl,
};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::clock::{Clock, Millis, duration_ms};
use crate::store::{Store, StoreError};
use crate::watch::{Cause, Watchers};

pub use codec::CodecError;
pub use policies::Eviction;
pub use remote::ApplyReport;
pub use stats::{CacheStats, LatencySummary, NamespaceStats};

use crate::policy::{Entry, Refused};
use access::{Access, flush_accesses};
use eviction::{Room, drain_expired, free_by_table_order};
use ledger::{Change, Removal, RowSize};
use policies::{Policies, RowKey, cost_for, delete_row};
use sql::{
    CONTAINS_SQL, DELETE_EXPIRED_KEY_SQL, DELETE_SQL, EXPIRED_BYTES_SQL, OLD_SIZE_SQL, PURGE_SQL,
    StoredValue, UPSERT_SQL, USAGE_SQL, read_value,
};
use stats::{NS_COUNT, Stats, Usage};

/// Default on-device budget shared by the sixteen namespaces.
pub const DEFAULT_DEVICE_BUDGET_BYTES: u64 = 64 * 1024 * 1024;

/// Default largest value accepted by [`Cache::put`], before compression.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// The least a full disk makes room for: a few pages, so one eviction serves several writes.
const FULL_DISK_ROOM: u64 = 64 * 1024;
/// Expired entries reclaimed at most when a full disk finds nothing to evict in the namespace.
const FULL_DISK_PURGE: usize = 500;

/// Why a cache operation failed. Nothing was written when any of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("invalid cache key: {0}")]
    InvalidKey(#[from] KeyError),
    #[error("the value is {size} bytes; the cache accepts at most {max} bytes per value")]
    ValueTooLarge { size: usize, max: usize },
    #[error("a TTL of zero would store an already expired value; use a positive duration")]
    InvalidTtl,
    #[error(
        "an entry of {charged} bytes (stored value plus key) can never fit namespace {namespace}, whose budget is {budget} bytes"
    )]
    ExceedsNamespaceBudget {
        namespace: Namespace,
        charged: u64,
        budget: u64,
    },
    #[error(
        "namespace {namespace} is full ({used} of {budget} bytes used, {needed} needed) and its policy {policy} allows no eviction{}; the write was refused",
        if matches!(.policy, EvictionPolicy::Noeviction) { "" } else { " of the remaining entries" }
    )]
    NamespaceFull {
        namespace: Namespace,
        policy: EvictionPolicy,
        used: u64,
        needed: u64,
        budget: u64,
    },
    #[error("a cached value could not be decoded: {0}")]
    Codec(#[from] CodecError),
    #[error("cache storage: {0}")]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for CacheError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(StoreError::from(e))
    }
}

/// How long a value lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expiry {
    /// The adaptive TTL of the current device profile in a mobile-optimized namespace, the
    /// namespace table's TTL in the others ([`default_ttl`]).
    #[default]
    Adaptive,
    /// A fixed, positive TTL.
    After(Duration),
    /// Until deleted or evicted. Such entries are never chosen by `volatile-*` policies.
    Never,
}

/// Settings of a [`Cache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Total bytes the cache may use on this device, split between namespaces in the
    /// proportions of the namespace table.
    pub device_budget_bytes: u64,
    /// Largest value accepted, before compression.
    pub max_value_bytes: usize,
    /// The profile at start-up; change it with [`Cache::set_profile`].
    pub profile: DeviceProfile,
    /// Which eviction policies the namespaces run: adaptive by default.
    pub eviction: Eviction,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            device_budget_bytes: DEFAULT_DEVICE_BUDGET_BYTES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            profile: DeviceProfile::default(),
            eviction: Eviction::default(),
        }
    }
}

/// A value with what the cache knows about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub value: Vec<u8>,
    /// Time left before it expires; `None` for a value that never expires.
    pub ttl: Option<Duration>,
    /// How the value is stored.
    pub encoding: Encoding,
    /// Bytes charged to the namespace budget (stored value plus key).
    pub charged_bytes: u64,
}

/// The cache. Share it behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Cache {
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    max_value_bytes: usize,
    budgets: [u64; NS_COUNT],
    profile: Mutex<DeviceProfile>,
    /// Committed usage per namespace. Held for the whole of every write transaction that
    /// changes cache rows, so the usage a put decides on is the usage it commits against.
    ledger: Mutex<[Usage; NS_COUNT]>,
    /// Each namespace's eviction policy. Locked after the ledger, by write transactions only.
    policies: Mutex<Policies>,
    /// Hits since the last flush, by full key.
    accesses: Mutex<HashMap<String, Access>>,
    stats: Stats,
    /// Who watches which keys; told after each committed write transaction.
    watchers: Arc<Watchers>,
}

/// A value checked and compressed, ready to be written inside a transaction.
#[derive(Debug)]
struct PreparedPut<'k> {
    key: &'k TenantKey,
    stored: Vec<u8>,
    encoding: Encoding,
    row: RowSize,
    expires_at: Option<Millis>,
    budget: u64,
    /// The value before compression, kept only when someone watched as it was prepared.
    value: Option<Arc<[u8]>>,
    /// What watchers are told the write was.
    cause: Cause,
    /// Kept whatever the adaptive policy's admission filter thinks of it (the app's own write).
    admit: bool,
}

impl PreparedPut<'_> {
    /// The value as watchers receive it. A watch that began after the value was prepared gets
    /// it back from the stored bytes; should that ever fail, the notice is left out (logged)
    /// rather than failing a write that has nothing to do with the watcher.
    fn watched_value(&self) -> Option<Arc<[u8]>> {
        if let Some(value) = &self.value {
            return Some(value.clone());
        }
        let raw = usize::try_from(self.row.raw).unwrap_or(usize::MAX);
        match codec::decode(self.encoding, &self.stored, raw) {
            Ok(value) => Some(value.into()),
            Err(error) => {
                tracing::error!(%error, key = self.key.as_str(), "watchers not told of a write");
                None
            }
        }
    }
}

/// Writes a prepared value inside `tx` and lets the namespace's policy make room for it.
/// `ledger` is the committed usage; `change` holds what this transaction changed so far, so
/// several writes in one transaction see each other's bytes.
///
/// Expired rows go first; then the policy is told of the write and answers with its victims,
/// which are deleted here. The adaptive policy may answer with the written row itself — its
/// admission filter judged the value worth less than what it would displace — and the row is
/// deleted again: the put succeeds, as a put into a cache, and the value is counted (and told
/// to watchers) as evicted.
fn upsert(
    tx: &Transaction<'_>,
    ledger: &[Usage; NS_COUNT],
    change: &mut Change,
    policies: &mut Policies,
    put: &PreparedPut<'_>,
    now: Millis,
) -> Result<(), CacheError> {
    let key = put.key;
    let namespace = key.namespace();
    let ns = put.row.namespace;
    let pending = change.usage.get(ns).map_or(0, |d| d.charged);
    let used = ledger
        .get(ns)
        .map_or(0, |u| u.charged)
        .saturating_add_signed(pending);
    let charged = to_u64(put.row.charged);
    let old = tx
        .prepare_cached(OLD_SIZE_SQL)?
        .query_row([key.as_str()], |r| RowSize::from_row(r, 0))
        .optional()?;
    let mut used_without_old = used;
    if let Some(old) = old {
        // An overwrite: the old value's bytes are given back before checking the fit.
        change.remove(old, Removal::Deleted);
        used_without_old = used_without_old.saturating_sub(to_u64(old.charged));
    }
    let full = || CacheError::NamespaceFull {
        namespace,
        policy: namespace.eviction(),
        used,
        needed: charged,
        budget: put.budget,
    };
    let over = (used_without_old + charged).saturating_sub(put.budget);
    if over > 0 {
        if namespace.eviction() == EvictionPolicy::Noeviction {
            // Only expired rows may go: refuse before anything changes, so a full namespace
            // refusing puts one after another does not make its policy stale each time.
            let expired: i64 = tx
                .prepare_cached(EXPIRED_BYTES_SQL)?
                .query_row(params![i64::from(namespace.id()), key.as_str(), now], |r| {
                    r.get(0)
                })?;
            if to_u64(expired) < over {
                return Err(full());
            }
        }
        let room = Room {
            namespace,
            full_key: key.as_str(),
            now,
        };
        drain_expired(tx, &room, over, change, policies)?;
    }
    let rowid: i64 = tx.prepare_cached(UPSERT_SQL)?.query_row(
        params![
            key.as_str(),
            key.tenant(),
            i64::from(namespace.id()),
            put.stored,
            i64::from(put.encoding.tag()),
            put.row.raw,
            put.row.charged,
            now,
            put.expires_at,
        ],
        |r| r.get(0),
    )?;
    change.add(put.row);
    let entry = Entry {
        weight: charged,
        expires_at: put.expires_at.map(to_u64),
    };
    let row = RowKey::new(rowid, key.as_str());
    let mut evicted = Vec::new();
    let policy = policies.of(namespace);
    let inserted = if put.admit {
        policy.insert_admitted(row, entry, &mut evicted)
    } else {
        policy.insert(row, entry, &mut evicted)
    };
    match inserted {
        Ok(()) => {}
        // Returning the error rolls back the write and every deletion before it.
        Err(Refused::Full { .. }) => return Err(full()),
        Err(Refused::TooLarge { .. }) => {
            return Err(CacheError::ExceedsNamespaceBudget {
                namespace,
                charged,
                budget: put.budget,
            });
        }
    }
    let mut kept = true;
    for victim in evicted {
        kept &= victim != row;
        delete_row(tx, victim.rowid(), Removal::Evicted, change)?;
    }
    if kept
        && change.watched()
        && let Some(value) = put.watched_value()
    {
        change.notice(key.as_str(), Some(value), put.cause);
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoning only means another thread panicked while holding the lock; every value guarded
    // here is valid between any two statements, so carry on.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Cache {
    /// Opens the cache over `store`, reading each namespace's usage once.
    pub fn open(
        store: Arc<Store>,
        clock: Arc<dyn Clock>,
        config: CacheConfig,
    ) -> Result<Self, CacheError> {
        let mut ledger = [Usage::default(); NS_COUNT];
        store.read(|conn| -> Result<(), CacheError> {
            let mut stmt = conn.prepare(USAGE_SQL)?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let ns = usize::try_from(row.get::<_, i64>(0)?).unwrap_or(usize::MAX);
                if let Some(u) = ledger.get_mut(ns) {
                    *u = Usage {
                        entries: to_u64(row.get(1)?),
                        charged: to_u64(row.get(2)?),
                        raw: to_u64(row.get(3)?),
                        stored: to_u64(row.get(4)?),
                    };
                }
            }
            Ok(())
        })?;
        let budgets = std::array::from_fn(|id| {
            u8::try_from(id)
                .ok()
                .and_then(|id| Namespace::from_id(id).ok())
                .map_or(0, |ns| ns.scaled_budget(config.device_budget_bytes))
        });
        let policies = Policies::new(config.eviction, budgets, cost_for(config.profile));
        let cache = Self {
            store,
            clock,
            max_value_bytes: config.max_value_bytes,
            budgets,
            profile: Mutex::new(config.profile),
            ledger: Mutex::new(ledger),
            policies: Mutex::new(policies),
            accesses: Mutex::new(HashMap::new()),
            stats: Stats::new(),
            watchers: Arc::default(),
        };
        // Every policy starts stale: the first write transaction builds them from the table
        // (and evicts what a smaller budget no longer holds). Doing it now makes a damaged
        // table fail `open`, not the app's first put.
        cache.write_rows(|_, _, _, _| Ok(()))?;
        Ok(cache)
    }

    /// Builds and validates a key from unvalidated parts (as they arrive from an app).
    pub fn key(tenant: &str, namespace: &str, key: &str) -> Result<TenantKey, CacheError> {
        Ok(TenantKey::from_parts(tenant, namespace, key)?)
    }

    /// The device profile used for adaptive TTLs and compression.
    pub fn profile(&self) -> DeviceProfile {
        *lock(&self.profile)
    }

    /// Switches profile (the network changed); applies to puts from now on.
    pub fn set_profile(&self, profile: DeviceProfile) {
        *lock(&self.profile) = profile;
    }

    /// Largest value this cache accepts, before compression.
    pub fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }

    /// This device's byte budget for `namespace`.
    pub fn budget(&self, namespace: Namespace) -> u64 {
        self.budgets
            .get(usize::from(namespace.id()))
            .copied()
            .unwrap_or(0)
    }

    /// Stores `value` under `key`, replacing any previous value, evicting per the namespace's
    /// policy if it does not fit.
    ///
    /// In a namespace that runs the adaptive policy, a value worth less than what it would
    /// displace may be declined: the put succeeds, the value reads as a miss and counts as an
    /// eviction. Use [`Cache::put_admitted`] for a value the app must read back.
    pub fn put(&self, key: &TenantKey, value: &[u8], expiry: Expiry) -> Result<(), CacheError> {
        self.put_timed(key, value, expiry, false)
    }

    /// Like [`Cache::put`], but the value is never declined: the namespace's policy makes room
    /// from other entries instead. For a value the app must be able to read back at once, such
    /// as its own write pending upload ([`crate::Agent::write`] uses it). It can still be
    /// evicted later, like any value, by the puts that follow.
    pub fn put_admitted(
        &self,
        key: &TenantKey,
        value: &[u8],
        expiry: Expiry,
    ) -> Result<(), CacheError> {
        self.put_timed(key, value, expiry, true)
    }

    fn put_timed(
        &self,
        key: &TenantKey,
        value: &[u8],
        expiry: Expiry,
        admit: bool,
    ) -> Result<(), CacheError> {
        let started = Instant::now();
        let result = self.put_inner(key, value, expiry, admit);
        self.stats.record_put(started.elapsed());
        result
    }

    fn put_inner(
        &self,
        key: &TenantKey,
        value: &[u8],
        expiry: Expiry,
        admit: bool,
    ) -> Result<(), CacheError> {
        let now = self.clock.now_ms();
        let mut put = self.prepare_put(key, value, expiry, now)?;
        put.admit = admit;
        let write = |tx: &Transaction<'_>,
                     ledger: &[Usage; NS_COUNT],
                     change: &mut Change,
                     policies: &mut Policies| {
            upsert(tx, ledger, change, policies, &put, now)
        };
        match self.write_rows(write) {
            Err(CacheError::Store(StoreError::Full)) => {
                // The disk (or the size limit) is full. Deleted rows leave free pages that the
                // insert reuses without growing the file, so make room as the namespace's
                // policy allows and try once more.
                if self.free_for_full_disk(key, to_u64(put.row.charged), now)? == 0 {
                    return Err(CacheError::Store(StoreError::Full));
                }
                self.write_rows(write)
            }
            other => other,
        }
    }

    /// Removes entries to give a full disk room for `charged` bytes under `key`: expired
    /// entries and the namespace's policy victims (twice the row's size, pages being shared),
    /// else expired entries of any namespace. Returns the bytes given back.
    fn free_for_full_disk(
        &self,
        key: &TenantKey,
        charged: u64,
        now: Millis,
    ) -> Result<u64, CacheError> {
        let namespace = key.namespace();
        let freed = self.write_rows(|tx, _, change, policies| {
            let room = Room {
                namespace,
                full_key: key.as_str(),
                now,
            };
            // Whether the queries found all that was asked for does not matter: whatever they
            // removed is room.
            free_by_table_order(
                tx,
                &room,
                charged.saturating_mul(2).max(FULL_DISK_ROOM),
                change,
                policies,
            )?;
            Ok(change.freed())
        })?;
        if freed > 0 {
            tracing::warn!(%namespace, freed, "disk full: cache entries evicted to make room");
            return Ok(freed);
        }
        let purged = self.purge_expired(FULL_DISK_PURGE)?;
        if purged > 0 {
            tracing::warn!(
                purged,
                "disk full: expired cache entries reclaimed to make room"
            );
        }
        Ok(u64::try_from(purged).unwrap_or(u64::MAX))
    }

    /// Checks and compresses a value for writing; no lock is taken (compression is the slowest
    /// step and needs no database).
    fn prepare_put<'k>(
        &self,
        key: &'k TenantKey,
        value: &[u8],
        expiry: Expiry,
        now: Millis,
    ) -> Result<PreparedPut<'k>, CacheError> {
        if value.len() > self.max_value_bytes {
            return Err(CacheError::ValueTooLarge {
                size: value.len(),
                max: self.max_value_bytes,
            });
        }
        let profile = self.profile();
        let expires_at = match expiry {
            Expiry::Adaptive => {
                Some(now.saturating_add(duration_ms(default_ttl(key.namespace(), profile))))
            }
            Expiry::After(ttl) if ttl.is_zero() => return Err(CacheError::InvalidTtl),
            Expiry::After(ttl) => Some(now.saturating_add(duration_ms(ttl))),
            Expiry::Never => None,
        };
        let namespace = key.namespace();
        let budget = self.budget(namespace);
        let (encoding, stored) = codec::compress_for(profile.device, value);
        let charged = stored.len() + key.as_str().len();
        let row = RowSize {
            namespace: usize::from(namespace.id()),
            charged: to_i64(charged),
            raw: to_i64(value.len()),
            stored: to_i64(stored.len()),
        };
        let charged = to_u64(row.charged);
        if charged > budget {
            return Err(CacheError::ExceedsNamespaceBudget {
                namespace,
                charged,
                budget,
            });
        }
        Ok(PreparedPut {
            key,
            stored,
            encoding,
            row,
            expires_at,
            budget,
            value: self.watchers.active().then(|| Arc::from(value)),
            cause: Cause::Put,
            admit: false,
        })
    }

    /// The value under `key`, or `None` if absent or expired.
    pub fn get(&self, key: &TenantKey) -> Result<Option<Vec<u8>>, CacheError> {
        Ok(self.get_entry(key)?.map(|entry| entry.value))
    }

    /// The value under `key` with its remaining TTL and encoding; counts like [`Cache::get`].
    pub fn get_entry(&self, key: &TenantKey) -> Result<Option<CacheEntry>, CacheError> {
        let started = Instant::now();
        let now = self.clock.now_ms();
        let row = self
            .store
            .read(|conn| read_value(conn, key.as_str()).map_err(CacheError::from));
        let result = row.and_then(|row| self.finish_read(key.as_str(), row, now));
        let result = match result {
            Ok(Lookup::Expired) => {
                self.remove_expired(&[key.as_str()], now);
                Ok(None)
            }
            Ok(Lookup::Found(entry)) => Ok(Some(entry)),
            Ok(Lookup::Missing) => Ok(None),
            Err(e) => Err(e),
        };
        self.stats.record_get(started.elapsed());
        result
    }

    /// The values under `keys`, in the same order, read in one transaction (one consistent
    /// snapshot). Duplicate keys are fine.
    pub fn get_many(&self, keys: &[TenantKey]) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
        let started = Instant::now();
        let now = self.clock.now_ms();
        let result = self.get_many_inner(keys, now);
        self.stats.record_get(started.elapsed());
        result
    }

    fn get_many_inner(
        &self,
        keys: &[TenantKey],
        now: Millis,
    ) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
        let rows = self.store.read(|conn| -> Result<Vec<_>, CacheError> {
            // A deferred read transaction: every lookup sees the same snapshot. Dropping it
            // rolls back, which for a read is just the end of the snapshot.
            let tx = conn.unchecked_transaction()?;
            let rows = keys
                .iter()
                .map(|k| read_value(&tx, k.as_str()))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            drop(tx);
            Ok(rows)
        })?;
        let mut expired = Vec::new();
        let mut values = Vec::with_capacity(keys.len());
        for (key, row) in keys.iter().zip(rows) {
            values.push(match self.finish_read(key.as_str(), row, now)? {
                Lookup::Found(entry) => Some(entry.value),
                Lookup::Expired => {
                    expired.push(key.as_str());
                    None
                }
                Lookup::Missing => None,
            });
        }
        if !expired.is_empty() {
            self.remove_expired(&expired, now);
        }
        Ok(values)
    }

    /// Turns a row into a value, counting the hit or the miss.
    fn finish_read(
        &self,
        full_key: &str,
        row: Option<StoredValue>,
        now: Millis,
    ) -> Result<Lookup, CacheError> {
        let Some(row) = row else {
            self.stats.miss();
            return Ok(Lookup::Missing);
        };
        if row.expires_at.is_some_and(|at| at <= now) {
            self.stats.miss();
            return Ok(Lookup::Expired);
        }
        let expires_at = row.expires_at;
        let charged = row.charged;
        let (ns, rowid) = (
            usize::try_from(row.namespace).unwrap_or(usize::MAX),
            row.rowid,
        );
        let (encoding, value) = decode_row(row)?;
        self.stats.hit();
        self.record_access(full_key, ns, rowid, now);
        Ok(Lookup::Found(CacheEntry {
            value,
            ttl: expires_at.map(|at| Duration::from_millis(to_u64(at.saturating_sub(now)))),
            encoding,
            charged_bytes: to_u64(charged),
        }))
    }

    /// Whether a live value is stored under `key`. Counts neither as a hit nor as a miss and does
    /// not refresh the entry's recency (like Redis `EXISTS`).
    pub fn contains(&self, key: &TenantKey) -> Result<bool, CacheError> {
        let now = self.clock.now_ms();
        let expires_at = self.store.read(|conn| -> Result<_, CacheError> {
            Ok(conn
                .prepare_cached(CONTAINS_SQL)?
                .query_row([key.as_str()], |r| r.get::<_, Option<Millis>>(0))
                .optional()?)
        })?;
        Ok(matches!(expires_at, Some(at) if at.is_none_or(|at| at > now)))
    }

    /// Removes the value under `key`. Returns whether a live value was removed (an expired one is
    /// removed too, counted as an expiration, and reported as `false`).
    pub fn delete(&self, key: &TenantKey) -> Result<bool, CacheError> {
        let now = self.clock.now_ms();
        let removed = self.write_rows(|tx, _, change, policies| {
            let row = tx
                .prepare_cached(DELETE_SQL)?
                .query_row([key.as_str()], |r| {
                    let size = RowSize::from_row(r, 0)?;
                    policies.forget(size.namespace, RowKey::new(r.get(5)?, key.as_str()));
                    Ok((size, r.get::<_, Option<Millis>>(4)?))
                })
                .optional()?;
            Ok(match row {
                Some((size, Some(at))) if at <= now => {
                    change.removed(size, Removal::Expired, key.as_str());
                    false
                }
                Some((size, _)) => {
                    change.removed(size, Removal::Deleted, key.as_str());
                    true
                }
                None => false,
            })
        })?;
        Ok(removed)
    }

    /// Removes up to `limit` expired entries, soonest-expired first, and returns how many. Call it
    /// from idle time with a small limit to keep each write transaction short.
    pub fn purge_expired(&self, limit: usize) -> Result<usize, CacheError> {
        let now = self.clock.now_ms();
        let removed = self.write_rows(|tx, _, change, policies| {
            let mut stmt = tx.prepare_cached(PURGE_SQL)?;
            let rows = stmt
                .query_map(params![now, to_i64(limit)], |r| {
                    Ok((
                        RowSize::from_row(r, 0)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, i64>(5)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (row, full_key, rowid) in &rows {
                policies.forget(row.namespace, RowKey::new(*rowid, full_key));
                change.removed(*row, Removal::Expired, full_key);
            }
            Ok(rows.len())
        })?;
        Ok(removed)
    }

    /// Writes the batched access statistics now (they are otherwise written by the next put,
    /// delete or purge). Useful before the app goes to the background.
    pub fn flush_access_stats(&self) -> Result<(), CacheError> {
        self.write_rows(|_, _, _, _| Ok(()))
    }

    /// A snapshot of the counters and of each namespace's usage.
    pub fn stats(&self) -> CacheStats {
        let ledger = *lock(&self.ledger);
        self.stats.snapshot(&ledger, &self.budgets)
    }

    /// Runs `f` in a write transaction of the cache: the ledger and the policies are held
    /// throughout, stale policies are rebuilt and batched accesses are flushed first, and the
    /// ledger and counters change only once it commits; if it fails, the policies it changed
    /// are rebuilt by the next one.
    /// Watchers are told of the committed change before the ledger is released, so a watch that
    /// starts (under the same lock) sees every commit either in its snapshot or as a notice.
    fn write_rows<T>(
        &self,
        f: impl FnOnce(
            &Transaction<'_>,
            &[Usage; NS_COUNT],
            &mut Change,
            &mut Policies,
        ) -> Result<T, CacheError>,
    ) -> Result<T, CacheError> {
        let mut ledger = lock(&self.ledger);
        let mut policies = lock(&self.policies);
        let accesses = self.take_accesses();
        let profile = self.profile();
        // Stable for the whole transaction: a watch starts only while holding the ledger.
        let watched = self.watchers.active();
        let result = self.store.write(|tx| -> Result<(T, Change), CacheError> {
            let mut change = Change::new(watched);
            policies.begin(tx, profile, &mut change)?;
            flush_accesses(tx, &accesses, &mut policies)?;
            let value = f(tx, &ledger, &mut change, &mut policies)?;
            Ok((value, change))
        });
        match result {
            Ok((value, mut change)) => {
                self.apply(&mut ledger, &change);
                self.watchers.publish(&change.take_notices());
                Ok(value)
            }
            Err(e) => {
                policies.rolled_back();
                self.restore_accesses(accesses);
                Err(e)
            }
        }
    }

    /// Removes entries a read found expired. Failure only delays the removal (the entry already
    /// reads as a miss and `purge_expired` will get it), so it is logged, not returned.
    fn remove_expired(&self, keys: &[&str], now: Millis) {
        let result = self.write_rows(|tx, _, change, policies| {
            let mut stmt = tx.prepare_cached(DELETE_EXPIRED_KEY_SQL)?;
            for key in keys {
                // The row may be gone already, or rewritten with a new TTL since it was read.
                if let Some((row, rowid)) = stmt
                    .query_row(params![key, now], |r| {
                        Ok((RowSize::from_row(r, 0)?, r.get::<_, i64>(4)?))
                    })
                    .optional()?
                {
                    policies.forget(row.namespace, RowKey::new(rowid, key));
                    change.removed(row, Removal::Expired, key);
                }
            }
            Ok(())
        });
        if let Err(error) = result {
            tracing::warn!(%error, "could not remove expired cache entries; purge will retry");
        }
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        // Watches hold the registry, not the cache: tell them nothing more will come.
        self.watchers.close();
    }
}

/// Decompresses a stored row, checking it decodes to the size that was stored.
fn decode_row(row: StoredValue) -> Result<(Encoding, Vec<u8>), CacheError> {
    let encoding = codec::encoding_from_tag(row.encoding)?;
    let raw_size = usize::try_from(row.raw_size).unwrap_or(0);
    let value = if encoding == Encoding::Identity {
        row.value
    } else {
        codec::decode(encoding, &row.value, raw_size)?
    };
    if value.len() != raw_size {
        return Err(CodecError::Corrupt {
            encoding,
            reason: format!("decoded to {} bytes, {} were stored", value.len(), raw_size),
        }
        .into());
    }
    Ok((encoding, value))
}

/// Outcome of reading one key.
enum Lookup {
    Found(CacheEntry),
    Expired,
    Missing,
}
