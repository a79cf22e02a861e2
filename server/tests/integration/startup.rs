//! Start-up safety: the server refuses an evicting sync store, warns on AOF off, and `/readyz`
//! and the override say so.

use axum::http::{Method, StatusCode};
use kryonix_server::startup::{self, StartupError};

use crate::support::{RedisOptions, RedisServer, TestServer, test_config};

#[tokio::test]
async fn refuses_to_start_on_an_allkeys_lru_redis() {
    let redis = RedisServer::start(RedisOptions {
        policy: "allkeys-lru",
        ..RedisOptions::default()
    });
    let mut config = test_config();
    config.redis_url = Some(redis.url());
    let err = startup::open_store(&config).await.unwrap_err();
    assert!(
        matches!(&err, StartupError::EvictingSyncStore { policy } if policy == "allkeys-lru"),
        "{err}"
    );
    assert!(err.to_string().contains("maxmemory-policy noeviction"));

    // A dedicated noeviction sync instance fixes it, even though the cache Redis evicts.
    let sync = RedisServer::start(RedisOptions {
        maxmemory: Some("64mb"),
        ..RedisOptions::default()
    });
    config.sync_redis_url = Some(sync.url());
    let (store, warnings) = startup::open_store(&config).await.unwrap();
    assert_eq!(store.kind(), "redis");
    assert!(warnings.is_empty(), "{warnings:?}");

    // The explicit override starts, loudly.
    config.sync_redis_url = None;
    config.allow_evicting_sync_store = true;
    let (_, warnings) = startup::open_store(&config).await.unwrap();
    assert!(
        warnings.iter().any(|w| w.contains("OVERRIDDEN")),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn sync_store_on_its_own_instance_gets_the_pushes() {
    let cache = RedisServer::start(RedisOptions {
        policy: "allkeys-lru",
        appendonly: false,
        ..RedisOptions::default()
    });
    let server = TestServer::with_redis(RedisOptions::default(), |c| {
        // The harness's Redis becomes the sync store; the cache lives elsewhere.
        c.sync_redis_url = c.redis_url.take();
        c.redis_url = Some(cache.url());
    })
    .await;
    let token = server.token("acme", "phone-1");
    let id = crate::support::new_id();
    server
        .push(
            &token,
            vec![crate::support::item(&id, 1, 1, "user_cache", "k", b"v")],
        )
        .await;
    assert_eq!(server.stored_ids("acme", 1).await, vec![id]);
    assert_eq!(cache.key_counts().await, vec![0; 16]);
}

#[tokio::test]
async fn aof_off_is_a_warning_that_readyz_repeats() {
    let server = TestServer::with_redis(
        RedisOptions {
            appendonly: false,
            maxmemory: Some("64mb"),
            ..RedisOptions::default()
        },
        |_| {},
    )
    .await;
    let ready = server.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK);
    let v = ready.value();
    assert_eq!(v["ready"], true);
    assert_eq!(v["store"], "redis");
    assert_eq!(v["development_store"], false);
    assert_eq!(v["sync_store"]["maxmemory_policy"], "noeviction");
    assert_eq!(v["sync_store"]["aof_enabled"], false);
    assert_eq!(v["sync_store"]["maxmemory"], 64 * 1024 * 1024);
    assert!(v["memory_pressure"].as_f64().unwrap() > 0.0);
    assert!(
        v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("appendonly no")),
        "{v}"
    );
}

#[tokio::test]
async fn readyz_turns_503_when_redis_goes_away() {
    let mut server = TestServer::with_redis(RedisOptions::default(), |_| {}).await;
    assert_eq!(
        server.call(Method::GET, "/readyz", None, None).await.status,
        StatusCode::OK
    );
    drop(server.redis.take());
    let ready = server.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.value()["ready"], false);
    // A push now is a retryable 503 in the documented shape, not a 500.
    let token = server.token("acme", "phone-1");
    let reply = server
        .push(
            &token,
            vec![crate::support::item(
                &crate::support::new_id(),
                1,
                1,
                "user_cache",
                "k",
                b"v",
            )],
        )
        .await;
    reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(reply.retry_after().is_some());
    // Liveness does not depend on Redis.
    assert_eq!(
        server
            .call(Method::GET, "/healthz", None, None)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn embedded_store_says_it_is_for_development() {
    let server = TestServer::embedded(|_| {}).await;
    let v = server
        .call(Method::GET, "/readyz", None, None)
        .await
        .value();
    assert_eq!(v["store"], "embedded");
    assert_eq!(v["development_store"], true);
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("DEVELOPMENT MODE")
    );
}
