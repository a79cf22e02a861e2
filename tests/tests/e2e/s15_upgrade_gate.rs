//! Scenario 15: the upgrade gate. A server that no longer serves an app version answers its
//! requests `426 upgrade_required`; the agent stops uploading, keeps every item, and says so in
//! its status and to its observer. The updated app opens the same database and delivers every
//! item exactly once.

use std::time::Duration;

use kryonix_core::TierSet;
use kryonix_core::sync::UpgradeRequired;
use kryonix_e2e::{RecordingObserver, wait_for};
use kryonix_protocol::{AppVersion, Namespace, NetworkProfile, Tier};

use crate::support::{World, enqueue, total};

fn version(v: &str) -> AppVersion {
    v.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_too_old_keeps_its_items_until_the_updated_app_delivers_them() {
    let mut world = World::new(Default::default(), |config| {
        config.min_app_version = Some(version("4.2.0"));
    })
    .await;
    let observer = RecordingObserver::new();
    let mut config = world.config("phone-15", &world.server.url());
    config.app_version = Some(version("4.1.9"));
    let old = world.agent("phone-15", config, Some(observer.clone()));
    let expected = enqueue(
        &old,
        250,
        &[Tier::Critical, Tier::Preferences, Tier::Background],
        "s15",
    );

    old.set_network(NetworkProfile::WIFI).unwrap();
    let gated = |e: &kryonix_core::Error| {
        matches!(e, kryonix_core::Error::Transport(t)
            if matches!(t.kind, kryonix_core::sync::FailureKind::UpgradeRequired(_)))
    };
    let refused = old.sync_now(TierSet::ALL).await.unwrap_err();
    assert!(gated(&refused), "{refused:?}");
    assert!(!refused.is_retryable());
    // Asking again sends nothing and says the same: the gate is not a failure to retry.
    let refused = old.sync_now(TierSet::ALL).await.unwrap_err();
    assert!(gated(&refused), "{refused:?}");
    assert_eq!(world.stored_total().await, 0);
    assert_eq!(old.outbox().stats().unwrap().depth(), total(&expected));

    let gate = Some(UpgradeRequired {
        min_protocol: Some(kryonix_protocol::MIN_PROTOCOL_VERSION),
        min_app_version: Some("4.2.0".into()),
    });
    assert_eq!(old.status().upgrade_required, gate);
    wait_for(
        Duration::from_secs(10),
        "the observer to hear of the gate",
        || async {
            (observer.last_status().and_then(|s| s.upgrade_required) == gate).then_some(())
        },
    )
    .await
    .unwrap();
    // Reads from the server's cache are refused the same way, with the same minimums.
    let refused = old
        .get_or_fetch(Namespace::UserCache, "anything")
        .await
        .unwrap_err();
    assert!(gated(&refused), "{refused:?}");
    old.close().await.unwrap();
    drop(old);

    // The app is updated: same device, same database, a version the server serves.
    let mut config = world.config("phone-15", &world.server.url());
    config.app_version = Some(version("4.2.0"));
    let updated = world.agent("phone-15", config, None);
    assert_eq!(updated.status().upgrade_required, None);
    updated.set_network(NetworkProfile::WIFI).unwrap();
    let report = updated.sync_now(TierSet::ALL).await.unwrap();
    assert_eq!(report.remaining, 0, "{report:?}");
    world.assert_exactly_once(&expected).await;
    assert_eq!(updated.status().upgrade_required, None);
    updated.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_sends_no_version_is_gated_by_protocol_only() {
    let mut world = World::new(Default::default(), |config| {
        config.min_app_version = Some(version("4.2.0"));
    })
    .await;
    let agent = world.agent(
        "phone-15b",
        world.config("phone-15b", &world.server.url()),
        None,
    );
    let expected = enqueue(&agent, 10, &[Tier::Critical], "s15b");
    agent.set_network(NetworkProfile::WIFI).unwrap();
    let report = agent.sync_now(TierSet::ALL).await.unwrap();
    assert_eq!(report.remaining, 0, "{report:?}");
    world.assert_exactly_once(&expected).await;
    assert_eq!(agent.status().upgrade_required, None);
    agent.close().await.unwrap();
}
