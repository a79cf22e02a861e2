//! What the demo and the sync benchmarks share: `kryonix-server` started in-process on a free
//! loopback port (embedded store, or Redis when a URL is given), and device tokens for it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use kryonix_protocol::TenantId;
use kryonix_server::auth::{Scope, TokenKeys};
use kryonix_server::{AppState, ServerConfig, run, startup};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server running in this process until [`DemoServer::stop`].
#[derive(Debug)]
pub struct DemoServer {
    pub addr: SocketAddr,
    /// `embedded` or `redis`.
    pub store_kind: &'static str,
    /// Where the embedded store keeps its SQLite file (unused with Redis).
    pub embedded_path: std::path::PathBuf,
    keys: TokenKeys,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl DemoServer {
    /// Starts the server with rate limits off (they are shown by the server's own tests and
    /// would only pace these runs) and a random signing secret.
    pub async fn start(redis_url: Option<String>, dir: &Path) -> Result<Self, String> {
        let secret = format!(
            "{}{}",
            uuid::Uuid::now_v7().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut config = ServerConfig::new(secret.clone());
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.embedded_path = dir.join("server.sqlite3");
        config.redis_url = redis_url;
        config.default_policy.device_rate_per_sec = 0;
        config.default_policy.rate_per_sec = 0;
        let embedded_path = config.embedded_path.clone();
        let (store, warnings) = startup::open_store(&config)
            .await
            .map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let store_kind = store.kind();
        let keys = TokenKeys::new(secret.as_bytes(), Duration::from_secs(30));
        let state = AppState::new(config, store, warnings);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(listener, state, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            store_kind,
            embedded_path,
            keys,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A device token for `device` of `tenant`, valid for an hour.
    pub fn device_token(&self, tenant: &TenantId, device: &str) -> Result<String, String> {
        self.keys
            .mint(tenant, device, Scope::Device, Duration::from_secs(3600))
            .map_err(|e| e.to_string())
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the server to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}
