//! What the Redis store writes into Redis and how it reads it back: the `item` field of an
//! up-stream entry, down-stream entries as [`Change`]s, stream entry ids as comparable pairs, and
//! cached values behind their one-byte encoding tag. These are storage formats that backends
//! read too (`docs/sync-protocol.md`), so the tests pin them.

use std::collections::HashMap;

use kryonix_protocol::Encoding;
use kryonix_protocol::wire::{Change, Op};

use crate::store::{Cached, NewItem, StoreError};

/// The `item` field of an up stream entry (JSON): everything about the item but its payload,
/// which is the entry's `payload` field, raw bytes. `producer` and `seq` say where the item
/// stands in its device's sequence; `id` stays for backends' own idempotency.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ItemMetadata {
    pub id: String,
    pub device_id: String,
    pub producer: String,
    pub seq: u64,
    pub tier: u8,
    pub namespace: String,
    pub key: String,
    pub op: Op,
    pub encoding: Encoding,
    pub created_at_ms: i64,
}

/// Borrowing twin of [`ItemMetadata`], to serialize without copying.
#[derive(serde::Serialize)]
struct ItemMetadataRef<'a> {
    id: &'a str,
    device_id: &'a str,
    producer: &'a str,
    seq: u64,
    tier: u8,
    namespace: &'a str,
    key: &'a str,
    op: Op,
    encoding: Encoding,
    created_at_ms: i64,
}

pub(super) fn item_metadata(
    item: &NewItem,
    device: &str,
    producer: &str,
) -> Result<String, StoreError> {
    serde_json::to_string(&ItemMetadataRef {
        id: &item.id,
        device_id: device,
        producer,
        seq: item.seq,
        tier: item.tier.number(),
        namespace: item.namespace.name(),
        key: &item.key,
        op: item.op,
        encoding: item.encoding,
        created_at_ms: item.created_at_ms,
    })
    .map_err(|e| StoreError::Internal(format!("encoding item metadata: {e}")))
}

/// A stream entry id as a comparable pair.
pub(super) fn parse_entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

pub(super) type RawEntry = (String, Vec<Vec<u8>>);

fn field<'a>(fields: &'a HashMap<&str, &'a [u8]>, name: &str) -> Result<&'a [u8], StoreError> {
    fields
        .get(name)
        .copied()
        .ok_or_else(|| StoreError::Internal(format!("down stream entry without {name}")))
}

fn text(bytes: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| StoreError::Internal("down stream field is not UTF-8".into()))
}

/// Turns a down stream entry back into a [`Change`].
pub(super) fn change_from_entry(prefix: &str, (id, flat): RawEntry) -> Result<Change, StoreError> {
    let fields: HashMap<&str, &[u8]> = flat
        .chunks(2)
        .filter_map(|pair| match pair {
            [name, value] => std::str::from_utf8(name)
                .ok()
                .map(|n| (n, value.as_slice())),
            _ => None,
        })
        .collect();
    let op_text = text(field(&fields, "op")?)?;
    let op = Op::parse(&op_text)
        .ok_or_else(|| StoreError::Internal(format!("unknown op {op_text:?}")))?;
    let encoding = text(field(&fields, "encoding")?)?
        .parse::<Encoding>()
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    let number = |name: &str| -> Result<Option<i64>, StoreError> {
        match fields.get(name) {
            None => Ok(None),
            Some(v) => text(v)?
                .parse()
                .map(Some)
                .map_err(|_| StoreError::Internal(format!("{name} is not a number"))),
        }
    };
    Ok(Change {
        id: format!("{prefix}/{id}"),
        namespace: text(field(&fields, "namespace")?)?,
        key: text(field(&fields, "key")?)?,
        op,
        value: field(&fields, "value")?.to_vec(),
        encoding,
        ttl_secs: number("ttl_secs")?.and_then(|v| u64::try_from(v).ok()),
        published_at_ms: number("published_at_ms")?.unwrap_or(0),
    })
}

/// A cached value is stored as one encoding tag byte followed by the value.
pub(super) fn decode_cached(bytes: &[u8], pttl_ms: i64) -> Result<Cached, StoreError> {
    let (&tag, value) = bytes
        .split_first()
        .ok_or_else(|| StoreError::Internal("empty cache value".into()))?;
    let encoding = Encoding::from_tag(tag)
        .ok_or_else(|| StoreError::Internal(format!("cache value with unknown tag {tag}")))?;
    Ok(Cached {
        value: value.to_vec(),
        encoding,
        // -1: no expiry. Round up so a value with 300 ms left does not report 0.
        ttl_secs: u64::try_from(pttl_ms).ok().map(|ms| ms.div_ceil(1000)),
    })
}

#[cfg(test)]
mod tests {
    use kryonix_protocol::Namespace;

    use super::*;

    /// The `item` field is a storage format backends parse: pin it byte for byte.
    #[test]
    fn item_metadata_format_is_stable() {
        let item = NewItem {
            id: "0193a1f0-7c2e-7b61-9d1a-3f4e5a6b7c8d".into(),
            seq: 42,
            tier: kryonix_protocol::Tier::Application,
            namespace: Namespace::FileMetadata,
            key: "doc:7".into(),
            op: Op::Delete,
            payload: b"ignored".to_vec(),
            encoding: Encoding::Gzip,
            created_at_ms: 1_764_000_000_000,
        };
        let producer = "0193a1f0-0000-7b61-9d1a-3f4e5a6b7c8d";
        assert_eq!(
            item_metadata(&item, "phone-1", producer).unwrap(),
            r#"{"id":"0193a1f0-7c2e-7b61-9d1a-3f4e5a6b7c8d","device_id":"phone-1","producer":"0193a1f0-0000-7b61-9d1a-3f4e5a6b7c8d","seq":42,"tier":3,"namespace":"file_metadata","key":"doc:7","op":"delete","encoding":"gzip","created_at_ms":1764000000000}"#
        );
        let back: ItemMetadata =
            serde_json::from_str(&item_metadata(&item, "phone-1", producer).unwrap()).unwrap();
        assert_eq!(back.tier, 3);
        assert_eq!(back.seq, 42);
        assert_eq!(back.producer, producer);
        assert_eq!(back.op, Op::Delete);
    }

    #[test]
    fn entry_ids_order_numerically() {
        assert!(parse_entry_id("9-1") < parse_entry_id("10-0"));
        assert!(parse_entry_id("10-2") > parse_entry_id("10-1"));
        assert_eq!(parse_entry_id("x-1"), None);
        assert_eq!(parse_entry_id("10"), None);
    }

    #[test]
    fn cached_values_carry_their_tag() {
        let c = decode_cached(&[1, b'x'], 1500).unwrap();
        assert_eq!(c.encoding, Encoding::Gzip);
        assert_eq!(c.value, b"x");
        assert_eq!(c.ttl_secs, Some(2));
        assert_eq!(decode_cached(&[0], -1).unwrap().ttl_secs, None);
        assert!(decode_cached(&[], 10).is_err());
        assert!(decode_cached(&[9, 1], 10).is_err());
    }
}
