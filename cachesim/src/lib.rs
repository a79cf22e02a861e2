//! The cache simulator behind `kryonix-cachesim`: reads public access traces, replays them
//! through the device's eviction policies (`kryonix_core::policy`, the code the cache runs) and
//! computes Belady's optimum as the ceiling.
//!
//! Traces are sequences of keys; every access is a read, and a miss is followed by an insert
//! (the policy may decline it). Entries weigh 1 unless a size model is given, which draws each
//! key's size once from a seeded log-normal distribution of JSON value sizes. [`through`]
//! replays a trace through the real SQLite-backed device cache instead, to show the two agree.

pub mod belady;
pub mod sizes;
pub mod through;
pub mod trace;

use kryonix_core::policy::{Entry, Policy};

pub use sizes::Sizes;
pub use trace::{Trace, TraceError};

/// What one replay counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// Accesses replayed.
    pub accesses: u64,
    /// Accesses that hit.
    pub hits: u64,
    /// Bytes requested (accesses when entries weigh 1).
    pub bytes: u64,
    /// Bytes served from the cache.
    pub hit_bytes: u64,
}

impl Outcome {
    /// Hits per access.
    pub fn hit_ratio(&self) -> f64 {
        ratio(self.hits, self.accesses)
    }

    /// Bytes served from the cache per byte requested.
    pub fn byte_hit_ratio(&self) -> f64 {
        ratio(self.hit_bytes, self.bytes)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Replays `keys` through `policy`, each key weighing its size in `sizes` (or 1).
pub fn replay(policy: &mut dyn Policy<u64>, keys: &[u64], sizes: Option<&Sizes>) -> Outcome {
    let mut outcome = Outcome::default();
    let mut evicted = Vec::new();
    for &key in keys {
        let weight = sizes.map_or(1, |sizes| sizes.of(key));
        let entry = Entry {
            weight,
            expires_at: None,
        };
        evicted.clear();
        let hit = policy.access(key, entry, &mut evicted);
        outcome.accesses += 1;
        outcome.bytes += weight;
        if hit {
            outcome.hits += 1;
            outcome.hit_bytes += weight;
        }
    }
    outcome
}

/// A synthetic trace: `accesses` draws from `keys` keys with Zipf popularity (exponent `s`),
/// seeded; key ranks are scattered so popularity is not key order.
pub fn zipf_trace(
    keys: u64,
    accesses: usize,
    s: f64,
    seed: u64,
) -> Result<Trace, rand_distr::ZipfError> {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let zipf = rand_distr::Zipf::new(keys.max(1) as f64, s)?;
    let keys = (0..accesses)
        .map(|_| (zipf.sample(&mut rng) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    Ok(Trace {
        name: format!("zipf-{s}"),
        keys,
    })
}

/// A capacity given as a share of the trace's distinct keys (or of their total size).
pub fn capacity(percent: f64, distinct: u64) -> u64 {
    ((distinct as f64 * percent / 100.0).round() as u64).max(1)
}
