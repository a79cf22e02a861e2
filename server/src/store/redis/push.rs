//! The Redis push: exactly once per (producer, tier) by sequence numbers, in native commands.
//!
//! The producer's record is one small hash, `…:producer:{device}:{producer}`, with the last
//! stored seq of each tier it used (fields `1`–`4`). A batch is stored in two round trips on a
//! dedicated connection ([`super::pool`]):
//!
//! 1. `WATCH record`, `HMGET record 1 2 3 4`, and `TYPE` of each up stream the batch targets.
//! 2. The items whose seq is above their tier's stored one are new. If there are any:
//!    `MULTI`, one `XADD` per new item, `HSET record` of the tiers that moved, `PEXPIRE record`,
//!    `EXEC`. If there are none: `UNWATCH`, `PEXPIRE record` (the producer stays known).
//!
//! `EXEC` answers nil when the record changed after the `WATCH`: a concurrent push of the same
//! producer got in first. Nothing of this batch was written; it starts over from step 1 (at most
//! [`MAX_ATTEMPTS`] times, then a retryable `Unavailable`). This costs one `XADD` per item and a
//! constant few commands per batch, where the Lua script it replaces converted every argument
//! twice (Redis to Lua and back) and dominated the push's cost.
//!
//! Why the `TYPE` check: a command that fails inside `EXEC` does not undo the others, so an
//! `XADD` refused for a wrongly typed key would leave the `HSET` advancing the seq past an item
//! that is not stored, and the device's retry would be answered `duplicate`: a lost item. A key
//! of the wrong type therefore fails the request before `MULTI`, and nothing is written.
//!
//! Out of memory (`noeviction` at `maxmemory`), Redis refuses every command queued after `MULTI`
//! and `EXEC` aborts (`EXECABORT`): nothing is written, and the error is
//! [`StoreError::OutOfMemory`], so tier-aware back-pressure works as before.
//!
//! With `min_replicas_acked`, `WAIT` runs on the same connection after `EXEC` (or after the
//! `PEXPIRE` when nothing was new): `WAIT` waits for the writes of its own connection, and the
//! replication stream is ordered, so it also covers the earlier writes that made this batch's
//! items duplicates.
//!
//! On a Cluster the transaction runs on a dedicated connection to the primary that owns the
//! slot of the record's hash tag (`cluster`). When that node answers with a redirection or the
//! connection fails, the transaction starts over on a fresh slot map, for a few seconds at
//! most. Starting over is always safe, even when the failure hid whether an `EXEC` ran: the
//! next `HMGET` sees the advanced record and those items answer `duplicate`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kryonix_protocol::{TenantId, TenantKey, Tier};
use redis::aio::MultiplexedConnection;
use redis::{RedisError, Value};

use super::cluster::{ClusterPush, is_redirect};
use super::entries::item_metadata;
use super::errors::{key_err, map};
use super::pool::TxPool;
use crate::keys;
use crate::store::{NewItem, PushOptions, PushOutcome, StoreError, tier_slot};

/// Attempts of one push before it gives up on a producer that keeps changing under it. Each
/// conflict means another push of the same producer stored something, so a device sending its
/// batches one at a time (as the protocol asks) never needs more than two.
pub(super) const MAX_ATTEMPTS: u32 = 8;

/// How long a Cluster push keeps starting over while slots move or a primary fails over.
const CLUSTER_RETRY_WINDOW: Duration = Duration::from_secs(5);

/// Where push transactions run.
pub(super) enum PushRoute {
    /// One pool of dedicated connections to the sync database.
    Standalone(Arc<TxPool>),
    /// A pool per primary, chosen by the record's slot.
    Cluster(Arc<ClusterPush>),
}

/// Why one attempt failed: a Redis error is kept whole, so a Cluster push can tell a
/// redirection (start over) from anything else.
enum Failure {
    Redis(RedisError),
    Store(StoreError),
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        Self::Store(err)
    }
}

impl Failure {
    fn into_store(self) -> StoreError {
        match self {
            Self::Redis(err) => map(err),
            Self::Store(err) => err,
        }
    }
}

/// The `HMGET` fields, in tier order.
const TIER_FIELDS: [&str; 4] = ["1", "2", "3", "4"];

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Parses the `HMGET record 1 2 3 4` answer.
pub(super) fn last_seq_from(value: Value) -> Result<[u64; 4], StoreError> {
    let fields: Vec<Option<u64>> = redis::from_redis_value(value)
        .map_err(|e| StoreError::Internal(format!("unreadable producer record: {e}")))?;
    let mut last = [0u64; 4];
    for (slot, field) in last.iter_mut().zip(fields) {
        *slot = field.unwrap_or(0);
    }
    Ok(last)
}

/// What step 1 read.
struct State {
    last: [u64; 4],
    /// `TYPE` of each targeted up stream, by tier slot (`None`: the batch has no item there).
    types: [Option<String>; 4],
}

/// Step 1: watch the record, read it and the types of the target streams.
async fn watch_and_read(
    con: &mut MultiplexedConnection,
    record: &str,
    streams: &[Option<TenantKey>; 4],
) -> Result<Result<State, StoreError>, RedisError> {
    let mut pipe = redis::pipe();
    pipe.cmd("WATCH").arg(record).ignore();
    pipe.cmd("HMGET").arg(record).arg(&TIER_FIELDS[..]);
    for stream in streams.iter().flatten() {
        pipe.cmd("TYPE").arg(stream.as_str());
    }
    let replies: Vec<Value> = pipe.query_async(con).await?;
    let mut replies = replies.into_iter();
    let Some(fields) = replies.next() else {
        return Ok(Err(StoreError::Internal("no HMGET answer".into())));
    };
    let last = match last_seq_from(fields) {
        Ok(last) => last,
        Err(err) => return Ok(Err(err)),
    };
    let mut types: [Option<String>; 4] = Default::default();
    for (slot, stream) in types.iter_mut().zip(streams) {
        if stream.is_some() {
            let kind: String = match replies.next().map(redis::from_redis_value) {
                Some(Ok(kind)) => kind,
                _ => return Ok(Err(StoreError::Internal("unreadable TYPE answer".into()))),
            };
            *slot = Some(kind);
        }
    }
    Ok(Ok(State { last, types }))
}

/// Whether an error says the connection itself is gone, rather than anything about the command.
fn connection_gone(err: &RedisError) -> bool {
    err.is_io_error() || err.is_connection_dropped()
}

async fn wait_replicas(
    con: &mut MultiplexedConnection,
    options: &PushOptions,
) -> Result<u32, Failure> {
    if options.min_replicas_acked == 0 {
        return Ok(0);
    }
    let acked: i64 = redis::cmd("WAIT")
        .arg(options.min_replicas_acked)
        .arg(millis(options.wait_timeout))
        .query_async(con)
        .await
        .map_err(Failure::Redis)?;
    Ok(u32::try_from(acked).unwrap_or(0))
}

/// The end of a clean transaction: `WAIT` if asked, the connection back to the pool, the answer.
async fn finish(
    mut lease: super::pool::Lease,
    options: &PushOptions,
    stored: Vec<bool>,
    last_seq: [u64; 4],
    conflicts: u32,
) -> Result<PushOutcome, Failure> {
    let replicas_acked = wait_replicas(lease.con(), options).await?;
    lease.release();
    Ok(PushOutcome {
        stored,
        last_seq,
        replicas_acked,
        conflicts,
    })
}

/// Stores the new items of a non-empty batch (see the module documentation).
#[allow(clippy::too_many_arguments)] // one call site; the parts are what a push is
pub(super) async fn push(
    route: &PushRoute,
    tenant: &TenantId,
    partition: u16,
    device: &str,
    producer: &str,
    items: &[NewItem],
    options: &PushOptions,
) -> Result<PushOutcome, StoreError> {
    let record = keys::producer(tenant, partition, device, producer).map_err(key_err)?;
    let mut streams: [Option<TenantKey>; 4] = Default::default();
    for tier in Tier::ALL {
        if items.iter().any(|i| i.tier == tier) {
            streams[tier_slot(tier)] =
                Some(keys::up_stream(tenant, partition, tier).map_err(key_err)?);
        }
    }
    // Built once: a conflict repeats the transaction, not the JSON encoding.
    let metadata = items
        .iter()
        .map(|item| item_metadata(item, device, producer))
        .collect::<Result<Vec<_>, _>>()?;
    let batch = Batch {
        record: record.as_str(),
        streams: &streams,
        items,
        metadata: &metadata,
        ttl_ms: millis(options.producer_ttl),
    };
    match route {
        PushRoute::Standalone(pool) => transact(pool, &batch, options)
            .await
            .map_err(Failure::into_store),
        PushRoute::Cluster(cluster) => {
            let slot = keys::slot(record.as_str().as_bytes());
            let deadline = Instant::now() + CLUSTER_RETRY_WINDOW;
            let mut pause = Duration::from_millis(20);
            loop {
                let (node, pool) = cluster.pool_for(slot).map_err(map)?;
                match transact(&pool, &batch, options).await {
                    Err(Failure::Redis(err)) if is_redirect(&err) && Instant::now() < deadline => {
                        tracing::debug!(%err, node, slot, "push redirected; reading the slot map again");
                        if let Err(error) = cluster.refresh().await {
                            tracing::debug!(%error, "could not read the slot map yet");
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(500));
                    }
                    other => return other.map_err(Failure::into_store),
                }
            }
        }
    }
}

/// What one push writes, prepared once for every attempt.
struct Batch<'a> {
    record: &'a str,
    streams: &'a [Option<TenantKey>; 4],
    items: &'a [NewItem],
    metadata: &'a [String],
    ttl_ms: u64,
}

/// Runs the transaction on a connection of `pool` (see the module documentation).
async fn transact(
    pool: &Arc<TxPool>,
    batch: &Batch<'_>,
    options: &PushOptions,
) -> Result<PushOutcome, Failure> {
    let Batch {
        record,
        streams,
        items,
        metadata,
        ttl_ms,
    } = *batch;
    // Any early return below drops the lease, and with it the connection: it may still hold the
    // WATCH or be mid-transaction. Only the clean ends release it to the pool.
    let mut lease = pool.lease().await.map_err(Failure::Redis)?;
    let mut conflicts = 0;
    for _ in 0..MAX_ATTEMPTS {
        let state = match watch_and_read(lease.con(), record, streams).await {
            Ok(state) => state,
            // A connection that waited in the free list may have died meanwhile (a Redis restart,
            // a failover). Nothing was written: try once on a new connection.
            Err(err) if lease.reused() && connection_gone(&err) => {
                lease.reopen().await.map_err(Failure::Redis)?;
                watch_and_read(lease.con(), record, streams)
                    .await
                    .map_err(Failure::Redis)?
            }
            Err(err) => return Err(Failure::Redis(err)),
        }?;

        // Which items are new: above their tier's stored seq, and (defensively, the handler
        // already guarantees it) above the previous new item of the tier.
        let mut last = state.last;
        let stored: Vec<bool> = items
            .iter()
            .map(|item| {
                let slot = &mut last[tier_slot(item.tier)];
                let new = item.seq > *slot;
                if new {
                    *slot = item.seq;
                }
                new
            })
            .collect();

        if !stored.contains(&true) {
            let mut pipe = redis::pipe();
            pipe.cmd("UNWATCH")
                .ignore()
                .cmd("PEXPIRE")
                .arg(record)
                .arg(ttl_ms)
                .ignore();
            pipe.query_async::<()>(lease.con())
                .await
                .map_err(Failure::Redis)?;
            return finish(lease, options, stored, last, conflicts).await;
        }

        for tier in Tier::ALL {
            let slot = tier_slot(tier);
            let moved = last[slot] != state.last[slot];
            let (Some(kind), Some(stream)) = (&state.types[slot], &streams[slot]) else {
                continue;
            };
            if moved && kind != "stream" && kind != "none" {
                tracing::error!(
                    key = stream.as_str(),
                    kind = kind.as_str(),
                    "an up stream key holds another type; push refused, nothing written"
                );
                return Err(Failure::Store(StoreError::Internal(format!(
                    "{} is a {kind}, not a stream",
                    stream.as_str()
                ))));
            }
        }

        let mut pipe = redis::Pipeline::with_capacity(items.len() + 2);
        pipe.atomic();
        for ((item, meta), new) in items.iter().zip(metadata).zip(&stored) {
            if let (true, Some(stream)) = (*new, &streams[tier_slot(item.tier)]) {
                pipe.cmd("XADD")
                    .arg(stream.as_str())
                    .arg("*")
                    .arg("item")
                    .arg(meta.as_str())
                    .arg("payload")
                    .arg(item.payload.as_slice())
                    .ignore();
            }
        }
        pipe.cmd("HSET").arg(record);
        for tier in Tier::ALL {
            let slot = tier_slot(tier);
            if last[slot] != state.last[slot] {
                pipe.arg(TIER_FIELDS[slot]).arg(last[slot]);
            }
        }
        pipe.ignore()
            .cmd("PEXPIRE")
            .arg(record)
            .arg(ttl_ms)
            .ignore();
        // `None`: EXEC answered nil, the record changed since the WATCH.
        let done: Option<()> = pipe.query_async(lease.con()).await.map_err(|err| {
            if err.code() != Some("EXECABORT") && !is_redirect(&err) {
                // An error inside EXEC: the TYPE check makes this a key retyped between the
                // two round trips. The other commands of the transaction did run.
                tracing::error!(%err, record, "a command failed inside a push transaction");
            }
            Failure::Redis(err)
        })?;
        if done.is_none() {
            conflicts += 1;
            tracing::debug!(record, conflicts, "producer changed under a push; retrying");
            continue;
        }
        return finish(lease, options, stored, last, conflicts).await;
    }
    tracing::warn!(
        record,
        attempts = MAX_ATTEMPTS,
        "concurrent pushes of one producer kept conflicting"
    );
    Err(Failure::Store(StoreError::Unavailable(format!(
        "the producer changed under this push {MAX_ATTEMPTS} times; retry"
    ))))
}
