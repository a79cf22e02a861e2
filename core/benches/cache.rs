//! Cache `get` (hit) and `put` against hand-written prepared statements on the same table, in one
//! run, with 1 KiB values.
//!
//! Both sides use a database created by `Store::open` (same schema and indexes, WAL,
//! `synchronous = NORMAL`); the raw side drives it through its own connection with a prepared
//! `SELECT value ... WHERE full_key = ?` and a prepared upsert. criterion reports each side; the
//! closing lines print time ratios measured in interleaved rounds in this same process, so machine
//! noise hits both sides alike. Target: `get` ≤ 1.3× the raw SELECT.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code: a failure should stop loudly

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use kryonix_core::cache::{Cache, CacheConfig, Expiry};
use kryonix_core::{Clock, Store, StoreOptions, SystemClock};
use kryonix_protocol::{Namespace, TenantId, TenantKey};
use rusqlite::{Connection, params};

/// 1 KiB: at the compression threshold, so stored as it is on both sides.
const VALUE: [u8; 1024] = [0x5a; 1024];
const KEYS: usize = 1_000;

const RAW_GET: &str = "SELECT value FROM cache_entries WHERE full_key = ?1";
const RAW_PUT: &str = "INSERT INTO cache_entries \
     (full_key, tenant, namespace, value, encoding, raw_size, charged_bytes, created_at, expires_at, last_access, access_count) \
     VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7, ?8, ?7, 0) \
     ON CONFLICT (full_key) DO UPDATE SET value = excluded.value, raw_size = excluded.raw_size, \
     charged_bytes = excluded.charged_bytes, created_at = excluded.created_at, \
     expires_at = excluded.expires_at, last_access = excluded.last_access";

struct Sides {
    _dir: tempfile::TempDir,
    cache: Cache,
    raw: Connection,
    keys: Vec<TenantKey>,
}

fn sides() -> Sides {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(Store::open(dir.path().join("ours.db"), &StoreOptions::default()).unwrap());
    let cache = Cache::open(store, Arc::new(SystemClock), CacheConfig::default()).unwrap();
    drop(Store::open(dir.path().join("raw.db"), &StoreOptions::default()).unwrap());
    let raw = Connection::open(dir.path().join("raw.db")).unwrap();
    raw.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA temp_store=2;")
        .unwrap();
    let tenant = TenantId::new("acme").unwrap();
    let keys: Vec<_> = (0..KEYS)
        .map(|i| {
            TenantKey::new(&tenant, Namespace::UserCache, &format!("user:{i}:profile")).unwrap()
        })
        .collect();
    let s = Sides {
        _dir: dir,
        cache,
        raw,
        keys,
    };
    for i in 0..KEYS {
        ours_put(&s, i);
        raw_put(&s, i);
    }
    s
}

fn ours_get(s: &Sides, i: usize) {
    let value = s.cache.get(&s.keys[i % KEYS]).unwrap();
    assert_eq!(black_box(value).map(|v| v.len()), Some(VALUE.len()));
}

fn raw_get(s: &Sides, i: usize) {
    let mut stmt = s.raw.prepare_cached(RAW_GET).unwrap();
    let value: Vec<u8> = stmt
        .query_row([s.keys[i % KEYS].as_str()], |r| r.get(0))
        .unwrap();
    assert_eq!(black_box(value).len(), VALUE.len());
}

fn ours_put(s: &Sides, i: usize) {
    s.cache
        .put(&s.keys[i % KEYS], &VALUE, Expiry::Adaptive)
        .unwrap();
}

fn raw_put(s: &Sides, i: usize) {
    let key = &s.keys[i % KEYS];
    let now = SystemClock.now_ms();
    let mut stmt = s.raw.prepare_cached(RAW_PUT).unwrap();
    stmt.execute(params![
        key.as_str(),
        key.tenant(),
        i64::from(key.namespace().id()),
        &VALUE[..],
        VALUE.len() as i64,
        (VALUE.len() + key.as_str().len()) as i64,
        now,
        now + 1_800_000,
    ])
    .unwrap();
}

type Op = fn(&Sides, usize);

const PAIRS: [(&str, Op, Op); 2] = [
    ("cache_get_hit_1k", ours_get, raw_get),
    ("cache_put_1k", ours_put, raw_put),
];

fn bench(c: &mut Criterion, s: &Sides) {
    for (name, ours, raw) in PAIRS {
        let mut group = c.benchmark_group(name);
        let mut i = 0usize;
        group.bench_function("cache", |b| {
            b.iter(|| {
                i += 1;
                ours(s, i)
            })
        });
        group.bench_function("raw", |b| {
            b.iter(|| {
                i += 1;
                raw(s, i)
            })
        });
        group.finish();
    }
}

/// Nanoseconds per call of `f` over `n` calls.
fn per_op(n: usize, s: &Sides, f: Op) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        f(s, i);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn ratios(s: &Sides) {
    println!("\nratios (interleaved rounds, median of 7; < 1 means the cache is faster):");
    for ((name, ours, raw), (n, target)) in
        PAIRS.into_iter().zip([(20_000, Some(1.3)), (3_000, None)])
    {
        let mut samples = Vec::new();
        for round in 0..7 {
            // Alternate which side goes first so neither always runs on a warmer cache.
            let (o, r) = if round % 2 == 0 {
                let r = per_op(n, s, raw);
                (per_op(n, s, ours), r)
            } else {
                let o = per_op(n, s, ours);
                (o, per_op(n, s, raw))
            };
            samples.push((o / r, o, r));
        }
        samples.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (ratio, o, r) = samples[3];
        let target = target.map_or(String::new(), |t| format!(" (target <= {t:.2})"));
        println!(
            "  {name}: cache {:>7.2} µs, raw {:>7.2} µs, ratio {ratio:.2}{target}",
            o / 1000.0,
            r / 1000.0
        );
    }
    let stats = s.cache.stats();
    println!(
        "  cache's own latency stats: get p50 {:?} p99 {:?} ({} gets), put p50 {:?} p99 {:?} ({} puts)",
        stats.get_latency.p50,
        stats.get_latency.p99,
        stats.get_latency.count,
        stats.put_latency.p50,
        stats.put_latency.p99,
        stats.put_latency.count,
    );
}

/// Rows in the database `Cache::open` is timed on.
const OPEN_ROWS: usize = 50_000;

/// `Cache::open` on a file of `OPEN_ROWS` rows (it rebuilds every namespace's eviction policy
/// from the table) against the usage query alone, which is all an open did before the policies.
fn open_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open.db");
    drop(Store::open(&path, &StoreOptions::default()).unwrap());
    let mut raw = Connection::open(&path).unwrap();
    let tx = raw.transaction().unwrap();
    let tenant = TenantId::new("acme").unwrap();
    for i in 0..OPEN_ROWS {
        let ns = [
            Namespace::UserCache,
            Namespace::ApiCache,
            Namespace::Sessions,
        ][i % 3];
        let key = TenantKey::new(&tenant, ns, &format!("k{i}")).unwrap();
        tx.execute(
            "INSERT INTO cache_entries (full_key, tenant, namespace, value, encoding, raw_size, \
             charged_bytes, created_at, expires_at, last_access, access_count) \
             VALUES (?1, 'acme', ?2, x'00', 0, 1, ?3, 0, NULL, ?4, ?5)",
            params![
                key.as_str(),
                i64::from(ns.id()),
                1 + key.as_str().len() as i64,
                i as i64,
                (i % 7) as i64
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let median = |f: &mut dyn FnMut()| {
        let mut samples: Vec<f64> = (0..5)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        samples[2]
    };
    let open = median(&mut || {
        let store = Arc::new(Store::open(&path, &StoreOptions::default()).unwrap());
        let config = CacheConfig {
            device_budget_bytes: 1 << 30,
            ..CacheConfig::default()
        };
        black_box(Cache::open(store, Arc::new(SystemClock), config).unwrap());
    });
    let usage = median(&mut || {
        let sums: i64 = raw
            .query_row(
                "SELECT sum(n) FROM (SELECT namespace, count(*) AS n, sum(charged_bytes), \
                 sum(raw_size), sum(length(value)) FROM cache_entries GROUP BY namespace)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(sums as usize, OPEN_ROWS);
    });
    println!(
        "  Cache::open with {OPEN_ROWS} rows: {open:.1} ms (policies rebuilt), usage query alone {usage:.1} ms, ratio {:.1}",
        open / usage
    );
    // What the open cache holds in memory (mostly the policies): resident set before and
    // after, the first open's pages of the file aside (they are already mapped by the runs
    // above, and SQLite's page cache is bounded on its own).
    let store = Arc::new(Store::open(&path, &StoreOptions::default()).unwrap());
    let before = resident_bytes();
    let config = CacheConfig {
        device_budget_bytes: 1 << 30,
        ..CacheConfig::default()
    };
    let cache = Cache::open(store, Arc::new(SystemClock), config).unwrap();
    let grown = resident_bytes().saturating_sub(before);
    println!(
        "  resident set grown by the open: {:.1} MiB, {} bytes per row",
        grown as f64 / (1 << 20) as f64,
        grown / OPEN_ROWS as u64
    );
    drop(cache);
}

/// The process's resident set, from /proc (0 where there is none).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn main() {
    let s = sides();
    let mut criterion = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    bench(&mut criterion, &s);
    criterion.final_summary();
    ratios(&s);
    open_time();
}
