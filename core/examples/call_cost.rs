//! The core side of `scripts/bench-bindings`: what one `Agent::enqueue`, one item of a 100-item
//! `Agent::enqueue_all` and one cache `get` of a hot key cost in Rust, on an encrypted database
//! (as apps open it), with no server. The script runs the same calls from Kotlin in the same
//! command and prints the ratios. Prints one `core <name> <µs>` line per figure (the median of
//! `ROUNDS` rounds).
//!
//! `cargo run --release -p kryonix-core --features encryption --example call_cost`

use std::sync::Arc;
use std::time::Instant;

use kryonix_core::cache::Expiry;
use kryonix_core::sync::StaticToken;
use kryonix_core::{Agent, AgentConfig, EncryptionKey, NewItem};
use kryonix_protocol::wire::Op;
use kryonix_protocol::{Namespace, TenantId, Tier};

const ROUNDS: usize = 3;
const WARMUP_ROUNDS: usize = 3;
const CALLS: usize = 2_000;
const BATCHES: usize = 20;
const BATCH: usize = 100;
const GETS: usize = 20_000;

fn micros_per(started: Instant, n: usize) -> f64 {
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _guard = runtime.enter();
    let dir = tempfile::tempdir()?;
    let mut config = AgentConfig::new(
        dir.path().join("bench.db"),
        "http://127.0.0.1:9",
        TenantId::new("acme")?,
    );
    config.encryption_key = Some(EncryptionKey::try_from(&[7u8; 32][..])?);
    let agent = Agent::open(
        config,
        Arc::new(StaticToken("t".into())),
        None,
        runtime.handle(),
    )?;
    let hot = agent.key(Namespace::UserCache, "hot")?;
    agent.cache().put(&hot, b"value", Expiry::Adaptive)?;

    let (mut enqueue, mut batched, mut get) = (Vec::new(), Vec::new(), Vec::new());
    // The first rounds warm up (page cache, statements) and are not counted, as on the JVM side.
    for round in 0..WARMUP_ROUNDS + ROUNDS {
        let started = Instant::now();
        for i in 0..CALLS {
            let key = format!("one-{round}-{i}");
            agent.enqueue(Namespace::UserCache, &key, Op::Put, b"v", Tier::Background)?;
        }
        let one = micros_per(started, CALLS);
        let keys: Vec<String> = (0..BATCH).map(|i| format!("many-{round}-{i}")).collect();
        let started = Instant::now();
        for _ in 0..BATCHES {
            let items: Vec<NewItem<'_>> = keys
                .iter()
                .map(|key| NewItem {
                    namespace: Namespace::UserCache,
                    key,
                    op: Op::Put,
                    payload: b"v",
                    tier: Tier::Background,
                })
                .collect();
            agent.enqueue_all(&items)?;
        }
        let per_item = micros_per(started, BATCHES * BATCH);
        let started = Instant::now();
        for _ in 0..GETS {
            let key = agent.key(Namespace::UserCache, "hot")?;
            std::hint::black_box(agent.cache().get(&key)?);
        }
        let read = micros_per(started, GETS);
        if round >= WARMUP_ROUNDS {
            enqueue.push(one);
            batched.push(per_item);
            get.push(read);
        }
    }
    println!("core enqueue {:.2}", median(enqueue));
    println!("core enqueue_all_item {:.2}", median(batched));
    println!("core get {:.2}", median(get));
    runtime.block_on(agent.close())?;
    Ok(())
}
