//! Revocable tokens: a backend revokes one token (by the token or by its id) and every route
//! answers `401` to it from the next request on, while the device's other tokens keep working;
//! a service revokes only its own tenant's tokens; `kryonix-server token revoke` does the same
//! from the command line. Against Redis and the embedded store alike.

use std::process::Command;

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::{Backend, RedisOptions, RedisServer, SECRET, TestServer, item, new_id};

async fn revoked_token_gets_401_everywhere(backend: Backend) {
    let server = TestServer::start(backend, |_| {}).await;
    let lost = server.token("acme", "phone-1");
    let other = server.token("acme", "phone-1");
    let service = server.service_token("acme");
    let pushed = server
        .push(&lost, vec![item(&new_id(), 1, 1, "user_cache", "k", b"v")])
        .await;
    assert_eq!(pushed.status, StatusCode::OK);

    let revoked = server
        .call(
            Method::POST,
            "/v1/tokens/revoke",
            Some(&service),
            Some(&json!({ "token": lost })),
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.value());
    assert!(revoked.value()["revoked_until"].as_u64().unwrap() > 0);

    let push = server
        .push(&lost, vec![item(&new_id(), 2, 1, "user_cache", "k", b"v")])
        .await;
    push.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(
        push.value()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
    for (method, path) in [
        (Method::GET, "/v1/sync/pull"),
        (Method::GET, "/v1/cache/user_cache/k"),
    ] {
        let reply = server.call(method, path, Some(&lost), None).await;
        reply.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // Another token of the same device still works.
    let fine = server
        .push(&other, vec![item(&new_id(), 2, 1, "user_cache", "k", b"v")])
        .await;
    assert_eq!(fine.status, StatusCode::OK, "{}", fine.value());

    // By id and expiry: the id is read from the token a backend keeps, or its own records.
    let keep = server.token("acme", "phone-2");
    let jti = server.state.tokens.verify(&keep).unwrap().jti.unwrap();
    let by_id = server
        .call(
            Method::POST,
            "/v1/tokens/revoke",
            Some(&service),
            Some(&json!({ "jti": jti, "expires_at": u64::MAX / 2 })),
        )
        .await;
    assert_eq!(by_id.status, StatusCode::OK, "{}", by_id.value());
    server
        .call(Method::GET, "/v1/sync/pull", Some(&keep), None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");

    // Another tenant's service cannot revoke acme's tokens; devices cannot revoke at all.
    let globex = server.service_token("globex");
    let third = server.token("acme", "phone-3");
    server
        .call(
            Method::POST,
            "/v1/tokens/revoke",
            Some(&globex),
            Some(&json!({ "token": third })),
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    server
        .call(
            Method::POST,
            "/v1/tokens/revoke",
            Some(&third),
            Some(&json!({ "token": third })),
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(
        server
            .call(Method::GET, "/v1/sync/pull", Some(&third), None)
            .await
            .status,
        StatusCode::OK
    );
    // Bad bodies change nothing.
    for body in [
        json!({}),
        json!({ "token": third, "jti": "x" }),
        json!({ "jti": "a:b" }),
        json!({ "token": "not.a.token" }),
        json!({ "jti": 7 }),
    ] {
        let reply = server
            .call(
                Method::POST,
                "/v1/tokens/revoke",
                Some(&service),
                Some(&body),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.value()
        );
    }
    assert_eq!(
        server
            .call(Method::GET, "/v1/sync/pull", Some(&third), None)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_revoked_token_gets_401_on_redis() {
    revoked_token_gets_401_everywhere(Backend::Redis).await;
}

#[tokio::test]
async fn a_revoked_token_gets_401_on_the_embedded_store() {
    revoked_token_gets_401_everywhere(Backend::Embedded).await;
}

#[tokio::test]
async fn the_revocation_lives_in_auth_tokens_until_the_token_expires() {
    let server = TestServer::start(Backend::Redis, |_| {}).await;
    let token = server.token("acme", "phone-1");
    let principal = server.state.tokens.verify(&token).unwrap();
    let service = server.service_token("acme");
    let reply = server
        .call(
            Method::POST,
            "/v1/tokens/revoke",
            Some(&service),
            Some(&json!({ "token": token })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let mut db1 = server.redis().db(1).await;
    let key = format!("tenant:acme:auth_tokens:revoked:{}", principal.jti.unwrap());
    let expire_at: i64 = redis::cmd("EXPIRETIME")
        .arg(&key)
        .query_async(&mut db1)
        .await
        .unwrap();
    assert_eq!(expire_at, i64::try_from(principal.expires_at).unwrap());
}

#[tokio::test]
async fn token_revoke_on_the_command_line() {
    let redis = RedisServer::start(RedisOptions::default());
    let server = TestServer::configured(|c| c.redis_url = Some(redis.url())).await;
    let token = server.token("acme", "phone-1");
    assert_eq!(
        server
            .call(Method::GET, "/v1/sync/pull", Some(&token), None)
            .await
            .status,
        StatusCode::OK
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kryonix-server"))
        .args(["token", "revoke", "--token", &token])
        .env_clear()
        .env("KRYONIX_JWT_SECRET", SECRET)
        .env("KRYONIX_REDIS_URL", redis.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked"));
    server
        .call(Method::GET, "/v1/sync/pull", Some(&token), None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // A forged token is not revocable (nor anything else).
    let forged = Command::new(env!("CARGO_BIN_EXE_kryonix-server"))
        .args(["token", "revoke", "--token", "eyJhbGciOiJIUzI1NiJ9.e30.x"])
        .env_clear()
        .env("KRYONIX_JWT_SECRET", SECRET)
        .env("KRYONIX_REDIS_URL", redis.url())
        .output()
        .unwrap();
    assert_eq!(forged.status.code(), Some(2));
}

#[tokio::test]
async fn while_revocations_cannot_be_read_only_a_lately_confirmed_token_goes_on() {
    // Revocations live on the cache Redis (DB 1); pushes on a sync Redis of their own.
    let mut cache = Some(RedisServer::start(RedisOptions::default()));
    let sync = RedisServer::start(RedisOptions::default());
    let server = TestServer::configured(|c| {
        c.redis_url = cache.as_ref().map(RedisServer::url);
        c.sync_redis_url = Some(sync.url());
    })
    .await;
    let active = server.token("acme", "phone-1");
    let pushed = server
        .push(
            &active,
            vec![item(&new_id(), 1, 1, "user_cache", "k", b"v")],
        )
        .await;
    assert_eq!(pushed.status, StatusCode::OK);
    let newcomer = server.token("acme", "phone-2");

    drop(cache.take()); // the cache Redis goes away
    let pushed = server
        .push(
            &active,
            vec![item(&new_id(), 2, 1, "user_cache", "k", b"v")],
        )
        .await;
    assert_eq!(pushed.status, StatusCode::OK, "{}", pushed.value());
    let refused = server
        .push(
            &newcomer,
            vec![item(&new_id(), 1, 1, "user_cache", "k", b"v")],
        )
        .await;
    refused.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
}

#[tokio::test]
async fn a_secret_rotation_accepts_the_old_secret_until_its_window_closes() {
    let old_keys =
        kryonix_server::auth::TokenKeys::new(SECRET.as_bytes(), std::time::Duration::ZERO);
    let tenant = kryonix_protocol::TenantId::new("acme").unwrap();
    let minted_before = old_keys
        .mint(
            &tenant,
            "phone-1",
            kryonix_server::auth::Scope::Device,
            std::time::Duration::from_secs(600),
        )
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (until, accepted) in [(now + 600, true), (now - 1, false)] {
        let server = TestServer::start(Backend::Embedded, |c| {
            c.jwt_secret = "the-rotated-in-secret-0123456789abcdef".into();
            c.jwt_previous_secret = Some(SECRET.into());
            c.jwt_previous_until = Some(until);
        })
        .await;
        let reply = server
            .call(Method::GET, "/v1/sync/pull", Some(&minted_before), None)
            .await;
        if accepted {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.value());
        } else {
            reply.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
        // Tokens minted now carry the new secret, which the old keys do not accept.
        let fresh = server.token("acme", "phone-2");
        assert!(old_keys.verify(&fresh).is_err());
        assert_eq!(
            server
                .call(Method::GET, "/v1/sync/pull", Some(&fresh), None)
                .await
                .status,
            StatusCode::OK
        );
    }
}
