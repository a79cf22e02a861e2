//! Redis ACL users, applied by `kryonix-server acl apply` to a real Redis: a tenant's worker
//! consumes and acknowledges its own tenant's up streams and gets `NOPERM` on another tenant's,
//! on `KEYS`, `FLUSHALL` and `CONFIG`; `acl check` verifies it with `ACL DRYRUN`; and the server,
//! running as its own least-privilege user, serves pushes, pulls, the cache, publishes and
//! revocations.

use std::process::{Command, Output};

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::{RedisOptions, RedisServer, TestServer, b64, item, new_id};

fn cli(redis: &RedisServer, args: &[&str], password_file: Option<&std::path::Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kryonix-server"));
    cmd.arg("acl")
        .args(args)
        .env_clear()
        .env("KRYONIX_REDIS_URL", redis.url());
    if let Some(file) = password_file {
        cmd.arg("--password-file").arg(file);
    }
    cmd.output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn as_user(
    redis: &RedisServer,
    user: &str,
    password: &str,
) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!(
        "redis://{user}:{password}@127.0.0.1:{}/11",
        redis.port
    ))
    .unwrap()
    .get_multiplexed_async_connection()
    .await
    .unwrap()
}

fn noperm<T: std::fmt::Debug>(result: redis::RedisResult<T>) -> bool {
    matches!(&result, Err(e) if e.code() == Some("NOPERM"))
}

#[tokio::test]
async fn a_tenant_worker_reads_and_acks_only_its_own_streams() {
    let redis = RedisServer::start(RedisOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("worker.pw");
    std::fs::write(&password, "worker-password-7d1e\n").unwrap();

    let plan = cli(&redis, &["plan", "--tenant", "acme"], Some(&password));
    let out = text(&plan);
    assert!(plan.status.success(), "{out}");
    assert!(
        out.starts_with("ACL SETUSER tenant_acme_worker reset on #"),
        "{out}"
    );
    assert!(!out.contains("worker-password"), "{out}");
    let applied = cli(&redis, &["apply", "--tenant", "acme"], Some(&password));
    assert!(applied.status.success(), "{}", text(&applied));
    let checked = cli(&redis, &["check", "--tenant", "acme"], None);
    assert!(checked.status.success(), "{}", text(&checked));
    assert!(
        text(&checked).contains("ok    tenant_acme_worker"),
        "{}",
        text(&checked)
    );
    // Nothing was applied for globex.
    let missing = cli(&redis, &["check", "--tenant", "globex"], None);
    assert!(!missing.status.success(), "{}", text(&missing));

    let own = "tenant:acme:mobile_sync:up:{acme:p0}:t1";
    let other = "tenant:globex:mobile_sync:up:{globex:p0}:t1";
    let mut admin = redis.db(11).await;
    for stream in [own, other] {
        let _: String = redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("item")
            .arg("x")
            .query_async(&mut admin)
            .await
            .unwrap();
    }
    let mut worker = as_user(&redis, "tenant_acme_worker", "worker-password-7d1e").await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(own)
        .arg("backend")
        .arg("0")
        .query_async(&mut worker)
        .await
        .unwrap();
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("backend")
        .arg("w1")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(own)
        .arg(">")
        .query_async(&mut worker)
        .await
        .unwrap();
    assert_ne!(read, redis::Value::Nil);
    let acked: redis::RedisResult<i64> = redis::cmd("XACK")
        .arg(own)
        .arg("backend")
        .arg("0-1")
        .query_async(&mut worker)
        .await;
    assert!(acked.is_ok(), "{acked:?}");
    // Another tenant's streams, and the dangerous commands, are refused.
    assert!(noperm(
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(other)
            .arg("backend")
            .arg("0")
            .query_async::<()>(&mut worker)
            .await
    ));
    assert!(noperm(
        redis::cmd("XRANGE")
            .arg(other)
            .arg("-")
            .arg("+")
            .query_async::<redis::Value>(&mut worker)
            .await
    ));
    assert!(noperm(
        redis::cmd("KEYS")
            .arg("*")
            .query_async::<Vec<String>>(&mut worker)
            .await
    ));
    assert!(noperm(
        redis::cmd("FLUSHALL").query_async::<()>(&mut worker).await
    ));
    assert!(noperm(
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async::<redis::Value>(&mut worker)
            .await
    ));
    assert!(noperm(
        redis::cmd("XADD")
            .arg(own)
            .arg("*")
            .arg("f")
            .arg("v")
            .query_async::<String>(&mut worker)
            .await
    ));
}

#[tokio::test]
async fn the_server_runs_as_its_least_privilege_user() {
    let redis = RedisServer::start(RedisOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("server.pw");
    std::fs::write(&password, "server-password-51ac").unwrap();
    let applied = cli(
        &redis,
        &["apply", "--server-user", "kryonix"],
        Some(&password),
    );
    assert!(applied.status.success(), "{}", text(&applied));
    let checked = cli(&redis, &["check", "--server-user", "kryonix"], None);
    assert!(checked.status.success(), "{}", text(&checked));

    let server = TestServer::configured(|c| {
        c.redis_url = Some(redis.url());
        c.redis_access.username = Some("kryonix".into());
        c.redis_access.password = Some(kryonix_server::store::redis::Secret::new(
            "server-password-51ac",
        ));
    })
    .await;
    let token = server.token("acme", "phone-1");
    let pushed = server
        .push(&token, vec![item(&new_id(), 1, 1, "user_cache", "k", b"v")])
        .await;
    assert_eq!(pushed.statuses(), ["accepted"], "{}", pushed.value());
    let service = server.service_token("acme");
    let published = server
        .call(
            Method::POST,
            "/v1/publish",
            Some(&service),
            Some(&json!({"changes": [{"namespace": "tenant_config", "key": "flags", "op": "put", "value": b64(b"on")}]})),
        )
        .await;
    assert_eq!(published.status, StatusCode::OK, "{}", published.value());
    let pulled = server
        .call(Method::GET, "/v1/sync/pull", Some(&token), None)
        .await;
    assert_eq!(pulled.status, StatusCode::OK, "{}", pulled.value());
    let put = server
        .call(
            Method::PUT,
            "/v1/cache/api_cache/k",
            Some(&token),
            Some(&json!({"value": b64(b"x"), "ttl_secs": 60})),
        )
        .await;
    assert!(put.status.is_success(), "{}", put.value());
    let got = server
        .call(Method::GET, "/v1/cache/api_cache/k", Some(&token), None)
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.value());
    let revoked = server
        .call(
            Method::POST,
            "/v1/tokens/revoke",
            Some(&service),
            Some(&json!({"token": token})),
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.value());
    server
        .call(Method::GET, "/v1/sync/pull", Some(&token), None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let ready = server.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.value());
}

#[tokio::test]
async fn acls_are_applied_and_checked_on_every_node_of_a_cluster() {
    let cluster = crate::support::LocalCluster::start(3, 1);
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("worker.pw");
    std::fs::write(&password, "cluster-worker-pw").unwrap();
    let run = |args: &[&str], file: Option<&std::path::Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kryonix-server"));
        cmd.arg("acl")
            .args(args)
            .env_clear()
            .env("KRYONIX_REDIS_CLUSTER", cluster.seeds().join(","));
        if let Some(file) = file {
            cmd.arg("--password-file").arg(file);
        }
        cmd.output().unwrap()
    };
    let applied = run(&["apply", "--tenant", "acme"], Some(&password));
    let out = text(&applied);
    assert!(applied.status.success(), "{out}");
    assert!(
        out.contains("on 6 node(s)"),
        "every primary and replica: {out}"
    );
    let checked = run(&["check", "--tenant", "acme"], None);
    assert!(checked.status.success(), "{}", text(&checked));
    assert!(
        text(&checked).contains("on 6 node(s)"),
        "{}",
        text(&checked)
    );
}
