//! Watch tests on a real cache (SQLite in a temporary directory) with a manual clock; waiting is
//! always bounded by a deadline, never a fixed sleep.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kryonix_protocol::wire::{Change as RemoteChange, Op};
use kryonix_protocol::{Encoding, Namespace, TenantId, TenantKey};
use tempfile::TempDir;

use super::{Cause, KeyChange, Watch};
use crate::cache::{Cache, CacheConfig, CacheError, Eviction, Expiry};
use crate::clock::ManualClock;
use crate::store::{Store, StoreOptions};

const T0: crate::clock::Millis = 1_700_000_000_000;
/// How long a test waits for a notice that must come.
const DEADLINE: Duration = Duration::from_secs(10);

struct Fx {
    _dir: TempDir,
    clock: ManualClock,
    cache: Arc<Cache>,
    tenant: TenantId,
}

fn fx(config: CacheConfig) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("db"), &StoreOptions::default()).unwrap());
    let clock = ManualClock::new(T0);
    let cache = Cache::open(store, Arc::new(clock.clone()), config).unwrap();
    Fx {
        _dir: dir,
        clock,
        cache: Arc::new(cache),
        tenant: TenantId::new("acme").unwrap(),
    }
}

impl Fx {
    fn key(&self, ns: Namespace, k: &str) -> TenantKey {
        TenantKey::new(&self.tenant, ns, k).unwrap()
    }

    fn put(&self, ns: Namespace, k: &str, v: &[u8]) {
        self.cache.put(&self.key(ns, k), v, Expiry::Never).unwrap();
    }

    fn pull(&self, id: &str, changes: &[(&str, Option<&[u8]>)]) {
        let page: Vec<RemoteChange> = changes
            .iter()
            .enumerate()
            .map(|(i, (k, v))| RemoteChange {
                id: format!("{id}-{i}"),
                namespace: "user_cache".into(),
                key: (*k).into(),
                op: if v.is_some() { Op::Put } else { Op::Delete },
                value: v.unwrap_or_default().to_vec(),
                encoding: Encoding::Identity,
                ttl_secs: None,
                published_at_ms: 0,
            })
            .collect();
        self.cache
            .apply_remote(&self.tenant, &page, "cursor", id)
            .unwrap();
    }
}

fn change(key: &str, value: Option<&[u8]>, cause: Cause) -> KeyChange {
    KeyChange {
        key: key.into(),
        value: value.map(Arc::from),
        cause,
    }
}

async fn next(watch: &mut Watch) -> Vec<KeyChange> {
    tokio::time::timeout(DEADLINE, watch.next())
        .await
        .expect("a notice within the deadline")
        .expect("the watch is live")
}

#[tokio::test]
async fn a_key_watch_sees_the_initial_value_then_each_change_in_order() {
    let f = fx(CacheConfig::default());
    let ns = Namespace::UserCache;
    let k = f.key(ns, "profile");
    f.put(ns, "profile", b"v0");
    let mut watch = f.cache.watch_key(&k).unwrap();
    assert_eq!(
        next(&mut watch).await,
        [change("profile", Some(b"v0"), Cause::Initial)]
    );

    f.put(ns, "profile", b"local");
    assert_eq!(
        next(&mut watch).await,
        [change("profile", Some(b"local"), Cause::Put)]
    );
    f.pull("c1", &[("profile", Some(b"pulled"))]);
    assert_eq!(
        next(&mut watch).await,
        [change("profile", Some(b"pulled"), Cause::Pulled)]
    );
    assert!(f.cache.delete(&k).unwrap());
    assert_eq!(
        next(&mut watch).await,
        [change("profile", None, Cause::Deleted)]
    );
    f.cache
        .put(&k, b"short", Expiry::After(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        next(&mut watch).await,
        [change("profile", Some(b"short"), Cause::Put)]
    );
    // Expired: a miss at once, told when a read notices it.
    f.clock.advance(Duration::from_secs(6));
    assert!(watch.try_next().is_none(), "nothing noticed it yet");
    assert_eq!(f.cache.get(&k).unwrap(), None);
    assert_eq!(
        next(&mut watch).await,
        [change("profile", None, Cause::Expired)]
    );
    // A pulled delete.
    f.put(ns, "profile", b"again");
    next(&mut watch).await;
    f.pull("c2", &[("profile", None)]);
    assert_eq!(
        next(&mut watch).await,
        [change("profile", None, Cause::Pulled)]
    );
    assert!(watch.try_next().is_none());
}

#[tokio::test]
async fn an_absent_key_starts_as_none_and_a_watch_of_an_empty_namespace_as_empty() {
    let f = fx(CacheConfig::default());
    let mut key = f
        .cache
        .watch_key(&f.key(Namespace::UserCache, "nobody"))
        .unwrap();
    assert_eq!(
        next(&mut key).await,
        [change("nobody", None, Cause::Initial)]
    );
    let mut all = f
        .cache
        .watch_prefix(&f.tenant, Namespace::UserCache, "")
        .unwrap();
    assert_eq!(next(&mut all).await, []);
    assert!(
        all.try_next().is_none(),
        "the empty initial state is told once"
    );
}

#[tokio::test]
async fn a_prefix_watch_sees_only_its_prefix() {
    let f = fx(CacheConfig::default());
    let ns = Namespace::UserCache;
    f.put(ns, "user:1:name", b"Ada");
    f.put(ns, "user:10:name", b"Bob");
    f.put(ns, "user:2:name", b"Cy");
    let mut watch = f.cache.watch_prefix(&f.tenant, ns, "user:1:").unwrap();
    assert_eq!(
        next(&mut watch).await,
        [change("user:1:name", Some(b"Ada"), Cause::Initial)]
    );

    // Outside the prefix: a longer number, another namespace, another tenant.
    f.put(ns, "user:10:mail", b"x");
    f.put(Namespace::ApiCache, "user:1:name", b"x");
    let other = TenantKey::new(&TenantId::new("other").unwrap(), ns, "user:1:name").unwrap();
    f.cache.put(&other, b"x", Expiry::Never).unwrap();
    f.put(ns, "user:1:mail", b"ada@example.com");
    assert_eq!(
        next(&mut watch).await,
        [change("user:1:mail", Some(b"ada@example.com"), Cause::Put)]
    );
    assert!(watch.try_next().is_none());

    // The whole namespace: every key of this tenant in it.
    let mut all = f.cache.watch_prefix(&f.tenant, ns, "").unwrap();
    let mut keys: Vec<String> = next(&mut all).await.into_iter().map(|c| c.key).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "user:10:mail",
            "user:10:name",
            "user:1:mail",
            "user:1:name",
            "user:2:name"
        ]
    );
    assert!(matches!(
        f.cache.watch_prefix(&f.tenant, ns, "bad\u{1}prefix"),
        Err(CacheError::InvalidKey(_))
    ));
}

#[tokio::test]
async fn a_pulled_page_is_one_batch_with_one_change_per_key() {
    let f = fx(CacheConfig::default());
    let mut watch = f
        .cache
        .watch_prefix(&f.tenant, Namespace::UserCache, "")
        .unwrap();
    assert_eq!(next(&mut watch).await, []);
    // 100 changes over 50 keys: each key written twice in the page.
    let values: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| (format!("k{}", i % 50), format!("v{i}").into_bytes()))
        .collect();
    let page: Vec<(&str, Option<&[u8]>)> = values
        .iter()
        .map(|(k, v)| (k.as_str(), Some(v.as_slice())))
        .collect();
    f.pull("page", &page);
    let batch = watch
        .try_next()
        .expect("told by the time apply_remote returns");
    assert_eq!(batch.len(), 50);
    for (i, c) in batch.iter().enumerate() {
        assert_eq!(c.key, format!("k{i}"));
        assert_eq!(c.value.as_deref(), Some(format!("v{}", i + 50).as_bytes()));
        assert_eq!(c.cause, Cause::Pulled);
    }
    assert!(watch.try_next().is_none(), "one batch");
}

#[test]
fn a_watcher_that_never_reads_holds_one_value_per_key_and_never_blocks_writes() {
    let f = fx(CacheConfig::default());
    let ns = Namespace::UserCache;
    let mut idle = f.cache.watch_prefix(&f.tenant, ns, "").unwrap();
    let mut idle_key = f.cache.watch_key(&f.key(ns, "k3")).unwrap();
    // Ten thousand writes over ten keys, on this thread: if a watcher could block a writer
    // this would never finish.
    for i in 0..10_000 {
        f.put(ns, &format!("k{}", i % 10), format!("v{i}").as_bytes());
    }
    let pending = idle.try_next().unwrap();
    assert_eq!(pending.len(), 10, "at most one pending change per key");
    for c in &pending {
        let n: usize = c.key[1..].parse().unwrap();
        assert_eq!(
            c.value.as_deref(),
            Some(format!("v{}", 9_990 + n).as_bytes())
        );
    }
    assert_eq!(
        idle_key.try_next().unwrap(),
        [change("k3", Some(b"v9993"), Cause::Put)]
    );
}

#[tokio::test]
async fn evictions_and_purged_expiries_are_told() {
    // user_cache (allkeys-lru) gets 2048 bytes: three 600-byte values fit, a fourth evicts
    // the least recently used under the table's plain LRU (what the adaptive policy would
    // choose is cache::tests' business).
    let ns = Namespace::UserCache;
    let device = Namespace::total_budget_bytes() * 2048 / ns.info().budget_bytes;
    let f = fx(CacheConfig {
        device_budget_bytes: device,
        eviction: Eviction::Table,
        ..CacheConfig::default()
    });
    for k in ["a", "b", "c"] {
        f.put(ns, k, &[b'x'; 600]);
        f.clock.advance(Duration::from_secs(1));
    }
    let mut watch = f.cache.watch_prefix(&f.tenant, ns, "").unwrap();
    assert_eq!(next(&mut watch).await.len(), 3);
    f.put(ns, "d", &[b'y'; 600]);
    assert_eq!(
        next(&mut watch).await,
        [
            change("a", None, Cause::Evicted),
            change("d", Some(&[b'y'; 600]), Cause::Put)
        ]
    );

    f.cache
        .put(
            &f.key(ns, "b"),
            b"brief",
            Expiry::After(Duration::from_secs(1)),
        )
        .unwrap();
    next(&mut watch).await;
    f.clock.advance(Duration::from_secs(2));
    assert_eq!(f.cache.purge_expired(10).unwrap(), 1);
    assert_eq!(next(&mut watch).await, [change("b", None, Cause::Expired)]);
}

#[tokio::test]
async fn a_refused_write_tells_nothing() {
    // mobile_sync is noeviction: once full, a put is refused and nothing it did is kept.
    let f = fx(CacheConfig {
        device_budget_bytes: 64 * 1024,
        ..CacheConfig::default()
    });
    let ns = Namespace::MobileSync;
    let mut watch = f.cache.watch_prefix(&f.tenant, ns, "").unwrap();
    next(&mut watch).await;
    let noise = |seed: u8| -> Vec<u8> {
        (0..2048u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> (seed % 7)) as u8 ^ seed)
            .collect()
    };
    let mut stored = 0;
    let refused = loop {
        match f.cache.put(
            &f.key(ns, &format!("k{stored}")),
            &noise(stored as u8),
            Expiry::Never,
        ) {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(refused, CacheError::NamespaceFull { .. }),
        "{refused:?}"
    );
    let told = watch.try_next().unwrap();
    assert_eq!(told.len(), stored, "only the stored values: {told:?}");
    assert!(watch.try_next().is_none());
}

#[tokio::test]
async fn dropping_or_cancelling_ends_a_watch() {
    let f = fx(CacheConfig::default());
    let k = f.key(Namespace::UserCache, "k");
    let dropped = f.cache.watch_key(&k).unwrap();
    let mut cancelled = f.cache.watch_key(&k).unwrap();
    assert_eq!(f.cache.watcher_count(), 2);
    drop(dropped);
    assert_eq!(f.cache.watcher_count(), 1);

    // Cancelled from elsewhere while its reader waits: the reader wakes with `None`.
    next(&mut cancelled).await;
    let canceller = cancelled.canceller();
    let reader = tokio::spawn(async move { cancelled.next().await });
    canceller.cancel();
    let ended = tokio::time::timeout(DEADLINE, reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended, None);
    assert_eq!(f.cache.watcher_count(), 0);
    canceller.cancel(); // twice is fine
    f.put(Namespace::UserCache, "k", b"unwatched");
}

#[tokio::test]
async fn closing_ends_every_watch_after_what_is_pending() {
    let f = fx(CacheConfig::default());
    let mut watch = f
        .cache
        .watch_key(&f.key(Namespace::UserCache, "k"))
        .unwrap();
    next(&mut watch).await;
    f.put(Namespace::UserCache, "k", b"last");
    f.cache.close_watches();
    assert_eq!(f.cache.watcher_count(), 0);
    assert_eq!(
        next(&mut watch).await,
        [change("k", Some(b"last"), Cause::Put)]
    );
    assert_eq!(watch.next().await, None);
    assert!(watch.is_ended());
    // A watch started after the close: its initial state, then the end.
    let mut late = f
        .cache
        .watch_key(&f.key(Namespace::UserCache, "k"))
        .unwrap();
    assert_eq!(f.cache.watcher_count(), 0);
    assert_eq!(
        next(&mut late).await,
        [change("k", Some(b"last"), Cause::Initial)]
    );
    assert_eq!(late.next().await, None);
}

#[test]
fn a_watch_started_during_writes_misses_no_commit() {
    // Whatever commits while the watch starts is either in its initial state or told after it:
    // the last value it holds is always the last value written.
    for round in 0..20 {
        let f = fx(CacheConfig::default());
        let ns = Namespace::UserCache;
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let cache = f.cache.clone();
            let key = f.key(ns, "k");
            let done = done.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    cache
                        .put(&key, format!("{i}").as_bytes(), Expiry::Never)
                        .unwrap();
                }
                done.store(true, Ordering::Release);
            })
        };
        let mut watch = if round % 2 == 0 {
            f.cache.watch_key(&f.key(ns, "k")).unwrap()
        } else {
            f.cache.watch_prefix(&f.tenant, ns, "").unwrap()
        };
        writer.join().unwrap();
        assert!(done.load(Ordering::Acquire));
        let mut last = None;
        while let Some(batch) = watch.try_next() {
            if let Some(c) = batch.into_iter().last() {
                last = c.value;
            }
        }
        assert_eq!(last.as_deref(), Some(&b"199"[..]), "round {round}");
    }
}
