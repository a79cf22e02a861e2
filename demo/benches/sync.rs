//! Sync benchmarks of issue 4, each printed with the baseline it is compared against.
//!
//! 1. Drain: 10 000 items queued offline, then the device comes back online: time until the
//!    server has acknowledged all of them (loopback; target < 2 s).
//! 2. Tier-1 latency: enqueue one critical item and ask for a sync; time until the server
//!    acknowledged it (p50 / p99 over 300 samples).
//! 3. Wake-ups per simulated hour with all four tiers busy, by driving the sans-I/O engine with a
//!    manual clock (target ≤ 60, against 77 for one timer per tier).
//! 4. Bytes on the wire per item, gzip on against off, for the same batch.
//!
//! Runs on the server's embedded store; set `KRYONIX_REDIS_URL` to measure against a Redis you
//! started (e.g. `redis-server --port 6390 --save '' --appendonly yes`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code: fail loudly

use std::sync::Arc;
use std::time::{Duration, Instant};

use kryonix_core::cache::codec;
use kryonix_core::clock::ManualClock;
use kryonix_core::outbox::{NewItem, OutboxConfig, TierSet};
use kryonix_core::sync::{Action, EngineConfig, Event, StaticToken, SyncEngine, step};
use kryonix_core::{Agent, AgentConfig, Outbox, Store, StoreOptions};
use kryonix_demo::DemoServer;
use kryonix_protocol::wire::{ItemOutcome, Op, PushItem, PushRequest, PushResponse, PushResult};
use kryonix_protocol::{Encoding, Namespace, NetworkProfile, TenantId, Tier};

/// A note edit: realistic JSON with per-item ids and text, so compression is not flattered by
/// identical payloads.
fn payload(i: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "milk", "eggs", "bread", "coffee", "rice", "apples", "tea", "soap", "pasta", "salt",
        "beans", "lemons",
    ];
    let list: Vec<&str> = (0..5)
        .map(|k| WORDS[(i * 7 + k * 5) % WORDS.len()])
        .collect();
    format!(
        r#"{{"id":"{}","rev":{},"title":"List {i}","body":"{}","updated_by":"device-{}","at":{}}}"#,
        uuid::Uuid::now_v7(),
        i % 97,
        list.join(", "),
        i % 13,
        1_764_000_000_000u64 + (i as u64) * 7919
    )
    .into_bytes()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn agent(server: &DemoServer, dir: &std::path::Path, name: &str) -> Agent {
    let tenant = TenantId::new("bench").unwrap();
    let token = server.device_token(&tenant, name).unwrap();
    let mut config = AgentConfig::new(dir.join(format!("{name}.db")), server.url(), tenant);
    config.profile.network = NetworkProfile::OFFLINE;
    Agent::open(
        config,
        Arc::new(StaticToken(token)),
        None,
        &tokio::runtime::Handle::current(),
    )
    .unwrap()
}

async fn drain(server: &DemoServer, dir: &std::path::Path) {
    let agent = agent(server, dir, "drain");
    let payloads: Vec<Vec<u8>> = (0..10_000).map(payload).collect();
    let keys: Vec<String> = (0..10_000).map(|i| format!("note:{i}")).collect();
    let items: Vec<NewItem<'_>> = (0..10_000)
        .map(|i| NewItem {
            namespace: Namespace::UserCache,
            key: &keys[i],
            op: Op::Put,
            payload: &payloads[i],
            tier: Tier::ALL[i % 4],
        })
        .collect();
    for chunk in items.chunks(1000) {
        agent.outbox().enqueue_many(chunk).unwrap();
    }
    let started = Instant::now();
    agent.set_network(NetworkProfile::WIFI).unwrap();
    let report = agent.sync_now(TierSet::ALL).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(report.remaining, 0, "not drained: {report:?}");
    println!(
        "drain: 10 000 items after reconnect in {} ms ({:.0} items/s); target < 2000 ms",
        elapsed.as_millis(),
        10_000.0 / elapsed.as_secs_f64()
    );
    agent.close().await.unwrap();
}

async fn tier1_latency(server: &DemoServer, dir: &std::path::Path) {
    let agent = agent(server, dir, "latency");
    agent.set_network(NetworkProfile::WIFI).unwrap();
    let mut samples = Vec::new();
    for i in 0..300 {
        let started = Instant::now();
        agent
            .enqueue(
                Namespace::UserCache,
                &format!("k{i}"),
                Op::Put,
                &payload(i),
                Tier::Critical,
            )
            .unwrap();
        let report = agent
            .sync_now(TierSet::of(&[Tier::Critical]))
            .await
            .unwrap();
        assert_eq!(report.remaining, 0);
        samples.push(started.elapsed());
    }
    samples.sort();
    println!(
        "tier-1 enqueue-to-stored latency (sync asked at once): p50 {:.2} ms, p99 {:.2} ms over {} samples",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.len()
    );
    agent.close().await.unwrap();
}

fn wakeups_per_hour(dir: &std::path::Path) {
    let clock = ManualClock::new(1_000_000);
    let store = Arc::new(Store::open(dir.join("sim.db"), &StoreOptions::default()).unwrap());
    let outbox = Outbox::open(
        store,
        Arc::new(clock.clone()),
        OutboxConfig::new(TenantId::new("bench").unwrap()),
    )
    .unwrap();
    let config = EngineConfig {
        pull: false,
        ..EngineConfig::default()
    };
    let start = kryonix_core::Clock::now_ms(&clock);
    let mut engine = SyncEngine::new(config, start);
    step(
        &mut engine,
        &outbox,
        start,
        Event::NetworkChanged(NetworkProfile::WIFI),
    )
    .unwrap();
    // Every tier stays busy: one new item per tier every 10 s of simulated time.
    let mut next_enqueue = start;
    let mut sleep_until: Option<i64> = None;
    let end = start + 3_600_000;
    loop {
        let now = kryonix_core::Clock::now_ms(&clock);
        if now >= end {
            break;
        }
        let mut events = Vec::new();
        if now >= next_enqueue {
            for tier in Tier::ALL {
                outbox
                    .enqueue(Namespace::ApiCache, "k", Op::Event, b"e", tier)
                    .unwrap();
                events.push(Event::Enqueued(tier));
            }
            next_enqueue += 10_000;
        }
        events.push(Event::Tick);
        while let Some(event) = events.pop() {
            for action in step(&mut engine, &outbox, now, event).unwrap().actions {
                match action {
                    Action::Push { tier, limit } => {
                        let items = outbox.next_batch(limit, TierSet::of(&[tier])).unwrap();
                        events.push(Event::PushAnswered {
                            sent: items.iter().map(|i| i.id).collect(),
                            response: PushResponse {
                                results: items
                                    .iter()
                                    .map(|i| PushResult {
                                        id: i.id.to_string(),
                                        outcome: ItemOutcome::Accepted,
                                    })
                                    .collect(),
                                last_seq: [0; 4],
                            },
                            elapsed: Duration::from_millis(40),
                            bytes: 1_000,
                            raw_bytes: 3_000,
                        });
                    }
                    // A simulated server that has never seen this producer.
                    Action::Hello => events.push(Event::HelloAnswered { last_seq: [0; 4] }),
                    Action::SleepUntil(at) => sleep_until = at,
                    _ => {}
                }
            }
        }
        let next = sleep_until.unwrap_or(end).min(next_enqueue).max(now + 1);
        clock.set(next);
    }
    let wakeups = engine.status().wakeups;
    let per_tier_timers: u64 = Tier::ALL.iter().map(|t| 3600 / t.cadence().as_secs()).sum();
    println!(
        "wake-ups per simulated hour, all tiers busy: {wakeups} (one timer per tier: {per_tier_timers}; ratio {:.2}); target <= 60",
        wakeups as f64 / per_tier_timers as f64
    );
}

fn wire_bytes() {
    let items: Vec<PushItem> = (0..100)
        .map(|i| PushItem {
            id: uuid::Uuid::now_v7().to_string(),
            seq: i as u64 + 1,
            tier: 1,
            namespace: "user_cache".into(),
            key: format!("note:{i}"),
            op: Op::Put,
            payload: payload(i),
            encoding: Encoding::Identity,
            created_at_ms: 1_764_000_000_000,
        })
        .collect();
    let json = serde_json::to_vec(&PushRequest {
        producer: uuid::Uuid::now_v7().simple().to_string(),
        items,
    })
    .unwrap();
    let gzip = codec::encode(Encoding::Gzip, &json).unwrap();
    println!(
        "bytes on the wire per item (100-item push of ~150-byte JSON payloads): {:.0} plain, {:.0} gzip (ratio {:.2})",
        json.len() as f64 / 100.0,
        gzip.len() as f64 / 100.0,
        gzip.len() as f64 / json.len() as f64
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let redis_url = std::env::var("KRYONIX_REDIS_URL").ok();
        let server = DemoServer::start(redis_url, dir.path()).await.unwrap();
        println!("server store: {}", server.store_kind);
        drain(&server, dir.path()).await;
        tier1_latency(&server, dir.path()).await;
        server.stop().await;
    });
    wakeups_per_hour(dir.path());
    wire_bytes();
}
