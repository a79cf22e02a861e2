//! Server configuration: the settled values the server runs with, the optional TOML file, and
//! per-tenant policy.
//!
//! Three sources feed one [`ServerConfig`], most specific first: command-line flags, `KRYONIX_*`
//! environment variables (clap reads both, see `cli`), then the TOML file given with `--config`,
//! then the defaults here. Tenant policies live only in the file, because a table of tenants does
//! not fit a flag.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kryonix_protocol::wire::{MAX_PUSH_ITEMS, MAX_VALUE_BYTES};
use kryonix_protocol::{AppVersion, Namespace};
use serde::Deserialize;

/// Why a configuration could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
    /// Per-policy cache instances given with a Cluster or Sentinel, whose nodes hold every
    /// namespace themselves.
    #[error(
        "{flags} apply to a standalone Redis deployment (--redis-url, --sync-redis-url), not to {topology}: {why}"
    )]
    CacheGroupsNeedStandalone {
        flags: String,
        topology: &'static str,
        why: &'static str,
    },
    /// Per-policy cache instances given without any Redis (the embedded development store).
    #[error(
        "{flags} need --redis-url or --sync-redis-url: without a Redis the embedded development store serves every namespace"
    )]
    CacheGroupsWithoutRedis { flags: String },
    /// A per-policy cache URL the Redis client cannot use.
    #[error(transparent)]
    BadCacheUrl(#[from] crate::store::redis::routing::BadGroupUrl),
}

/// What a tenant may do. Tenants not listed in the file get the default policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPolicy {
    /// Namespaces the tenant may use; absent means all of them.
    #[serde(default)]
    pub allowed_namespaces: Option<Vec<Namespace>>,
    /// A read-only tenant may pull and read the cache, but not push or write the cache.
    #[serde(default)]
    pub read_only: bool,
    /// Requests per second for the whole tenant (0: unlimited). Bursts of one second are allowed.
    #[serde(default = "default_tenant_rate")]
    pub rate_per_sec: u32,
    /// Requests per second for one device of the tenant (0: unlimited).
    #[serde(default = "default_device_rate")]
    pub device_rate_per_sec: u32,
}

fn default_tenant_rate() -> u32 {
    1000
}

fn default_device_rate() -> u32 {
    20
}

impl Default for TenantPolicy {
    fn default() -> Self {
        Self {
            allowed_namespaces: None,
            read_only: false,
            rate_per_sec: default_tenant_rate(),
            device_rate_per_sec: default_device_rate(),
        }
    }
}

impl TenantPolicy {
    pub fn allows(&self, namespace: Namespace) -> bool {
        self.allowed_namespaces
            .as_ref()
            .is_none_or(|list| list.contains(&namespace))
    }
}

/// When lower tiers are turned away as the sync store fills up.
#[derive(Debug, Clone, PartialEq)]
pub struct BackpressureConfig {
    /// Fraction of `maxmemory` above which tiers 2, 3 and 4 are refused (index 0 is tier 2).
    /// Tier 1 is never refused by a watermark, only by Redis itself when it is truly full.
    pub watermarks: [f64; 3],
    /// How stale the memory reading may be before a push refreshes it.
    pub check_interval: Duration,
}

impl Default for BackpressureConfig {
    fn default() -> Self {
        Self {
            watermarks: [0.95, 0.85, 0.75],
            check_interval: Duration::from_millis(250),
        }
    }
}

/// Everything the running server needs, settled and validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Redis for the fifteen cache namespaces (and mobile_sync unless `sync_redis_url` is set).
    /// `None` with no sync URL either runs the embedded development store.
    pub redis_url: Option<String>,
    /// A dedicated (noeviction, AOF) Redis for mobile_sync.
    pub sync_redis_url: Option<String>,
    /// An instance of its own for the cache namespaces of each eviction policy, where one is
    /// given; the namespaces of the others stay on `redis_url` (standalone deployments only).
    pub cache_groups: crate::store::redis::CacheGroups,
    /// Seed nodes of a Redis Cluster (`redis://host:port`), instead of the URLs above.
    pub redis_cluster: Vec<String>,
    /// Sentinels (`redis://host:26379`) naming the primary, instead of the URLs above; the
    /// primary is `sentinel_master`, and `redis_url` (if given) supplies its credentials.
    pub sentinels: Vec<String>,
    pub sentinel_master: Option<String>,
    /// Serve HTTPS with this certificate and key (PEM) instead of plain HTTP.
    pub tls: Option<crate::tls::TlsFiles>,
    /// How often the certificate files are checked for a change to reload.
    pub tls_reload_every: Duration,
    /// Credentials and TLS material for every Redis connection (`RedisAccess`: the password
    /// never prints).
    pub redis_access: crate::store::redis::RedisAccess,
    /// Up-stream partitions per tenant; `None`: 16 on a Cluster (a tenant spreads over the
    /// shards), 1 elsewhere.
    pub up_partitions: Option<u16>,
    /// SQLite file of the embedded development store.
    pub embedded_path: PathBuf,
    /// Start even when the sync store may evict: loses the exactly-once guarantee.
    pub allow_evicting_sync_store: bool,
    /// Replicas that must acknowledge a push (Redis `WAIT`) before it is answered; 0 = no wait.
    pub min_replicas_acked: u32,
    pub wait_timeout: Duration,
    /// HS256 secret shared with whatever mints tokens.
    pub jwt_secret: String,
    /// The secret being rotated out: tokens it signed are accepted until `jwt_previous_until`
    /// (Unix seconds; unset: until the setting is removed).
    pub jwt_previous_secret: Option<String>,
    pub jwt_previous_until: Option<u64>,
    /// Clock skew tolerated on `exp`.
    pub token_leeway: Duration,
    pub max_push_items: usize,
    /// Largest request body, after gzip decoding too.
    pub max_body_bytes: usize,
    /// Largest single payload or cached value.
    pub max_value_bytes: usize,
    /// A request taking longer is answered 503 (and graceful shutdown cannot hang on it).
    pub request_timeout: Duration,
    /// How long the server remembers an idle producer's sequences: exactly-once holds for a
    /// producer that pushes or says hello at least this often.
    pub producer_ttl: Duration,
    /// Apps stating an older version (`kryonix-app-version`) are answered `426 upgrade_required`
    /// on every route; requests without the header are served.
    pub min_app_version: Option<AppVersion>,
    /// How long published changes stay in the down streams.
    pub down_retention: Duration,
    pub backpressure: BackpressureConfig,
    pub default_policy: TenantPolicy,
    pub tenants: BTreeMap<String, TenantPolicy>,
    pub log_json: bool,
}

/// How long an idle producer is remembered by default: 30 days. Long enough for a phone left
/// in a drawer over a holiday; the cost is one small hash per device, not per item.
pub const DEFAULT_PRODUCER_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Shortest accepted signing secret: HS256 keys shorter than the hash are weak.
pub const MIN_SECRET_LEN: usize = 32;

impl ServerConfig {
    /// Defaults around a secret (what tests and the `token` command start from).
    pub fn new(jwt_secret: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            redis_url: None,
            sync_redis_url: None,
            cache_groups: crate::store::redis::CacheGroups::default(),
            redis_cluster: Vec::new(),
            sentinels: Vec::new(),
            sentinel_master: None,
            redis_access: crate::store::redis::RedisAccess::default(),
            tls: None,
            tls_reload_every: Duration::from_secs(5),
            up_partitions: None,
            embedded_path: PathBuf::from("kryonix-dev.sqlite3"),
            allow_evicting_sync_store: false,
            min_replicas_acked: 0,
            wait_timeout: Duration::from_millis(500),
            jwt_secret: jwt_secret.into(),
            jwt_previous_secret: None,
            jwt_previous_until: None,
            token_leeway: Duration::from_secs(30),
            max_push_items: MAX_PUSH_ITEMS,
            max_body_bytes: 8 * 1024 * 1024,
            max_value_bytes: MAX_VALUE_BYTES,
            request_timeout: Duration::from_secs(30),
            producer_ttl: DEFAULT_PRODUCER_TTL,
            min_app_version: None,
            down_retention: Namespace::MobileSync.default_ttl(),
            backpressure: BackpressureConfig::default(),
            default_policy: TenantPolicy::default(),
            tenants: BTreeMap::new(),
            log_json: false,
        }
    }

    /// The Redis deployment the settings name; `None` runs the embedded development store.
    pub fn topology(&self) -> Option<crate::store::redis::Topology> {
        use crate::store::redis::Topology;
        if !self.redis_cluster.is_empty() {
            return Some(Topology::Cluster {
                seeds: self.redis_cluster.clone(),
            });
        }
        if let (false, Some(master)) = (self.sentinels.is_empty(), &self.sentinel_master) {
            return Some(Topology::Sentinel {
                sentinels: self.sentinels.clone(),
                master: master.clone(),
                node_url: self.redis_url.clone(),
            });
        }
        let cache_url = self.redis_url.as_ref().or(self.sync_redis_url.as_ref())?;
        Some(Topology::Standalone {
            cache_url: cache_url.clone(),
            sync_url: self.sync_redis_url.clone(),
            groups: self.cache_groups.clone(),
        })
    }

    /// Up-stream partitions per tenant, settled for the topology.
    pub fn partitions(&self) -> u16 {
        self.up_partitions
            .unwrap_or(if self.redis_cluster.is_empty() { 1 } else { 16 })
    }

    /// The policy of one tenant.
    pub fn policy(&self, tenant: &str) -> &TenantPolicy {
        self.tenants.get(tenant).unwrap_or(&self.default_policy)
    }

    /// The token keys these settings describe (with the previous secret while it rotates out).
    pub fn token_keys(&self) -> crate::auth::TokenKeys {
        let keys = crate::auth::TokenKeys::new(self.jwt_secret.as_bytes(), self.token_leeway);
        match &self.jwt_previous_secret {
            Some(previous) => keys.with_previous(previous.as_bytes(), self.jwt_previous_until),
            None => keys,
        }
    }

    /// Checks the settled values; called once before serving.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.jwt_secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError::Invalid(format!(
                "the JWT secret must be at least {MIN_SECRET_LEN} bytes (set KRYONIX_JWT_SECRET)"
            )));
        }
        if let Some(previous) = &self.jwt_previous_secret {
            if previous.len() < MIN_SECRET_LEN {
                return Err(ConfigError::Invalid(format!(
                    "the previous JWT secret must be at least {MIN_SECRET_LEN} bytes too"
                )));
            }
            if previous == &self.jwt_secret {
                return Err(ConfigError::Invalid(
                    "the previous JWT secret is the current one: nothing is being rotated".into(),
                ));
            }
        }
        if self.max_push_items == 0 {
            return Err(ConfigError::Invalid(
                "max_push_items must be at least 1".into(),
            ));
        }
        let [t2, t3, t4] = self.backpressure.watermarks;
        let in_range = |w: f64| w > 0.0 && w <= 1.0;
        if !(in_range(t2) && in_range(t3) && in_range(t4) && t4 <= t3 && t3 <= t2) {
            return Err(ConfigError::Invalid(
                "backpressure watermarks must be in (0, 1] and fall from tier 2 to tier 4".into(),
            ));
        }
        self.validate_topology()?;
        if self.producer_ttl.is_zero() {
            return Err(ConfigError::Invalid(
                "producer_ttl_secs must be positive".into(),
            ));
        }
        Ok(())
    }
}

impl ServerConfig {
    /// Checks that the settings name one Redis deployment, completely (what `check` needs; it
    /// runs without a signing secret).
    pub fn validate_topology(&self) -> Result<(), ConfigError> {
        let sources = [
            self.redis_url.is_some() && self.sentinels.is_empty(),
            !self.redis_cluster.is_empty(),
            !self.sentinels.is_empty(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err(ConfigError::Invalid(
                "name one Redis deployment: --redis-url (and --sync-redis-url), --redis-cluster, or --sentinel with --sentinel-master".into(),
            ));
        }
        if !self.redis_cluster.is_empty() && self.sync_redis_url.is_some() {
            return Err(ConfigError::Invalid(
                "--sync-redis-url does not apply to a Cluster: mobile_sync lives in the cluster's database 0".into(),
            ));
        }
        if self.sentinels.is_empty() != self.sentinel_master.is_none() {
            return Err(ConfigError::Invalid(
                "--sentinel and --sentinel-master go together".into(),
            ));
        }
        self.validate_cache_groups()?;
        if let Some(p) = self.up_partitions
            && (p == 0 || p > crate::keys::MAX_PARTITIONS)
        {
            return Err(ConfigError::Invalid(format!(
                "up_partitions must be 1 to {}",
                crate::keys::MAX_PARTITIONS
            )));
        }
        Ok(())
    }
}

impl ServerConfig {
    /// Per-policy cache instances need a standalone deployment to route around, and URLs the
    /// Redis client can use.
    fn validate_cache_groups(&self) -> Result<(), ConfigError> {
        let flags: Vec<&str> = self
            .cache_groups
            .configured()
            .map(|(g, _)| g.flag())
            .collect();
        if flags.is_empty() {
            return Ok(());
        }
        let flags = flags.join(", ");
        if !self.redis_cluster.is_empty() {
            return Err(ConfigError::CacheGroupsNeedStandalone {
                flags,
                topology: "a Redis Cluster",
                why: "a Cluster has no logical databases, so every namespace lives in database 0 of its nodes; give those nodes the policy their cache traffic needs",
            });
        }
        if !self.sentinels.is_empty() {
            return Err(ConfigError::CacheGroupsNeedStandalone {
                flags,
                topology: "Sentinel",
                why: "every namespace lives on the primary the Sentinels name, which the server follows through failovers; per-policy instances beside it are not supported",
            });
        }
        if self.redis_url.is_none() && self.sync_redis_url.is_none() {
            return Err(ConfigError::CacheGroupsWithoutRedis { flags });
        }
        self.cache_groups.validate()?;
        Ok(())
    }
}

/// The optional TOML file: every field may be left out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub redis_url: Option<String>,
    pub sync_redis_url: Option<String>,
    pub cache_lru_redis_url: Option<String>,
    pub cache_lfu_redis_url: Option<String>,
    pub cache_volatile_lru_redis_url: Option<String>,
    pub cache_volatile_ttl_redis_url: Option<String>,
    pub redis_cluster: Option<Vec<String>>,
    pub sentinels: Option<Vec<String>>,
    pub sentinel_master: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub redis_username: Option<String>,
    pub redis_password_file: Option<PathBuf>,
    pub redis_ca_file: Option<PathBuf>,
    pub redis_client_cert: Option<PathBuf>,
    pub redis_client_key: Option<PathBuf>,
    pub up_partitions: Option<u16>,
    pub embedded_path: Option<PathBuf>,
    pub allow_evicting_sync_store: Option<bool>,
    pub min_replicas_acked: Option<u32>,
    pub wait_timeout_ms: Option<u64>,
    pub jwt_secret: Option<String>,
    pub token_leeway_secs: Option<u64>,
    pub max_push_items: Option<usize>,
    pub max_body_bytes: Option<usize>,
    pub max_value_bytes: Option<usize>,
    pub request_timeout_secs: Option<u64>,
    pub producer_ttl_secs: Option<u64>,
    pub min_app_version: Option<String>,
    pub down_retention_secs: Option<u64>,
    /// Watermarks of tiers 2, 3, 4.
    pub backpressure_watermarks: Option<[f64; 3]>,
    pub memory_check_interval_ms: Option<u64>,
    pub log_json: Option<bool>,
    pub default_policy: Option<TenantPolicy>,
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantPolicy>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let file = FileConfig::parse(
            r#"
            listen = "0.0.0.0:9000"
            redis_url = "redis://127.0.0.1:6379"
            sync_redis_url = "redis://127.0.0.1:6380"
            backpressure_watermarks = [0.9, 0.8, 0.7]
            [default_policy]
            rate_per_sec = 50
            [tenants.acme]
            allowed_namespaces = ["user_cache", "api_cache"]
            read_only = true
            "#,
        )
        .unwrap();
        assert_eq!(file.listen.unwrap().port(), 9000);
        let acme = &file.tenants["acme"];
        assert!(acme.read_only);
        assert!(acme.allows(Namespace::UserCache));
        assert!(!acme.allows(Namespace::Sessions));
        assert_eq!(acme.device_rate_per_sec, 20);
        assert_eq!(file.default_policy.unwrap().rate_per_sec, 50);
    }

    /// The documented example must keep parsing as settings are renamed.
    #[test]
    fn the_example_file_in_deploy_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kryonix-server.toml");
        let file = FileConfig::load(&path).unwrap();
        assert_eq!(file.producer_ttl_secs, Some(30 * 24 * 3600));
    }

    #[test]
    fn unknown_fields_and_namespaces_are_refused() {
        assert!(FileConfig::parse("lisen = \"x\"").is_err());
        assert!(FileConfig::parse("[tenants.a]\nallowed_namespaces = [\"nope\"]").is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        let short = ServerConfig::new("short");
        assert!(
            short
                .validate()
                .unwrap_err()
                .to_string()
                .contains("KRYONIX_JWT_SECRET")
        );
        let mut cfg = ServerConfig::new("x".repeat(32));
        cfg.validate().unwrap();
        cfg.backpressure.watermarks = [0.5, 0.8, 0.9];
        assert!(cfg.validate().is_err());
        let mut cfg = ServerConfig::new("x".repeat(32));
        cfg.producer_ttl = Duration::ZERO;
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("producer_ttl_secs")
        );
    }

    #[test]
    fn cache_groups_need_a_standalone_redis() {
        use crate::store::redis::{CacheGroups, Topology};
        let mut cfg = ServerConfig::new("x".repeat(32));
        cfg.cache_groups = CacheGroups {
            allkeys_lfu: Some("redis://127.0.0.1:7001".into()),
            ..CacheGroups::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::CacheGroupsWithoutRedis { flags }) if flags == "--cache-lfu-redis-url"
        ));

        cfg.redis_url = Some("redis://127.0.0.1:6379".into());
        cfg.validate().unwrap();
        assert!(matches!(
            cfg.topology(),
            Some(Topology::Standalone { groups, .. }) if groups == cfg.cache_groups
        ));

        let mut cluster = cfg.clone();
        cluster.redis_url = None;
        cluster.redis_cluster = vec!["redis://127.0.0.1:7000".into()];
        let err = cluster.validate_topology().unwrap_err();
        assert!(
            matches!(&err, ConfigError::CacheGroupsNeedStandalone { topology, .. } if topology.contains("Cluster")),
            "{err}"
        );
        assert!(err.to_string().contains("--cache-lfu-redis-url"), "{err}");

        let mut sentinel = cfg.clone();
        sentinel.sentinels = vec!["redis://127.0.0.1:26379".into()];
        sentinel.sentinel_master = Some("main".into());
        assert!(matches!(
            sentinel.validate_topology(),
            Err(ConfigError::CacheGroupsNeedStandalone {
                topology: "Sentinel",
                ..
            })
        ));

        cfg.cache_groups.volatile_ttl = Some("not a url".into());
        let err = cfg.validate().unwrap_err();
        assert!(matches!(err, ConfigError::BadCacheUrl(_)), "{err}");
        assert!(
            err.to_string()
                .starts_with("--cache-volatile-ttl-redis-url"),
            "{err}"
        );
    }
}
