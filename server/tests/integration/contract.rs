//! The store contract: the same scenarios, through the whole HTTP API, against the Redis store
//! and the embedded SQLite store. Whatever an app developer sees on a laptop is what production
//! does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};

use crate::support::{Backend, PRODUCER, TestServer, b64, batch, item, new_id, now_ms};

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod redis_store {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::support::Backend::Redis).await;
                }
            )*
        }
        mod embedded_store {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::support::Backend::Embedded).await;
                }
            )*
        }
        // Every behaviour again with the server as its least-privilege ACL user.
        mod least_privilege_store {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::support::Backend::RedisLeastPrivilege).await;
                }
            )*
        }
        // Every behaviour of the single-instance store, on a Redis Cluster of three primaries.
        mod cluster_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::support::Backend::Cluster).await;
                }
            )*
        }
    };
}

contract!(
    push_is_exactly_once_and_ordered,
    a_replayed_batch_is_all_duplicate_and_appends_nothing,
    a_batch_half_stored_earlier_stores_its_second_half,
    equal_seqs_of_other_devices_tenants_and_producers_do_not_interfere,
    seq_zero_and_non_increasing_seqs_are_invalid_seq,
    the_hello_reports_last_seq_and_refreshes_the_expiry,
    an_idle_producer_is_forgotten_after_its_ttl,
    a_bad_producer_is_refused_and_nothing_is_written,
    publish_then_pull_pages_through_both_streams,
    cache_round_trip_with_ttls,
    rate_limits_answer_429_per_device_and_per_tenant,
    tenant_policy_is_enforced,
);

async fn push_is_exactly_once_and_ordered(backend: Backend) {
    let server = TestServer::start(backend, |_| {}).await;
    let token = server.token("acme", "phone-1");
    let ids: Vec<String> = (0..20).map(|_| new_id()).collect();
    let batch: Vec<Value> = ids
        .iter()
        .zip(1u64..)
        .map(|(id, seq)| item(id, seq, 2, "user_cache", &format!("k{seq}"), b"v"))
        .collect();
    let first = server.push(&token, batch.clone()).await;
    assert_eq!(first.statuses(), vec!["accepted"; 20]);
    assert_eq!(first.last_seq(), [0, 20, 0, 0]);
    // A replay, and a batch overlapping the first: only the new items are stored.
    assert_eq!(
        server.push(&token, batch.clone()).await.statuses(),
        vec!["duplicate"; 20]
    );
    let extra = new_id();
    let overlap = vec![
        batch[18].clone(),
        batch[19].clone(),
        item(&extra, 21, 2, "user_cache", "new", b"v"),
    ];
    let reply = server.push(&token, overlap).await;
    assert_eq!(reply.statuses(), ["duplicate", "duplicate", "accepted"]);
    assert_eq!(reply.last_seq(), [0, 21, 0, 0]);
    let mut expected = ids.clone();
    expected.push(extra);
    assert_eq!(server.stored_ids("acme", 2).await, expected);
    assert!(server.stored_ids("acme", 1).await.is_empty());
    // A mixed batch: the bad item is rejected alone. Tiers count separately: tier 1 starts at 1.
    let good = new_id();
    let reply = server
        .push(
            &token,
            vec![
                item(&new_id(), 1, 9, "user_cache", "k", b"v"),
                item(&good, 1, 1, "user_cache", "k", b"v"),
            ],
        )
        .await;
    assert_eq!(reply.statuses(), ["rejected", "accepted"]);
    assert_eq!(reply.value()["results"][0]["code"], "invalid_tier");
    assert_eq!(reply.last_seq(), [1, 21, 0, 0]);
    assert_eq!(server.stored_ids("acme", 1).await, vec![good]);
    // An empty batch is fine, stores nothing and says where the producer stands.
    let empty = server.push(&token, vec![]).await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.last_seq(), [1, 21, 0, 0]);
}

async fn a_replayed_batch_is_all_duplicate_and_appends_nothing(backend: Backend) {
    let server = TestServer::start(backend, |_| {}).await;
    let token = server.token("acme", "phone-1");
    let (ids, items) = batch(1, 10, 3);
    assert_eq!(
        server.push(&token, items.clone()).await.statuses(),
        vec!["accepted"; 10]
    );
    for _ in 0..3 {
        let replay = server.push(&token, items.clone()).await;
        assert_eq!(replay.statuses(), vec!["duplicate"; 10]);
        assert_eq!(replay.last_seq(), [0, 0, 10, 0]);
    }
    // Read from the store itself (Redis: XRANGE; embedded: its table): nothing appended.
    assert_eq!(server.stored_ids("acme", 3).await, ids);
}

async fn a_batch_half_stored_earlier_stores_its_second_half(backend: Backend) {
    let server = TestServer::start(backend, |_| {}).await;
    let token = server.token("acme", "phone-1");
    // The device sent ten items, the server stored the first five and the answer was lost; the
    // device then sends all ten again (say, with a larger batch size).
    let (ids, items) = batch(1, 10, 1);
    assert_eq!(
        server.push(&token, items[..5].to_vec()).await.statuses(),
        vec!["accepted"; 5]
    );
    let reply = server.push(&token, items).await;
    let mut expected = vec!["duplicate"; 5];
    expected.extend(["accepted"; 5]);
    assert_eq!(reply.statuses(), expected);
    assert_eq!(reply.last_seq(), [10, 0, 0, 0]);
    assert_eq!(server.stored_ids("acme", 1).await, ids);
}

async fn equal_seqs_of_other_devices_tenants_and_producers_do_not_interfere(backend: Backend) {
    let server = TestServer::start(backend, |_| {}).await;
    // The same producer id and the same seqs from two devices of one tenant, from a device of
    // another tenant, and from a second producer of the first device.
    let pushers = [
        ("acme", "phone-1", PRODUCER),
        ("acme", "phone-2", PRODUCER),
        ("globex", "phone-1", PRODUCER),
        ("acme", "phone-1", "second-outbox"),
    ];
    let mut acme = Vec::new();
    for (tenant, device, producer) in pushers {
        let token = server.token(tenant, device);
        let (ids, items) = batch(1, 3, 1);
        let reply = server.push_as(&token, producer, items.clone()).await;
        assert_eq!(
            reply.statuses(),
            ["accepted"; 3],
            "{tenant}/{device}/{producer}"
        );
        assert_eq!(reply.last_seq(), [3, 0, 0, 0]);
        if tenant == "acme" {
            acme.extend(ids.clone());
        } else {
            assert_eq!(server.stored_ids("globex", 1).await, ids);
        }
    }
    // Across devices there is no order to check (on a cluster their partitions are separate
    // streams, and entries pushed in the same millisecond interleave when merged).
    let mut stored = server.stored_ids("acme", 1).await;
    stored.sort();
    acme.sort();
    assert_eq!(stored, acme);
    // Each pusher's state is its own: a replay is a duplicate only for the one that sent it.
    for (tenant, device, producer) in pushers {
        let token = server.token(tenant, device);
        let (_, next) = batch(4, 1, 1);
        assert_eq!(
            server.push_as(&token, producer, next).await.statuses(),
            ["accepted"]
        );
        assert_eq!(server.hello_last_seq(&token, producer).await, [4, 0, 0, 0]);
    }
    assert_eq!(server.stored_ids("acme", 1).await.len(), 9 + 3);
    assert_eq!(server.stored_ids("globex", 1).await.len(), 4);
}

async fn seq_zero_and_non_increasing_seqs_are_invalid_seq(backend: Backend) {
    let server = TestServer::start(backend, |_| {}).await;
    let token = server.token("acme", "phone-1");
    let ids: Vec<String> = (0..8).map(|_| new_id()).collect();
    let items = vec![
        item(&ids[0], 0, 1, "user_cache", "a", b"seq 0"),
        item(&ids[1], 3, 1, "user_cache", "b", b"first valid"),
        item(&ids[2], 3, 1, "user_cache", "c", b"repeats 3"),
        item(&ids[3], 2, 1, "user_cache", "d", b"goes back"),
        item(
            &ids[4],
            1,
            2,
            "user_cache",
            "e",
            b"another tier counts apart",
        ),
        item(
            &ids[5],
            10,
            1,
            "no_such_ns",
            "f",
            b"invalid: does not count",
        ),
        item(&ids[6], 4, 1, "user_cache", "g", b"above 3"),
        item(&ids[7], 4, 2, "user_cache", "h", b"above 1 in tier 2"),
    ];
    let reply = server.push(&token, items).await;
    assert_eq!(reply.status, StatusCode::OK);
    let v = reply.value();
    let codes: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap_or(r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        [
            "invalid_seq",
            "accepted",
            "invalid_seq",
            "invalid_seq",
            "accepted",
            "unknown_namespace",
            "accepted",
            "accepted"
        ]
    );
    assert_eq!(reply.last_seq(), [4, 4, 0, 0]);
    assert_eq!(
        server.stored_ids("acme", 1).await,
        [ids[1].clone(), ids[6].clone()]
    );
    assert_eq!(
        server.stored_ids("acme", 2).await,
        [ids[4].clone(), ids[7].clone()]
    );
    // A seq at or below the stored one in a later batch is a duplicate, not invalid: the device
    // may resend what was stored.
    let again = server
        .push(
            &token,
            vec![item(&ids[6], 4, 1, "user_cache", "g", b"resent")],
        )
        .await;
    assert_eq!(again.statuses(), ["duplicate"]);
}

async fn the_hello_reports_last_seq_and_refreshes_the_expiry(backend: Backend) {
    let server = TestServer::start(backend, |_| {}).await;
    let token = server.token("acme", "phone-1");
    // Nothing stored: all zeros, and the hello creates nothing.
    assert_eq!(server.hello_last_seq(&token, PRODUCER).await, [0; 4]);
    assert_eq!(
        server.producer_state("acme", "phone-1", PRODUCER).await,
        None
    );

    let (_, tier1) = batch(1, 3, 1);
    let (_, tier3) = batch(1, 1, 3);
    server.push(&token, tier1).await;
    server.push(&token, tier3).await;
    let (last, pushed_expiry) = server
        .producer_state("acme", "phone-1", PRODUCER)
        .await
        .unwrap();
    assert_eq!(last, [3, 0, 1, 0]);
    let ttl = server.state.config.producer_ttl;
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap();
    assert!(pushed_expiry <= now_ms() + ttl_ms, "{pushed_expiry}");

    // Once the clock has moved on, a hello pushes the expiry further out.
    let deadline = Instant::now() + Duration::from_secs(5);
    while now_ms() <= pushed_expiry - ttl_ms + 5 {
        assert!(Instant::now() < deadline, "the clock does not move");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(server.hello_last_seq(&token, PRODUCER).await, [3, 0, 1, 0]);
    let (_, refreshed) = server
        .producer_state("acme", "phone-1", PRODUCER)
        .await
        .unwrap();
    assert!(
        refreshed > pushed_expiry,
        "the hello did not refresh the expiry: {refreshed} <= {pushed_expiry}"
    );
    // Another device's hello for the same producer id knows nothing.
    let other = server.token("acme", "phone-2");
    assert_eq!(server.hello_last_seq(&other, PRODUCER).await, [0; 4]);
}

async fn an_idle_producer_is_forgotten_after_its_ttl(backend: Backend) {
    let ttl = Duration::from_millis(400);
    let server = TestServer::start(backend, |c| c.producer_ttl = ttl).await;
    let token = server.token("acme", "phone-1");
    let (ids, items) = batch(1, 2, 1);
    assert_eq!(
        server.push(&token, items.clone()).await.statuses(),
        ["accepted"; 2]
    );
    let (last, expiry) = server
        .producer_state("acme", "phone-1", PRODUCER)
        .await
        .unwrap();
    assert_eq!(last, [2, 0, 0, 0]);
    assert!(expiry <= now_ms() + 400, "expires at {expiry}");
    if let Some(redis) = &server.redis {
        let mut db11 = redis.db(11).await;
        let pttl: i64 = redis::cmd("PTTL")
            .arg(format!(
                "tenant:acme:mobile_sync:producer:{{acme:p0}}:phone-1:{PRODUCER}"
            ))
            .query_async(&mut db11)
            .await
            .unwrap();
        assert!((1..=400).contains(&pttl), "pttl {pttl}");
    }

    // Idle (no push, no hello): forgotten once the time is up. Polled without refreshing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server
        .producer_state("acme", "phone-1", PRODUCER)
        .await
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "the producer was never forgotten"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The documented limit: a batch resent after the idle time is stored again. (Backends
    // dedupe on the item id for this case.)
    assert_eq!(server.hello_last_seq(&token, PRODUCER).await, [0; 4]);
    assert_eq!(server.push(&token, items).await.statuses(), ["accepted"; 2]);
    let mut twice = ids.clone();
    twice.extend(ids);
    assert_eq!(server.stored_ids("acme", 1).await, twice);
}

async fn a_bad_producer_is_refused_and_nothing_is_written(backend: Backend) {
    let server = TestServer::start(backend, |_| {}).await;
    let token = server.token("acme", "phone-1");
    let (_, items) = batch(1, 2, 1);
    let long = "p".repeat(kryonix_protocol::wire::MAX_PRODUCER_LEN + 1);
    for producer in ["", "a:b", "a b", "a.b", "é", long.as_str()] {
        server
            .push_as(&token, producer, items.clone())
            .await
            .assert_error(StatusCode::BAD_REQUEST, "malformed");
        server
            .hello(&token, producer)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "malformed");
    }
    // No producer at all: a version 1 body.
    let reply = server
        .call(
            Method::POST,
            "/v1/sync/push",
            Some(&token),
            Some(&json!({ "items": items })),
        )
        .await;
    reply.assert_error(StatusCode::BAD_REQUEST, "malformed");
    for tier in 1..=4 {
        assert!(server.stored_ids("acme", tier).await.is_empty());
    }
    if let Some(redis) = &server.redis {
        assert_eq!(redis.key_counts().await, vec![0; 16]);
    }
    // The longest valid producer id works.
    let longest = "p".repeat(kryonix_protocol::wire::MAX_PRODUCER_LEN);
    assert_eq!(
        server.push_as(&token, &longest, items).await.statuses(),
        ["accepted"; 2]
    );
}

/// 20 tasks push the same batch at once: every item is stored exactly once, and exactly one
/// answer says `accepted` for it. On Redis this races the WATCH/MULTI transactions, so the
/// losers start over and find their items stored. Whether a round races depends on
/// scheduling; on Redis, rounds repeat (with the next seqs) until one did, at most five.
async fn concurrent_identical_batches_store_every_item_once(backend: Backend) {
    let server = Arc::new(TestServer::start(backend, |_| {}).await);
    let token = server.token("acme", "phone-1");
    let mut stored = Vec::new();
    for round in 0..5u64 {
        let (ids, items) = batch(round * 50 + 1, 50, 1);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let server = Arc::clone(&server);
                let token = token.clone();
                let items = items.clone();
                tokio::spawn(async move { server.push(&token, items).await })
            })
            .collect();
        let mut accepted = vec![0; ids.len()];
        for task in tasks {
            let reply = task.await.unwrap();
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&reply.bytes)
            );
            assert_eq!(reply.last_seq(), [round * 50 + 50, 0, 0, 0]);
            for (count, status) in accepted.iter_mut().zip(reply.statuses()) {
                match status.as_str() {
                    "accepted" => *count += 1,
                    "duplicate" => {}
                    other => panic!("unexpected {other}"),
                }
            }
        }
        assert_eq!(accepted, vec![1; ids.len()]);
        stored.extend(ids);
        assert_eq!(server.stored_ids("acme", 1).await, stored);
        if backend == Backend::Embedded || conflicts(&server).await > 0 {
            break;
        }
    }
    if backend == Backend::Redis {
        let conflicts = conflicts(&server).await;
        eprintln!("identical batches: {conflicts} push transactions started over");
        assert!(
            conflicts > 0,
            "no round raced: the retry path was not exercised"
        );
    }
}

/// Eight tasks push growing prefixes of one sequence at once (1..=5, 1..=10, … 1..=40): a
/// transaction that loses the race may still have new items, so it starts over and stores
/// them. Every item is stored once, in seq order.
async fn concurrent_overlapping_batches_store_every_item_once(backend: Backend) {
    let server = Arc::new(TestServer::start(backend, |_| {}).await);
    let token = server.token("acme", "phone-1");
    let (ids, items) = batch(1, 40, 2);
    let tasks: Vec<_> = (1..=8)
        .map(|k| {
            let server = Arc::clone(&server);
            let token = token.clone();
            let prefix = items[..5 * k].to_vec();
            tokio::spawn(async move { server.push(&token, prefix).await })
        })
        .collect();
    let mut accepted = vec![0; ids.len()];
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&reply.bytes)
        );
        for (count, status) in accepted.iter_mut().zip(reply.statuses()) {
            if status == "accepted" {
                *count += 1;
            }
        }
    }
    assert_eq!(accepted, vec![1; ids.len()]);
    assert_eq!(server.stored_ids("acme", 2).await, ids);
    assert_eq!(server.hello_last_seq(&token, PRODUCER).await, [0, 40, 0, 0]);
    eprintln!(
        "overlapping batches: {} push transactions started over",
        conflicts(&server).await
    );
}

/// `kryonix_push_conflicts_total`: push transactions that started over.
async fn conflicts(server: &TestServer) -> u64 {
    let metrics = server.call(Method::GET, "/metrics", None, None).await;
    String::from_utf8_lossy(&metrics.bytes)
        .lines()
        .find_map(|l| l.strip_prefix("kryonix_push_conflicts_total "))
        .map_or(0, |n| n.trim().parse().unwrap())
}

mod concurrent {
    //! The concurrency scenarios on a multi-threaded runtime, so the pushes really overlap.

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_identical_batches() {
        super::concurrent_identical_batches_store_every_item_once(crate::support::Backend::Redis)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn embedded_identical_batches() {
        super::concurrent_identical_batches_store_every_item_once(
            crate::support::Backend::Embedded,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_overlapping_batches() {
        super::concurrent_overlapping_batches_store_every_item_once(crate::support::Backend::Redis)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn embedded_overlapping_batches() {
        super::concurrent_overlapping_batches_store_every_item_once(
            crate::support::Backend::Embedded,
        )
        .await;
    }
}

async fn publish(server: &TestServer, device: Option<&str>, key: &str, value: &str) -> String {
    let mut body = json!({"changes": [{
        "namespace": "tenant_config", "key": key, "op": "put",
        "value": b64(value.as_bytes()), "encoding": "identity", "ttl_secs": 600
    }]});
    if let Some(d) = device {
        body["device_id"] = json!(d);
    }
    let reply = server
        .call(
            Method::POST,
            "/v1/publish",
            Some(&server.service_token("acme")),
            Some(&body),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.bytes);
    reply.value()["ids"][0].as_str().unwrap().to_owned()
}

async fn pull(server: &TestServer, token: &str, cursor: &str, limit: usize) -> Value {
    let reply = server
        .call(
            Method::GET,
            &format!("/v1/sync/pull?cursor={cursor}&limit={limit}"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.bytes);
    reply.value()
}

async fn publish_then_pull_pages_through_both_streams(backend: Backend) {
    let server = TestServer::start(backend, |_| {}).await;
    // Interleave tenant-wide and device-targeted changes.
    let plan = [
        (None, "all-1"),
        (Some("phone-1"), "p1-1"),
        (None, "all-2"),
        (Some("phone-2"), "p2-1"),
        (Some("phone-1"), "p1-2"),
        (None, "all-3"),
    ];
    let mut ids = Vec::new();
    for (device, value) in plan {
        ids.push(publish(&server, device, &format!("flag-{value}"), value).await);
    }
    assert!(
        ids[0].starts_with("t/") && ids[1].starts_with("d/"),
        "{ids:?}"
    );

    let phone1 = server.token("acme", "phone-1");
    let mut cursor = String::new();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = pull(&server, &phone1, &cursor, 2).await;
        pages += 1;
        for change in page["changes"].as_array().unwrap() {
            assert_eq!(change["namespace"], "tenant_config");
            assert_eq!(change["op"], "put");
            assert_eq!(change["ttl_secs"], 600);
            assert!(change["published_at_ms"].as_i64().unwrap() > 1_700_000_000_000);
            let value = base64_decode(change["value"].as_str().unwrap());
            assert_eq!(change["key"], format!("flag-{value}"));
            seen.push(value);
        }
        cursor = page["cursor"].as_str().unwrap().to_owned();
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        assert!(pages < 10);
    }
    assert_eq!(seen, ["all-1", "p1-1", "all-2", "p1-2", "all-3"]);
    assert_eq!(pages, 3);

    // Nothing new: an empty page, same position.
    let again = pull(&server, &phone1, &cursor, 100).await;
    assert_eq!(again["changes"], json!([]));
    assert_eq!(again["has_more"], false);
    // A new change appears after the stored cursor, and only it.
    publish(&server, None, "flag-all-4", "all-4").await;
    let next = pull(&server, &phone1, &cursor, 100).await;
    let values: Vec<String> = next["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| base64_decode(c["value"].as_str().unwrap()))
        .collect();
    assert_eq!(values, ["all-4"]);

    // Another device sees the tenant-wide changes and its own only.
    let phone2 = server.token("acme", "phone-2");
    let all = pull(&server, &phone2, "", 1000).await;
    let values: Vec<String> = all["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| base64_decode(c["value"].as_str().unwrap()))
        .collect();
    assert_eq!(values, ["all-1", "all-2", "p2-1", "all-3", "all-4"]);
    // Change ids are unique.
    let mut change_ids: Vec<&str> = all["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    change_ids.dedup();
    assert_eq!(change_ids.len(), 5);
}

fn base64_decode(s: &str) -> String {
    use base64::Engine as _;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).unwrap()).unwrap()
}

async fn cache_round_trip_with_ttls(backend: Backend) {
    let server = TestServer::start(backend, |_| {}).await;
    let token = server.token("acme", "phone-1");
    let put = |path: &'static str, body: Value, profile: Option<&'static str>| {
        let server = &server;
        let token = &token;
        async move {
            let mut request = Request::builder()
                .method(Method::PUT)
                .uri(path)
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::CONTENT_TYPE, "application/json");
            if let Some(p) = profile {
                request = request.header("kryonix-device-profile", p);
            }
            let reply = server
                .send(
                    request
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                )
                .await;
            assert_eq!(reply.status, StatusCode::NO_CONTENT, "{:?}", reply.bytes);
        }
    };
    let get = |path: &'static str| {
        let server = &server;
        let token = &token;
        async move { server.call(Method::GET, path, Some(token), None).await }
    };

    put(
        "/v1/cache/user_cache/explicit",
        json!({"value": b64(b"one"), "ttl_secs": 100}),
        None,
    )
    .await;
    put(
        "/v1/cache/user_cache/default",
        json!({"value": b64(b"two"), "encoding": "lz4"}),
        None,
    )
    .await;
    put(
        "/v1/cache/api_cache/slow-phone",
        json!({"value": b64(b"three")}),
        Some("phone;cellular-slow"),
    )
    .await;
    put(
        "/v1/cache/api_cache/desktop",
        json!({"value": b64(b"four")}),
        Some("desktop;wifi"),
    )
    .await;
    // tenant_config is off the mobile table: a profile does not shorten its 2 h.
    put(
        "/v1/cache/tenant_config/flags",
        json!({"value": b64(b"five")}),
        Some("desktop;wifi"),
    )
    .await;

    let ttl = |v: &Value| v["ttl_secs"].as_u64().unwrap();
    let explicit = get("/v1/cache/user_cache/explicit").await.value();
    assert_eq!(explicit["key"], "explicit");
    assert_eq!(explicit["value"], b64(b"one"));
    assert_eq!(explicit["encoding"], "identity");
    assert!((99..=100).contains(&ttl(&explicit)), "{explicit}");
    let default = get("/v1/cache/user_cache/default").await.value();
    assert_eq!(default["encoding"], "lz4");
    assert!(
        (7199..=7200).contains(&ttl(&default)),
        "user_cache default is 2 h: {default}"
    );
    let slow = get("/v1/cache/api_cache/slow-phone").await.value();
    assert!((3599..=3600).contains(&ttl(&slow)), "{slow}");
    let desktop = get("/v1/cache/api_cache/desktop").await.value();
    assert!((899..=900).contains(&ttl(&desktop)), "{desktop}");
    let flags = get("/v1/cache/tenant_config/flags").await.value();
    assert!((7199..=7200).contains(&ttl(&flags)), "{flags}");

    // Overwrite, multi-get with a miss, delete.
    put(
        "/v1/cache/user_cache/explicit",
        json!({"value": b64(b"uno")}),
        None,
    )
    .await;
    let many = server
        .call(
            Method::POST,
            "/v1/cache/user_cache/_mget",
            Some(&token),
            Some(&json!({"keys": ["explicit", "missing", "default"]})),
        )
        .await
        .value();
    let entries = many["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["value"], b64(b"uno"));
    assert!(entries[1].is_null());
    assert_eq!(entries[2]["value"], b64(b"two"));
    // The same key in another namespace is another entry.
    get("/v1/cache/api_cache/explicit")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let del = server
        .call(
            Method::DELETE,
            "/v1/cache/user_cache/explicit",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    get("/v1/cache/user_cache/explicit")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    // Keys may hold ':' and percent-encoded '/'.
    put(
        "/v1/cache/file_metadata/user:42:avatar%2Fsmall",
        json!({"value": b64(b"img")}),
        None,
    )
    .await;
    let nested = get("/v1/cache/file_metadata/user:42:avatar%2Fsmall")
        .await
        .value();
    assert_eq!(nested["key"], "user:42:avatar/small");
}

async fn rate_limits_answer_429_per_device_and_per_tenant(backend: Backend) {
    let server = TestServer::start(backend, |c| {
        c.default_policy.device_rate_per_sec = 2;
        c.default_policy.rate_per_sec = 3;
    })
    .await;
    let phone1 = server.token("acme", "phone-1");
    let get = |token: &str| {
        let token = token.to_owned();
        let server = &server;
        async move {
            server
                .call(Method::GET, "/v1/cache/user_cache/k", Some(&token), None)
                .await
        }
    };
    // A burst of one second's worth passes (404: no such entry), then 429.
    for _ in 0..2 {
        assert_eq!(get(&phone1).await.status, StatusCode::NOT_FOUND);
    }
    let limited = get(&phone1).await;
    limited.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(
        limited.value()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("device")
    );
    let wait = limited.retry_after().unwrap();
    assert!((1..=1).contains(&wait), "retry after {wait}");

    // Another device has its own budget, until the tenant's (3/s, 2 used) runs out.
    let phone2 = server.token("acme", "phone-2");
    assert_eq!(get(&phone2).await.status, StatusCode::NOT_FOUND);
    let tenant_limited = get(&phone2).await;
    tenant_limited.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(
        tenant_limited.value()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tenant")
    );

    // Another tenant is untouched.
    let other = server.token("globex", "phone-1");
    assert_eq!(get(&other).await.status, StatusCode::NOT_FOUND);

    // Health endpoints are never rate limited.
    for _ in 0..10 {
        assert_eq!(
            server
                .call(Method::GET, "/healthz", None, None)
                .await
                .status,
            StatusCode::OK
        );
    }
}

async fn tenant_policy_is_enforced(backend: Backend) {
    use kryonix_protocol::Namespace;
    use kryonix_server::config::TenantPolicy;
    let server = TestServer::start(backend, |c| {
        c.tenants.insert(
            "frozen".into(),
            TenantPolicy {
                read_only: true,
                rate_per_sec: 0,
                device_rate_per_sec: 0,
                allowed_namespaces: None,
            },
        );
        c.tenants.insert(
            "narrow".into(),
            TenantPolicy {
                read_only: false,
                rate_per_sec: 0,
                device_rate_per_sec: 0,
                allowed_namespaces: Some(vec![Namespace::UserCache]),
            },
        );
    })
    .await;
    let frozen = server.token("frozen", "phone-1");
    server
        .push(
            &frozen,
            vec![item(&new_id(), 1, 1, "user_cache", "k", b"v")],
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    server
        .call(
            Method::PUT,
            "/v1/cache/user_cache/k",
            Some(&frozen),
            Some(&json!({"value": b64(b"v")})),
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    server
        .call(
            Method::DELETE,
            "/v1/cache/user_cache/k",
            Some(&frozen),
            None,
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    // Reading is still allowed.
    server
        .call(Method::GET, "/v1/cache/user_cache/k", Some(&frozen), None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        server
            .call(Method::GET, "/v1/sync/pull", Some(&frozen), None)
            .await
            .status,
        StatusCode::OK
    );
    assert!(server.stored_ids("frozen", 1).await.is_empty());

    let narrow = server.token("narrow", "phone-1");
    server
        .call(Method::GET, "/v1/cache/sessions/k", Some(&narrow), None)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    server
        .call(
            Method::POST,
            "/v1/publish",
            Some(&server.service_token("narrow")),
            Some(&json!({"changes": [{"namespace": "sessions", "key": "k", "op": "delete"}]})),
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    let reply = server
        .push(
            &narrow,
            vec![
                item(&new_id(), 1, 1, "sessions", "k", b"v"),
                item(&new_id(), 2, 1, "user_cache", "k", b"v"),
            ],
        )
        .await;
    assert_eq!(reply.statuses(), ["rejected", "accepted"]);
}
