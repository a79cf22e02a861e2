//! Replaying a trace through the real device cache (`kryonix_core::Cache` on a SQLite file)
//! rather than through a policy object alone: the check that what is simulated is what ships.
//!
//! Every key of the trace becomes a key of the `sessions` namespace (an `allkeys-lru`
//! namespace, so `adaptive` by default and plain LRU under [`Eviction::Table`]) with a value
//! of [`VALUE_BYTES`] and a key of fixed length, so every entry is charged the same bytes and a
//! budget of `capacity` entries holds exactly `capacity` of them. A `ManualClock` moves one
//! millisecond per access. Each access is a `get`; a miss is followed by a `put`, as an app
//! reading through the cache does.
//!
//! The cache batches hits and gives them to the policy at the next write, oldest first, a
//! key's reads since the last write replayed together: plain LRU, which only sees the last
//! access, comes out exactly as the policy alone; the adaptive policy sees a key's repeated
//! reads in a row instead of interleaved, and lands close.

use std::path::Path;
use std::sync::Arc;

use kryonix_core::cache::{Cache, CacheConfig, CacheError, Eviction, Expiry};
use kryonix_core::store::{Store, StoreError, StoreOptions};
use kryonix_core::{ManualClock, Millis};
use kryonix_protocol::{Namespace, TenantId, TenantKey};

use crate::Outcome;

/// Bytes of every value: under the 1 KiB compression threshold, so it is stored as it is.
pub const VALUE_BYTES: usize = 64;

/// The namespace the trace is replayed in.
const NAMESPACE: Namespace = Namespace::Sessions;

/// Why a replay through the cache failed.
#[derive(Debug, thiserror::Error)]
pub enum ThroughError {
    #[error("cache: {0}")]
    Cache(#[from] CacheError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("temporary directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("a budget of {capacity} entries of {charged} bytes does not fit the namespace")]
    Budget { capacity: u64, charged: u64 },
}

/// Replays `keys` through a fresh cache in a temporary directory under `parent`, holding
/// `capacity` entries, its namespaces running `eviction`.
pub fn replay_through_cache(
    keys: &[u64],
    capacity: u64,
    eviction: Eviction,
    parent: &Path,
) -> Result<Outcome, ThroughError> {
    let dir = tempfile::tempdir_in(parent)?;
    let store = Arc::new(Store::open(
        dir.path().join("cachesim.db"),
        &StoreOptions::default(),
    )?);
    let tenant = TenantId::new("sim").map_err(CacheError::from)?;
    let key_of = |key: u64| TenantKey::new(&tenant, NAMESPACE, &format!("{key:016x}"));
    let charged = (VALUE_BYTES + key_of(0).map_err(CacheError::from)?.as_str().len()) as u64;
    let budget = capacity
        .checked_mul(charged)
        .ok_or(ThroughError::Budget { capacity, charged })?;
    let config = CacheConfig {
        device_budget_bytes: device_budget_for(budget),
        eviction,
        ..CacheConfig::default()
    };
    if Namespace::scaled_budget(NAMESPACE, config.device_budget_bytes) != budget {
        return Err(ThroughError::Budget { capacity, charged });
    }
    let clock = ManualClock::new(START_MS);
    let cache = Cache::open(store, Arc::new(clock.clone()), config)?;
    let value = [0x5au8; VALUE_BYTES];
    let mut outcome = Outcome::default();
    for &key in keys {
        let key = key_of(key).map_err(CacheError::from)?;
        let hit = cache.get(&key)?.is_some();
        if !hit {
            cache.put(&key, &value, Expiry::Never)?;
        }
        outcome.accesses += 1;
        outcome.bytes += 1;
        if hit {
            outcome.hits += 1;
            outcome.hit_bytes += 1;
        }
        clock.advance(std::time::Duration::from_millis(1));
    }
    Ok(outcome)
}

/// Any fixed start: only differences of time matter to the cache.
const START_MS: Millis = 1_700_000_000_000;

/// The device budget whose share for the replay's namespace is exactly `budget`: the
/// smallest device budget whose share reaches it (shares round down, and one more byte of
/// device budget adds less than one byte to a namespace).
fn device_budget_for(budget: u64) -> u64 {
    let total = u128::from(Namespace::total_budget_bytes());
    let share = u128::from(NAMESPACE.info().budget_bytes);
    let device = (u128::from(budget) * total).div_ceil(share);
    u64::try_from(device).unwrap_or(u64::MAX)
}
