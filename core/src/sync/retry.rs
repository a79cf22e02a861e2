//! The one retry schedule of the device: how long a failed push waits before its next in-call
//! attempt (1 s, ×2, jitter, capped). The engine owns it; the outbox only stores the time it
//! picked, so a backoff survives an app restart.
//!
//! `backon` builds the delays (see `docs/adr/0001-retry-schedules-with-backon.md`); there is no
//! attempt limit here because an item is never dropped for running out of retries — the engine
//! moves a batch whose in-call retries are spent to its tier's next slot instead.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// An exponential schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrySchedule {
    pub min_delay: Duration,
    pub factor: f32,
    pub max_delay: Duration,
    pub jitter: bool,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_secs(1),
            factor: 2.0,
            max_delay: Duration::from_secs(60),
            jitter: true,
        }
    }
}

impl RetrySchedule {
    /// The wait after `failures` failed attempts in a row (1-based): the wait before attempt
    /// number `failures + 1`.
    pub fn delay(&self, failures: u32) -> Duration {
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_factor(self.factor)
            .with_max_delay(self.max_delay)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        let steps = usize::try_from(failures.saturating_sub(1)).unwrap_or(usize::MAX);
        // With no maximum number of times the iterator never ends; the cap is the fallback anyway.
        builder.build().nth(steps).unwrap_or(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_up_to_the_cap() {
        let schedule = RetrySchedule {
            jitter: false,
            ..RetrySchedule::default()
        };
        let delays: Vec<u64> = (1..=8).map(|n| schedule.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn jittered_delays_stay_within_bounds() {
        let schedule = RetrySchedule::default();
        for failures in 1..=12u32 {
            let base = (Duration::from_secs(1) * 2u32.pow(failures - 1)).min(schedule.max_delay);
            let d = schedule.delay(failures);
            assert!(
                d >= base && d <= base * 2,
                "after {failures} failures: {d:?} vs {base:?}"
            );
        }
    }
}
