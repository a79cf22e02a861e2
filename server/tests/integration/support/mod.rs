//! Test harness: a real Redis per test (or the embedded store in a temp dir), the server's router
//! driven with `oneshot`, or served on port 0 over real TCP.

pub mod cluster;
pub mod redis_server;
pub mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use base64::Engine as _;
use kryonix_protocol::TenantId;
use kryonix_server::auth::Scope;
use kryonix_server::{AppState, ServerConfig, app, startup};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;

pub use cluster::LocalCluster;
pub use redis_server::{RedisOptions, RedisServer};

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Redis,
    Embedded,
    /// A Redis Cluster of three primaries (no replicas: the contract is about the store).
    Cluster,
    /// Redis, the server connecting as its least-privilege ACL user (`acl::server_user`).
    RedisLeastPrivilege,
}

/// A server state over its own store.
#[derive(Debug)]
pub struct TestServer {
    pub state: AppState,
    pub redis: Option<RedisServer>,
    pub cluster: Option<LocalCluster>,
    _dir: Option<TempDir>,
}

/// Test defaults: no rate limits (tests that want them set them).
pub fn test_config() -> ServerConfig {
    let mut config = ServerConfig::new(SECRET);
    config.default_policy.rate_per_sec = 0;
    config.default_policy.device_rate_per_sec = 0;
    config
}

impl TestServer {
    pub async fn start(backend: Backend, configure: impl FnOnce(&mut ServerConfig)) -> Self {
        match backend {
            Backend::Redis => Self::with_redis(RedisOptions::default(), configure).await,
            Backend::Embedded => Self::embedded(configure).await,
            Backend::Cluster => Self::with_cluster(configure).await,
            Backend::RedisLeastPrivilege => Self::least_privilege(configure).await,
        }
    }

    pub async fn with_cluster(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let cluster = LocalCluster::start(3, 0);
        let mut config = test_config();
        config.redis_cluster = cluster.seeds();
        configure(&mut config);
        config.validate().unwrap();
        let (store, warnings) = startup::open_store(&config).await.unwrap();
        Self {
            state: AppState::new(config, store, warnings),
            redis: None,
            cluster: Some(cluster),
            _dir: None,
        }
    }

    pub async fn with_redis(
        options: RedisOptions,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let redis = RedisServer::start(options);
        let url = redis.url();
        let mut server = Self::configured(|c| {
            c.redis_url = Some(url);
            configure(c);
        })
        .await;
        server.redis = Some(redis);
        server
    }

    /// Over a Redis where the server connects as its least-privilege ACL user, applied with the
    /// same code as `kryonix-server acl apply --server-user`.
    pub async fn least_privilege(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        use kryonix_server::store::redis::{RedisAccess, Secret, acl};
        const PASSWORD: &str = "least-privilege-password";
        let redis = RedisServer::start(RedisOptions::default());
        let node = acl::node(&redis.url()).unwrap();
        acl::apply(
            &RedisAccess::default(),
            &[node],
            &[acl::server_user("kryonix", PASSWORD)],
        )
        .await
        .unwrap();
        let url = redis.url();
        let mut server = Self::configured(|c| {
            c.redis_url = Some(url);
            c.redis_access.username = Some("kryonix".into());
            c.redis_access.password = Some(Secret::new(PASSWORD));
            configure(c);
        })
        .await;
        server.redis = Some(redis);
        server
    }

    /// Over whatever store `configure` names (a Redis the test runs itself).
    pub async fn configured(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut config = test_config();
        configure(&mut config);
        config.validate().unwrap();
        let (store, warnings) = startup::open_store(&config).await.unwrap();
        Self {
            state: AppState::new(config, store, warnings),
            redis: None,
            cluster: None,
            _dir: None,
        }
    }

    pub async fn embedded(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.sqlite3");
        let mut server = Self::configured(|c| {
            c.embedded_path = path;
            configure(c);
        })
        .await;
        server._dir = Some(dir);
        server
    }

    pub fn redis(&self) -> &RedisServer {
        self.redis.as_ref().expect("a Redis-backed test server")
    }

    pub fn token(&self, tenant: &str, device: &str) -> String {
        self.mint(tenant, device, Scope::Device, Duration::from_secs(600))
    }

    pub fn service_token(&self, tenant: &str) -> String {
        self.mint(tenant, "backend", Scope::Service, Duration::from_secs(600))
    }

    pub fn mint(&self, tenant: &str, subject: &str, scope: Scope, ttl: Duration) -> String {
        self.state
            .tokens
            .mint(&TenantId::new(tenant).unwrap(), subject, scope, ttl)
            .unwrap()
    }

    /// Sends one request through the whole router (every layer), without TCP.
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = app(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        Reply {
            status,
            headers,
            bytes,
        }
    }

    /// A JSON request with an optional bearer token.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(v) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(v).unwrap())
            }
            None => Body::empty(),
        };
        self.send(builder.body(body).unwrap()).await
    }

    /// A push from [`PRODUCER`].
    pub async fn push(&self, token: &str, items: Vec<Value>) -> Reply {
        self.push_as(token, PRODUCER, items).await
    }

    pub async fn push_as(&self, token: &str, producer: &str, items: Vec<Value>) -> Reply {
        self.call(
            Method::POST,
            "/v1/sync/push",
            Some(token),
            Some(&json!({ "producer": producer, "items": items })),
        )
        .await
    }

    pub async fn hello(&self, token: &str, producer: &str) -> Reply {
        self.call(
            Method::POST,
            "/v1/sync/hello",
            Some(token),
            Some(&json!({ "producer": producer })),
        )
        .await
    }

    /// The `last_seq` of a successful hello.
    pub async fn hello_last_seq(&self, token: &str, producer: &str) -> [u64; 4] {
        let reply = self.hello(token, producer).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&reply.bytes)
        );
        let answer: kryonix_protocol::wire::HelloResponse = reply.json();
        assert_eq!(answer.producer, producer);
        answer.last_seq
    }

    /// Ids of the items stored in a tier's up stream, oldest first, read from the store itself
    /// (Redis: XRANGE with a plain client; embedded: its table).
    pub async fn stored_ids(&self, tenant: &str, tier: u8) -> Vec<String> {
        if let Some(cluster) = &self.cluster {
            // Every partition, merged by entry id (ids are milliseconds-sequence pairs).
            let mut con = cluster.connection().await;
            let t = TenantId::new(tenant).unwrap();
            let tier = kryonix_protocol::Tier::try_from(tier).unwrap();
            let mut all = Vec::new();
            for key in
                kryonix_server::keys::up_streams(&t, self.state.config.partitions(), tier).unwrap()
            {
                let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
                    .arg(key.as_str())
                    .arg("-")
                    .arg("+")
                    .query_async(&mut con)
                    .await
                    .unwrap();
                all.extend(entries);
            }
            let position = |id: &str| {
                let (ms, seq) = id.split_once('-').unwrap();
                (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
            };
            all.sort_by_key(|(id, _)| position(id));
            return all
                .into_iter()
                .map(|(_, fields)| item_id(&fields))
                .collect();
        }
        match &self.redis {
            Some(redis) => {
                let mut con = redis.db(11).await;
                let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
                    .arg(format!(
                        "tenant:{tenant}:mobile_sync:up:{{{tenant}:p0}}:t{tier}"
                    ))
                    .arg("-")
                    .arg("+")
                    .query_async(&mut con)
                    .await
                    .unwrap();
                entries
                    .into_iter()
                    .map(|(_, fields)| {
                        let pos = fields.iter().position(|f| f == b"item").unwrap();
                        let meta: kryonix_server::store::redis::ItemMetadata =
                            serde_json::from_slice(&fields[pos + 1]).unwrap();
                        meta.id
                    })
                    .collect()
            }
            None => match &self.state.store {
                kryonix_server::store::Store::Embedded(store) => store
                    .up_stream_ids(
                        &TenantId::new(tenant).unwrap(),
                        kryonix_protocol::Tier::try_from(tier).unwrap(),
                    )
                    .await
                    .unwrap(),
                kryonix_server::store::Store::Redis(_) => unreachable!(),
            },
        }
    }

    /// A producer's last seqs and when it will be forgotten (ms since the epoch), read from the
    /// store without refreshing it (Redis: HMGET and PEXPIRETIME; embedded: its table); `None`
    /// when the store does not know it.
    pub async fn producer_state(
        &self,
        tenant: &str,
        device: &str,
        producer: &str,
    ) -> Option<([u64; 4], i64)> {
        let key = kryonix_server::keys::producer(
            &TenantId::new(tenant).unwrap(),
            kryonix_server::keys::partition_of(device, self.state.config.partitions()),
            device,
            producer,
        )
        .unwrap();
        let read = redis::pipe()
            .cmd("HMGET")
            .arg(key.as_str())
            .arg(&["1", "2", "3", "4"][..])
            .cmd("PEXPIRETIME")
            .arg(key.as_str())
            .clone();
        let reply: Option<(Vec<Option<u64>>, i64)> = match (&self.cluster, &self.redis) {
            (Some(cluster), _) => Some(
                read.query_async(&mut cluster.connection().await)
                    .await
                    .unwrap(),
            ),
            (None, Some(redis)) => Some(read.query_async(&mut redis.db(11).await).await.unwrap()),
            _ => None,
        };
        match reply {
            Some((fields, expires)) => {
                // -2: no such key.
                (expires != -2).then(|| {
                    let mut last = [0; 4];
                    for (slot, field) in last.iter_mut().zip(fields) {
                        *slot = field.unwrap_or(0);
                    }
                    (last, expires)
                })
            }
            None => match &self.state.store {
                kryonix_server::store::Store::Embedded(store) => store
                    .producer_state(&TenantId::new(tenant).unwrap(), device, producer)
                    .await
                    .unwrap(),
                kryonix_server::store::Store::Redis(_) => unreachable!(),
            },
        }
    }

    /// Serves on 127.0.0.1:0 over real TCP; returns the address, a shutdown trigger and the
    /// server task.
    pub async fn serve_tcp(
        &self,
    ) -> (
        SocketAddr,
        oneshot::Sender<()>,
        JoinHandle<std::io::Result<()>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let state = self.state.clone();
        let task = tokio::spawn(kryonix_server::run(listener, state, async {
            let _ = rx.await;
        }));
        (addr, tx, task)
    }
}

/// Polls `probe` every 20 ms until it returns `Some`, or fails the test after 15 s.
pub async fn poll_until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The item id in an up-stream entry's fields.
fn item_id(fields: &[Vec<u8>]) -> String {
    let pos = fields.iter().position(|f| f == b"item").unwrap();
    let meta: kryonix_server::store::redis::ItemMetadata =
        serde_json::from_slice(&fields[pos + 1]).unwrap();
    meta.id
}

/// A buffered answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub bytes: Bytes,
}

impl Reply {
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|e| {
            panic!(
                "{e}: status {} body {:?}",
                self.status,
                String::from_utf8_lossy(&self.bytes)
            )
        })
    }

    pub fn value(&self) -> Value {
        self.json()
    }

    /// The `error.code` of an error answer.
    pub fn code(&self) -> String {
        let v = self.value();
        v["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error body: {v}"))
            .to_owned()
    }

    /// Asserts status and error code, and that the message is not empty.
    pub fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.bytes)
        );
        let v = self.value();
        assert_eq!(v["error"]["code"], code, "body: {v}");
        assert!(
            !v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        );
    }

    pub fn retry_after(&self) -> Option<u64> {
        self.headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }

    /// The `last_seq` of a push answer.
    pub fn last_seq(&self) -> [u64; 4] {
        let answer: kryonix_protocol::wire::PushResponse = self.json();
        answer.last_seq
    }

    /// Per-item statuses of a push answer.
    pub fn statuses(&self) -> Vec<String> {
        let v = self.value();
        v["results"]
            .as_array()
            .unwrap_or_else(|| panic!("not a push answer: {v}"))
            .iter()
            .map(|r| r["status"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// The producer of [`TestServer::push`].
pub const PRODUCER: &str = "0193a1f0-7c2e-7b61-9d1a-3f4e5a6b7c8d";

/// One pushed item as JSON.
pub fn item(id: &str, seq: u64, tier: u8, namespace: &str, key: &str, payload: &[u8]) -> Value {
    json!({
        "id": id,
        "seq": seq,
        "tier": tier,
        "namespace": namespace,
        "key": key,
        "op": "put",
        "payload": base64::engine::general_purpose::STANDARD.encode(payload),
        "encoding": "identity",
        "created_at_ms": 1_764_000_000_000_i64,
    })
}

/// A batch of `count` new items of one tier with seqs from `first`, and their ids.
pub fn batch(first: u64, count: u64, tier: u8) -> (Vec<String>, Vec<Value>) {
    (first..first + count)
        .map(|seq| {
            let id = new_id();
            let item = item(&id, seq, tier, "user_cache", &format!("k{seq}"), b"v");
            (id, item)
        })
        .unzip()
}

/// Milliseconds since the epoch, as the stores' expiry times count them.
pub fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A unique item id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
