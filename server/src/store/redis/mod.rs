//! The production store: Redis, one logical database per namespace.
//!
//! The cache namespaces live in databases 0–15 of one Redis (`--redis-url`); mobile_sync (DB 11)
//! may live on its own noeviction + AOF instance (`--sync-redis-url`). Each database gets its own
//! [`ConnectionManager`]: a multiplexed connection that reconnects by itself, so a `SELECT` never
//! races between concurrent requests.
//!
//! The push is a `WATCH`/`MULTI`/`EXEC` transaction of native commands over the producer's
//! sequence record (`push`), on connections of its own (`pool`), because `WATCH` is connection
//! state. The other writes that must be all-or-nothing (publish, the rate check) run as Lua
//! scripts, which Redis executes atomically.
//!
//! This module holds the connections and the operations; the rest is split by concern:
//! `push` (the push transaction), `pool` (its dedicated connections), `scripts` (the Lua scripts),
//! `entries` (what is stored and how it is read back), `info` (`INFO` parsing) and `errors`
//! (Redis errors as [`StoreError`]s).

mod entries;
mod errors;
mod info;
mod pool;
mod push;
mod scripts;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kryonix_protocol::{Encoding, Namespace, TenantId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, RedisError, Script};

use self::entries::{RawEntry, change_from_entry, decode_cached, parse_entry_id};
use self::errors::{key_err, map};
use self::pool::TxPool;
use self::push::last_seq_from;
use self::scripts::{PUBLISH_SCRIPT, RATE_SCRIPT};
use super::{
    Cached, Cursor, NewChange, NewItem, Page, PushOptions, PushOutcome, RateDecision, Rates,
    StoreError, SyncStoreFacts, decision,
};
use crate::keys;

pub use self::entries::ItemMetadata;
pub use self::errors::classify;
pub use self::info::{facts_from_info, parse_info};
pub use self::pool::PUSH_CONNECTIONS;

/// Redis behind the server.
#[derive(Clone)]
pub struct RedisStore {
    sync: ConnectionManager,
    /// Dedicated connections to the sync database for the push transaction.
    push_pool: Arc<TxPool>,
    /// One per namespace, indexed by namespace id.
    cache: Arc<Vec<ConnectionManager>>,
    publish_script: Arc<Script>,
    rate_script: Arc<Script>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Opens a client on one logical database of `url` (whatever database the URL names).
pub fn client_for_db(url: &str, db: i64) -> Result<Client, RedisError> {
    let info = url.into_connection_info()?;
    let settings = info.redis_settings().clone().set_db(db);
    Client::open(info.set_redis_settings(settings))
}

async fn manager(url: &str, db: i64) -> Result<ConnectionManager, StoreError> {
    let client = client_for_db(url, db).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        // Longer than any WAIT the server issues, shorter than a device's patience.
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(2);
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(map)
}

impl RedisStore {
    /// Connects to every database. `sync_url` defaults to `cache_url`; mobile_sync is always
    /// database 11 of its instance, so backends find the streams in the same place everywhere.
    pub async fn connect(cache_url: &str, sync_url: Option<&str>) -> Result<Self, StoreError> {
        let mut cache = Vec::with_capacity(16);
        for ns in Namespace::all() {
            cache.push(manager(cache_url, keys::database(ns)).await?);
        }
        let sync_db = keys::database(Namespace::MobileSync);
        let push_client = client_for_db(sync_url.unwrap_or(cache_url), sync_db)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let sync = match sync_url {
            Some(url) => manager(url, sync_db).await?,
            None => cache
                .get(usize::from(Namespace::MobileSync.id()))
                .cloned()
                .ok_or_else(|| StoreError::Internal("no mobile_sync connection".into()))?,
        };
        Ok(Self {
            sync,
            push_pool: TxPool::new(push_client, PUSH_CONNECTIONS),
            cache: Arc::new(cache),
            publish_script: Arc::new(Script::new(PUBLISH_SCRIPT)),
            rate_script: Arc::new(Script::new(RATE_SCRIPT)),
        })
    }

    fn cache_con(&self, namespace: Namespace) -> Result<ConnectionManager, StoreError> {
        self.cache
            .get(usize::from(namespace.id()))
            .cloned()
            .ok_or_else(|| StoreError::Internal("no connection for namespace".into()))
    }

    pub async fn push(
        &self,
        tenant: &TenantId,
        device: &str,
        producer: &str,
        items: &[NewItem],
        options: &PushOptions,
    ) -> Result<PushOutcome, StoreError> {
        if items.is_empty() {
            // Nothing to store or to wait for: the answer only needs the producer's state.
            let last_seq = self
                .hello(tenant, device, producer, options.producer_ttl)
                .await?;
            return Ok(PushOutcome {
                stored: Vec::new(),
                last_seq,
                replicas_acked: 0,
                conflicts: 0,
            });
        }
        push::push(&self.push_pool, tenant, device, producer, items, options).await
    }

    /// Reads the producer's record and refreshes its expiry, in one pipeline on the shared
    /// connection: no `WATCH`, so no dedicated connection is needed.
    pub async fn hello(
        &self,
        tenant: &TenantId,
        device: &str,
        producer: &str,
        ttl: Duration,
    ) -> Result<[u64; 4], StoreError> {
        let record = keys::producer(tenant, device, producer).map_err(key_err)?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(record.as_str())
            .arg(&["1", "2", "3", "4"][..])
            .cmd("PEXPIRE")
            .arg(record.as_str())
            .arg(ttl_ms)
            .ignore();
        let mut con = self.sync.clone();
        let (fields,): (redis::Value,) = pipe.query_async(&mut con).await.map_err(map)?;
        last_seq_from(fields)
    }

    pub async fn pull(
        &self,
        tenant: &TenantId,
        device: &str,
        cursor: &Cursor,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let start = |pos: &str| -> Result<String, StoreError> {
            if pos.is_empty() {
                Ok("-".to_owned())
            } else if parse_entry_id(pos).is_some() {
                Ok(format!("({pos}"))
            } else {
                Err(StoreError::BadCursor)
            }
        };
        let tenant_key = keys::down_stream(tenant).map_err(key_err)?;
        let device_key = keys::device_down_stream(tenant, device).map_err(key_err)?;
        let fetch = limit + 1;
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE")
            .arg(tenant_key.as_str())
            .arg(start(&cursor.tenant)?)
            .arg("+")
            .arg("COUNT")
            .arg(fetch)
            .cmd("XRANGE")
            .arg(device_key.as_str())
            .arg(start(&cursor.device)?)
            .arg("+")
            .arg("COUNT")
            .arg(fetch);
        let mut con = self.sync.clone();
        let (wide, own): (Vec<RawEntry>, Vec<RawEntry>) =
            pipe.query_async(&mut con).await.map_err(map)?;

        // Merge the two streams by entry id: ids come from one per-tenant sequence (see the
        // publish script), so this is publication order.
        let mut wide = wide.into_iter().peekable();
        let mut own = own.into_iter().peekable();
        let mut next = cursor.clone();
        let mut changes = Vec::new();
        while changes.len() < limit {
            let take_wide = match (wide.peek(), own.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(w), Some(o)) => parse_entry_id(&w.0) <= parse_entry_id(&o.0),
            };
            let (prefix, entry) = if take_wide {
                ("t", wide.next())
            } else {
                ("d", own.next())
            };
            let Some(entry) = entry else { break };
            if take_wide {
                next.tenant.clone_from(&entry.0);
            } else {
                next.device.clone_from(&entry.0);
            }
            changes.push(change_from_entry(prefix, entry)?);
        }
        let has_more = wide.peek().is_some() || own.peek().is_some();
        Ok(Page {
            changes,
            next,
            has_more,
        })
    }

    pub async fn publish(
        &self,
        tenant: &TenantId,
        device: Option<&str>,
        changes: &[NewChange],
        retention: Duration,
    ) -> Result<Vec<String>, StoreError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let (stream, prefix) = match device {
            Some(d) => (keys::device_down_stream(tenant, d).map_err(key_err)?, "d"),
            None => (keys::down_stream(tenant).map_err(key_err)?, "t"),
        };
        let now = now_ms();
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let min_id = format!("{}-0", now.saturating_sub(retention_ms).max(0));
        let mut invocation = self.publish_script.prepare_invoke();
        invocation.arg(min_id);
        for change in changes {
            invocation
                .key(stream.as_str())
                .arg(change.namespace.name())
                .arg(&change.key)
                .arg(change.op.as_str())
                .arg(change.encoding.as_str())
                .arg(change.value.as_slice())
                .arg(now)
                .arg(change.ttl_secs.map(|t| t.to_string()).unwrap_or_default());
        }
        invocation.key(keys::down_last_id(tenant).map_err(key_err)?.as_str());
        let mut con = self.sync.clone();
        let ids: Vec<String> = invocation.invoke_async(&mut con).await.map_err(map)?;
        Ok(ids.into_iter().map(|id| format!("{prefix}/{id}")).collect())
    }

    pub async fn cache_get(
        &self,
        tenant: &TenantId,
        namespace: Namespace,
        keys_in: &[String],
    ) -> Result<Vec<Option<Cached>>, StoreError> {
        let mut pipe = redis::pipe();
        for key in keys_in {
            let full = keys::cache_entry(tenant, namespace, key).map_err(key_err)?;
            pipe.cmd("GET")
                .arg(full.as_str())
                .cmd("PTTL")
                .arg(full.as_str());
        }
        let mut con = self.cache_con(namespace)?;
        let replies: Vec<redis::Value> = pipe.query_async(&mut con).await.map_err(map)?;
        replies
            .chunks(2)
            .map(|pair| match pair {
                [redis::Value::Nil, _] => Ok(None),
                [value, ttl] => {
                    let bytes: Vec<u8> = redis::from_redis_value_ref(value)
                        .map_err(|e| StoreError::Internal(e.to_string()))?;
                    let pttl: i64 = redis::from_redis_value_ref(ttl)
                        .map_err(|e| StoreError::Internal(e.to_string()))?;
                    decode_cached(&bytes, pttl).map(Some)
                }
                _ => Err(StoreError::Internal("odd cache reply".into())),
            })
            .collect()
    }

    pub async fn cache_put(
        &self,
        tenant: &TenantId,
        namespace: Namespace,
        key: &str,
        value: &[u8],
        encoding: Encoding,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let full = keys::cache_entry(tenant, namespace, key).map_err(key_err)?;
        let mut stored = Vec::with_capacity(value.len() + 1);
        stored.push(encoding.tag());
        stored.extend_from_slice(value);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut con = self.cache_con(namespace)?;
        redis::cmd("SET")
            .arg(full.as_str())
            .arg(stored)
            .arg("PX")
            .arg(ttl_ms)
            .query_async::<()>(&mut con)
            .await
            .map_err(map)
    }

    pub async fn cache_delete(
        &self,
        tenant: &TenantId,
        namespace: Namespace,
        key: &str,
    ) -> Result<(), StoreError> {
        let full = keys::cache_entry(tenant, namespace, key).map_err(key_err)?;
        let mut con = self.cache_con(namespace)?;
        redis::cmd("DEL")
            .arg(full.as_str())
            .query_async::<()>(&mut con)
            .await
            .map_err(map)
    }

    pub async fn rate_limit(
        &self,
        tenant: &TenantId,
        subject: &str,
        rates: Rates,
    ) -> Result<RateDecision, StoreError> {
        let mut con = self.cache_con(Namespace::RateLimiting)?;
        let (tenant_wait, device_wait): (i64, i64) = self
            .rate_script
            .key(keys::tenant_rate(tenant).map_err(key_err)?.as_str())
            .key(
                keys::device_rate(tenant, subject)
                    .map_err(key_err)?
                    .as_str(),
            )
            .arg(rates.tenant_per_sec)
            .arg(rates.device_per_sec)
            .invoke_async(&mut con)
            .await
            .map_err(map)?;
        Ok(decision(tenant_wait, device_wait))
    }

    pub async fn memory_pressure(&self) -> Result<Option<f64>, StoreError> {
        let facts = self.sync_facts().await?;
        Ok(match (facts.used_memory, facts.maxmemory) {
            (Some(used), Some(max)) if max > 0 => Some(used as f64 / max as f64),
            _ => None,
        })
    }

    pub async fn sync_facts(&self) -> Result<SyncStoreFacts, StoreError> {
        let mut con = self.sync.clone();
        // INFO works where CONFIG is renamed or forbidden (managed Redis).
        let info: String = redis::cmd("INFO")
            .query_async(&mut con)
            .await
            .map_err(map)?;
        Ok(facts_from_info(&parse_info(&info)))
    }
}
