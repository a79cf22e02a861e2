//! What the server remembers of revocation lookups: the tokens it confirmed unrevoked lately.
//!
//! Every request looks its token's revocation up in Redis. When that lookup cannot be answered —
//! the shard holding the key is failing over, DB 1 restarts — a token confirmed unrevoked within
//! the last [`GRACE`] is let through, and any other token is refused (`503`). So a device that
//! was syncing rides through a failover of seconds, a new or unknown token does not, and a
//! revocation recorded during such an outage takes effect at most [`GRACE`] late for tokens that
//! were active just before it. While Redis answers, every request sees every revocation.
//!
//! Memory is bounded: at most [`CAPACITY`] tokens, the stale ones dropped first.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a confirmation stands in for a lookup that cannot be made.
pub const GRACE: Duration = Duration::from_secs(60);

/// Most tokens remembered (about 100 bytes each).
pub const CAPACITY: usize = 100_000;

/// Tokens (`tenant:jti`) confirmed unrevoked, and when.
#[derive(Debug, Default)]
pub struct Confirmed {
    seen: Mutex<HashMap<String, Instant>>,
}

impl Confirmed {
    /// The lookup answered "not revoked" at `now`.
    pub fn confirm(&self, key: String, now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= CAPACITY && !seen.contains_key(&key) {
            seen.retain(|_, at| now.saturating_duration_since(*at) < GRACE);
            if seen.len() >= CAPACITY {
                // All fresh: forget the oldest half rather than grow.
                let mut ages: Vec<Instant> = seen.values().copied().collect();
                ages.sort_unstable();
                let cutoff = ages[ages.len() / 2];
                seen.retain(|_, at| *at > cutoff);
            }
        }
        seen.insert(key, now);
    }

    /// The lookup answered "revoked": forget any confirmation.
    pub fn forget(&self, key: &str) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Whether the token was confirmed unrevoked within [`GRACE`] before `now`.
    pub fn recently(&self, key: &str, now: Instant) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .is_some_and(|at| now.saturating_duration_since(*at) < GRACE)
    }

    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confirmation_stands_for_the_grace_period_only() {
        let confirmed = Confirmed::default();
        let t0 = Instant::now();
        assert!(!confirmed.recently("acme:a", t0));
        confirmed.confirm("acme:a".into(), t0);
        assert!(confirmed.recently("acme:a", t0 + GRACE - Duration::from_millis(1)));
        assert!(!confirmed.recently("acme:a", t0 + GRACE));
        assert!(!confirmed.recently("globex:a", t0), "per tenant");
        confirmed.forget("acme:a");
        assert!(!confirmed.recently("acme:a", t0));
    }

    #[test]
    fn memory_stays_bounded() {
        let confirmed = Confirmed::default();
        let t0 = Instant::now();
        for i in 0..CAPACITY + 10 {
            let at = t0 + Duration::from_micros(i as u64);
            confirmed.confirm(format!("t:{i}"), at);
        }
        assert!(confirmed.len() <= CAPACITY, "{}", confirmed.len());
        // The newest are kept.
        let last = format!("t:{}", CAPACITY + 9);
        assert!(confirmed.recently(&last, t0 + Duration::from_secs(1)));
    }
}
