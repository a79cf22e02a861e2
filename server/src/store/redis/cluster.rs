//! Push transactions on a Redis Cluster.
//!
//! Every other command goes through the cluster connection, which routes it to the node owning
//! its key's slot and follows redirections. The push cannot: its `WATCH` must sit on a
//! connection of its own (see `pool`), and the cluster connection shares one connection per
//! node among all requests. So the push keeps a map of slots to primaries (`CLUSTER SLOTS`),
//! and one pool of dedicated connections per primary. The producer record and the up streams a
//! push touches share one hash tag, so one node serves the whole transaction, and its `WAIT`
//! runs on the node that took the write.
//!
//! The map goes stale when a primary fails over or slots move. Then the node answers `MOVED`
//! (or `ASK`, `TRYAGAIN` while a slot is being migrated), or the connection fails; nothing was
//! written, the map is read again and the transaction starts over after a short pause.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use redis::cluster_async::ClusterConnection;
use redis::{Client, ConnectionInfo, RedisError, Value};

use super::access::{self, RedisAccess};
use super::pool::{PUSH_CONNECTIONS, TxPool};

/// A contiguous range of slots and the address of the primary serving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SlotRange {
    pub start: u16,
    pub end: u16,
    /// `host:port`.
    pub primary: String,
}

/// Reads the `CLUSTER SLOTS` answer: `[[start, end, [host, port, id, …], replicas…], …]`.
pub(super) fn parse_slots(value: Value) -> Result<Vec<SlotRange>, String> {
    let Value::Array(ranges) = value else {
        return Err("CLUSTER SLOTS did not answer an array".into());
    };
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(parts) = range else {
            return Err("a CLUSTER SLOTS entry is not an array".into());
        };
        let mut parts = parts.into_iter();
        let start: u16 = parts
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or("no start slot")?;
        let end: u16 = parts
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or("no end slot")?;
        let Some(Value::Array(node)) = parts.next() else {
            return Err("a slot range without a primary".into());
        };
        let mut node = node.into_iter();
        let host: String = node
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or("no primary host")?;
        let port: u16 = node
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or("no primary port")?;
        out.push(SlotRange {
            start,
            end,
            primary: format!("{host}:{port}"),
        });
    }
    Ok(out)
}

/// The slot map and a pool of dedicated connections per primary.
pub(super) struct ClusterPush {
    con: ClusterConnection,
    /// The settings of the seed URL (credentials, TLS), applied to every node's connections.
    template: ConnectionInfo,
    access: RedisAccess,
    slots: RwLock<Vec<SlotRange>>,
    pools: Mutex<HashMap<String, Arc<TxPool>>>,
}

impl ClusterPush {
    pub(super) async fn new(
        con: ClusterConnection,
        seed: ConnectionInfo,
        access: RedisAccess,
    ) -> Result<Self, RedisError> {
        let push = Self {
            con,
            template: seed,
            access,
            slots: RwLock::new(Vec::new()),
            pools: Mutex::new(HashMap::new()),
        };
        push.refresh().await?;
        Ok(push)
    }

    /// Reads the slot map again (after a redirection, a failover, a failed connection).
    pub(super) async fn refresh(&self) -> Result<(), RedisError> {
        let mut con = self.con.clone();
        let value: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut con)
            .await?;
        let ranges = parse_slots(value)
            .map_err(|e| RedisError::from(std::io::Error::other(format!("CLUSTER SLOTS: {e}"))))?;
        *self.slots.write().unwrap_or_else(PoisonError::into_inner) = ranges;
        Ok(())
    }

    /// The primaries the map knows, each once.
    pub(super) fn primaries(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|r| r.primary.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The pool of the primary serving `slot`, made on first use.
    pub(super) fn pool_for(&self, slot: u16) -> Result<(String, Arc<TxPool>), RedisError> {
        let primary = self
            .slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|r| (r.start..=r.end).contains(&slot))
            .map(|r| r.primary.clone())
            .ok_or_else(|| {
                RedisError::from(std::io::Error::other(format!(
                    "no primary serves slot {slot} (CLUSTERDOWN?)"
                )))
            })?;
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pool) = pools.get(&primary) {
            return Ok((primary, Arc::clone(pool)));
        }
        let pool = TxPool::new(self.client_for(&primary)?, PUSH_CONNECTIONS);
        pools.insert(primary.clone(), Arc::clone(&pool));
        Ok((primary, pool))
    }

    /// A client for one node, with the seed's credentials and TLS settings.
    pub(super) fn client_for(&self, primary: &str) -> Result<Client, RedisError> {
        let info = access::at(&self.template, primary)
            .map_err(|e| RedisError::from(std::io::Error::other(e)))?;
        self.access.client(info)
    }
}

/// Whether an error says the slot map is stale or the node is in the middle of a change: the
/// transaction wrote nothing and can start over on a fresh map.
pub(super) fn is_redirect(err: &RedisError) -> bool {
    matches!(
        err.code(),
        Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY" | "MASTERDOWN" | "LOADING")
    ) || (err.code() == Some("EXECABORT")
        && ["MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"]
            .iter()
            .any(|code| err.to_string().contains(code)))
        || err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ranges_are_read_with_their_primary() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let answer = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node(7000),
                node(7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node(7001)]),
        ]);
        assert_eq!(
            parse_slots(answer).unwrap(),
            [
                SlotRange {
                    start: 0,
                    end: 5460,
                    primary: "127.0.0.1:7000".into()
                },
                SlotRange {
                    start: 5461,
                    end: 16383,
                    primary: "127.0.0.1:7001".into()
                }
            ]
        );
        assert!(parse_slots(Value::Int(1)).is_err());
    }
}
