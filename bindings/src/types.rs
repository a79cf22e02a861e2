//! FFI mirrors of core and protocol types: records and enums UniFFI can generate, each with a
//! `From` impl in the direction it crosses. Core types are never annotated for the FFI.

use kryonix_core::outbox::TierSet;
use kryonix_protocol as proto;

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
    pub cache_budget_bytes: Option<u64>,
    /// Largest value the cache accepts, before compression.
    #[uniffi(default = None)]
    pub max_value_bytes: Option<u64>,
    /// Per-request timeout.
    #[uniffi(default = None)]
    pub request_timeout_ms: Option<u64>,
    /// The most the database file may grow to, in bytes. At the limit (or on a full disk) writes
    /// fail with `StorageFull` and change nothing.
    #[uniffi(default = None)]
    pub max_db_bytes: Option<u64>,
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
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("max_db_bytes", &self.max_db_bytes)
            .field("app_version", &self.app_version)
            .field(
                "encryption_key",
                &self.encryption_key.as_ref().map(|_| "<redacted>"),
            )
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
    pub depth: u64,
    pub oldest_age_ms: i64,
    pub in_flight: u64,
    pub dead_letters: u64,
    /// Unix milliseconds of the last successful upload.
    pub last_success_at_ms: Option<i64>,
    /// Failed attempts since the last success.
    pub retries: u64,
    /// No progress for several slots while online with items waiting.
    pub stalled: bool,
    /// Waiting items older than the tier's freshness TTL (critical 5 min, preferences 30 min,
    /// application 1 h, background 2 h).
    pub overdue: u64,
}

/// A snapshot of the sync engine (what the observer receives, and `status()` returns).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncStatus {
    pub online: bool,
    pub tiers: Vec<TierStatus>,
    pub wakeups: u64,
    pub items_sent: u64,
    /// Push body bytes on the wire (after compression).
    pub bytes_sent: u64,
    /// The same bodies before compression.
    pub bytes_raw: u64,
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
    pub min_protocol: Option<u32>,
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
                    depth: t.depth,
                    oldest_age_ms: t.oldest_age_ms,
                    in_flight: t.in_flight,
                    dead_letters: t.dead_letters,
                    last_success_at_ms: t.last_success_at,
                    retries: t.retries,
                    stalled: t.stalled,
                    overdue: t.overdue,
                })
                .collect(),
            wakeups: s.wakeups,
            items_sent: s.items_sent,
            bytes_sent: s.bytes_sent,
            bytes_raw: s.bytes_raw,
            cache_hit_ratio: s.cache_hit_ratio,
            last_error: s.last_error,
            unauthorized: s.unauthorized,
            tenant_mismatch: s.tenant_mismatch,
            upgrade_required: s.upgrade_required.map(|u| UpgradeRequired {
                min_protocol: u.min_protocol,
                min_app_version: u.min_app_version,
            }),
        }
    }
}

/// What one `sync_now` or `flush` achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct SyncReport {
    /// Items the server stored during the call.
    pub items_sent: u64,
    /// Items still waiting after it.
    pub remaining: u64,
    pub online: bool,
    /// The flush stopped at its deadline with items left.
    pub deadline_reached: bool,
}

impl From<kryonix_core::sync::SyncReport> for SyncReport {
    fn from(r: kryonix_core::sync::SyncReport) -> Self {
        Self {
            items_sent: r.items_sent,
            remaining: r.remaining,
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
    pub attempts: u32,
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
            attempts: d.item.attempts,
            code: d.code,
            reason: d.reason,
            dead_at_ms: d.dead_at,
        }
    }
}

/// Local cache counters.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub hit_ratio: f64,
    pub evictions: u64,
    pub expirations: u64,
    pub entries: u64,
    /// Values before compression.
    pub raw_bytes: u64,
    /// Values as stored.
    pub stored_bytes: u64,
}

impl From<kryonix_core::CacheStats> for CacheStats {
    fn from(s: kryonix_core::CacheStats) -> Self {
        Self {
            hits: s.hits,
            misses: s.misses,
            hit_ratio: s.hit_ratio,
            evictions: s.evictions,
            expirations: s.expirations,
            entries: s.entries,
            raw_bytes: s.raw_bytes,
            stored_bytes: s.stored_bytes,
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
