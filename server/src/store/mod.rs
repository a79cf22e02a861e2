//! Storage behind the HTTP API: Redis in production, an embedded SQLite file for development.
//!
//! Both stores offer the same operations with the same semantics (exactly-once push by
//! per-producer sequence numbers, down streams read after an opaque cursor, a TTL cache per
//! namespace, GCRA rate limits), and one contract test suite runs against both. Handlers validate input before they
//! call a store, so a store only ever sees valid tenants, namespaces and keys. [`Store`] is an
//! enum rather than a trait object: two variants, no boxing of async calls.

pub mod embedded;
pub mod rate;
pub mod redis;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kryonix_protocol::wire::{Change, Op};
use kryonix_protocol::{Encoding, Namespace, TenantId, Tier};

pub use self::embedded::EmbeddedStore;
pub(crate) use self::rate::decision;
pub use self::rate::{RateDecision, Rates, gcra};
pub use self::redis::RedisStore;

/// What went wrong in a store, in the terms a handler acts on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis refused a write for memory (`noeviction` at `maxmemory`): back-pressure, retry.
    #[error("the store is out of memory")]
    OutOfMemory,
    /// The store cannot be reached or timed out: retry.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A pull cursor that does not decode to positions of this store.
    #[error("invalid cursor")]
    BadCursor,
    /// Anything else: a bug or an unexpected reply.
    #[error("store failure: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::OutOfMemory | Self::Unavailable(_))
    }
}

/// One validated pushed item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewItem {
    pub id: String,
    /// Position in its producer's tier, at least 1; the items of one tier in a batch come in
    /// strictly increasing `seq` order (the handler rejects the others).
    pub seq: u64,
    pub tier: Tier,
    pub namespace: Namespace,
    pub key: String,
    pub op: Op,
    pub payload: Vec<u8>,
    pub encoding: Encoding,
    pub created_at_ms: i64,
}

/// Index of a tier in a `last_seq` array (tier 1 at 0).
pub fn tier_slot(tier: Tier) -> usize {
    match tier {
        Tier::Critical => 0,
        Tier::Preferences => 1,
        Tier::Application => 2,
        Tier::Background => 3,
    }
}

/// How a push is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushOptions {
    /// How long the producer's sequences are remembered after this push.
    pub producer_ttl: Duration,
    /// Replicas that must confirm the writes (Redis `WAIT`, on the connection that made them)
    /// before the push returns; 0 = no wait.
    pub min_replicas_acked: u32,
    pub wait_timeout: Duration,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    /// Per item, in order: stored now (`true`) or stored earlier (`false`, a duplicate).
    pub stored: Vec<bool>,
    /// The producer's last stored seq per tier after the push (index 0 is tier 1; 0 = none).
    pub last_seq: [u64; 4],
    /// Replicas that confirmed the writes when `min_replicas_acked > 0` (0 otherwise, and always
    /// 0 on the embedded store, which has no replicas).
    pub replicas_acked: u32,
    /// How many times a concurrent push of the same producer made this one start over.
    pub conflicts: u32,
}

/// One validated published change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChange {
    pub namespace: Namespace,
    pub key: String,
    pub op: Op,
    pub value: Vec<u8>,
    pub encoding: Encoding,
    pub ttl_secs: Option<u64>,
}

/// Where a device is in its two down streams (tenant-wide and its own). Empty = the start.
///
/// Each store writes its own position format; the pair travels as one opaque base64 cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub tenant: String,
    pub device: String,
}

const CURSOR_VERSION: &str = "c1";

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{CURSOR_VERSION}|{}|{}", self.tenant, self.device))
    }

    pub fn decode(text: &str) -> Result<Self, StoreError> {
        if text.is_empty() {
            return Ok(Self::default());
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| StoreError::BadCursor)?;
        let text = String::from_utf8(bytes).map_err(|_| StoreError::BadCursor)?;
        let mut parts = text.split('|');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(CURSOR_VERSION), Some(tenant), Some(device), None) => Ok(Self {
                tenant: tenant.to_owned(),
                device: device.to_owned(),
            }),
            _ => Err(StoreError::BadCursor),
        }
    }
}

/// One page of a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub changes: Vec<Change>,
    pub next: Cursor,
    pub has_more: bool,
}

/// A cached value with its remaining lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub value: Vec<u8>,
    pub encoding: Encoding,
    pub ttl_secs: Option<u64>,
}

/// Facts about the sync store that start-up checks and `/readyz` report.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncStoreFacts {
    pub kind: &'static str,
    /// `standalone`, `sentinel` or `cluster` for Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<&'static str>,
    /// `host:port` of the node these facts are about (the current primary under Sentinel).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub redis_version: Option<String>,
    pub maxmemory_policy: Option<String>,
    pub maxmemory: Option<u64>,
    pub used_memory: Option<u64>,
    pub aof_enabled: Option<bool>,
    pub cluster_enabled: Option<bool>,
    /// `CLUSTER INFO`'s `cluster_state` (`ok` or `fail`), on a Cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_state: Option<String>,
    /// On a Cluster, the facts of every primary (the fields above are then the fullest one's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<SyncStoreFacts>,
    /// Why pushes are refused right now (a Sentinel failover onto a primary that could evict).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusing_pushes: Option<String>,
}

impl SyncStoreFacts {
    /// `used_memory / maxmemory`, when there is a limit; on a Cluster, the fullest primary's.
    pub fn memory_pressure(&self) -> Option<f64> {
        let own = match (self.used_memory, self.maxmemory) {
            (Some(used), Some(max)) if max > 0 => Some(used as f64 / max as f64),
            _ => None,
        };
        self.nodes
            .iter()
            .filter_map(Self::memory_pressure)
            .chain(own)
            .reduce(f64::max)
    }
}

/// The store a server runs on.
#[derive(Debug, Clone)]
pub enum Store {
    Redis(RedisStore),
    Embedded(EmbeddedStore),
}

impl Store {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
            Self::Embedded(_) => "embedded",
        }
    }

    /// Stores, atomically per batch and in order, the items whose `seq` is above the last one
    /// stored for their (tenant, device, producer, tier), and advances those last seqs with them;
    /// refreshes the producer's expiry. `producer` is already validated, and the items of a tier
    /// come in increasing `seq` order.
    pub async fn push(
        &self,
        tenant: &TenantId,
        device: &str,
        producer: &str,
        items: &[NewItem],
        options: &PushOptions,
    ) -> Result<PushOutcome, StoreError> {
        match self {
            Self::Redis(s) => s.push(tenant, device, producer, items, options).await,
            Self::Embedded(s) => s.push(tenant, device, producer, items, options).await,
        }
    }

    /// The producer's last stored seq per tier (index 0 is tier 1; all 0 when the producer is
    /// unknown or was forgotten); refreshes its expiry when it is known.
    pub async fn hello(
        &self,
        tenant: &TenantId,
        device: &str,
        producer: &str,
        ttl: Duration,
    ) -> Result<[u64; 4], StoreError> {
        match self {
            Self::Redis(s) => s.hello(tenant, device, producer, ttl).await,
            Self::Embedded(s) => s.hello(tenant, device, producer, ttl).await,
        }
    }

    pub async fn pull(
        &self,
        tenant: &TenantId,
        device: &str,
        cursor: &Cursor,
        limit: usize,
    ) -> Result<Page, StoreError> {
        match self {
            Self::Redis(s) => s.pull(tenant, device, cursor, limit).await,
            Self::Embedded(s) => s.pull(tenant, device, cursor, limit).await,
        }
    }

    /// Appends all changes or none; returns their change ids.
    pub async fn publish(
        &self,
        tenant: &TenantId,
        device: Option<&str>,
        changes: &[NewChange],
        retention: Duration,
    ) -> Result<Vec<String>, StoreError> {
        match self {
            Self::Redis(s) => s.publish(tenant, device, changes, retention).await,
            Self::Embedded(s) => s.publish(tenant, device, changes, retention).await,
        }
    }

    pub async fn cache_get(
        &self,
        tenant: &TenantId,
        namespace: Namespace,
        keys: &[String],
    ) -> Result<Vec<Option<Cached>>, StoreError> {
        match self {
            Self::Redis(s) => s.cache_get(tenant, namespace, keys).await,
            Self::Embedded(s) => s.cache_get(tenant, namespace, keys).await,
        }
    }

    pub async fn cache_put(
        &self,
        tenant: &TenantId,
        namespace: Namespace,
        key: &str,
        value: &[u8],
        encoding: Encoding,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        match self {
            Self::Redis(s) => {
                s.cache_put(tenant, namespace, key, value, encoding, ttl)
                    .await
            }
            Self::Embedded(s) => {
                s.cache_put(tenant, namespace, key, value, encoding, ttl)
                    .await
            }
        }
    }

    pub async fn cache_delete(
        &self,
        tenant: &TenantId,
        namespace: Namespace,
        key: &str,
    ) -> Result<(), StoreError> {
        match self {
            Self::Redis(s) => s.cache_delete(tenant, namespace, key).await,
            Self::Embedded(s) => s.cache_delete(tenant, namespace, key).await,
        }
    }

    /// Records that a token is revoked until `until` (Unix seconds, its expiry).
    pub async fn revoke(&self, tenant: &TenantId, jti: &str, until: u64) -> Result<(), StoreError> {
        match self {
            Self::Redis(s) => s.revoke(tenant, jti, until).await,
            Self::Embedded(s) => s.revoke(tenant, jti, until).await,
        }
    }

    /// Whether a token is revoked.
    pub async fn is_revoked(&self, tenant: &TenantId, jti: &str) -> Result<bool, StoreError> {
        match self {
            Self::Redis(s) => s.is_revoked(tenant, jti).await,
            Self::Embedded(s) => s.is_revoked(tenant, jti).await,
        }
    }

    pub async fn rate_limit(
        &self,
        tenant: &TenantId,
        subject: &str,
        rates: Rates,
    ) -> Result<RateDecision, StoreError> {
        if rates.tenant_per_sec == 0 && rates.device_per_sec == 0 {
            return Ok(RateDecision::Allowed);
        }
        match self {
            Self::Redis(s) => s.rate_limit(tenant, subject, rates).await,
            Self::Embedded(s) => s.rate_limit(tenant, subject, rates).await,
        }
    }

    /// `used_memory / maxmemory` of the sync store, when it has a memory limit.
    pub async fn memory_pressure(&self) -> Result<Option<f64>, StoreError> {
        match self {
            Self::Redis(s) => s.memory_pressure().await,
            Self::Embedded(_) => Ok(None),
        }
    }

    /// Reads the facts of the sync store (and checks it answers).
    pub async fn sync_facts(&self) -> Result<SyncStoreFacts, StoreError> {
        match self {
            Self::Redis(s) => s.sync_facts().await,
            Self::Embedded(s) => s.sync_facts().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_rejects_garbage() {
        let c = Cursor {
            tenant: "1764000000000-3".into(),
            device: "0-0".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert_eq!(Cursor::decode("").unwrap(), Cursor::default());
        for bad in [
            "!!",
            "Zm9v",
            &URL_SAFE_NO_PAD.encode("c9|a|b"),
            &URL_SAFE_NO_PAD.encode("c1|a|b|c"),
        ] {
            assert!(
                matches!(Cursor::decode(bad), Err(StoreError::BadCursor)),
                "{bad}"
            );
        }
    }
}
