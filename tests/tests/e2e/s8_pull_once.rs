//! Scenario 8: a backend publishes, the device pulls page by page with its cursor, and a page
//! delivered a second time (an answer replayed, a cursor rewound) changes nothing: every change
//! is applied once, and an old value never overwrites a newer one.

use std::sync::Arc;
use std::time::Duration;

use kryonix_core::sync::{HttpTransport, PULL_CURSOR_KEY, StaticToken, Transport};
use kryonix_core::{Agent, TierSet};
use kryonix_e2e::server::put_change;
use kryonix_protocol::{Namespace, NetworkProfile, TenantId};

use crate::support::{TENANT, World};

fn value(agent: &Agent, key: &str) -> Option<Vec<u8>> {
    let key = agent.key(Namespace::UserCache, key).unwrap();
    agent.cache().get(&key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_delivered_twice_is_applied_once() {
    let world = World::plain().await;
    let mut config = world.config("tablet-1", &world.server.url());
    config.engine.pull_limit = 40;
    config.profile.network = NetworkProfile::WIFI;
    let agent = world.agent("tablet-1", config, None);

    // 100 changes: three pages of 40, 40 and 20.
    let v1: Vec<_> = (0..100)
        .map(|i| put_change("user_cache", &format!("p{i}"), format!("v1-{i}").as_bytes()))
        .collect();
    world.server.publish(TENANT, None, v1).await.unwrap();
    agent.sync_now(TierSet::ALL).await.unwrap();
    for i in 0..100 {
        assert_eq!(
            value(&agent, &format!("p{i}")),
            Some(format!("v1-{i}").into_bytes()),
            "p{i} after the first pull"
        );
    }
    let cursor_after_v1 = agent.cache().meta_text(PULL_CURSOR_KEY).unwrap();
    assert!(cursor_after_v1.is_some());

    // The first page as the server sends it to this device from the start.
    let token = world.server.device_token(TENANT, "tablet-1").unwrap();
    let wire = HttpTransport::new(
        &world.server.url(),
        Arc::new(StaticToken(token)),
        Duration::from_secs(5),
    )
    .unwrap();
    let first_page = wire.pull(None, 40).await.unwrap();
    assert_eq!(first_page.changes.len(), 40);
    assert!(first_page.has_more);

    // Newer values for the keys of that page, pulled normally.
    let v2: Vec<_> = (0..40)
        .map(|i| put_change("user_cache", &format!("p{i}"), format!("v2-{i}").as_bytes()))
        .collect();
    world.server.publish(TENANT, None, v2).await.unwrap();
    agent.sync_now(TierSet::ALL).await.unwrap();
    assert_eq!(value(&agent, "p0"), Some(b"v2-0".to_vec()));
    let cursor_after_v2 = agent.cache().meta_text(PULL_CURSOR_KEY).unwrap();
    assert_ne!(cursor_after_v2, cursor_after_v1);

    // The first page arrives again, exactly as the driver applies a pull answer (changes and
    // cursor in one transaction): every change is recognised, nothing is applied.
    let tenant = TenantId::new(TENANT).unwrap();
    let report = agent
        .cache()
        .apply_remote(
            &tenant,
            &first_page.changes,
            PULL_CURSOR_KEY,
            &first_page.cursor,
        )
        .unwrap();
    assert_eq!(report.duplicates, 40, "{report:?}");
    assert_eq!(report.applied, 0, "{report:?}");
    for i in 0..40 {
        assert_eq!(
            value(&agent, &format!("p{i}")),
            Some(format!("v2-{i}").into_bytes()),
            "p{i} reverted by a replayed page"
        );
    }

    // That replay rewound the cursor: the next pull walks pages 2, 3 and the v2 page again —
    // every one of them a second delivery — and still changes nothing, ending at the newest
    // cursor.
    agent.sync_now(TierSet::ALL).await.unwrap();
    for i in 0..100 {
        let want = if i < 40 {
            format!("v2-{i}")
        } else {
            format!("v1-{i}")
        };
        assert_eq!(value(&agent, &format!("p{i}")), Some(want.into_bytes()));
    }
    assert_eq!(
        agent.cache().meta_text(PULL_CURSOR_KEY).unwrap(),
        cursor_after_v2
    );
    agent.close().await.unwrap();
}
