//! Cache namespaces grouped by eviction policy onto Redis instances of their own (issue 14,
//! ADR 0027): each namespace's reads and writes reach the instance of its table policy, in the
//! database of its id, and nowhere else; a group left unset falls back to the main cache Redis;
//! `kryonix-server check` compares each instance's `maxmemory-policy` with the table. Every
//! instance is a real `redis-server` started with the policy under test.

use std::process::{Command, Output};

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::{RedisOptions, RedisServer, TestServer, b64, item, new_id};

/// A Redis started with `policy`, no AOF (a cache).
fn cache_redis(policy: &'static str) -> RedisServer {
    RedisServer::start(RedisOptions {
        policy,
        appendonly: false,
        maxmemory: Some("64mb"),
    })
}

/// The sync store the way production runs it: noeviction, AOF, a memory limit.
fn sync_redis() -> RedisServer {
    RedisServer::start(RedisOptions {
        maxmemory: Some("64mb"),
        ..RedisOptions::default()
    })
}

/// One instance per policy group, each running its group's policy.
struct Groups {
    lru: RedisServer,
    lfu: RedisServer,
    volatile_lru: RedisServer,
    volatile_ttl: RedisServer,
}

impl Groups {
    fn start() -> Self {
        Self {
            lru: cache_redis("allkeys-lru"),
            lfu: cache_redis("allkeys-lfu"),
            volatile_lru: cache_redis("volatile-lru"),
            volatile_ttl: cache_redis("volatile-ttl"),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KRYONIX_CACHE_LRU_REDIS_URL", self.lru.url()),
            ("KRYONIX_CACHE_LFU_REDIS_URL", self.lfu.url()),
            (
                "KRYONIX_CACHE_VOLATILE_LRU_REDIS_URL",
                self.volatile_lru.url(),
            ),
            (
                "KRYONIX_CACHE_VOLATILE_TTL_REDIS_URL",
                self.volatile_ttl.url(),
            ),
        ]
    }
}

/// Every (instance, database) that holds `key`, read with plain clients.
async fn locate(instances: &[(&'static str, &RedisServer)], key: &str) -> Vec<(&'static str, u8)> {
    let mut found = Vec::new();
    for (name, redis) in instances {
        for db in 0..16 {
            let mut con = redis.db(db).await;
            let exists: bool = redis::cmd("EXISTS")
                .arg(key)
                .query_async(&mut con)
                .await
                .unwrap();
            if exists {
                found.push((*name, db));
            }
        }
    }
    found
}

/// Keys in one database of one instance.
async fn dbsize(redis: &RedisServer, db: u8) -> i64 {
    let mut con = redis.db(db).await;
    redis::cmd("DBSIZE").query_async(&mut con).await.unwrap()
}

async fn put(server: &TestServer, token: &str, namespace: &str, key: &str, value: &[u8]) {
    let reply = server
        .call(
            Method::PUT,
            &format!("/v1/cache/{namespace}/{key}"),
            Some(token),
            Some(&json!({ "value": b64(value) })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{namespace}");
}

async fn get(server: &TestServer, token: &str, namespace: &str, key: &str) -> StatusCode {
    server
        .call(
            Method::GET,
            &format!("/v1/cache/{namespace}/{key}"),
            Some(token),
            None,
        )
        .await
        .status
}

#[tokio::test]
async fn each_cache_namespace_reaches_the_instance_of_its_policy_group() {
    let groups = Groups::start();
    let server = TestServer::with_redis(RedisOptions::default(), |c| {
        c.cache_groups.allkeys_lru = Some(groups.lru.url());
        c.cache_groups.allkeys_lfu = Some(groups.lfu.url());
        c.cache_groups.volatile_lru = Some(groups.volatile_lru.url());
        c.cache_groups.volatile_ttl = Some(groups.volatile_ttl.url());
        // Rate limits on, so their state (rate_limiting, volatile-ttl) is written too.
        c.default_policy.rate_per_sec = 1000;
        c.default_policy.device_rate_per_sec = 1000;
    })
    .await;
    let instances = [
        ("sync", server.redis()),
        ("lru", &groups.lru),
        ("lfu", &groups.lfu),
        ("volatile-lru", &groups.volatile_lru),
        ("volatile-ttl", &groups.volatile_ttl),
    ];
    let token = server.token("acme", "phone-1");

    for (namespace, instance, db) in [
        ("user_cache", "lru", 2),
        ("api_cache", "lfu", 3),
        ("search_cache", "lfu", 7),
        ("realtime_data", "volatile-lru", 5),
        ("geolocation", "volatile-lru", 12),
        ("analytics_temp", "volatile-ttl", 13),
    ] {
        put(&server, &token, namespace, "k", namespace.as_bytes()).await;
        let key = format!("tenant:acme:{namespace}:k");
        assert_eq!(
            locate(&instances, &key).await,
            [(instance, db)],
            "{namespace}"
        );
        // Read back through the server, from the same instance.
        let reply = server
            .call(
                Method::GET,
                &format!("/v1/cache/{namespace}/k"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{namespace}");
        assert_eq!(reply.value()["value"], b64(namespace.as_bytes()));
    }

    // Tenant isolation is unchanged: another tenant reads nothing of acme's on the LFU instance.
    let other = server.token("globex", "phone-1");
    assert_eq!(
        get(&server, &other, "api_cache", "k").await,
        StatusCode::NOT_FOUND
    );
    // A delete reaches the same instance.
    let deleted = server
        .call(Method::DELETE, "/v1/cache/api_cache/k", Some(&token), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(
        locate(&instances, "tenant:acme:api_cache:k")
            .await
            .is_empty()
    );

    // The server's own volatile-ttl namespaces: a revocation lands in auth_tokens (DB 1) and
    // the rate limiter's state in rate_limiting (DB 4), both on the volatile-ttl instance.
    let lost = server.token("acme", "lost-phone");
    let revoked = server
        .call(
            Method::POST,
            "/v1/tokens/revoke",
            Some(&server.service_token("acme")),
            Some(&json!({ "token": lost })),
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.value());
    assert_eq!(dbsize(&groups.volatile_ttl, 1).await, 1);
    assert_eq!(dbsize(server.redis(), 1).await, 0);
    assert_eq!(
        get(&server, &lost, "user_cache", "k").await,
        StatusCode::UNAUTHORIZED
    );
    assert!(dbsize(&groups.volatile_ttl, 4).await > 0);
    assert_eq!(dbsize(server.redis(), 4).await, 0);

    // Pushes stay on the sync store, DB 11, and nothing else lands there.
    let id = new_id();
    let pushed = server
        .push(&token, vec![item(&id, 1, 1, "user_cache", "k", b"v")])
        .await;
    assert_eq!(pushed.statuses(), ["accepted"]);
    assert_eq!(server.stored_ids("acme", 1).await, vec![id]);
    let sync_counts = server.redis().key_counts().await;
    for (db, count) in sync_counts.iter().enumerate() {
        if db != 11 {
            assert_eq!(*count, 0, "sync store DB {db}: {sync_counts:?}");
        }
    }
    for (name, redis) in &instances[1..] {
        assert_eq!(dbsize(redis, 11).await, 0, "{name}");
    }
}

#[tokio::test]
async fn an_unset_group_falls_back_to_the_main_cache_redis() {
    let lfu = cache_redis("allkeys-lfu");
    let main = cache_redis("allkeys-lru");
    let server = TestServer::with_redis(RedisOptions::default(), |c| {
        // The harness's Redis is the sync store; the cache namespaces without a group of their
        // own go to `main`, as every deployment did before the groups.
        c.sync_redis_url = c.redis_url.take();
        c.redis_url = Some(main.url());
        c.cache_groups.allkeys_lfu = Some(lfu.url());
    })
    .await;
    let instances = [("sync", server.redis()), ("main", &main), ("lfu", &lfu)];
    let token = server.token("acme", "phone-1");
    for (namespace, instance, db) in [
        ("user_cache", "main", 2),
        ("geolocation", "main", 12),
        ("analytics_temp", "main", 13),
        ("ai_models", "lfu", 10),
    ] {
        put(&server, &token, namespace, "k", b"v").await;
        assert_eq!(
            locate(&instances, &format!("tenant:acme:{namespace}:k")).await,
            [(instance, db)],
            "{namespace}"
        );
        assert_eq!(get(&server, &token, namespace, "k").await, StatusCode::OK);
    }
}

/// `kryonix-server check` with only the given environment.
fn check(env: &[(&str, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kryonix-server"));
    cmd.arg("check").args(args).env_clear();
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd.output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn check_passes_when_every_instance_runs_its_tables_policy() {
    let sync = sync_redis();
    let groups = Groups::start();
    let mut env = groups.env();
    env.push(("KRYONIX_REDIS_URL", sync.url()));
    let out = check(&env, &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    for expected in [
        format!(
            "ok    sync store + main cache ({}): maxmemory-policy noeviction, as the table asks for mobile_sync",
            sync.url()
        ),
        format!(
            "ok    allkeys-lru group ({}): maxmemory-policy allkeys-lru, as the table asks for sessions, user_cache, file_metadata, tenant_config, device_trust, backup_status",
            groups.lru.url()
        ),
        format!(
            "ok    allkeys-lfu group ({}): maxmemory-policy allkeys-lfu, as the table asks for api_cache, search_cache, ai_models",
            groups.lfu.url()
        ),
        format!(
            "ok    volatile-lru group ({}): maxmemory-policy volatile-lru, as the table asks for realtime_data, geolocation",
            groups.volatile_lru.url()
        ),
        format!(
            "ok    volatile-ttl group ({}): maxmemory-policy volatile-ttl, as the table asks for auth_tokens, rate_limiting, analytics_temp, distributed_locks",
            groups.volatile_ttl.url()
        ),
        "ok    cache allkeys-lfu group: plaintext on the loopback interface".to_owned(),
        "serve would start".to_owned(),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in\n{text}");
    }
    assert!(!text.contains("WARN"), "{text}");
}

#[tokio::test]
async fn check_warns_on_a_group_instance_that_runs_another_policy() {
    let sync = sync_redis();
    let groups = Groups::start();
    let mut env = groups.env();
    env.push(("KRYONIX_REDIS_URL", sync.url()));
    // The LFU namespaces pointed at the LRU instance.
    env.retain(|(name, _)| *name != "KRYONIX_CACHE_LFU_REDIS_URL");
    env.push(("KRYONIX_CACHE_LFU_REDIS_URL", groups.lru.url()));
    let out = check(&env, &[]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "a cache policy mismatch only warns:\n{text}"
    );
    let expected = format!(
        "WARN  allkeys-lru group + allkeys-lfu group ({}): maxmemory-policy allkeys-lru, so the table's policy is not honoured for api_cache, search_cache, ai_models (allkeys-lfu)",
        groups.lru.url()
    );
    assert!(text.contains(&expected), "missing {expected:?} in\n{text}");
    assert_eq!(text.matches("WARN").count(), 1, "{text}");
}

#[tokio::test]
async fn check_refuses_an_evicting_instance_that_holds_mobile_sync() {
    let groups = Groups::start();
    // No sync store of its own: the LFU instance is named as the main Redis, so mobile_sync
    // would live on an allkeys-lfu instance.
    let env = vec![
        ("KRYONIX_REDIS_URL", groups.lfu.url()),
        ("KRYONIX_CACHE_LFU_REDIS_URL", groups.lfu.url()),
    ];
    let out = check(&env, &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let expected = format!(
        "FAIL  sync store + main cache + allkeys-lfu group ({}): maxmemory-policy allkeys-lfu can evict mobile_sync, which the table marks noeviction",
        groups.lfu.url()
    );
    assert!(text.contains(&expected), "missing {expected:?} in\n{text}");
    assert!(text.contains("serve would refuse to start"), "{text}");
}

#[tokio::test]
async fn check_on_one_redis_says_which_table_policies_are_not_honoured() {
    // Today's simplest deployment: one noeviction Redis for everything.
    let single = sync_redis();
    let out = check(&[("KRYONIX_REDIS_URL", single.url())], &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let expected = format!(
        "WARN  all 15 cache namespaces share one Redis instance, sync store + main cache ({}), with maxmemory-policy noeviction: the table's policy is therefore not honoured for sessions, user_cache, file_metadata, tenant_config, device_trust, backup_status (allkeys-lru); auth_tokens, rate_limiting, analytics_temp, distributed_locks (volatile-ttl); api_cache, search_cache, ai_models (allkeys-lfu); realtime_data, geolocation (volatile-lru) (give them instances of their own with --cache-lru-redis-url, --cache-lfu-redis-url, --cache-volatile-lru-redis-url, --cache-volatile-ttl-redis-url)",
        single.url()
    );
    assert!(text.contains(&expected), "missing {expected:?} in\n{text}");
    assert!(text.contains("serve would start"), "{text}");

    // One allkeys-lru cache beside a sync store: the LRU namespaces are honoured, the rest not.
    let sync = sync_redis();
    let cache = cache_redis("allkeys-lru");
    let env = vec![
        ("KRYONIX_REDIS_URL", cache.url()),
        ("KRYONIX_SYNC_REDIS_URL", sync.url()),
    ];
    let out = check(&env, &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let expected = format!(
        "WARN  all 15 cache namespaces share one Redis instance, main cache ({}), with maxmemory-policy allkeys-lru: the table's policy is therefore not honoured for auth_tokens, rate_limiting, analytics_temp, distributed_locks (volatile-ttl); api_cache, search_cache, ai_models (allkeys-lfu); realtime_data, geolocation (volatile-lru) (give them instances of their own with --cache-lfu-redis-url, --cache-volatile-lru-redis-url, --cache-volatile-ttl-redis-url)",
        cache.url()
    );
    assert!(text.contains(&expected), "missing {expected:?} in\n{text}");
    let expected = format!(
        "ok    sync store ({}): maxmemory-policy noeviction, as the table asks for mobile_sync",
        sync.url()
    );
    assert!(text.contains(&expected), "missing {expected:?} in\n{text}");
}

/// Adds a user to `redis` with every command but those in `denied`.
async fn add_user(redis: &RedisServer, name: &str, password: &str, denied: &[&str]) {
    let mut con = redis.db(0).await;
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(name)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("+@all");
    for command in denied {
        cmd.arg(format!("-{command}"));
    }
    let () = cmd.query_async(&mut con).await.unwrap();
}

#[tokio::test]
async fn check_reads_the_policy_from_info_when_config_is_refused_and_warns_when_neither_answers() {
    let sync = sync_redis();
    let groups = Groups::start();
    // The volatile-lru instance refuses CONFIG (as a least-privilege ACL or a managed Redis
    // does); the LFU instance refuses INFO as well.
    add_user(
        &groups.volatile_lru,
        "noconfig",
        "pw-noconfig-1",
        &["config"],
    )
    .await;
    add_user(&groups.lfu, "blind", "pw-blind-2", &["config", "info"]).await;
    let port = |r: &RedisServer| r.port;
    let mut env = groups.env();
    env.retain(|(name, _)| {
        !matches!(
            *name,
            "KRYONIX_CACHE_LFU_REDIS_URL" | "KRYONIX_CACHE_VOLATILE_LRU_REDIS_URL"
        )
    });
    env.push((
        "KRYONIX_CACHE_VOLATILE_LRU_REDIS_URL",
        format!(
            "redis://noconfig:pw-noconfig-1@127.0.0.1:{}",
            port(&groups.volatile_lru)
        ),
    ));
    env.push((
        "KRYONIX_CACHE_LFU_REDIS_URL",
        format!("redis://blind:pw-blind-2@127.0.0.1:{}", port(&groups.lfu)),
    ));
    env.push(("KRYONIX_REDIS_URL", sync.url()));
    let out = check(&env, &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let expected = format!(
        "ok    volatile-lru group (redis://noconfig:<redacted>@127.0.0.1:{}): maxmemory-policy volatile-lru (read from INFO: CONFIG GET was refused), as the table asks for realtime_data, geolocation",
        port(&groups.volatile_lru)
    );
    assert!(text.contains(&expected), "missing {expected:?} in\n{text}");
    let line = text
        .lines()
        .find(|l| l.contains("allkeys-lfu group (redis://blind"))
        .unwrap_or_else(|| panic!("no line for the LFU group in\n{text}"));
    assert!(
        line.starts_with("WARN  ")
            && line.contains("maxmemory-policy could not be verified")
            && line.contains("no permissions to run the 'config|get' command")
            && line.contains("no permissions to run the 'info' command")
            && line.ends_with("it serves api_cache, search_cache, ai_models"),
        "{line}"
    );
    assert!(
        !text.contains("pw-blind-2") && !text.contains("pw-noconfig-1"),
        "{text}"
    );
}

#[test]
fn a_bad_or_unreachable_group_url_is_a_clear_error() {
    let sync = sync_redis();
    let out = check(
        &[
            ("KRYONIX_REDIS_URL", sync.url()),
            (
                "KRYONIX_CACHE_VOLATILE_TTL_REDIS_URL",
                "http://user:hunter2@127.0.0.1:6379".into(),
            ),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--cache-volatile-ttl-redis-url http://user:<redacted>@127.0.0.1:6379 is not a Redis URL"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");

    // `serve` refuses the same settings before touching Redis.
    let serve = Command::new(env!("CARGO_BIN_EXE_kryonix-server"))
        .arg("serve")
        .env_clear()
        .env("KRYONIX_JWT_SECRET", crate::support::SECRET)
        .env("KRYONIX_REDIS_URL", sync.url())
        .env("KRYONIX_CACHE_LFU_REDIS_URL", "not a url")
        .output()
        .unwrap();
    assert_eq!(serve.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&serve.stderr).contains("--cache-lfu-redis-url"),
        "{serve:?}"
    );

    // A URL that parses but where no Redis answers: check names the group and its address.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let out = check(
        &[
            ("KRYONIX_REDIS_URL", sync.url()),
            (
                "KRYONIX_CACHE_LFU_REDIS_URL",
                format!("redis://127.0.0.1:{closed}"),
            ),
        ],
        &[],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "FAIL  cannot connect: store unavailable: cache allkeys-lfu group at 127.0.0.1:{closed}"
        )),
        "{text}"
    );

    // With a Cluster the groups are refused, naming the flag.
    let out = check(
        &[
            ("KRYONIX_REDIS_CLUSTER", "redis://127.0.0.1:7000".into()),
            ("KRYONIX_CACHE_LFU_REDIS_URL", sync.url()),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--cache-lfu-redis-url apply to a standalone Redis deployment"),
        "{err}"
    );
}

#[test]
fn acl_apply_reaches_the_group_instances_too() {
    let sync = sync_redis();
    let lfu = cache_redis("allkeys-lfu");
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("server.pw");
    std::fs::write(&password, "server-password-9c2f\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kryonix-server"))
        .args([
            "acl",
            "apply",
            "--server-user",
            "kryonix",
            "--password-file",
        ])
        .arg(&password)
        .env_clear()
        .env("KRYONIX_REDIS_URL", sync.url())
        .env("KRYONIX_CACHE_LFU_REDIS_URL", lfu.url())
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("on 2 node(s)"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{}", lfu.port)), "{text}");
}
