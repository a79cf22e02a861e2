//! The rate-limit rule both stores share: GCRA arithmetic per subject, and the verdict from the
//! tenant's and the device's waits. The Redis store runs the same arithmetic in its Lua script
//! (on Redis's clock); the embedded store calls [`gcra`] directly.

use std::time::Duration;

/// Rates to enforce on one request (0 = unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    pub tenant_per_sec: u32,
    pub device_per_sec: u32,
}

/// Outcome of a rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allowed,
    Limited {
        scope: &'static str,
        retry_after: Duration,
    },
}

/// GCRA in microseconds: the arithmetic of the Redis store's rate script
/// (`redis/scripts/rate.lua`), in Rust for the embedded store, so both stores limit alike.
///
/// `interval` is `1 s / per_sec` in whole microseconds and the burst is `per_sec` requests (one
/// second's worth). `tat` is the theoretical arrival time; a stored `tat` in the past counts as
/// `now`. A request at `now` is allowed when `tat + interval - burst * interval <= now`, that is
/// when `tat` is at most `burst - 1` intervals ahead of `now`: from idle, `per_sec` requests pass
/// at once, then one per interval. An allowed request moves `tat` one interval on.
///
/// Returns the wait until the request would be allowed (zero when allowed) and the `tat` to
/// store: moved on when allowed, unchanged when refused, so a refused request costs nothing. The
/// script reads `per_sec` 0 as unlimited; here it is read as 1, and callers skip unlimited
/// subjects before calling, as the embedded store does.
pub fn gcra(now_us: i64, tat_us: Option<i64>, per_sec: u32) -> (i64, i64) {
    let interval = 1_000_000 / i64::from(per_sec.max(1));
    let burst = i64::from(per_sec.max(1));
    let tat = tat_us.unwrap_or(now_us).max(now_us);
    let new_tat = tat + interval;
    let allow_at = new_tat - burst * interval;
    if now_us < allow_at {
        (allow_at - now_us, tat)
    } else {
        (0, new_tat)
    }
}

/// The verdict from the tenant's and the device's waits (µs): limited by whichever is longer.
pub(crate) fn decision(tenant_wait_us: i64, device_wait_us: i64) -> RateDecision {
    let micros = |w: i64| Duration::from_micros(u64::try_from(w).unwrap_or(0));
    if tenant_wait_us > 0 && tenant_wait_us >= device_wait_us {
        RateDecision::Limited {
            scope: "tenant",
            retry_after: micros(tenant_wait_us),
        }
    } else if device_wait_us > 0 {
        RateDecision::Limited {
            scope: "device",
            retry_after: micros(device_wait_us),
        }
    } else {
        RateDecision::Allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_a_burst_then_spaces_requests() {
        let per_sec = 4;
        let mut tat = None;
        let now = 1_000_000_000;
        for _ in 0..4 {
            let (wait, t) = gcra(now, tat, per_sec);
            assert_eq!(wait, 0);
            tat = Some(t);
        }
        let (wait, same) = gcra(now, tat, per_sec);
        assert_eq!(wait, 250_000);
        assert_eq!(Some(same), tat, "a refused request does not move the state");
        let (wait, _) = gcra(now + 250_000, tat, per_sec);
        assert_eq!(wait, 0);
    }

    #[test]
    fn rate_decisions_name_the_tighter_scope() {
        assert_eq!(decision(0, 0), RateDecision::Allowed);
        assert!(matches!(
            decision(5, 0),
            RateDecision::Limited {
                scope: "tenant",
                ..
            }
        ));
        assert!(matches!(
            decision(0, 5),
            RateDecision::Limited {
                scope: "device",
                ..
            }
        ));
    }
}
