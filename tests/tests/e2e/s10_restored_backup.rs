//! Scenario 10: the phone restores the app's database from an older backup.
//!
//! A device syncs, queues more items, and its database file is copied (the backup) while those
//! items are pending. Life goes on: they are delivered, and more after them. Then the backup is
//! restored over the file: the old items are pending again and the outbox's numbering is back
//! where it was, while the server remembers further. The app keeps writing — opened twice
//! before it reaches the server — and every item must arrive exactly once: the restored ones
//! answered `duplicate` (the server has them), the ones written after the restore stored
//! although their numbers were already used once (the session's hello notices the restore and
//! moves them to a new producer).

use std::path::Path;

use kryonix_core::TierSet;
use kryonix_protocol::{NetworkProfile, Tier};

use crate::support::{Expected, World, enqueue};

fn merge(into: &mut Expected, more: Expected) {
    for (tier, ids) in more {
        into.entry(tier).or_default().extend(ids);
    }
}

/// Copies a closed database file (its WAL folded in at close) and nothing else, as a backup does.
fn copy_db(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    for suffix in ["-wal", "-shm"] {
        let mut stray = to.as_os_str().to_owned();
        stray.push(suffix);
        let _ = std::fs::remove_file(stray);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_loses_nothing_and_stores_nothing_twice() {
    let mut world = World::plain().await;
    let url = world.server.url();
    let db = world.db("phone-10.db");
    let saved = world.db("phone-10.backup");
    let mut expected = Expected::new();
    let tiers = [Tier::Critical, Tier::Preferences, Tier::Application];

    // Synced, then items pending when the backup is taken.
    let producer = {
        let agent = world.agent("phone-10", world.config("phone-10", &url), None);
        merge(&mut expected, enqueue(&agent, 120, &tiers, "s10-a"));
        agent.set_network(NetworkProfile::WIFI).unwrap();
        let report = agent.sync_now(TierSet::ALL).await.unwrap();
        assert_eq!(report.remaining, 0, "{report:?}");
        agent.set_network(NetworkProfile::OFFLINE).unwrap();
        merge(&mut expected, enqueue(&agent, 90, &tiers, "s10-b"));
        let producer = agent.outbox().producer().unwrap();
        agent.close().await.unwrap();
        producer
    };
    copy_db(&db, &saved);

    // Life goes on: the pending items are delivered, and more after them.
    {
        let mut config = world.config("phone-10", &url);
        config.profile.network = NetworkProfile::WIFI;
        let agent = world.agent("phone-10", config, None);
        merge(&mut expected, enqueue(&agent, 60, &tiers, "s10-c"));
        let report = agent.sync_now(TierSet::ALL).await.unwrap();
        assert_eq!(report.remaining, 0, "{report:?}");
        agent.close().await.unwrap();
    }
    assert_eq!(world.stored_total().await, 270);

    // The restore. The app writes before it reaches the server, is killed, writes again.
    copy_db(&saved, &db);
    {
        let agent = world.agent("phone-10", world.config("phone-10", &url), None);
        assert_eq!(
            agent.outbox().stats().unwrap().depth(),
            90,
            "the backup's queue"
        );
        merge(&mut expected, enqueue(&agent, 75, &tiers, "s10-d"));
        agent.close().await.unwrap();
    }
    let agent = world.agent("phone-10", world.config("phone-10", &url), None);
    merge(&mut expected, enqueue(&agent, 30, &tiers, "s10-e"));
    agent.set_network(NetworkProfile::WIFI).unwrap();
    let report = agent.sync_now(TierSet::ALL).await.unwrap();
    assert_eq!(report.remaining, 0, "{report:?}");

    assert_ne!(
        agent.outbox().producer().unwrap(),
        producer,
        "the items written after the restore continue under a new producer"
    );
    world.assert_exactly_once(&expected).await;
    agent.close().await.unwrap();
}
