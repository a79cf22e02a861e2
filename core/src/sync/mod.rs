//! Syncing the outbox and the cache with the server.
//!
//! - [`engine`]: the sans-I/O state machine. It decides what to send and when — tier cadences,
//!   network gating, ride-along wake-ups, in-call retries and backoff — from events, and answers
//!   with actions. It touches only the local database, never the network or a timer, so it is
//!   tested by feeding it events with a manual clock.

pub mod engine;

pub use engine::{Action, EngineConfig, Event, FailureKind, SyncEngine, SyncStatus, TierStatus};
