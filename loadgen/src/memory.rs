//! The memory mode (`--memory`): what exactly-once costs the sync Redis once backends have
//! consumed the items.
//!
//! It pushes `--memory-items` items from `--memory-devices` devices (one producer each, seqs from
//! 1, spread over `--memory-tiers` tiers) through the server's own store code into the Redis
//! given with `--redis-url`, trims the up streams as a backend does after consuming them
//! (`XTRIM … MAXLEN 0`), and prints `used_memory` before, after the pushes and after the trim,
//! and what is left per device: the producers' sequence records. That figure should not depend
//! on the number of items. Everything it wrote is deleted at the end.
//!
//! Two things would blur a figure of a few hundred kilobytes, and are kept out of it. A
//! connection's buffers count in `used_memory`, so memory is read with no connection of the store
//! open. And Redis allocates some memory once, on the first use of each command (its per-command
//! latency histograms, tens of kilobytes each), so a small warm-up run under another tenant uses
//! every command first and is deleted before `before` is read.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kryonix_protocol::wire::{MAX_PUSH_ITEMS, Op};
use kryonix_protocol::{Encoding, Namespace, TenantId, Tier};
use kryonix_server::config::DEFAULT_PRODUCER_TTL;
use kryonix_server::keys;
use kryonix_server::store::redis::{client_for_db, parse_info};
use kryonix_server::store::{NewItem, PushOptions, RedisStore};
use redis::aio::MultiplexedConnection;

/// Largest run accepted: bounded, like every phase of the load generator.
pub const MAX_ITEMS: u64 = 10_000_000;
pub const MAX_DEVICES: u64 = 1_000_000;

/// Concurrent pushing tasks: enough to keep Redis busy, no more connections than the store's
/// push pool holds.
const TASKS: usize = 16;

/// What the memory mode was asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub items: u64,
    pub devices: u64,
    /// Tiers 1..=tiers are used, batch after batch.
    pub tiers: u8,
    pub batch: usize,
    pub payload_bytes: usize,
}

impl Plan {
    pub fn check(&self) -> Result<(), String> {
        if self.items == 0 || self.items > MAX_ITEMS {
            return Err(format!("--memory-items must be 1 to {MAX_ITEMS}"));
        }
        if self.devices == 0 || self.devices > MAX_DEVICES || self.devices > self.items {
            return Err(format!(
                "--memory-devices must be 1 to {MAX_DEVICES} and at most --memory-items"
            ));
        }
        if !(1..=4).contains(&self.tiers) {
            return Err("--memory-tiers must be 1 to 4".into());
        }
        if self.batch == 0 || self.batch > MAX_PUSH_ITEMS {
            return Err(format!("--batch must be 1 to {MAX_PUSH_ITEMS}"));
        }
        Ok(())
    }

    /// Items of device `index`: the total spread as evenly as it goes.
    fn items_of(&self, index: u64) -> u64 {
        self.items / self.devices + u64::from(index < self.items % self.devices)
    }
}

async fn info_field(
    con: &mut MultiplexedConnection,
    section: &str,
    field: &str,
) -> Result<u64, String> {
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query_async(con)
        .await
        .map_err(|e| e.to_string())?;
    parse_info(&text)
        .get(field)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("INFO {section} has no {field}"))
}

/// Waits (at most ten seconds) until Redis has closed every connection but `baseline` of them,
/// so their buffers are out of `used_memory`.
async fn settle_clients(con: &mut MultiplexedConnection, baseline: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while info_field(con, "clients", "connected_clients").await? > baseline {
        if Instant::now() > deadline {
            return Err("the store's connections did not close".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Pushes every item of one device, batch after batch, cycling through the tiers.
async fn push_device(
    store: &RedisStore,
    tenant: &TenantId,
    plan: &Plan,
    index: u64,
    payload: &[u8],
) -> Result<u64, String> {
    let device = device_id(index);
    let producer = uuid::Uuid::now_v7().to_string();
    let options = PushOptions {
        producer_ttl: DEFAULT_PRODUCER_TTL,
        min_replicas_acked: 0,
        wait_timeout: Duration::from_millis(500),
    };
    let mut next_seq = [1u64; 4];
    let total = plan.items_of(index);
    // Small enough batches that a device with few items still uses every tier it should.
    let batch = (plan.batch as u64).min(total.div_ceil(u64::from(plan.tiers)).max(1));
    let mut left = total;
    let mut stored = 0;
    let mut batch_number = 0usize;
    while left > 0 {
        let tier = Tier::ALL[batch_number % usize::from(plan.tiers)];
        let slot = usize::from(tier.number() - 1);
        let count = left.min(batch);
        let items: Vec<NewItem> = (0..count)
            .map(|i| NewItem {
                id: uuid::Uuid::now_v7().to_string(),
                seq: next_seq[slot] + i,
                tier,
                namespace: Namespace::UserCache,
                key: format!("item:{i}"),
                op: Op::Put,
                payload: payload.to_vec(),
                encoding: Encoding::Identity,
                created_at_ms: 0,
            })
            .collect();
        let outcome = store
            .push(tenant, &device, &producer, &items, &options)
            .await
            .map_err(|e| e.to_string())?;
        stored += outcome.stored.iter().filter(|new| **new).count() as u64;
        next_seq[slot] += count;
        left -= count;
        batch_number += 1;
    }
    Ok(stored)
}

/// A device id as short as a real one may be; the producer id is a UUID, as a device makes it.
fn device_id(index: u64) -> String {
    format!("device-{index}")
}

/// A short tenant id of its own per run, so the figures and the clean-up touch nothing else.
fn run_tenant() -> Result<TenantId, String> {
    let random = uuid::Uuid::now_v7().simple().to_string();
    let suffix = random.get(random.len() - 6..).unwrap_or("run");
    TenantId::new(format!("lgm-{suffix}")).map_err(|e| e.to_string())
}

/// Uses every command of the run once (two pushes of one producer, a duplicate among them, a
/// trim, the clean-up, a memory sample), then deletes what it wrote.
async fn warm_up(redis_url: &str, con: &mut MultiplexedConnection) -> Result<(), String> {
    let store = RedisStore::connect(redis_url, None)
        .await
        .map_err(|e| e.to_string())?;
    let tenant = run_tenant()?;
    let plan = Plan {
        items: 8,
        devices: 1,
        tiers: 4,
        batch: 2,
        payload_bytes: 16,
    };
    push_device(&store, &tenant, &plan, 0, b"warm-up").await?;
    drop(store);
    trim(con, &tenant).await?;
    sample_record_size(con, &tenant).await?;
    clean_up(con, &tenant).await?;
    Ok(())
}

/// `XTRIM … MAXLEN 0` on every up stream of the tenant, as a backend does with what it consumed.
async fn trim(con: &mut MultiplexedConnection, tenant: &TenantId) -> Result<(), String> {
    for tier in Tier::ALL {
        let stream = keys::up_stream(tenant, 0, tier).map_err(|e| e.to_string())?;
        let _: u64 = redis::cmd("XTRIM")
            .arg(stream.as_str())
            .arg("MAXLEN")
            .arg(0)
            .query_async(con)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Deletes what the run wrote: the up streams and the producer records of its tenant.
async fn clean_up(con: &mut MultiplexedConnection, tenant: &TenantId) -> Result<u64, String> {
    let mut deleted = 0u64;
    for tier in Tier::ALL {
        let stream = keys::up_stream(tenant, 0, tier).map_err(|e| e.to_string())?;
        deleted += redis::cmd("DEL")
            .arg(stream.as_str())
            .query_async::<u64>(con)
            .await
            .map_err(|e| e.to_string())?;
    }
    let pattern = format!("tenant:{}:mobile_sync:producer:*", tenant.as_str());
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(con)
            .await
            .map_err(|e| e.to_string())?;
        if !keys.is_empty() {
            deleted += redis::cmd("DEL")
                .arg(&keys)
                .query_async::<u64>(con)
                .await
                .map_err(|e| e.to_string())?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// Average `MEMORY USAGE` of up to 100 producer records: the record alone, without the expiry
/// entry Redis keeps beside it.
async fn sample_record_size(
    con: &mut MultiplexedConnection,
    tenant: &TenantId,
) -> Result<Option<f64>, String> {
    let pattern = format!("tenant:{}:mobile_sync:producer:*", tenant.as_str());
    let (_, keys): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg(&pattern)
        .arg("COUNT")
        .arg(1000)
        .query_async(con)
        .await
        .map_err(|e| e.to_string())?;
    let mut total = 0u64;
    let mut sampled = 0u64;
    for key in keys.iter().take(100) {
        let usage: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(con)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(bytes) = usage {
            total += bytes;
            sampled += 1;
        }
    }
    Ok((sampled > 0).then(|| total as f64 / sampled as f64))
}

pub async fn run(plan: &Plan, redis_url: &str) -> Result<(), String> {
    plan.check()?;
    let db11 = client_for_db(redis_url, 11).map_err(|e| e.to_string())?;
    let mut con = db11
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let clients = info_field(&mut con, "clients", "connected_clients").await?;
    warm_up(redis_url, &mut con).await?;
    settle_clients(&mut con, clients).await?;
    let tenant = run_tenant()?;
    let before = info_field(&mut con, "memory", "used_memory").await?;

    let store = RedisStore::connect(redis_url, None)
        .await
        .map_err(|e| e.to_string())?;
    let payload: Arc<[u8]> = (0..plan.payload_bytes)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
        .collect();
    let started = Instant::now();
    let next_device = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = store.clone();
            let tenant = tenant.clone();
            let plan = plan.clone();
            let payload = Arc::clone(&payload);
            let next_device = Arc::clone(&next_device);
            tokio::spawn(async move {
                let mut stored = 0u64;
                loop {
                    let index = next_device.fetch_add(1, Ordering::Relaxed) as u64;
                    if index >= plan.devices {
                        return Ok::<_, String>(stored);
                    }
                    stored += push_device(&store, &tenant, &plan, index, &payload).await?;
                }
            })
        })
        .collect();
    let mut stored = 0u64;
    let mut failure = None;
    for task in tasks {
        match task.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(n) => stored += n,
            Err(err) => failure = Some(err),
        }
    }
    let push_secs = started.elapsed().as_secs_f64();
    drop(store);
    let outcome = match failure {
        Some(err) => Err(err),
        None => measure(&mut con, &tenant, plan, clients, before, stored, push_secs).await,
    };
    let deleted = clean_up(&mut con, &tenant).await?;
    println!(
        "memory: deleted the run's {deleted} keys (tenant {})",
        tenant.as_str()
    );
    outcome
}

async fn measure(
    con: &mut MultiplexedConnection,
    tenant: &TenantId,
    plan: &Plan,
    clients: u64,
    before: u64,
    stored: u64,
    push_secs: f64,
) -> Result<(), String> {
    settle_clients(con, clients).await?;
    let pushed = info_field(con, "memory", "used_memory").await?;
    trim(con, tenant).await?;
    let trimmed = info_field(con, "memory", "used_memory").await?;
    let record = sample_record_size(con, tenant).await?;
    let per = |bytes: u64, n: u64| bytes as f64 / n as f64;
    let grown = trimmed.saturating_sub(before);
    println!(
        "memory: pushed {stored} of {} items from {} devices ({} tier(s), {} B payloads, batches of up to {}) in {push_secs:.1}s",
        plan.items, plan.devices, plan.tiers, plan.payload_bytes, plan.batch
    );
    println!(
        "memory: used_memory before {before} B, after the pushes {pushed} B ({:.0} B per item), after XTRIM MAXLEN 0 {trimmed} B",
        per(pushed.saturating_sub(before), stored.max(1))
    );
    let key = keys::producer(
        tenant,
        0,
        &device_id(plan.devices - 1),
        &uuid::Uuid::nil().to_string(),
    )
    .map_err(|e| e.to_string())?;
    println!(
        "memory: left after the trim: {grown} B = {:.0} B per device (target <= 200 B): the producer records, keys of up to {} B here; it does not grow with items",
        per(grown, plan.devices),
        key.as_str().len()
    );
    if let Some(record) = record {
        println!(
            "memory: MEMORY USAGE of one producer record (average of a sample): {record:.0} B (without its expiry entry)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(items: u64, devices: u64) -> Plan {
        Plan {
            items,
            devices,
            tiers: 4,
            batch: 100,
            payload_bytes: 512,
        }
    }

    #[test]
    fn items_are_spread_over_the_devices() {
        let p = plan(1003, 10);
        let per: Vec<u64> = (0..10).map(|i| p.items_of(i)).collect();
        assert_eq!(per.iter().sum::<u64>(), 1003);
        assert_eq!(per[0], 101);
        assert_eq!(per[9], 100);
    }

    #[test]
    fn plans_are_bounded() {
        assert!(plan(1_000_000, 1_000).check().is_ok());
        assert!(plan(0, 1).check().is_err());
        assert!(plan(10, 11).check().is_err());
        assert!(plan(MAX_ITEMS + 1, 1).check().is_err());
        let mut p = plan(10, 1);
        p.tiers = 5;
        assert!(p.check().is_err());
        p.tiers = 1;
        p.batch = 101;
        assert!(p.check().is_err());
    }
}
