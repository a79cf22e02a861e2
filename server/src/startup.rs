//! Start-up: open the store the configuration names and decide whether it is safe to serve.
//!
//! The sync store must not evict: an evicted stream entry is an accepted item lost, an evicted
//! producer record lets a resent batch be stored twice. So the server reads `INFO` on the
//! mobile_sync connection (it works where `CONFIG` is renamed, as on managed Redis) and refuses
//! to start unless `maxmemory_policy` is `noeviction` — or the operator said
//! `--allow-evicting-sync-store`, which is logged loudly and repeated by `/readyz`. AOF off is a
//! warning: acknowledged pushes then survive a Redis restart only as far as RDB snapshots go.
//!
//! On a Cluster the rule applies to every primary (each is checked, and named in the findings);
//! under Sentinel it applies at start-up and again at every failover, to the new primary (see
//! `store::redis::topology`).

use crate::config::ServerConfig;
use crate::store::redis::access::{self, RedisAccess};
use crate::store::redis::{RedisOptions, Topology};
use crate::store::{EmbeddedStore, RedisStore, Store, StoreError, SyncStoreFacts};

/// Why the server will not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "the mobile_sync Redis uses maxmemory-policy {policy:?}, which can evict accepted items and producer sequence records. \
         Fix: set `maxmemory-policy noeviction` on that instance (redis.conf or CONFIG SET), or point \
         --sync-redis-url at a dedicated noeviction instance. To start anyway, pass --allow-evicting-sync-store \
         (exactly-once is then not guaranteed)."
    )]
    EvictingSyncStore { policy: String },
    #[error(
        "the mobile_sync Redis did not report maxmemory_policy in INFO; pass --allow-evicting-sync-store to start anyway"
    )]
    UnknownPolicy,
    #[error(
        "{0} runs in cluster mode, which has no database 11: name its nodes with --redis-cluster instead of --redis-url"
    )]
    Cluster(String),
    #[error(
        "the Redis Cluster is not serving every slot (cluster_state {0}); start the server once `CLUSTER INFO` says cluster_state:ok"
    )]
    ClusterDown(String),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
}

/// A finding of the safety check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Fine.
    Ok(String),
    /// Serving, but the operator should know.
    Warning(String),
    /// Refused (unless overridden).
    Refusal(String),
}

/// Judges the sync store. Pure, so `check` and start-up share it and tests cover it.
pub fn assess(facts: &SyncStoreFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(v) = &facts.redis_version {
        out.push(Finding::Ok(format!("redis_version {v}")));
    }
    match facts.maxmemory_policy.as_deref() {
        Some("noeviction") => out.push(Finding::Ok("maxmemory_policy noeviction".into())),
        Some(policy) => out.push(Finding::Refusal(format!(
            "maxmemory_policy {policy}: accepted items could be evicted"
        ))),
        None => out.push(Finding::Refusal(
            "maxmemory_policy not reported by INFO".into(),
        )),
    }
    match facts.aof_enabled {
        Some(true) => out.push(Finding::Ok("appendonly yes".into())),
        Some(false) => out.push(Finding::Warning(
            "appendonly no: a Redis restart loses acknowledged pushes made since the last RDB snapshot".into(),
        )),
        None => out.push(Finding::Warning("AOF state not reported by INFO".into())),
    }
    match facts.maxmemory {
        Some(0) => out.push(Finding::Warning(
            "maxmemory 0 (no limit): tier-aware back-pressure only reacts to OOM errors, and the host may swap first".into(),
        )),
        Some(max) => out.push(Finding::Ok(format!("maxmemory {max} bytes"))),
        None => {}
    }
    out
}

/// Judges every node of the sync store: the headline facts, or each primary of a Cluster with
/// its address in front of each finding.
/// Whether each kind of connection to Redis is encrypted and authenticated, as findings:
/// plaintext beyond the loopback interface is a warning. Names no secret.
pub fn connection_findings(topology: &Topology, access: &RedisAccess) -> Vec<Finding> {
    let mut out = Vec::new();
    for (what, urls) in topology.connections() {
        let tls = !urls.is_empty() && urls.iter().all(|u| access::is_tls(u));
        if tls {
            let anchor = if access.tls.ca.is_some() {
                "--redis-ca-file"
            } else {
                "the system roots"
            };
            let client = if access.tls.client.is_some() {
                ", with a client certificate"
            } else {
                ""
            };
            out.push(Finding::Ok(format!(
                "{what}: TLS (rediss://), verified against {anchor}{client}"
            )));
        } else if urls.iter().all(|u| access::is_loopback(u)) {
            out.push(Finding::Ok(format!(
                "{what}: plaintext on the loopback interface"
            )));
        } else {
            out.push(Finding::Warning(format!(
                "{what}: plaintext (redis://): data and credentials cross the network unencrypted; use rediss://"
            )));
        }
    }
    if access.password.is_some() {
        let user = access.username.as_deref().unwrap_or("default");
        out.push(Finding::Ok(format!(
            "Redis credentials: user {user}, password given"
        )));
    }
    out
}

pub fn assess_all(facts: &SyncStoreFacts) -> Vec<Finding> {
    if facts.nodes.is_empty() {
        return assess(facts);
    }
    let mut out = Vec::new();
    if let Some(state) = &facts.cluster_state {
        out.push(if state == "ok" {
            Finding::Ok("cluster_state ok".into())
        } else {
            Finding::Refusal(format!("cluster_state {state}: some slots are not served"))
        });
    }
    for node in &facts.nodes {
        let name = node.address.clone().unwrap_or_else(|| "?".into());
        out.extend(assess(node).into_iter().map(|finding| match finding {
            Finding::Ok(t) => Finding::Ok(format!("{name}: {t}")),
            Finding::Warning(t) => Finding::Warning(format!("{name}: {t}")),
            Finding::Refusal(t) => Finding::Refusal(format!("{name}: {t}")),
        }));
    }
    out
}

/// Opens the store and applies the safety rules. Returns the store and the warnings to repeat
/// in `/readyz`.
pub async fn open_store(config: &ServerConfig) -> Result<(Store, Vec<String>), StartupError> {
    let Some(topology) = config.topology() else {
        let store = EmbeddedStore::open(&config.embedded_path)?;
        let warning = format!(
            "DEVELOPMENT MODE: no Redis URL given, running on the embedded SQLite store at {}; not for production",
            store.path()
        );
        tracing::warn!("{warning}");
        return Ok((Store::Embedded(store), vec![warning]));
    };
    let options = RedisOptions {
        partitions: config.partitions(),
        allow_evicting: config.allow_evicting_sync_store,
        access: config.redis_access.clone(),
    };
    let partitions = options.partitions;
    for finding in connection_findings(&topology, &config.redis_access) {
        match finding {
            Finding::Warning(text) => tracing::warn!("redis: {text}"),
            Finding::Ok(text) | Finding::Refusal(text) => tracing::info!("redis: {text}"),
        }
    }
    let store = Store::Redis(RedisStore::open(&topology, options).await?);
    let facts = store.sync_facts().await?;
    if facts.cluster_enabled == Some(true) && !matches!(topology, Topology::Cluster { .. }) {
        return Err(StartupError::Cluster(
            facts.address.clone().unwrap_or_else(|| "the Redis".into()),
        ));
    }
    if let Some(state) = facts.cluster_state.as_deref().filter(|s| *s != "ok") {
        return Err(StartupError::ClusterDown(state.to_owned()));
    }
    tracing::info!(
        topology = topology.kind(),
        partitions,
        "sync store connected"
    );
    let mut warnings = Vec::new();
    for finding in assess_all(&facts) {
        match finding {
            Finding::Ok(text) => tracing::info!("sync store: {text}"),
            Finding::Warning(text) => {
                tracing::warn!("sync store: {text}");
                warnings.push(text);
            }
            Finding::Refusal(text) => {
                if !config.allow_evicting_sync_store {
                    let evicting = std::iter::once(&facts)
                        .chain(&facts.nodes)
                        .find_map(|f| f.maxmemory_policy.as_deref().filter(|p| *p != "noeviction"));
                    return Err(match evicting {
                        Some(policy) => StartupError::EvictingSyncStore {
                            policy: policy.to_owned(),
                        },
                        None => StartupError::UnknownPolicy,
                    });
                }
                let text = format!(
                    "OVERRIDDEN by --allow-evicting-sync-store: {text}; exactly-once is NOT guaranteed"
                );
                tracing::error!("sync store: {text}");
                warnings.push(text);
            }
        }
    }
    Ok((store, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(policy: &str, aof: bool) -> SyncStoreFacts {
        SyncStoreFacts {
            kind: "redis",
            maxmemory_policy: Some(policy.into()),
            aof_enabled: Some(aof),
            maxmemory: Some(1 << 20),
            ..SyncStoreFacts::default()
        }
    }

    #[test]
    fn evicting_policies_are_refused_and_aof_off_warns() {
        let good = assess(&facts("noeviction", true));
        assert!(good.iter().all(|f| matches!(f, Finding::Ok(_))), "{good:?}");
        let lru = assess(&facts("allkeys-lru", true));
        assert!(
            lru.iter()
                .any(|f| matches!(f, Finding::Refusal(t) if t.contains("allkeys-lru")))
        );
        let no_aof = assess(&facts("noeviction", false));
        assert!(
            no_aof
                .iter()
                .any(|f| matches!(f, Finding::Warning(t) if t.contains("appendonly no")))
        );
    }

    #[test]
    fn the_refusal_names_the_fix() {
        let msg = StartupError::EvictingSyncStore {
            policy: "allkeys-lru".into(),
        }
        .to_string();
        assert!(msg.contains("maxmemory-policy noeviction"));
        assert!(msg.contains("--allow-evicting-sync-store"));
    }
}
