//! Scenario 16: live data. An app watches `tenant_config/flags` and the whole `tenant_config`
//! namespace; the watcher sees the initial state, a local write, a change a backend published on
//! the real server (pulled by the device), a delete and an expiry, in that order; a pulled page
//! reaches a namespace watcher as one batch, at most one change per key; dropping a watch and
//! closing the agent end them.

use std::time::{Duration, Instant};

use kryonix_core::cache::Expiry;
use kryonix_core::{Agent, Cause, KeyChange, TierSet, Watch};
use kryonix_e2e::server::put_change;
use kryonix_protocol::{Namespace, NetworkProfile, Tier};

use crate::support::{TENANT, World};

/// How long a change may take to arrive: a sync against the local server takes milliseconds.
const DEADLINE: Duration = Duration::from_secs(15);

async fn next(watch: &mut Watch) -> Vec<KeyChange> {
    tokio::time::timeout(DEADLINE, watch.next())
        .await
        .expect("a change within the deadline")
        .expect("the watch is live")
}

/// The one change of a key watch's next batch, as (value, cause).
async fn next_one(watch: &mut Watch) -> (Option<Vec<u8>>, Cause) {
    let batch = next(watch).await;
    assert_eq!(batch.len(), 1, "{batch:?}");
    let change = &batch[0];
    assert_eq!(change.key, "flags");
    (change.value.as_deref().map(<[u8]>::to_vec), change.cause)
}

fn flags(agent: &Agent) -> Option<Vec<u8>> {
    let key = agent.key(Namespace::TenantConfig, "flags").unwrap();
    agent.cache().get(&key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_local_pulled_deleted_and_expired_changes_in_order() {
    let world = World::plain().await;
    let mut config = world.config("phone-1", &world.server.url());
    config.profile.network = NetworkProfile::WIFI;
    let agent = world.agent("phone-1", config, None);
    let mut watch = agent.watch(Namespace::TenantConfig, "flags").unwrap();
    let mut all = agent
        .watch_namespace(Namespace::TenantConfig, None)
        .unwrap();
    assert_eq!(agent.watcher_count(), 2);

    // The initial state: nothing yet.
    assert_eq!(next_one(&mut watch).await, (None, Cause::Initial));
    assert_eq!(next(&mut all).await, []);

    // A local write: seen at once, then uploaded (acknowledged, so it no longer shadows the
    // server's values).
    agent
        .write(
            Namespace::TenantConfig,
            "flags",
            b"dark-mode=off",
            Tier::Critical,
        )
        .unwrap();
    assert_eq!(
        next_one(&mut watch).await,
        (Some(b"dark-mode=off".to_vec()), Cause::Put)
    );
    let report = agent.sync_now(TierSet::ALL).await.unwrap();
    assert_eq!(report.remaining, 0, "{report:?}");

    // A backend publishes on the real server; the device pulls it.
    world
        .server
        .publish(
            TENANT,
            None,
            vec![put_change("tenant_config", "flags", b"dark-mode=on")],
        )
        .await
        .unwrap();
    agent.sync_now(TierSet::ALL).await.unwrap();
    assert_eq!(
        next_one(&mut watch).await,
        (Some(b"dark-mode=on".to_vec()), Cause::Pulled)
    );

    // A local delete.
    let key = agent.key(Namespace::TenantConfig, "flags").unwrap();
    assert!(agent.cache().delete(&key).unwrap());
    assert_eq!(next_one(&mut watch).await, (None, Cause::Deleted));

    // An expiry, noticed by a read once the TTL has passed (polled, no fixed sleep).
    agent
        .cache()
        .put(&key, b"trial", Expiry::After(Duration::from_millis(300)))
        .unwrap();
    assert_eq!(
        next_one(&mut watch).await,
        (Some(b"trial".to_vec()), Cause::Put)
    );
    let started = Instant::now();
    while flags(&agent).is_some() {
        assert!(started.elapsed() < DEADLINE, "the entry never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(next_one(&mut watch).await, (None, Cause::Expired));
    assert!(watch.try_next().is_none());

    // The namespace watcher saw the same key, coalesced to its newest state while unread.
    let seen = next(&mut all).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].key.as_str(), seen[0].value.as_deref()),
        ("flags", None)
    );

    // A page of 100 changes over 50 keys (each published twice): one batch, one change per key,
    // the newest value of each.
    let page: Vec<_> = (0..100)
        .map(|i| {
            let value = format!("v{i}");
            put_change("tenant_config", &format!("k{}", i % 50), value.as_bytes())
        })
        .collect();
    world.server.publish(TENANT, None, page).await.unwrap();
    agent.sync_now(TierSet::ALL).await.unwrap();
    let batch = next(&mut all).await;
    assert_eq!(batch.len(), 50, "{batch:?}");
    for change in &batch {
        let n: usize = change.key[1..].parse().unwrap();
        assert_eq!(change.cause, Cause::Pulled);
        assert_eq!(
            change.value.as_deref(),
            Some(format!("v{}", n + 50).as_bytes())
        );
    }
    assert!(all.try_next().is_none(), "one batch");
    assert!(watch.try_next().is_none(), "the key watch saw none of it");

    // Dropping a watch ends it; closing the agent ends the rest.
    drop(watch);
    assert_eq!(agent.watcher_count(), 1);
    agent.close().await.unwrap();
    assert_eq!(agent.watcher_count(), 0);
    assert_eq!(all.next().await, None);
    assert!(matches!(
        agent.watch(Namespace::TenantConfig, "flags"),
        Err(kryonix_core::Error::Closed)
    ));
}
