//! A real `redis-server` per scenario: spawned from `PATH` on a free port in its own temp dir,
//! with per-test configuration, killed (SIGKILL) on drop, and restartable on the same port and
//! directory — so an AOF written before a kill is what the restarted server loads.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{HarnessError, Result};

/// How the test wants Redis configured.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `maxmemory` (e.g. `"64mb"`); `None` leaves it unlimited.
    pub maxmemory: Option<String>,
    /// `maxmemory-policy`; the sync store needs `noeviction`.
    pub policy: String,
    pub appendonly: bool,
    /// `appendfsync always` (every acknowledged write is on disk) rather than `everysec`.
    pub fsync_always: bool,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            maxmemory: None,
            policy: "noeviction".into(),
            appendonly: true,
            fsync_always: false,
        }
    }
}

impl RedisOptions {
    /// AOF with `appendfsync always`: for scenarios that restart Redis.
    pub fn durable() -> Self {
        Self {
            fsync_always: true,
            ..Self::default()
        }
    }
}

/// A running (or killed, awaiting restart) `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    options: RedisOptions,
    dir: TempDir,
}

/// A port that was free a moment ago (bind 0, read it back, release it).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn spawn(port: u16, dir: &Path, options: &RedisOptions) -> Result<Child> {
    let mut cmd = Command::new("redis-server");
    cmd.arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--dir")
        .arg(dir)
        .arg("--save")
        .arg("")
        .arg("--appendonly")
        .arg(if options.appendonly { "yes" } else { "no" })
        .arg("--appendfsync")
        .arg(if options.fsync_always {
            "always"
        } else {
            "everysec"
        })
        .arg("--maxmemory-policy")
        .arg(&options.policy)
        .arg("--databases")
        .arg("16")
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(max) = &options.maxmemory {
        cmd.arg("--maxmemory").arg(max);
    }
    cmd.spawn()
        .map_err(|e| HarnessError::RedisServer(format!("cannot spawn redis-server: {e}")))
}

fn pings(port: u16) -> bool {
    ::redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .ok()
        .and_then(|client| {
            client
                .get_connection_with_timeout(Duration::from_millis(200))
                .ok()
        })
        .is_some_and(|mut con| {
            ::redis::cmd("PING")
                .query::<String>(&mut con)
                .is_ok_and(|pong| pong == "PONG")
        })
}

/// Waits until the child answers PING (after loading its AOF); `None` if it exited.
fn await_ready(child: &mut Child, port: u16) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        if pings(port) {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(HarnessError::RedisServer(format!(
        "no answer on port {port} within 10 s"
    )))
}

impl RedisServer {
    /// Starts a fresh server (retrying on another port if the chosen one was taken).
    pub fn start(options: RedisOptions) -> Result<Self> {
        for _ in 0..5 {
            let dir = tempfile::tempdir()?;
            let port = free_port()?;
            let mut child = spawn(port, dir.path(), &options)?;
            if await_ready(&mut child, port)? {
                return Ok(Self {
                    child: Some(child),
                    port,
                    options,
                    dir,
                });
            }
            let _ = child.wait();
        }
        Err(HarnessError::RedisServer(
            "could not start redis-server (is it on PATH?)".into(),
        ))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}` (no database: the server picks its own).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The directory holding its AOF and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL: no shutdown save, no goodbye to clients. What was fsynced stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts it again on the same port and directory and
    /// waits until it has loaded its data and answers.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = spawn(self.port, self.dir.path(), &self.options)?;
            if await_ready(&mut child, self.port)? {
                self.child = Some(child);
                return Ok(());
            }
            let _ = child.wait();
            if Instant::now() >= deadline {
                return Err(HarnessError::RedisServer(format!(
                    "could not restart on port {}",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A plain client connection on one logical database, to check Redis directly.
    pub async fn connection(&self, db: u8) -> Result<::redis::aio::MultiplexedConnection> {
        let client = ::redis::Client::open(format!("redis://127.0.0.1:{}/{db}", self.port))?;
        Ok(client.get_multiplexed_async_connection().await?)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
