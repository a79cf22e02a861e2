//! Scenario 11: the server on a real Redis Cluster (3 primaries, 1 replica each).
//!
//! 1. Failover: devices of three tenants push; their entries land on several primaries. One
//!    primary is SIGKILLed while pushes go on; its replica takes over; the old primary comes back
//!    as a replica. With `--min-replicas-acked 1` no acknowledged item is lost and none is stored
//!    twice (read with `XRANGE` through every node), and cache reads and pulls whose keys live on
//!    the surviving shards keep working during the failover.
//! 2. Resharding: the slot of a busy tenant's partition moves to another primary (`CLUSTER
//!    SETSLOT … MIGRATING/IMPORTING` + `MIGRATE`) while its devices push; exactly once holds.

use std::time::{Duration, Instant};

use kryonix_e2e::streams::cluster_up_entries;
use kryonix_e2e::{ClusterOptions, RedisCluster, ServerOptions, TestServer, wait_for};
use kryonix_protocol::TenantId;
use kryonix_server::keys;
use serde_json::json;

use crate::topology::{Fleet, assert_exactly_once, finish_probe, started_probe};

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

/// Up streams per primary, counted with `SCAN … TYPE stream` on each node.
async fn streams_per_primary(cluster: &RedisCluster) -> Vec<(u16, usize)> {
    let mut out = Vec::new();
    for node in cluster.primaries().await.unwrap() {
        let mut con = cluster.connection(node.port).await.unwrap();
        let (_, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg("tenant:*:mobile_sync:up:*")
            .arg("COUNT")
            .arg(100_000)
            .arg("TYPE")
            .arg("stream")
            .query_async(&mut con)
            .await
            .unwrap();
        out.push((node.port, keys.len()));
    }
    out
}

async fn stored_total(cluster: &RedisCluster, partitions: u16) -> usize {
    let mut con = cluster.cluster_connection().await.unwrap();
    let mut total = 0;
    for tenant in TENANTS {
        for tier in [1, 2] {
            total += cluster_up_entries(&mut con, tenant, partitions, tier)
                .await
                .map(|e| e.len())
                .unwrap_or(0);
        }
    }
    total
}

async fn assert_fleet_stored_once(cluster: &RedisCluster, fleet: &Fleet, partitions: u16) {
    let mut con = cluster.cluster_connection().await.unwrap();
    for tenant in TENANTS {
        for tier in [1, 2] {
            let entries = cluster_up_entries(&mut con, tenant, partitions, tier)
                .await
                .unwrap();
            assert_exactly_once(fleet, tenant, tier, &entries);
        }
    }
}

/// A device of `tenant` whose partition's slot `primary` serves.
async fn device_on(cluster: &RedisCluster, tenant: &str, partitions: u16, primary: u16) -> String {
    let t = TenantId::new(tenant).unwrap();
    for i in 0.. {
        let device = format!("probe-{i}");
        let p = keys::partition_of(&device, partitions);
        let record = keys::producer(&t, p, &device, "x").unwrap();
        if cluster
            .primary_for_slot(keys::slot(record.as_str().as_bytes()))
            .await
            .unwrap()
            == primary
        {
            return device;
        }
    }
    unreachable!()
}

/// Cache keys of `tenant` (user_cache) that live on a primary other than `avoid`.
async fn keys_not_on(cluster: &RedisCluster, tenant: &str, avoid: u16, n: usize) -> Vec<String> {
    let t = TenantId::new(tenant).unwrap();
    let mut out = Vec::new();
    for i in 0.. {
        let key = format!("survivor-{i}");
        let full = keys::cache_entry(&t, kryonix_protocol::Namespace::UserCache, &key).unwrap();
        let owner = cluster
            .primary_for_slot(keys::slot(full.as_str().as_bytes()))
            .await
            .unwrap();
        if owner != avoid {
            out.push(key);
            if out.len() == n {
                break;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_mid_push_loses_and_duplicates_nothing() {
    let mut cluster = RedisCluster::start(ClusterOptions::default())
        .await
        .unwrap();
    let mut options = ServerOptions::cluster(cluster.seed_urls());
    options.config.min_replicas_acked = 1;
    options.config.wait_timeout = Duration::from_millis(1000);
    options.config.request_timeout = Duration::from_secs(20);
    let server = TestServer::start(options).await.unwrap();
    let partitions = server.config().partitions();
    assert_eq!(
        partitions, 16,
        "a Cluster spreads each tenant over 16 partitions"
    );

    let mut fleet = Fleet::open(&server, &TENANTS, 3);
    fleet.enqueue(120, "before");
    fleet.sync_in_background();
    wait_for(Duration::from_secs(60), "a third stored", || async {
        (stored_total(&cluster, partitions).await >= fleet.total() / 3).then_some(())
    })
    .await
    .unwrap();

    // The tenants' partitions are spread: entries landed on more than one primary.
    let spread = streams_per_primary(&cluster).await;
    let holding: Vec<u16> = spread
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(p, _)| *p)
        .collect();
    assert!(holding.len() >= 2, "streams on {spread:?}");
    let victim = holding[0];

    // What must keep working while the victim is down: cache keys and a tenant's down streams
    // that live on the other shards, and a probe device on the victim's shard to time the gap.
    let http = reqwest::Client::new();
    let acme = server.device_token("acme", "reader").unwrap();
    let survivors = keys_not_on(&cluster, "acme", victim, 3).await;
    for key in &survivors {
        let put = http
            .put(format!("{}/v1/cache/user_cache/{key}", server.url()))
            .bearer_auth(&acme)
            .header("kryonix-protocol", "2")
            .json(&json!({"value": "c3Vydml2b3I=", "ttl_secs": 600}))
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success(), "{}", put.status());
    }
    // A tenant whose down streams live on a surviving shard (tenant tags are fixed; try names).
    let pull_tenant = {
        let mut found = None;
        for i in 0..64 {
            let tenant = format!("reader{i}");
            let down = keys::down_stream(&TenantId::new(tenant.as_str()).unwrap()).unwrap();
            let owner = cluster
                .primary_for_slot(keys::slot(down.as_str().as_bytes()))
                .await
                .unwrap();
            if owner != victim {
                found = Some(tenant);
                break;
            }
        }
        found.expect("a tenant whose down streams live on a survivor")
    };
    let puller = server.device_token(&pull_tenant, "puller").unwrap();
    // The puller syncs before the kill, as a device does: its token is confirmed unrevoked, so
    // it rides through the failover even if its revocation record is on the victim.
    let before = http
        .get(format!("{}/v1/sync/pull?limit=10", server.url()))
        .bearer_auth(&puller)
        .header("kryonix-protocol", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(before.status(), 200);
    let probe_device = device_on(&cluster, "probes", partitions, victim).await;
    let probe = started_probe(&server, "probes", &probe_device, Duration::from_millis(100)).await;

    // The kill, with pushes going on; more items queued while the shard is down.
    cluster.kill_primary(victim).await.unwrap();
    let killed_at = Instant::now();
    fleet.enqueue(80, "during");
    let mut reads = 0;
    while killed_at.elapsed() < Duration::from_secs(3) {
        for key in &survivors {
            let got = http
                .get(format!("{}/v1/cache/user_cache/{key}", server.url()))
                .bearer_auth(&acme)
                .header("kryonix-protocol", "2")
                .send()
                .await
                .unwrap();
            assert_eq!(
                got.status(),
                200,
                "a cache read on a surviving shard failed"
            );
            reads += 1;
        }
        let pulled = http
            .get(format!("{}/v1/sync/pull?limit=10", server.url()))
            .bearer_auth(&puller)
            .header("kryonix-protocol", "2")
            .send()
            .await
            .unwrap();
        assert_eq!(pulled.status(), 200, "a pull on a surviving shard failed");
    }
    let promoted = cluster
        .wait_for_failover(victim, Duration::from_secs(30))
        .await
        .unwrap();
    // With --min-replicas-acked 1 the new primary acknowledges nothing until it has a replica:
    // the old primary comes back as one.
    cluster.restart_node(victim).await.unwrap();
    fleet.drained(Duration::from_secs(120)).await;
    let ((refused, back), probe_stored) =
        finish_probe(probe, killed_at, Duration::from_secs(60)).await;
    fleet.stop().await;

    assert_fleet_stored_once(&cluster, &fleet, partitions).await;
    eprintln!(
        "scenario 11: {} items from {} devices of 3 tenants exactly once; primary {victim} killed: \
         replica promoted after {:.2} s, probe's pushes refused from +{:.2} s, accepted again at \
         +{:.2} s (after the old primary rejoined as a replica); {reads} cache reads and the pulls \
         on surviving shards all answered during the failover; the probe stored {probe_stored} items",
        fleet.total(),
        fleet.devices.len(),
        promoted.as_secs_f64(),
        (refused - killed_at).as_secs_f64(),
        (back - killed_at).as_secs_f64(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moved_to_another_primary_under_pushes_stays_exactly_once() {
    let cluster = RedisCluster::start(ClusterOptions {
        replicas_per_primary: 0,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let server = TestServer::start(ServerOptions::cluster(cluster.seed_urls()))
        .await
        .unwrap();
    let partitions = server.config().partitions();
    let mut fleet = Fleet::open(&server, &TENANTS[..1], 6);
    fleet.enqueue(250, "busy");

    // The slot of the busiest device's partition, and a primary to move it to.
    let t = TenantId::new(TENANTS[0]).unwrap();
    let device = &fleet.devices[0].name;
    let partition = keys::partition_of(device, partitions);
    let slot = keys::slot(
        keys::up_stream(&t, partition, kryonix_protocol::Tier::Critical)
            .unwrap()
            .as_str()
            .as_bytes(),
    );
    let from = cluster.primary_for_slot(slot).await.unwrap();
    let to = cluster
        .primaries()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.port)
        .find(|p| *p != from)
        .unwrap();

    fleet.sync_in_background();
    wait_for(Duration::from_secs(60), "pushes under way", || async {
        (stored_total(&cluster, partitions).await >= 200).then_some(())
    })
    .await
    .unwrap();
    let moved = cluster.migrate_slot(slot, from, to).await.unwrap();
    let after_move = stored_total(&cluster, partitions).await;
    fleet.enqueue(100, "after");
    fleet.drained(Duration::from_secs(120)).await;
    fleet.stop().await;
    assert_eq!(cluster.primary_for_slot(slot).await.unwrap(), to);
    let mut con = cluster.cluster_connection().await.unwrap();
    for tier in [1, 2] {
        let entries = cluster_up_entries(&mut con, TENANTS[0], partitions, tier)
            .await
            .unwrap();
        assert_exactly_once(&fleet, TENANTS[0], tier, &entries);
    }
    eprintln!(
        "scenario 11: slot {slot} ({moved} keys) moved from {from} to {to} with {after_move} items \
         stored at the move; {} items exactly once",
        fleet.total()
    );
}
