//! Every malformed input gets its documented status and JSON error, and leaves Redis unchanged.

use std::io::Write;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::json;

use crate::support::{PRODUCER, RedisOptions, SECRET, TestServer, b64, item, new_id};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn raw(path: &str, method: Method, token: &str, body: Vec<u8>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn malformed_requests_get_their_status_and_write_nothing() {
    let server = TestServer::with_redis(RedisOptions::default(), |c| {
        c.max_body_bytes = 16 * 1024;
    })
    .await;
    let token = server.token("acme", "phone-1");
    let service = server.service_token("acme");
    let valid_item = item(&new_id(), 1, 1, "user_cache", "k", b"v");
    let push_body = |items: serde_json::Value| -> Vec<u8> {
        serde_json::to_vec(&json!({"producer": PRODUCER, "items": items})).unwrap()
    };

    // A forged token: right shape, signed with another secret.
    let forged = {
        let other = kryonix_server::auth::TokenKeys::new(
            b"not-the-server-secret-not-the-server",
            Duration::ZERO,
        );
        other
            .mint(
                &kryonix_protocol::TenantId::new("acme").unwrap(),
                "phone-1",
                kryonix_server::auth::Scope::Device,
                Duration::from_secs(60),
            )
            .unwrap()
    };
    // An expired token, signed with the right secret.
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"tenant": "acme", "sub": "phone-1", "scope": "device", "iat": 1, "exp": 2}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    // alg=none: refused whatever it claims.
    let unsigned = {
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            e.encode(br#"{"alg":"none","typ":"JWT"}"#),
            e.encode(
                br#"{"tenant":"acme","sub":"phone-1","scope":"device","iat":1,"exp":99999999999}"#
            )
        )
    };

    let push_path = "/v1/sync/push";
    let cases: Vec<(&str, Request<Body>, StatusCode, &str)> = vec![
        (
            "bad JSON",
            raw(push_path, Method::POST, &token, b"{\"items\": [".to_vec()),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "wrong types",
            raw(
                push_path,
                Method::POST,
                &token,
                push_body(json!([{"id": 1, "seq": 1, "tier": "one"}])),
            ),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "bad base64",
            raw(
                push_path,
                Method::POST,
                &token,
                push_body(json!([{
                    "id": new_id(), "seq": 1, "tier": 1, "namespace": "user_cache", "key": "k",
                    "op": "put", "payload": "!!!not base64", "created_at_ms": 0
                }])),
            ),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "unknown op",
            raw(
                push_path,
                Method::POST,
                &token,
                push_body(json!([{
                    "id": new_id(), "seq": 1, "tier": 1, "namespace": "user_cache", "key": "k",
                    "op": "merge", "payload": "", "created_at_ms": 0
                }])),
            ),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "oversized body",
            raw(
                push_path,
                Method::POST,
                &token,
                push_body(json!([item(&new_id(), 1, 1, "user_cache", "k", &vec![b'x'; 20 * 1024])])),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            "gzip bomb over the decoded limit",
            {
                let mut r = raw(
                    push_path,
                    Method::POST,
                    &token,
                    gzip(&serde_json::to_vec(&json!({"producer": PRODUCER, "items": [], "pad": "x".repeat(100_000)})).unwrap()),
                );
                r.headers_mut()
                    .insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
                r
            },
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            "gzip header on a plain body",
            {
                let mut r = raw(
                    push_path,
                    Method::POST,
                    &token,
                    push_body(json!([valid_item.clone()])),
                );
                r.headers_mut()
                    .insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
                r
            },
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "too many items",
            raw(
                push_path,
                Method::POST,
                &token,
                push_body(json!((1..=101).map(|i| item(&new_id(), i, 1, "user_cache", &format!("k{i}"), b"")).collect::<Vec<_>>())),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            "no token",
            Request::builder()
                .method(Method::POST)
                .uri(push_path)
                .body(Body::from(push_body(json!([valid_item.clone()]))))
                .unwrap(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "forged token",
            raw(push_path, Method::POST, &forged, push_body(json!([valid_item.clone()]))),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "expired token",
            raw(push_path, Method::POST, &expired, push_body(json!([valid_item.clone()]))),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "alg none token",
            raw(push_path, Method::POST, &unsigned, push_body(json!([valid_item.clone()]))),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "newer protocol",
            {
                let mut r = raw(push_path, Method::POST, &token, push_body(json!([valid_item.clone()])));
                r.headers_mut().insert("kryonix-protocol", "3".parse().unwrap());
                r
            },
            StatusCode::BAD_REQUEST,
            "unsupported_protocol",
        ),
        (
            "older protocol",
            {
                let mut r = raw(push_path, Method::POST, &token, push_body(json!([valid_item.clone()])));
                r.headers_mut().insert("kryonix-protocol", "1".parse().unwrap());
                r
            },
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
        ),
        (
            "older protocol on the hello",
            {
                let mut r = raw("/v1/sync/hello", Method::POST, &token, serde_json::to_vec(&json!({"producer": PRODUCER})).unwrap());
                r.headers_mut().insert("kryonix-protocol", "1".parse().unwrap());
                r
            },
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
        ),
        (
            "an app version that does not parse",
            {
                let mut r = raw(push_path, Method::POST, &token, push_body(json!([valid_item.clone()])));
                r.headers_mut().insert("kryonix-app-version", "v4.2".parse().unwrap());
                r
            },
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "a version 1 body",
            raw(
                push_path,
                Method::POST,
                &token,
                serde_json::to_vec(&json!({"items": [{
                    "id": new_id(), "tier": 1, "namespace": "user_cache", "key": "k",
                    "op": "put", "payload": "", "created_at_ms": 0
                }]}))
                .unwrap(),
            ),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "cache key over 250 bytes",
            raw(
                &format!("/v1/cache/user_cache/{}", "k".repeat(240)),
                Method::PUT,
                &token,
                serde_json::to_vec(&json!({"value": b64(b"v")})).unwrap(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_key",
        ),
        (
            "cache unknown namespace",
            raw(
                "/v1/cache/nope/k",
                Method::PUT,
                &token,
                serde_json::to_vec(&json!({"value": b64(b"v")})).unwrap(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_namespace",
        ),
        (
            "cache bad base64",
            raw(
                "/v1/cache/user_cache/k",
                Method::PUT,
                &token,
                serde_json::to_vec(&json!({"value": "***"})).unwrap(),
            ),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "cache zero ttl",
            raw(
                "/v1/cache/user_cache/k",
                Method::PUT,
                &token,
                serde_json::to_vec(&json!({"value": b64(b"v"), "ttl_secs": 0})).unwrap(),
            ),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "cache bad device profile",
            {
                let mut r = raw(
                    "/v1/cache/user_cache/k",
                    Method::PUT,
                    &token,
                    serde_json::to_vec(&json!({"value": b64(b"v")})).unwrap(),
                );
                r.headers_mut().insert("kryonix-device-profile", "watch;5g".parse().unwrap());
                r
            },
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "cache internal namespace",
            raw(
                "/v1/cache/mobile_sync/k",
                Method::PUT,
                &token,
                serde_json::to_vec(&json!({"value": b64(b"v")})).unwrap(),
            ),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "publish unknown namespace",
            raw(
                "/v1/publish",
                Method::POST,
                &service,
                serde_json::to_vec(&json!({"changes": [
                    {"namespace": "user_cache", "key": "ok", "op": "put", "value": b64(b"1")},
                    {"namespace": "nope", "key": "k", "op": "put", "value": b64(b"1")}
                ]}))
                .unwrap(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_namespace",
        ),
        (
            "publish key over 250 bytes",
            raw(
                "/v1/publish",
                Method::POST,
                &service,
                serde_json::to_vec(&json!({"changes": [
                    {"namespace": "user_cache", "key": "ok", "op": "put", "value": b64(b"1")},
                    {"namespace": "user_cache", "key": "k".repeat(240), "op": "put", "value": b64(b"1")}
                ]}))
                .unwrap(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_key",
        ),
        (
            "publish bad device id",
            raw(
                "/v1/publish",
                Method::POST,
                &service,
                serde_json::to_vec(&json!({"device_id": "a:b", "changes": [
                    {"namespace": "user_cache", "key": "ok", "op": "put", "value": b64(b"1")}
                ]}))
                .unwrap(),
            ),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "pull bad cursor",
            raw("/v1/sync/pull?cursor=garbage!", Method::GET, &token, vec![]),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "pull limit over 1000",
            raw("/v1/sync/pull?limit=1001", Method::GET, &token, vec![]),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "pull limit not a number",
            raw("/v1/sync/pull?limit=ten", Method::GET, &token, vec![]),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "unknown route",
            raw("/v1/nothing", Method::GET, &token, vec![]),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "wrong method",
            raw(push_path, Method::GET, &token, vec![]),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];

    let before = server.redis().key_counts().await;
    for (name, request, status, code) in cases {
        let reply = server.send(request).await;
        assert_eq!(
            reply.status,
            status,
            "{name}: {}",
            String::from_utf8_lossy(&reply.bytes)
        );
        assert_eq!(reply.code(), code, "{name}");
        assert_eq!(
            reply.headers.get(header::CONTENT_TYPE).unwrap(),
            "application/json",
            "{name}"
        );
        assert_eq!(
            server.redis().key_counts().await,
            before,
            "{name} wrote to Redis"
        );
    }
    assert_eq!(before, vec![0; 16]);
}

#[tokio::test]
async fn the_upgrade_gate_answers_old_devices_426_with_the_minimums() {
    let server = TestServer::with_redis(RedisOptions::default(), |c| {
        c.min_app_version = Some("4.2.0".parse().unwrap());
    })
    .await;
    let token = server.token("acme", "phone-1");
    let body = serde_json::to_vec(
        &json!({"producer": PRODUCER, "items": [item(&new_id(), 1, 1, "user_cache", "k", b"v")]}),
    )
    .unwrap();
    let cases: [(Option<&str>, Option<&str>, StatusCode, &str); 11] = [
        (Some("2"), Some("4.2.0"), StatusCode::OK, ""),
        (Some(" 2 "), Some("4.10"), StatusCode::OK, ""),
        (Some("2"), None, StatusCode::OK, ""),
        (None, None, StatusCode::OK, ""),
        (Some("2"), Some("4.2.0+build.9"), StatusCode::OK, ""),
        (
            Some("2"),
            Some("4.1.9"),
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
        ),
        (
            Some("2"),
            Some("4.2.0-rc.1"),
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
        ),
        (
            Some("1"),
            Some("9.0"),
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
        ),
        (
            Some("0"),
            None,
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
        ),
        (
            Some("3"),
            Some("4.2.0"),
            StatusCode::BAD_REQUEST,
            "unsupported_protocol",
        ),
        (Some("two"), None, StatusCode::BAD_REQUEST, "malformed"),
    ];
    let before = server.redis().key_counts().await;
    for (protocol, app, status, code) in cases {
        let mut request = raw("/v1/sync/push", Method::POST, &token, body.clone());
        if let Some(p) = protocol {
            request
                .headers_mut()
                .insert("kryonix-protocol", p.parse().unwrap());
        }
        if let Some(a) = app {
            request
                .headers_mut()
                .insert("kryonix-app-version", a.parse().unwrap());
        }
        let reply = server.send(request).await;
        let case = format!("protocol {protocol:?}, app {app:?}");
        assert_eq!(
            reply.status,
            status,
            "{case}: {}",
            String::from_utf8_lossy(&reply.bytes)
        );
        if status == StatusCode::OK {
            continue;
        }
        assert_eq!(reply.code(), code, "{case}");
        let error = &reply.value()["error"];
        if status == StatusCode::UPGRADE_REQUIRED {
            assert_eq!(error["min_protocol"], 2, "{case}: {error}");
            assert_eq!(error["min_app_version"], "4.2.0", "{case}: {error}");
            assert!(
                error["message"]
                    .as_str()
                    .unwrap()
                    .contains("update the app"),
                "{case}: {error}"
            );
        } else {
            assert!(error.get("min_protocol").is_none(), "{case}: {error}");
        }
    }
    // The gate stands before authentication and every route: the hello and the cache too.
    for (path, method) in [
        ("/v1/sync/hello", Method::POST),
        ("/v1/cache/user_cache/k", Method::GET),
    ] {
        let mut request = raw(
            path,
            method,
            &token,
            serde_json::to_vec(&json!({"producer": PRODUCER})).unwrap(),
        );
        request
            .headers_mut()
            .insert("kryonix-app-version", "1.0".parse().unwrap());
        assert_eq!(
            server.send(request).await.status,
            StatusCode::UPGRADE_REQUIRED,
            "{path}"
        );
    }
    // Refused requests wrote nothing; the three accepted pushes wrote their one item.
    let after = server.redis().key_counts().await;
    assert_eq!(after[0..11], before[0..11]);
}

#[tokio::test]
async fn without_a_minimum_app_version_only_the_protocol_is_gated() {
    let server = TestServer::with_redis(RedisOptions::default(), |_| {}).await;
    let token = server.token("acme", "phone-1");
    let body = serde_json::to_vec(
        &json!({"producer": PRODUCER, "items": [item(&new_id(), 1, 1, "user_cache", "k", b"v")]}),
    )
    .unwrap();
    let mut old_app = raw("/v1/sync/push", Method::POST, &token, body.clone());
    old_app
        .headers_mut()
        .insert("kryonix-app-version", "0.1".parse().unwrap());
    assert_eq!(server.send(old_app).await.status, StatusCode::OK);
    let mut old_protocol = raw("/v1/sync/push", Method::POST, &token, body);
    old_protocol
        .headers_mut()
        .insert("kryonix-protocol", "1".parse().unwrap());
    let reply = server.send(old_protocol).await;
    assert_eq!(reply.status, StatusCode::UPGRADE_REQUIRED);
    let error = &reply.value()["error"];
    assert_eq!(error["min_protocol"], 2);
    assert!(error.get("min_app_version").is_none(), "{error}");
}
