//! What encryption at rest costs: cache `get` (hit) and outbox `enqueue` on SQLCipher-encrypted
//! stores against the same calls on plaintext stores, in one run.
//!
//! Every store is opened by `Store::open` in this same build (SQLCipher linked; a plaintext store
//! simply has no key, which is how SQLCipher runs an unkeyed database), with the same schema, WAL
//! and `synchronous = NORMAL`. The cache side holds 20 000 values of 1 KiB (stored as they are);
//! the outbox side, on its own files, takes 256-byte payloads and is drained between rounds.
//!
//! SQLCipher decrypts a page when SQLite loads it into its page cache (2 MiB per connection by
//! default) and encrypts it when it is written, so two reads are measured: `hot` cycles over
//! 500 keys whose pages (≈ 0.7 MiB) stay in the page cache, `cold` strides over 20 000 others
//! (≈ 25 MiB), so nearly every read loads a page (from the OS cache) and, encrypted, decrypts and
//! authenticates it.
//!
//! criterion reports each side; the closing lines print ratios (encrypted / plain time per call)
//! from interleaved rounds in this same process, so machine noise hits both sides alike.
//!
//! `cargo bench -p kryonix-core --features encryption --bench encryption`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code: a failure should stop loudly

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use kryonix_core::cache::{Cache, CacheConfig, Expiry};
use kryonix_core::{
    EncryptionKey, NewItem, Outbox, OutboxConfig, Store, StoreOptions, SystemClock, TierSet,
};
use kryonix_protocol::wire::Op;
use kryonix_protocol::{Namespace, TenantId, TenantKey, Tier};

/// 1 KiB: at the compression threshold, so stored as it is.
const VALUE: [u8; 1024] = [0x5a; 1024];
const PAYLOAD: [u8; 256] = [0x5a; 256];
/// Keys read over and over (`hot:{i}`: neighbours in the table and in the key index), and keys
/// read in a stride (`cold:{i}`).
const HOT_KEYS: usize = 500;
const COLD_KEYS: usize = 20_000;

/// One side of the comparison: a cache and an outbox, each on its own file, so the outbox's
/// churn never changes what the cache reads.
struct Side {
    cache: Cache,
    hot: Vec<TenantKey>,
    cold: Vec<TenantKey>,
    outbox: Outbox,
}

fn side(dir: &tempfile::TempDir, name: &str, key: Option<EncryptionKey>) -> Side {
    let open = |file: String| {
        let options = StoreOptions {
            key: key.clone(),
            ..StoreOptions::default()
        };
        Arc::new(Store::open(dir.path().join(file), &options).unwrap())
    };
    let tenant = TenantId::new("acme").unwrap();
    let config = CacheConfig {
        // Room for every key: nothing is evicted.
        device_budget_bytes: 1 << 40,
        ..CacheConfig::default()
    };
    let cache = Cache::open(
        open(format!("cache-{name}.db")),
        Arc::new(SystemClock),
        config,
    )
    .unwrap();
    let outbox = Outbox::open(
        open(format!("outbox-{name}.db")),
        Arc::new(SystemClock),
        OutboxConfig::new(tenant.clone()),
    )
    .unwrap();
    let keys = |prefix: &str, n: usize| -> Vec<TenantKey> {
        (0..n)
            .map(|i| {
                TenantKey::new(&tenant, Namespace::UserCache, &format!("{prefix}:{i:05}")).unwrap()
            })
            .collect()
    };
    let (hot, cold) = (keys("hot", HOT_KEYS), keys("cold", COLD_KEYS));
    for k in hot.iter().chain(&cold) {
        cache.put(k, &VALUE, Expiry::Never).unwrap();
    }
    Side {
        cache,
        hot,
        cold,
        outbox,
    }
}

fn read(s: &Side, key: &TenantKey) {
    let value = s.cache.get(key).unwrap();
    assert_eq!(black_box(value).map(|v| v.len()), Some(VALUE.len()));
}

fn get_hot(s: &Side, i: usize) {
    read(s, &s.hot[i % HOT_KEYS]);
}

/// A stride through the cold keys (7 919 is prime, so coprime with `COLD_KEYS`): no two
/// neighbouring calls share a page.
fn get_cold(s: &Side, i: usize) {
    read(s, &s.cold[i.wrapping_mul(7_919) % COLD_KEYS]);
}

fn enqueue_1(s: &Side, _: usize) {
    black_box(
        s.outbox
            .enqueue(
                Namespace::UserCache,
                "profile:42",
                Op::Put,
                &PAYLOAD,
                Tier::Critical,
            )
            .unwrap(),
    );
}

fn enqueue_100(s: &Side, _: usize) {
    let items = vec![
        NewItem {
            namespace: Namespace::UserCache,
            key: "profile:42",
            op: Op::Put,
            payload: &PAYLOAD,
            tier: Tier::Critical,
        };
        100
    ];
    black_box(s.outbox.enqueue_many(&items).unwrap());
}

/// Drains the outbox between rounds, so both sides enqueue into a queue of the same size.
fn drain(s: &Side) {
    loop {
        let batch = s.outbox.next_batch(1_000, TierSet::ALL).unwrap();
        if batch.is_empty() {
            break;
        }
        let ids: Vec<_> = batch.iter().map(|item| item.id).collect();
        s.outbox.ack(&ids).unwrap();
    }
}

type Call = fn(&Side, usize);

/// (name, call, calls per ratio round)
type Calls = [(&'static str, Call, usize); 2];

const GETS: Calls = [
    ("cache_get_hit_1k_hot", get_hot, 20_000),
    ("cache_get_hit_1k_cold", get_cold, 3_000),
];
const ENQUEUES: Calls = [
    ("enqueue_1_per_txn", enqueue_1, 2_000),
    ("enqueue_100_per_txn", enqueue_100, 40),
];

fn bench(c: &mut Criterion, calls: &Calls, plain: &Side, encrypted: &Side) {
    for &(name, call, _) in calls {
        let mut group = c.benchmark_group(name);
        let mut i = 0usize;
        for (label, s) in [("plain", plain), ("encrypted", encrypted)] {
            group.bench_function(label, |b| {
                b.iter(|| {
                    i += 1;
                    call(s, i)
                })
            });
        }
        group.finish();
        drain(plain);
        drain(encrypted);
    }
}

/// Nanoseconds per call over `n` calls.
fn per_call(n: usize, s: &Side, call: Call) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        call(s, i);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn ratios(calls: &Calls, plain: &Side, encrypted: &Side) {
    println!(
        "\nratios (interleaved rounds, median of 7; encrypted / plain time per call, 1.00 = free):"
    );
    for &(name, call, n) in calls {
        let mut samples = Vec::new();
        for round in 0..7 {
            // Alternate which side goes first so neither always runs on a warmer machine.
            let (e, p) = if round % 2 == 0 {
                let p = per_call(n, plain, call);
                (per_call(n, encrypted, call), p)
            } else {
                let e = per_call(n, encrypted, call);
                (e, per_call(n, plain, call))
            };
            samples.push((e / p, e, p));
            drain(plain);
            drain(encrypted);
        }
        samples.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (ratio, e, p) = samples[3];
        println!(
            "  {name}: plain {:>8.2} µs, encrypted {:>8.2} µs, ratio {ratio:.2}",
            p / 1000.0,
            e / 1000.0
        );
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let plain = side(&dir, "plain", None);
    let encrypted = side(&dir, "encrypted", Some(EncryptionKey::new([0x42; 32])));
    let mut criterion = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    // Every read is measured before the outbox churns: SQLite's page cache is one LRU for the
    // whole process in this build (SQLITE_ENABLE_MEMORY_MANAGEMENT), and after hundreds of
    // thousands of items went through the other files even the hot reads missed it
    // (docs/benchmarks.md).
    ratios(&GETS, &plain, &encrypted);
    bench(&mut criterion, &GETS, &plain, &encrypted);
    bench(&mut criterion, &ENQUEUES, &plain, &encrypted);
    criterion.final_summary();
    ratios(&ENQUEUES, &plain, &encrypted);
}
