//! Tests of the harness's multi-process Redis topologies themselves: the Redis Cluster started by
//! `deploy/cluster/local-cluster.sh` and the Sentinel group started by
//! `deploy/sentinel/local-sentinel.sh`, with real processes and real failovers. The failover
//! times are printed (`cargo test -p kryonix-e2e --test harness -- --nocapture`).
//!
//! The tests run one at a time (a shared lock): on a 2-core machine, two clusters failing over at
//! once would measure each other's load, and a starved node can miss its node timeout.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kryonix_e2e::{ClusterOptions, RedisCluster, RedisSentinels, Role, SentinelOptions, wait_for};
use redis::AsyncCommands;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

/// The node's `ROLE`. An error is returned, not unwrapped: a node the Sentinels are turning
/// into a replica closes its client connections, and a poll must read that as "not yet".
async fn role_of(con: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<String> {
    let reply: Vec<redis::Value> = redis::cmd("ROLE").query_async(con).await?;
    match &reply[0] {
        redis::Value::BulkString(bytes) => Ok(String::from_utf8_lossy(bytes).into_owned()),
        other => panic!("unexpected ROLE reply {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_has_three_primaries_covering_every_slot_and_serves_a_cluster_client() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = RedisCluster::start(ClusterOptions::default())
        .await
        .unwrap();
    assert_eq!(cluster.seed_urls().len(), 6);

    let nodes = cluster.nodes().await.unwrap();
    assert_eq!(nodes.len(), 6, "{nodes:?}");
    let primaries = cluster.primaries().await.unwrap();
    assert_eq!(primaries.len(), 3, "{nodes:?}");
    // Every slot served by exactly one primary.
    let mut owners = vec![0u8; 16384];
    for primary in &primaries {
        for &(first, last) in &primary.slots {
            for slot in first..=last {
                owners[usize::from(slot)] += 1;
            }
        }
    }
    assert!(owners.iter().all(|&count| count == 1));
    assert_eq!(
        primaries
            .iter()
            .map(|primary| primary.slot_count())
            .sum::<u32>(),
        16384
    );
    // One replica each.
    for primary in &primaries {
        let replicas = nodes
            .iter()
            .filter(|node| node.primary_id.as_deref() == Some(primary.id.as_str()))
            .count();
        assert_eq!(replicas, 1, "replicas of {}", primary.port);
    }

    // A cluster client spreads keys over the primaries and reads them back.
    let mut con = cluster.cluster_connection().await.unwrap();
    for i in 0..100 {
        let () = con.set(format!("key:{i}"), i).await.unwrap();
    }
    for i in 0..100 {
        let value: i64 = con.get(format!("key:{i}")).await.unwrap();
        assert_eq!(value, i);
    }
    let mut total = 0;
    for primary in &primaries {
        let mut direct = cluster.connection(primary.port).await.unwrap();
        let keys: u64 = redis::cmd("DBSIZE").query_async(&mut direct).await.unwrap();
        assert!(keys > 0, "no key on primary {}", primary.port);
        total += keys;
    }
    assert_eq!(total, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_cluster_primary_promotes_its_replica() {
    let _one = ONE_AT_A_TIME.lock().await;
    let options = ClusterOptions::default();
    let node_timeout = options.node_timeout_ms;
    let mut cluster = RedisCluster::start(options).await.unwrap();
    let mut con = cluster.cluster_connection().await.unwrap();
    let key = "{failover}:written-before";
    let () = con.set(key, "kept").await.unwrap();

    let slot = cluster.key_slot(key).await.unwrap();
    let victim = cluster.primary_for_slot(slot).await.unwrap();
    // The write must be on the replica before the kill, or losing it would be expected.
    let mut direct = cluster.connection(victim).await.unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(acked, 1);
    let nodes = cluster.nodes().await.unwrap();
    let victim_id = nodes.iter().find(|n| n.port == victim).unwrap().id.clone();
    let replica = nodes
        .iter()
        .find(|n| n.primary_id.as_deref() == Some(victim_id.as_str()))
        .unwrap()
        .port;

    cluster.kill_primary(victim).await.unwrap();
    let took = cluster
        .wait_for_failover(victim, FAILOVER_LIMIT)
        .await
        .unwrap();
    println!(
        "cluster failover: primary {victim} SIGKILLed, replica {replica} promoted and \
         cluster_state:ok everywhere after {took:?} (cluster-node-timeout {node_timeout} ms)"
    );
    assert_eq!(cluster.primary_for_slot(slot).await.unwrap(), replica);

    // A new client (its seed list still names the dead node) finds the key on the new primary.
    let mut fresh = cluster.cluster_connection().await.unwrap();
    let value: String = fresh.get(key).await.unwrap();
    assert_eq!(value, "kept");

    // The old primary comes back as a replica of the node that replaced it.
    cluster.restart_node(victim).await.unwrap();
    let replica_id = nodes.iter().find(|n| n.port == replica).unwrap().id.clone();
    wait_for(
        Duration::from_secs(30),
        "the old primary to replicate the new one",
        || async {
            let nodes = cluster.nodes_seen_by(victim).await.ok()?;
            let me = nodes.iter().find(|n| n.port == victim)?;
            (me.role == Role::Replica && me.primary_id.as_deref() == Some(replica_id.as_str()))
                .then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_fail_over_and_name_the_new_primary() {
    let _one = ONE_AT_A_TIME.lock().await;
    let options = SentinelOptions::default();
    let down_after = options.down_after_ms;
    let mut group = RedisSentinels::start(options).await.unwrap();
    assert_eq!(group.sentinel_urls().len(), 3);
    assert_eq!(group.master_name(), "mobile-sync");
    let [first, second] = group.redis_ports();
    for sentinel in group.sentinel_ports() {
        assert_eq!(group.primary_named_by(sentinel).await.unwrap(), first);
    }

    // The mobile_sync database; replicated before the kill, so it must survive the failover.
    let mut primary = group.connection(first).await.unwrap();
    let () = redis::cmd("SELECT")
        .arg(11)
        .query_async(&mut primary)
        .await
        .unwrap();
    let () = primary.set("written-before", "kept").await.unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut primary)
        .await
        .unwrap();
    assert_eq!(acked, 1);

    let killed = group.kill_primary().await.unwrap();
    assert_eq!(killed, first);
    let took = group.wait_for_failover(FAILOVER_LIMIT).await.unwrap();
    println!(
        "sentinel failover: primary {first} SIGKILLed, all three Sentinels name {second} \
         (answering ROLE master) after {took:?} (down-after-milliseconds {down_after})"
    );
    assert_eq!(group.primary_port().await.unwrap(), second);
    let mut promoted = group.connection(second).await.unwrap();
    assert_eq!(role_of(&mut promoted).await.unwrap(), "master");
    let () = redis::cmd("SELECT")
        .arg(11)
        .query_async(&mut promoted)
        .await
        .unwrap();
    let value: String = promoted.get("written-before").await.unwrap();
    assert_eq!(value, "kept");

    // The old primary, restarted, is turned into a replica by the Sentinels (they look at a
    // returning node every 10 s or so, hence the longer limit; on a loaded 2-core machine it
    // once took over 60 s).
    group.restart_node(first).await.unwrap();
    let started = std::time::Instant::now();
    wait_for(
        Duration::from_secs(150),
        "the old primary to become a replica",
        || async {
            let mut con = group.connection(first).await.ok()?;
            (role_of(&mut con).await.ok()? == "slave").then_some(())
        },
    )
    .await
    .unwrap();
    println!(
        "sentinel: the restarted old primary was a replica {:?} after it answered",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_move_between_primaries_while_a_client_writes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = RedisCluster::start(ClusterOptions::default())
        .await
        .unwrap();
    let mut con = cluster.cluster_connection().await.unwrap();

    // One tenant's keys share a hash tag, so they live in one slot: enough of them that moving
    // the slot takes several MIGRATE batches.
    let tag = "{tenant-7}";
    for i in 0..1000 {
        let () = con.set(format!("{tag}:item:{i}"), i).await.unwrap();
    }
    let slot = cluster.key_slot(&format!("{tag}:item:0")).await.unwrap();
    let from = cluster.primary_for_slot(slot).await.unwrap();
    let primaries = cluster.primaries().await.unwrap();
    let to = primaries.iter().find(|p| p.port != from).unwrap().port;

    // A client increments a counter in that slot throughout the migration.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        let mut con = con.clone();
        let counter = format!("{tag}:counter");
        tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match con.incr::<_, _, u64>(&counter, 1).await {
                    Ok(_) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            errors
        })
    };
    let writes = |n: u64| {
        let acked = acked.clone();
        let target = acked.load(Ordering::Relaxed) + n;
        wait_for(Duration::from_secs(10), "the writer to write", move || {
            let acked = acked.clone();
            async move { (acked.load(Ordering::Relaxed) >= target).then_some(()) }
        })
    };
    writes(50).await.unwrap();
    let during = acked.load(Ordering::Relaxed);
    let moved = cluster.migrate_slot(slot, from, to).await.unwrap();
    let after = acked.load(Ordering::Relaxed);
    writes(50).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let errors = writer.await.unwrap();
    println!(
        "slot {slot}: {moved} keys moved from {from} to {to}; the writer had {} increments \
         acknowledged while the slot moved",
        after - during
    );
    assert!(errors.is_empty(), "writes failed: {errors:?}");
    // 1000 items and the counter.
    assert_eq!(moved, 1001);
    assert_eq!(cluster.primary_for_slot(slot).await.unwrap(), to);
    let counter: u64 = con.get(format!("{tag}:counter")).await.unwrap();
    assert_eq!(counter, acked.load(Ordering::Relaxed));
    // The target holds the keys itself (no redirection), the source has none left.
    let mut target = cluster.connection(to).await.unwrap();
    let value: i64 = target.get(format!("{tag}:item:999")).await.unwrap();
    assert_eq!(value, 999);
    let mut source = cluster.connection(from).await.unwrap();
    let left: u64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query_async(&mut source)
        .await
        .unwrap();
    assert_eq!(left, 0);

    // A batch of slots with redis-cli: 100 from the third primary to the first.
    let third = primaries
        .iter()
        .find(|p| p.port != from && p.port != to)
        .unwrap();
    let before = cluster.primaries().await.unwrap();
    let count = |nodes: &[kryonix_e2e::ClusterNode], port: u16| {
        nodes.iter().find(|n| n.port == port).unwrap().slot_count()
    };
    for i in 0..300 {
        let () = con.set(format!("spread:{i}"), i).await.unwrap();
    }
    cluster.reshard(100, third.port, to).await.unwrap();
    let after = cluster.primaries().await.unwrap();
    assert_eq!(count(&after, third.port) + 100, count(&before, third.port));
    assert_eq!(count(&after, to), count(&before, to) + 100);
    // Every key is still readable through the cluster client.
    let mut fresh = cluster.cluster_connection().await.unwrap();
    let mut seen = HashSet::new();
    for i in 0..1000 {
        let value: i64 = fresh.get(format!("{tag}:item:{i}")).await.unwrap();
        seen.insert(value);
    }
    for i in 0..300 {
        let value: i64 = fresh.get(format!("spread:{i}")).await.unwrap();
        seen.insert(value);
    }
    assert_eq!(seen.len(), 1000);
}
