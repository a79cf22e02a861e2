//! A token of tenant A can read or write nothing of tenant B, on any endpoint.

use axum::http::{Method, StatusCode};
use redis::AsyncCommands;
use serde_json::json;

use crate::support::{RedisOptions, TestServer, b64, item, new_id};

#[tokio::test]
async fn tenant_a_cannot_reach_tenant_b_anywhere() {
    let server = TestServer::with_redis(RedisOptions::default(), |_| {}).await;
    let a_device = server.token("tenant-a", "shared-device-id");
    let b_device = server.token("tenant-b", "shared-device-id");
    let a_service = server.service_token("tenant-a");
    let b_service = server.service_token("tenant-b");

    // B stores things everywhere.
    let b_item = new_id();
    assert_eq!(
        server
            .push(
                &b_device,
                vec![item(&b_item, 1, 1, "user_cache", "secret", b"b-data")]
            )
            .await
            .statuses(),
        ["accepted"]
    );
    let put = server
        .call(
            Method::PUT,
            "/v1/cache/user_cache/secret",
            Some(&b_device),
            Some(&json!({"value": b64(b"b-cache")})),
        )
        .await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    let published = server
        .call(
            Method::POST,
            "/v1/publish",
            Some(&b_service),
            Some(&json!({"changes": [{"namespace": "user_cache", "key": "secret", "op": "put", "value": b64(b"b-down")}]})),
        )
        .await;
    assert_eq!(published.status, StatusCode::OK);
    let to_device = server
        .call(
            Method::POST,
            "/v1/publish",
            Some(&b_service),
            Some(&json!({"device_id": "shared-device-id", "changes": [{"namespace": "user_cache", "key": "mine", "op": "put", "value": b64(b"b-only")}]})),
        )
        .await;
    assert_eq!(to_device.status, StatusCode::OK);

    // A, with the same device id and the same keys, sees none of it.
    let get = server
        .call(
            Method::GET,
            "/v1/cache/user_cache/secret",
            Some(&a_device),
            None,
        )
        .await;
    get.assert_error(StatusCode::NOT_FOUND, "not_found");
    let mget = server
        .call(
            Method::POST,
            "/v1/cache/user_cache/_mget",
            Some(&a_device),
            Some(&json!({"keys": ["secret"]})),
        )
        .await;
    assert_eq!(mget.value()["entries"], json!([null]));
    let pull = server
        .call(Method::GET, "/v1/sync/pull", Some(&a_device), None)
        .await;
    assert_eq!(pull.status, StatusCode::OK);
    assert_eq!(pull.value()["changes"], json!([]));

    // A pushing B's item id, producer and seq is a new item of A, not a duplicate of B's.
    assert_eq!(
        server
            .push(
                &a_device,
                vec![item(&b_item, 1, 1, "user_cache", "secret", b"a-data")]
            )
            .await
            .statuses(),
        ["accepted"]
    );
    // A deleting "secret" deletes A's key, not B's.
    let del = server
        .call(
            Method::DELETE,
            "/v1/cache/user_cache/secret",
            Some(&a_device),
            None,
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    // A publishing goes to A's streams only.
    server
        .call(
            Method::POST,
            "/v1/publish",
            Some(&a_service),
            Some(&json!({"changes": [{"namespace": "user_cache", "key": "x", "op": "put", "value": b64(b"a-down")}]})),
        )
        .await;

    // B's data is intact, and B sees only its own.
    let b_get = server
        .call(
            Method::GET,
            "/v1/cache/user_cache/secret",
            Some(&b_device),
            None,
        )
        .await;
    assert_eq!(b_get.value()["value"], b64(b"b-cache"));
    let b_pull = server
        .call(Method::GET, "/v1/sync/pull", Some(&b_device), None)
        .await
        .value();
    let values: Vec<&str> = b_pull["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, [b64(b"b-down"), b64(b"b-only")]);
    assert_eq!(server.stored_ids("tenant-b", 1).await, vec![b_item.clone()]);
    assert_eq!(server.stored_ids("tenant-a", 1).await, vec![b_item]);

    // Every key in Redis is under one tenant's prefix.
    for db in 0..16 {
        let mut con = server.redis().db(db).await;
        let keys: Vec<String> = con.keys("*").await.unwrap();
        for key in keys {
            assert!(
                key.starts_with("tenant:tenant-a:") || key.starts_with("tenant:tenant-b:"),
                "db {db}: {key}"
            );
        }
    }
}

#[tokio::test]
async fn rate_limit_state_lives_in_db_4_and_expires() {
    let server = TestServer::with_redis(RedisOptions::default(), |c| {
        c.default_policy.rate_per_sec = 100;
        c.default_policy.device_rate_per_sec = 1;
    })
    .await;
    let token = server.token("acme", "phone-1");
    let first = server
        .call(Method::GET, "/v1/cache/user_cache/k", Some(&token), None)
        .await;
    first.assert_error(StatusCode::NOT_FOUND, "not_found");
    let second = server
        .call(Method::GET, "/v1/cache/user_cache/k", Some(&token), None)
        .await;
    second.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(second.retry_after(), Some(1));

    let mut db4 = server.redis().db(4).await;
    for key in [
        "tenant:acme:rate_limiting:{acme}:tenant",
        "tenant:acme:rate_limiting:{acme}:device:phone-1",
    ] {
        let pttl: i64 = db4.pttl(key).await.unwrap();
        assert!(pttl > 0 && pttl <= 3_000, "{key}: pttl {pttl}");
    }
    // Nothing else was written anywhere.
    let counts = server.redis().key_counts().await;
    assert_eq!(counts.iter().sum::<i64>(), 2, "{counts:?}");
}

/// One rule on every route where a caller names a namespace: the server's own namespaces
/// (mobile_sync, rate_limiting, distributed_locks) are refused with `forbidden`, and nothing is
/// written.
#[tokio::test]
async fn internal_namespaces_are_refused_on_every_route() {
    let server = TestServer::with_redis(RedisOptions::default(), |_| {}).await;
    let device = server.token("acme", "phone-1");
    let service = server.service_token("acme");
    let before = server.redis().key_counts().await;
    for ns in [
        "auth_tokens",
        "mobile_sync",
        "rate_limiting",
        "distributed_locks",
    ] {
        let pushed = server
            .push(&device, vec![item(&new_id(), 1, 1, ns, "k", b"x")])
            .await;
        assert_eq!(pushed.statuses(), ["rejected"], "push to {ns}");
        let published = server
            .call(
                Method::POST,
                "/v1/publish",
                Some(&service),
                Some(&json!({"changes": [{"namespace": ns, "key": "k", "op": "put", "value": b64(b"x")}]})),
            )
            .await;
        published.assert_error(StatusCode::FORBIDDEN, "forbidden");
        let put = server
            .call(
                Method::PUT,
                &format!("/v1/cache/{ns}/k"),
                Some(&device),
                Some(&json!({"value": b64(b"x")})),
            )
            .await;
        put.assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    // The rejected pushes left no producer record either: nothing was stored.
    assert_eq!(server.redis().key_counts().await, before);
}
