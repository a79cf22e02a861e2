//! Scenario 7: two devices edit the same key offline, and both converge on the documented rule.
//!
//! The rule (DESIGN.md, "Conflicts"; `core/src/cache/remote.rs`): the server is authoritative;
//! a device's own write shadows server values for that key until its push is acknowledged;
//! after that, the last write to reach the server wins. The "server's view" of a key is what the
//! backend publishes downstream; the backend here is this test, consuming the tier-1 up stream
//! in Redis in stream order and publishing the last value of the key, as a backend following
//! the rule would.
//!
//! Asserted: device B writes first (earlier on the clock) but reaches the server last, so its
//! value wins; while B's push is still unacknowledged, B pulls A's value and keeps showing its
//! own; at the end both devices read B's value.

use std::time::Duration;

use kryonix_core::sync::PULL_CURSOR_KEY;
use kryonix_core::{Agent, TierSet};
use kryonix_e2e::server::put_change;
use kryonix_e2e::{Fault, Proxy, Rule, wait_for};
use kryonix_protocol::{Namespace, NetworkProfile, Tier};

use crate::support::{TENANT, World};

const KEY: &str = "profile";

fn read(agent: &Agent) -> Option<Vec<u8>> {
    let key = agent.key(Namespace::UserCache, KEY).unwrap();
    agent.cache().get(&key).unwrap()
}

/// The backend: the last write of `KEY` in the up stream becomes the server's value.
async fn backend_publishes_last_write(world: &mut World) -> Vec<u8> {
    let entries = world.stored(1).await;
    let last = entries
        .iter()
        .rev()
        .find(|e| e.meta.key == KEY)
        .expect("a write of the key");
    world
        .server
        .publish(
            TENANT,
            None,
            vec![put_change("user_cache", KEY, &last.payload)],
        )
        .await
        .unwrap();
    last.payload.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_editing_offline_converge_on_the_last_write_to_reach_the_server() {
    let mut world = World::plain().await;
    let proxy = Proxy::start(world.server.addr()).await.unwrap();
    let a = world.agent(
        "phone-a",
        world.config("phone-a", &world.server.url()),
        None,
    );
    let b = world.agent("phone-b", world.config("phone-b", &proxy.url()), None);

    // Both offline; B edits first, A second. Each sees its own write.
    b.write(Namespace::UserCache, KEY, b"from-b", Tier::Critical)
        .unwrap();
    a.write(Namespace::UserCache, KEY, b"from-a", Tier::Critical)
        .unwrap();
    assert_eq!(read(&a), Some(b"from-a".to_vec()));
    assert_eq!(read(&b), Some(b"from-b".to_vec()));

    // A reaches the server first; the backend publishes A's value; A reads it back.
    a.set_network(NetworkProfile::WIFI).unwrap();
    assert_eq!(a.sync_now(TierSet::ALL).await.unwrap().remaining, 0);
    assert_eq!(backend_publishes_last_write(&mut world).await, b"from-a");
    a.sync_now(TierSet::ALL).await.unwrap();
    assert_eq!(read(&a), Some(b"from-a".to_vec()));

    // B comes online, but its pushes are cut: it pulls A's value while its own write is still
    // unacknowledged — and keeps showing its own write.
    proxy.set_rule(Rule::new(Fault::CutRequest).only("POST /v1/sync/push"));
    b.set_network(NetworkProfile::WIFI).unwrap();
    // The pull's page and cursor are stored in one transaction: a cursor means it was applied.
    wait_for(Duration::from_secs(10), "B's pull applied", || async {
        b.cache().meta_text(PULL_CURSOR_KEY).unwrap()
    })
    .await
    .unwrap();
    assert!(
        proxy
            .exchanges()
            .iter()
            .any(|e| e.request_line.starts_with("GET /v1/sync/pull") && e.status == Some(200))
    );
    let shadowed = b.outbox().stats().unwrap().depth();
    assert_eq!(shadowed, 1, "B's write must still be unacknowledged");
    assert_eq!(read(&b), Some(b"from-b".to_vec()), "B's own write shadows");
    proxy.set_rule(Rule::pass());

    // B's push goes through; it is the last write to reach the server, so it wins.
    let mut report = b.sync_now(TierSet::ALL).await.unwrap();
    for _ in 0..3 {
        if report.remaining == 0 {
            break;
        }
        report = b.sync_now(TierSet::ALL).await.unwrap();
    }
    assert_eq!(report.remaining, 0, "{report:?}");
    let order: Vec<(String, Vec<u8>)> = world
        .stored(1)
        .await
        .into_iter()
        .map(|e| (e.meta.device_id, e.payload))
        .collect();
    assert_eq!(
        order,
        vec![
            ("phone-a".to_owned(), b"from-a".to_vec()),
            ("phone-b".to_owned(), b"from-b".to_vec())
        ],
        "each write stored once, in arrival order"
    );
    assert_eq!(backend_publishes_last_write(&mut world).await, b"from-b");

    // Both converge.
    a.sync_now(TierSet::ALL).await.unwrap();
    b.sync_now(TierSet::ALL).await.unwrap();
    assert_eq!(read(&a), Some(b"from-b".to_vec()));
    assert_eq!(read(&b), Some(b"from-b".to_vec()));
    a.close().await.unwrap();
    b.close().await.unwrap();
}
