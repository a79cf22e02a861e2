//! Encryption at rest through the agent, the way an app uses it: what reaches the disk, a wrong
//! key, a re-key, and the on-request migration of a plaintext database. The store-level cases
//! (WAL contents, foreign files, crash images) are unit tests in `src/store/encryption.rs`.
//!
//! Needs SQLCipher: `cargo test -p kryonix-core --features encryption` (a workspace build enables
//! it through the bindings crate).

#![cfg(feature = "encryption")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kryonix_core::cache::Expiry;
use kryonix_core::sync::StaticToken;
use kryonix_core::{Agent, AgentConfig, EncryptionKey, Error, ItemId, Store, StoreError};
use kryonix_protocol::wire::Op;
use kryonix_protocol::{Namespace, NetworkProfile, TenantId, Tier};

/// Written as cache keys, cache values and outbox payloads; must never appear in the file.
const MARKER: &str = "TENANT-SECRET-c0ffee";

fn key(byte: u8) -> EncryptionKey {
    EncryptionKey::new([byte; 32])
}

/// An offline agent (no request is ever made) on `path`, with `key`.
fn open(
    path: &Path,
    key: Option<EncryptionKey>,
    runtime: &tokio::runtime::Runtime,
) -> Result<Agent, Error> {
    let mut config = AgentConfig::new(path, "http://127.0.0.1:9", TenantId::new("acme").unwrap());
    config.profile.network = NetworkProfile::OFFLINE;
    config.encryption_key = key;
    Agent::open(
        config,
        Arc::new(StaticToken("unused".into())),
        None,
        runtime.handle(),
    )
}

/// Writes `n` cache entries and `n` outbox items carrying the marker; returns the item ids.
fn write_marked(agent: &Agent, n: usize) -> Vec<ItemId> {
    (0..n)
        .map(|i| {
            let k = agent
                .key(Namespace::UserCache, &format!("{MARKER}-key-{i}"))
                .unwrap();
            agent
                .cache()
                .put(
                    &k,
                    format!("{MARKER} value {i}").as_bytes(),
                    Expiry::Adaptive,
                )
                .unwrap();
            agent
                .enqueue(
                    Namespace::UserCache,
                    &format!("item-{i}"),
                    Op::Put,
                    format!("{MARKER} payload {i}").as_bytes(),
                    Tier::ALL[i % 4],
                )
                .unwrap()
        })
        .collect()
}

/// Every cache value written by [`write_marked`], and the payload of each of `ids` still queued,
/// read back through the API (without taking anything out of the queue).
type ReadBack = (Vec<Option<Vec<u8>>>, Vec<Option<Vec<u8>>>);

fn read_back(agent: &Agent, n: usize, ids: &[ItemId]) -> ReadBack {
    let values = (0..n)
        .map(|i| {
            let k = agent
                .key(Namespace::UserCache, &format!("{MARKER}-key-{i}"))
                .unwrap();
            agent.cache().get(&k).unwrap()
        })
        .collect();
    let payloads = ids
        .iter()
        .map(|id| {
            agent
                .outbox()
                .get(*id)
                .unwrap()
                .map(|(item, _)| item.payload)
        })
        .collect();
    (values, payloads)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The database file and its sidecars, concatenated (what a stolen backup would hold).
fn all_bytes(path: &Path) -> Vec<u8> {
    ["", "-wal", "-shm"]
        .iter()
        .flat_map(|suffix| {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            std::fs::read(PathBuf::from(name)).unwrap_or_default()
        })
        .collect()
}

fn hash(path: &Path) -> u64 {
    let mut hasher = DefaultHasher::new();
    std::fs::read(path).unwrap().hash(&mut hasher);
    hasher.finish()
}

#[test]
fn an_encrypted_agent_leaves_no_plaintext_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let agent = open(&path, Some(key(0x42)), &runtime).unwrap();
    write_marked(&agent, 40);
    // While open, the rows sit in the WAL; neither file shows them.
    let live = all_bytes(&path);
    assert!(live.len() > 8 * 1024);
    assert!(!contains(&live, MARKER.as_bytes()));
    // Closing the last connection checkpoints the WAL into the main file.
    runtime.block_on(agent.close()).unwrap();
    drop(agent);
    let closed = all_bytes(&path);
    assert!(
        !contains(&closed, MARKER.as_bytes()),
        "no key or value in plaintext"
    );
    assert!(
        !contains(&closed, b"SQLite format 3"),
        "not even the header"
    );
    assert!(
        !contains(&closed, &[0x42; 32]),
        "the key itself is not stored"
    );
    assert!(!contains(&closed, b"4242424242424242"), "nor its hex form");
}

#[test]
fn a_wrong_key_is_a_typed_error_and_the_file_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let agent = open(&path, Some(key(1)), &runtime).unwrap();
    let ids = write_marked(&agent, 10);
    runtime.block_on(agent.close()).unwrap();
    drop(agent);
    let before = hash(&path);

    for wrong in [Some(key(2)), None] {
        let err = open(&path, wrong, &runtime).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Store(StoreError::WrongKey { .. } | StoreError::KeyRequired { .. })
            ),
            "{err}"
        );
        assert!(!err.is_retryable(), "{err}");
        assert_eq!(hash(&path), before, "the file is byte-for-byte untouched");
    }

    // The failed opens released the file, and the right key reads everything.
    let agent = open(&path, Some(key(1)), &runtime).unwrap();
    let (values, payloads) = read_back(&agent, 10, &ids);
    assert!(values.iter().chain(&payloads).all(Option::is_some));
}

#[test]
fn rekey_round_trip_through_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let agent = open(&path, Some(key(1)), &runtime).unwrap();
    let ids = write_marked(&agent, 25);
    let before = read_back(&agent, 25, &ids);
    assert!(before.0.iter().chain(&before.1).all(Option::is_some));
    agent.rekey(&key(2)).unwrap();
    // The open agent goes on reading and writing under the new key.
    assert_eq!(read_back(&agent, 25, &ids), before);
    agent
        .enqueue(Namespace::UserCache, "after", Op::Put, b"x", Tier::Critical)
        .unwrap();
    runtime.block_on(agent.close()).unwrap();
    drop(agent);

    let err = open(&path, Some(key(1)), &runtime).unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::WrongKey { .. })),
        "the old key is refused: {err}"
    );
    let agent = open(&path, Some(key(2)), &runtime).unwrap();
    assert_eq!(read_back(&agent, 25, &ids), before);
    assert_eq!(agent.outbox().stats().unwrap().depth(), 26);
    assert!(!contains(&all_bytes(&path), MARKER.as_bytes()));

    // A plaintext agent has no key to change.
    let plain = open(&dir.path().join("plain.db"), None, &runtime).unwrap();
    let err = plain.rekey(&key(3)).unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::NotEncrypted { .. })),
        "{err}"
    );
}

#[test]
fn a_plaintext_database_is_encrypted_on_request_only_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let agent = open(&path, None, &runtime).unwrap();
    let n = 60;
    let ids = write_marked(&agent, n);
    let before = read_back(&agent, n, &ids);
    assert!(before.0.iter().chain(&before.1).all(Option::is_some));

    // Not while an agent holds the file.
    let err = Store::encrypt_plaintext(&path, &key(1)).unwrap_err();
    assert!(matches!(err, StoreError::AlreadyOpen { .. }), "{err}");
    runtime.block_on(agent.close()).unwrap();
    drop(agent);
    assert!(contains(&all_bytes(&path), MARKER.as_bytes()));

    // Opening with a key never converts by itself.
    let plaintext = hash(&path);
    let err = open(&path, Some(key(1)), &runtime).unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::NotEncrypted { .. })),
        "{err}"
    );
    assert_eq!(hash(&path), plaintext);

    Store::encrypt_plaintext(&path, &key(1)).unwrap();
    assert!(!contains(&all_bytes(&path), MARKER.as_bytes()));
    let agent = open(&path, Some(key(1)), &runtime).unwrap();
    assert_eq!(
        read_back(&agent, n, &ids),
        before,
        "every cache entry and outbox item"
    );
    // The queue carries on: new items join the migrated ones.
    agent
        .enqueue(Namespace::UserCache, "next", Op::Put, b"x", Tier::Critical)
        .unwrap();
    assert_eq!(agent.outbox().stats().unwrap().depth(), n as u64 + 1);
}
