//! Kryonix on the device: a local SQLite cache, a durable outbox, and the sync engine and agent
//! that upload the one and refresh the other.
//!
//! The README's example runs as a doc-test of this crate.
//!
//! Pure Rust with no FFI concerns; the `bindings` crate wraps it for Kotlin and Swift.
//!
//! # Layout
//!
//! - [`agent`]: what an app holds — database, cache, outbox and the sync task behind one object.
//! - [`store`]: the SQLite database — WAL, migrations, `read`/`write` closures, `meta` table;
//!   encryption at rest with SQLCipher (feature `encryption`) and the one-agent-per-file lock.
//! - [`cache`]: per-tenant, per-namespace values — TTLs (explicit or adaptive), compression
//!   above 1 KiB, budgets enforced with each namespace's eviction policy, stats.
//! - [`policy`]: eviction policies in memory, free of SQLite — the table's five, ARC, and the
//!   adaptive W-TinyLFU — as the cache and the `kryonix-cachesim` simulator use them.
//! - [`outbox`]: the durable upload queue — four priority tiers, batches of 100, backoff, dead
//!   letters; nothing accepted is ever dropped.
//! - [`sync`]: the sans-I/O sync engine — tier cadences, network gating, ride-along wake-ups,
//!   retries and backoff, as a state machine from events to actions — and the driver that runs
//!   it against the outbox, HTTP and a timer.
//! - [`watch`]: live data — subscriptions to a key, a namespace or a key prefix, told of every
//!   committed change (local, pulled, expired, evicted), coalesced per key, never blocking a writer.
//! - [`clock`]: wall-clock time behind a trait, so TTLs and backoff are tested without sleeping.
//! - [`error`]: the crate-wide [`Error`] over each module's own error enum.

pub mod agent;
pub mod cache;
pub mod clock;
pub mod error;
pub mod outbox;
pub mod policy;
pub mod store;
pub mod sync;
pub mod watch;

pub use agent::{Agent, AgentConfig};
pub use cache::{Cache, CacheConfig, CacheEntry, CacheError, CacheStats, Expiry};
pub use clock::{Clock, ManualClock, Millis, SystemClock};
pub use error::{Error, Result};
pub use outbox::{
    Applied, DeadLetter, ItemId, ItemState, NewItem, Outbox, OutboxConfig, OutboxError, OutboxItem,
    OutboxStats, Rejection, TierSet, TierStats, Write,
};
pub use store::{Durability, EncryptionKey, FileLock, Store, StoreError, StoreOptions};
pub use sync::RetrySchedule;
pub use watch::{Cause, KeyChange, Watch, WatchCanceller};

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
