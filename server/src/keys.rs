//! Every Redis key name the server uses, built in this one module from the protocol's
//! [`TenantKey`], so the `tenant:{tenant}:{namespace}:{key}` format and its 250-byte limit hold
//! for server-internal keys exactly as for app keys (per-tenant ACL patterns rely on the prefix).
//!
//! Keys that one command, pipeline, script or transaction touches together carry the same Redis
//! Cluster hash tag (the part in braces), so that on a Cluster they live in one slot:
//!
//! - a push touches its device's producer record and the up streams it appends to: tag
//!   `{tenant:pN}`, where N is the device's **partition** ([`partition_of`]). A tenant's up
//!   streams are split into P partitions (`--up-partitions`), each with its own tag, so one
//!   tenant spreads over the shards of a Cluster;
//! - a publish and a pull touch one tenant's down streams: tag `{tenant}`;
//! - a rate-limit check touches one tenant's two GCRA states: tag `{tenant}`.
//!
//! Cache values carry no tag, so the cache spreads over all shards. Tenant ids cannot contain
//! braces (the protocol refuses them), so the first `{` of a sync key is always the server's.
//! On a standalone Redis the tags change nothing; each namespace keeps its logical database.
//!
//! | key | database | type |
//! |---|---|---|
//! | `tenant:{t}:mobile_sync:up:{t:pN}:t{tier}` | 11 | stream of pushed items, per partition and tier |
//! | `tenant:{t}:mobile_sync:producer:{t:pN}:{device}:{producer}` | 11 | hash: last stored seq per tier (fields `1`–`4`), expires after the producer's idle time |
//! | `tenant:{t}:mobile_sync:down:{t}` | 11 | stream of changes for every device |
//! | `tenant:{t}:mobile_sync:down:{t}:device:{device}` | 11 | stream of changes for one device |
//! | `tenant:{t}:mobile_sync:down:{t}:last-id` | 11 | last down entry id: one id sequence for all down streams |
//! | `tenant:{t}:rate_limiting:{t}:tenant` | 4 | GCRA state of the tenant |
//! | `tenant:{t}:rate_limiting:{t}:device:{device}` | 4 | GCRA state of one device |
//! | `tenant:{t}:{namespace}:{key}` | namespace id | cached value (L2 cache) |
//!
//! (On a Cluster there are no logical databases: everything is in database 0, and the namespace
//! in each key keeps them apart.)

use kryonix_protocol::{KeyError, Namespace, TenantId, TenantKey, Tier};

/// Most up-stream partitions per tenant.
pub const MAX_PARTITIONS: u16 = 1024;

/// The partition a device's uploads go to: a stable hash of its id (FNV-1a, 32 bits) modulo
/// `partitions`. Stable across servers and versions: every instance sends a device to the same
/// partition, so its producer record and its stream entries stay together. Changing the number
/// of partitions moves devices (see `docs/operations.md`).
pub fn partition_of(device: &str, partitions: u16) -> u16 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let hash = device
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u32::from(b)).wrapping_mul(PRIME));
    // Proven in range: the remainder of a division by a u16 fits a u16.
    u16::try_from(hash % u32::from(partitions.max(1))).unwrap_or(0)
}

fn partition_tag(tenant: &TenantId, partition: u16) -> String {
    format!("{{{}:p{partition}}}", tenant.as_str())
}

fn tenant_tag(tenant: &TenantId) -> String {
    format!("{{{}}}", tenant.as_str())
}

/// The up stream of one tenant, partition and tier, which backends consume.
pub fn up_stream(tenant: &TenantId, partition: u16, tier: Tier) -> Result<TenantKey, KeyError> {
    TenantKey::new(
        tenant,
        Namespace::MobileSync,
        &format!("up:{}:t{}", partition_tag(tenant, partition), tier.number()),
    )
}

/// Every up stream of one tenant and tier, one per partition.
pub fn up_streams(
    tenant: &TenantId,
    partitions: u16,
    tier: Tier,
) -> Result<Vec<TenantKey>, KeyError> {
    (0..partitions.max(1))
        .map(|p| up_stream(tenant, p, tier))
        .collect()
}

/// The `SCAN … MATCH` pattern of a tenant's up streams (all partitions and tiers).
pub fn up_stream_pattern(tenant: &TenantId) -> String {
    format!("tenant:{}:mobile_sync:up:*", tenant.as_str())
}

/// The sequence record of one producer (a device outbox) of one device: the last seq stored per
/// tier. The device is part of the key so that two devices can never share a record, whatever
/// producer ids they send; it shares the tag of the device's partition with its up streams.
pub fn producer(
    tenant: &TenantId,
    partition: u16,
    device: &str,
    producer: &str,
) -> Result<TenantKey, KeyError> {
    TenantKey::new(
        tenant,
        Namespace::MobileSync,
        &format!(
            "producer:{}:{device}:{producer}",
            partition_tag(tenant, partition)
        ),
    )
}

/// The tenant-wide down stream.
pub fn down_stream(tenant: &TenantId) -> Result<TenantKey, KeyError> {
    TenantKey::new(
        tenant,
        Namespace::MobileSync,
        &format!("down:{}", tenant_tag(tenant)),
    )
}

/// The down stream of one device.
pub fn device_down_stream(tenant: &TenantId, device: &str) -> Result<TenantKey, KeyError> {
    TenantKey::new(
        tenant,
        Namespace::MobileSync,
        &format!("down:{}:device:{device}", tenant_tag(tenant)),
    )
}

/// The last entry id given to any down stream of the tenant.
pub fn down_last_id(tenant: &TenantId) -> Result<TenantKey, KeyError> {
    TenantKey::new(
        tenant,
        Namespace::MobileSync,
        &format!("down:{}:last-id", tenant_tag(tenant)),
    )
}

/// Rate-limit state of the whole tenant.
pub fn tenant_rate(tenant: &TenantId) -> Result<TenantKey, KeyError> {
    TenantKey::new(
        tenant,
        Namespace::RateLimiting,
        &format!("{}:tenant", tenant_tag(tenant)),
    )
}

/// Rate-limit state of one device (or service) of the tenant.
pub fn device_rate(tenant: &TenantId, subject: &str) -> Result<TenantKey, KeyError> {
    TenantKey::new(
        tenant,
        Namespace::RateLimiting,
        &format!("{}:device:{subject}", tenant_tag(tenant)),
    )
}

/// A revoked token, by its id (`jti`): kept in `auth_tokens` (database 1) until the token
/// would have expired. `auth_tokens` is internal, so no device can write or delete it.
pub fn revoked_token(tenant: &TenantId, jti: &str) -> Result<TenantKey, KeyError> {
    TenantKey::new(tenant, Namespace::AuthTokens, &format!("revoked:{jti}"))
}

/// A cached value; it lives in the Redis database numbered like its namespace.
pub fn cache_entry(
    tenant: &TenantId,
    namespace: Namespace,
    key: &str,
) -> Result<TenantKey, KeyError> {
    TenantKey::new(tenant, namespace, key)
}

/// Redis logical database of a namespace (standalone and Sentinel; a Cluster has only 0).
pub fn database(namespace: Namespace) -> i64 {
    i64::from(namespace.id())
}

/// The Redis Cluster slot of a key: CRC16 (XMODEM) of its hash tag, or of the whole key when it
/// has none, modulo 16384 — the rule of the Cluster specification.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = key.get(open + 1..)?;
            let close = rest.iter().position(|&b| b == b'}')?;
            // An empty tag `{}` does not count: the whole key is hashed.
            (close > 0).then(|| rest.get(..close)).flatten()
        })
        .unwrap_or(key);
    crc16_xmodem(hashed) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shapes() {
        let t = TenantId::new("acme").unwrap();
        assert_eq!(
            up_stream(&t, 3, Tier::Background).unwrap().as_str(),
            "tenant:acme:mobile_sync:up:{acme:p3}:t4"
        );
        assert_eq!(
            producer(&t, 3, "p1", "0193-ab_c").unwrap().as_str(),
            "tenant:acme:mobile_sync:producer:{acme:p3}:p1:0193-ab_c"
        );
        assert_eq!(
            down_stream(&t).unwrap().as_str(),
            "tenant:acme:mobile_sync:down:{acme}"
        );
        assert_eq!(
            device_down_stream(&t, "p1").unwrap().as_str(),
            "tenant:acme:mobile_sync:down:{acme}:device:p1"
        );
        assert_eq!(
            device_rate(&t, "p1").unwrap().as_str(),
            "tenant:acme:rate_limiting:{acme}:device:p1"
        );
        assert_eq!(database(Namespace::MobileSync), 11);
        assert_eq!(database(Namespace::RateLimiting), 4);
    }

    #[test]
    fn what_one_operation_touches_shares_a_slot() {
        let t = TenantId::new("acme").unwrap();
        for device in ["phone-1", "tablet-9", "desktop"] {
            let p = partition_of(device, 16);
            let record = slot(producer(&t, p, device, "abc").unwrap().as_str().as_bytes());
            for tier in Tier::ALL {
                assert_eq!(
                    slot(up_stream(&t, p, tier).unwrap().as_str().as_bytes()),
                    record
                );
            }
        }
        let down = slot(down_stream(&t).unwrap().as_str().as_bytes());
        assert_eq!(
            slot(device_down_stream(&t, "x").unwrap().as_str().as_bytes()),
            down
        );
        assert_eq!(slot(down_last_id(&t).unwrap().as_str().as_bytes()), down);
        let rate = slot(tenant_rate(&t).unwrap().as_str().as_bytes());
        assert_eq!(
            slot(device_rate(&t, "x").unwrap().as_str().as_bytes()),
            rate
        );
    }

    #[test]
    fn partitions_spread_a_tenant_and_stay_put() {
        let t = TenantId::new("acme").unwrap();
        let slots: std::collections::HashSet<u16> = (0..16)
            .map(|p| {
                slot(
                    up_stream(&t, p, Tier::Critical)
                        .unwrap()
                        .as_str()
                        .as_bytes(),
                )
            })
            .collect();
        assert_eq!(slots.len(), 16, "each partition has a slot of its own");
        // Stable: the same device, the same partition, on every server and every version.
        assert_eq!(partition_of("phone-1", 16), partition_of("phone-1", 16));
        assert_eq!(partition_of("anything", 1), 0);
        let spread: std::collections::HashSet<u16> = (0..200)
            .map(|i| partition_of(&format!("device-{i}"), 8))
            .collect();
        assert_eq!(spread.len(), 8);
    }

    #[test]
    fn slots_follow_the_cluster_specification() {
        // Test vectors of the Redis Cluster specification (CRC16-XMODEM of "123456789").
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(
            slot(b"foo{}{bar}"),
            slot(b"bar"),
            "an empty tag hashes the whole key"
        );
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }
}
