//! Per-access cost of the eviction policies (`kryonix_core::policy`) on one skewed stream, in one
//! run: each policy replays the same 200 000 accesses over 20 000 keys (Zipf, s = 0.9, seeded)
//! at a capacity of 2 000 entries. criterion reports each policy; the closing lines print each
//! one's cost against LRU's, measured in interleaved rounds in this same process. Target: the
//! adaptive policy within 1.2× of LRU.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code: a failure should stop loudly

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use kryonix_core::policy::{Entry, Kind, Policy};

const KEYS: usize = 20_000;
const ACCESSES: usize = 200_000;
const CAPACITY: u64 = 2_000;
const POLICIES: [Kind; 4] = [Kind::Lru, Kind::Adaptive, Kind::Arc, Kind::Lfu];

/// A Zipf stream from a fixed-seed generator: rank r drawn with weight 1 / r^0.9, by binary
/// search in the cumulative weights.
fn stream() -> Vec<u64> {
    let mut cumulative = Vec::with_capacity(KEYS);
    let mut sum = 0.0;
    for rank in 1..=KEYS {
        sum += 1.0 / (rank as f64).powf(0.9);
        cumulative.push(sum);
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..ACCESSES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let point = (state >> 11) as f64 / (1u64 << 53) as f64 * sum;
            // Keys are scattered so that rank order is not hash order.
            let rank = cumulative.partition_point(|&c| c < point) as u64;
            rank.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        })
        .collect()
}

/// Replays the stream through a fresh policy; returns the hits (so nothing is optimised away).
fn replay(kind: Kind, keys: &[u64]) -> usize {
    let mut policy: Box<dyn Policy<u64>> = kind.build(CAPACITY);
    let mut evicted = Vec::new();
    let mut hits = 0;
    for &key in keys {
        evicted.clear();
        hits += usize::from(policy.access(key, Entry::UNIT, &mut evicted));
    }
    hits
}

fn per_access(kind: Kind, keys: &[u64]) -> f64 {
    let start = Instant::now();
    black_box(replay(kind, black_box(keys)));
    start.elapsed().as_nanos() as f64 / keys.len() as f64
}

fn main() {
    let keys = stream();
    let mut criterion = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    for kind in POLICIES {
        criterion.bench_function(&format!("policy/{kind}/replay-200k"), |b| {
            b.iter(|| replay(kind, black_box(&keys)));
        });
    }
    criterion.final_summary();

    println!("\nper access against LRU (interleaved rounds, median of 7):");
    for kind in POLICIES {
        let hit_ratio = replay(kind, &keys) as f64 / keys.len() as f64;
        let mut samples: Vec<(f64, f64)> = (0..7)
            .map(|round| {
                let (lru, other) = if round % 2 == 0 {
                    let lru = per_access(Kind::Lru, &keys);
                    (lru, per_access(kind, &keys))
                } else {
                    let other = per_access(kind, &keys);
                    (per_access(Kind::Lru, &keys), other)
                };
                (other / lru, other)
            })
            .collect();
        samples.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (ratio, ns) = samples[3];
        let target = if kind == Kind::Adaptive {
            " (target <= 1.20)"
        } else {
            ""
        };
        println!(
            "  {:<9} {ns:>6.1} ns/access, ratio {ratio:.2}{target}, hit ratio {:.1} %",
            kind.name(),
            100.0 * hit_ratio
        );
    }
}
