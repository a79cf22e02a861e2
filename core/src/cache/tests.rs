//! Cache tests on real SQLite files in temporary directories; time moves only through a
//! `ManualClock`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kryonix_protocol::{DeviceClass, NetworkClass, TenantId};
use proptest::prelude::*;
use tempfile::TempDir;

use super::access::MAX_PENDING_ACCESSES;
use super::codec::tests::{noise, text};
use super::*;
use crate::clock::ManualClock;
use crate::store::StoreOptions;
use crate::watch::Cause;

const T0: Millis = 1_700_000_000_000;
const SEC: Duration = Duration::from_secs(1);

/// full_key, value, expires_at, last_access, access_count.
type RowImage = (String, Vec<u8>, Option<i64>, i64, i64);

struct Harness {
    dir: TempDir,
    clock: ManualClock,
    store: Arc<Store>,
    cache: Cache,
}

impl Harness {
    fn new(config: CacheConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let (store, cache) = open(&dir.path().join("kryonix.db"), &clock, config);
        Self {
            dir,
            clock,
            store,
            cache,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("kryonix.db")
    }

    /// Closes the cache and its store and opens the same file again with `config`.
    fn reopen(self, config: CacheConfig) -> Self {
        let path = self.path();
        let Self {
            dir,
            clock,
            store,
            cache,
        } = self;
        drop(cache);
        drop(store);
        let (store, cache) = open(&path, &clock, config);
        Self {
            dir,
            clock,
            store,
            cache,
        }
    }

    fn rows(&self) -> i64 {
        self.store
            .read(|c| {
                c.query_row("SELECT count(*) FROM cache_entries", [], |r| r.get(0))
                    .map_err(StoreError::from)
            })
            .unwrap()
    }

    /// Every row of the cache table, for "nothing changed" checks.
    fn snapshot(&self) -> Vec<RowImage> {
        self.store
            .read(|c| -> Result<_, StoreError> {
                let mut stmt = c.prepare(
                    "SELECT full_key, value, expires_at, last_access, access_count \
                     FROM cache_entries ORDER BY full_key",
                )?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .unwrap()
    }

    fn column(&self, key: &TenantKey, column: &str) -> Option<i64> {
        self.store
            .read(|c| -> Result<_, StoreError> {
                Ok(c.query_row(
                    &format!("SELECT {column} FROM cache_entries WHERE full_key = ?1"),
                    [key.as_str()],
                    |r| r.get::<_, Option<i64>>(0),
                )
                .optional()?
                .flatten())
            })
            .unwrap()
    }

    /// The in-memory ledger equals what the table holds.
    fn assert_ledger_matches_db(&self) {
        let mut from_db = [Usage::default(); NS_COUNT];
        self.store
            .read(|c| -> Result<(), StoreError> {
                let mut stmt = c.prepare(USAGE_SQL)?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    let ns: usize = r.get::<_, i64>(0)? as usize;
                    from_db[ns] = Usage {
                        entries: r.get::<_, i64>(1)? as u64,
                        charged: r.get::<_, i64>(2)? as u64,
                        raw: r.get::<_, i64>(3)? as u64,
                        stored: r.get::<_, i64>(4)? as u64,
                    };
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(*lock(&self.cache.ledger), from_db);
        // Each namespace's policy holds exactly the namespace's rows.
        let policies = lock(&self.cache.policies);
        let weights = policies.weights();
        for (ns, usage) in from_db.iter().enumerate() {
            assert_eq!(
                weights[ns], usage.charged,
                "policy weight of namespace {ns}"
            );
            assert_eq!(
                policies.len(ns) as u64,
                usage.entries,
                "policy rows of namespace {ns}"
            );
        }
    }
}

fn open(path: &Path, clock: &ManualClock, config: CacheConfig) -> (Arc<Store>, Cache) {
    let store = Arc::new(Store::open(path, &StoreOptions::default()).unwrap());
    let cache = Cache::open(store.clone(), Arc::new(clock.clone()), config).unwrap();
    (store, cache)
}

fn key(tenant: &str, ns: Namespace, k: &str) -> TenantKey {
    TenantKey::new(&TenantId::new(tenant).unwrap(), ns, k).unwrap()
}

fn acme(ns: Namespace, k: &str) -> TenantKey {
    key("acme", ns, k)
}

/// A device budget that gives `ns` exactly `bytes`.
fn budget_for(ns: Namespace, bytes: u64) -> CacheConfig {
    let device = Namespace::total_budget_bytes() * bytes / ns.info().budget_bytes;
    assert_eq!(ns.scaled_budget(device), bytes);
    CacheConfig {
        device_budget_bytes: device,
        ..CacheConfig::default()
    }
}

/// `config` with the namespace table's plain policies instead of the adaptive one.
fn table(config: CacheConfig) -> CacheConfig {
    CacheConfig {
        eviction: Eviction::Table,
        ..config
    }
}

fn profile(device: DeviceClass, class: NetworkClass) -> DeviceProfile {
    DeviceProfile::new(device, class)
}

/// 600 bytes that stay uncompressed: three fit a 2048-byte budget with their keys, four do not.
fn value(tag: u8) -> Vec<u8> {
    vec![tag; 600]
}

fn present(h: &Harness, ns: Namespace, keys: &str) -> String {
    keys.chars()
        .filter(|c| h.cache.contains(&acme(ns, &c.to_string())).unwrap())
        .collect()
}

/// Puts `a`, `b`, `c` one second apart with the given expiries.
fn fill(h: &Harness, ns: Namespace, expiries: [Expiry; 3]) {
    for (name, expiry) in ["a", "b", "c"].into_iter().zip(expiries) {
        h.cache
            .put(&acme(ns, name), &value(name.as_bytes()[0]), expiry)
            .unwrap();
        h.clock.advance(SEC);
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn allkeys_lru_evicts_the_least_recently_used() {
    let ns = Namespace::Sessions;
    let h = Harness::new(table(budget_for(ns, 2048)));
    fill(&h, ns, [Expiry::Never; 3]);
    // Read `a`: the hit is only in memory until the next write, which must see it.
    assert!(h.cache.get(&acme(ns, "a")).unwrap().is_some());
    assert_eq!(h.column(&acme(ns, "a"), "access_count"), Some(0));
    h.clock.advance(SEC);
    h.cache
        .put(&acme(ns, "d"), &value(b'd'), Expiry::Never)
        .unwrap();
    assert_eq!(present(&h, ns, "abcd"), "acd");
    h.clock.advance(SEC);
    h.cache
        .put(&acme(ns, "e"), &value(b'e'), Expiry::Never)
        .unwrap();
    assert_eq!(present(&h, ns, "abcde"), "ade");
    let stats = h.cache.stats();
    assert_eq!(stats.evictions, 2);
    assert_eq!(stats.namespaces[ns.id() as usize].evictions, 2);
    assert_eq!(stats.expirations, 0);
    assert!(stats.namespaces[ns.id() as usize].used_bytes <= 2048);
    h.assert_ledger_matches_db();
}

#[test]
fn allkeys_lfu_evicts_the_least_frequently_used_then_the_least_recent() {
    let ns = Namespace::ApiCache;
    let h = Harness::new(table(budget_for(ns, 2048)));
    fill(&h, ns, [Expiry::Never; 3]);
    h.cache.get(&acme(ns, "a")).unwrap();
    h.clock.advance(SEC);
    h.cache.get(&acme(ns, "b")).unwrap();
    h.clock.advance(SEC);
    // c was never read: it goes, although it is the most recent.
    h.cache
        .put(&acme(ns, "d"), &value(b'd'), Expiry::Never)
        .unwrap();
    assert_eq!(present(&h, ns, "abcd"), "abd");
    h.clock.advance(SEC);
    h.cache.get(&acme(ns, "d")).unwrap();
    h.clock.advance(SEC);
    // a, b and d were each read once: the tie goes to the least recently read, a.
    h.cache
        .put(&acme(ns, "e"), &value(b'e'), Expiry::Never)
        .unwrap();
    assert_eq!(present(&h, ns, "abcde"), "bde");
    assert_eq!(h.cache.stats().evictions, 2);
    h.assert_ledger_matches_db();
}

#[test]
fn volatile_lru_evicts_the_least_recent_entry_with_a_ttl() {
    let ns = Namespace::RealtimeData;
    let h = Harness::new(budget_for(ns, 2048));
    fill(
        &h,
        ns,
        [Expiry::Never, Expiry::After(HOUR), Expiry::After(HOUR)],
    );
    h.cache.get(&acme(ns, "b")).unwrap();
    h.clock.advance(SEC);
    // a is the least recent but has no TTL; c is the least recent among the rest.
    h.cache
        .put(&acme(ns, "d"), &value(b'd'), Expiry::After(HOUR))
        .unwrap();
    assert_eq!(present(&h, ns, "abcd"), "abd");
    assert_eq!(h.cache.stats().evictions, 1);
    h.assert_ledger_matches_db();
}

#[test]
fn volatile_ttl_evicts_the_entry_closest_to_expiry() {
    let ns = Namespace::AuthTokens;
    let h = Harness::new(budget_for(ns, 2048));
    fill(
        &h,
        ns,
        [
            Expiry::Never,
            Expiry::After(Duration::from_secs(600)),
            Expiry::After(Duration::from_secs(300)),
        ],
    );
    h.cache
        .put(&acme(ns, "d"), &value(b'd'), Expiry::After(HOUR))
        .unwrap();
    assert_eq!(present(&h, ns, "abcd"), "abd");
    h.assert_ledger_matches_db();
}

#[test]
fn volatile_policies_refuse_when_no_entry_has_a_ttl() {
    for ns in [Namespace::RealtimeData, Namespace::AuthTokens] {
        let h = Harness::new(budget_for(ns, 2048));
        fill(&h, ns, [Expiry::Never; 3]);
        let before = h.snapshot();
        let err = h
            .cache
            .put(&acme(ns, "d"), &value(b'd'), Expiry::After(HOUR))
            .unwrap_err();
        assert!(
            matches!(err, CacheError::NamespaceFull { namespace, policy, budget: 2048, .. }
                if namespace == ns && policy == ns.eviction()),
            "{ns}: {err}"
        );
        assert_eq!(h.snapshot(), before, "{ns}");
        assert_eq!(h.cache.stats().evictions, 0);
        h.assert_ledger_matches_db();
    }
}

#[test]
fn noeviction_refuses_and_leaves_the_namespace_unchanged() {
    let ns = Namespace::MobileSync;
    let h = Harness::new(budget_for(ns, 2048));
    fill(&h, ns, [Expiry::Never, Expiry::Never, Expiry::After(HOUR)]);
    // A hit recorded before the refused put must survive the rollback.
    h.cache.get(&acme(ns, "a")).unwrap();
    let before = h.snapshot();
    let ledger_before = *lock(&h.cache.ledger);
    let err = h
        .cache
        .put(&acme(ns, "d"), &value(b'd'), Expiry::Never)
        .unwrap_err();
    match &err {
        CacheError::NamespaceFull {
            namespace,
            policy,
            used,
            needed,
            budget,
        } => {
            assert_eq!(*namespace, ns);
            assert_eq!(*policy, EvictionPolicy::Noeviction);
            assert_eq!(*used, 3 * 625);
            assert_eq!(*needed, 625);
            assert_eq!(*budget, 2048);
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("mobile_sync is full"), "{err}");
    assert_eq!(h.snapshot(), before);
    assert_eq!(*lock(&h.cache.ledger), ledger_before);
    h.cache.flush_access_stats().unwrap();
    assert_eq!(h.column(&acme(ns, "a"), "access_count"), Some(1));

    // Once c has expired it is reclaimed, which is not an eviction.
    h.clock.advance(2 * HOUR);
    h.cache
        .put(&acme(ns, "d"), &value(b'd'), Expiry::Never)
        .unwrap();
    assert_eq!(present(&h, ns, "abcd"), "abd");
    let stats = h.cache.stats();
    assert_eq!((stats.evictions, stats.expirations), (0, 1));
    h.assert_ledger_matches_db();
}

#[test]
fn expired_entries_are_reclaimed_before_live_victims() {
    let ns = Namespace::Sessions;
    let h = Harness::new(budget_for(ns, 2048));
    // c is the most recent, so LRU alone would pick a; but c has expired.
    fill(
        &h,
        ns,
        [
            Expiry::Never,
            Expiry::Never,
            Expiry::After(Duration::from_secs(60)),
        ],
    );
    h.clock.advance(Duration::from_secs(120));
    h.cache
        .put(&acme(ns, "d"), &value(b'd'), Expiry::Never)
        .unwrap();
    assert_eq!(present(&h, ns, "abcd"), "abd");
    let stats = h.cache.stats();
    assert_eq!((stats.evictions, stats.expirations), (0, 1));
    h.assert_ledger_matches_db();
}

#[test]
fn overwriting_reuses_the_entry_s_own_bytes() {
    let ns = Namespace::Sessions;
    let h = Harness::new(budget_for(ns, 2048));
    fill(&h, ns, [Expiry::Never; 3]);
    h.cache
        .put(&acme(ns, "a"), &value(b'z'), Expiry::Never)
        .unwrap();
    assert_eq!(present(&h, ns, "abc"), "abc");
    assert_eq!(h.cache.get(&acme(ns, "a")).unwrap(), Some(value(b'z')));
    assert_eq!(h.cache.stats().evictions, 0);
    h.assert_ledger_matches_db();
}

#[test]
fn a_value_that_can_never_fit_is_refused() {
    let ns = Namespace::Sessions;
    let h = Harness::new(budget_for(ns, 2048));
    fill(&h, ns, [Expiry::Never; 3]);
    let before = h.snapshot();
    let err = h
        .cache
        .put(&acme(ns, "big"), &noise(2100, 1), Expiry::Never)
        .unwrap_err();
    assert!(
        matches!(
            err,
            CacheError::ExceedsNamespaceBudget {
                charged: 2124,
                budget: 2048,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(h.snapshot(), before);
}

#[test]
fn ttl_expires_on_read_with_the_manual_clock() {
    let h = Harness::new(CacheConfig::default());
    let k = acme(Namespace::UserCache, "profile");
    let forever = acme(Namespace::UserCache, "forever");
    h.cache
        .put(&k, b"v", Expiry::After(Duration::from_secs(60)))
        .unwrap();
    h.cache.put(&forever, b"f", Expiry::Never).unwrap();
    assert_eq!(h.column(&k, "expires_at"), Some(T0 + 60_000));
    assert_eq!(h.column(&forever, "expires_at"), None);

    h.clock.advance(Duration::from_millis(59_999));
    let entry = h.cache.get_entry(&k).unwrap().unwrap();
    assert_eq!(entry.value, b"v");
    assert_eq!(entry.ttl, Some(Duration::from_millis(1)));
    assert!(h.cache.contains(&k).unwrap());

    h.clock.advance(Duration::from_millis(1));
    assert!(!h.cache.contains(&k).unwrap());
    assert_eq!(h.cache.get(&k).unwrap(), None);
    assert_eq!(h.rows(), 1, "the expired entry was removed on read");
    let stats = h.cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.expirations), (1, 1, 1));

    h.clock.advance(Duration::from_secs(10 * 365 * 24 * 3600));
    let entry = h.cache.get_entry(&forever).unwrap().unwrap();
    assert_eq!(entry.ttl, None);
    h.assert_ledger_matches_db();
}

#[test]
fn purge_is_incremental() {
    let h = Harness::new(CacheConfig::default());
    for i in 1..=5 {
        h.cache
            .put(
                &acme(Namespace::ApiCache, &format!("k{i}")),
                b"v",
                Expiry::After(i * SEC),
            )
            .unwrap();
    }
    h.cache
        .put(&acme(Namespace::ApiCache, "keep"), b"v", Expiry::Never)
        .unwrap();
    assert_eq!(h.cache.purge_expired(10).unwrap(), 0);
    h.clock.advance(Duration::from_millis(2_500));
    assert_eq!(h.cache.purge_expired(10).unwrap(), 2);
    h.clock.advance(Duration::from_secs(10));
    assert_eq!(h.cache.purge_expired(2).unwrap(), 2);
    assert_eq!(h.cache.purge_expired(2).unwrap(), 1);
    assert_eq!(h.cache.purge_expired(2).unwrap(), 0);
    assert_eq!(h.rows(), 1);
    assert_eq!(h.cache.stats().expirations, 5);
    h.assert_ledger_matches_db();
}

#[test]
fn adaptive_ttl_follows_the_profile() {
    use DeviceClass::*;
    use NetworkClass::*;
    let h = Harness::new(CacheConfig::default());
    let cases = [
        (profile(Phone, CellularSlow), 3600),
        (profile(Phone, Offline), 3600),
        (profile(Phone, CellularFast), 1800),
        (profile(Phone, Wifi), 1800),
        (profile(Tablet, CellularSlow), 1200),
        (profile(Tablet, Wifi), 1200),
        (profile(Desktop, Wifi), 900),
        (profile(Desktop, CellularSlow), 900),
    ];
    for (i, (p, secs)) in cases.into_iter().enumerate() {
        h.cache.set_profile(p);
        assert_eq!(h.cache.profile(), p);
        let k = acme(Namespace::UserCache, &format!("k{i}"));
        let now = h.clock.now_ms();
        h.cache.put(&k, b"v", Expiry::Adaptive).unwrap();
        assert_eq!(h.column(&k, "expires_at"), Some(now + secs * 1000), "{p}");
        let ttl = h.cache.get_entry(&k).unwrap().unwrap().ttl;
        assert_eq!(ttl, Some(Duration::from_secs(secs as u64)), "{p}");
        h.clock.advance(SEC);
    }
}

#[test]
fn namespaces_off_the_mobile_table_keep_their_own_ttl() {
    // Configuration, file metadata and backup status do not go stale faster on a fast network:
    // an adaptive put there takes the namespace table's TTL whatever the profile.
    let h = Harness::new(CacheConfig {
        profile: profile(DeviceClass::Desktop, NetworkClass::Wifi),
        ..CacheConfig::default()
    });
    for (ns, secs) in [
        (Namespace::TenantConfig, 2 * 3600),
        (Namespace::FileMetadata, 3600),
        (Namespace::BackupStatus, 24 * 3600),
        (Namespace::UserCache, 900),
        (Namespace::AiModels, 900),
    ] {
        let k = acme(ns, "k");
        let now = h.clock.now_ms();
        h.cache.put(&k, b"v", Expiry::Adaptive).unwrap();
        assert_eq!(h.column(&k, "expires_at"), Some(now + secs * 1000), "{ns}");
    }
}

#[test]
fn values_round_trip_through_compression() {
    for (device, compressed) in [
        (DeviceClass::Phone, Encoding::Gzip),
        (DeviceClass::Tablet, Encoding::Gzip),
        (DeviceClass::Desktop, Encoding::Lz4),
    ] {
        let h = Harness::new(CacheConfig {
            profile: profile(device, NetworkClass::Wifi),
            ..CacheConfig::default()
        });
        for len in [0, 1, 1023, 1024, 1025, 1026, 4096, 100_000, 1 << 20] {
            for (kind, v) in [("text", text(len)), ("noise", noise(len, len as u64))] {
                let k = acme(Namespace::ApiCache, &format!("{kind}-{len}"));
                h.cache.put(&k, &v, Expiry::Never).unwrap();
                let expected = if len > 1024 && kind == "text" {
                    compressed
                } else {
                    Encoding::Identity
                };
                let tag = h.column(&k, "encoding").unwrap();
                assert_eq!(tag, i64::from(expected.tag()), "{device:?} {kind} {len}");
                let entry = h.cache.get_entry(&k).unwrap().unwrap();
                assert_eq!(entry.encoding, expected);
                assert!(entry.value == v, "{device:?} {kind} {len}: not bit-exact");
                assert_eq!(h.cache.get_many(&[k]).unwrap(), vec![Some(v)]);
            }
        }
        // Half the values are noise and stay as they are; the text halves shrink a lot.
        let stats = h.cache.stats();
        assert!(stats.stored_bytes < stats.raw_bytes * 3 / 4, "{device:?}");
        h.assert_ledger_matches_db();
    }
}

#[test]
fn a_corrupt_stored_value_is_a_typed_error() {
    let h = Harness::new(CacheConfig::default());
    let k = acme(Namespace::ApiCache, "k");
    h.cache.put(&k, &text(5000), Expiry::Never).unwrap();
    h.store
        .write(|tx| {
            tx.execute("UPDATE cache_entries SET value = x'00010203'", [])
                .map_err(StoreError::from)
        })
        .unwrap();
    let err = h.cache.get(&k).unwrap_err();
    assert!(
        matches!(err, CacheError::Codec(CodecError::Corrupt { .. })),
        "{err}"
    );
    h.store
        .write(|tx| {
            tx.execute("PRAGMA ignore_check_constraints = 1", [])?;
            tx.execute("UPDATE cache_entries SET encoding = 7", [])
                .map_err(StoreError::from)
        })
        .unwrap();
    let err = h.cache.get(&k).unwrap_err();
    assert!(
        matches!(err, CacheError::Codec(CodecError::UnknownEncoding(7))),
        "{err}"
    );
}

#[test]
fn get_many_keeps_order_and_reports_misses() {
    let h = Harness::new(CacheConfig::default());
    let ns = Namespace::SearchCache;
    let (a, b, c, gone) = (
        acme(ns, "a"),
        acme(ns, "b"),
        acme(ns, "c"),
        acme(ns, "gone"),
    );
    h.cache.put(&a, b"A", Expiry::Never).unwrap();
    h.cache.put(&c, &text(3000), Expiry::Never).unwrap();
    h.cache.put(&gone, b"G", Expiry::After(SEC)).unwrap();
    h.clock.advance(2 * SEC);
    let got = h
        .cache
        .get_many(&[c.clone(), b.clone(), a.clone(), gone.clone(), c.clone()])
        .unwrap();
    assert_eq!(
        got,
        vec![
            Some(text(3000)),
            None,
            Some(b"A".to_vec()),
            None,
            Some(text(3000))
        ]
    );
    assert_eq!(
        h.cache.get_many(&[]).unwrap(),
        Vec::<Option<Vec<u8>>>::new()
    );
    let stats = h.cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.expirations), (3, 2, 1));
    assert_eq!(h.rows(), 2, "the expired entry was removed");
    h.assert_ledger_matches_db();
}

#[test]
fn tenants_are_isolated() {
    let h = Harness::new(CacheConfig::default());
    let ns = Namespace::UserCache;
    let (mine, theirs) = (key("acme", ns, "user:1"), key("globex", ns, "user:1"));
    h.cache.put(&mine, b"acme's", Expiry::Never).unwrap();
    assert_eq!(h.cache.get(&theirs).unwrap(), None);
    h.cache.put(&theirs, b"globex's", Expiry::Never).unwrap();
    assert_eq!(h.cache.get(&mine).unwrap().unwrap(), b"acme's");
    assert_eq!(h.cache.get(&theirs).unwrap().unwrap(), b"globex's");
    assert!(h.cache.delete(&theirs).unwrap());
    assert!(!h.cache.delete(&theirs).unwrap());
    assert_eq!(h.cache.get(&mine).unwrap().unwrap(), b"acme's");
    assert_eq!(h.column(&mine, "length(tenant)"), Some(4));
    h.assert_ledger_matches_db();
}

#[test]
fn invalid_input_is_a_typed_error_and_writes_nothing() {
    let h = Harness::new(CacheConfig {
        max_value_bytes: 1000,
        ..CacheConfig::default()
    });
    for (tenant, ns, k) in [
        ("", "sessions", "k"),
        ("a:b", "sessions", "k"),
        ("acme", "nope", "k"),
        ("acme", "sessions", ""),
        ("acme", "sessions", "bad\u{1}key"),
        ("acme", "sessions", &"k".repeat(300)),
    ] {
        let err = Cache::key(tenant, ns, k).unwrap_err();
        assert!(matches!(err, CacheError::InvalidKey(_)), "{err}");
    }
    let k = Cache::key("acme", "sessions", "ok").unwrap();
    let err = h.cache.put(&k, &[0; 1001], Expiry::Never).unwrap_err();
    assert!(
        matches!(
            err,
            CacheError::ValueTooLarge {
                size: 1001,
                max: 1000
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("at most 1000 bytes"), "{err}");
    let err = h
        .cache
        .put(&k, b"v", Expiry::After(Duration::ZERO))
        .unwrap_err();
    assert!(matches!(err, CacheError::InvalidTtl), "{err}");
    assert_eq!(h.rows(), 0);
    assert_eq!(h.cache.stats().entries, 0);
    // The limit itself is accepted.
    h.cache.put(&k, &[0; 1000], Expiry::Never).unwrap();
    assert_eq!(h.rows(), 1);
}

#[test]
fn usage_counters_survive_reopen() {
    let h = Harness::new(CacheConfig::default());
    for (i, ns) in Namespace::all().enumerate() {
        for j in 0..=i {
            h.cache
                .put(
                    &acme(ns, &format!("k{j}")),
                    &text(500 * (j + 1)),
                    Expiry::After(HOUR),
                )
                .unwrap();
        }
    }
    h.cache.delete(&acme(Namespace::AiModels, "k3")).unwrap();
    let before = h.cache.stats();
    assert_eq!(before.entries, 136 - 1);
    let path = h.path();
    let Harness {
        dir,
        clock,
        cache,
        store,
        ..
    } = h;
    drop(cache);
    drop(store);
    let (store, cache) = open(&path, &clock, CacheConfig::default());
    let h = Harness {
        dir,
        clock,
        store,
        cache,
    };
    let after = h.cache.stats();
    assert_eq!(after.namespaces, before.namespaces);
    assert_eq!(
        (after.raw_bytes, after.stored_bytes, after.entries),
        (before.raw_bytes, before.stored_bytes, before.entries)
    );
    h.assert_ledger_matches_db();
}

#[test]
fn stats_are_counted() {
    let h = Harness::new(CacheConfig::default());
    let ns = Namespace::TenantConfig;
    assert_eq!(h.cache.stats().hit_ratio, 0.0);
    h.cache
        .put(&acme(ns, "a"), &text(10_000), Expiry::Never)
        .unwrap();
    h.cache
        .put(&acme(ns, "b"), b"small", Expiry::Never)
        .unwrap();
    for _ in 0..3 {
        assert!(h.cache.get(&acme(ns, "a")).unwrap().is_some());
    }
    assert!(h.cache.get(&acme(ns, "x")).unwrap().is_none());
    assert!(h.cache.get(&acme(ns, "y")).unwrap().is_none());
    let stats = h.cache.stats();
    assert_eq!((stats.hits, stats.misses), (3, 2));
    assert!((stats.hit_ratio - 0.6).abs() < 1e-9);
    assert_eq!(stats.entries, 2);
    assert_eq!(stats.raw_bytes, 10_005);
    assert!(stats.stored_bytes < 1_000, "{}", stats.stored_bytes);
    let ns_stats = stats.namespaces[ns.id() as usize];
    assert_eq!(ns_stats.namespace, ns);
    assert_eq!(ns_stats.policy, EvictionPolicy::AllkeysLru);
    assert_eq!(ns_stats.budget_bytes, h.cache.budget(ns));
    assert_eq!(
        ns_stats.used_bytes,
        ns_stats.stored_bytes + 2 * acme(ns, "a").as_str().len() as u64
    );
    assert_eq!(stats.get_latency.count, 5);
    assert_eq!(stats.put_latency.count, 2);
    assert!(stats.get_latency.p50 <= stats.get_latency.p99);
    assert!(stats.get_latency.p99 <= stats.get_latency.max);
    assert!(stats.put_latency.p50 > Duration::ZERO);
}

#[test]
fn access_statistics_are_batched_until_the_next_write() {
    let h = Harness::new(CacheConfig::default());
    let k = acme(Namespace::UserCache, "k");
    h.cache.put(&k, b"v", Expiry::Never).unwrap();
    for _ in 0..3 {
        h.clock.advance(SEC);
        h.cache.get(&k).unwrap();
    }
    // contains neither counts nor touches.
    h.clock.advance(SEC);
    assert!(h.cache.contains(&k).unwrap());
    assert_eq!(h.column(&k, "access_count"), Some(0));
    assert_eq!(h.column(&k, "last_access"), Some(T0));
    h.cache.flush_access_stats().unwrap();
    assert_eq!(h.column(&k, "access_count"), Some(3));
    assert_eq!(h.column(&k, "last_access"), Some(T0 + 3_000));
    // An overwrite keeps the count and refreshes recency.
    h.cache.put(&k, b"w", Expiry::Never).unwrap();
    assert_eq!(h.column(&k, "access_count"), Some(3));
    assert_eq!(h.column(&k, "last_access"), Some(T0 + 4_000));
}

#[test]
fn reads_alone_flush_when_too_many_keys_are_pending() {
    let h = Harness::new(CacheConfig::default());
    let keys: Vec<_> = (0..MAX_PENDING_ACCESSES + 10)
        .map(|i| acme(Namespace::SearchCache, &format!("k{i}")))
        .collect();
    for k in &keys {
        h.cache.put(k, b"v", Expiry::Never).unwrap();
    }
    for k in &keys {
        h.cache.get(k).unwrap();
    }
    assert!(lock(&h.cache.accesses).len() < MAX_PENDING_ACCESSES);
    assert_eq!(h.column(&keys[0], "access_count"), Some(1));
}

#[test]
fn concurrent_use_keeps_the_ledger_exact() {
    let ns = Namespace::Sessions;
    let h = Arc::new(Harness::new(budget_for(ns, 8192)));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let h = h.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let k = acme(ns, &format!("t{t}-{}", i % 37));
                    match i % 5 {
                        0 => {
                            h.cache.delete(&k).unwrap();
                        }
                        1 | 2 => {
                            h.cache.get(&k).unwrap();
                        }
                        _ => h
                            .cache
                            .put(&k, &noise(300 + i, i as u64), Expiry::Never)
                            .unwrap(),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    h.assert_ledger_matches_db();
    let stats = h.cache.stats();
    assert!(stats.namespaces[ns.id() as usize].used_bytes <= 8192);
    assert!(stats.evictions > 0);
}

#[derive(Debug, Clone)]
enum Op {
    Put(usize, Vec<u8>),
    Delete(usize),
    Get(usize),
    Contains(usize),
    GetMany(Vec<usize>),
}

const MODEL_KEYS: usize = 12;

fn model_key(i: usize) -> TenantKey {
    let tenant = ["acme", "globex"][i % 2];
    let ns = [
        Namespace::Sessions,
        Namespace::MobileSync,
        Namespace::RealtimeData,
    ][i / 2 % 3];
    key(tenant, ns, &format!("key:{}", i / 6))
}

fn op() -> impl Strategy<Value = Op> {
    let value = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        (1000usize..3000).prop_map(text),
        (1000usize..1500, any::<u64>()).prop_map(|(len, seed)| noise(len, seed)),
    ];
    prop_oneof![
        3 => (0..MODEL_KEYS, value).prop_map(|(k, v)| Op::Put(k, v)),
        1 => (0..MODEL_KEYS).prop_map(Op::Delete),
        3 => (0..MODEL_KEYS).prop_map(Op::Get),
        1 => (0..MODEL_KEYS).prop_map(Op::Contains),
        1 => proptest::collection::vec(0..MODEL_KEYS, 0..5).prop_map(Op::GetMany),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn behaves_like_a_hash_map(ops in proptest::collection::vec(op(), 1..60), desktop in any::<bool>()) {
        let h = Harness::new(CacheConfig {
            profile: profile(if desktop { DeviceClass::Desktop } else { DeviceClass::Phone }, NetworkClass::Wifi),
            ..CacheConfig::default()
        });
        let mut model: HashMap<usize, Vec<u8>> = HashMap::new();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    h.cache.put(&model_key(k), &v, Expiry::Never).unwrap();
                    model.insert(k, v);
                }
                Op::Delete(k) => {
                    let removed = h.cache.delete(&model_key(k)).unwrap();
                    prop_assert_eq!(removed, model.remove(&k).is_some());
                }
                Op::Get(k) => {
                    prop_assert_eq!(h.cache.get(&model_key(k)).unwrap(), model.get(&k).cloned());
                }
                Op::Contains(k) => {
                    prop_assert_eq!(h.cache.contains(&model_key(k)).unwrap(), model.contains_key(&k));
                }
                Op::GetMany(ks) => {
                    let keys: Vec<_> = ks.iter().map(|&k| model_key(k)).collect();
                    let expected: Vec<_> = ks.iter().map(|k| model.get(k).cloned()).collect();
                    prop_assert_eq!(h.cache.get_many(&keys).unwrap(), expected);
                }
            }
        }
        prop_assert_eq!(h.rows(), model.len() as i64);
        h.assert_ledger_matches_db();
        let stats = h.cache.stats();
        prop_assert_eq!(stats.evictions + stats.expirations, 0);
        prop_assert_eq!(stats.raw_bytes, model.values().map(|v| v.len() as u64).sum::<u64>());
    }
}

/// The TTL rule under wall-clock jumps (docs/adr/0008-tier-freshness-and-the-wall-clock.md):
/// forward, entries past their expiry read as misses at once, but nothing reclaims them in one
/// unbounded sweep — reads, bounded purge steps and eviction do, a little at a time.
#[test]
fn a_clock_set_forward_expires_by_the_wall_clock_and_reclaims_in_bounded_steps() {
    let h = Harness::new(CacheConfig::default());
    for i in 0..300 {
        h.cache
            .put(
                &acme(Namespace::ApiCache, &format!("k{i}")),
                b"v",
                Expiry::After(3_600 * SEC),
            )
            .unwrap();
    }
    let kept = acme(Namespace::ApiCache, "kept");
    h.cache.put(&kept, b"v", Expiry::Never).unwrap();
    h.clock.advance(Duration::from_secs(86_400));
    assert_eq!(h.cache.get(&acme(Namespace::ApiCache, "k7")).unwrap(), None);
    assert_eq!(h.rows(), 300, "a read removes only what it read");
    assert_eq!(h.cache.purge_expired(100).unwrap(), 100);
    assert_eq!(h.rows(), 200);
    // A write does not sweep the rest either.
    h.cache
        .put(&acme(Namespace::ApiCache, "new"), b"v", Expiry::After(SEC))
        .unwrap();
    assert_eq!(h.rows(), 201);
    assert_eq!(h.cache.get(&kept).unwrap().as_deref(), Some(&b"v"[..]));
    h.assert_ledger_matches_db();
}

/// Backward, an entry lives longer by at most the jump: its expiry is a wall-clock instant.
#[test]
fn a_clock_set_back_lengthens_a_ttl_by_at_most_the_jump() {
    let h = Harness::new(CacheConfig::default());
    let k = acme(Namespace::ApiCache, "k");
    h.cache.put(&k, b"v", Expiry::After(300 * SEC)).unwrap();
    h.clock.set(T0 - 86_400_000);
    let ttl = h.cache.get_entry(&k).unwrap().unwrap().ttl.unwrap();
    assert_eq!(ttl, Duration::from_secs(86_400 + 300));
    h.clock.set(T0 + 300_000);
    assert_eq!(h.cache.get(&k).unwrap(), None);
}

/// Puts `count` keys `{prefix}{i}` of 600 bytes in `ns`, one millisecond apart.
fn put_many(h: &Harness, ns: Namespace, prefix: &str, count: usize) {
    for i in 0..count {
        h.cache
            .put(
                &acme(ns, &format!("{prefix}{i}")),
                &value(b'v'),
                Expiry::Never,
            )
            .unwrap();
        h.clock.advance(Duration::from_millis(1));
    }
}

/// Reads `count` keys `{prefix}{i}` of `ns` `times` times each, flushing the hits.
fn read_many(h: &Harness, ns: Namespace, prefix: &str, count: usize, times: usize) {
    for _ in 0..times {
        for i in 0..count {
            assert!(
                h.cache
                    .get(&acme(ns, &format!("{prefix}{i}")))
                    .unwrap()
                    .is_some()
            );
            h.clock.advance(Duration::from_millis(1));
        }
    }
    h.cache.flush_access_stats().unwrap();
}

fn resident(h: &Harness, ns: Namespace, prefix: &str, count: usize) -> usize {
    (0..count)
        .filter(|i| {
            h.cache
                .contains(&acme(ns, &format!("{prefix}{i}")))
                .unwrap()
        })
        .count()
}

/// Room for 40 values of 600 bytes with their keys in `Sessions` (an `allkeys-lru` namespace).
const FORTY: u64 = 40 * 640;

fn forty(eviction: Eviction) -> CacheConfig {
    CacheConfig {
        eviction,
        ..budget_for(Namespace::Sessions, FORTY)
    }
}

/// The adaptive policy is the default for the `allkeys-*` namespaces, and a scan of keys read
/// once does not flush the keys an app reads again and again — which it does under plain LRU.
#[test]
fn a_scan_does_not_flush_the_hot_set_through_the_adaptive_cache() {
    let ns = Namespace::Sessions;
    for (eviction, kept) in [(Eviction::Adaptive, true), (Eviction::Table, false)] {
        let h = Harness::new(forty(eviction));
        put_many(&h, ns, "hot", 20);
        read_many(&h, ns, "hot", 20, 4);
        put_many(&h, ns, "scan", 400);
        let hot = resident(&h, ns, "hot", 20);
        if kept {
            assert_eq!(hot, 20, "{eviction:?} keeps the hot set");
        } else {
            assert_eq!(hot, 0, "{eviction:?} flushes the hot set");
        }
        let stats = h.cache.stats();
        assert!(stats.namespaces[ns.id() as usize].used_bytes <= FORTY);
        assert!(stats.evictions >= 380);
        h.assert_ledger_matches_db();
    }
}

/// A put the admission filter turns away succeeds, reads as a miss, is counted as an eviction
/// and is told to watchers as one; written again and again, the key earns its place.
#[test]
fn a_declined_put_is_an_eviction_and_a_key_written_again_gets_in() {
    let ns = Namespace::Sessions;
    let h = Harness::new(forty(Eviction::Adaptive));
    put_many(&h, ns, "hot", 40);
    read_many(&h, ns, "hot", 40, 3);
    let newcomer = acme(ns, "newcomer");
    let mut watch = h.cache.watch_key(&newcomer).unwrap();
    let initial = watch.try_next().unwrap();
    assert_eq!(
        (initial[0].cause, initial[0].value.clone()),
        (Cause::Initial, None)
    );
    let evictions = h.cache.stats().evictions;
    h.cache.put(&newcomer, &value(b'n'), Expiry::Never).unwrap();
    assert_eq!(h.cache.get(&newcomer).unwrap(), None, "declined");
    assert_eq!(resident(&h, ns, "hot", 40), 40);
    assert_eq!(h.cache.stats().evictions, evictions + 1);
    let told = watch.try_next().unwrap();
    assert_eq!(told.len(), 1);
    assert_eq!(
        (told[0].cause, told[0].value.clone()),
        (Cause::Evicted, None)
    );
    let mut tries = 1;
    while h.cache.get(&newcomer).unwrap().is_none() {
        tries += 1;
        assert!(tries <= 16, "a key written again and again is admitted");
        h.clock.advance(SEC);
        h.cache.put(&newcomer, &value(b'n'), Expiry::Never).unwrap();
    }
    assert!(tries > 1);
    h.assert_ledger_matches_db();
}

/// `put_admitted` (what the agent's `write` uses) is never declined: the app reads its own
/// write at once, and the room comes from other entries.
#[test]
fn an_admitted_put_is_never_declined() {
    let ns = Namespace::Sessions;
    let h = Harness::new(forty(Eviction::Adaptive));
    put_many(&h, ns, "hot", 40);
    read_many(&h, ns, "hot", 40, 3);
    let declined = acme(ns, "declined");
    h.cache.put(&declined, &value(b'd'), Expiry::Never).unwrap();
    assert_eq!(h.cache.get(&declined).unwrap(), None);
    let evictions = h.cache.stats().evictions;
    let mine = acme(ns, "mine");
    h.cache
        .put_admitted(&mine, &value(b'm'), Expiry::Never)
        .unwrap();
    assert_eq!(h.cache.get(&mine).unwrap(), Some(value(b'm')));
    assert_eq!(resident(&h, ns, "hot", 40), 39, "one hot value made room");
    assert_eq!(h.cache.stats().evictions, evictions + 1);
    h.assert_ledger_matches_db();
}

/// Reopening builds each policy from the table: every row is known to its policy, and the
/// reads recorded before the restart still protect the hot set.
#[test]
fn reopening_rebuilds_the_policies_with_their_reads() {
    let ns = Namespace::Sessions;
    let h = Harness::new(forty(Eviction::Adaptive));
    put_many(&h, ns, "hot", 20);
    read_many(&h, ns, "hot", 20, 4);
    put_many(&h, ns, "cold", 20);
    let h = h.reopen(forty(Eviction::Adaptive));
    h.assert_ledger_matches_db();
    put_many(&h, ns, "scan", 400);
    assert_eq!(resident(&h, ns, "hot", 20), 20);
    h.assert_ledger_matches_db();
}

/// A smaller budget at the next open evicts down to it, by the namespace's policy.
#[test]
fn a_smaller_budget_at_open_evicts_down_to_it() {
    let ns = Namespace::Sessions;
    let h = Harness::new(forty(Eviction::Adaptive));
    put_many(&h, ns, "k", 40);
    let h = h.reopen(CacheConfig {
        eviction: Eviction::Adaptive,
        ..budget_for(ns, FORTY / 4)
    });
    let used = h.cache.stats().namespaces[ns.id() as usize].used_bytes;
    assert!(used <= FORTY / 4 && used > 0, "{used}");
    assert!(h.cache.stats().evictions >= 30);
    h.assert_ledger_matches_db();
}

/// On a slow or metered network a miss costs its bytes: the policies switch cost with the
/// profile, at the next write.
#[test]
fn the_network_decides_what_a_miss_costs() {
    use crate::policy::Cost;
    let h = Harness::new(forty(Eviction::Adaptive));
    assert_eq!(lock(&h.cache.policies).cost(), Cost::Count);
    h.cache
        .set_profile(profile(DeviceClass::Phone, NetworkClass::CellularSlow));
    h.cache.flush_access_stats().unwrap();
    assert_eq!(lock(&h.cache.policies).cost(), Cost::Bytes);
    let mut metered = profile(DeviceClass::Phone, NetworkClass::Wifi);
    metered.network.metered = true;
    h.cache.set_profile(metered);
    h.cache.flush_access_stats().unwrap();
    assert_eq!(lock(&h.cache.policies).cost(), Cost::Bytes);
    h.cache
        .set_profile(profile(DeviceClass::Phone, NetworkClass::Wifi));
    h.cache.flush_access_stats().unwrap();
    assert_eq!(lock(&h.cache.policies).cost(), Cost::Count);
}

/// With the byte cost, one large value written three times outweighs the small values written
/// once that it displaces (bytes saved per byte held); counted per fetch, the eight small values
/// it would displace are worth more than one large one, and it stays out.
#[test]
fn the_byte_cost_admits_a_large_value_the_count_cost_turns_away() {
    let ns = Namespace::Sessions;
    for (network, admitted) in [
        (NetworkClass::Wifi, false),
        (NetworkClass::CellularSlow, true),
    ] {
        let h = Harness::new(CacheConfig {
            profile: profile(DeviceClass::Phone, network),
            ..forty(Eviction::Adaptive)
        });
        put_many(&h, ns, "small", 40);
        let large = acme(ns, "large");
        // Turned away at first, the key's count grows with each write (the sketch remembers
        // it by the key, not the row).
        for _ in 0..3 {
            h.cache
                .put(&large, &noise(5_000, 7), Expiry::Never)
                .unwrap();
            h.clock.advance(SEC);
        }
        assert_eq!(h.cache.contains(&large).unwrap(), admitted, "{network:?}");
        h.assert_ledger_matches_db();
    }
}

/// A put refused by a volatile namespace rolls back, and the policy it had changed is rebuilt
/// from the table: it still matches the rows.
#[test]
fn a_refused_put_leaves_the_policy_matching_the_table() {
    let ns = Namespace::RealtimeData;
    assert_eq!(ns.eviction(), EvictionPolicy::VolatileLru);
    let h = Harness::new(budget_for(ns, 2048));
    h.cache
        .put(&acme(ns, "a"), &value(b'a'), Expiry::After(SEC))
        .unwrap();
    h.cache
        .put(&acme(ns, "b"), &value(b'b'), Expiry::Never)
        .unwrap();
    h.cache
        .put(&acme(ns, "c"), &value(b'c'), Expiry::Never)
        .unwrap();
    h.clock.advance(2 * SEC);
    // `a` expired and goes first, then nothing with a TTL is left for the rest.
    let big = noise(1_300, 3);
    assert!(matches!(
        h.cache.put(&acme(ns, "d"), &big, Expiry::Never),
        Err(CacheError::NamespaceFull { .. })
    ));
    assert!(lock(&h.cache.policies).any_stale());
    h.cache.flush_access_stats().unwrap();
    assert!(!lock(&h.cache.policies).any_stale());
    h.assert_ledger_matches_db();
    assert_eq!(h.rows(), 3);
}
