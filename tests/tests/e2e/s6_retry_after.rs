//! Scenario 6: `429` and `503` answers carry `Retry-After`, and the device sends nothing before
//! the hint has passed — on any connection, for any tier.
//!
//! The agent's own in-call backoff starts at 200 ms here (see the harness), well below the
//! hints, so a device that ignored them would be caught. Request and answer times are taken at
//! the proxy, between device and server: an answer seen at `t` reaches the device after `t`, and
//! a request seen at `t'` left the device before `t'`, so `t' - t >= hint` is a sound check.
//!
//! - 429: the real rate limiter, one request per second for the device.
//! - 503: the real tier-aware back-pressure — Redis with a `maxmemory` and watermarks set so
//!   tiers 2–4 are refused (`Retry-After: 5` for tier 2) while tier 1 keeps flowing; then the
//!   server restarts with normal watermarks and tier 2 drains.

use std::sync::Arc;
use std::time::Duration;

use kryonix_core::TierSet;
use kryonix_e2e::{Exchange, Proxy, RedisOptions, ServerOptions, wait_for};
use kryonix_protocol::{NetworkProfile, Tier};
use kryonix_server::config::TenantPolicy;

use crate::support::{Expected, TENANT, World, drain, enqueue};

/// No request left the device before an earlier answer's `Retry-After` had passed.
fn assert_hints_honoured(log: &[Exchange]) -> usize {
    let mut hints = 0;
    for answer in log {
        let (Some(at), Some(secs)) = (answer.answered_at, answer.retry_after) else {
            continue;
        };
        hints += 1;
        let hint = Duration::from_secs(secs);
        for next in log.iter().filter(|x| x.sent_at > at) {
            let gap = next.sent_at - at;
            assert!(
                gap >= hint,
                "{:?} sent {gap:?} after a {} with Retry-After {secs}",
                next.request_line,
                answer.status.unwrap_or_default()
            );
        }
    }
    hints
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_429_is_honoured() {
    let mut world = World::new(RedisOptions::default(), |config| {
        config.tenants.insert(
            TENANT.to_owned(),
            TenantPolicy {
                rate_per_sec: 0,
                device_rate_per_sec: 1,
                ..TenantPolicy::default()
            },
        );
    })
    .await;
    let proxy = Proxy::start(world.server.addr()).await.unwrap();
    let agent = world.agent("phone-6a", world.config("phone-6a", &proxy.url()), None);
    let expected = enqueue(&agent, 300, &[Tier::Critical], "s6a");

    agent.set_network(NetworkProfile::WIFI).unwrap();
    // A call that meets a 429 before sending anything says so (retryable); asking again waits
    // for the Retry-After, so a few calls drain the queue.
    let mut remaining = u64::MAX;
    for _ in 0..10 {
        match agent.sync_now(TierSet::ALL).await {
            Ok(report) => remaining = report.remaining,
            Err(e) => assert!(e.is_retryable(), "{e:?}"),
        }
        if remaining == 0 {
            break;
        }
    }
    assert_eq!(remaining, 0);
    world.assert_exactly_once(&expected).await;

    let log = proxy.exchanges();
    let limited = log.iter().filter(|e| e.status == Some(429)).count();
    assert!(limited >= 1, "the rate limit never answered 429: {log:#?}");
    assert!(assert_hints_honoured(&log) >= limited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_503_is_honoured_and_tier_1_keeps_flowing() {
    let redis = RedisOptions {
        maxmemory: Some("16mb".into()),
        ..RedisOptions::default()
    };
    let mut world = World::new(redis, |config| {
        // Any real Redis uses more than 1 % of 16 MB: tiers 2–4 are always refused.
        config.backpressure.watermarks = [0.01, 0.01, 0.01];
        config.backpressure.check_interval = Duration::from_millis(10);
    })
    .await;
    let proxy = Proxy::start(world.server.addr()).await.unwrap();
    let agent = Arc::new(world.agent("phone-6b", world.config("phone-6b", &proxy.url()), None));
    // 150 tier-1 items first: not a whole number of batches, so the device's batches must not
    // mix the tier-1 tail with tier-2 items, or tier 1 would be refused with them.
    let mut expected = enqueue(&agent, 150, &[Tier::Critical], "s6b-t1");
    expected.extend(enqueue(&agent, 100, &[Tier::Preferences], "s6b-t2"));

    agent.set_network(NetworkProfile::WIFI).unwrap();
    let syncing = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.sync_now(TierSet::ALL).await })
    };
    let refused = wait_for(Duration::from_secs(10), "a 503 for tier 2", || async {
        proxy
            .exchanges()
            .into_iter()
            .find(|e| e.status == Some(503))
    })
    .await
    .unwrap();
    assert_eq!(refused.retry_after, Some(5), "{refused:?}");
    // Tier 1 went through while tier 2 was refused.
    assert_eq!(world.stored(1).await.len(), 150);
    assert_eq!(world.stored(2).await.len(), 0);

    // Room again: the same server restarted with normal watermarks, same port.
    world
        .server
        .restart_with(ServerOptions::default_config())
        .await
        .unwrap();

    let remaining = drain(&agent, syncing.await.unwrap()).await;
    assert_eq!(remaining, 0);
    let expected: Expected = expected;
    world.assert_exactly_once(&expected).await;
    let log = proxy.exchanges();
    assert!(assert_hints_honoured(&log) >= 1);
}
