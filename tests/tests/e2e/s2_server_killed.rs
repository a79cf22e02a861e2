//! Scenario 2: the server is killed in the middle of the drain — at the worst moment, after it
//! stored a batch and before the device heard so — and restarted on the same port. The device
//! sends that batch again (answered `duplicate`), carries on, and every item is in Redis exactly
//! once.

use std::sync::Arc;
use std::time::Duration;

use kryonix_core::TierSet;
use kryonix_e2e::{Fault, Proxy, Rule, wait_for};
use kryonix_protocol::{NetworkProfile, Tier};

use crate::support::{World, drain, enqueue, total};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_drain_and_restarted_loses_and_duplicates_nothing() {
    let mut world = World::plain().await;
    let proxy = Proxy::start(world.server.addr()).await.unwrap();
    let agent = Arc::new(world.agent("phone-2", world.config("phone-2", &proxy.url()), None));
    let expected = enqueue(&agent, 2000, &Tier::ALL, "s2");

    // The answer to the fourth push is withheld: the server has stored that batch by the time
    // the fault fires, and the device is still waiting for the answer.
    proxy.set_rule(
        Rule::new(Fault::StallAnswer)
            .only("POST /v1/sync/push")
            .skip(3)
            .times(1),
    );
    agent.set_network(NetworkProfile::WIFI).unwrap();
    let syncing = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.sync_now(TierSet::ALL).await })
    };
    wait_for(
        Duration::from_secs(30),
        "the fourth push answered",
        || async { (proxy.fired() >= 1).then_some(()) },
    )
    .await
    .unwrap();

    world.server.kill().await;
    let at_kill = world.stored_total().await;
    assert_eq!(at_kill, 400, "four batches of 100 stored at the kill");
    assert_eq!(
        agent.outbox().stats().unwrap().depth(),
        total(&expected) - 300
    );
    world.server.restart().await.unwrap();

    let remaining = drain(&agent, syncing.await.unwrap()).await;
    assert_eq!(remaining, 0);
    world.assert_exactly_once(&expected).await;
    // The batch stored before the kill was sent again after it.
    let pushes = proxy
        .exchanges()
        .iter()
        .filter(|e| e.request_line.starts_with("POST /v1/sync/push"))
        .count();
    assert!(
        pushes > 20,
        "only {pushes} pushes: the withheld batch was not resent"
    );
}

/// The server stays down through all of a wake-up's in-call retries, so the items wait for the
/// tier's next slot (a minute away); when it is back, the app's `sync_now` sends them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_through_the_retries_then_sync_now_delivers_at_once() {
    let mut world = World::plain().await;
    let agent = world.agent(
        "phone-2b",
        world.config("phone-2b", &world.server.url()),
        None,
    );
    let expected = enqueue(&agent, 250, &Tier::ALL, "s2b");
    world.server.kill().await;

    agent.set_network(NetworkProfile::WIFI).unwrap();
    // The call answers at the first refused connection, with the cause; the agent keeps
    // retrying on its own until the wake-up's retries are spent.
    let down = agent.sync_now(TierSet::ALL).await.unwrap_err();
    assert!(down.is_retryable(), "{down:?}");
    wait_for(
        Duration::from_secs(30),
        "the retries to run out",
        || async {
            (agent.status().tiers.values().map(|t| t.retries).max() >= Some(4)).then_some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(agent.outbox().stats().unwrap().depth(), 250);
    assert!(agent.status().last_error.is_some());

    world.server.restart().await.unwrap();
    let report = agent.sync_now(TierSet::ALL).await.unwrap();
    assert_eq!(report.remaining, 0, "{report:?}");
    world.assert_exactly_once(&expected).await;
}
