//! Redis processes started by the deploy scripts (`deploy/cluster/local-cluster.sh`,
//! `deploy/sentinel/local-sentinel.sh`) rather than by the harness itself: the scripts daemonize
//! them, so the harness knows each one only by the pid file in its directory
//! (`<run dir>/<node>/redis.pid`). [`RunDir`] owns such a run directory and SIGKILLs every
//! process in it on drop, so a failed test leaves no Redis behind.
//!
//! Testing the scripts operators use, instead of a Rust copy of them, is the point: the
//! topologies the tests prove are the ones the documentation tells people to start.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Value};
use tempfile::TempDir;

use crate::{HarnessError, Result};

/// The repository root: the test crate lives in `<root>/tests`.
pub(crate) fn repo_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| HarnessError::Topology("CARGO_MANIFEST_DIR has no parent".into()))
}

/// Runs a deploy script (`script` relative to the repository root) with bash, bounded by
/// `limit`; its output is returned, or quoted in the error when it fails.
pub(crate) async fn run_script(script: &str, args: &[String], limit: Duration) -> Result<String> {
    let path = repo_root()?.join(script);
    let mut command = tokio::process::Command::new("bash");
    command
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        // On a timeout the future is dropped: the script must not live on.
        .kill_on_drop(true);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .map_err(|_| HarnessError::Timeout(limit, format!("{script} {}", args.join(" "))))?
        .map_err(|e| HarnessError::Topology(format!("cannot run {script}: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(HarnessError::Topology(format!(
        "{script} {} failed ({}):\n{}\n{}",
        args.join(" "),
        output.status,
        tail(&stdout),
        tail(&stderr)
    )))
}

/// The last lines of a script's output: enough to see why it failed.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// `count` distinct ports that were free a moment ago, between 20000 and 22767. With `bus`, the
/// port 10000 above each (a cluster node's bus port) was free too. The range lies below the
/// kernel's ephemeral ports (32768 and up), so no outgoing connection takes one between the check
/// and the bind; the start is random so that concurrent topologies rarely try the same ports (and
/// retry if they do).
pub(crate) fn pick_ports(count: usize, bus: bool) -> Result<Vec<u16>> {
    const FIRST: u16 = 20000;
    const SPAN: u16 = 2768;
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let start = (hasher.finish() % u64::from(SPAN)) as u16;
    let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
    let ports: Vec<u16> = (0..SPAN)
        .map(|i| FIRST + (start + i) % SPAN)
        .filter(|&port| free(port) && (!bus || free(port + 10000)))
        .take(count)
        .collect();
    if ports.len() < count {
        return Err(HarnessError::Topology(format!(
            "fewer than {count} free ports in {FIRST}..{}",
            FIRST + SPAN
        )));
    }
    Ok(ports)
}

/// A temp directory holding daemonized Redis processes, one subdirectory each.
#[derive(Debug)]
pub(crate) struct RunDir {
    dir: TempDir,
}

impl RunDir {
    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The pid of the process in `node` (a subdirectory), from the pid file Redis wrote.
    pub(crate) fn pid(&self, node: &str) -> Result<u32> {
        let file = self.dir.path().join(node).join("redis.pid");
        let text = std::fs::read_to_string(&file)
            .map_err(|e| HarnessError::Topology(format!("{}: {e}", file.display())))?;
        text.trim()
            .parse()
            .map_err(|_| HarnessError::Topology(format!("{}: not a pid: {text:?}", file.display())))
    }

    /// SIGKILLs the process in `node` and waits until it is gone (its ports are then closed).
    pub(crate) fn kill(&self, node: &str) -> Result<()> {
        let pid = self.pid(node)?;
        sigkill(&[pid]);
        await_exit(pid)
    }

    /// SIGKILLs every process that has a pid file in the run directory.
    pub(crate) fn kill_all(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        let pids: Vec<u32> = entries
            .flatten()
            .filter_map(|entry| {
                let text = std::fs::read_to_string(entry.path().join("redis.pid")).ok()?;
                text.trim().parse().ok()
            })
            .filter(|&pid| alive(pid))
            .collect();
        sigkill(&pids);
        for pid in pids {
            let _ = await_exit(pid);
        }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// `kill -KILL`: the workspace forbids `unsafe`, so no `libc::kill`. Only live processes are
/// signalled, which keeps a stale pid file from hitting an unrelated process in all but the
/// narrowest race.
fn sigkill(pids: &[u32]) {
    let live: Vec<String> = pids
        .iter()
        .filter(|&&pid| alive(pid))
        .map(u32::to_string)
        .collect();
    if live.is_empty() {
        return;
    }
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .args(&live)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether `pid` runs. A daemonized Redis is reparented to init, which in some containers never
/// reaps it: a zombie has exited (and closed its sockets), so it counts as gone.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Format: "pid (comm) state ...".
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) if Path::new("/proc/self").exists() => false,
        // No procfs (macOS): ask kill.
        Err(_) => std::process::Command::new("kill")
            .arg("-0")
            .arg(pid.to_string())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success()),
    }
}

fn await_exit(pid: u32) -> Result<()> {
    let limit = Duration::from_secs(5);
    let deadline = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() >= deadline {
            return Err(HarnessError::Timeout(limit, format!("pid {pid} to exit")));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// A connection to `127.0.0.1:port` whose requests fail after `timeout` (polls use a short one,
/// so a node that is down or busy does not stall a wait past its deadline).
pub(crate) async fn connect(port: u16, timeout: Duration) -> Result<MultiplexedConnection> {
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(timeout));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// The first element of `ROLE`: `master`, `slave` or `sentinel`.
pub(crate) async fn role(con: &mut MultiplexedConnection) -> Result<String> {
    let reply: Vec<Value> = ::redis::cmd("ROLE").query_async(con).await?;
    match reply.first() {
        Some(Value::BulkString(bytes)) => Ok(String::from_utf8_lossy(bytes).into_owned()),
        Some(Value::SimpleString(text)) => Ok(text.clone()),
        other => Err(HarnessError::Topology(format!(
            "unexpected ROLE reply: {other:?}"
        ))),
    }
}

/// Whether `port` answers PING within half a second.
pub(crate) async fn pings(port: u16) -> bool {
    let Ok(mut con) = connect(port, Duration::from_millis(500)).await else {
        return false;
    };
    ::redis::cmd("PING")
        .query_async::<String>(&mut con)
        .await
        .is_ok_and(|pong| pong == "PONG")
}
