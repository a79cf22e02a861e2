//! Outbox `enqueue` against a hand-written prepared INSERT into the same table, in one run.
//!
//! criterion reports each side; the closing lines print throughput ratios measured in
//! interleaved rounds in this same process (so machine noise hits both sides alike).
//! Target: enqueue ≥ 0.8× the raw insert throughput.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use kryonix_core::{NewItem, Outbox, OutboxConfig, Store, StoreOptions, SystemClock};
use kryonix_protocol::wire::Op;
use kryonix_protocol::{Namespace, TenantId, Tier};
use rusqlite::{Connection, params};
use uuid::Uuid;

const PAYLOAD: [u8; 256] = [0x5a; 256];

struct Sides {
    _dir: tempfile::TempDir,
    outbox: Outbox,
    raw: Connection,
}

fn sides() -> Sides {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(Store::open(dir.path().join("ours.db"), &StoreOptions::default()).unwrap());
    let outbox = Outbox::open(
        store,
        Arc::new(SystemClock),
        OutboxConfig::new(TenantId::new("acme").unwrap()),
    )
    .unwrap();
    // Same schema, same pragmas, driven by hand.
    drop(Store::open(dir.path().join("raw.db"), &StoreOptions::default()).unwrap());
    let raw = Connection::open(dir.path().join("raw.db")).unwrap();
    raw.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA temp_store=2;")
        .unwrap();
    Sides {
        _dir: dir,
        outbox,
        raw,
    }
}

fn raw_insert(conn: &mut Connection, n: usize) {
    let tx = conn.transaction().unwrap();
    {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO outbox (id, tier, namespace, key, op, payload, created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            )
            .unwrap();
        for _ in 0..n {
            stmt.execute(params![
                Uuid::now_v7().hyphenated().to_string(),
                1,
                2,
                "profile:42",
                "put",
                &PAYLOAD[..],
                1_764_000_000_000i64
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

fn ours(outbox: &Outbox, n: usize) {
    if n == 1 {
        black_box(
            outbox
                .enqueue(
                    Namespace::UserCache,
                    "profile:42",
                    Op::Put,
                    &PAYLOAD,
                    Tier::Critical,
                )
                .unwrap(),
        );
    } else {
        let items = vec![
            NewItem {
                namespace: Namespace::UserCache,
                key: "profile:42",
                op: Op::Put,
                payload: &PAYLOAD,
                tier: Tier::Critical,
            };
            n
        ];
        black_box(outbox.enqueue_many(&items).unwrap());
    }
}

fn bench(c: &mut Criterion) {
    let mut s = sides();
    for n in [1usize, 100] {
        let mut group = c.benchmark_group(format!("enqueue_{n}_per_txn"));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("outbox", n), |b| {
            b.iter(|| ours(&s.outbox, n))
        });
        group.bench_function(BenchmarkId::new("raw_insert", n), |b| {
            b.iter(|| raw_insert(&mut s.raw, n))
        });
        group.finish();
    }
}

/// Items per second of `f`, over `rounds` batches of `n`.
fn rate(rounds: usize, n: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..rounds {
        f();
    }
    (rounds * n) as f64 / start.elapsed().as_secs_f64()
}

fn ratios() {
    let mut s = sides();
    println!("\nratios (interleaved rounds, median of 7; > 1 means the outbox is faster):");
    for (n, rounds) in [(1usize, 2_000usize), (100, 60)] {
        let mut samples = Vec::new();
        for _ in 0..7 {
            let raw = rate(rounds, n, || raw_insert(&mut s.raw, n));
            let ours = rate(rounds, n, || ours(&s.outbox, n));
            samples.push((ours / raw, ours, raw));
        }
        samples.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (ratio, ours, raw) = samples[3];
        println!(
            "  enqueue, {n:>3} item(s) per transaction: outbox {ours:>9.0} items/s, raw {raw:>9.0} items/s, ratio {ratio:.2} (target >= 0.80)"
        );
    }
}

fn main() {
    let mut criterion = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    ratios();
}
