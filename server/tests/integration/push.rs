//! Push against a real Redis, checked in Redis itself with a plain client.

use std::collections::HashMap;

use axum::http::{Method, StatusCode};
use redis::AsyncCommands;
use serde_json::json;

use crate::support::{PRODUCER, RedisOptions, TestServer, item, new_id};

/// The producer record of `phone-1` of `acme` for [`PRODUCER`].
fn record() -> String {
    format!("tenant:acme:mobile_sync:producer:{{acme:p0}}:phone-1:{PRODUCER}")
}

#[tokio::test]
async fn pushed_items_land_in_their_tier_stream_in_db_11() {
    let server = TestServer::with_redis(RedisOptions::default(), |_| {}).await;
    let token = server.token("acme", "phone-1");
    let ids = [new_id(), new_id(), new_id()];
    let reply = server
        .push(
            &token,
            vec![
                item(
                    &ids[0],
                    1,
                    1,
                    "user_cache",
                    "profile:42",
                    b"{\"name\":\"Ada\"}",
                ),
                item(&ids[1], 1, 4, "analytics_temp", "events", b"click"),
                item(
                    &ids[2],
                    2,
                    1,
                    "user_cache",
                    "profile:43",
                    &[0, 159, 146, 150],
                ),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.statuses(), ["accepted", "accepted", "accepted"]);
    assert_eq!(reply.last_seq(), [2, 0, 0, 1]);
    let results = reply.value();
    assert_eq!(results["results"][0]["id"], ids[0].as_str());

    let mut db11 = server.redis().db(11).await;
    let t1: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg("tenant:acme:mobile_sync:up:{acme:p0}:t1")
        .arg("-")
        .arg("+")
        .query_async(&mut db11)
        .await
        .unwrap();
    assert_eq!(t1.len(), 2, "tier 1 holds both tier-1 items, in order");
    let fields = |entry: &(String, Vec<Vec<u8>>)| -> std::collections::HashMap<String, Vec<u8>> {
        entry
            .1
            .chunks(2)
            .map(|p| (String::from_utf8(p[0].clone()).unwrap(), p[1].clone()))
            .collect()
    };
    let first = fields(&t1[0]);
    assert_eq!(first.len(), 2, "{:?}", first.keys());
    let meta: serde_json::Value = serde_json::from_slice(&first["item"]).unwrap();
    assert_eq!(
        meta,
        json!({
            "id": ids[0],
            "device_id": "phone-1",
            "producer": PRODUCER,
            "seq": 1,
            "tier": 1,
            "namespace": "user_cache",
            "key": "profile:42",
            "op": "put",
            "encoding": "identity",
            "created_at_ms": 1_764_000_000_000_i64,
        })
    );
    assert_eq!(first["payload"], b"{\"name\":\"Ada\"}");
    assert_eq!(
        fields(&t1[1])["payload"],
        [0, 159, 146, 150],
        "payload bytes are stored raw"
    );

    let t4: i64 = db11
        .xlen("tenant:acme:mobile_sync:up:{acme:p0}:t4")
        .await
        .unwrap();
    assert_eq!(t4, 1);
    let t2: i64 = db11
        .xlen("tenant:acme:mobile_sync:up:{acme:p0}:t2")
        .await
        .unwrap();
    assert_eq!(t2, 0);

    // One record for the producer: the last seq of the tiers it used, living 30 days.
    let fields: HashMap<String, u64> = db11.hgetall(record()).await.unwrap();
    assert_eq!(
        fields,
        HashMap::from([("1".to_owned(), 2), ("4".to_owned(), 1)])
    );
    let pttl: i64 = db11.pttl(record()).await.unwrap();
    let days_30 = 30 * 24 * 3600 * 1000;
    assert!(
        (days_30 - 60_000..=days_30).contains(&pttl),
        "record pttl {pttl}"
    );
    let keys: Vec<String> = db11.keys("*").await.unwrap();
    assert_eq!(keys.len(), 3, "two streams and the record: {keys:?}");

    // Nothing leaked into other databases but the (disabled) rate limiter's.
    let counts = server.redis().key_counts().await;
    for (db, count) in counts.iter().enumerate() {
        if db != 11 {
            assert_eq!(*count, 0, "db {db}");
        }
    }
}

#[tokio::test]
async fn a_replayed_batch_is_duplicate_and_adds_no_entry() {
    let server = TestServer::with_redis(RedisOptions::default(), |_| {}).await;
    let token = server.token("acme", "phone-1");
    let batch: Vec<_> = (1..=5)
        .map(|seq| item(&new_id(), seq, 2, "user_cache", &format!("k{seq}"), b"v"))
        .collect();
    let first = server.push(&token, batch.clone()).await;
    assert_eq!(first.statuses(), vec!["accepted"; 5]);
    let replay = server.push(&token, batch.clone()).await;
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(replay.statuses(), vec!["duplicate"; 5]);
    assert_eq!(replay.last_seq(), [0, 5, 0, 0]);

    // The same seq twice inside one batch: the second is refused, not stored.
    let twice = server
        .push(
            &token,
            vec![
                item(&new_id(), 6, 2, "user_cache", "x", b"1"),
                item(&new_id(), 6, 2, "user_cache", "x", b"2"),
            ],
        )
        .await;
    assert_eq!(twice.statuses(), ["accepted", "rejected"]);
    assert_eq!(twice.value()["results"][1]["code"], "invalid_seq");

    let mut db11 = server.redis().db(11).await;
    let len: i64 = db11
        .xlen("tenant:acme:mobile_sync:up:{acme:p0}:t2")
        .await
        .unwrap();
    assert_eq!(len, 6);
    let last: Option<u64> = db11.hget(record(), "2").await.unwrap();
    assert_eq!(last, Some(6));
}

#[tokio::test]
async fn a_mixed_batch_stores_only_the_valid_items() {
    let server = TestServer::with_redis(RedisOptions::default(), |c| {
        c.max_value_bytes = 64;
        c.tenants.insert(
            "acme".into(),
            kryonix_server::config::TenantPolicy {
                allowed_namespaces: Some(vec![kryonix_protocol::Namespace::UserCache]),
                ..test_policy()
            },
        );
    })
    .await;
    let token = server.token("acme", "phone-1");
    let good = [new_id(), new_id()];
    let long_key = "k".repeat(240);
    let reply = server
        .push(
            &token,
            vec![
                item(&good[0], 1, 1, "user_cache", "a", b"ok"),
                item(&new_id(), 2, 7, "user_cache", "b", b"bad tier"),
                item(&new_id(), 3, 1, "no_such_ns", "c", b"bad namespace"),
                item(
                    &new_id(),
                    4,
                    1,
                    "user_cache",
                    &long_key,
                    b"key over 250 bytes",
                ),
                item("not:an:id", 5, 1, "user_cache", "d", b"bad id"),
                item(&new_id(), 6, 1, "sessions", "e", b"namespace not allowed"),
                item(&new_id(), 7, 1, "user_cache", "f", &[7; 65]),
                item(
                    &new_id(),
                    8,
                    1,
                    "user_cache",
                    "bad\u{1}key",
                    b"control char",
                ),
                item(&new_id(), 0, 1, "user_cache", "h", b"seq 0"),
                item(&new_id(), 10, 1, "rate_limiting", "i", b"internal"),
                item(&new_id(), 11, 1, "mobile_sync", "j", b"internal"),
                item(&good[1], 12, 1, "user_cache", "g", b"ok too"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let v = reply.value();
    let codes: Vec<String> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| match r["status"].as_str().unwrap() {
            "rejected" => {
                assert!(!r["reason"].as_str().unwrap().is_empty());
                r["code"].as_str().unwrap().to_owned()
            }
            other => other.to_owned(),
        })
        .collect();
    assert_eq!(
        codes,
        [
            "accepted",
            "invalid_tier",
            "unknown_namespace",
            "invalid_key",
            "invalid_id",
            "forbidden",
            "too_large",
            "invalid_key",
            "invalid_seq",
            "forbidden",
            "forbidden",
            "accepted"
        ]
    );
    assert_eq!(reply.last_seq(), [12, 0, 0, 0]);
    assert_eq!(server.stored_ids("acme", 1).await, good.to_vec());
    // The stream and the producer's record, nothing per item.
    let mut db11 = server.redis().db(11).await;
    let keys: Vec<String> = db11.keys("*").await.unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
}

fn test_policy() -> kryonix_server::config::TenantPolicy {
    kryonix_server::config::TenantPolicy {
        allowed_namespaces: None,
        read_only: false,
        rate_per_sec: 0,
        device_rate_per_sec: 0,
    }
}

#[tokio::test]
async fn wait_for_replicas_answers_503_until_enough_replicas_confirm() {
    // No replica exists, so WAIT 1 can never be satisfied: the items are on the primary, the
    // answer is a retryable 503, and a retry does not store them twice.
    let server = TestServer::with_redis(RedisOptions::default(), |c| {
        c.min_replicas_acked = 1;
        c.wait_timeout = std::time::Duration::from_millis(50);
    })
    .await;
    let token = server.token("acme", "phone-1");
    let batch = vec![item(&new_id(), 1, 1, "user_cache", "a", b"1")];
    let reply = server.push(&token, batch.clone()).await;
    reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(reply.retry_after().is_some());
    // The retry finds the item stored (a duplicate) and still waits for the replica: the
    // record's refreshed expiry is a write of its own connection that WAIT counts, and it comes
    // after the item in the replication stream.
    let again = server.push(&token, batch).await;
    again.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert_eq!(server.stored_ids("acme", 1).await.len(), 1);
}

#[tokio::test]
async fn a_backend_consumes_the_up_stream_with_a_consumer_group() {
    // What docs/sync-protocol.md tells backends to do, run against what the server wrote.
    let server = TestServer::with_redis(RedisOptions::default(), |_| {}).await;
    let token = server.token("acme", "phone-1");
    let ids = [new_id(), new_id()];
    server
        .push(
            &token,
            ids.iter()
                .zip(1u64..)
                .map(|(id, seq)| item(id, seq, 3, "file_metadata", "doc:1", b"{}"))
                .collect(),
        )
        .await;
    let mut db11 = server.redis().db(11).await;
    let stream = "tenant:acme:mobile_sync:up:{acme:p0}:t3";
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("backend")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut db11)
        .await
        .unwrap();
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("backend")
        .arg("worker-1")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(&mut db11)
        .await
        .unwrap();
    let entries = &read.keys[0].ids;
    assert_eq!(entries.len(), 2);
    let got: Vec<(String, u64)> = entries
        .iter()
        .map(|e| {
            let meta: Vec<u8> = redis::from_redis_value_ref(&e.map["item"]).unwrap();
            let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
            assert_eq!(meta["producer"], PRODUCER);
            (
                meta["id"].as_str().unwrap().to_owned(),
                meta["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![(ids[0].clone(), 1), (ids[1].clone(), 2)],
        "entries carry the item id and the seq, in order"
    );
    let acked: i64 = redis::cmd("XACK")
        .arg(stream)
        .arg("backend")
        .arg(&entries[0].id)
        .arg(&entries[1].id)
        .query_async(&mut db11)
        .await
        .unwrap();
    assert_eq!(acked, 2);
    // XPENDING summary: [count, smallest id, greatest id, consumers].
    let pending: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(stream)
        .arg("backend")
        .query_async(&mut db11)
        .await
        .unwrap();
    assert_eq!(pending[0], redis::Value::Int(0));
}

#[tokio::test]
async fn device_and_service_scopes_are_enforced() {
    let server = TestServer::with_redis(RedisOptions::default(), |_| {}).await;
    let service = server.service_token("acme");
    let device = server.token("acme", "phone-1");
    server
        .push(
            &service,
            vec![item(&new_id(), 1, 1, "user_cache", "a", b"1")],
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    server
        .hello(&service, PRODUCER)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    server
        .call(Method::GET, "/v1/sync/pull", Some(&service), None)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    server
        .call(
            Method::POST,
            "/v1/publish",
            Some(&device),
            Some(&json!({"changes": []})),
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(server.redis().key_counts().await, vec![0; 16]);
}

#[tokio::test]
async fn a_wrongly_typed_stream_fails_the_push_before_anything_is_written() {
    let server = TestServer::with_redis(RedisOptions::default(), |_| {}).await;
    let token = server.token("acme", "phone-1");
    let mut db11 = server.redis().db(11).await;
    // Sabotage the tier-1 stream: a plain string where the stream should be, so an XADD would
    // fail, and inside EXEC the record would still advance past the lost item.
    let _: () = db11
        .set("tenant:acme:mobile_sync:up:{acme:p0}:t1", "not a stream")
        .await
        .unwrap();
    let (first, second) = (new_id(), new_id());
    let batch = vec![
        item(&first, 1, 2, "user_cache", "a", b"1"),
        item(&second, 1, 1, "user_cache", "b", b"2"),
    ];
    let clients = connected_clients(&mut db11).await;
    let reply = server.push(&token, batch.clone()).await;
    // The failed transaction's connection (it still held its WATCH) was closed, not pooled.
    wait_for_clients(&mut db11, clients).await;
    // An unexpected Redis state: a generic 500 that names nothing internal.
    reply.assert_error(StatusCode::INTERNAL_SERVER_ERROR, "internal");
    assert!(!String::from_utf8_lossy(&reply.bytes).contains("string"));
    // The type check runs before MULTI: not even the item of the healthy tier is stored, and
    // the producer has no record.
    assert!(server.stored_ids("acme", 2).await.is_empty());
    let exists: bool = db11.exists(record()).await.unwrap();
    assert!(
        !exists,
        "a record ahead of the stored items would lose them"
    );

    // Repaired, the device's retry stores both, once.
    let _: () = db11
        .del("tenant:acme:mobile_sync:up:{acme:p0}:t1")
        .await
        .unwrap();
    let retry = server.push(&token, batch.clone()).await;
    assert_eq!(retry.statuses(), ["accepted", "accepted"]);
    // A transaction that ended cleanly leaves its connection in the pool for the next push.
    wait_for_clients(&mut db11, clients + 1).await;
    assert_eq!(retry.last_seq(), [1, 1, 0, 0]);
    assert_eq!(server.stored_ids("acme", 1).await, vec![second]);
    assert_eq!(server.stored_ids("acme", 2).await, vec![first]);
    assert_eq!(
        server.push(&token, batch).await.statuses(),
        ["duplicate", "duplicate"]
    );
    wait_for_clients(&mut db11, clients + 1).await;
}

#[tokio::test]
async fn a_pooled_connection_closed_by_redis_is_replaced_without_failing_the_push() {
    // One memory reading for the whole test: the push should touch only its own connection.
    let server = TestServer::with_redis(RedisOptions::default(), |c| {
        c.backpressure.check_interval = std::time::Duration::from_secs(3600);
    })
    .await;
    let token = server.token("acme", "phone-1");
    let first = server
        .push(&token, vec![item(&new_id(), 1, 1, "user_cache", "a", b"1")])
        .await;
    assert_eq!(first.statuses(), ["accepted"]);
    // Redis drops every other client (a restart or a failover looks the same from here): the
    // pooled connection is dead when the next push leases it.
    let mut db11 = server.redis().db(11).await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut db11)
        .await
        .unwrap();
    assert!(killed >= 1);
    let second = server
        .push(&token, vec![item(&new_id(), 2, 1, "user_cache", "b", b"2")])
        .await;
    assert_eq!(
        second.statuses(),
        ["accepted"],
        "{}",
        String::from_utf8_lossy(&second.bytes)
    );
    assert_eq!(second.last_seq(), [2, 0, 0, 0]);
    assert_eq!(server.stored_ids("acme", 1).await.len(), 2);
}

async fn connected_clients(con: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(con)
        .await
        .unwrap();
    kryonix_server::store::redis::parse_info(&info)["connected_clients"]
        .parse()
        .unwrap()
}

/// Waits (with a deadline) until Redis counts exactly `expected` connections: closing one is
/// asynchronous.
async fn wait_for_clients(con: &mut redis::aio::MultiplexedConnection, expected: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now = connected_clients(con).await;
        if now == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{now} connections, expected {expected}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn out_of_memory_aborts_the_transaction_and_writes_nothing() {
    let server = TestServer::with_redis(
        RedisOptions {
            maxmemory: Some("2mb"),
            ..RedisOptions::default()
        },
        |c| c.backpressure.check_interval = std::time::Duration::ZERO,
    )
    .await;
    let token = server.token("acme", "phone-1");
    let mut db0 = server.redis().db(0).await;
    // Fill Redis until noeviction refuses a write.
    let filler = vec![b'f'; 64 * 1024];
    let mut filled = 0;
    loop {
        assert!(filled < 200, "Redis never ran out of memory");
        let set: redis::RedisResult<()> = db0.set(format!("filler:{filled}"), &filler).await;
        match set {
            Ok(()) => filled += 1,
            Err(err) => {
                assert_eq!(err.code(), Some("OOM"), "{err}");
                break;
            }
        }
    }

    // Tier 1 is never refused by a watermark: this batch reaches the store, where Redis refuses
    // every command queued after MULTI and EXEC aborts.
    let batch = vec![
        item(&new_id(), 1, 1, "user_cache", "a", b"1"),
        item(&new_id(), 2, 1, "user_cache", "b", b"2"),
    ];
    let reply = server.push(&token, batch.clone()).await;
    reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "backpressure");
    assert_eq!(reply.retry_after(), Some(1));
    let mut db11 = server.redis().db(11).await;
    let keys: Vec<String> = db11.keys("*").await.unwrap();
    assert!(keys.is_empty(), "nothing is written: {keys:?}");
    // Reads still work: the device's hello is answered.
    assert_eq!(server.hello_last_seq(&token, PRODUCER).await, [0; 4]);

    let metrics = server.call(Method::GET, "/metrics", None, None).await;
    let text = String::from_utf8_lossy(&metrics.bytes).into_owned();
    assert!(
        text.contains(r#"kryonix_store_errors_total{kind="out_of_memory"}"#),
        "{text}"
    );
    assert!(
        !text.contains(r#"kryonix_store_errors_total{kind="internal"}"#),
        "{text}"
    );

    // Once a backend has made room, the device's retry stores the batch once.
    let _: () = redis::cmd("FLUSHDB").query_async(&mut db0).await.unwrap();
    let retry = server.push(&token, batch.clone()).await;
    assert_eq!(retry.statuses(), ["accepted", "accepted"]);
    assert_eq!(
        server.push(&token, batch).await.statuses(),
        ["duplicate", "duplicate"]
    );
    assert_eq!(server.stored_ids("acme", 1).await.len(), 2);
}
