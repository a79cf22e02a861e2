//! The real `kryonix-server`, in-process, on `127.0.0.1:0`.
//!
//! Each incarnation runs on its own OS thread with its own tokio runtime. That is what makes a
//! *kill* possible inside one test process: [`TestServer::kill`] drops the runtime, which drops
//! the listener, every open connection and every request half-way through its handler at once —
//! as close to `kill -9` of the server as a thread gets. [`TestServer::restart`] binds the same
//! port again (with `SO_REUSEADDR`), so agents and the proxy keep their URL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use kryonix_protocol::TenantId;
use kryonix_protocol::wire::{PublishChange, PublishRequest, PublishResponse};
use kryonix_server::auth::{Scope, TokenKeys};
use kryonix_server::{AppState, ServerConfig, startup};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;

use crate::{HarnessError, Result};

/// The signing secret of every test server.
pub const SECRET: &str = "e2e-harness-secret-0123456789abcdef-xyz";

/// Which store the server runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// A Redis URL (normally a [`crate::RedisServer`] of the test).
    Redis(String),
    /// The embedded SQLite store, in a temp dir the server keeps across restarts.
    Embedded,
    /// Whatever the configuration names (a Cluster's nodes, Sentinels).
    Configured,
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub store: StoreChoice,
    /// Test defaults from [`ServerOptions::default_config`]; change what the scenario needs.
    pub config: ServerConfig,
}

impl ServerOptions {
    /// Test defaults: the harness secret, no rate limits, short request timeout.
    pub fn default_config() -> ServerConfig {
        let mut config = ServerConfig::new(SECRET);
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.default_policy.rate_per_sec = 0;
        config.default_policy.device_rate_per_sec = 0;
        config.request_timeout = Duration::from_secs(10);
        config
    }

    pub fn redis(url: impl Into<String>) -> Self {
        Self {
            store: StoreChoice::Redis(url.into()),
            config: Self::default_config(),
        }
    }

    pub fn embedded() -> Self {
        Self {
            store: StoreChoice::Embedded,
            config: Self::default_config(),
        }
    }

    /// A Redis Cluster, given some of its nodes.
    pub fn cluster(seeds: Vec<String>) -> Self {
        let mut config = Self::default_config();
        config.redis_cluster = seeds;
        Self {
            store: StoreChoice::Configured,
            config,
        }
    }

    /// The primary a set of Sentinels names.
    pub fn sentinel(sentinels: Vec<String>, master: &str) -> Self {
        let mut config = Self::default_config();
        config.sentinels = sentinels;
        config.sentinel_master = Some(master.to_owned());
        Self {
            store: StoreChoice::Configured,
            config,
        }
    }
}

struct Incarnation {
    kill: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Incarnation {
    async fn stop(mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// A running (or killed) server. Dropping it kills it.
pub struct TestServer {
    config: ServerConfig,
    addr: SocketAddr,
    tokens: TokenKeys,
    running: Option<Incarnation>,
    http: reqwest::Client,
    _dir: TempDir,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Starts one incarnation on its own thread; returns once it listens.
async fn launch(config: ServerConfig) -> Result<(SocketAddr, Incarnation)> {
    let (ready_tx, ready_rx) = oneshot::channel::<Result<SocketAddr, String>>();
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("kryonix-server".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let opened = startup::open_store(&config).await;
                let (store, warnings) = match opened {
                    Ok(opened) => opened,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("store: {e}")));
                        return;
                    }
                };
                let listener = match bind(config.listen) {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("bind {}: {e}", config.listen)));
                        return;
                    }
                };
                let addr = match listener.local_addr() {
                    Ok(addr) => addr,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("local_addr: {e}")));
                        return;
                    }
                };
                let state = AppState::new(config, store, warnings);
                let _ = ready_tx.send(Ok(addr));
                let serve = kryonix_server::run(listener, state, std::future::pending());
                tokio::select! {
                    result = serve => {
                        if let Err(error) = result {
                            tracing::error!(%error, "test server stopped");
                        }
                    }
                    _ = kill_rx => {}
                }
            });
            // Dropping the runtime here drops every connection task: the kill.
            drop(runtime);
        })?;
    let addr = ready_rx
        .await
        .map_err(|_| HarnessError::Server("the server thread died".into()))?
        .map_err(HarnessError::Server)?;
    Ok((
        addr,
        Incarnation {
            kill: Some(kill_tx),
            thread: Some(thread),
        },
    ))
}

impl TestServer {
    /// Starts the server and returns once it accepts connections.
    pub async fn start(options: ServerOptions) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = options.config;
        match options.store {
            StoreChoice::Redis(url) => config.redis_url = Some(url),
            StoreChoice::Embedded => {
                config.redis_url = None;
                config.sync_redis_url = None;
                config.embedded_path = dir.path().join("embedded.sqlite3");
            }
            StoreChoice::Configured => {}
        }
        config
            .validate()
            .map_err(|e| HarnessError::Server(e.to_string()))?;
        let tokens = config.token_keys();
        let (addr, running) = launch(config.clone()).await?;
        config.listen = addr;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| HarnessError::Http(e.to_string()))?;
        Ok(Self {
            config,
            addr,
            tokens,
            running: Some(running),
            http,
            _dir: dir,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:{port}`, or `https://…` when the server has a certificate.
    pub fn url(&self) -> String {
        let scheme = if self.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Drops the server's runtime: the listener and every connection close at once, requests
    /// half-way through are abandoned wherever they are.
    pub async fn kill(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    /// Kills the server if it runs and starts it again on the same port and store.
    pub async fn restart(&mut self) -> Result<()> {
        let config = self.config.clone();
        self.restart_with(config).await
    }

    /// Like [`restart`](Self::restart) with another configuration (the listen address and
    /// store are kept).
    pub async fn restart_with(&mut self, mut config: ServerConfig) -> Result<()> {
        self.kill().await;
        config.listen = self.addr;
        config.redis_url.clone_from(&self.config.redis_url);
        config
            .sync_redis_url
            .clone_from(&self.config.sync_redis_url);
        config.embedded_path.clone_from(&self.config.embedded_path);
        self.tokens = config.token_keys();
        self.config = config.clone();
        // The old listener is closed once its thread ended; a retry covers a slow close.
        let mut last = None;
        for _ in 0..50 {
            match launch(config.clone()).await {
                Ok((_, running)) => {
                    self.running = Some(running);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(last.unwrap_or_else(|| HarnessError::Server("restart failed".into())))
    }

    /// A device token for `device` of `tenant`, valid for an hour.
    pub fn device_token(&self, tenant: &str, device: &str) -> Result<String> {
        self.mint(tenant, device, Scope::Device)
    }

    /// A backend (service) token of `tenant`, valid for an hour.
    pub fn service_token(&self, tenant: &str) -> Result<String> {
        self.mint(tenant, "backend", Scope::Service)
    }

    fn mint(&self, tenant: &str, subject: &str, scope: Scope) -> Result<String> {
        let tenant = TenantId::new(tenant).map_err(|e| HarnessError::Server(e.to_string()))?;
        self.tokens
            .mint(&tenant, subject, scope, Duration::from_secs(3600))
            .map_err(|e| HarnessError::Server(e.to_string()))
    }

    /// Publishes changes as the tenant's backend would (`POST /v1/publish`, service token), to
    /// every device of the tenant or to one.
    pub async fn publish(
        &self,
        tenant: &str,
        device: Option<&str>,
        changes: Vec<PublishChange>,
    ) -> Result<PublishResponse> {
        let token = self.service_token(tenant)?;
        let response = self
            .http
            .post(format!("{}/v1/publish", self.url()))
            .bearer_auth(token)
            .json(&PublishRequest {
                device_id: device.map(str::to_owned),
                changes,
            })
            .send()
            .await
            .map_err(|e| HarnessError::Http(e.to_string()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| HarnessError::Http(e.to_string()))?;
        if !status.is_success() {
            return Err(HarnessError::Http(format!(
                "publish answered {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        serde_json::from_slice(&body).map_err(|e| HarnessError::Http(e.to_string()))
    }

    /// Revokes `token` as the tenant's backend would (`POST /v1/tokens/revoke`, service token).
    pub async fn revoke(&self, tenant: &str, token: &str) -> Result<()> {
        let response = self
            .http
            .post(format!("{}/v1/tokens/revoke", self.url()))
            .bearer_auth(self.service_token(tenant)?)
            .json(&kryonix_protocol::wire::RevokeRequest {
                token: Some(token.to_owned()),
                ..Default::default()
            })
            .send()
            .await
            .map_err(|e| HarnessError::Http(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(HarnessError::Http(format!(
                "revoke answered {status}: {body}"
            )));
        }
        Ok(())
    }

    /// Where the embedded store lives (meaningful for [`StoreChoice::Embedded`]).
    pub fn embedded_path(&self) -> PathBuf {
        self.config.embedded_path.clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut running) = self.running.take()
            && let Some(kill) = running.kill.take()
        {
            let _ = kill.send(());
        }
    }
}

/// A `put` change for [`TestServer::publish`].
pub fn put_change(namespace: &str, key: &str, value: &[u8]) -> PublishChange {
    PublishChange {
        namespace: namespace.to_owned(),
        key: key.to_owned(),
        op: kryonix_protocol::wire::Op::Put,
        value: value.to_vec(),
        encoding: kryonix_protocol::Encoding::Identity,
        ttl_secs: None,
    }
}
