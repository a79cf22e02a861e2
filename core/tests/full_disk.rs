//! A full disk, for real: a database capped with `StoreOptions::max_size_bytes` (SQLite's
//! `max_page_count`, the same `SQLITE_FULL` a full disk gives) is filled by the cache and the
//! outbox. Writes that do not fit get `StoreError::Full` and change nothing; nothing queued is
//! lost or damaged; the cache evicts where its namespace's policy allows; and once space is
//! freed everything works again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly

use std::sync::Arc;
use std::time::Duration;

use kryonix_core::cache::{Cache, CacheConfig, CacheError, Expiry};
use kryonix_core::{
    ItemId, ManualClock, Outbox, OutboxConfig, OutboxError, Store, StoreError, StoreOptions,
    TierSet,
};
use kryonix_protocol::wire::Op;
use kryonix_protocol::{Namespace, TenantId, TenantKey, Tier};

const LIMIT: u64 = 512 * 1024;

/// Bytes that do not compress, so every value costs its size on disk.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn key(namespace: Namespace, k: &str) -> TenantKey {
    TenantKey::new(&TenantId::new("acme").unwrap(), namespace, k).unwrap()
}

struct Device {
    store: Arc<Store>,
    cache: Cache,
    outbox: Outbox,
}

fn open(path: &std::path::Path, limit: Option<u64>, key: Option<[u8; 32]>) -> Device {
    let clock = ManualClock::new(1_796_083_200_000);
    let options = StoreOptions {
        max_size_bytes: limit,
        key: key.map(|k| kryonix_core::EncryptionKey::try_from(&k[..]).unwrap()),
        ..StoreOptions::default()
    };
    let store = Arc::new(Store::open(path, &options).unwrap());
    let cache = Cache::open(
        store.clone(),
        Arc::new(clock.clone()),
        CacheConfig::default(),
    )
    .unwrap();
    let outbox = Outbox::open(
        store.clone(),
        Arc::new(clock),
        OutboxConfig::new(TenantId::new("acme").unwrap()),
    )
    .unwrap();
    Device {
        store,
        cache,
        outbox,
    }
}

fn integrity(store: &Store) -> String {
    store
        .read(|c| {
            c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
                .map_err(StoreError::from)
        })
        .unwrap()
}

#[test]
fn a_full_disk_refuses_writes_loses_nothing_and_recovers_when_space_is_freed() {
    full_disk(None);
}

/// The same with SQLCipher, whose pages carry a MAC and whose pragmas answer differently.
#[cfg(feature = "encryption")]
#[test]
fn an_encrypted_full_disk_behaves_the_same() {
    full_disk(Some([7; 32]));
}

fn full_disk(db_key: Option<[u8; 32]>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let device = open(&path, Some(LIMIT), db_key);

    // 100 KiB of evictable cache (allkeys-lru), then the outbox until the disk is full.
    for i in 0..50 {
        device
            .cache
            .put(
                &key(Namespace::UserCache, &format!("lru-{i}")),
                &noise(2048, i),
                Expiry::After(Duration::from_secs(3600)),
            )
            .unwrap();
    }
    let mut queued: Vec<(ItemId, Vec<u8>)> = Vec::new();
    let full = loop {
        let payload = noise(1024, 1000 + queued.len() as u64);
        match device.outbox.enqueue(
            Namespace::UserCache,
            &format!("item-{}", queued.len()),
            Op::Put,
            &payload,
            Tier::ALL[queued.len() % 4],
        ) {
            Ok(id) => queued.push((id, payload)),
            Err(e) => break e,
        }
        assert!(queued.len() < 10_000, "the limit never hit");
    };
    assert!(
        matches!(full, OutboxError::Store(StoreError::Full)),
        "{full:?}"
    );
    assert!(kryonix_core::Error::from(full).is_retryable());
    assert!(queued.len() > 100, "only {} items fitted", queued.len());
    let depth = device.outbox.stats().unwrap().depth();
    assert_eq!(
        depth,
        queued.len() as u64,
        "the refused enqueue wrote nothing"
    );

    // A value in a namespace that may not evict live entries (volatile-lru, entries without a
    // TTL) and with nothing expired anywhere: refused, nothing changed.
    for i in 0..3 {
        let pinned = device.cache.put(
            &key(Namespace::Geolocation, &format!("pinned-{i}")),
            &noise(8192, 77 + i),
            Expiry::Never,
        );
        if let Err(e) = pinned {
            assert!(matches!(e, CacheError::Store(StoreError::Full)), "{e:?}");
            break;
        }
        assert!(
            i < 2,
            "a namespace that cannot evict kept accepting writes on a full disk"
        );
    }

    // An evictable namespace makes room under its own policy and takes the value.
    let fresh = key(Namespace::UserCache, "fresh");
    device
        .cache
        .put(
            &fresh,
            &noise(4096, 9),
            Expiry::After(Duration::from_secs(60)),
        )
        .unwrap();
    assert_eq!(device.cache.get(&fresh).unwrap().unwrap(), noise(4096, 9));
    let survivors = (0..50)
        .filter(|i| {
            device
                .cache
                .contains(&key(Namespace::UserCache, &format!("lru-{i}")))
                .unwrap()
        })
        .count();
    assert!(survivors < 50, "nothing was evicted");

    // Nothing queued was lost or damaged.
    for (id, payload) in &queued {
        let (item, _) = device
            .outbox
            .get(*id)
            .unwrap()
            .expect("a queued item vanished");
        assert_eq!(&item.payload, payload);
    }
    assert_eq!(integrity(&device.store), "ok");

    // The server takes a batch: acknowledged items free their pages, and writes work again.
    let batch = device.outbox.next_batch(100, TierSet::ALL).unwrap();
    let sent: Vec<ItemId> = batch.iter().map(|i| i.id).collect();
    assert_eq!(device.outbox.ack(&sent).unwrap(), sent.len());
    for i in 0..20 {
        device
            .outbox
            .enqueue(
                Namespace::UserCache,
                &format!("after-{i}"),
                Op::Put,
                &noise(1024, 5000 + i),
                Tier::Critical,
            )
            .unwrap();
    }
    drop(device);

    // Reopened without the limit, the file holds everything it acknowledged.
    let device = open(&path, None, db_key);
    assert_eq!(integrity(&device.store), "ok");
    let depth = device.outbox.stats().unwrap().depth();
    assert_eq!(depth, (queued.len() - sent.len() + 20) as u64);
    for (id, payload) in queued.iter().filter(|(id, _)| !sent.contains(id)) {
        let (item, _) = device.outbox.get(*id).unwrap().unwrap();
        assert_eq!(&item.payload, payload);
    }
}
