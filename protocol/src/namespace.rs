//! The sixteen namespaces: one table drives the device cache, the server's Redis databases and
//! the docs.
//!
//! A namespace's id is also the Redis logical database the server keeps it in, so ids are part of
//! the storage format and never change. Budgets are server-side figures; the device splits its
//! own (much smaller) budget in the same proportions.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a full namespace makes room, named as Redis names its `maxmemory-policy` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvictionPolicy {
    /// Evict the least recently used entry, with or without a TTL.
    AllkeysLru,
    /// Evict the least frequently used entry, with or without a TTL.
    AllkeysLfu,
    /// Evict the least recently used entry among those that have a TTL.
    VolatileLru,
    /// Evict the entry closest to expiry among those that have a TTL.
    VolatileTtl,
    /// Never evict: a write that does not fit is refused.
    Noeviction,
}

impl EvictionPolicy {
    /// The Redis `maxmemory-policy` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllkeysLru => "allkeys-lru",
            Self::AllkeysLfu => "allkeys-lfu",
            Self::VolatileLru => "volatile-lru",
            Self::VolatileTtl => "volatile-ttl",
            Self::Noeviction => "noeviction",
        }
    }
}

impl fmt::Display for EvictionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the namespace table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub namespace: Namespace,
    /// Stable id, equal to the Redis logical database number on the server.
    pub id: u8,
    pub name: &'static str,
    pub purpose: &'static str,
    pub default_ttl: Duration,
    /// Server-side memory budget in bytes.
    pub budget_bytes: u64,
    pub eviction: EvictionPolicy,
    /// The platform table's flag (false for file_metadata, tenant_config, backup_status and the
    /// internal namespaces): a value stored without an explicit TTL gets the device-adaptive TTL
    /// when set, the table's TTL otherwise ([`crate::profile::default_ttl`]).
    pub mobile_optimized: bool,
}

const MB: u64 = 1024 * 1024;
const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
const MIN: u64 = 60;
const HOUR: u64 = 3600;

macro_rules! namespaces {
    ($( $variant:ident = $id:literal, $name:literal, $purpose:literal, $ttl:expr, $budget:expr, $policy:ident, $mobile:literal; )*) => {
        /// One of the sixteen namespaces.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[repr(u8)]
        pub enum Namespace {
            $( $variant = $id, )*
        }

        /// The namespace table, indexed by id.
        pub const NAMESPACES: [NamespaceInfo; 16] = [
            $( NamespaceInfo {
                namespace: Namespace::$variant,
                id: $id,
                name: $name,
                purpose: $purpose,
                default_ttl: secs($ttl),
                budget_bytes: $budget,
                eviction: EvictionPolicy::$policy,
                mobile_optimized: $mobile,
            }, )*
        ];
    };
}

namespaces! {
    Sessions = 0, "sessions", "user sessions", 24 * HOUR, 512 * MB, AllkeysLru, true;
    AuthTokens = 1, "auth_tokens", "authentication tokens", HOUR, 256 * MB, VolatileTtl, true;
    UserCache = 2, "user_cache", "user profiles and per-user data", 2 * HOUR, 1024 * MB, AllkeysLru, true;
    ApiCache = 3, "api_cache", "responses of backend APIs", 30 * MIN, 2048 * MB, AllkeysLfu, true;
    RateLimiting = 4, "rate_limiting", "rate-limit counters", MIN, 128 * MB, VolatileTtl, false;
    RealtimeData = 5, "realtime_data", "short-lived live data", 5 * MIN, 512 * MB, VolatileLru, true;
    FileMetadata = 6, "file_metadata", "metadata of files and attachments", HOUR, 256 * MB, AllkeysLru, false;
    SearchCache = 7, "search_cache", "search results", 30 * MIN, 1024 * MB, AllkeysLfu, true;
    TenantConfig = 8, "tenant_config", "per-tenant configuration and feature flags", 2 * HOUR, 256 * MB, AllkeysLru, false;
    DeviceTrust = 9, "device_trust", "device registration and trust state", 24 * HOUR, 512 * MB, AllkeysLru, true;
    AiModels = 10, "ai_models", "model metadata and inference results", HOUR, 1024 * MB, AllkeysLfu, true;
    MobileSync = 11, "mobile_sync", "the durable sync streams (never evicted)", 48 * HOUR, 2048 * MB, Noeviction, true;
    Geolocation = 12, "geolocation", "location data", 30 * MIN, 256 * MB, VolatileLru, true;
    AnalyticsTemp = 13, "analytics_temp", "analytics events before aggregation", 5 * MIN, 512 * MB, VolatileTtl, false;
    BackupStatus = 14, "backup_status", "backup progress and status", 24 * HOUR, 128 * MB, AllkeysLru, false;
    DistributedLocks = 15, "distributed_locks", "locks shared between server instances", 5 * MIN, 64 * MB, VolatileTtl, false;
}

/// A name or id that is not one of the sixteen namespaces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown namespace {0:?}: expected one of the sixteen names (sessions, auth_tokens, ..., distributed_locks) or ids 0-15"
)]
pub struct UnknownNamespace(pub String);

impl Namespace {
    /// Whether the namespace belongs to the server's own machinery — the durable sync streams,
    /// token revocations, rate-limit counters, distributed locks — rather than to app data. A
    /// device may not name one in a push, a publish or a cache call: one rule for every route
    /// (`forbidden`); a device that could write `auth_tokens` could lift its own revocation.
    pub const fn is_internal(self) -> bool {
        matches!(
            self,
            Self::AuthTokens | Self::MobileSync | Self::RateLimiting | Self::DistributedLocks
        )
    }

    /// Every namespace, in id order.
    pub fn all() -> impl Iterator<Item = Namespace> {
        NAMESPACES.iter().map(|info| info.namespace)
    }

    /// The namespace's row of the table.
    pub fn info(self) -> &'static NamespaceInfo {
        // The table is built by the same macro as the enum, in id order, so the index exists.
        &NAMESPACES[self as usize]
    }

    pub fn id(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn default_ttl(self) -> Duration {
        self.info().default_ttl
    }

    /// Whether a value without an explicit TTL gets the device-adaptive TTL (see
    /// [`crate::profile::default_ttl`]); the others keep the table's TTL on every device.
    pub fn mobile_optimized(self) -> bool {
        self.info().mobile_optimized
    }

    pub fn eviction(self) -> EvictionPolicy {
        self.info().eviction
    }

    pub fn from_id(id: u8) -> Result<Self, UnknownNamespace> {
        NAMESPACES
            .get(usize::from(id))
            .map(|info| info.namespace)
            .ok_or_else(|| UnknownNamespace(id.to_string()))
    }

    pub fn from_name(name: &str) -> Result<Self, UnknownNamespace> {
        NAMESPACES
            .iter()
            .find(|info| info.name == name)
            .map(|info| info.namespace)
            .ok_or_else(|| UnknownNamespace(name.to_owned()))
    }

    /// Sum of all server budgets: the denominator when a device splits its own budget.
    pub fn total_budget_bytes() -> u64 {
        NAMESPACES.iter().map(|info| info.budget_bytes).sum()
    }

    /// This namespace's share of a device-wide budget, in the table's proportions.
    pub fn scaled_budget(self, device_total_bytes: u64) -> u64 {
        let share = u128::from(device_total_bytes) * u128::from(self.info().budget_bytes)
            / u128::from(Self::total_budget_bytes());
        // share <= device_total_bytes, which is a u64.
        u64::try_from(share).unwrap_or(device_total_bytes)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Namespace {
    type Err = UnknownNamespace;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_namespaces_are_internal() {
        let internal: Vec<&str> = Namespace::all()
            .filter(|ns| ns.is_internal())
            .map(Namespace::name)
            .collect();
        assert_eq!(
            internal,
            [
                "auth_tokens",
                "rate_limiting",
                "mobile_sync",
                "distributed_locks"
            ]
        );
    }

    #[test]
    fn table_matches_the_design() {
        let expected: [(u8, &str, u64, u64, &str); 16] = [
            (0, "sessions", 86_400, 512, "allkeys-lru"),
            (1, "auth_tokens", 3_600, 256, "volatile-ttl"),
            (2, "user_cache", 7_200, 1024, "allkeys-lru"),
            (3, "api_cache", 1_800, 2048, "allkeys-lfu"),
            (4, "rate_limiting", 60, 128, "volatile-ttl"),
            (5, "realtime_data", 300, 512, "volatile-lru"),
            (6, "file_metadata", 3_600, 256, "allkeys-lru"),
            (7, "search_cache", 1_800, 1024, "allkeys-lfu"),
            (8, "tenant_config", 7_200, 256, "allkeys-lru"),
            (9, "device_trust", 86_400, 512, "allkeys-lru"),
            (10, "ai_models", 3_600, 1024, "allkeys-lfu"),
            (11, "mobile_sync", 172_800, 2048, "noeviction"),
            (12, "geolocation", 1_800, 256, "volatile-lru"),
            (13, "analytics_temp", 300, 512, "volatile-ttl"),
            (14, "backup_status", 86_400, 128, "allkeys-lru"),
            (15, "distributed_locks", 300, 64, "volatile-ttl"),
        ];
        for (info, (id, name, ttl, mb, policy)) in NAMESPACES.iter().zip(expected) {
            assert_eq!(info.id, id);
            assert_eq!(info.namespace.id(), id);
            assert_eq!(info.name, name);
            assert_eq!(info.default_ttl.as_secs(), ttl, "{name}");
            assert_eq!(info.budget_bytes, mb * MB, "{name}");
            assert_eq!(info.eviction.as_str(), policy, "{name}");
            assert_eq!(Namespace::from_name(name), Ok(info.namespace));
            assert_eq!(Namespace::from_id(id), Ok(info.namespace));
        }
    }

    #[test]
    fn unknown_names_and_ids_are_errors() {
        assert!(Namespace::from_name("Sessions").is_err());
        assert!(Namespace::from_name("").is_err());
        assert!(Namespace::from_id(16).is_err());
    }

    #[test]
    fn scaled_budgets_keep_proportions() {
        let total = 64 * MB;
        let sum: u64 = Namespace::all().map(|ns| ns.scaled_budget(total)).sum();
        assert!(sum <= total && sum > total - 16);
        // Integer division rounds each share down by less than one byte.
        let api = Namespace::ApiCache.scaled_budget(total);
        let user = Namespace::UserCache.scaled_budget(total);
        assert!(api.abs_diff(2 * user) <= 2, "{api} vs 2 x {user}");
        let sessions = Namespace::Sessions.scaled_budget(total);
        let locks = Namespace::DistributedLocks.scaled_budget(total);
        assert!(
            sessions.abs_diff(8 * locks) <= 8,
            "{sessions} vs 8 x {locks}"
        );
    }

    #[test]
    fn serde_uses_the_table_names() {
        let json = serde_json::to_string(&Namespace::MobileSync).unwrap();
        assert_eq!(json, "\"mobile_sync\"");
        for ns in Namespace::all() {
            let json = serde_json::to_string(&ns).unwrap();
            assert_eq!(json, format!("\"{}\"", ns.name()));
        }
    }
}
