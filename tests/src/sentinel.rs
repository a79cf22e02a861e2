//! A real Sentinel group per test: `deploy/sentinel/local-sentinel.sh` starts a mobile_sync
//! primary, one replica and three Sentinels (quorum 2) on free ports in a temp dir, and returns
//! once the replica is in sync and every Sentinel knows the replica and the other two. The harness
//! asks the Sentinels who the primary is, SIGKILLs it, and measures how long they take to promote
//! the replica.
//!
//! Every process is killed and the directory removed on drop, also when the test fails.

use std::path::Path;
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;

use crate::daemons::{self, RunDir};
use crate::{HarnessError, Result, wait_for};

const SCRIPT: &str = "deploy/sentinel/local-sentinel.sh";

const POLL_TIMEOUT: Duration = Duration::from_millis(500);

/// What Sentinel group the test wants.
#[derive(Debug, Clone)]
pub struct SentinelOptions {
    /// `down-after-milliseconds`: how long the primary may be unreachable before a Sentinel
    /// considers it down.
    pub down_after_ms: u64,
    /// `failover-timeout`. A failover attempt that stalls (say the vote split) is retried only
    /// after twice this, so tests keep it short.
    pub failover_timeout_ms: u64,
    pub master_name: String,
    /// `maxmemory` of both Redis nodes (e.g. `"64mb"`); `None` keeps the deploy config's.
    pub maxmemory: Option<String>,
    /// TLS only, with the certificates in this directory (ca.pem, server.pem, server.key).
    pub tls_dir: Option<std::path::PathBuf>,
    /// A password both Redis nodes require.
    pub password: Option<String>,
}

impl Default for SentinelOptions {
    fn default() -> Self {
        Self {
            down_after_ms: 1000,
            failover_timeout_ms: 5000,
            master_name: "mobile-sync".into(),
            maxmemory: None,
            tls_dir: None,
            password: None,
        }
    }
}

/// A running primary + replica under three Sentinels.
#[derive(Debug)]
pub struct RedisSentinels {
    dir: RunDir,
    master_name: String,
    /// The two Redis nodes, as started: primary first (roles change with failovers).
    redis_ports: [u16; 2],
    sentinel_ports: [u16; 3],
    tls: bool,
    /// The primary killed by `kill_primary`, and when.
    killed: Option<(u16, Instant)>,
}

impl RedisSentinels {
    /// Starts the group (retrying on other ports if one was taken meanwhile).
    pub async fn start(options: SentinelOptions) -> Result<Self> {
        let mut last_error = None;
        for _ in 0..3 {
            let dir = RunDir::new()?;
            let ports = daemons::pick_ports(5, false)?;
            let redis_ports = [ports[0], ports[1]];
            let sentinel_ports = [ports[2], ports[3], ports[4]];
            let mut args = vec![
                "start".to_owned(),
                "--dir".to_owned(),
                dir.path().display().to_string(),
                "--primary-port".to_owned(),
                redis_ports[0].to_string(),
                "--replica-port".to_owned(),
                redis_ports[1].to_string(),
                "--sentinel-ports".to_owned(),
                sentinel_ports.map(|port| port.to_string()).join(" "),
                "--master-name".to_owned(),
                options.master_name.clone(),
                "--down-after".to_owned(),
                options.down_after_ms.to_string(),
                "--failover-timeout".to_owned(),
                options.failover_timeout_ms.to_string(),
            ];
            if let Some(max) = &options.maxmemory {
                args.extend(["--maxmemory".to_owned(), max.clone()]);
            }
            if let Some(tls) = &options.tls_dir {
                args.extend(["--tls-dir".to_owned(), tls.display().to_string()]);
            }
            if let Some(password) = &options.password {
                args.extend(["--requirepass".to_owned(), password.clone()]);
            }
            match daemons::run_script(SCRIPT, &args, Duration::from_secs(120)).await {
                Ok(_) => {
                    return Ok(Self {
                        dir,
                        master_name: options.master_name,
                        redis_ports,
                        sentinel_ports,
                        tls: options.tls_dir.is_some(),
                        killed: None,
                    });
                }
                // The script stops what it started; dropping `dir` kills any straggler.
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| HarnessError::Topology("could not start the Sentinel group".into())))
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` with TLS) of each Sentinel (for
    /// `kryonix-server --sentinel`).
    pub fn sentinel_urls(&self) -> Vec<String> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        self.sentinel_ports
            .iter()
            .map(|port| format!("{scheme}://127.0.0.1:{port}"))
            .collect()
    }

    pub fn sentinel_ports(&self) -> [u16; 3] {
        self.sentinel_ports
    }

    /// The name the Sentinels monitor the primary under (`--sentinel-master`).
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// Both Redis nodes' ports, whatever their current roles.
    pub fn redis_ports(&self) -> [u16; 2] {
        self.redis_ports
    }

    /// The directory holding every process's config, data and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The primary according to the first Sentinel that answers
    /// (`SENTINEL get-master-addr-by-name`).
    pub async fn primary_port(&self) -> Result<u16> {
        let mut last_error = None;
        for port in self.sentinel_ports {
            match self.primary_named_by(port).await {
                Ok(primary) => return Ok(primary),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| HarnessError::Topology("no Sentinel answers".into())))
    }

    /// The primary according to the Sentinel on `sentinel_port`.
    pub async fn primary_named_by(&self, sentinel_port: u16) -> Result<u16> {
        let mut con = daemons::connect(sentinel_port, POLL_TIMEOUT).await?;
        let address: Option<(String, String)> = ::redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master_name)
            .query_async(&mut con)
            .await?;
        let (_, port) = address.ok_or_else(|| {
            HarnessError::Topology(format!("Sentinel knows no {:?}", self.master_name))
        })?;
        port.parse()
            .map_err(|_| HarnessError::Topology(format!("Sentinel named port {port:?}")))
    }

    /// A plain connection to one Redis node (or Sentinel).
    pub async fn connection(&self, port: u16) -> Result<MultiplexedConnection> {
        daemons::connect(port, Duration::from_secs(10)).await
    }

    /// SIGKILLs the current primary and notes when, for
    /// [`wait_for_failover`](Self::wait_for_failover); returns its port.
    pub async fn kill_primary(&mut self) -> Result<u16> {
        let port = self.primary_port().await?;
        self.dir.kill(&format!("redis-{port}"))?;
        self.killed = Some((port, Instant::now()));
        Ok(port)
    }

    /// Waits until every Sentinel names another primary than the one killed and that node
    /// answers `ROLE` as master; returns the time since the kill.
    pub async fn wait_for_failover(&self, limit: Duration) -> Result<Duration> {
        let (killed, at) = self.killed.ok_or_else(|| {
            HarnessError::Topology("no primary was killed with kill_primary".into())
        })?;
        wait_for(
            limit,
            "the Sentinels to name a new primary",
            || async move {
                let mut named = Vec::new();
                for port in self.sentinel_ports {
                    named.push(self.primary_named_by(port).await.ok()?);
                }
                let new = *named.first()?;
                if new == killed || named.iter().any(|&port| port != new) {
                    return None;
                }
                let mut con = daemons::connect(new, POLL_TIMEOUT).await.ok()?;
                let role = daemons::role(&mut con).await.ok()?;
                (role == "master").then(|| at.elapsed())
            },
        )
        .await
    }

    /// Starts a killed Redis node again from its config (which the Sentinels may have rewritten)
    /// and waits until it answers. The Sentinels then turn a former primary into a replica of
    /// the new one.
    pub async fn restart_node(&mut self, port: u16) -> Result<()> {
        let config = self
            .dir
            .path()
            .join(format!("redis-{port}"))
            .join("redis.conf");
        let status = tokio::process::Command::new("redis-server")
            .arg(&config)
            .status()
            .await
            .map_err(|e| HarnessError::Topology(format!("cannot run redis-server: {e}")))?;
        if !status.success() {
            return Err(HarnessError::Topology(format!(
                "redis-server {} exited with {status}",
                config.display()
            )));
        }
        if self.killed.is_some_and(|(killed, _)| killed == port) {
            self.killed = None;
        }
        wait_for(
            Duration::from_secs(10),
            &format!("{port} to answer PING"),
            || async move { daemons::pings(port).await.then_some(()) },
        )
        .await
    }

    /// Kills every process (SIGKILL). The directory goes when the value is dropped.
    pub fn stop(&mut self) {
        self.dir.kill_all();
    }
}
