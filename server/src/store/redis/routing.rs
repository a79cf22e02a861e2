//! Which Redis instance serves each namespace: the cache namespaces grouped by the eviction
//! policy the namespace table gives them.
//!
//! Redis has one `maxmemory-policy` per instance, not per logical database, so one instance
//! cannot honour the table's four cache policies at once. A deployment may therefore give each
//! policy group an instance of its own (`--cache-lru-redis-url`, `--cache-lfu-redis-url`,
//! `--cache-volatile-lru-redis-url`, `--cache-volatile-ttl-redis-url`); a namespace keeps its
//! database number (its id) on whichever instance serves it, and its keys keep the tenant
//! prefix, so moving a namespace between instances changes nothing else. A group left unset
//! falls back to the main cache Redis (`--redis-url`), which is how every deployment ran before
//! the groups existed.
//!
//! A namespace whose table policy is `noeviction` (today only mobile_sync) never joins a group:
//! it lives on the sync store, the one instance start-up refuses to run on unless it is
//! `noeviction`. Routing it anywhere else could put data that must not be evicted on an instance
//! built to evict.
//!
//! This module is pure: it decides, `topology` opens the connections it decides on, and
//! `startup::assess_cache` judges what `check` reads back from each instance. See
//! `docs/adr/0027-cache-instances-per-eviction-policy.md`.

use std::fmt;

use kryonix_protocol::{EvictionPolicy, Namespace};
use redis::IntoConnectionInfo;

use super::access;

/// One of the four eviction policies of the cache namespaces, each of which may have a Redis
/// instance of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyGroup {
    AllkeysLru,
    AllkeysLfu,
    VolatileLru,
    VolatileTtl,
}

impl PolicyGroup {
    /// Every group, in the order flags and output list them.
    pub const ALL: [Self; 4] = [
        Self::AllkeysLru,
        Self::AllkeysLfu,
        Self::VolatileLru,
        Self::VolatileTtl,
    ];

    /// The group of a table policy; `None` for `noeviction`, which no group may hold.
    pub fn of(policy: EvictionPolicy) -> Option<Self> {
        match policy {
            EvictionPolicy::AllkeysLru => Some(Self::AllkeysLru),
            EvictionPolicy::AllkeysLfu => Some(Self::AllkeysLfu),
            EvictionPolicy::VolatileLru => Some(Self::VolatileLru),
            EvictionPolicy::VolatileTtl => Some(Self::VolatileTtl),
            EvictionPolicy::Noeviction => None,
        }
    }

    /// The policy the group's instance should run with.
    pub fn policy(self) -> EvictionPolicy {
        match self {
            Self::AllkeysLru => EvictionPolicy::AllkeysLru,
            Self::AllkeysLfu => EvictionPolicy::AllkeysLfu,
            Self::VolatileLru => EvictionPolicy::VolatileLru,
            Self::VolatileTtl => EvictionPolicy::VolatileTtl,
        }
    }

    /// The command-line flag that names the group's instance.
    pub fn flag(self) -> &'static str {
        match self {
            Self::AllkeysLru => "--cache-lru-redis-url",
            Self::AllkeysLfu => "--cache-lfu-redis-url",
            Self::VolatileLru => "--cache-volatile-lru-redis-url",
            Self::VolatileTtl => "--cache-volatile-ttl-redis-url",
        }
    }

    /// How `check` names the group's connection.
    pub fn connection_name(self) -> &'static str {
        match self {
            Self::AllkeysLru => "cache allkeys-lru group",
            Self::AllkeysLfu => "cache allkeys-lfu group",
            Self::VolatileLru => "cache volatile-lru group",
            Self::VolatileTtl => "cache volatile-ttl group",
        }
    }

    /// The cache namespaces whose table policy is this group's.
    pub fn namespaces(self) -> Vec<Namespace> {
        Namespace::all()
            .filter(|ns| PolicyGroup::of(ns.eviction()) == Some(self))
            .collect()
    }
}

impl fmt::Display for PolicyGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.policy().as_str())
    }
}

/// The instance of each policy group, where one is configured (`None`: the main cache Redis).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheGroups {
    pub allkeys_lru: Option<String>,
    pub allkeys_lfu: Option<String>,
    pub volatile_lru: Option<String>,
    pub volatile_ttl: Option<String>,
}

impl CacheGroups {
    /// The URL of `group`'s instance, if it has one.
    pub fn url(&self, group: PolicyGroup) -> Option<&str> {
        match group {
            PolicyGroup::AllkeysLru => self.allkeys_lru.as_deref(),
            PolicyGroup::AllkeysLfu => self.allkeys_lfu.as_deref(),
            PolicyGroup::VolatileLru => self.volatile_lru.as_deref(),
            PolicyGroup::VolatileTtl => self.volatile_ttl.as_deref(),
        }
    }

    /// The groups with an instance of their own, and its URL.
    pub fn configured(&self) -> impl Iterator<Item = (PolicyGroup, &str)> {
        PolicyGroup::ALL
            .into_iter()
            .filter_map(|g| self.url(g).map(|url| (g, url)))
    }

    pub fn is_empty(&self) -> bool {
        self.configured().next().is_none()
    }

    /// Checks that every configured URL is one the Redis client can use, naming the flag of the
    /// first that is not. The error never holds the URL's password.
    pub fn validate(&self) -> Result<(), BadGroupUrl> {
        for (group, url) in self.configured() {
            if let Err(err) = url.into_connection_info() {
                return Err(BadGroupUrl {
                    flag: group.flag(),
                    url: access::redacted(url),
                    reason: err.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// A group URL the Redis client cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {url} is not a Redis URL (redis://host:port or rediss://host:port): {reason}")]
pub struct BadGroupUrl {
    pub flag: &'static str,
    pub url: String,
    pub reason: String,
}

/// Where one namespace lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Home {
    /// The main cache Redis (`--redis-url`).
    Main,
    /// The sync store (`--sync-redis-url`, else the main Redis): the `noeviction` namespaces.
    Sync,
    /// The instance of a policy group.
    Group(PolicyGroup),
}

/// The instance that serves `namespace` under `groups`.
pub fn home(namespace: Namespace, groups: &CacheGroups) -> Home {
    match PolicyGroup::of(namespace.eviction()) {
        None => Home::Sync,
        Some(group) if groups.url(group).is_some() => Home::Group(group),
        Some(_) => Home::Main,
    }
}

/// One Redis instance of a standalone deployment and every namespace routed to it. URLs naming
/// the same `host:port` are one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// What the settings call it: "sync store", "main cache", "allkeys-lfu group", joined.
    pub roles: Vec<String>,
    /// The URL, password redacted, for output.
    pub url: String,
    /// `host:port`.
    pub address: String,
    /// The namespaces it serves, in id order (mobile_sync included where it lives here).
    pub namespaces: Vec<Namespace>,
}

impl Instance {
    /// "allkeys-lfu group (redis://10.0.0.5:6379)".
    pub fn label(&self) -> String {
        format!("{} ({})", self.roles.join(" + "), self.url)
    }
}

/// The instances of a standalone deployment, each with what it serves: the main cache Redis,
/// the sync store (when it is another instance) and each configured group, merged by address.
/// An instance that serves no namespace (the main cache Redis when every group has its own and
/// mobile_sync is elsewhere) is listed with none, so `check` can say it is unused. URLs must
/// have been validated.
pub fn instances(cache_url: &str, sync_url: Option<&str>, groups: &CacheGroups) -> Vec<Instance> {
    let mut out: Vec<Instance> = Vec::new();
    let mut add = |role: String, url: &str, namespaces: Vec<Namespace>| {
        let address = address_of(url);
        match out.iter_mut().find(|i| i.address == address) {
            Some(existing) => {
                existing.roles.push(role);
                existing.namespaces.extend(namespaces);
                existing.namespaces.sort();
                existing.namespaces.dedup();
            }
            None => out.push(Instance {
                roles: vec![role],
                url: access::redacted(url),
                address,
                namespaces,
            }),
        }
    };
    let served = |wanted: Home| -> Vec<Namespace> {
        Namespace::all()
            .filter(|ns| home(*ns, groups) == wanted)
            .collect()
    };
    match sync_url {
        Some(sync) => {
            add("main cache".into(), cache_url, served(Home::Main));
            add("sync store".into(), sync, served(Home::Sync));
        }
        None => {
            let mut both = served(Home::Main);
            both.extend(served(Home::Sync));
            both.sort();
            add("sync store + main cache".into(), cache_url, both);
        }
    }
    for (group, url) in groups.configured() {
        add(format!("{group} group"), url, served(Home::Group(group)));
    }
    out
}

/// `host:port` of a URL (the URL itself when it does not parse, so it still names something).
fn address_of(url: &str) -> String {
    url.into_connection_info()
        .map(|info| info.addr().to_string())
        .unwrap_or_else(|_| access::redacted(url))
}

/// The cache namespaces: every namespace but the durable ones (`noeviction`).
pub fn cache_namespaces() -> impl Iterator<Item = Namespace> {
    Namespace::all().filter(|ns| PolicyGroup::of(ns.eviction()).is_some())
}

/// How an instance's `maxmemory-policy` was read, or why it could not be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyReading {
    /// Read with `CONFIG GET maxmemory-policy`.
    Config(String),
    /// `CONFIG` was refused (an ACL without it, or renamed on managed Redis); read from `INFO`.
    Info(String),
    /// Neither could be read: why.
    Unknown(String),
}

impl PolicyReading {
    pub fn policy(&self) -> Option<&str> {
        match self {
            Self::Config(p) | Self::Info(p) => Some(p),
            Self::Unknown(_) => None,
        }
    }
}

/// What `check` learnt about one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancePolicy {
    pub instance: Instance,
    pub reading: PolicyReading,
    /// Whether the deployment could give policy groups instances of their own (standalone), so
    /// the advice may name the flags.
    pub groups_possible: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[Namespace]) -> Vec<&'static str> {
        list.iter().map(|ns| ns.name()).collect()
    }

    #[test]
    fn every_cache_namespace_has_a_group_and_only_mobile_sync_stays_on_the_sync_store() {
        let groups = CacheGroups::default();
        for ns in Namespace::all() {
            let expected = if ns == Namespace::MobileSync {
                Home::Sync
            } else {
                Home::Main
            };
            assert_eq!(home(ns, &groups), expected, "{ns}");
        }
        assert_eq!(cache_namespaces().count(), 15);
        assert_eq!(
            names(&PolicyGroup::AllkeysLfu.namespaces()),
            ["api_cache", "search_cache", "ai_models"]
        );
        assert_eq!(
            names(&PolicyGroup::VolatileTtl.namespaces()),
            [
                "auth_tokens",
                "rate_limiting",
                "analytics_temp",
                "distributed_locks"
            ]
        );
        let total: usize = PolicyGroup::ALL.iter().map(|g| g.namespaces().len()).sum();
        assert_eq!(total, 15);
    }

    #[test]
    fn a_configured_group_takes_its_namespaces_and_the_rest_fall_back() {
        let groups = CacheGroups {
            allkeys_lfu: Some("redis://lfu:6379".into()),
            ..CacheGroups::default()
        };
        assert_eq!(
            home(Namespace::ApiCache, &groups),
            Home::Group(PolicyGroup::AllkeysLfu)
        );
        assert_eq!(home(Namespace::UserCache, &groups), Home::Main);
        assert_eq!(home(Namespace::Geolocation, &groups), Home::Main);
        assert_eq!(home(Namespace::MobileSync, &groups), Home::Sync);
    }

    #[test]
    fn instances_merge_by_address_and_list_what_each_serves() {
        let groups = CacheGroups {
            allkeys_lru: Some("redis://127.0.0.1:7001".into()),
            allkeys_lfu: Some("redis://:secret@127.0.0.1:7002/5".into()),
            volatile_lru: Some("redis://127.0.0.1:7003".into()),
            // The same instance as the volatile-lru group.
            volatile_ttl: Some("redis://127.0.0.1:7003".into()),
        };
        let all = instances("redis://127.0.0.1:6379", None, &groups);
        assert_eq!(all.len(), 4, "{all:#?}");
        assert_eq!(all[0].roles, ["sync store + main cache"]);
        assert_eq!(names(&all[0].namespaces), ["mobile_sync"]);
        assert_eq!(all[2].url, "redis://:<redacted>@127.0.0.1:7002/5");
        assert_eq!(
            names(&all[2].namespaces),
            ["api_cache", "search_cache", "ai_models"]
        );
        assert_eq!(all[3].roles, ["volatile-lru group", "volatile-ttl group"]);
        assert_eq!(
            all[3].label(),
            "volatile-lru group + volatile-ttl group (redis://127.0.0.1:7003)"
        );
        assert_eq!(all[3].namespaces.len(), 6);

        // A separate sync store and every group set: the main cache Redis serves nothing.
        let all = instances(
            "redis://127.0.0.1:6379",
            Some("redis://127.0.0.1:6380"),
            &groups,
        );
        assert_eq!(all[0].roles, ["main cache"]);
        assert!(all[0].namespaces.is_empty());
        assert_eq!(names(&all[1].namespaces), ["mobile_sync"]);
    }

    #[test]
    fn a_bad_group_url_names_its_flag_and_hides_the_password() {
        let groups = CacheGroups {
            volatile_ttl: Some("http://user:hunter2@cache:6379".into()),
            ..CacheGroups::default()
        };
        let err = groups.validate().unwrap_err();
        assert_eq!(err.flag, "--cache-volatile-ttl-redis-url");
        let text = err.to_string();
        assert!(
            text.starts_with("--cache-volatile-ttl-redis-url "),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        assert!(CacheGroups::default().validate().is_ok());
    }
}
