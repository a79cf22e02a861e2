//! A real `redis-server` per test: spawned from PATH on a free port in its own temp dir with the
//! configuration the test needs, killed on drop. No shared or remote Redis, no mocks.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// What the test needs from Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub maxmemory: Option<&'static str>,
    pub policy: &'static str,
    pub appendonly: bool,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            maxmemory: None,
            policy: "noeviction",
            appendonly: true,
        }
    }
}

/// A running `redis-server`, stopped on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

fn free_port() -> u16 {
    // Bind port 0, read the port back, release it for redis-server. A small race with other
    // processes remains; start() retries on a new port if Redis cannot bind.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl RedisServer {
    pub fn start(options: RedisOptions) -> Self {
        for _ in 0..5 {
            if let Some(server) = Self::try_start(&options) {
                return server;
            }
        }
        panic!("could not start redis-server (is it on PATH?)");
    }

    fn try_start(options: &RedisOptions) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(dir.path())
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg(if options.appendonly { "yes" } else { "no" })
            .arg("--appendfsync")
            .arg("everysec")
            .arg("--maxmemory-policy")
            .arg(options.policy)
            .arg("--databases")
            .arg("16")
            .arg("--logfile")
            .arg(dir.path().join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(max) = options.maxmemory {
            cmd.arg("--maxmemory").arg(max);
        }
        let mut child = cmd.spawn().expect("spawn redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                let _ = child.wait();
                return None; // exited: most likely the port was taken
            }
            let answers = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                .ok()
                .and_then(|client| client.get_connection().ok())
                .is_some_and(|mut con| redis::cmd("PING").query::<String>(&mut con).is_ok());
            if answers {
                return Some(Self {
                    child,
                    port,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain client on one logical database, to check Redis directly.
    pub async fn db(&self, db: u8) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{}/{db}", self.port))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Number of keys in every database, to prove a request wrote nothing.
    pub async fn key_counts(&self) -> Vec<i64> {
        let mut out = Vec::with_capacity(16);
        for db in 0..16 {
            let mut con = self.db(db).await;
            out.push(redis::cmd("DBSIZE").query_async(&mut con).await.unwrap());
        }
        out
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
