//! Every Redis key name the server uses, built in this one module from the protocol's
//! [`TenantKey`], so the `tenant:{tenant}:{namespace}:{key}` format and its 250-byte limit hold
//! for server-internal keys exactly as for app keys.
//!
//! | key | database | type |
//! |---|---|---|
//! | `tenant:{t}:mobile_sync:up:t{tier}` | 11 | stream of pushed items, one per tier |
//! | `tenant:{t}:mobile_sync:producer:{device}:{producer}` | 11 | hash: last stored seq per tier (fields `1`–`4`), expires after the producer's idle time |
//! | `tenant:{t}:mobile_sync:down` | 11 | stream of changes for every device |
//! | `tenant:{t}:mobile_sync:down:device:{device}` | 11 | stream of changes for one device |
//! | `tenant:{t}:mobile_sync:down:last-id` | 11 | last down entry id: one id sequence for all down streams |
//! | `tenant:{t}:rate_limiting:tenant` | 4 | GCRA state of the tenant |
//! | `tenant:{t}:rate_limiting:device:{device}` | 4 | GCRA state of one device |
//! | `tenant:{t}:{namespace}:{key}` | namespace id | cached value (L2 cache) |

use kryonix_protocol::{KeyError, Namespace, TenantId, TenantKey, Tier};

/// The up stream of one tenant and tier, which backends consume.
pub fn up_stream(tenant: &TenantId, tier: Tier) -> Result<TenantKey, KeyError> {
    TenantKey::new(
        tenant,
        Namespace::MobileSync,
        &format!("up:t{}", tier.number()),
    )
}

/// The sequence record of one producer (a device outbox) of one device: the last seq stored per
/// tier. The device is part of the key so that two devices can never share a record, whatever
/// producer ids they send.
pub fn producer(tenant: &TenantId, device: &str, producer: &str) -> Result<TenantKey, KeyError> {
    TenantKey::new(
        tenant,
        Namespace::MobileSync,
        &format!("producer:{device}:{producer}"),
    )
}

/// The tenant-wide down stream.
pub fn down_stream(tenant: &TenantId) -> Result<TenantKey, KeyError> {
    TenantKey::new(tenant, Namespace::MobileSync, "down")
}

/// The down stream of one device.
pub fn device_down_stream(tenant: &TenantId, device: &str) -> Result<TenantKey, KeyError> {
    TenantKey::new(
        tenant,
        Namespace::MobileSync,
        &format!("down:device:{device}"),
    )
}

/// The last entry id given to any down stream of the tenant.
pub fn down_last_id(tenant: &TenantId) -> Result<TenantKey, KeyError> {
    TenantKey::new(tenant, Namespace::MobileSync, "down:last-id")
}

/// Rate-limit state of the whole tenant.
pub fn tenant_rate(tenant: &TenantId) -> Result<TenantKey, KeyError> {
    TenantKey::new(tenant, Namespace::RateLimiting, "tenant")
}

/// Rate-limit state of one device (or service) of the tenant.
pub fn device_rate(tenant: &TenantId, subject: &str) -> Result<TenantKey, KeyError> {
    TenantKey::new(
        tenant,
        Namespace::RateLimiting,
        &format!("device:{subject}"),
    )
}

/// A cached value; it lives in the Redis database numbered like its namespace.
pub fn cache_entry(
    tenant: &TenantId,
    namespace: Namespace,
    key: &str,
) -> Result<TenantKey, KeyError> {
    TenantKey::new(tenant, namespace, key)
}

/// Redis logical database of a namespace.
pub fn database(namespace: Namespace) -> i64 {
    i64::from(namespace.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shapes() {
        let t = TenantId::new("acme").unwrap();
        assert_eq!(
            up_stream(&t, Tier::Background).unwrap().as_str(),
            "tenant:acme:mobile_sync:up:t4"
        );
        assert_eq!(
            producer(&t, "p1", "0193-ab_c").unwrap().as_str(),
            "tenant:acme:mobile_sync:producer:p1:0193-ab_c"
        );
        assert_eq!(
            down_stream(&t).unwrap().as_str(),
            "tenant:acme:mobile_sync:down"
        );
        assert_eq!(
            device_down_stream(&t, "p1").unwrap().as_str(),
            "tenant:acme:mobile_sync:down:device:p1"
        );
        assert_eq!(
            device_rate(&t, "p1").unwrap().as_str(),
            "tenant:acme:rate_limiting:device:p1"
        );
        assert_eq!(database(Namespace::MobileSync), 11);
        assert_eq!(database(Namespace::RateLimiting), 4);
    }
}
