//! Tier-aware back-pressure: as the sync store fills up, low tiers wait so tier 1 keeps the
//! headroom.
//!
//! The signal is `used_memory / maxmemory` of the mobile_sync Redis, read with `INFO` at most
//! once per check interval (one request refreshes it, the others use the last reading), plus the
//! hard signal: Redis answered `OOM` to a write, which counts as full until the next reading.
//! Tier 1 is never refused by a watermark; it is refused only when Redis itself refuses.
//! Refusing is always a transient 503 with `Retry-After`, never a `rejected` outcome, so a
//! device keeps the items and sends them later: nothing is lost.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kryonix_protocol::Tier;

use crate::config::BackpressureConfig;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    /// `None`: the store has no memory limit (or is the embedded store).
    pressure: Option<f64>,
}

/// The shared pressure gauge.
#[derive(Debug)]
pub struct Backpressure {
    config: BackpressureConfig,
    last: Mutex<Option<Reading>>,
    refreshing: AtomicBool,
}

/// Whether a batch may go on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    Admit,
    Refuse { retry_after: Duration },
}

impl Backpressure {
    pub fn new(config: BackpressureConfig) -> Self {
        Self {
            config,
            last: Mutex::new(None),
            refreshing: AtomicBool::new(false),
        }
    }

    /// The fill level above which `tier` is refused (tier 1: never, by a watermark).
    pub fn watermark(&self, tier: Tier) -> f64 {
        let [t2, t3, t4] = self.config.watermarks;
        match tier {
            Tier::Critical => f64::INFINITY,
            Tier::Preferences => t2,
            Tier::Application => t3,
            Tier::Background => t4,
        }
    }

    /// How long a refused tier should wait: lower tiers wait longer, so they come back after
    /// the more important ones.
    pub fn retry_after(tier: Tier) -> Duration {
        Duration::from_secs(match tier {
            Tier::Critical => 1,
            Tier::Preferences => 5,
            Tier::Application => 15,
            Tier::Background => 30,
        })
    }

    fn cached(&self) -> Option<Reading> {
        self.last.lock().ok().and_then(|guard| *guard)
    }

    fn store_reading(&self, pressure: Option<f64>) {
        if let Ok(mut guard) = self.last.lock() {
            *guard = Some(Reading {
                at: Instant::now(),
                pressure,
            });
        }
    }

    /// Redis refused a write for memory: treat the store as full until the next reading.
    pub fn mark_full(&self) {
        self.store_reading(Some(1.0));
    }

    /// The current fill level, refreshed when the last reading is older than the interval.
    pub async fn pressure(&self, store: &Store) -> Result<Option<f64>, StoreError> {
        let last = self.cached();
        let stale = last.is_none_or(|r| r.at.elapsed() >= self.config.check_interval);
        if !stale {
            return Ok(last.and_then(|r| r.pressure));
        }
        // One request refreshes; the others go on with the previous reading, if there is one.
        let claimed = self
            .refreshing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if let (false, Some(reading)) = (claimed, last) {
            return Ok(reading.pressure);
        }
        let result = store.memory_pressure().await;
        if claimed {
            self.refreshing.store(false, Ordering::Release);
        }
        let pressure = result?;
        self.store_reading(pressure);
        Ok(pressure)
    }

    /// Decides for a batch whose least important tier is `tier`.
    pub fn admit(&self, tier: Tier, pressure: Option<f64>) -> Admission {
        match pressure {
            Some(p) if p >= self.watermark(tier) => Admission::Refuse {
                retry_after: Self::retry_after(tier),
            },
            _ => Admission::Admit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_tiers_are_refused_first() {
        let bp = Backpressure::new(BackpressureConfig::default());
        let at = |p: f64| {
            Tier::ALL
                .iter()
                .map(|t| bp.admit(*t, Some(p)) == Admission::Admit)
                .collect::<Vec<_>>()
        };
        assert_eq!(at(0.5), [true, true, true, true]);
        assert_eq!(at(0.80), [true, true, true, false]);
        assert_eq!(at(0.90), [true, true, false, false]);
        assert_eq!(at(0.97), [true, false, false, false]);
        assert_eq!(at(1.5), [true, false, false, false]);
        assert_eq!(bp.admit(Tier::Background, None), Admission::Admit);
    }
}
