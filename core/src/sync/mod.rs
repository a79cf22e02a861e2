//! Syncing the outbox and the cache with the server.
//!
//! - [`engine`]: the sans-I/O state machine. It decides what to send and when — tier cadences,
//!   network gating, ride-along wake-ups, in-call retries and backoff — from events, and answers
//!   with actions. It touches only the local database, never the network or a timer, so it is
//!   tested by feeding it events with a manual clock.

//! - [`transport`]: the HTTP side — the `Transport` trait and its reqwest implementation, with
//!   token refresh and the mapping of every HTTP answer to "retry when".
//! - [`driver`]: the async task that runs the engine's actions and feeds back their outcomes.

pub mod driver;
pub mod engine;
pub mod transport;

pub use driver::{PULL_CURSOR_KEY, SyncObserver, SyncReport};
pub use engine::{Action, EngineConfig, Event, FailureKind, SyncEngine, SyncStatus, TierStatus};
pub use transport::{
    HttpTransport, PushReply, StaticToken, TokenProvider, Transport, TransportError,
};
