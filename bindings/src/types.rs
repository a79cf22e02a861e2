//! FFI mirrors of core and protocol types: records and enums UniFFI can generate, each with a
//! `From` impl in the direction it crosses. Core types are never annotated for the FFI.

use std::time::Duration;

use kryonix_core::outbox::TierSet;
use kryonix_protocol as proto;

use crate::error::KryonixError;

/// A count or a size in bytes. Signed, so that apps compare it with plain literals: Kotlin
/// `Long`, Swift `Int` (bindings/uniffi.toml). Never negative coming out; a negative one going in
/// is `InvalidInput`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Count(pub i64);
uniffi::custom_newtype!(Count, i64);

impl Count {
    /// Saturates: no count of this library reaches `i64::MAX`.
    pub(crate) fn of(n: impl TryInto<i64>) -> Self {
        Self(n.try_into().unwrap_or(i64::MAX))
    }

    /// What the app passed, or `InvalidInput` naming `what` when it is negative.
    pub(crate) fn to_u64(self, what: &str) -> Result<u64, KryonixError> {
        u64::try_from(self.0).map_err(|_| KryonixError::InvalidInput {
            reason: format!("{what} must not be negative (got {})", self.0),
        })
    }
}

/// A span of time, whole milliseconds on the wire: Kotlin `kotlin.time.Duration`, Swift
/// `Duration` (bindings/uniffi.toml). A negative one going in is `InvalidInput`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub i64);
uniffi::custom_newtype!(Millis, i64);

impl Millis {
    pub(crate) fn to_duration(self, what: &str) -> Result<Duration, KryonixError> {
        u64::try_from(self.0)
            .map(Duration::from_millis)
            .map_err(|_| KryonixError::InvalidInput {
                reason: format!("{what} must not be negative (got {} ms)", self.0),
            })
    }
}

/// The sixteen namespaces (the protocol's table; ids equal the server's Redis databases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Namespace {
    Sessions,
    AuthTokens,
    UserCache,
    ApiCache,
    RateLimiting,
    RealtimeData,
    FileMetadata,
    SearchCache,
    TenantConfig,
    DeviceTrust,
    AiModels,
    MobileSync,
    Geolocation,
    AnalyticsTemp,
    BackupStatus,
    DistributedLocks,
}

impl Namespace {
    /// In declaration order, which is the order of the generated Kotlin `Namespace.entries`
    /// (`ordinal`) and of Swift's `allCases`: the direct entry points take that index.
    pub(crate) const ALL: [Self; 16] = [
        Self::Sessions,
        Self::AuthTokens,
        Self::UserCache,
        Self::ApiCache,
        Self::RateLimiting,
        Self::RealtimeData,
        Self::FileMetadata,
        Self::SearchCache,
        Self::TenantConfig,
        Self::DeviceTrust,
        Self::AiModels,
        Self::MobileSync,
        Self::Geolocation,
        Self::AnalyticsTemp,
        Self::BackupStatus,
        Self::DistributedLocks,
    ];
}

impl From<Namespace> for proto::Namespace {
    fn from(ns: Namespace) -> Self {
        use proto::Namespace as P;
        match ns {
            Namespace::Sessions => P::Sessions,
            Namespace::AuthTokens => P::AuthTokens,
            Namespace::UserCache => P::UserCache,
            Namespace::ApiCache => P::ApiCache,
            Namespace::RateLimiting => P::RateLimiting,
            Namespace::RealtimeData => P::RealtimeData,
            Namespace::FileMetadata => P::FileMetadata,
            Namespace::SearchCache => P::SearchCache,
            Namespace::TenantConfig => P::TenantConfig,
            Namespace::DeviceTrust => P::DeviceTrust,
            Namespace::AiModels => P::AiModels,
            Namespace::MobileSync => P::MobileSync,
            Namespace::Geolocation => P::Geolocation,
            Namespace::AnalyticsTemp => P::AnalyticsTemp,
            Namespace::BackupStatus => P::BackupStatus,
            Namespace::DistributedLocks => P::DistributedLocks,
        }
    }
}

impl From<proto::Namespace> for Namespace {
    fn from(ns: proto::Namespace) -> Self {
        use proto::Namespace as P;
        match ns {
            P::Sessions => Self::Sessions,
            P::AuthTokens => Self::AuthTokens,
            P::UserCache => Self::UserCache,
            P::ApiCache => Self::ApiCache,
            P::RateLimiting => Self::RateLimiting,
            P::RealtimeData => Self::RealtimeData,
            P::FileMetadata => Self::FileMetadata,
            P::SearchCache => Self::SearchCache,
            P::TenantConfig => Self::TenantConfig,
            P::DeviceTrust => Self::DeviceTrust,
            P::AiModels => Self::AiModels,
            P::MobileSync => Self::MobileSync,
            P::Geolocation => Self::Geolocation,
            P::AnalyticsTemp => Self::AnalyticsTemp,
            P::BackupStatus => Self::BackupStatus,
            P::DistributedLocks => Self::DistributedLocks,
        }
    }
}

/// Upload priority: critical data goes first and most often.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Tier {
    Critical,
    Preferences,
    Application,
    Background,
}

impl Tier {
    /// Declaration order (Kotlin `ordinal`), for the direct entry points.
    pub(crate) const ALL: [Self; 4] = [
        Self::Critical,
        Self::Preferences,
        Self::Application,
        Self::Background,
    ];
}

impl From<Tier> for proto::Tier {
    fn from(t: Tier) -> Self {
        match t {
            Tier::Critical => Self::Critical,
            Tier::Preferences => Self::Preferences,
            Tier::Application => Self::Application,
            Tier::Background => Self::Background,
        }
    }
}

impl From<proto::Tier> for Tier {
    fn from(t: proto::Tier) -> Self {
        match t {
            proto::Tier::Critical => Self::Critical,
            proto::Tier::Preferences => Self::Preferences,
            proto::Tier::Application => Self::Application,
            proto::Tier::Background => Self::Background,
        }
    }
}

/// The tiers a sync may touch; an empty list means all of them.
pub(crate) fn tier_set(tiers: &[Tier]) -> TierSet {
    if tiers.is_empty() {
        return TierSet::ALL;
    }
    let tiers: Vec<proto::Tier> = tiers.iter().map(|t| (*t).into()).collect();
    TierSet::of(&tiers)
}

/// What a queued item does to its key on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Op {
    Put,
    Delete,
    Event,
}

impl Op {
    /// Declaration order (Kotlin `ordinal`), for the direct entry points.
    pub(crate) const ALL: [Self; 3] = [Self::Put, Self::Delete, Self::Event];
}

impl From<Op> for proto::wire::Op {
    fn from(op: Op) -> Self {
        match op {
            Op::Put => Self::Put,
            Op::Delete => Self::Delete,
            Op::Event => Self::Event,
        }
    }
}

impl From<proto::wire::Op> for Op {
    fn from(op: proto::wire::Op) -> Self {
        match op {
            proto::wire::Op::Put => Self::Put,
            proto::wire::Op::Delete => Self::Delete,
            proto::wire::Op::Event => Self::Event,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum DeviceClass {
    Phone,
    Tablet,
    Desktop,
}

impl From<DeviceClass> for proto::DeviceClass {
    fn from(d: DeviceClass) -> Self {
        match d {
            DeviceClass::Phone => Self::Phone,
            DeviceClass::Tablet => Self::Tablet,
            DeviceClass::Desktop => Self::Desktop,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum NetworkClass {
    Offline,
    CellularSlow,
    CellularFast,
    /// Wi-Fi or wired Ethernet.
    Wifi,
}

/// The network the OS reports, and whether the user pays for its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct NetworkProfile {
    pub kind: NetworkClass,
    #[uniffi(default = false)]
    pub metered: bool,
}

impl From<NetworkProfile> for proto::NetworkProfile {
    fn from(n: NetworkProfile) -> Self {
        let class = match n.kind {
            NetworkClass::Offline => proto::NetworkClass::Offline,
            NetworkClass::CellularSlow => proto::NetworkClass::CellularSlow,
            NetworkClass::CellularFast => proto::NetworkClass::CellularFast,
            NetworkClass::Wifi => proto::NetworkClass::Wifi,
        };
        Self {
            class,
            metered: n.metered,
        }
    }
}

/// Which eviction policies the cache's namespaces run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum CacheEviction {
    /// The default: the adaptive policy (W-TinyLFU) for the namespaces whose table policy is
    /// `allkeys-lru` or `allkeys-lfu`, the table's policy for the others. Under pressure it may
    /// decline a put whose value is worth less than what it would displace: the put succeeds and
    /// the value reads as a miss (counted as an eviction).
    Adaptive,
    /// The namespace table's plain LRU and LFU: every put is kept, the least recently (or
    /// frequently) used value goes.
    Table,
}

impl From<CacheEviction> for kryonix_core::cache::Eviction {
    fn from(e: CacheEviction) -> Self {
        match e {
            CacheEviction::Adaptive => Self::Adaptive,
            CacheEviction::Table => Self::Table,
        }
    }
}

/// How to open an agent. Budgets left unset take the core defaults.
#[derive(Clone, PartialEq, Eq, uniffi::Record)]
pub struct AgentConfig {
    /// The SQLite file (created if missing), in the app's private storage.
    pub db_path: String,
    /// `https://sync.example.com`.
    pub server_url: String,
    pub tenant: String,
    pub device: DeviceClass,
    /// The network at start-up (the agent syncs only once it is not offline).
    pub network: NetworkProfile,
    /// Bytes the local cache may use on this device, split between namespaces.
    #[uniffi(default = None)]
    pub cache_budget_bytes: Option<Count>,
    /// Largest value the cache accepts, before compression.
    #[uniffi(default = None)]
    pub max_value_bytes: Option<Count>,
    /// Per-request timeout.
    #[uniffi(default = None)]
    pub request_timeout: Option<Millis>,
    /// The most the database file may grow to, in bytes. At the limit (or on a full disk) writes
    /// fail with `StorageFull` and change nothing.
    #[uniffi(default = None)]
    pub max_db_bytes: Option<Count>,
    /// The app's version (`4.2.0`, `4.2.0-beta.1`), sent with every request so the server can
    /// stop versions it no longer serves (`SyncStatus.upgradeRequired`). Pass the app's own
    /// version name (`BuildConfig.VERSION_NAME`, `CFBundleShortVersionString`).
    #[uniffi(default = None)]
    pub app_version: Option<String>,
    /// The database key: 32 random bytes the app keeps in the Android Keystore or the iOS
    /// Keychain (see android/README.md, ios/README.md). Unset: a plaintext database. Another
    /// length fails with `InvalidInput`; a key that does not open the file with `WrongKey`.
    #[uniffi(default = None)]
    pub encryption_key: Option<Vec<u8>>,
    /// PEM CA certificates: trust only these for the server (a private PKI), not the
    /// platform's roots.
    #[uniffi(default = None)]
    pub server_ca_pem: Option<Vec<u8>>,
    /// Pinned public keys, `sha256/<base64 of the SPKI's SHA-256>` (OkHttp's and HPKP's form):
    /// the server's chain must also contain one of these keys. Pin your CA's key and a backup.
    #[uniffi(default = [])]
    pub server_pins: Vec<String>,
    /// Which eviction policies the cache runs; unset: `Adaptive`.
    #[uniffi(default = None)]
    pub cache_eviction: Option<CacheEviction>,
}

/// By hand, so that no byte of the key reaches a log through `{:?}`.
impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("db_path", &self.db_path)
            .field("server_url", &self.server_url)
            .field("tenant", &self.tenant)
            .field("device", &self.device)
            .field("network", &self.network)
            .field("cache_budget_bytes", &self.cache_budget_bytes)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("request_timeout", &self.request_timeout)
            .field("max_db_bytes", &self.max_db_bytes)
            .field("app_version", &self.app_version)
            .field(
                "encryption_key",
                &self.encryption_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "server_ca_pem",
                &self.server_ca_pem.as_ref().map(|_| "<pem>"),
            )
            .field("server_pins", &self.server_pins)
            .field("cache_eviction", &self.cache_eviction)
            .finish()
    }
}

/// One item of `KryonixAgent.enqueueAll`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct NewItem {
    pub namespace: Namespace,
    pub key: String,
    pub op: Op,
    pub payload: Vec<u8>,
    pub tier: Tier,
}

/// Per-tier queue and sync figures.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TierStatus {
    pub tier: Tier,
    /// Items waiting (pending or in flight).
    pub depth: Count,
    /// Age of the oldest waiting item (zero when none waits).
    pub oldest_age: Millis,
    pub in_flight: Count,
    pub dead_letters: Count,
    /// Unix milliseconds of the last successful upload.
    pub last_success_at_ms: Option<i64>,
    /// Failed attempts since the last success.
    pub retries: Count,
    /// No progress for several slots while online with items waiting.
    pub stalled: bool,
    /// Waiting items older than the tier's freshness TTL (critical 5 min, preferences 30 min,
    /// application 1 h, background 2 h).
    pub overdue: Count,
}

/// A snapshot of the sync engine (what the observer receives, and `status()` returns).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncStatus {
    pub online: bool,
    pub tiers: Vec<TierStatus>,
    pub wakeups: Count,
    pub items_sent: Count,
    /// Push body bytes on the wire (after compression).
    pub bytes_sent: Count,
    /// The same bodies before compression.
    pub bytes_raw: Count,
    pub cache_hit_ratio: f64,
    pub last_error: Option<String>,
    /// The server refused the token: sign the user in again.
    pub unauthorized: bool,
    /// The server no longer serves this app or protocol version. Uploads stop (every item is
    /// kept) until an updated app opens the database.
    pub upgrade_required: Option<UpgradeRequired>,
    /// The token's tenant, when it is not `AgentConfig.tenant`: nothing is sent until the agent
    /// is opened with a matching configuration.
    pub tenant_mismatch: Option<String>,
}

/// The server's minimums, from its `426 upgrade_required` answer.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct UpgradeRequired {
    /// The oldest protocol version the server serves.
    pub min_protocol: Option<i32>,
    /// The oldest app version the server serves, when it sets one.
    pub min_app_version: Option<String>,
}

impl From<kryonix_core::sync::SyncStatus> for SyncStatus {
    fn from(s: kryonix_core::sync::SyncStatus) -> Self {
        Self {
            online: s.online,
            tiers: s
                .tiers
                .into_iter()
                .map(|(tier, t)| TierStatus {
                    tier: tier.into(),
                    depth: Count::of(t.depth),
                    oldest_age: Millis(t.oldest_age_ms.max(0)),
                    in_flight: Count::of(t.in_flight),
                    dead_letters: Count::of(t.dead_letters),
                    last_success_at_ms: t.last_success_at,
                    retries: Count::of(t.retries),
                    stalled: t.stalled,
                    overdue: Count::of(t.overdue),
                })
                .collect(),
            wakeups: Count::of(s.wakeups),
            items_sent: Count::of(s.items_sent),
            bytes_sent: Count::of(s.bytes_sent),
            bytes_raw: Count::of(s.bytes_raw),
            cache_hit_ratio: s.cache_hit_ratio,
            last_error: s.last_error,
            unauthorized: s.unauthorized,
            tenant_mismatch: s.tenant_mismatch,
            upgrade_required: s.upgrade_required.map(|u| UpgradeRequired {
                min_protocol: u.min_protocol.and_then(|p| i32::try_from(p).ok()),
                min_app_version: u.min_app_version,
            }),
        }
    }
}

/// What one `sync_now` or `flush` achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct SyncReport {
    /// Items the server stored during the call.
    pub items_sent: Count,
    /// Items still waiting after it.
    pub remaining: Count,
    pub online: bool,
    /// The flush stopped at its deadline with items left.
    pub deadline_reached: bool,
}

impl From<kryonix_core::sync::SyncReport> for SyncReport {
    fn from(r: kryonix_core::sync::SyncReport) -> Self {
        Self {
            items_sent: Count::of(r.items_sent),
            remaining: Count::of(r.remaining),
            online: r.online,
            deadline_reached: r.deadline_reached,
        }
    }
}

/// An item the server refused for good; retry or discard it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DeadLetter {
    pub id: String,
    pub tier: Tier,
    pub namespace: Namespace,
    pub key: String,
    pub op: Op,
    pub payload: Vec<u8>,
    pub attempts: i32,
    /// The server's error code (`invalid_key`, `too_large`, ...).
    pub code: String,
    pub reason: String,
    pub dead_at_ms: i64,
}

impl From<kryonix_core::DeadLetter> for DeadLetter {
    fn from(d: kryonix_core::DeadLetter) -> Self {
        Self {
            id: d.item.id.to_string(),
            tier: d.item.tier.into(),
            namespace: d.item.namespace.into(),
            key: d.item.key,
            op: d.item.op.into(),
            payload: d.item.payload,
            attempts: i32::try_from(d.item.attempts).unwrap_or(i32::MAX),
            code: d.code,
            reason: d.reason,
            dead_at_ms: d.dead_at,
        }
    }
}

/// Local cache counters.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct CacheStats {
    pub hits: Count,
    pub misses: Count,
    pub hit_ratio: f64,
    pub evictions: Count,
    pub expirations: Count,
    pub entries: Count,
    /// Values before compression.
    pub raw_bytes: Count,
    /// Values as stored.
    pub stored_bytes: Count,
}

impl From<kryonix_core::CacheStats> for CacheStats {
    fn from(s: kryonix_core::CacheStats) -> Self {
        Self {
            hits: Count::of(s.hits),
            misses: Count::of(s.misses),
            hit_ratio: s.hit_ratio,
            evictions: Count::of(s.evictions),
            expirations: Count::of(s.expirations),
            entries: Count::of(s.entries),
            raw_bytes: Count::of(s.raw_bytes),
            stored_bytes: Count::of(s.stored_bytes),
        }
    }
}

/// Why a watched key changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ChangeCause {
    /// The state when the watch began (`value` is null when the key had none).
    Initial,
    /// Written on this device: `put`, `write`, a read-through fill.
    Put,
    /// Deleted on this device.
    Deleted,
    /// Pulled from the server: a new value, or a delete (`value` null).
    Pulled,
    /// Found expired by a read or a purge.
    Expired,
    /// Evicted to make room under the namespace's policy.
    Evicted,
}

impl From<kryonix_core::Cause> for ChangeCause {
    fn from(cause: kryonix_core::Cause) -> Self {
        use kryonix_core::Cause as C;
        match cause {
            C::Initial => Self::Initial,
            C::Put => Self::Put,
            C::Deleted => Self::Deleted,
            C::Pulled => Self::Pulled,
            C::Expired => Self::Expired,
            C::Evicted => Self::Evicted,
        }
    }
}

/// One watched key's new state.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct CacheChange {
    /// The app's key (without tenant and namespace).
    pub key: String,
    /// The value now; null when the key has none (deleted, expired, evicted, never set).
    pub value: Option<Vec<u8>>,
    pub cause: ChangeCause,
}

impl From<kryonix_core::KeyChange> for CacheChange {
    fn from(c: kryonix_core::KeyChange) -> Self {
        Self {
            key: c.key,
            value: c.value.map(|v| v.to_vec()),
            cause: c.cause.into(),
        }
    }
}
