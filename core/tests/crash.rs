//! What a process killed with SIGKILL leaves behind.
//!
//! - An enqueue loop in a child process is killed; every id the child saw returned from
//!   `enqueue` must be in the database afterwards.
//! - A child holding an agent open is killed; its one-agent-per-file lock must not outlive it.
//!
//! The child is this same test binary, re-run with `KRYONIX_CRASH_CHILD_DB` (or
//! `KRYONIX_LOCK_CHILD_DB`) set: it runs its part and prints what it did. The parent reads those
//! lines, kills the child (SIGKILL: no destructor, no close, no checkpoint, no unlock), and
//! reopens the file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use kryonix_core::sync::StaticToken;
use kryonix_core::{
    Agent, AgentConfig, EncryptionKey, Error, ItemId, Outbox, OutboxConfig, Store, StoreError,
    StoreOptions, SystemClock, TierSet,
};
use kryonix_protocol::wire::Op;
use kryonix_protocol::{Namespace, NetworkProfile, TenantId, Tier};

const CHILD_ENV: &str = "KRYONIX_CRASH_CHILD_DB";
const LOCK_CHILD_ENV: &str = "KRYONIX_LOCK_CHILD_DB";

fn open(path: &str) -> Outbox {
    let store = Arc::new(Store::open(path, &StoreOptions::default()).unwrap());
    Outbox::open(
        store,
        Arc::new(SystemClock),
        OutboxConfig::new(TenantId::new("acme").unwrap()),
    )
    .unwrap()
}

/// The child's body; a no-op in a normal test run.
#[test]
fn crash_child_enqueue_loop() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let outbox = open(&path);
    for i in 0u64.. {
        let tier = Tier::ALL[(i % 4) as usize];
        let id = outbox
            .enqueue(
                Namespace::UserCache,
                &format!("item-{i}"),
                Op::Put,
                &[0x42; 256],
                tier,
            )
            .unwrap();
        println!("ENQUEUED {id}");
    }
}

#[test]
fn sigkill_during_enqueue_loses_no_returned_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let path = path.to_str().unwrap().to_owned();
    // Create the schema first, so the child starts enqueueing at once.
    drop(open(&path));

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_enqueue_loop",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut seen = HashSet::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("ENQUEUED ") {
            seen.insert(id.parse::<ItemId>().unwrap());
            if seen.len() == 2_000 {
                // `Child::kill` is SIGKILL on Unix.
                child.kill().unwrap();
                break;
            }
        }
    }
    child.wait().unwrap();
    assert_eq!(seen.len(), 2_000, "the child stopped early");

    let outbox = open(&path);
    let mut stored = HashSet::new();
    loop {
        let batch = outbox.next_batch(100, TierSet::ALL).unwrap();
        if batch.is_empty() {
            break;
        }
        let ids: Vec<ItemId> = batch.iter().map(|i| i.id).collect();
        stored.extend(ids.iter().copied());
        outbox.ack(&ids).unwrap();
    }
    let lost: Vec<_> = seen.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} returned ids lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    // The child may have committed a few more that it never got to print.
    assert!(stored.len() >= seen.len());
}

/// Encrypted when SQLCipher is built in, so the crash path of an encrypted agent runs too.
fn agent_key() -> Option<EncryptionKey> {
    cfg!(feature = "encryption").then(|| EncryptionKey::new([7; 32]))
}

/// An offline agent on `path` (no request is ever made).
fn open_agent(path: &str, runtime: &tokio::runtime::Runtime) -> Result<Agent, Error> {
    let mut config = AgentConfig::new(path, "http://127.0.0.1:9", TenantId::new("acme").unwrap());
    config.profile.network = NetworkProfile::OFFLINE;
    config.encryption_key = agent_key();
    Agent::open(
        config,
        Arc::new(StaticToken("unused".into())),
        None,
        runtime.handle(),
    )
}

fn is_already_open(result: Result<Agent, Error>) -> bool {
    matches!(result, Err(Error::Store(StoreError::AlreadyOpen { .. })))
}

#[test]
fn a_second_agent_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let path = path.to_str().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let first = open_agent(path, &runtime).unwrap();
    first
        .enqueue(Namespace::UserCache, "k", Op::Put, b"v", Tier::Critical)
        .unwrap();
    let before = std::fs::read(path).unwrap();
    let refused = open_agent(path, &runtime).unwrap_err();
    assert!(
        matches!(refused, Error::Store(StoreError::AlreadyOpen { .. })),
        "{refused}"
    );
    assert!(
        refused.is_retryable(),
        "free again once the other agent closes"
    );
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "the refused open touched nothing"
    );

    // `close` releases the file even though the first agent object is still alive.
    runtime.block_on(first.close()).unwrap();
    let second = open_agent(path, &runtime).unwrap();
    assert!(matches!(
        first.rekey(&EncryptionKey::new([8; 32])),
        Err(Error::Closed)
    ));
    assert_eq!(second.outbox().stats().unwrap().depth(), 1);
    // Dropping an agent without `close` releases it too, once its sync task has seen the
    // shutdown (the task holds the claim while it may still write).
    drop(second);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match open_agent(path, &runtime) {
            Ok(third) => break drop(third),
            Err(Error::Store(StoreError::AlreadyOpen { .. }))
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("not released after a drop: {e}"),
        }
    }
}

/// The child's body; a no-op in a normal test run. Opens an agent, queues one item, says so and
/// waits to be killed.
#[test]
fn crash_child_hold_agent() {
    let Ok(path) = std::env::var(LOCK_CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let agent = open_agent(&path, &runtime).unwrap();
    let id = agent
        .enqueue(Namespace::UserCache, "held", Op::Put, b"v", Tier::Critical)
        .unwrap();
    println!("OPEN {id}");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn a_sigkilled_agent_does_not_leave_the_file_locked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let path = path.to_str().unwrap().to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_hold_agent",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(LOCK_CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let id = BufReader::new(stdout)
        .lines()
        .map(Result::unwrap)
        // libtest prints "test crash_child_hold_agent ... " without a newline before the test
        // body runs, so the marker can be mid-line.
        .find_map(|line| line.split_once("OPEN ").map(|(_, id)| id.to_owned()))
        .expect("the child opened its agent");
    let id: ItemId = id.parse().unwrap();

    // Another process holds the file: refused.
    assert!(is_already_open(open_agent(&path, &runtime)));
    // `Child::kill` is SIGKILL on Unix: the kernel drops the lock with the process.
    child.kill().unwrap();
    child.wait().unwrap();

    let agent = open_agent(&path, &runtime).unwrap();
    let batch = agent.outbox().next_batch(100, TierSet::ALL).unwrap();
    assert_eq!(batch.iter().map(|i| i.id).collect::<Vec<_>>(), [id]);
}

const CACHE_CHILD_ENV: &str = "KRYONIX_CACHE_CHILD_DB";

/// A device budget that gives `sessions` (an `allkeys-lru` namespace, adaptive by default) room
/// for about a hundred of the child's values.
const CACHE_DEVICE_BUDGET: u64 = 4 * 1024 * 1024;

fn open_cache(path: &str) -> (Arc<Store>, kryonix_core::Cache) {
    let store = Arc::new(Store::open(path, &StoreOptions::default()).unwrap());
    let config = kryonix_core::CacheConfig {
        device_budget_bytes: CACHE_DEVICE_BUDGET,
        ..kryonix_core::CacheConfig::default()
    };
    let cache = kryonix_core::Cache::open(store.clone(), Arc::new(SystemClock), config).unwrap();
    (store, cache)
}

fn cache_key(key: &str) -> kryonix_protocol::TenantKey {
    kryonix_protocol::TenantKey::new(&TenantId::new("acme").unwrap(), Namespace::Sessions, key)
        .unwrap()
}

/// The cache child's body: a hot set read again and again between puts of new keys (a scan),
/// until it is killed; a no-op in a normal test run.
#[test]
fn crash_child_cache_loop() {
    let Ok(path) = std::env::var(CACHE_CHILD_ENV) else {
        return;
    };
    let (_store, cache) = open_cache(&path);
    let value = [0x42; 512];
    for i in 0..10 {
        cache
            .put(
                &cache_key(&format!("hot{i}")),
                &value,
                kryonix_core::Expiry::Never,
            )
            .unwrap();
    }
    for i in 0u64.. {
        for h in 0..10 {
            assert!(cache.get(&cache_key(&format!("hot{h}"))).unwrap().is_some());
        }
        cache
            .put(
                &cache_key(&format!("scan{i}")),
                &value,
                kryonix_core::Expiry::Never,
            )
            .unwrap();
        println!("PUT {i}");
    }
}

/// Killed in the middle of reads and writes, the cache reopens with every namespace's policy
/// rebuilt from the table: the usage it reports is the table's, the budget holds, the hot set
/// the child kept reading is still there, and a scan after the restart does not flush it.
#[test]
fn sigkill_during_cache_use_reopens_with_its_policies_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let path = path.to_str().unwrap().to_owned();
    drop(open_cache(&path));

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_cache_loop",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CACHE_CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut puts = 0;
    for line in BufReader::new(stdout).lines() {
        if line.unwrap().starts_with("PUT ") {
            puts += 1;
            if puts == 1_000 {
                child.kill().unwrap();
                break;
            }
        }
    }
    child.wait().unwrap();
    assert_eq!(puts, 1_000, "the child stopped early");

    let (store, cache) = open_cache(&path);
    let sessions = |cache: &kryonix_core::Cache| {
        cache
            .stats()
            .namespaces
            .into_iter()
            .find(|n| n.namespace == Namespace::Sessions)
            .unwrap()
    };
    let (rows, bytes): (i64, i64) = store
        .read(|c| {
            c.query_row(
                "SELECT count(*), coalesce(sum(charged_bytes), 0) FROM cache_entries \
                 WHERE namespace = ?1",
                [i64::from(Namespace::Sessions.id())],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(StoreError::from)
        })
        .unwrap();
    let stats = sessions(&cache);
    assert_eq!(
        (stats.entries, stats.used_bytes),
        (rows as u64, bytes as u64)
    );
    assert!(stats.used_bytes <= stats.budget_bytes);
    let hot = |cache: &kryonix_core::Cache| {
        (0..10)
            .filter(|h| cache.contains(&cache_key(&format!("hot{h}"))).unwrap())
            .count()
    };
    assert_eq!(hot(&cache), 10, "the hot set survived the crash");
    for i in 0..500 {
        cache
            .put(
                &cache_key(&format!("after{i}")),
                &[0x17; 512],
                kryonix_core::Expiry::Never,
            )
            .unwrap();
    }
    assert_eq!(
        hot(&cache),
        10,
        "a scan after the restart does not flush the hot set"
    );
    assert!(sessions(&cache).used_bytes <= stats.budget_bytes);
}
