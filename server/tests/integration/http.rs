//! Over real TCP on port 0: gzip both ways, graceful shutdown with a push in flight, metrics, and
//! the `token` and `check` subcommands of the binary.

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use kryonix_protocol::wire::{PullResponse, PushResponse};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{PRODUCER, RedisOptions, RedisServer, SECRET, TestServer, b64, item, new_id};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[tokio::test]
async fn gzip_bodies_are_accepted_and_gzip_answers_offered() {
    let server = TestServer::with_redis(RedisOptions::default(), |_| {}).await;
    let (addr, stop, task) = server.serve_tcp().await;
    let client = reqwest::Client::new();
    let token = server.token("acme", "phone-1");
    let ids: Vec<String> = (0..50).map(|_| new_id()).collect();
    let body = json!({"producer": PRODUCER, "items": ids.iter().zip(1u64..).map(|(id, seq)| item(id, seq, 1, "user_cache", "k", &[b'a'; 200])).collect::<Vec<_>>()});
    let plain = serde_json::to_vec(&body).unwrap();
    let packed = gzip(&plain);
    assert!(packed.len() < plain.len() / 4);
    let reply = client
        .post(format!("http://{addr}/v1/sync/push"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header("accept-encoding", "gzip")
        .body(packed)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    // The answer (50 results) is over 1 KiB, so it comes back gzip-encoded.
    assert_eq!(reply.headers()["content-encoding"], "gzip");
    let answer: PushResponse =
        serde_json::from_slice(&gunzip(&reply.bytes().await.unwrap())).unwrap();
    assert!(answer.results.iter().all(|r| r.outcome.is_stored()));
    assert_eq!(answer.last_seq, [50, 0, 0, 0]);
    assert_eq!(server.stored_ids("acme", 1).await, ids);

    // A small answer, or a client that does not ask, gets identity.
    let small = client
        .get(format!("http://{addr}/healthz"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(small.headers().get("content-encoding").is_none());

    // A large pull page, gzip-encoded.
    let service = server.service_token("acme");
    let changes: Vec<_> = (0..100)
        .map(|i| json!({"namespace": "user_cache", "key": format!("k{i}"), "op": "put", "value": b64(&[b'z'; 100])}))
        .collect();
    let published = client
        .post(format!("http://{addr}/v1/publish"))
        .bearer_auth(&service)
        .json(&json!({"changes": changes}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), StatusCode::OK);
    let page = client
        .get(format!("http://{addr}/v1/sync/pull?limit=1000"))
        .bearer_auth(&token)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(page.headers()["content-encoding"], "gzip");
    let page: PullResponse = serde_json::from_slice(&gunzip(&page.bytes().await.unwrap())).unwrap();
    assert_eq!(page.changes.len(), 100);
    assert!(!page.has_more);

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_push_finish() {
    let server = TestServer::with_redis(RedisOptions::default(), |_| {}).await;
    let (addr, stop, task) = server.serve_tcp().await;
    let token = server.token("acme", "phone-1");
    let id = new_id();
    let body = serde_json::to_vec(
        &json!({"producer": PRODUCER, "items": [item(&id, 1, 1, "user_cache", "k", b"in flight")]}),
    )
    .unwrap();
    let (head, tail) = body.split_at(body.len() / 2);

    // Send the headers and half the body: the push is now in flight.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request_head = format!(
        "POST /v1/sync/push HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(request_head.as_bytes()).await.unwrap();
    stream.write_all(head).await.unwrap();
    stream.flush().await.unwrap();

    // Wait until the server is handling it (its handler is waiting for the rest of the body).
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.state.metrics.in_flight_now() < 1 {
        assert!(
            Instant::now() < deadline,
            "the push never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Ask for shutdown, and wait until the server stops accepting new connections.
    stop.send(()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) => break,
            Ok(probe) => drop(probe),
        }
        assert!(
            Instant::now() < deadline,
            "the server kept accepting after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !task.is_finished(),
        "the server stopped with a request in flight"
    );

    // Finish the request: it is answered and stored.
    stream.write_all(tail).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"accepted\""), "{answer}");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the server did not stop after the last request")
        .unwrap()
        .unwrap();
    assert_eq!(server.stored_ids("acme", 1).await, vec![id]);
}

#[tokio::test]
async fn metrics_count_requests_items_and_latency() {
    let server = TestServer::with_redis(RedisOptions::default(), |c| {
        c.tenants.insert("acme".into(), Default::default());
    })
    .await;
    let token = server.token("acme", "phone-1");
    let id = new_id();
    server
        .push(
            &token,
            vec![
                item(&id, 1, 2, "user_cache", "k", b"v"),
                item(&new_id(), 1, 0, "user_cache", "k", b"v"),
            ],
        )
        .await;
    // A replay of the first item: a duplicate.
    server
        .push(&token, vec![item(&id, 1, 2, "user_cache", "k", b"v")])
        .await;
    assert_eq!(server.hello_last_seq(&token, PRODUCER).await, [0, 1, 0, 0]);
    assert_eq!(server.hello_last_seq(&token, "never-pushed").await, [0; 4]);
    let other = server.token("unlisted", "phone-1");
    server
        .push(&other, vec![item(&new_id(), 1, 1, "user_cache", "k", b"v")])
        .await;
    let reply = server.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(reply.bytes.to_vec()).unwrap();
    for expected in [
        r#"kryonix_http_requests_total{route="/v1/sync/push",method="POST",status="200"} 3"#,
        r#"kryonix_http_requests_total{route="/v1/sync/hello",method="POST",status="200"} 2"#,
        r#"kryonix_hellos_total{producer="known"} 1"#,
        r#"kryonix_hellos_total{producer="unknown"} 1"#,
        r#"kryonix_push_items_total{tier="2",outcome="accepted"} 1"#,
        r#"kryonix_push_items_total{tier="2",outcome="duplicate"} 1"#,
        r#"kryonix_push_items_total{tier="0",outcome="rejected"} 1"#,
        r#"kryonix_tenant_push_items_total{tenant="acme"} 1"#,
        r#"kryonix_tenant_push_items_total{tenant="_other"} 1"#,
        "kryonix_push_duration_seconds_count 3",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    assert!(!text.contains("unlisted"));
}

#[test]
fn token_and_check_subcommands() {
    let bin = env!("CARGO_BIN_EXE_kryonix-server");
    let minted = Command::new(bin)
        .args([
            "token",
            "--tenant",
            "acme",
            "--subject",
            "phone-9",
            "--ttl-secs",
            "60",
        ])
        .env("KRYONIX_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    let keys = kryonix_server::auth::TokenKeys::new(SECRET.as_bytes(), Duration::ZERO);
    let principal = keys.verify(&token).unwrap();
    assert_eq!(principal.tenant.as_str(), "acme");
    assert_eq!(principal.subject, "phone-9");

    let short_secret = Command::new(bin)
        .args(["token", "--tenant", "acme", "--subject", "p"])
        .env("KRYONIX_JWT_SECRET", "short")
        .output()
        .unwrap();
    assert_eq!(short_secret.status.code(), Some(2));

    let evicting = RedisServer::start(RedisOptions {
        policy: "allkeys-lru",
        appendonly: false,
        ..RedisOptions::default()
    });
    let check = Command::new(bin)
        .args(["check", "--redis-url", &evicting.url()])
        .env_remove("KRYONIX_SYNC_REDIS_URL")
        .output()
        .unwrap();
    let out = String::from_utf8(check.stdout).unwrap();
    assert_eq!(check.status.code(), Some(1), "{out}");
    assert!(out.contains("FAIL  maxmemory_policy allkeys-lru"), "{out}");
    assert!(out.contains("WARN  appendonly no"), "{out}");

    let safe = RedisServer::start(RedisOptions {
        maxmemory: Some("64mb"),
        ..RedisOptions::default()
    });
    let check = Command::new(bin)
        .args(["check", "--redis-url", &safe.url()])
        .output()
        .unwrap();
    let out = String::from_utf8(check.stdout).unwrap();
    assert!(check.status.success(), "{out}");
    assert!(out.contains("ok    maxmemory_policy noeviction"), "{out}");
    assert!(out.contains("serve would start"), "{out}");
}
