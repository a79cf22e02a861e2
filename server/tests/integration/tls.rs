//! Redis over TLS with a password, as managed Redis requires: the server starts and serves on
//! it, `check` reports the connections encrypted, and a wrong CA, an expired certificate, a wrong
//! password or a missing client certificate each stop start-up with an error naming the cause.
//! The password appears in no output: not in errors, logs, `check`, `/readyz` or `/metrics`.

use std::path::PathBuf;
use std::process::{Command, Output};

use axum::http::{Method, StatusCode};
use kryonix_server::startup;
use kryonix_server::store::redis::{RedisAccess, Secret, TlsMaterial};

use crate::support::tls::{CertFiles, Pki, TlsRedis};
use crate::support::{LocalCluster, TestServer, item, new_id, test_config};

const PASSWORD: &str = "correct-horse-battery-staple-7f3a91";

fn access(ca: PathBuf, client: Option<CertFiles>, password: &str) -> RedisAccess {
    RedisAccess {
        username: None,
        password: Some(Secret::new(password)),
        tls: TlsMaterial {
            ca: Some(std::fs::read(ca).unwrap()),
            client: client.map(|c| {
                (
                    std::fs::read(c.cert).unwrap(),
                    std::fs::read(c.key).unwrap(),
                )
            }),
        },
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `kryonix-server check` against `url`, the password in the environment.
fn check(url: &str, password: &str, extra: &[(&str, PathBuf)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kryonix-server"));
    cmd.arg("check")
        .env_clear()
        .env("KRYONIX_REDIS_URL", url)
        .env("KRYONIX_REDIS_PASSWORD", password);
    for (name, value) in extra {
        cmd.env(name, value);
    }
    cmd.output().unwrap()
}

#[tokio::test]
async fn the_server_serves_on_a_tls_redis_with_a_password() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki, &pki.files("server"), PASSWORD, false);
    let server = TestServer::configured(|c| {
        c.redis_url = Some(redis.url());
        c.redis_access = access(pki.ca_file(), None, PASSWORD);
    })
    .await;
    let token = server.token("acme", "phone-1");
    let id = new_id();
    let reply = server
        .push(&token, vec![item(&id, 1, 1, "user_cache", "k", b"v")])
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.value());
    // The item is in the up stream, read back over TLS with the same access.
    let client = access(pki.ca_file(), None, PASSWORD)
        .client(
            redis::IntoConnectionInfo::into_connection_info(format!("{}/11", redis.url())).unwrap(),
        )
        .unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let len: u64 = redis::cmd("XLEN")
        .arg("tenant:acme:mobile_sync:up:{acme:p0}:t1")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(len, 1);
    // The cache namespaces work over the same links.
    let put = server
        .call(
            Method::PUT,
            "/v1/cache/api_cache/greeting",
            Some(&token),
            Some(&serde_json::json!({ "value": crate::support::b64(b"hi"), "ttl_secs": 60 })),
        )
        .await;
    assert!(put.status.is_success(), "{}", put.value());
    for path in ["/readyz", "/metrics"] {
        let reply = server.call(Method::GET, path, None, None).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            !String::from_utf8_lossy(&reply.bytes).contains(PASSWORD),
            "{path}"
        );
    }
}

#[tokio::test]
async fn check_reports_encryption_and_never_the_password() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki, &pki.files("server"), PASSWORD, false);
    let ca = [("KRYONIX_REDIS_CA_FILE", pki.ca_file())];
    let good = check(&redis.url(), PASSWORD, &ca);
    let out = text(&good);
    assert!(good.status.success(), "{out}");
    assert!(
        out.contains("cache: TLS (rediss://), verified against --redis-ca-file"),
        "{out}"
    );
    assert!(out.contains("sync store: TLS"), "{out}");
    assert!(out.contains("password given"), "{out}");
    assert!(!out.contains(PASSWORD), "{out}");

    // Each failure names its cause, and none prints the password.
    let wrong_password = check(&redis.url(), "not-the-password-3c1d", &ca);
    let out = text(&wrong_password);
    assert!(!wrong_password.status.success());
    assert!(out.contains("Redis refused the credentials"), "{out}");
    assert!(!out.contains("not-the-password-3c1d"), "{out}");

    let wrong_ca = check(
        &redis.url(),
        PASSWORD,
        &[("KRYONIX_REDIS_CA_FILE", pki.other_ca_file())],
    );
    let out = text(&wrong_ca);
    assert!(!wrong_ca.status.success());
    assert!(out.contains("TLS to Redis failed"), "{out}");
    assert!(
        out.to_lowercase().contains("unknownissuer") || out.contains("issuer"),
        "{out}"
    );
    assert!(!out.contains(PASSWORD), "{out}");

    // `serve` refuses to start the same way, and logs no password either.
    let serve = Command::new(env!("CARGO_BIN_EXE_kryonix-server"))
        .arg("serve")
        .env_clear()
        .env("KRYONIX_JWT_SECRET", crate::support::SECRET)
        .env("KRYONIX_LISTEN", "127.0.0.1:0")
        .env("KRYONIX_REDIS_URL", redis.url())
        .env("KRYONIX_REDIS_PASSWORD", PASSWORD)
        .env("KRYONIX_REDIS_CA_FILE", pki.other_ca_file())
        .output()
        .unwrap();
    let out = text(&serve);
    assert!(!serve.status.success(), "{out}");
    assert!(
        out.contains("refusing to start") && out.contains("TLS to Redis failed"),
        "{out}"
    );
    assert!(!out.contains(PASSWORD), "{out}");
}

#[tokio::test]
async fn an_expired_certificate_or_a_missing_client_certificate_stops_start_up() {
    let pki = Pki::new();
    let expired = TlsRedis::start(&pki, &pki.files("expired"), PASSWORD, false);
    let mut config = test_config();
    config.redis_url = Some(expired.url());
    config.redis_access = access(pki.ca_file(), None, PASSWORD);
    let err = startup::open_store(&config).await.unwrap_err().to_string();
    assert!(err.contains("TLS to Redis failed"), "{err}");
    assert!(err.to_lowercase().contains("expired"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");

    // Mutual TLS: without a client certificate the handshake fails; with one, it serves.
    let mtls = TlsRedis::start(&pki, &pki.files("server"), PASSWORD, true);
    config.redis_url = Some(mtls.url());
    let err = startup::open_store(&config).await.unwrap_err().to_string();
    assert!(!err.contains(PASSWORD), "{err}");
    config.redis_access = access(pki.ca_file(), Some(pki.files("client")), PASSWORD);
    let (store, _) = startup::open_store(&config).await.unwrap();
    assert_eq!(store.kind(), "redis");

    // A plaintext URL to a TLS-only port is not silently "working" either.
    config.redis_url = Some(format!("redis://127.0.0.1:{}", mtls.port));
    assert!(startup::open_store(&config).await.is_err());
}

#[tokio::test]
async fn a_tls_cluster_with_a_password_carries_pushes_on_every_shard() {
    let pki = Pki::new();
    let cluster = LocalCluster::start_tls(3, pki.dir(), PASSWORD);
    let server = TestServer::configured(|c| {
        c.redis_cluster = cluster.seeds();
        c.redis_access = access(pki.ca_file(), None, PASSWORD);
    })
    .await;
    // Devices hash to partitions spread over the shards: pushes from many reach them all, each
    // through the dedicated per-primary connections, over TLS with the password.
    for n in 0..24 {
        let token = server.token("acme", &format!("phone-{n}"));
        let id = new_id();
        let reply = server
            .push(&token, vec![item(&id, 1, 1, "user_cache", "k", b"v")])
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.value());
    }
    let ready = server.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.value());
    assert_eq!(
        ready.value()["sync_store"]["nodes"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    let out = text(&check_cluster(&cluster.seeds().join(","), &pki));
    assert!(out.contains("cluster nodes: TLS (rediss://)"), "{out}");
    assert!(out.contains("serve would start"), "{out}");
    assert!(!out.contains(PASSWORD), "{out}");
}

fn check_cluster(seeds: &str, pki: &Pki) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kryonix-server"))
        .arg("check")
        .env_clear()
        .env("KRYONIX_REDIS_CLUSTER", seeds)
        .env("KRYONIX_REDIS_PASSWORD", PASSWORD)
        .env("KRYONIX_REDIS_CA_FILE", pki.ca_file())
        .output()
        .unwrap()
}

/// A client that trusts only the CA in `ca_file`.
fn https_client(ca_file: &std::path::Path) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_file).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap()
}

/// Replaces `to`'s contents with `from`'s at once (write aside, rename), as deploy tools do.
fn replace(from: &std::path::Path, to: &std::path::Path) {
    let aside = to.with_extension("new");
    std::fs::copy(from, &aside).unwrap();
    std::fs::rename(&aside, to).unwrap();
}

#[tokio::test]
async fn https_reloads_its_certificate_in_place_without_dropping_connections() {
    let first = Pki::new();
    let second = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    replace(&first.files("server").cert, &cert);
    replace(&first.files("server").key, &key);
    let server = TestServer::start(crate::support::Backend::Embedded, |c| {
        c.tls = Some(kryonix_server::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        });
        c.tls_reload_every = std::time::Duration::from_millis(50);
    })
    .await;
    let (addr, stop, task) = server.serve_tcp().await;
    let url = format!("https://127.0.0.1:{}/healthz", addr.port());

    let old_ca = https_client(&first.ca_file());
    assert_eq!(old_ca.get(&url).send().await.unwrap().status(), 200);
    assert!(
        https_client(&second.ca_file())
            .get(&url)
            .send()
            .await
            .is_err()
    );
    // Plain HTTP on the HTTPS port gets no answer.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{}/healthz", addr.port()))
            .await
            .is_err()
    );

    // The certificate is renewed (here: by another CA, so the change is visible).
    replace(&second.files("server").cert, &cert);
    replace(&second.files("server").key, &key);
    crate::support::poll_until("the new certificate", || async {
        https_client(&second.ca_file())
            .get(&url)
            .send()
            .await
            .is_ok()
            .then_some(())
    })
    .await;
    // The connection opened before the reload still serves; a new one gets the new certificate.
    assert_eq!(old_ca.get(&url).send().await.unwrap().status(), 200);
    assert!(
        https_client(&first.ca_file())
            .get(&url)
            .send()
            .await
            .is_err()
    );

    // A broken renewal (a key that does not match) leaves the working certificate in place.
    replace(&first.files("server").key, &key);
    crate::support::poll_until("the failed reload to be counted", || async {
        let metrics = server.call(Method::GET, "/metrics", None, None).await;
        String::from_utf8_lossy(&metrics.bytes)
            .contains("kryonix_tls_reloads_total{outcome=\"failed\"} 1")
            .then_some(())
    })
    .await;
    assert_eq!(
        https_client(&second.ca_file())
            .get(&url)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
