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
//!
//! `check` also judges every instance against the namespace table ([`assess_cache`]): an
//! instance whose `maxmemory-policy` is not the table policy of the cache namespaces routed to
//! it is a warning naming them (they are served, but not evicted as the table says), and one
//! that could evict a `noeviction` namespace is a refusal. `serve` logs where each namespace
//! goes but does not read the cache instances' policies: a cache that evicts differently loses
//! nothing that is not a cache, and `check` runs before `serve` in the systemd unit.

use kryonix_protocol::{EvictionPolicy, Namespace};

use crate::config::ServerConfig;
use crate::store::redis::access::{self, RedisAccess};
use crate::store::redis::routing::{self, PolicyGroup};
use crate::store::redis::{InstancePolicy, PolicyReading, RedisOptions, Topology};
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

/// Judges each instance's `maxmemory-policy` against the table policies of the namespaces
/// routed to it. Pure, like [`assess`].
pub fn assess_cache(instances: &[InstancePolicy]) -> Vec<Finding> {
    instances.iter().flat_map(assess_instance).collect()
}

fn assess_instance(seen: &InstancePolicy) -> Vec<Finding> {
    let instance = &seen.instance;
    let label = instance.label();
    if instance.namespaces.is_empty() {
        return vec![Finding::Warning(format!(
            "{label} serves no namespace (mobile_sync and every cache namespace are on other instances): it is not used"
        ))];
    }
    let policy = match &seen.reading {
        PolicyReading::Unknown(why) => {
            return vec![Finding::Warning(format!(
                "{label}: maxmemory-policy could not be verified ({why}); it serves {}",
                names(&instance.namespaces)
            ))];
        }
        reading => reading.policy().unwrap_or_default(),
    };
    let via = match &seen.reading {
        PolicyReading::Info(_) => " (read from INFO: CONFIG GET was refused)",
        _ => "",
    };
    let (durable, cache): (Vec<Namespace>, Vec<Namespace>) = instance
        .namespaces
        .iter()
        .copied()
        .partition(|ns| ns.eviction() == EvictionPolicy::Noeviction);
    let mut out = Vec::new();
    if !durable.is_empty() && policy != EvictionPolicy::Noeviction.as_str() {
        out.push(Finding::Refusal(format!(
            "{label}: maxmemory-policy {policy}{via} can evict {}, which the table marks noeviction",
            names(&durable)
        )));
    }
    let unhonoured: Vec<Namespace> = cache
        .iter()
        .copied()
        .filter(|ns| ns.eviction().as_str() != policy)
        .collect();
    let shared = cache.len() == routing::cache_namespaces().count();
    if shared {
        let mut text = format!(
            "all {} cache namespaces share one Redis instance, {label}, with maxmemory-policy {policy}{via}",
            cache.len()
        );
        if !unhonoured.is_empty() {
            text.push_str(&format!(
                ": the table's policy is therefore not honoured for {}",
                by_policy(&unhonoured)
            ));
            if seen.groups_possible {
                let flags: Vec<&str> = PolicyGroup::ALL
                    .into_iter()
                    .filter(|g| unhonoured.iter().any(|ns| ns.eviction() == g.policy()))
                    .map(PolicyGroup::flag)
                    .collect();
                text.push_str(&format!(
                    " (give them instances of their own with {})",
                    flags.join(", ")
                ));
            }
        }
        out.push(Finding::Warning(text));
    } else if !unhonoured.is_empty() {
        out.push(Finding::Warning(format!(
            "{label}: maxmemory-policy {policy}{via}, so the table's policy is not honoured for {}",
            by_policy(&unhonoured)
        )));
    } else if out.is_empty() {
        out.push(Finding::Ok(format!(
            "{label}: maxmemory-policy {policy}{via}, as the table asks for {}",
            names(&instance.namespaces)
        )));
    }
    out
}

/// "api_cache, search_cache".
fn names(list: &[Namespace]) -> String {
    list.iter()
        .map(|ns| ns.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// "api_cache, search_cache (allkeys-lfu); auth_tokens (volatile-ttl)", in table order.
fn by_policy(list: &[Namespace]) -> String {
    let mut policies: Vec<EvictionPolicy> = Vec::new();
    for ns in list {
        if !policies.contains(&ns.eviction()) {
            policies.push(ns.eviction());
        }
    }
    policies
        .iter()
        .map(|p| {
            let members: Vec<Namespace> = list
                .iter()
                .copied()
                .filter(|ns| ns.eviction() == *p)
                .collect();
            format!("{} ({p})", names(&members))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Logs which instance serves which namespaces, so an operator reading the log of a standalone
/// deployment sees the policy groups in effect.
fn log_routing(topology: &Topology) {
    if let Topology::Standalone {
        cache_url,
        sync_url,
        groups,
    } = topology
    {
        for instance in routing::instances(cache_url, sync_url.as_deref(), groups) {
            tracing::info!(
                instance = %instance.label(),
                namespaces = %names(&instance.namespaces),
                "redis routing"
            );
        }
    }
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
    log_routing(&topology);
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

    fn seen(roles: &str, namespaces: &[Namespace], reading: PolicyReading) -> InstancePolicy {
        InstancePolicy {
            instance: routing::Instance {
                roles: vec![roles.into()],
                url: "redis://h:1".into(),
                address: "h:1".into(),
                namespaces: namespaces.to_vec(),
            },
            reading,
            groups_possible: true,
        }
    }

    fn config(policy: &str) -> PolicyReading {
        PolicyReading::Config(policy.into())
    }

    #[test]
    fn a_group_on_its_own_policy_is_ok_and_on_another_a_warning_naming_the_namespaces() {
        let lfu = PolicyGroup::AllkeysLfu.namespaces();
        let ok = assess_cache(&[seen("allkeys-lfu group", &lfu, config("allkeys-lfu"))]);
        assert_eq!(
            ok,
            [Finding::Ok(
                "allkeys-lfu group (redis://h:1): maxmemory-policy allkeys-lfu, as the table asks for api_cache, search_cache, ai_models".into()
            )]
        );
        let mut mixed = lfu.clone();
        mixed.extend(PolicyGroup::AllkeysLru.namespaces());
        mixed.sort();
        let warned = assess_cache(&[seen("g", &mixed, config("allkeys-lru"))]);
        assert_eq!(
            warned,
            [Finding::Warning(
                "g (redis://h:1): maxmemory-policy allkeys-lru, so the table's policy is not honoured for api_cache, search_cache, ai_models (allkeys-lfu)".into()
            )]
        );
    }

    #[test]
    fn an_evicting_instance_holding_noeviction_data_is_refused() {
        let found = assess_cache(&[seen(
            "sync store",
            &[Namespace::MobileSync],
            config("volatile-ttl"),
        )]);
        assert!(
            matches!(&found[..], [Finding::Refusal(t)] if t.contains("can evict mobile_sync")),
            "{found:?}"
        );
        let fine = assess_cache(&[seen(
            "sync store",
            &[Namespace::MobileSync],
            PolicyReading::Info("noeviction".into()),
        )]);
        assert!(
            matches!(&fine[..], [Finding::Ok(t)] if t.contains("(read from INFO")),
            "{fine:?}"
        );
    }

    #[test]
    fn one_shared_instance_lists_what_is_not_honoured_and_how_to_fix_it() {
        let everything: Vec<Namespace> = Namespace::all().collect();
        let found = assess_cache(&[seen(
            "sync store + main cache",
            &everything,
            config("noeviction"),
        )]);
        let [Finding::Warning(text)] = &found[..] else {
            panic!("{found:?}");
        };
        assert!(
            text.starts_with("all 15 cache namespaces share one Redis instance"),
            "{text}"
        );
        assert!(
            text.contains("api_cache, search_cache, ai_models (allkeys-lfu)"),
            "{text}"
        );
        assert!(text.contains("--cache-volatile-ttl-redis-url"), "{text}");

        // A Cluster or Sentinel cannot split: no flags to suggest.
        let mut cluster = seen("every Cluster primary", &everything, config("noeviction"));
        cluster.groups_possible = false;
        let found = assess_cache(&[cluster]);
        assert!(
            matches!(&found[..], [Finding::Warning(t)] if !t.contains("--cache")),
            "{found:?}"
        );
    }

    #[test]
    fn an_unread_policy_or_an_unused_instance_is_a_warning() {
        let found = assess_cache(&[
            seen(
                "allkeys-lfu group",
                &PolicyGroup::AllkeysLfu.namespaces(),
                PolicyReading::Unknown("NOPERM".into()),
            ),
            seen("main cache", &[], PolicyReading::Unknown(String::new())),
        ]);
        assert!(
            matches!(&found[..], [Finding::Warning(a), Finding::Warning(b)]
                if a.contains("could not be verified (NOPERM)") && b.contains("not used")),
            "{found:?}"
        );
    }
}
