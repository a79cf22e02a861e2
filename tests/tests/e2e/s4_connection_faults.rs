//! Scenario 4: the network cuts connections in the middle of requests — a request cut half-way
//! (the server never sees it whole), the connection reset or closed just as the answer starts
//! (the server stored the batch, the device never hears so), and an answer withheld until the
//! device times out. Each fault hits a push during one drain; nothing is lost and nothing is
//! stored twice.

use std::sync::Arc;
use std::time::Duration;

use kryonix_core::TierSet;
use kryonix_e2e::{Fault, Proxy, Rule, wait_for};
use kryonix_protocol::{NetworkProfile, Tier};

use crate::support::{World, drain, enqueue};

const PUSH: &str = "POST /v1/sync/push";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_reset_dropped_and_stalled_pushes_lose_and_duplicate_nothing() {
    let mut world = World::plain().await;
    let proxy = Proxy::start(world.server.addr()).await.unwrap();
    let agent = Arc::new(world.agent("phone-4", world.config("phone-4", &proxy.url()), None));
    let expected = enqueue(&agent, 1500, &Tier::ALL, "s4");

    let faults = [
        Fault::CutRequest,
        Fault::ResetAnswer,
        Fault::DropAnswer,
        Fault::StallAnswer,
    ];
    // The first fault hits the second push; each next one is armed once the previous fired,
    // one push after it (so every fault lands on a fresh batch).
    proxy.set_rule(Rule::new(faults[0]).only(PUSH).skip(1).times(1));
    agent.set_network(NetworkProfile::WIFI).unwrap();
    let syncing = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.sync_now(TierSet::ALL).await })
    };
    for (n, fault) in faults.iter().enumerate() {
        wait_for(
            Duration::from_secs(30),
            &format!("{fault:?} to fire"),
            || async { (proxy.fired() > n as u64).then_some(()) },
        )
        .await
        .unwrap();
        if let Some(next) = faults.get(n + 1) {
            proxy.set_rule(Rule::new(*next).only(PUSH).skip(1).times(1));
        }
    }

    let remaining = drain(&agent, syncing.await.unwrap()).await;
    assert_eq!(remaining, 0);
    world.assert_exactly_once(&expected).await;

    // Every fault hit a push; the three answer faults hit pushes the server had completed
    // (status 200 on its side), so those batches were stored and then sent again.
    let faulted: Vec<_> = proxy
        .exchanges()
        .into_iter()
        .filter(|e| e.fault.is_some())
        .collect();
    assert_eq!(
        faulted.iter().map(|e| e.fault).collect::<Vec<_>>(),
        faults.iter().map(|f| Some(*f)).collect::<Vec<_>>()
    );
    assert!(faulted.iter().all(|e| e.request_line.starts_with(PUSH)));
    assert_eq!(
        faulted[0].status, None,
        "a cut request must not be answered"
    );
    for e in &faulted[1..] {
        assert_eq!(e.status, Some(200), "{e:?}");
    }
}
