//! A small pool of dedicated connections to the sync Redis, for the push transaction.
//!
//! `WATCH` is connection state: sent on the shared multiplexed connection it would watch for
//! every request in flight there, and one request's `EXEC` would run another's `MULTI`. So a
//! push takes a connection of its own for the whole transaction (and for the `WAIT` after it,
//! which counts the writes of its own connection).
//!
//! A connection goes back to the free list only when its user says the transaction is over
//! ([`Lease::release`]). Otherwise it is dropped with its lease: on any error, and when the
//! request is cancelled mid-transaction (a request timeout drops the future between `WATCH` and
//! `EXEC`). Dropping the last handle closes the socket, and Redis forgets a closed connection's
//! `WATCH` and `MULTI`, so a connection in the middle of a transaction is never handed to the
//! next push.
//!
//! A semaphore bounds the connections open at once, free and leased together; a push waits for
//! a permit while all are leased. Connections are opened on demand. Written here rather than
//! taken from a pool crate: see `docs/adr/0021-sequenced-exactly-once-server.md`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections one server instance opens at most for push transactions. A transaction holds its
/// connection for two round trips (three with `WAIT`), so 16 keep far more pushes in flight than
/// Redis's single thread can serve, without piling connections on Redis as instances are added.
pub const PUSH_CONNECTIONS: usize = 16;

/// The free list and the bound.
pub(super) struct TxPool {
    client: Client,
    config: AsyncConnectionConfig,
    /// A std mutex, not an async one: it is held for one push or pop, never across an `.await`,
    /// and [`Lease::release`] can then stay synchronous.
    free: Mutex<Vec<MultiplexedConnection>>,
    permits: Arc<Semaphore>,
}

impl TxPool {
    /// A pool over `client` (which names the sync database); opens nothing yet.
    pub(super) fn new(client: Client, size: usize) -> Arc<Self> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            // Like the shared connections: longer than any WAIT, shorter than a device's patience.
            .set_response_timeout(Some(Duration::from_secs(10)));
        Arc::new(Self {
            client,
            config,
            free: Mutex::new(Vec::with_capacity(size)),
            permits: Arc::new(Semaphore::new(size.max(1))),
        })
    }

    /// A connection for one transaction: a free one when there is one, else a new one. Waits
    /// while every connection is leased.
    pub(super) async fn lease(self: &Arc<Self>) -> Result<Lease, RedisError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| {
                RedisError::from(std::io::Error::other("the push connection pool is closed"))
            })?;
        // A poisoned lock only means a panic elsewhere while pushing or popping; the vector is
        // still a valid list of connections.
        let reused = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let (con, reused) = match reused {
            Some(con) => (con, true),
            None => (self.open().await?, false),
        };
        Ok(Lease {
            con,
            reused,
            pool: Arc::clone(self),
            _permit: permit,
        })
    }

    async fn open(&self) -> Result<MultiplexedConnection, RedisError> {
        self.client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
    }
}

/// One connection, leased for one transaction.
pub(super) struct Lease {
    con: MultiplexedConnection,
    reused: bool,
    pool: Arc<TxPool>,
    /// Returned to the semaphore when the lease ends, after the connection is back in the free
    /// list or closed, so free plus leased never exceeds the bound.
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    pub(super) fn con(&mut self) -> &mut MultiplexedConnection {
        &mut self.con
    }

    /// Whether the connection waited in the free list before this lease: it may have been
    /// closed since (a Redis restart, a failover), which the first command finds out.
    pub(super) fn reused(&self) -> bool {
        self.reused
    }

    /// Replaces a connection found dead by a new one, under the same permit.
    pub(super) async fn reopen(&mut self) -> Result<(), RedisError> {
        self.con = self.pool.open().await?;
        self.reused = false;
        Ok(())
    }

    /// Hands the connection back: only after the transaction ended cleanly (`EXEC` answered or
    /// `UNWATCH` sent), so nothing is watched or queued on it.
    pub(super) fn release(self) {
        self.pool
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.con.clone());
        // `self` drops here: the lease's handle and then its permit.
    }
}
