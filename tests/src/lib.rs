//! The end-to-end harness of Kryonix Sync: everything a whole-system scenario (or a demo) needs
//! to run the real pieces together on one machine.
//!
//! - [`redis`]: a real `redis-server` spawned from `PATH` on a free port in a temp dir, with the
//!   configuration a test asks for (noeviction, AOF, `appendfsync always`), killed on drop and
//!   restartable on the same port and directory.
//! - [`server`]: the real `kryonix-server` in-process on `127.0.0.1:0`, on Redis or on its
//!   embedded store, on its own runtime so it can be killed (every connection dropped at once)
//!   and restarted on the same port; token minting and a backend's `publish`.
//! - [`proxy`]: a fault-injecting TCP proxy between agents and the server — pass through, cut a
//!   request half-way, close or reset the connection when the answer starts, or withhold the
//!   answer — switchable at run time, with a log of every request and answer it saw.
//! - [`agent`]: agents on temp database files, with test settings and a recording observer.
//! - [`cluster`]: a real Redis Cluster (3 primaries with a replica each by default) started by
//!   `deploy/cluster/local-cluster.sh`: its topology from `CLUSTER NODES`, SIGKILL of a primary
//!   and the time until its replica takes over, node restarts, resharding and one-slot migration.
//! - [`sentinel`]: a real primary + replica under three Sentinels, started by
//!   `deploy/sentinel/local-sentinel.sh`: who the Sentinels name as primary, SIGKILL of it and
//!   the time until they name the replica.
//! - [`streams`]: reading the `mobile_sync` up streams straight from Redis, for "exactly once"
//!   checks that do not trust the server.
//! - [`wait_for`]: polling with a deadline (no sleep-based assertions).
//!
//! Nothing here is a mock of Redis or of the server: the only fake is the proxy, at the network
//! edge where real faults happen.

pub mod agent;
pub mod cluster;
mod daemons;
pub mod proxy;
pub mod redis;
pub mod sentinel;
pub mod server;
pub mod streams;

use std::future::Future;
use std::time::{Duration, Instant};

pub use agent::{RecordingObserver, agent_config, open_agent};
pub use cluster::{ClusterNode, ClusterOptions, RedisCluster, Role};
pub use proxy::{Exchange, Fault, Proxy, Rule};
pub use redis::{RedisOptions, RedisServer};
pub use sentinel::{RedisSentinels, SentinelOptions};
pub use server::{SECRET, ServerOptions, StoreChoice, TestServer};
pub use streams::{UpEntry, up_entries};

/// What can go wrong while setting a scenario up.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("redis-server: {0}")]
    RedisServer(String),
    #[error("Redis topology: {0}")]
    Topology(String),
    #[error("kryonix-server: {0}")]
    Server(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("Redis client: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("agent: {0}")]
    Agent(#[from] kryonix_core::Error),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

/// The harness's result type.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// Polls `check` every 10 ms until it yields `Some`, or fails after `limit` naming `what`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Timeout(limit, what.to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
