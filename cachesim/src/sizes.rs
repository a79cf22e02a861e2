//! Entry sizes for the byte-hit-ratio workload: each key's size drawn once from a log-normal
//! distribution, seeded, so every policy sees the same sizes.
//!
//! The default shape — median 1.5 KiB, σ = 1.2, clamped to 64 B…1 MiB — is that of JSON API
//! responses: most a few hundred bytes to a few KiB, a long tail of large lists.

use std::collections::HashMap;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, LogNormal};

/// The smallest and largest sizes drawn.
const MIN_SIZE: u64 = 64;
const MAX_SIZE: u64 = 1 << 20;

/// Each key's size.
#[derive(Debug, Clone)]
pub struct Sizes {
    sizes: HashMap<u64, u64>,
}

impl Sizes {
    /// Sizes for the distinct keys of `keys`, in first-access order, from `seed`: a
    /// log-normal with the given median (bytes) and σ.
    pub fn log_normal(
        keys: &[u64],
        seed: u64,
        median: f64,
        sigma: f64,
    ) -> Result<Self, rand_distr::NormalError> {
        let mut rng = StdRng::seed_from_u64(seed);
        let dist = LogNormal::new(median.max(1.0).ln(), sigma)?;
        let mut sizes = HashMap::new();
        for &key in keys {
            sizes.entry(key).or_insert_with(|| {
                (dist.sample(&mut rng).round() as u64).clamp(MIN_SIZE, MAX_SIZE)
            });
        }
        Ok(Self { sizes })
    }

    /// The size of `key` (1 for a key the model has never seen).
    pub fn of(&self, key: u64) -> u64 {
        self.sizes.get(&key).copied().unwrap_or(1)
    }

    /// The total size of all keys.
    pub fn total(&self) -> u64 {
        self.sizes.values().sum()
    }
}
