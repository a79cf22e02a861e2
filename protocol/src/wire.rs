//! JSON bodies of the HTTP API (`docs/sync-protocol.md` describes each one in prose).
//!
//! Binary values travel as standard base64 beside an explicit [`Encoding`] tag, so a compressed
//! value is never mistaken for a plain one. Unknown fields are ignored on input, which lets a
//! newer peer add optional fields without breaking an older one.
//!
//! Fields the server must validate item by item (tier, namespace, key) are plain strings and
//! numbers here: one bad item is rejected on its own while the rest of its batch is stored.

use serde::{Deserialize, Serialize};

use crate::profile::Encoding;

/// Most items in one push batch: the device never sends more, and the server refuses more by
/// default.
pub const MAX_PUSH_ITEMS: usize = 100;
/// Largest item payload or cached value, in bytes, that the server accepts by default; the
/// device refuses a larger payload at `enqueue`, where the app can still act on it, rather than
/// let the server dead-letter it later.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;
/// Most changes in one pull page.
pub const MAX_PULL_LIMIT: usize = 1000;

/// Serde helpers for `Vec<u8>` as standard base64.
pub mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format_args!("invalid base64: {e}")))
    }
}

/// What an item or change does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Set the key to the payload.
    Put,
    /// Remove the key (payload empty).
    Delete,
    /// An append-only event; the key names the event stream, nothing is overwritten.
    Event,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Delete => "delete",
            Self::Event => "event",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "put" => Some(Self::Put),
            "delete" => Some(Self::Delete),
            "event" => Some(Self::Event),
            _ => None,
        }
    }
}

/// Longest producer id the server accepts.
pub const MAX_PRODUCER_LEN: usize = 64;

/// `POST /v1/sync/push` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    /// The device outbox that numbered these items: a random id made with its database (and
    /// made anew when the outbox finds its database was restored from a backup). 1 to
    /// [`MAX_PRODUCER_LEN`] characters of `A-Z a-z 0-9 - _`.
    pub producer: String,
    pub items: Vec<PushItem>,
}

/// One queued mutation uploaded by a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushItem {
    /// Client-made unique id (a UUIDv7). Stored with the item for backends' own idempotency;
    /// exactly-once storage itself rests on `seq`.
    pub id: String,
    /// Position of the item in its producer's tier, from 1, strictly increasing in the order the
    /// items were queued. The server stores an item only if its `seq` is above the last one it
    /// stored for the same producer and tier; anything at or below answers `duplicate`.
    pub seq: u64,
    /// Priority tier, 1 to 4.
    pub tier: u8,
    pub namespace: String,
    pub key: String,
    pub op: Op,
    #[serde(default, with = "base64_bytes")]
    pub payload: Vec<u8>,
    #[serde(default)]
    pub encoding: Encoding,
    /// When the app enqueued the item (device clock, milliseconds since the Unix epoch).
    pub created_at_ms: i64,
}

/// `POST /v1/sync/push` answer: one result per item, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushResponse {
    pub results: Vec<PushResult>,
    /// The last sequence the server has stored for the producer, per tier (index 0 is tier 1),
    /// after this push.
    #[serde(default)]
    pub last_seq: [u64; 4],
}

/// `POST /v1/sync/hello` body: sent once per session, before the first push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloRequest {
    pub producer: String,
}

/// `POST /v1/sync/hello` answer: where the server stands with this producer. A device that finds
/// the server ahead of the sequences it had assigned when it opened its database was restored
/// from an older copy (see `docs/sync-protocol.md`, "Restored databases").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResponse {
    pub producer: String,
    /// The last sequence stored per tier (index 0 is tier 1); 0 when none (or forgotten after
    /// the producer's idle time).
    pub last_seq: [u64; 4],
    /// The tenant of the token the hello came with, so a device opened for another tenant
    /// finds out before it uploads anything. Absent from servers older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The largest payload this server accepts (its `max_value_bytes`), so the device refuses
    /// larger ones at `enqueue` instead of having them dead-lettered after the upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_value_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushResult {
    pub id: String,
    #[serde(flatten)]
    pub outcome: ItemOutcome,
}

/// What the server did with one pushed item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ItemOutcome {
    /// Stored now.
    Accepted,
    /// Stored earlier (same id): the same outcome as `accepted`.
    Duplicate,
    /// Refused for good; retrying the same item cannot succeed.
    Rejected { code: String, reason: String },
}

impl ItemOutcome {
    /// Whether the device may forget the item.
    pub fn is_stored(&self) -> bool {
        matches!(self, Self::Accepted | Self::Duplicate)
    }
}

/// `GET /v1/sync/pull` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResponse {
    pub changes: Vec<Change>,
    /// Opaque: send it back unchanged as `?cursor=` to get what follows.
    pub cursor: String,
    /// More changes are waiting after this page.
    pub has_more: bool,
}

/// One downstream change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Server-assigned, unique, increasing within its stream: lets a device apply a page twice
    /// without applying a change twice.
    pub id: String,
    pub namespace: String,
    pub key: String,
    pub op: Op,
    #[serde(default, with = "base64_bytes")]
    pub value: Vec<u8>,
    #[serde(default)]
    pub encoding: Encoding,
    /// How long the device should cache the value; absent means its adaptive TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    pub published_at_ms: i64,
}

/// `POST /v1/tokens/revoke` body (service token): the token itself, or its id and expiry. A
/// service revokes only its own tenant's tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeRequest {
    /// The token to revoke (signed by this server's secret; it may have expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Or: its id (`jti`)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// …and its expiry, Unix seconds, until when the revocation is kept (default: the server's
    /// longest token lifetime from now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// `POST /v1/tokens/revoke` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeResponse {
    pub jti: String,
    /// Until when the revocation is kept, Unix seconds.
    pub revoked_until: u64,
}

/// `POST /v1/publish` body (service token): changes for every device of the tenant, or for one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRequest {
    /// Only this device receives the changes; absent means every device of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    pub changes: Vec<PublishChange>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishChange {
    pub namespace: String,
    pub key: String,
    pub op: Op,
    #[serde(default, with = "base64_bytes")]
    pub value: Vec<u8>,
    #[serde(default)]
    pub encoding: Encoding,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResponse {
    /// Stream ids of the published changes, in request order.
    pub ids: Vec<String>,
}

/// `PUT /v1/cache/{namespace}/{key}` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachePut {
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
    #[serde(default)]
    pub encoding: Encoding,
    /// Absent: the adaptive TTL for the device profile header, or the namespace default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// `GET /v1/cache/{namespace}/{key}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub key: String,
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
    #[serde(default)]
    pub encoding: Encoding,
    /// Remaining lifetime; absent for a value that does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// `POST /v1/cache/{namespace}/_mget` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiGetRequest {
    pub keys: Vec<String>,
}

/// Multi-get answer: one slot per requested key, in request order, `null` for a miss.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiGetResponse {
    pub entries: Vec<Option<CacheEntry>>,
}

/// Every error answer: `{ "error": { "code": ..., "message": ... } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable (see [`error_code`]).
    pub code: String,
    /// For humans; never contains internals.
    pub message: String,
    /// With `upgrade_required`: the oldest protocol version the server serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol: Option<u32>,
    /// With `upgrade_required`: the oldest app version the server serves, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_app_version: Option<String>,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.to_owned(),
                message: message.into(),
                min_protocol: None,
                min_app_version: None,
            },
        }
    }
}

/// The error codes of [`ErrorBody`] and of rejected items, with their HTTP status.
pub mod error_code {
    /// 400: the body or query does not parse, or has the wrong types.
    pub const MALFORMED: &str = "malformed";
    /// 401: no token, a forged one, or an expired one.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// 403: a valid token that may not do this (wrong scope, read-only tenant, namespace not allowed).
    pub const FORBIDDEN: &str = "forbidden";
    /// 404: no such route or cache entry.
    pub const NOT_FOUND: &str = "not_found";
    /// 405: the route exists, but not with this method.
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// 413: body, batch or value over its limit.
    pub const TOO_LARGE: &str = "too_large";
    /// 422: a key or namespace that breaks the key rules.
    pub const INVALID_KEY: &str = "invalid_key";
    /// 422: not one of the sixteen namespaces.
    pub const UNKNOWN_NAMESPACE: &str = "unknown_namespace";
    /// 422 (item): tier not 1 to 4.
    pub const INVALID_TIER: &str = "invalid_tier";
    /// 422 (item): id empty or too long.
    pub const INVALID_ID: &str = "invalid_id";
    /// 422 (item): `seq` is 0, or not above the previous item of the same tier in the batch.
    pub const INVALID_SEQ: &str = "invalid_seq";
    /// 429: rate limit; `Retry-After` says when to come back.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// 503: Redis is short of memory; lower tiers are refused first. `Retry-After` set.
    pub const BACKPRESSURE: &str = "backpressure";
    /// 503: the store is unreachable.
    pub const UNAVAILABLE: &str = "unavailable";
    /// 400: the client speaks a newer protocol version than this server.
    pub const UNSUPPORTED_PROTOCOL: &str = "unsupported_protocol";
    /// 426: the client's protocol or app version is older than the server's minimum; the body
    /// carries `min_protocol` and, when the server has one, `min_app_version`. The device stops
    /// syncing (keeping its items) until the app is updated.
    pub const UPGRADE_REQUIRED: &str = "upgrade_required";
    /// 500: a bug; details are only in the server log.
    pub const INTERNAL: &str = "internal";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> PushItem {
        PushItem {
            id: "01932c07-7a6e-7d3c-9f4e-2b1a0c9d8e7f".into(),
            seq: 42,
            tier: 1,
            namespace: "user_cache".into(),
            key: "profile:42".into(),
            op: Op::Put,
            payload: b"{\"name\":\"Ada\"}".to_vec(),
            encoding: Encoding::Identity,
            created_at_ms: 1_764_000_000_000,
        }
    }

    #[test]
    fn push_request_shape() {
        insta::assert_json_snapshot!(PushRequest {
            producer: "0193a1f0-7c2e-7b61-9d1a-3f4e5a6b7c8d".into(),
            items: vec![item()]
        });
    }

    #[test]
    fn hello_shapes() {
        insta::assert_json_snapshot!(HelloRequest {
            producer: "0193a1f0-7c2e-7b61-9d1a-3f4e5a6b7c8d".into(),
        });
        insta::assert_json_snapshot!(HelloResponse {
            producer: "0193a1f0-7c2e-7b61-9d1a-3f4e5a6b7c8d".into(),
            last_seq: [80, 0, 12, 0],
            tenant: Some("acme".into()),
            max_value_bytes: Some(262_144),
        });
        // An older server's answer, without the tenant, still reads.
        let old: HelloResponse =
            serde_json::from_str(r#"{"producer":"p","last_seq":[1,2,3,4]}"#).unwrap();
        assert_eq!(old.tenant, None);
    }

    #[test]
    fn push_response_shape() {
        let response = PushResponse {
            results: vec![
                PushResult {
                    id: "a".into(),
                    outcome: ItemOutcome::Accepted,
                },
                PushResult {
                    id: "b".into(),
                    outcome: ItemOutcome::Duplicate,
                },
                PushResult {
                    id: "c".into(),
                    outcome: ItemOutcome::Rejected {
                        code: error_code::UNKNOWN_NAMESPACE.into(),
                        reason: "unknown namespace \"nope\"".into(),
                    },
                },
            ],
            last_seq: [7, 0, 0, 0],
        };
        insta::assert_json_snapshot!(response);
        let back: PushResponse =
            serde_json::from_str(&serde_json::to_string(&response).unwrap()).unwrap();
        assert_eq!(back, response);
    }

    #[test]
    fn pull_response_shape() {
        insta::assert_json_snapshot!(PullResponse {
            changes: vec![Change {
                id: "1764000000000-0".into(),
                namespace: "tenant_config".into(),
                key: "flags".into(),
                op: Op::Put,
                value: b"dark-mode".to_vec(),
                encoding: Encoding::Identity,
                ttl_secs: Some(7200),
                published_at_ms: 1_764_000_000_000,
            }],
            cursor: "opaque-cursor".into(),
            has_more: false,
        });
    }

    #[test]
    fn publish_and_cache_shapes() {
        insta::assert_json_snapshot!(PublishRequest {
            device_id: Some("device-7".into()),
            changes: vec![PublishChange {
                namespace: "user_cache".into(),
                key: "profile:42".into(),
                op: Op::Delete,
                value: vec![],
                encoding: Encoding::Identity,
                ttl_secs: None,
            }],
        });
        insta::assert_json_snapshot!(CachePut {
            value: vec![0, 1, 2, 255],
            encoding: Encoding::Lz4,
            ttl_secs: Some(60)
        });
        insta::assert_json_snapshot!(MultiGetResponse {
            entries: vec![
                Some(CacheEntry {
                    key: "a".into(),
                    value: b"x".to_vec(),
                    encoding: Encoding::Gzip,
                    ttl_secs: Some(30)
                }),
                None,
            ],
        });
    }

    #[test]
    fn error_body_shape() {
        insta::assert_json_snapshot!(ErrorBody::new(error_code::RATE_LIMITED, "slow down"));
        let mut upgrade = ErrorBody::new(error_code::UPGRADE_REQUIRED, "update the app");
        upgrade.error.min_protocol = Some(2);
        upgrade.error.min_app_version = Some("4.2.0".into());
        insta::assert_json_snapshot!("upgrade_required", upgrade);
    }

    #[test]
    fn bad_base64_and_unknown_fields() {
        let bad = r#"{"producer":"p","items":[{"id":"a","seq":1,"tier":1,"namespace":"sessions","key":"k","op":"put","payload":"!!!","created_at_ms":0}]}"#;
        let err = serde_json::from_str::<PushRequest>(bad).unwrap_err();
        assert!(err.to_string().contains("invalid base64"), "{err}");
        let extra = r#"{"producer":"p","items":[],"future_field":true}"#;
        assert_eq!(
            serde_json::from_str::<PushRequest>(extra)
                .unwrap()
                .items
                .len(),
            0
        );
        let bad_op = r#"{"producer":"p","items":[{"id":"a","seq":1,"tier":1,"namespace":"sessions","key":"k","op":"merge","created_at_ms":0}]}"#;
        assert!(serde_json::from_str::<PushRequest>(bad_op).is_err());
        // Version 1 bodies (no producer, no seq) do not parse as version 2.
        let v1 = r#"{"items":[{"id":"a","tier":1,"namespace":"sessions","key":"k","op":"put","created_at_ms":0}]}"#;
        assert!(serde_json::from_str::<PushRequest>(v1).is_err());
    }
}
