//! Scenario 17: a revoked token. The backend revokes the token a phone syncs with (a lost
//! device, a signed-out session); the phone's next upload is answered `401`, its agent says
//! "unauthorized" in its status, to its observer and from `sync_now`, and keeps every item. Signed
//! in again (a new token, the same database), it delivers everything exactly once.

use std::time::Duration;

use kryonix_core::TierSet;
use kryonix_e2e::{RecordingObserver, open_agent, wait_for};
use kryonix_protocol::{NetworkProfile, Tier};

use crate::support::{World, enqueue, total};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stops_uploads_until_the_user_signs_in_again() {
    let mut world = World::plain().await;
    let observer = RecordingObserver::new();
    let token = world.server.device_token("acme", "phone-17").unwrap();
    let config = world.config("phone-17", &world.server.url());
    let agent = open_agent(config, token.clone(), Some(observer.clone())).unwrap();
    let mut expected = enqueue(&agent, 120, &[Tier::Critical, Tier::Background], "s17a");
    agent.set_network(NetworkProfile::WIFI).unwrap();
    let report = agent.sync_now(TierSet::ALL).await.unwrap();
    assert_eq!(report.remaining, 0, "{report:?}");

    world.server.revoke("acme", &token).await.unwrap();
    let after = enqueue(&agent, 80, &[Tier::Critical, Tier::Application], "s17b");
    let refused = agent.sync_now(TierSet::ALL).await.unwrap_err();
    assert!(
        matches!(&refused, kryonix_core::Error::Transport(t)
            if matches!(t.kind, kryonix_core::sync::FailureKind::Unauthorized)),
        "{refused:?}"
    );
    assert!(agent.status().unauthorized);
    assert_eq!(agent.outbox().stats().unwrap().depth(), total(&after));
    wait_for(
        Duration::from_secs(10),
        "the observer to hear the device is unauthorized",
        || async {
            observer
                .last_status()
                .is_some_and(|s| s.unauthorized)
                .then_some(())
        },
    )
    .await
    .unwrap();
    agent.close().await.unwrap();
    drop(agent);

    // Signed in again: a new token for the same device and database.
    let config = world.config("phone-17", &world.server.url());
    let fresh = world.server.device_token("acme", "phone-17").unwrap();
    let again = open_agent(config, fresh, None).unwrap();
    again.set_network(NetworkProfile::WIFI).unwrap();
    let report = again.sync_now(TierSet::ALL).await.unwrap();
    assert_eq!(report.remaining, 0, "{report:?}");
    assert!(!again.status().unauthorized);
    for (tier, items) in after {
        expected.entry(tier).or_default().extend(items);
    }
    world.assert_exactly_once(&expected).await;
    again.close().await.unwrap();
}
