//! Glue shared by the scenarios on multi-node Redis (Cluster, Sentinel): fleets of devices of
//! several tenants syncing in the background, a probe device that pushes one item at a time and
//! notes when pushes stop and start being accepted, and the exactly-once check per device.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kryonix_core::{Agent, TierSet};
use kryonix_e2e::streams::UpEntry;
use kryonix_e2e::{TestServer, agent_config, open_agent, wait_for};
use kryonix_protocol::wire::Op;
use kryonix_protocol::{Namespace, NetworkProfile, Tier};
use serde_json::json;
use tempfile::TempDir;

/// One device: its agent and the ids it queued, per tier, in order.
pub struct Device {
    pub tenant: &'static str,
    pub name: String,
    pub agent: Arc<Agent>,
    pub expected: BTreeMap<u8, Vec<String>>,
}

/// Devices of several tenants, each with its own database, syncing until told to stop.
pub struct Fleet {
    pub devices: Vec<Device>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: TempDir,
}

impl Fleet {
    pub fn open(server: &TestServer, tenants: &[&'static str], per_tenant: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut devices = Vec::new();
        for tenant in tenants {
            for n in 0..per_tenant {
                let name = format!("{tenant}-device-{n}");
                let mut config = agent_config(
                    &dir.path().join(format!("{name}.db")),
                    &server.url(),
                    tenant,
                )
                .unwrap();
                config.profile.network = NetworkProfile::OFFLINE;
                let token = server.device_token(tenant, &name).unwrap();
                let agent = Arc::new(open_agent(config, token, None).unwrap());
                devices.push(Device {
                    tenant,
                    name,
                    agent,
                    expected: BTreeMap::new(),
                });
            }
        }
        Self {
            devices,
            stop: Arc::new(AtomicBool::new(false)),
            tasks: Vec::new(),
            _dir: dir,
        }
    }

    /// Each device queues `n` items, alternating tiers 1 and 2.
    pub fn enqueue(&mut self, n: usize, tag: &str) {
        for device in &mut self.devices {
            for i in 0..n {
                let tier = [Tier::Critical, Tier::Preferences][i % 2];
                let id = device
                    .agent
                    .enqueue(
                        Namespace::UserCache,
                        &format!("{tag}-{i}"),
                        Op::Put,
                        format!("{} {tag} {i}", device.name).as_bytes(),
                        tier,
                    )
                    .unwrap();
                device
                    .expected
                    .entry(tier.number())
                    .or_default()
                    .push(id.to_string());
            }
        }
    }

    /// Every device online and asking to sync, over and over, until [`Fleet::stop`].
    pub fn sync_in_background(&mut self) {
        for device in &self.devices {
            device.agent.set_network(NetworkProfile::WIFI).unwrap();
            let agent = Arc::clone(&device.agent);
            let stop = Arc::clone(&self.stop);
            self.tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let _ = agent.sync_now(TierSet::ALL).await;
                    // Pacing, not timing: the next request waits its turn either way.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }));
        }
    }

    /// Waits until no device has anything left to send.
    pub async fn drained(&self, limit: Duration) {
        wait_for(limit, "every device drained", || async {
            self.devices
                .iter()
                .all(|d| d.agent.outbox().stats().is_ok_and(|s| s.depth() == 0))
                .then_some(())
        })
        .await
        .unwrap();
    }

    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        for device in &self.devices {
            device.agent.close().await.unwrap();
        }
    }

    /// Items queued by the fleet.
    pub fn total(&self) -> usize {
        self.devices
            .iter()
            .flat_map(|d| d.expected.values())
            .map(Vec::len)
            .sum()
    }
}

/// Every item each device of `tenant` queued in `tier` is in `entries` exactly once, in the
/// device's order, and nothing else is.
pub fn assert_exactly_once(fleet: &Fleet, tenant: &str, tier: u8, entries: &[UpEntry]) {
    let ids: Vec<&str> = entries.iter().map(|e| e.meta.id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "{tenant} tier {tier}: {} duplicate entries",
        ids.len() - unique.len()
    );
    let mut by_device: HashMap<&str, Vec<String>> = HashMap::new();
    for entry in entries {
        by_device
            .entry(entry.meta.device_id.as_str())
            .or_default()
            .push(entry.meta.id.clone());
    }
    let mut expected_total = 0;
    for device in fleet.devices.iter().filter(|d| d.tenant == tenant) {
        let want = device.expected.get(&tier).cloned().unwrap_or_default();
        expected_total += want.len();
        let got = by_device.remove(device.name.as_str()).unwrap_or_default();
        let lost = want.iter().filter(|id| !got.contains(id)).count();
        assert_eq!(lost, 0, "{} tier {tier}: {lost} items lost", device.name);
        assert_eq!(got, want, "{} tier {tier}: out of order", device.name);
    }
    assert!(
        by_device.is_empty(),
        "entries of unknown devices: {by_device:?}"
    );
    assert_eq!(ids.len(), expected_total);
}

/// When pushes of one device were accepted and refused, around a fault.
#[derive(Debug, Default)]
pub struct ProbeLog {
    pub accepted: Vec<Instant>,
    pub refused: Vec<Instant>,
}

impl ProbeLog {
    /// First refusal after `since`, and the first acceptance after that refusal: the gap in
    /// pushes a fault caused.
    pub fn gap_after(&self, since: Instant) -> Option<(Instant, Instant)> {
        let first_refused = self.refused.iter().copied().find(|t| *t >= since)?;
        let back = self.accepted.iter().copied().find(|t| *t > first_refused)?;
        Some((first_refused, back))
    }
}

/// A device that pushes one new item every `every`, straight over HTTP, and logs when each push
/// was answered and whether the item was stored. Stops with the returned flag.
pub fn probe(
    server: &TestServer,
    tenant: &str,
    device: &str,
    every: Duration,
) -> (
    Arc<Mutex<ProbeLog>>,
    Arc<AtomicBool>,
    tokio::task::JoinHandle<u64>,
) {
    let log = Arc::new(Mutex::new(ProbeLog::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let token = server.device_token(tenant, device).unwrap();
    let url = server.url();
    let (task_log, task_stop) = (Arc::clone(&log), Arc::clone(&stop));
    let task = tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let producer = uuid::Uuid::now_v7().simple().to_string();
        let mut seq = 0u64;
        while !task_stop.load(Ordering::SeqCst) {
            seq += 1;
            let body = json!({
                "producer": producer,
                "items": [{
                    "id": uuid::Uuid::now_v7().to_string(), "seq": seq, "tier": 1,
                    "namespace": "user_cache", "key": "probe", "op": "put",
                    "payload": "", "created_at_ms": 0
                }]
            });
            let answer = http
                .post(format!("{url}/v1/sync/push"))
                .bearer_auth(&token)
                .header("kryonix-protocol", "2")
                .json(&body)
                .send()
                .await;
            let stored = match answer {
                Ok(r) if r.status().is_success() => r
                    .json::<serde_json::Value>()
                    .await
                    // `duplicate`: an earlier try of this seq was stored after all.
                    .is_ok_and(|v| {
                        v["results"][0]["status"] == "accepted"
                            || v["results"][0]["status"] == "duplicate"
                    }),
                _ => false,
            };
            if !stored {
                // Not acknowledged: the same seq goes again.
                seq -= 1;
            }
            {
                let mut log = task_log.lock().unwrap_or_else(PoisonError::into_inner);
                let at = Instant::now();
                if stored {
                    log.accepted.push(at);
                } else {
                    log.refused.push(at);
                }
            }
            tokio::time::sleep(every).await;
        }
        seq
    });
    (log, stop, task)
}

/// A [`probe`] that has stored at least one item (so a later refusal is the fault's doing).
pub async fn started_probe(
    server: &TestServer,
    tenant: &str,
    device: &str,
    every: Duration,
) -> (
    Arc<Mutex<ProbeLog>>,
    Arc<AtomicBool>,
    tokio::task::JoinHandle<u64>,
) {
    let (log, stop, task) = probe(server, tenant, device, every);
    wait_for(Duration::from_secs(20), "the probe stored once", || async {
        (!log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .accepted
            .is_empty())
        .then_some(())
    })
    .await
    .unwrap();
    (log, stop, task)
}

/// Waits until the probe, refused after `since`, is accepted again; stops it; returns (first
/// refused, first accepted again) and the items it stored.
pub async fn finish_probe(
    probe: (
        Arc<Mutex<ProbeLog>>,
        Arc<AtomicBool>,
        tokio::task::JoinHandle<u64>,
    ),
    since: Instant,
    limit: Duration,
) -> ((Instant, Instant), u64) {
    let (log, stop, task) = probe;
    let gap = wait_for(limit, "the probe refused, then accepted again", || async {
        log.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .gap_after(since)
    })
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    (gap, task.await.unwrap())
}
