//! Scenario 1: a device offline enqueues 10 000 items across the four tiers; when it comes
//! online, every item is in Redis exactly once, and the tiers arrive in priority order — no
//! tier-4 item was stored before the last tier-1 item (nor any tier before the one above it).

use std::time::Instant;

use kryonix_core::TierSet;
use kryonix_protocol::{NetworkProfile, Tier};

use crate::support::{World, enqueue, total};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_offline_items_arrive_once_highest_tier_first() {
    let mut world = World::plain().await;
    let agent = world.agent(
        "phone-1",
        world.config("phone-1", &world.server.url()),
        None,
    );

    let expected = enqueue(&agent, 10_000, &Tier::ALL, "s1");
    assert_eq!(total(&expected), 10_000);

    // Offline: asking sends nothing and says why.
    let offline = agent.sync_now(TierSet::ALL).await.unwrap_err();
    assert!(offline.is_retryable(), "{offline:?}");
    assert!(offline.to_string().contains("offline"), "{offline}");
    assert_eq!(agent.outbox().stats().unwrap().depth(), 10_000);
    assert_eq!(world.stored_total().await, 0);

    let started = Instant::now();
    agent.set_network(NetworkProfile::WIFI).unwrap();
    let report = agent.sync_now(TierSet::ALL).await.unwrap();
    let drained = started.elapsed();
    assert_eq!(report.remaining, 0, "{report:?}");
    eprintln!("scenario 1: 10 000 items drained in {drained:?}");

    world.assert_exactly_once(&expected).await;

    // Priority order across tiers, by the Redis-assigned entry ids (milliseconds of Redis's
    // clock, one clock for all streams): the first entry of each tier is no earlier than the
    // last entry of the tier above.
    let mut last_above = None;
    for tier in 1..=4u8 {
        let entries = world.stored(tier).await;
        let first = entries.first().unwrap().position();
        let last = entries.last().unwrap().position();
        if let Some((above_tier, above_last)) = last_above {
            let (above_ms, _) = above_last;
            assert!(
                first.0 >= above_ms,
                "tier {tier} started at {first:?}, before the last tier-{above_tier} item at {above_last:?}"
            );
        }
        last_above = Some((tier, last));
    }
    let t1_last = world.stored(1).await.last().unwrap().position();
    let t4_first = world.stored(4).await.first().unwrap().position();
    assert!(t4_first.0 >= t1_last.0, "{t4_first:?} < {t1_last:?}");

    let status = agent.status();
    assert_eq!(status.items_sent, 10_000);
    agent.close().await.unwrap();
}
