//! Eviction policies, in memory and free of SQLite: given the accesses a cache sees, which
//! resident entry leaves when it is over capacity.
//!
//! One [`Policy`] object tracks one namespace's resident keys with their weights (bytes, or 1 per
//! entry in the simulator). The cache tells it of every hit, insert and removal; the policy answers
//! an insert with the keys to evict — or with the new key itself, when an admission filter decides
//! it is worth less than what it would displace. The same code runs in `kryonix-cachesim`, which
//! replays public traces through it, so what is measured is what ships.
//!
//! The policies: the five of the namespace table ([`Lru`], [`Lfu`], [`VolatileLru`],
//! [`VolatileTtl`], [`NoEviction`]), [`Arc`] as a baseline, and [`Adaptive`], a W-TinyLFU whose
//! window adapts by hill climbing (see `docs/adr/0026-adaptive-eviction.md`).

mod adaptive;
mod arc;
mod classic;
mod list;
pub mod sketch;
#[cfg(test)]
mod tests;

use std::fmt;
use std::hash::Hash;

pub use adaptive::{Adaptive, Cost, Tuning};
pub use arc::Arc;
pub use classic::{Lfu, Lru, NoEviction, VolatileLru, VolatileTtl};

/// What a policy knows of an entry when it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Its share of the capacity: bytes, or 1 when entries are counted.
    pub weight: u64,
    /// When it expires (the cache's clock, in ms), if it does; the volatile policies only evict
    /// entries that expire.
    pub expires_at: Option<u64>,
}

impl Entry {
    /// An entry of one unit that never expires: the simulator's entries.
    pub const UNIT: Self = Self {
        weight: 1,
        expires_at: None,
    };
}

/// Why an insert could not be made to fit. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The entry alone is heavier than the whole capacity.
    #[error("an entry of {weight} is larger than the capacity of {capacity}")]
    TooLarge {
        /// The entry's weight.
        weight: u64,
        /// The policy's capacity.
        capacity: u64,
    },
    /// The policy may not evict enough: `noeviction`, or a volatile policy short of entries
    /// with a TTL.
    #[error("{needed} more must be freed and the policy may evict only {evictable}")]
    Full {
        /// The weight that would have to go.
        needed: u64,
        /// The weight the policy may evict.
        evictable: u64,
    },
}

/// The policies by name, as configured and as printed by the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Least recently used.
    Lru,
    /// Least frequently used, least recently used among equals.
    Lfu,
    /// Least recently used among entries with a TTL.
    VolatileLru,
    /// Soonest to expire among entries with a TTL.
    VolatileTtl,
    /// Never evict.
    NoEviction,
    /// Adaptive replacement cache (Megiddo and Modha), a baseline.
    Arc,
    /// W-TinyLFU with a hill-climbing window: this product's adaptive policy.
    Adaptive,
}

impl Kind {
    /// Every policy.
    pub const ALL: [Self; 7] = [
        Self::Lru,
        Self::Lfu,
        Self::VolatileLru,
        Self::VolatileTtl,
        Self::NoEviction,
        Self::Arc,
        Self::Adaptive,
    ];

    /// The name used in configuration and tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lru => "lru",
            Self::Lfu => "lfu",
            Self::VolatileLru => "volatile-lru",
            Self::VolatileTtl => "volatile-ttl",
            Self::NoEviction => "noeviction",
            Self::Arc => "arc",
            Self::Adaptive => "adaptive",
        }
    }

    /// The policy named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// A new, empty policy of this kind over `capacity`.
    pub fn build<K: Hash + Eq + Clone + Send + fmt::Debug + 'static>(
        self,
        capacity: u64,
    ) -> Box<dyn Policy<K>> {
        match self {
            Self::Lru => Box::new(Lru::new(capacity)),
            Self::Lfu => Box::new(Lfu::new(capacity)),
            Self::VolatileLru => Box::new(VolatileLru::new(capacity)),
            Self::VolatileTtl => Box::new(VolatileTtl::new(capacity)),
            Self::NoEviction => Box::new(NoEviction::new(capacity)),
            Self::Arc => Box::new(Arc::new(capacity)),
            Self::Adaptive => Box::new(Adaptive::new(capacity, Cost::Count)),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An eviction policy over keys `K`.
///
/// The caller keeps the values and applies the answers: after `insert` returns, every key in
/// `evicted` must be dropped from storage (it may include the inserted key itself, when the
/// policy declined to keep it). Removals the policy did not ask for — deletes, expiries — are
/// reported with [`Policy::remove`].
pub trait Policy<K>: fmt::Debug + Send {
    /// Which policy this is.
    fn kind(&self) -> Kind;

    /// The total weight it keeps at most.
    fn capacity(&self) -> u64;

    /// The total weight resident now.
    fn weight(&self) -> u64;

    /// The number of resident keys.
    fn len(&self) -> usize;

    /// Whether nothing is resident.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` is resident.
    fn contains(&self, key: &K) -> bool;

    /// A read found `key` resident. Unknown keys are ignored.
    fn hit(&mut self, key: &K);

    /// Writes `key` (new, or resident with a new weight or expiry) and makes room, pushing what
    /// must go onto `evicted`. On `Err` nothing changed and `evicted` is untouched.
    fn insert(&mut self, key: K, entry: Entry, evicted: &mut Vec<K>) -> Result<(), Refused>;

    /// Like [`Policy::insert`], but `key` itself is kept whatever an admission filter thinks of
    /// it: the room comes from other entries. For a write the caller must be able to read back
    /// at once (the app's own write, pending upload). Every policy but the adaptive one never
    /// evicts the key it writes, so for them this is `insert`.
    fn insert_admitted(
        &mut self,
        key: K,
        entry: Entry,
        evicted: &mut Vec<K>,
    ) -> Result<(), Refused> {
        self.insert(key, entry, evicted)
    }

    /// `key` left the cache for another reason (deleted, expired). Returns whether it was
    /// resident.
    fn remove(&mut self, key: &K) -> bool;

    /// Changes what a miss costs from now on (the device's network changed). Only the adaptive
    /// policy weighs cost; the others ignore it.
    fn set_cost(&mut self, _cost: Cost) {}

    /// One access as a cache sees it: a hit if resident, else a miss followed by an insert.
    /// Returns whether it was a hit.
    fn access(&mut self, key: K, entry: Entry, evicted: &mut Vec<K>) -> bool {
        if self.contains(&key) {
            self.hit(&key);
            true
        } else {
            // A refused insert is a miss that stays a miss.
            let _ = self.insert(key, entry, evicted);
            false
        }
    }
}

/// The check every policy makes before anything else.
fn check_weight(weight: u64, capacity: u64) -> Result<(), Refused> {
    if weight > capacity {
        Err(Refused::TooLarge { weight, capacity })
    } else {
        Ok(())
    }
}
