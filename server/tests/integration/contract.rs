//! The store contract: the same scenarios, through the whole HTTP API, against the Redis store
//! and the embedded SQLite store. Whatever an app developer sees on a laptop is what production
//! does.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};

use crate::support::{Backend, TestServer, b64, item, new_id};

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
    };
}

contract!(
    push_is_exactly_once_and_ordered,
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
