//! Scenario 12: the server behind Sentinel, natively (no proxy). A primary with one replica,
//! three Sentinels (`down-after-milliseconds 1000`). Devices of three tenants push; the primary
//! is SIGKILLed; the Sentinels promote the replica and the server follows it by itself; the old
//! primary comes back as a replica. With `--min-replicas-acked 1` no acknowledged item is lost
//! and none is stored twice; the gap in pushes (first refused → first accepted again) is
//! measured with a probe device.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kryonix_e2e::streams::up_entries;
use kryonix_e2e::{RedisSentinels, SentinelOptions, ServerOptions, TestServer, wait_for};

use crate::topology::{Fleet, assert_exactly_once, finish_probe, probe, started_probe};

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

async fn sync_db(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/11"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn stored_total(port: u16) -> usize {
    let mut con = sync_db(port).await;
    let mut total = 0;
    for tenant in TENANTS {
        for tier in [1, 2] {
            total += up_entries(&mut con, tenant, tier)
                .await
                .map(|e| e.len())
                .unwrap_or(0);
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_follows_a_failover_and_loses_nothing() {
    let mut sentinels = RedisSentinels::start(SentinelOptions::default())
        .await
        .unwrap();
    let first = sentinels.primary_port().await.unwrap();
    let mut options = ServerOptions::sentinel(sentinels.sentinel_urls(), sentinels.master_name());
    options.config.min_replicas_acked = 1;
    options.config.wait_timeout = Duration::from_millis(1000);
    options.config.request_timeout = Duration::from_secs(20);
    let server = TestServer::start(options).await.unwrap();

    let mut fleet = Fleet::open(&server, &TENANTS, 2);
    fleet.enqueue(150, "before");
    fleet.sync_in_background();
    wait_for(Duration::from_secs(60), "a third stored", || async {
        (stored_total(first).await >= fleet.total() / 3).then_some(())
    })
    .await
    .unwrap();
    let probe = started_probe(&server, "probes", "probe", Duration::from_millis(100)).await;

    assert_eq!(sentinels.kill_primary().await.unwrap(), first);
    let killed_at = Instant::now();
    fleet.enqueue(100, "during");
    let promoted = sentinels
        .wait_for_failover(Duration::from_secs(30))
        .await
        .unwrap();
    let second = sentinels.primary_port().await.unwrap();
    assert_ne!(second, first);
    // With --min-replicas-acked 1 the new primary acknowledges nothing until it has a replica:
    // the old primary comes back, and the Sentinels make it one.
    sentinels.restart_node(first).await.unwrap();
    fleet.drained(Duration::from_secs(180)).await;
    let ((refused, accepted), probe_stored) =
        finish_probe(probe, killed_at, Duration::from_secs(60)).await;
    fleet.stop().await;

    // The server's own view: it follows the primary the Sentinels name now. (Usually `second`;
    // on a loaded machine the Sentinels may fail over once more when the old primary returns,
    // and the server must follow that too.) It looks every 500 ms: poll with a deadline.
    let current = sentinels.primary_port().await.unwrap();
    let ready_url = format!("{}/readyz", server.url());
    let follows = format!("127.0.0.1:{current}");
    wait_for(
        Duration::from_secs(10),
        "the server to follow the primary the Sentinels name",
        || async {
            let ready: serde_json::Value =
                reqwest::get(&ready_url).await.ok()?.json().await.ok()?;
            (ready["sync_store"]["address"] == follows).then_some(())
        },
    )
    .await
    .unwrap();
    let mut con = sync_db(current).await;
    for tenant in TENANTS {
        for tier in [1, 2] {
            let entries = up_entries(&mut con, tenant, tier).await.unwrap();
            assert_exactly_once(&fleet, tenant, tier, &entries);
        }
    }
    eprintln!(
        "scenario 12: {} items from {} devices of 3 tenants exactly once; primary {first} killed: \
         Sentinels named {second} after {:.2} s; probe's pushes refused from +{:.2} s, accepted \
         again at +{:.2} s (gap {:.2} s, the old primary rejoining as a replica included); the \
         probe stored {probe_stored} items",
        fleet.total(),
        fleet.devices.len(),
        promoted.as_secs_f64(),
        (refused - killed_at).as_secs_f64(),
        (accepted - killed_at).as_secs_f64(),
        (accepted - refused).as_secs_f64(),
    );
}

/// Without `--min-replicas-acked` the gap in pushes is the failover itself: Sentinel's
/// detection and election, plus the server's next look at the Sentinels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wait_the_gap_is_the_failover() {
    let mut sentinels = RedisSentinels::start(SentinelOptions::default())
        .await
        .unwrap();
    let server = TestServer::start(ServerOptions::sentinel(
        sentinels.sentinel_urls(),
        sentinels.master_name(),
    ))
    .await
    .unwrap();
    let probe = started_probe(&server, "probes", "probe", Duration::from_millis(50)).await;
    sentinels.kill_primary().await.unwrap();
    let killed_at = Instant::now();
    let promoted = sentinels
        .wait_for_failover(Duration::from_secs(30))
        .await
        .unwrap();
    let ((refused, accepted), _) = finish_probe(probe, killed_at, Duration::from_secs(30)).await;
    assert!(
        accepted - killed_at <= promoted + Duration::from_secs(5),
        "the server took more than 5 s after the promotion to follow"
    );
    eprintln!(
        "scenario 12 (no WAIT): Sentinels named the replica after {:.2} s; probe's pushes refused \
         from +{:.2} s, accepted again at +{:.2} s (gap {:.2} s)",
        promoted.as_secs_f64(),
        (refused - killed_at).as_secs_f64(),
        (accepted - killed_at).as_secs_f64(),
        (accepted - refused).as_secs_f64(),
    );
}

async fn set_policy(sentinels: &RedisSentinels, port: u16, policy: &str) {
    let mut con = sentinels.connection(port).await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg(policy)
        .query_async(&mut con)
        .await
        .unwrap();
}

/// A new primary that could evict gets no pushes — start-up's rule, applied at the failover —
/// until an operator fixes its policy; `/readyz` says why meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_primary_that_could_evict_gets_no_pushes() {
    let mut sentinels = RedisSentinels::start(SentinelOptions::default())
        .await
        .unwrap();
    let first = sentinels.primary_port().await.unwrap();
    let replica = sentinels
        .redis_ports()
        .into_iter()
        .find(|p| *p != first)
        .unwrap();
    let server = TestServer::start(ServerOptions::sentinel(
        sentinels.sentinel_urls(),
        sentinels.master_name(),
    ))
    .await
    .unwrap();
    set_policy(&sentinels, replica, "allkeys-lru").await;
    sentinels.kill_primary().await.unwrap();
    sentinels
        .wait_for_failover(Duration::from_secs(30))
        .await
        .unwrap();
    let ready_url = format!("{}/readyz", server.url());
    let reason = wait_for(
        Duration::from_secs(20),
        "readyz reports the refusal",
        || async {
            let answer = reqwest::get(&ready_url).await.ok()?;
            let body: serde_json::Value = answer.json().await.ok()?;
            body["sync_store"]["refusing_pushes"]
                .as_str()
                .map(str::to_owned)
        },
    )
    .await
    .unwrap();
    assert!(reason.contains("allkeys-lru"), "{reason}");
    assert_eq!(reqwest::get(&ready_url).await.unwrap().status(), 503);
    let (log, stop_probe, probe_task) =
        probe(&server, "probes", "probe", Duration::from_millis(50));
    wait_for(Duration::from_secs(10), "a refused push", || async {
        (!log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .refused
            .is_empty())
        .then_some(())
    })
    .await
    .unwrap();
    assert!(
        log.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .accepted
            .is_empty()
    );

    set_policy(&sentinels, replica, "noeviction").await;
    wait_for(
        Duration::from_secs(20),
        "pushes accepted once fixed",
        || async {
            (!log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .accepted
                .is_empty())
            .then_some(())
        },
    )
    .await
    .unwrap();
    stop_probe.store(true, Ordering::SeqCst);
    probe_task.await.unwrap();
    assert_eq!(reqwest::get(&ready_url).await.unwrap().status(), 200);
}
