//! Scenario 14: an app whose token provider blocks (a refresh over the network) does not stall
//! sync. Two agents share a 2-worker runtime — the bindings' shape — and their provider blocks
//! until the test lets it go, holding as many threads as the runtime has workers. A third agent
//! on the same runtime must sync meanwhile; then the blocked two deliver too, exactly once.
//!
//! The test's own deadlines run outside the runtime (a std channel), so a regression fails the
//! test instead of hanging it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use kryonix_core::sync::{TokenError, TokenProvider};
use kryonix_core::{Agent, TierSet};
use kryonix_e2e::open_agent;
use kryonix_protocol::{NetworkProfile, Tier};

use crate::support::{Expected, TENANT, World, enqueue};

/// A provider that blocks its caller until [`GatedToken::open`], as a synchronous refresh over
/// a slow network would.
#[derive(Debug)]
struct GatedToken {
    token: String,
    open: Mutex<bool>,
    opened: Condvar,
    calls: AtomicUsize,
}

impl GatedToken {
    fn new(token: String) -> Arc<Self> {
        Arc::new(Self {
            token,
            open: Mutex::new(false),
            opened: Condvar::new(),
            calls: AtomicUsize::new(0),
        })
    }

    fn open(&self) {
        *self.open.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.opened.notify_all();
    }
}

impl TokenProvider for GatedToken {
    fn token(&self, _refresh: bool) -> Result<String, TokenError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        while !*open {
            open = self
                .opened
                .wait(open)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Ok(self.token.clone())
    }
}

fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_blocking_token_provider_does_not_stall_other_agents() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut world = runtime.block_on(World::plain());
    let mut expected: BTreeMap<&str, Expected> = BTreeMap::new();
    let mut slow = Vec::new();
    let mut gates = Vec::new();
    for name in ["slow-a", "slow-b"] {
        let gate = GatedToken::new(world.server.device_token(TENANT, name).unwrap());
        let mut config = world.config(name, &world.server.url());
        config.profile.network = NetworkProfile::WIFI;
        let agent = {
            let _guard = runtime.enter();
            Agent::open(config, gate.clone(), None, runtime.handle()).unwrap()
        };
        expected.insert(name, enqueue(&agent, 3, &[Tier::Critical], name));
        slow.push(agent);
        gates.push(gate);
    }
    // Both providers are asked and now hold a thread each: as many as the runtime's workers.
    wait_until(
        "both providers to be asked",
        Duration::from_secs(20),
        || gates.iter().all(|g| g.calls.load(Ordering::SeqCst) >= 1),
    );

    let mut config = world.config("quick", &world.server.url());
    config.profile.network = NetworkProfile::WIFI;
    let token = world.server.device_token(TENANT, "quick").unwrap();
    let quick = {
        let _guard = runtime.enter();
        open_agent(config, token, None).unwrap()
    };
    expected.insert(
        "quick",
        enqueue(&quick, 5, &[Tier::Critical, Tier::Background], "quick"),
    );
    let quick = Arc::new(quick);
    let (done, finished) = mpsc::channel();
    let syncing = Arc::clone(&quick);
    runtime.spawn(async move {
        let _ = done.send(syncing.sync_now(TierSet::ALL).await.map(|r| r.remaining));
    });
    let synced = finished.recv_timeout(Duration::from_secs(30));
    let blocked = gates
        .iter()
        .map(|g| g.calls.load(Ordering::SeqCst))
        .collect::<Vec<_>>();
    for gate in &gates {
        gate.open();
    }
    let remaining = synced
        .expect("the quick agent's sync finished while the providers were blocked")
        .unwrap();
    assert_eq!(remaining, 0, "the quick agent sent everything");
    assert_eq!(
        blocked,
        [1, 1],
        "the slow agents were still waiting for their tokens"
    );

    // Released, the slow agents deliver what they held.
    for agent in &slow {
        let report = runtime.block_on(agent.sync_now(TierSet::ALL)).unwrap();
        assert_eq!(report.remaining, 0);
    }
    // Each device's items are stored exactly once, in its order (devices interleave).
    for tier in [1u8, 4] {
        let stored = runtime.block_on(world.stored(tier));
        let mut by_device: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for entry in &stored {
            by_device
                .entry(entry.meta.device_id.as_str())
                .or_default()
                .push(entry.meta.id.clone());
        }
        for (device, want) in &expected {
            let want = want.get(&tier).cloned().unwrap_or_default();
            let got = by_device.remove(device).unwrap_or_default();
            assert_eq!(got, want, "{device} tier {tier}");
        }
        assert!(by_device.is_empty(), "unknown devices: {by_device:?}");
    }
    runtime.block_on(async {
        for agent in slow {
            agent.close().await.unwrap();
        }
        if let Ok(quick) = Arc::try_unwrap(quick) {
            quick.close().await.unwrap();
        }
    });
}
