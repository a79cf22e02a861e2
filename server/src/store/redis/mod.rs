//! The production store: Redis — standalone, behind Sentinel, or a Cluster (`topology`).
//!
//! On a standalone Redis (and on the primary a Sentinel names) the cache namespaces live in
//! databases 0–15 (`--redis-url`); mobile_sync (DB 11) may live on its own noeviction + AOF
//! instance (`--sync-redis-url`), and the cache namespaces of each eviction policy on an
//! instance of their own that runs that policy (`routing`, keeping their database numbers).
//! Each database gets its own [`redis::aio::ConnectionManager`]: a multiplexed connection that
//! reconnects by itself, so a `SELECT` never races between concurrent requests. On a Cluster everything is in database 0 and a cluster connection routes
//! each command; the keys that one operation touches share a hash tag (see `keys`).
//!
//! The push is a `WATCH`/`MULTI`/`EXEC` transaction of native commands over the producer's
//! sequence record (`push`), on connections of its own (`pool`, and per primary on a Cluster:
//! `cluster`), because `WATCH` is connection state. The other writes that must be
//! all-or-nothing (publish, the rate check) run as Lua scripts, which Redis executes atomically.
//!
//! This module holds the operations; the rest is split by concern: `topology` (the deployments
//! and their connections), `routing` (which instance serves each namespace), `conn` (one
//! connection type over them), `push` (the push transaction), `pool` (its dedicated
//! connections), `cluster` (slots and primaries), `scripts` (the Lua scripts), `entries` (what
//! is stored and how it is read back), `info` (`INFO` parsing) and `errors` (Redis errors as
//! [`StoreError`]s).

pub mod access;
pub mod acl;
mod cluster;
mod conn;
mod entries;
mod errors;
mod info;
mod pool;
mod push;
pub mod routing;
mod scripts;
mod topology;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kryonix_protocol::{Encoding, Namespace, TenantId};
use redis::Script;

use self::conn::Conn;
use self::entries::{RawEntry, change_from_entry, decode_cached, parse_entry_id};
use self::errors::{key_err, map};
use self::push::last_seq_from;
use self::scripts::{PUBLISH_SCRIPT, RATE_SCRIPT};
use self::topology::{Follower, GroupTargets, Links};
use super::{
    Cached, Cursor, NewChange, NewItem, Page, PushOptions, PushOutcome, RateDecision, Rates,
    StoreError, SyncStoreFacts, decision,
};
use crate::keys;

pub use self::access::{RedisAccess, Secret, TlsMaterial};
pub use self::entries::ItemMetadata;
pub use self::errors::classify;
pub use self::info::{facts_from_info, parse_info};
pub use self::pool::PUSH_CONNECTIONS;
pub use self::routing::{CacheGroups, InstancePolicy, PolicyGroup, PolicyReading};
pub use self::topology::{Topology, client_for_db};

/// Settings of a [`RedisStore`] beyond where Redis is.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Up-stream partitions per tenant (see `keys::partition_of`).
    pub partitions: u16,
    /// Accept pushes on a primary that could evict (`--allow-evicting-sync-store`); under
    /// Sentinel this is re-checked at every failover.
    pub allow_evicting: bool,
    /// Credentials and TLS material for every connection.
    pub access: RedisAccess,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            partitions: 1,
            allow_evicting: false,
            access: RedisAccess::default(),
        }
    }
}

/// Where the links come from: fixed, or followed through Sentinel failovers.
#[derive(Clone)]
enum Source {
    Fixed(Arc<Links>),
    Sentinel(Arc<Follower>),
}

/// Redis behind the server.
#[derive(Clone)]
pub struct RedisStore {
    source: Source,
    /// Behind an `Arc`: with the URLs of the policy groups the topology is large, and the store
    /// is cloned with the app state and sits in `Store` beside the much smaller embedded store.
    topology: Arc<Topology>,
    options: RedisOptions,
    publish_script: Arc<Script>,
    rate_script: Arc<Script>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

/// An instance's `maxmemory-policy`: `CONFIG GET`, else `INFO` (which works where an ACL or a
/// managed Redis refuses `CONFIG`; the server's least-privilege user has only `INFO`), else why
/// neither answered. Never an error: `check` reports an unreadable policy as a warning.
async fn read_policy(mut con: Conn) -> PolicyReading {
    let config: Result<std::collections::HashMap<String, String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(&mut con)
        .await;
    let refused = match config {
        Ok(map) => match map.get("maxmemory-policy") {
            Some(policy) => return PolicyReading::Config(policy.clone()),
            None => "CONFIG GET maxmemory-policy answered nothing".to_owned(),
        },
        Err(err) => format!("CONFIG GET: {err}"),
    };
    match redis::cmd("INFO")
        .arg("memory")
        .query_async::<String>(&mut con)
        .await
    {
        Ok(text) => match parse_info(&text).get("maxmemory_policy") {
            Some(policy) => PolicyReading::Info(policy.clone()),
            None => PolicyReading::Unknown(format!("{refused}; INFO reported no maxmemory_policy")),
        },
        Err(err) => PolicyReading::Unknown(format!("{refused}; INFO: {err}")),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl RedisStore {
    /// Connects to a standalone Redis with default options: `sync_url` defaults to
    /// `cache_url`; mobile_sync is always database 11 of its instance, so backends find the
    /// streams in the same place everywhere.
    pub async fn connect(cache_url: &str, sync_url: Option<&str>) -> Result<Self, StoreError> {
        Self::open(
            &Topology::Standalone {
                cache_url: cache_url.to_owned(),
                sync_url: sync_url.map(str::to_owned),
                groups: CacheGroups::default(),
            },
            RedisOptions::default(),
        )
        .await
    }

    /// Connects to the deployment `topology` names.
    pub async fn open(topology: &Topology, options: RedisOptions) -> Result<Self, StoreError> {
        let source = match topology {
            Topology::Standalone {
                cache_url,
                sync_url,
                groups,
            } => {
                let cache = topology::parse(cache_url)?;
                let sync = sync_url.as_deref().map(topology::parse).transpose()?;
                let groups = GroupTargets::parse(groups)?;
                Source::Fixed(Arc::new(
                    topology::standalone(&options.access, &cache, sync.as_ref(), &groups).await?,
                ))
            }
            Topology::Cluster { seeds } => {
                Source::Fixed(Arc::new(topology::cluster(&options.access, seeds).await?))
            }
            Topology::Sentinel {
                sentinels,
                master,
                node_url,
            } => Source::Sentinel(
                Follower::start(
                    options.access.clone(),
                    sentinels.clone(),
                    master.clone(),
                    node_url.clone(),
                    options.allow_evicting,
                )
                .await?,
            ),
        };
        Ok(Self {
            source,
            topology: Arc::new(topology.clone()),
            options: RedisOptions {
                partitions: options.partitions.clamp(1, keys::MAX_PARTITIONS),
                ..options
            },
            publish_script: Arc::new(Script::new(PUBLISH_SCRIPT)),
            rate_script: Arc::new(Script::new(RATE_SCRIPT)),
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Up-stream partitions per tenant.
    pub fn partitions(&self) -> u16 {
        self.options.partitions
    }

    fn links(&self) -> Arc<Links> {
        match &self.source {
            Source::Fixed(links) => Arc::clone(links),
            Source::Sentinel(follower) => follower.links(),
        }
    }

    /// Maps an error, and tells the Sentinel follower to look for a new primary when the store
    /// stopped answering.
    fn fail(&self, err: StoreError) -> StoreError {
        if let (StoreError::Unavailable(_), Source::Sentinel(follower)) = (&err, &self.source) {
            follower.nudge();
        }
        err
    }

    pub async fn push(
        &self,
        tenant: &TenantId,
        device: &str,
        producer: &str,
        items: &[NewItem],
        options: &PushOptions,
    ) -> Result<PushOutcome, StoreError> {
        if let Source::Sentinel(follower) = &self.source
            && let Some(reason) = follower.refusing()
        {
            return Err(StoreError::Unavailable(format!(
                "pushes are refused on the current primary: {reason}"
            )));
        }
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
        let partition = keys::partition_of(device, self.options.partitions);
        let links = self.links();
        push::push(
            &links.push,
            tenant,
            partition,
            device,
            producer,
            items,
            options,
        )
        .await
        .map_err(|e| self.fail(e))
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
        let partition = keys::partition_of(device, self.options.partitions);
        let record = keys::producer(tenant, partition, device, producer).map_err(key_err)?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(record.as_str())
            .arg(&["1", "2", "3", "4"][..])
            .cmd("PEXPIRE")
            .arg(record.as_str())
            .arg(ttl_ms)
            .ignore();
        let mut con = self.links().sync.clone();
        let (fields,): (redis::Value,) = pipe
            .query_async(&mut con)
            .await
            .map_err(|e| self.fail(map(e)))?;
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
        let mut con = self.links().sync.clone();
        let (wide, own): (Vec<RawEntry>, Vec<RawEntry>) = pipe
            .query_async(&mut con)
            .await
            .map_err(|e| self.fail(map(e)))?;

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
        let mut con = self.links().sync.clone();
        let ids: Vec<String> = invocation
            .invoke_async(&mut con)
            .await
            .map_err(|e| self.fail(map(e)))?;
        Ok(ids.into_iter().map(|id| format!("{prefix}/{id}")).collect())
    }

    pub async fn cache_get(
        &self,
        tenant: &TenantId,
        namespace: Namespace,
        keys_in: &[String],
    ) -> Result<Vec<Option<Cached>>, StoreError> {
        let mut con = self.links().cache(namespace)?;
        let full: Vec<String> = keys_in
            .iter()
            .map(|key| {
                keys::cache_entry(tenant, namespace, key)
                    .map(|k| k.as_str().to_owned())
                    .map_err(key_err)
            })
            .collect::<Result<_, _>>()?;
        let replies: Vec<redis::Value> = if matches!(con, Conn::Cluster(_)) {
            // Cache keys carry no hash tag, so they live on different nodes: one small pipeline
            // per key (its GET and PTTL share a slot), all at once.
            let mut tasks = tokio::task::JoinSet::new();
            for (index, key) in full.into_iter().enumerate() {
                let mut con = con.clone();
                tasks.spawn(async move {
                    let mut pipe = redis::pipe();
                    pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
                    let pair: Result<Vec<redis::Value>, _> = pipe.query_async(&mut con).await;
                    (index, pair)
                });
            }
            let mut pairs = vec![Vec::new(); keys_in.len()];
            while let Some(done) = tasks.join_next().await {
                let (index, pair) =
                    done.map_err(|e| StoreError::Internal(format!("cache read task: {e}")))?;
                if let Some(slot) = pairs.get_mut(index) {
                    *slot = pair.map_err(|e| self.fail(map(e)))?;
                }
            }
            pairs.into_iter().flatten().collect()
        } else {
            let mut pipe = redis::pipe();
            for key in &full {
                pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
            }
            pipe.query_async(&mut con)
                .await
                .map_err(|e| self.fail(map(e)))?
        };
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
        let mut con = self.links().cache(namespace)?;
        redis::cmd("SET")
            .arg(full.as_str())
            .arg(stored)
            .arg("PX")
            .arg(ttl_ms)
            .query_async::<()>(&mut con)
            .await
            .map_err(|e| self.fail(map(e)))
    }

    pub async fn cache_delete(
        &self,
        tenant: &TenantId,
        namespace: Namespace,
        key: &str,
    ) -> Result<(), StoreError> {
        let full = keys::cache_entry(tenant, namespace, key).map_err(key_err)?;
        let mut con = self.links().cache(namespace)?;
        redis::cmd("DEL")
            .arg(full.as_str())
            .query_async::<()>(&mut con)
            .await
            .map_err(|e| self.fail(map(e)))
    }

    /// Records that the token `jti` of `tenant` is revoked, until `until` (Unix seconds, the
    /// token's expiry; a revocation outlives nothing it could refuse).
    pub async fn revoke(&self, tenant: &TenantId, jti: &str, until: u64) -> Result<(), StoreError> {
        let key = keys::revoked_token(tenant, jti).map_err(key_err)?;
        let mut con = self.links().cache(Namespace::AuthTokens)?;
        redis::cmd("SET")
            .arg(key.as_str())
            .arg(1)
            .arg("EXAT")
            .arg(until.max(1))
            .query_async::<()>(&mut con)
            .await
            .map_err(|e| self.fail(map(e)))
    }

    /// Whether the token `jti` of `tenant` is revoked: one `EXISTS`. Asked again once when the
    /// connection had dropped (a Redis restart, a failover, an idle timeout): the connection
    /// manager has reconnected by then, and every request depends on this answer.
    pub async fn is_revoked(&self, tenant: &TenantId, jti: &str) -> Result<bool, StoreError> {
        let key = keys::revoked_token(tenant, jti).map_err(key_err)?;
        let mut last = None;
        for _ in 0..2 {
            let mut con = self.links().cache(Namespace::AuthTokens)?;
            match redis::cmd("EXISTS")
                .arg(key.as_str())
                .query_async::<bool>(&mut con)
                .await
            {
                Ok(revoked) => return Ok(revoked),
                Err(e) if e.is_connection_dropped() || e.is_io_error() => last = Some(e),
                Err(e) => return Err(self.fail(map(e))),
            }
        }
        Err(match last {
            Some(e) => self.fail(map(e)),
            None => StoreError::Internal("no answer".into()),
        })
    }

    pub async fn rate_limit(
        &self,
        tenant: &TenantId,
        subject: &str,
        rates: Rates,
    ) -> Result<RateDecision, StoreError> {
        let mut con = self.links().cache(Namespace::RateLimiting)?;
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
            .map_err(|e| self.fail(map(e)))?;
        Ok(decision(tenant_wait, device_wait))
    }

    /// What `check` compares with the namespace table: every instance the deployment names,
    /// what is routed to it, and its `maxmemory-policy` as read over the store's own
    /// connections (the credentials `serve` uses).
    pub async fn instance_policies(&self) -> Vec<InstancePolicy> {
        let links = self.links();
        match self.topology.as_ref() {
            Topology::Standalone {
                cache_url,
                sync_url,
                groups,
            } => {
                let mut out = Vec::new();
                for instance in routing::instances(cache_url, sync_url.as_deref(), groups) {
                    let reading = match instance.namespaces.first() {
                        Some(ns) => match links.cache(*ns) {
                            Ok(con) => read_policy(con).await,
                            Err(err) => PolicyReading::Unknown(err.to_string()),
                        },
                        None => PolicyReading::Unknown("not connected: it serves nothing".into()),
                    };
                    out.push(InstancePolicy {
                        instance,
                        reading,
                        groups_possible: true,
                    });
                }
                out
            }
            Topology::Sentinel { .. } => {
                let address = match &self.source {
                    Source::Sentinel(follower) => follower.primary(),
                    Source::Fixed(_) => links.nodes.first().cloned().unwrap_or_default(),
                };
                vec![InstancePolicy {
                    instance: routing::Instance {
                        roles: vec!["Sentinel primary".into()],
                        url: address.clone(),
                        address,
                        namespaces: Namespace::all().collect(),
                    },
                    reading: read_policy(links.sync.clone()).await,
                    groups_possible: false,
                }]
            }
            Topology::Cluster { .. } => {
                // A cluster connection would send CONFIG GET to one node of its choosing; the
                // primaries' INFO, read for the sync store anyway, says it for each of them.
                let reading = match self.sync_facts().await {
                    Ok(facts) => {
                        let mut policies: Vec<String> = facts
                            .nodes
                            .iter()
                            .filter_map(|n| n.maxmemory_policy.clone())
                            .collect();
                        policies.sort();
                        policies.dedup();
                        match policies.as_slice() {
                            [one] if facts.nodes.iter().all(|n| n.maxmemory_policy.is_some()) => {
                                PolicyReading::Info(one.clone())
                            }
                            [] | [_] => PolicyReading::Unknown(
                                "some primaries did not report maxmemory_policy".into(),
                            ),
                            many => PolicyReading::Unknown(format!(
                                "the primaries disagree: {}",
                                many.join(", ")
                            )),
                        }
                    }
                    Err(err) => PolicyReading::Unknown(err.to_string()),
                };
                vec![InstancePolicy {
                    instance: routing::Instance {
                        roles: vec!["every Cluster primary".into()],
                        url: links.nodes.join(", "),
                        address: String::new(),
                        namespaces: Namespace::all().collect(),
                    },
                    reading,
                    groups_possible: false,
                }]
            }
        }
    }

    pub async fn memory_pressure(&self) -> Result<Option<f64>, StoreError> {
        Ok(self.sync_facts().await?.memory_pressure())
    }

    /// What start-up checks and `/readyz` report: `INFO` of the sync store — of every primary
    /// on a Cluster — and the state of the deployment.
    pub async fn sync_facts(&self) -> Result<SyncStoreFacts, StoreError> {
        let links = self.links();
        let mut facts = match (self.topology.as_ref(), &links.cluster) {
            (Topology::Cluster { seeds }, Some(cluster)) => {
                self.cluster_facts(seeds, cluster).await?
            }
            _ => {
                let mut con = links.sync.clone();
                // INFO works where CONFIG is renamed or forbidden (managed Redis).
                let info: String = redis::cmd("INFO")
                    .query_async(&mut con)
                    .await
                    .map_err(|e| self.fail(map(e)))?;
                let mut facts = facts_from_info(&parse_info(&info));
                facts.address = links.nodes.first().cloned();
                facts
            }
        };
        facts.topology = Some(self.topology.kind());
        if let Source::Sentinel(follower) = &self.source {
            facts.address = Some(follower.primary());
            facts.refusing_pushes = follower.refusing();
        }
        Ok(facts)
    }

    async fn cluster_facts(
        &self,
        seeds: &[String],
        cluster: &cluster::ClusterPush,
    ) -> Result<SyncStoreFacts, StoreError> {
        let template = topology::parse(
            seeds
                .first()
                .ok_or_else(|| StoreError::Internal("no cluster seed".into()))?,
        )?;
        // The map may be stale after a failover; read it again before asking every primary.
        if let Err(error) = cluster.refresh().await {
            tracing::debug!(%error, "CLUSTER SLOTS failed; using the last map");
        }
        let mut nodes = Vec::new();
        for addr in cluster.primaries() {
            nodes.push(topology::node_facts(&self.options.access, &template, &addr).await?);
        }
        let mut con = self.links().sync.clone();
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut con)
            .await
            .map_err(map)?;
        let state = parse_info(&info).get("cluster_state").cloned();
        // The headline is the fullest primary: back-pressure follows the first shard to fill.
        let mut facts = nodes
            .iter()
            .max_by(|a, b| {
                let p = |f: &SyncStoreFacts| match (f.used_memory, f.maxmemory) {
                    (Some(used), Some(max)) if max > 0 => used as f64 / max as f64,
                    _ => 0.0,
                };
                p(a).total_cmp(&p(b))
            })
            .cloned()
            .unwrap_or_default();
        facts.cluster_state = state;
        facts.nodes = nodes;
        Ok(facts)
    }
}
