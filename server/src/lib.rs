//! `kryonix-server`: the sync server a platform team deploys beside Redis.
//!
//! It authenticates devices with bearer tokens, stores their uploads exactly once in Redis
//! Streams in the `mobile_sync` database (DB 11, `noeviction`), serves the changes backends
//! publish for them, and fronts the other namespaces as a tenant-isolated L2 cache. It keeps no
//! state of its own, so any number of instances can run behind a load balancer. With no Redis URL
//! it runs on an embedded SQLite store for development.
//!
//! # Layout
//!
//! - [`server`]: `run(listener, state, shutdown)` and the shutdown signal.
//! - [`tls`]: HTTPS on the server itself, certificates reloaded in place.
//! - [`api`]: `app(state) -> Router`, the layers (metrics, timeout, gzip, auth, rate limits) and
//!   the handlers.
//! - [`auth`]: HS256 JWTs; the tenant always comes from the token.
//! - [`revocations`]: the tokens lately confirmed unrevoked, which ride through a failover.
//! - [`store`]: the Redis store and the embedded SQLite store behind one enum.
//! - [`keys`]: every Redis key name.
//! - [`backpressure`]: tier-aware refusal as the sync store fills up.
//! - [`startup`]: the safety checks on the sync store (noeviction, AOF).
//! - [`config`], [`cli`]: settings from flags, `KRYONIX_*` variables and a TOML file.
//! - [`metrics`], [`error`]: Prometheus metrics, the error type.
//!
//! Body compression (gzip and lz4, bounded decoding) is the protocol crate's
//! [`kryonix_protocol::codec`], shared with the device.

pub mod api;
pub mod auth;
pub mod backpressure;
pub mod cli;
pub mod config;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod revocations;
pub mod server;
pub mod startup;
pub mod store;
pub mod tls;

pub use api::{AppState, app};
pub use config::ServerConfig;
pub use server::{run, shutdown_signal};
