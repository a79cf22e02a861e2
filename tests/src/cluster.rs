//! A real Redis Cluster per test: `deploy/cluster/local-cluster.sh` starts the nodes (3 primaries
//! with a replica each by default) on free ports in a temp dir; the harness then reads the
//! topology from `CLUSTER NODES`, SIGKILLs primaries and measures how long the cluster takes to
//! promote a replica, restarts nodes, and moves slots (whole batches with `redis-cli --cluster
//! reshard`, or one slot by hand, key by key, while clients keep writing to it).
//!
//! Every node is killed and the directory removed on drop, also when the test fails.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;

use crate::daemons::{self, RunDir};
use crate::{HarnessError, Result, wait_for};

const SCRIPT: &str = "deploy/cluster/local-cluster.sh";

/// Short request timeout for polling a node (a dead or busy one must not stall a deadline).
const POLL_TIMEOUT: Duration = Duration::from_millis(500);

/// What cluster the test wants.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub primaries: usize,
    pub replicas_per_primary: usize,
    /// `cluster-node-timeout`: how long a node may be unreachable before it is declared failed
    /// (and its replica promoted). Low values keep failover tests short; too low on a loaded
    /// machine and a busy node gets failed over.
    pub node_timeout_ms: u64,
    /// `maxmemory` of every node (e.g. `"64mb"`); `None` leaves it unlimited.
    pub maxmemory: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            primaries: 3,
            replicas_per_primary: 1,
            node_timeout_ms: 2000,
            maxmemory: None,
        }
    }
}

/// A node's role, as `CLUSTER NODES` flags it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

/// One line of `CLUSTER NODES`, as seen by the node that was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub role: Role,
    /// A replica's primary.
    pub primary_id: Option<String>,
    /// The slot ranges it serves (inclusive). Slots being migrated or imported are listed by
    /// their owner only, as Redis does.
    pub slots: Vec<(u16, u16)>,
    /// Flagged `fail` or `fail?`: unreachable as far as the asked node knows.
    pub failing: bool,
}

impl ClusterNode {
    pub fn slot_count(&self) -> u32 {
        self.slots
            .iter()
            .map(|&(first, last)| u32::from(last) - u32::from(first) + 1)
            .sum()
    }

    pub fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|&(first, last)| (first..=last).contains(&slot))
    }
}

/// Parses the text of `CLUSTER NODES`:
/// `<id> <ip:port@bus[,hostname]> <flags> <primary|-> <ping> <pong> <epoch> <link> <slot>...`.
/// Nodes still in the handshake or without an address are left out: they are not members yet.
pub fn parse_cluster_nodes(text: &str) -> Result<Vec<ClusterNode>> {
    let mut nodes = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let bad = || HarnessError::Topology(format!("cannot parse CLUSTER NODES line {line:?}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(bad());
        }
        let flags: Vec<&str> = fields[2].split(',').collect();
        if flags.contains(&"handshake") || flags.contains(&"noaddr") {
            continue;
        }
        let role = if flags.contains(&"master") {
            Role::Primary
        } else if flags.contains(&"slave") {
            Role::Replica
        } else {
            continue;
        };
        let address = fields[1].split(['@', ',']).next().unwrap_or_default();
        let port = address
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .ok_or_else(bad)?;
        let mut slots = Vec::new();
        // "[slot->-id]" / "[slot-<-id]" mark a migration in progress, not ownership.
        for range in fields[8..].iter().filter(|field| !field.starts_with('[')) {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            slots.push((
                first.parse().map_err(|_| bad())?,
                last.parse().map_err(|_| bad())?,
            ));
        }
        nodes.push(ClusterNode {
            id: fields[0].to_owned(),
            port,
            role,
            primary_id: (fields[3] != "-").then(|| fields[3].to_owned()),
            slots,
            failing: flags.contains(&"fail") || flags.contains(&"fail?"),
        });
    }
    Ok(nodes)
}

/// A primary killed by [`RedisCluster::kill_primary`], until it is restarted.
#[derive(Debug)]
struct Killed {
    replicas: Vec<u16>,
    at: Instant,
}

/// A running Redis Cluster started by `deploy/cluster/local-cluster.sh`.
#[derive(Debug)]
pub struct RedisCluster {
    dir: RunDir,
    ports: Vec<u16>,
    killed: HashMap<u16, Killed>,
}

impl RedisCluster {
    /// Starts the cluster and returns once every node reports `cluster_state:ok` and every
    /// replica is in sync (retrying on other ports if one was taken meanwhile).
    pub async fn start(options: ClusterOptions) -> Result<Self> {
        let count = options.primaries * (1 + options.replicas_per_primary);
        if options.primaries == 0 {
            return Err(HarnessError::Topology("a cluster needs primaries".into()));
        }
        let mut last_error = None;
        for _ in 0..3 {
            let dir = RunDir::new()?;
            let ports = daemons::pick_ports(count, true)?;
            let port_list: Vec<String> = ports.iter().map(u16::to_string).collect();
            let mut args = vec![
                "start".to_owned(),
                "--dir".to_owned(),
                dir.path().display().to_string(),
                "--ports".to_owned(),
                port_list.join(" "),
                "--replicas".to_owned(),
                options.replicas_per_primary.to_string(),
                "--node-timeout".to_owned(),
                options.node_timeout_ms.to_string(),
            ];
            if let Some(max) = &options.maxmemory {
                args.extend(["--maxmemory".to_owned(), max.clone()]);
            }
            match daemons::run_script(SCRIPT, &args, Duration::from_secs(120)).await {
                Ok(_) => {
                    return Ok(Self {
                        dir,
                        ports,
                        killed: HashMap::new(),
                    });
                }
                // The script stops what it started; dropping `dir` kills any straggler.
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| HarnessError::Topology("could not start the cluster".into())))
    }

    /// Every node's port, primaries first (as created; roles change with failovers).
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The directory holding every node's config, `nodes-<port>.conf`, AOF and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `redis://127.0.0.1:<port>` of every node: the seed list for a cluster client (or for
    /// `kryonix-server --redis-cluster`).
    pub fn seed_urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    fn live_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports
            .iter()
            .copied()
            .filter(|port| !self.killed.contains_key(port))
    }

    /// The cluster as one live node sees it (the first that answers).
    pub async fn nodes(&self) -> Result<Vec<ClusterNode>> {
        let mut last_error = None;
        for port in self.live_ports() {
            match self.nodes_seen_by(port).await {
                Ok(nodes) => return Ok(nodes),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| HarnessError::Topology("no live node".into())))
    }

    /// The cluster as the node on `port` sees it.
    pub async fn nodes_seen_by(&self, port: u16) -> Result<Vec<ClusterNode>> {
        let mut con = daemons::connect(port, POLL_TIMEOUT).await?;
        let text: String = ::redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut con)
            .await?;
        parse_cluster_nodes(&text)
    }

    /// The primaries that are not failing (a killed primary stays listed, flagged, until it is
    /// forgotten or comes back as a replica).
    pub async fn primaries(&self) -> Result<Vec<ClusterNode>> {
        Ok(self
            .nodes()
            .await?
            .into_iter()
            .filter(|node| node.role == Role::Primary && !node.failing)
            .collect())
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`, so hash tags count exactly as Redis counts them).
    pub async fn key_slot(&self, key: &str) -> Result<u16> {
        let port = self
            .live_ports()
            .next()
            .ok_or_else(|| HarnessError::Topology("no live node".into()))?;
        let mut con = daemons::connect(port, POLL_TIMEOUT).await?;
        Ok(::redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut con)
            .await?)
    }

    /// The port of the primary serving `slot`.
    pub async fn primary_for_slot(&self, slot: u16) -> Result<u16> {
        self.primaries()
            .await?
            .into_iter()
            .find(|node| node.serves(slot))
            .map(|node| node.port)
            .ok_or_else(|| HarnessError::Topology(format!("no primary serves slot {slot}")))
    }

    /// A plain (non-cluster) connection to one node: it sees only that node's keys and answers
    /// `MOVED` for the others.
    pub async fn connection(&self, port: u16) -> Result<MultiplexedConnection> {
        daemons::connect(port, Duration::from_secs(10)).await
    }

    /// A cluster client connection (follows `MOVED`/`ASK`, refreshes the slot map).
    pub async fn cluster_connection(&self) -> Result<ClusterConnection> {
        Ok(ClusterClient::new(self.seed_urls())?
            .get_async_connection()
            .await?)
    }

    /// SIGKILLs the primary on `port` (no goodbye to its replicas or clients) and notes when,
    /// for [`wait_for_failover`](Self::wait_for_failover).
    pub async fn kill_primary(&mut self, port: u16) -> Result<()> {
        let nodes = self.nodes().await?;
        let node = nodes
            .iter()
            .find(|node| node.port == port && node.role == Role::Primary && !node.failing)
            .ok_or_else(|| HarnessError::Topology(format!("{port} is not a live primary")))?;
        let replicas = nodes
            .iter()
            .filter(|replica| replica.primary_id.as_deref() == Some(node.id.as_str()))
            .map(|replica| replica.port)
            .collect();
        self.dir.kill(&format!("node-{port}"))?;
        self.killed.insert(
            port,
            Killed {
                replicas,
                at: Instant::now(),
            },
        );
        Ok(())
    }

    /// Waits until a replica of the primary killed on `killed_port` has been promoted and every
    /// surviving node reports `cluster_state:ok`; returns the time since the kill.
    pub async fn wait_for_failover(&self, killed_port: u16, limit: Duration) -> Result<Duration> {
        let killed = self.killed.get(&killed_port).ok_or_else(|| {
            HarnessError::Topology(format!("{killed_port} was not killed with kill_primary"))
        })?;
        let survivors: Vec<u16> = self.live_ports().collect();
        let survivors = &survivors;
        wait_for(
            limit,
            &format!("a replica of {killed_port} promoted and cluster_state:ok"),
            move || async move {
                let mut promoted = false;
                for &port in &killed.replicas {
                    promoted |= is_master(port).await;
                }
                if !promoted {
                    return None;
                }
                for &port in survivors {
                    cluster_ok(port).await?;
                }
                Some(killed.at.elapsed())
            },
        )
        .await
    }

    /// Starts a killed (or stopped) node again from its config and `nodes-<port>.conf`, and waits
    /// until it answers and sees `cluster_state:ok`. A former primary comes back as a replica of
    /// the node that replaced it.
    pub async fn restart_node(&mut self, port: u16) -> Result<()> {
        let config = self
            .dir
            .path()
            .join(format!("node-{port}"))
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
        self.killed.remove(&port);
        let limit = Duration::from_secs(30);
        wait_for(limit, &format!("{port} back with cluster_state:ok"), || {
            cluster_ok(port)
        })
        .await
    }

    /// Waits until every live node reports `cluster_state:ok` and all agree on which primary
    /// serves which slots (after a failover, a reshard or a migration).
    pub async fn wait_for_agreement(&self, limit: Duration) -> Result<()> {
        let ports: Vec<u16> = self.live_ports().collect();
        let ports = &ports;
        wait_for(
            limit,
            "every node to agree on the slot map",
            move || async move {
                let mut maps = Vec::new();
                for &port in ports {
                    cluster_ok(port).await?;
                    let nodes = self.nodes_seen_by(port).await.ok()?;
                    let mut map: Vec<(u16, u16, String)> = nodes
                        .into_iter()
                        .filter(|node| node.role == Role::Primary && !node.failing)
                        .flat_map(|node| {
                            let id = node.id;
                            node.slots
                                .into_iter()
                                .map(move |(first, last)| (first, last, id.clone()))
                        })
                        .collect();
                    map.sort();
                    maps.push(map);
                }
                maps.windows(2).all(|pair| pair[0] == pair[1]).then_some(())
            },
        )
        .await
    }

    fn id_of(nodes: &[ClusterNode], port: u16) -> Result<String> {
        nodes
            .iter()
            .find(|node| node.port == port)
            .map(|node| node.id.clone())
            .ok_or_else(|| HarnessError::Topology(format!("no node on port {port}")))
    }

    /// Moves `slots` slots (and their keys) from the primary on `from_port` to the one on
    /// `to_port` with `redis-cli --cluster reshard`, then waits until every node agrees.
    pub async fn reshard(&self, slots: u32, from_port: u16, to_port: u16) -> Result<()> {
        // redis-cli refuses to reshard a cluster whose nodes disagree.
        self.wait_for_agreement(Duration::from_secs(30)).await?;
        let nodes = self.nodes().await?;
        let args = [
            "--cluster".to_owned(),
            "reshard".to_owned(),
            format!("127.0.0.1:{from_port}"),
            "--cluster-from".to_owned(),
            Self::id_of(&nodes, from_port)?,
            "--cluster-to".to_owned(),
            Self::id_of(&nodes, to_port)?,
            "--cluster-slots".to_owned(),
            slots.to_string(),
            "--cluster-yes".to_owned(),
        ];
        let limit = Duration::from_secs(120);
        let output = tokio::time::timeout(
            limit,
            tokio::process::Command::new("redis-cli")
                .args(&args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| HarnessError::Timeout(limit, "redis-cli --cluster reshard".into()))?
        .map_err(|e| HarnessError::Topology(format!("cannot run redis-cli: {e}")))?;
        // redis-cli exits 0 on some failures; "[ERR" in its output is the reliable sign.
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || stdout.contains("[ERR") {
            return Err(HarnessError::Topology(format!(
                "redis-cli --cluster reshard failed ({}): {stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        self.wait_for_agreement(Duration::from_secs(30)).await
    }

    /// Moves one slot from the primary on `from_port` to the one on `to_port` the way the
    /// cluster specification describes, which clients may keep writing to throughout:
    /// `SETSLOT IMPORTING` on the target, `SETSLOT MIGRATING` on the source (from then on the
    /// source answers `ASK` for keys it no longer has), `GETKEYSINSLOT` + `MIGRATE ... KEYS` in
    /// batches until the source holds none, then `SETSLOT NODE` on the target, the source and
    /// the other primaries. Returns how many keys were moved.
    pub async fn migrate_slot(&self, slot: u16, from_port: u16, to_port: u16) -> Result<usize> {
        const BATCH: usize = 100;
        let nodes = self.nodes().await?;
        let from_id = Self::id_of(&nodes, from_port)?;
        let to_id = Self::id_of(&nodes, to_port)?;
        let mut from = self.connection(from_port).await?;
        let mut to = self.connection(to_port).await?;
        setslot(&mut to, slot, "IMPORTING", &from_id).await?;
        setslot(&mut from, slot, "MIGRATING", &to_id).await?;

        let limit = Duration::from_secs(60);
        let deadline = Instant::now() + limit;
        let mut moved = 0;
        loop {
            let keys: Vec<Vec<u8>> = ::redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(BATCH)
                .query_async(&mut from)
                .await?;
            if keys.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout(
                    limit,
                    format!("the keys of slot {slot} to move"),
                ));
            }
            // No REPLACE: a key already on the target would be a bug worth an error.
            let _: String = ::redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to_port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query_async(&mut from)
                .await?;
            moved += keys.len();
        }

        // The target first: once it owns the slot, the source's redirections land.
        setslot(&mut to, slot, "NODE", &to_id).await?;
        setslot(&mut from, slot, "NODE", &to_id).await?;
        // The others would learn it by gossip; telling them makes clients' MOVED accurate sooner.
        for node in &nodes {
            if node.role == Role::Primary
                && !node.failing
                && node.port != from_port
                && node.port != to_port
            {
                let mut other = self.connection(node.port).await?;
                setslot(&mut other, slot, "NODE", &to_id).await?;
            }
        }
        self.wait_for_agreement(Duration::from_secs(30)).await?;
        Ok(moved)
    }

    /// Kills every node (SIGKILL). The directory goes when the value is dropped.
    pub fn stop(&mut self) {
        self.dir.kill_all();
    }
}

async fn setslot(
    con: &mut MultiplexedConnection,
    slot: u16,
    state: &str,
    node_id: &str,
) -> Result<()> {
    let _: String = ::redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg(state)
        .arg(node_id)
        .query_async(con)
        .await?;
    Ok(())
}

async fn is_master(port: u16) -> bool {
    match daemons::connect(port, POLL_TIMEOUT).await {
        Ok(mut con) => daemons::role(&mut con)
            .await
            .is_ok_and(|role| role == "master"),
        Err(_) => false,
    }
}

async fn cluster_ok(port: u16) -> Option<()> {
    let mut con = daemons::connect(port, POLL_TIMEOUT).await.ok()?;
    let info: String = ::redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut con)
        .await
        .ok()?;
    info.lines()
        .any(|line| line.trim() == "cluster_state:ok")
        .then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes() {
        let text = "\
74ac 127.0.0.1:21005@31005 slave 6d4a 0 1796084300752 1 connected
a82e 127.0.0.1:21001@31001 master - 0 1796084300049 2 connected 5461-10922
6d4a 127.0.0.1:21000@31000,host myself,master - 0 0 1 connected 0-5460 [93->-a82e]
527d 127.0.0.1:21002@31002 master,fail - 0 0 3 disconnected 10923 10925-16383
9999 :0@0 master,noaddr - 0 0 0 disconnected
";
        let nodes = parse_cluster_nodes(text).unwrap();
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[0].role, Role::Replica);
        assert_eq!(nodes[0].primary_id.as_deref(), Some("6d4a"));
        assert_eq!(nodes[0].port, 21005);
        assert_eq!(nodes[2].slots, vec![(0, 5460)]);
        assert_eq!(nodes[2].port, 21000);
        assert!(nodes[3].failing);
        assert_eq!(nodes[3].slot_count(), 1 + 5459);
        assert!(nodes[3].serves(10923) && !nodes[3].serves(10924));
        assert_eq!(
            nodes.iter().map(ClusterNode::slot_count).sum::<u32>(),
            5461 + 5462 + 5460
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_cluster_nodes("not a node line").is_err());
    }
}
