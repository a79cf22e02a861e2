//! Reading what the server stored, straight from Redis with a plain client: the up streams
//! `tenant:{t}:mobile_sync:up:{t:pN}:t{tier}` in database 11 (names as in the server's `keys`
//! module). "Exactly once" is checked here, never by asking the server.

use std::collections::HashMap;

use kryonix_server::store::redis::ItemMetadata;
use redis::aio::MultiplexedConnection;

use crate::{HarnessError, Result};

/// The database of the `mobile_sync` namespace.
pub const MOBILE_SYNC_DB: u8 = 11;

/// The up streams of one tenant and tier: one per partition (`…:up:{tenant:pN}:t{tier}`),
/// found with `SCAN … TYPE stream` as a backend finds them.
pub async fn up_stream_keys(
    con: &mut MultiplexedConnection,
    tenant: &str,
    tier: u8,
) -> Result<Vec<String>> {
    let pattern = format!("tenant:{tenant}:mobile_sync:up:*:t{tier}");
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .arg("TYPE")
            .arg("stream")
            .query_async(con)
            .await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// One stored item: its stream entry id and metadata.
#[derive(Debug, PartialEq, Eq)]
pub struct UpEntry {
    /// `{ms}-{seq}` as Redis gave it.
    pub entry_id: String,
    pub meta: ItemMetadata,
    pub payload: Vec<u8>,
}

impl UpEntry {
    /// The entry id as a comparable pair (milliseconds, sequence).
    pub fn position(&self) -> (u64, u64) {
        parse_entry_id(&self.entry_id)
    }
}

/// `1700000000000-3` → `(1700000000000, 3)`; unparsable parts read as 0.
pub fn parse_entry_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Every entry of a tier's up streams (all partitions), oldest first by entry id.
pub async fn up_entries(
    con: &mut MultiplexedConnection,
    tenant: &str,
    tier: u8,
) -> Result<Vec<UpEntry>> {
    let mut entries = Vec::new();
    for key in up_stream_keys(con, tenant, tier).await? {
        let raw: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(con)
            .await?;
        for (entry_id, flat) in raw {
            entries.push(entry(entry_id, flat)?);
        }
    }
    entries.sort_by_key(UpEntry::position);
    Ok(entries)
}

fn entry(entry_id: String, flat: Vec<Vec<u8>>) -> Result<UpEntry> {
    let fields: HashMap<&[u8], &[u8]> = flat
        .chunks(2)
        .filter_map(|pair| match pair {
            [name, value] => Some((name.as_slice(), value.as_slice())),
            _ => None,
        })
        .collect();
    let item = fields
        .get(b"item".as_slice())
        .ok_or_else(|| HarnessError::Http(format!("entry {entry_id} has no item field")))?;
    let meta: ItemMetadata = serde_json::from_slice(item)
        .map_err(|e| HarnessError::Http(format!("entry {entry_id}: {e}")))?;
    let payload = fields
        .get(b"payload".as_slice())
        .map(|p| p.to_vec())
        .unwrap_or_default();
    Ok(UpEntry {
        entry_id,
        meta,
        payload,
    })
}

/// `XLEN` of a tier's up streams, summed over the partitions.
pub async fn up_len(con: &mut MultiplexedConnection, tenant: &str, tier: u8) -> Result<u64> {
    let mut total = 0;
    for key in up_stream_keys(con, tenant, tier).await? {
        total += redis::cmd("XLEN").arg(&key).query_async::<u64>(con).await?;
    }
    Ok(total)
}

/// `XLEN` summed over the four tiers.
pub async fn up_len_all(con: &mut MultiplexedConnection, tenant: &str) -> Result<u64> {
    let mut total = 0;
    for tier in 1..=4 {
        total += up_len(con, tenant, tier).await?;
    }
    Ok(total)
}

/// Every entry of a tier's up streams on a Redis Cluster, read through a cluster connection (one
/// `XRANGE` per partition, each routed to the node that owns it), oldest first by entry id.
pub async fn cluster_up_entries(
    con: &mut redis::cluster_async::ClusterConnection,
    tenant: &str,
    partitions: u16,
    tier: u8,
) -> Result<Vec<UpEntry>> {
    let tenant_id =
        kryonix_protocol::TenantId::new(tenant).map_err(|e| HarnessError::Http(e.to_string()))?;
    let tier =
        kryonix_protocol::Tier::try_from(tier).map_err(|e| HarnessError::Http(e.to_string()))?;
    let keys = kryonix_server::keys::up_streams(&tenant_id, partitions, tier)
        .map_err(|e| HarnessError::Http(e.to_string()))?;
    let mut entries = Vec::new();
    for key in keys {
        let raw: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(key.as_str())
            .arg("-")
            .arg("+")
            .query_async(con)
            .await?;
        for (entry_id, flat) in raw {
            entries.push(entry(entry_id, flat)?);
        }
    }
    entries.sort_by_key(UpEntry::position);
    Ok(entries)
}
