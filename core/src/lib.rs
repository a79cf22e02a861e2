//! Kryonix on the device: a local SQLite cache, a durable outbox and (soon) the sync engine.
//!
//! Pure Rust with no FFI concerns; the `bindings` crate wraps it for Kotlin and Swift.
//!
//! # Layout
//!
//! - [`store`]: the SQLite database — WAL, migrations, `read`/`write` closures, `meta` table.
//! - [`outbox`]: the durable upload queue — four priority tiers, batches of 100, backoff, dead
//!   letters; nothing accepted is ever dropped.
//! - [`clock`]: wall-clock time behind a trait, so TTLs and backoff are tested without sleeping.

pub mod cache;
pub mod clock;
pub mod outbox;
pub mod store;

pub use clock::{Clock, ManualClock, Millis, SystemClock};
pub use outbox::{
    DeadLetter, ItemId, ItemState, NewItem, Outbox, OutboxConfig, OutboxError, OutboxItem,
    OutboxStats, RetrySchedule, TierSet, TierStats,
};
pub use store::{Durability, Store, StoreError, StoreOptions};
