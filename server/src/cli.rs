//! The command line: `serve` (the default), `token` and `check`, with every setting also readable
//! from a `KRYONIX_*` environment variable and, below both, from the `--config` TOML file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::auth::Scope;
use crate::config::{ConfigError, FileConfig, ServerConfig};
use crate::store::redis::{CacheGroups, RedisAccess, Secret, TlsMaterial};

/// The Kryonix sync server.
#[derive(Debug, Parser)]
#[command(
    name = "kryonix-server",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings of `serve` when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default).
    Serve(ServeArgs),
    /// Mint a device or service token, for development and tests.
    Token(TokenArgs),
    /// Inspect the Redis setup and print findings: the sync store's safety, each connection's
    /// encryption, and each instance's maxmemory-policy against the table policies of the
    /// namespaces routed to it. Exits 1 when `serve` would refuse to start.
    Check(ServeArgs),
    /// Redis ACL users: a tenant's backend workers, or the server's own least-privilege user.
    Acl(Box<AclArgs>),
}

#[derive(Debug, Args)]
pub struct AclArgs {
    #[command(subcommand)]
    pub action: AclAction,
}

#[derive(Debug, Subcommand)]
pub enum AclAction {
    /// Print the ACL SETUSER lines (passwords as SHA-256 hashes), touching nothing.
    Plan(AclTarget),
    /// Run them on every node of the deployment the `serve` settings name (as its admin user).
    Apply(AclTarget),
    /// Verify on every node with ACL DRYRUN that the user may do what it must and nothing else;
    /// exits 1 on any difference.
    Check(AclTarget),
}

#[derive(Debug, Args)]
pub struct AclTarget {
    /// The tenant whose worker user (tenant_<tenant>_worker) this is about.
    #[arg(
        long,
        conflicts_with = "server_user",
        required_unless_present = "server_user"
    )]
    pub tenant: Option<String>,
    /// Or the name of the server's own user (give the server the same name and password).
    #[arg(long)]
    pub server_user: Option<String>,
    /// File whose first line is the user's password (plan and apply).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Settings shared by `serve` and `check`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML config file (flags and environment override it).
    #[arg(long, env = "KRYONIX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "KRYONIX_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Serve HTTPS with this certificate chain (PEM), reloaded in place on SIGHUP or when the
    /// file changes; with --tls-key. Without them the server speaks plain HTTP (behind a
    /// TLS-terminating load balancer).
    #[arg(long, env = "KRYONIX_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "KRYONIX_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Redis for the cache namespaces (DB = namespace id), and for mobile_sync unless
    /// --sync-redis-url is set. With neither, the embedded development store is used.
    #[arg(long, env = "KRYONIX_REDIS_URL")]
    pub redis_url: Option<String>,
    /// A dedicated noeviction + AOF Redis for mobile_sync (DB 11).
    #[arg(long, env = "KRYONIX_SYNC_REDIS_URL")]
    pub sync_redis_url: Option<String>,
    /// An allkeys-lru Redis for the cache namespaces the table gives allkeys-lru (sessions,
    /// user_cache, file_metadata, tenant_config, device_trust, backup_status), each in the
    /// database of its id. Unset: they stay on --redis-url.
    #[arg(long, env = "KRYONIX_CACHE_LRU_REDIS_URL")]
    pub cache_lru_redis_url: Option<String>,
    /// An allkeys-lfu Redis for api_cache, search_cache and ai_models. Unset: --redis-url.
    #[arg(long, env = "KRYONIX_CACHE_LFU_REDIS_URL")]
    pub cache_lfu_redis_url: Option<String>,
    /// A volatile-lru Redis for realtime_data and geolocation. Unset: --redis-url.
    #[arg(long, env = "KRYONIX_CACHE_VOLATILE_LRU_REDIS_URL")]
    pub cache_volatile_lru_redis_url: Option<String>,
    /// A volatile-ttl Redis for auth_tokens (token revocations), rate_limiting, analytics_temp
    /// and distributed_locks. Unset: --redis-url.
    #[arg(long, env = "KRYONIX_CACHE_VOLATILE_TTL_REDIS_URL")]
    pub cache_volatile_ttl_redis_url: Option<String>,
    /// A Redis Cluster instead: some of its nodes, comma-separated
    /// (redis://h1:7000,redis://h2:7001). Every namespace lives in database 0.
    #[arg(long, env = "KRYONIX_REDIS_CLUSTER", value_delimiter = ',')]
    pub redis_cluster: Vec<String>,
    /// Sentinels naming the primary instead, comma-separated (redis://h1:26379,redis://h2:26379);
    /// the server follows failovers by itself. --redis-url then only supplies credentials.
    #[arg(long, env = "KRYONIX_SENTINEL", value_delimiter = ',')]
    pub sentinel: Vec<String>,
    /// The name the Sentinels monitor the primary under.
    #[arg(long, env = "KRYONIX_SENTINEL_MASTER")]
    pub sentinel_master: Option<String>,
    /// Up-stream partitions per tenant (default 16 on a Cluster, 1 otherwise). A device's uploads
    /// go to one partition by a stable hash of its id.
    #[arg(long, env = "KRYONIX_UP_PARTITIONS")]
    pub up_partitions: Option<u16>,
    /// SQLite file of the embedded development store.
    #[arg(long, env = "KRYONIX_EMBEDDED_PATH")]
    pub embedded_path: Option<PathBuf>,
    /// Start even if the mobile_sync Redis may evict keys (loses exactly-once).
    #[arg(long, env = "KRYONIX_ALLOW_EVICTING_SYNC_STORE")]
    pub allow_evicting_sync_store: bool,
    /// Replicas that must acknowledge a push (Redis WAIT) before it is answered.
    #[arg(long, env = "KRYONIX_MIN_REPLICAS_ACKED")]
    pub min_replicas_acked: Option<u32>,
    /// How long WAIT may block, in milliseconds.
    #[arg(long, env = "KRYONIX_WAIT_TIMEOUT_MS")]
    pub wait_timeout_ms: Option<u64>,
    /// ACL user for the Redis data nodes, with the password from KRYONIX_REDIS_PASSWORD or
    /// --redis-password-file (a URL's own user and password win over these).
    #[arg(long, env = "KRYONIX_REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// File whose first line is the Redis password. The password itself can only come from
    /// this file or the KRYONIX_REDIS_PASSWORD environment variable: there is no flag, so it
    /// never shows in a process list. It is never printed.
    #[arg(long, env = "KRYONIX_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,
    /// CA certificates (PEM) that rediss:// servers (and Sentinels) must chain to, instead of
    /// the system's roots: a private CA.
    #[arg(long, env = "KRYONIX_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// Certificate chain (PEM) the server presents to Redis for mutual TLS, with
    /// --redis-client-key.
    #[arg(long, env = "KRYONIX_REDIS_CLIENT_CERT")]
    pub redis_client_cert: Option<PathBuf>,
    /// Private key (PEM) of --redis-client-cert.
    #[arg(long, env = "KRYONIX_REDIS_CLIENT_KEY")]
    pub redis_client_key: Option<PathBuf>,
    /// HS256 signing secret, at least 32 bytes.
    #[arg(long, env = "KRYONIX_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// During a secret rotation: the secret being replaced. Tokens it signed keep working until
    /// --jwt-previous-secret-until; new tokens are signed with KRYONIX_JWT_SECRET.
    #[arg(long, env = "KRYONIX_JWT_PREVIOUS_SECRET", hide_env_values = true)]
    pub jwt_previous_secret: Option<String>,
    /// When the previous secret stops being accepted, Unix seconds (the longest lifetime of the
    /// tokens it signed, from the rotation on).
    #[arg(long, env = "KRYONIX_JWT_PREVIOUS_SECRET_UNTIL")]
    pub jwt_previous_secret_until: Option<u64>,
    /// Most items in one push batch.
    #[arg(long, env = "KRYONIX_MAX_PUSH_ITEMS")]
    pub max_push_items: Option<usize>,
    /// Largest request body in bytes (after gzip decoding too).
    #[arg(long, env = "KRYONIX_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest payload or cached value in bytes.
    #[arg(long, env = "KRYONIX_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Requests running longer are answered 503.
    #[arg(long, env = "KRYONIX_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// How long the server remembers the sequences of a producer that neither pushes nor says
    /// hello, in seconds (the exactly-once window of an idle device).
    #[arg(long, env = "KRYONIX_PRODUCER_TTL_SECS")]
    pub producer_ttl_secs: Option<u64>,
    /// Oldest app version served, e.g. 4.2.0: an agent stating an older one (header
    /// kryonix-app-version) is answered 426 upgrade_required and stops syncing, keeping its
    /// items, until the app is updated. Requests without the header are served.
    #[arg(long, env = "KRYONIX_MIN_APP_VERSION")]
    pub min_app_version: Option<String>,
    /// How often (at most) the sync store's memory is read for back-pressure, in milliseconds.
    #[arg(long, env = "KRYONIX_MEMORY_CHECK_INTERVAL_MS")]
    pub memory_check_interval_ms: Option<u64>,
    /// Requests per second of a tenant without its own policy (0: unlimited).
    #[arg(long, env = "KRYONIX_DEFAULT_RATE_PER_SEC")]
    pub default_rate_per_sec: Option<u32>,
    /// Requests per second of one device of such a tenant (0: unlimited).
    #[arg(long, env = "KRYONIX_DEFAULT_DEVICE_RATE_PER_SEC")]
    pub default_device_rate_per_sec: Option<u32>,
    /// Log as JSON lines.
    #[arg(long, env = "KRYONIX_LOG_JSON")]
    pub log_json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScopeArg {
    Device,
    Service,
}

impl From<ScopeArg> for Scope {
    fn from(s: ScopeArg) -> Self {
        match s {
            ScopeArg::Device => Scope::Device,
            ScopeArg::Service => Scope::Service,
        }
    }
}

/// `token` mints; `token revoke` revokes.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub action: Option<TokenAction>,
    #[arg(long, required = true)]
    pub tenant: Option<String>,
    /// Device id (device scope) or service name (service scope).
    #[arg(long, required = true)]
    pub subject: Option<String>,
    #[arg(long, value_enum, default_value = "device")]
    pub scope: ScopeArg,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 86_400)]
    pub ttl_secs: u64,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Revoke a token before it expires: every request with it answers 401 from then on. Reaches
    /// the store the `serve` settings name (the same flags and KRYONIX_* variables).
    Revoke(Box<RevokeArgs>),
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The token itself (its tenant, id and expiry are read from it; it may have expired).
    #[arg(long, conflicts_with_all = ["jti", "tenant", "expires_at"], required_unless_present = "jti")]
    pub token: Option<String>,
    /// Or the token's id (jti), with --tenant.
    #[arg(long, requires = "tenant")]
    pub jti: Option<String>,
    #[arg(long)]
    pub tenant: Option<String>,
    /// The token's expiry, Unix seconds: how long the revocation is kept (default 30 days).
    #[arg(long)]
    pub expires_at: Option<u64>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl ServeArgs {
    /// Credentials and TLS material for Redis, read from the files the settings name (and the
    /// password from `KRYONIX_REDIS_PASSWORD`). Errors name the file, never its contents.
    fn redis_access(&self, file: &FileConfig) -> Result<RedisAccess, ConfigError> {
        let invalid = ConfigError::Invalid;
        let read = |what: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| invalid(format!("cannot read the {what} {}: {e}", path.display())))
        };
        let pem = |what: &str, path: &Path, marker: &str| {
            let bytes = read(what, path)?;
            if String::from_utf8_lossy(&bytes).contains(marker) {
                Ok(bytes)
            } else {
                Err(invalid(format!(
                    "the {what} {} holds no PEM {marker}",
                    path.display()
                )))
            }
        };
        let env_password = std::env::var("KRYONIX_REDIS_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty());
        let password_file = self
            .redis_password_file
            .clone()
            .or_else(|| file.redis_password_file.clone());
        let password = match (env_password, password_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "give the Redis password once: KRYONIX_REDIS_PASSWORD or --redis-password-file"
                        .into(),
                ));
            }
            (Some(password), None) => Some(Secret::new(password)),
            (None, Some(path)) => {
                let bytes = read("Redis password file", &path)?;
                let text = String::from_utf8(bytes).map_err(|_| {
                    invalid(format!(
                        "the Redis password file {} is not UTF-8",
                        path.display()
                    ))
                })?;
                let first = text.lines().next().unwrap_or_default();
                if first.is_empty() {
                    return Err(invalid(format!(
                        "the Redis password file {} is empty",
                        path.display()
                    )));
                }
                Some(Secret::new(first))
            }
            (None, None) => None,
        };
        let ca = match self
            .redis_ca_file
            .clone()
            .or_else(|| file.redis_ca_file.clone())
        {
            Some(path) => Some(pem("Redis CA file", &path, "CERTIFICATE")?),
            None => None,
        };
        let cert = self
            .redis_client_cert
            .clone()
            .or_else(|| file.redis_client_cert.clone());
        let key = self
            .redis_client_key
            .clone()
            .or_else(|| file.redis_client_key.clone());
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some((
                pem("Redis client certificate", &cert, "CERTIFICATE")?,
                pem("Redis client key", &key, "PRIVATE KEY")?,
            )),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "--redis-client-cert and --redis-client-key go together".into(),
                ));
            }
        };
        Ok(RedisAccess {
            username: self
                .redis_username
                .clone()
                .or_else(|| file.redis_username.clone()),
            password,
            tls: TlsMaterial { ca, client },
        })
    }

    /// Flags and environment over the file over the defaults.
    pub fn settle(&self) -> Result<ServerConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let access = self.redis_access(&file)?;
        let secret = self
            .jwt_secret
            .clone()
            .or(file.jwt_secret)
            .unwrap_or_default();
        let mut c = ServerConfig::new(secret);
        c.redis_access = access;
        c.tls = match (
            self.tls_cert.clone().or_else(|| file.tls_cert.clone()),
            self.tls_key.clone().or_else(|| file.tls_key.clone()),
        ) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "--tls-cert and --tls-key go together".into(),
                ));
            }
        };
        c.jwt_previous_secret = self.jwt_previous_secret.clone();
        c.jwt_previous_until = self.jwt_previous_secret_until;
        c.listen = self.listen.or(file.listen).unwrap_or(c.listen);
        c.redis_url = self.redis_url.clone().or(file.redis_url);
        c.sync_redis_url = self.sync_redis_url.clone().or(file.sync_redis_url);
        c.cache_groups = CacheGroups {
            allkeys_lru: self
                .cache_lru_redis_url
                .clone()
                .or(file.cache_lru_redis_url),
            allkeys_lfu: self
                .cache_lfu_redis_url
                .clone()
                .or(file.cache_lfu_redis_url),
            volatile_lru: self
                .cache_volatile_lru_redis_url
                .clone()
                .or(file.cache_volatile_lru_redis_url),
            volatile_ttl: self
                .cache_volatile_ttl_redis_url
                .clone()
                .or(file.cache_volatile_ttl_redis_url),
        };
        c.redis_cluster = if self.redis_cluster.is_empty() {
            file.redis_cluster.unwrap_or_default()
        } else {
            self.redis_cluster.clone()
        };
        c.sentinels = if self.sentinel.is_empty() {
            file.sentinels.unwrap_or_default()
        } else {
            self.sentinel.clone()
        };
        c.sentinel_master = self.sentinel_master.clone().or(file.sentinel_master);
        c.up_partitions = self.up_partitions.or(file.up_partitions);
        c.embedded_path = self
            .embedded_path
            .clone()
            .or(file.embedded_path)
            .unwrap_or(c.embedded_path);
        c.allow_evicting_sync_store =
            self.allow_evicting_sync_store || file.allow_evicting_sync_store.unwrap_or(false);
        c.min_replicas_acked = self
            .min_replicas_acked
            .or(file.min_replicas_acked)
            .unwrap_or(0);
        if let Some(ms) = self.wait_timeout_ms.or(file.wait_timeout_ms) {
            c.wait_timeout = Duration::from_millis(ms);
        }
        if let Some(secs) = file.token_leeway_secs {
            c.token_leeway = Duration::from_secs(secs);
        }
        c.max_push_items = self
            .max_push_items
            .or(file.max_push_items)
            .unwrap_or(c.max_push_items);
        c.max_body_bytes = self
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(c.max_body_bytes);
        c.max_value_bytes = self
            .max_value_bytes
            .or(file.max_value_bytes)
            .unwrap_or(c.max_value_bytes);
        if let Some(secs) = self.request_timeout_secs.or(file.request_timeout_secs) {
            c.request_timeout = Duration::from_secs(secs);
        }
        if let Some(secs) = self.producer_ttl_secs.or(file.producer_ttl_secs) {
            c.producer_ttl = Duration::from_secs(secs);
        }
        if let Some(text) = self.min_app_version.clone().or(file.min_app_version) {
            let version = text
                .parse()
                .map_err(|e: kryonix_protocol::InvalidAppVersion| {
                    ConfigError::Invalid(format!("min_app_version: {e}"))
                })?;
            c.min_app_version = Some(version);
        }
        if let Some(secs) = file.down_retention_secs {
            c.down_retention = Duration::from_secs(secs);
        }
        if let Some(w) = file.backpressure_watermarks {
            c.backpressure.watermarks = w;
        }
        if let Some(ms) = self
            .memory_check_interval_ms
            .or(file.memory_check_interval_ms)
        {
            c.backpressure.check_interval = Duration::from_millis(ms);
        }
        c.log_json = self.log_json || file.log_json.unwrap_or(false);
        if let Some(policy) = file.default_policy {
            c.default_policy = policy;
        }
        if let Some(rate) = self.default_rate_per_sec {
            c.default_policy.rate_per_sec = rate;
        }
        if let Some(rate) = self.default_device_rate_per_sec {
            c.default_policy.device_rate_per_sec = rate;
        }
        c.tenants = file.tenants;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn flags_override_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "redis_url = \"redis://file:6379\"\nmax_push_items = 10\nproducer_ttl_secs = 60\njwt_secret = \"{}\"\n[tenants.acme]\nread_only = true",
            "s".repeat(32)
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "kryonix-server",
            "serve",
            "--config",
            file.path().to_str().unwrap(),
            "--max-push-items",
            "50",
        ])
        .unwrap();
        let Some(Command::Serve(args)) = cli.command else {
            panic!("expected serve");
        };
        let c = args.settle().unwrap();
        assert_eq!(c.redis_url.as_deref(), Some("redis://file:6379"));
        assert_eq!(c.max_push_items, 50);
        assert_eq!(c.producer_ttl, Duration::from_secs(60));
        assert!(c.policy("acme").read_only);
        assert!(!c.policy("other").read_only);
        c.validate().unwrap();
    }

    #[test]
    fn the_minimum_app_version_is_parsed_or_refused() {
        let settle = |args: &[&str]| {
            let mut all = vec!["kryonix-server", "serve"];
            all.extend_from_slice(args);
            let cli = Cli::try_parse_from(all).unwrap();
            let Some(Command::Serve(args)) = cli.command else {
                panic!("expected serve");
            };
            args.settle()
        };
        let c = settle(&["--min-app-version", "4.2"]).unwrap();
        assert_eq!(c.min_app_version.unwrap().as_str(), "4.2");
        assert!(settle(&[]).unwrap().min_app_version.is_none());
        let err = settle(&["--min-app-version", "four"]).unwrap_err();
        assert!(err.to_string().contains("min_app_version"), "{err}");
    }

    #[test]
    fn no_subcommand_means_serve() {
        let cli = Cli::try_parse_from(["kryonix-server", "--listen", "127.0.0.1:1"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen.unwrap().port(), 1);
        let token = Cli::try_parse_from([
            "kryonix-server",
            "token",
            "--tenant",
            "acme",
            "--subject",
            "svc",
            "--scope",
            "service",
        ])
        .unwrap();
        assert!(matches!(token.command, Some(Command::Token(_))));
    }

    #[test]
    fn cache_group_urls_come_from_flags_or_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "redis_url = \"redis://main:6379\"\ncache_lfu_redis_url = \"redis://file-lfu:6379\"\ncache_volatile_ttl_redis_url = \"redis://ttl:6379\""
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "kryonix-server",
            "check",
            "--config",
            file.path().to_str().unwrap(),
            "--cache-lfu-redis-url",
            "redis://flag-lfu:6379",
            "--cache-volatile-lru-redis-url",
            "redis://vlru:6379",
        ])
        .unwrap();
        let Some(Command::Check(args)) = cli.command else {
            panic!("expected check");
        };
        let c = args.settle().unwrap();
        assert_eq!(
            c.cache_groups,
            CacheGroups {
                allkeys_lru: None,
                allkeys_lfu: Some("redis://flag-lfu:6379".into()),
                volatile_lru: Some("redis://vlru:6379".into()),
                volatile_ttl: Some("redis://ttl:6379".into()),
            }
        );
    }
}
