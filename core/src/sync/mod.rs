//! Syncing the outbox and the cache with the server.
//!
//! - [`engine`]: the sans-I/O state machine. It decides what to send and when — tier cadences,
//!   network gating, ride-along wake-ups, in-call retries and backoff — from events and a
//!   snapshot of the outbox, and answers with actions (requests, outbox writes, timers). It
//!   touches no database, network or clock, so it is tested with recorded transcripts.
//! - [`retry`]: the one retry schedule (backon), used by the engine.
//! - [`transport`]: the HTTP side — the `Transport` trait and its reqwest implementation, with
//!   token refresh and the mapping of every HTTP answer to "retry when".
//! - [`driver`]: [`driver::step`], one engine turn against the outbox, and the async task that
//!   runs those turns with the transport and a timer and feeds back their outcomes.

pub mod driver;
pub mod engine;
pub mod retry;
pub mod transport;
pub mod trust;

pub use driver::{PULL_CURSOR_KEY, Step, SyncObserver, SyncReport, step};
pub use engine::{
    Action, EngineConfig, Event, FailureKind, SyncEngine, SyncStatus, TierStatus, UpgradeRequired,
};
pub use retry::RetrySchedule;
pub use transport::{
    HttpTransport, PushReply, StaticToken, TokenError, TokenProvider, Transport, TransportError,
};
