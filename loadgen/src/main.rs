//! `kryonix-loadgen`: a bounded load generator for a running `kryonix-server` on this machine.
//!
//! Three measurements, each optional, each bounded in time:
//!
//! 1. **push**: N concurrent devices (default 100), each pushing batches of 100 items with
//!    512-byte payloads for a fixed time; reports items/s and p50/p95/p99 push latency. Each
//!    device is one producer numbering its items 1, 2, 3… as a device outbox does.
//! 2. **raw ceiling** (`--redis-url`): the same items XADDed straight into the same Redis by as
//!    many concurrent tasks, one pipeline per batch, for the same time; reports items/s and the
//!    ratio push / raw.
//! 3. **idle connections** (`--idle-connections`): opens that many keep-alive connections, makes
//!    one request on each, holds them, checks a sample still answers, and reports the server's
//!    resident memory (`--server-pid`) before and after.
//!
//! `--memory` runs instead a fourth measurement, alone: the sync Redis memory that exactly-once
//! leaves per device once the items are consumed (see [`memory`]).
//!
//! It only ever targets the loopback interface: a load generator pointed at someone else's host
//! by mistake is an attack.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use kryonix_protocol::wire::{Op, PushItem, PushRequest, PushResponse};
use kryonix_protocol::{Encoding, Namespace, TenantId, Tier, routes};
use kryonix_server::auth::{Scope, TokenKeys};
use kryonix_server::keys;
use kryonix_server::store::redis::ItemMetadata;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod memory;

// The same allocator as the server (see its main.rs): the generator shares the CPU with the
// server it measures, so it should spend as little as possible on allocation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Longest run accepted, per phase.
const MAX_DURATION_SECS: u64 = 300;

#[derive(Debug, Parser)]
#[command(
    name = "kryonix-loadgen",
    about = "Bounded load generator for kryonix-server (loopback only)"
)]
struct Args {
    /// Base URL of the server (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The server's signing secret, to mint one device token per simulated device (needed by
    /// the push phase).
    #[arg(long, env = "KRYONIX_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    #[arg(long, default_value = "loadgen")]
    tenant: String,
    /// Concurrent devices (0 skips the push phase).
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Items per push batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    #[arg(long, default_value_t = 512)]
    payload_bytes: usize,
    /// Tier of the pushed items.
    #[arg(long, default_value_t = 1)]
    tier: u8,
    /// Push batches per second per device (0: as fast as answers come back, i.e. saturation).
    #[arg(long, default_value_t = 0.0)]
    batches_per_sec: f64,
    /// Length of the push phase and of the raw phase, in seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Redis holding mobile_sync: measure the raw XADD ceiling there too (loopback only).
    #[arg(long)]
    redis_url: Option<String>,
    /// A Redis Cluster holding mobile_sync instead (its nodes, comma-separated; loopback only):
    /// the raw and store phases spread over the partitions of the server's key layout.
    #[arg(long, value_delimiter = ',')]
    redis_cluster: Vec<String>,
    /// Up-stream partitions per tenant, as the server is configured (default: 16 on a Cluster,
    /// 1 otherwise).
    #[arg(long)]
    up_partitions: Option<u16>,
    /// Repeat the push / raw / store phases this many times, interleaved, and print median
    /// ratios.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// With --redis-url: also push through the server's store code directly (no HTTP), to
    /// separate the push transaction's cost from the HTTP layer's. Its keys stay in Redis.
    #[arg(long)]
    store_ceiling: bool,
    /// Each round, push twice: with tokens that carry an id (the server checks its revocation,
    /// one EXISTS per request) and with tokens minted without one (nothing to check), and print
    /// the ratio — the cost of the revocation check on push throughput.
    #[arg(long)]
    compare_revocation_check: bool,
    /// Keep-alive connections to open and hold (0 skips the phase).
    #[arg(long, default_value_t = 0)]
    idle_connections: usize,
    /// How long to hold the idle connections, in seconds.
    #[arg(long, default_value_t = 5)]
    idle_hold_secs: u64,
    /// Server process id, to report its resident memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Run only the memory measurement against --redis-url: push --memory-items items from
    /// --memory-devices devices through the store's push, trim the up streams as a backend would
    /// (XTRIM MAXLEN 0), print used_memory before and after and the bytes left per device, then
    /// delete what it wrote. Uses --batch and --payload-bytes.
    #[arg(long)]
    memory: bool,
    #[arg(long, default_value_t = 1_000_000)]
    memory_items: u64,
    #[arg(long, default_value_t = 1_000)]
    memory_devices: u64,
    /// Tiers each device uses, batch after batch (1 to 4): a producer record holds one seq per
    /// tier used.
    #[arg(long, default_value_t = 4)]
    memory_tiers: u8,
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Host and port of `scheme://host:port/...`.
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit('@').next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h.to_owned(), p.parse().ok()?)
        }
        _ => (authority.to_owned(), 80),
    };
    Some((host, port))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn payload(size: usize, seed: usize) -> Vec<u8> {
    // Varied bytes (not one repeated byte) so compression and storage see realistic data.
    (0..size)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789{}:,\""[(i * 7 + seed) % 41])
        .collect()
}

fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())
}

#[derive(Debug, Default)]
struct PushTotals {
    items: u64,
    requests: u64,
    failed_requests: u64,
    not_stored_items: u64,
}

/// Empties the push phase's streams, when the generator knows where Redis is.
async fn clear_pushed(args: &Args) {
    if let (Some(target), Ok(tier)) = (Target::from_args(args), Tier::try_from(args.tier)) {
        clear_streams(
            &target,
            target.partitions(args),
            &[args.tenant.as_str()],
            tier,
        )
        .await;
    }
}

/// A device token without an id (`jti`), as another issuer might mint: the server has no
/// revocation to look up for it.
fn token_without_id(secret: &str, tenant: &TenantId, device: &str) -> Result<String, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = kryonix_server::auth::Claims {
        tenant: tenant.as_str().to_owned(),
        sub: device.to_owned(),
        scope: Scope::Device,
        iat: now,
        exp: now + 3600,
        jti: None,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

async fn push_phase(
    args: &Args,
    keys_: &TokenKeys,
    tenant: &TenantId,
    with_ids: bool,
) -> Result<f64, String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.devices)
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("{}{}", args.url.trim_end_matches('/'), routes::PUSH);
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.devices);
    for device in 0..args.devices {
        let name = format!("loadgen-{device}");
        let token = if with_ids {
            keys_
                .mint(tenant, &name, Scope::Device, Duration::from_secs(3600))
                .map_err(|e| e.to_string())?
        } else {
            token_without_id(
                args.jwt_secret.as_deref().unwrap_or_default(),
                tenant,
                &name,
            )?
        };
        let client = client.clone();
        let url = url.clone();
        // One request per device, reused: each batch only takes fresh item ids and the next
        // seqs, so the generator, which shares the CPU with the server it measures, copies no
        // payloads. A fresh producer per run: seqs start at 1 whatever earlier runs stored.
        let body = payload(args.payload_bytes, device);
        let mut request = PushRequest {
            producer: uuid::Uuid::now_v7().to_string(),
            items: (0..args.batch)
                .map(|i| PushItem {
                    id: String::new(),
                    seq: 0,
                    tier: args.tier,
                    namespace: Namespace::UserCache.name().to_owned(),
                    key: format!("item:{i}"),
                    op: Op::Put,
                    payload: body.clone(),
                    encoding: Encoding::Identity,
                    created_at_ms: 0,
                })
                .collect(),
        };
        let pace = args.batches_per_sec;
        let devices = args.devices;
        tasks.push(tokio::spawn(async move {
            // Paced devices push on a fixed schedule (open loop); unpaced ones as fast as the
            // server answers (closed loop, which measures saturation).
            // Devices are spread evenly over the period, as real devices are: started in step,
            // they would arrive as one burst per period and measure the burst, not the server.
            let mut ticker = (pace > 0.0).then(|| {
                let period = Duration::from_secs_f64(1.0 / pace);
                let offset = period.mul_f64(device as f64 / devices as f64);
                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            let mut hist = new_histogram()?;
            let mut totals = PushTotals::default();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                if let Some(ticker) = ticker.as_mut() {
                    ticker.tick().await;
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                // The protocol's own types, so the body is what a device sends by construction.
                for item in &mut request.items {
                    seq += 1;
                    item.id = uuid::Uuid::now_v7().to_string();
                    item.seq = seq;
                }
                let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
                let sent = Instant::now();
                let reply = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                totals.requests += 1;
                let ok = match reply {
                    Ok(r) if r.status().is_success() => {
                        let answer: Result<PushResponse, _> = r.json().await;
                        match answer {
                            Ok(a) => {
                                let stored =
                                    a.results.iter().filter(|r| r.outcome.is_stored()).count();
                                totals.items += stored as u64;
                                totals.not_stored_items += (a.results.len() - stored) as u64;
                                true
                            }
                            Err(_) => false,
                        }
                    }
                    _ => false,
                };
                if ok {
                    let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    hist.record(micros.max(1)).map_err(|e| e.to_string())?;
                } else {
                    totals.failed_requests += 1;
                }
            }
            Ok::<_, String>((hist, totals))
        }));
    }
    let mut hist = new_histogram()?;
    let mut totals = PushTotals::default();
    for task in tasks {
        let (h, t) = task.await.map_err(|e| e.to_string())??;
        hist.add(h).map_err(|e| e.to_string())?;
        totals.items += t.items;
        totals.requests += t.requests;
        totals.failed_requests += t.failed_requests;
        totals.not_stored_items += t.not_stored_items;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = totals.items as f64 / elapsed;
    println!(
        "push: devices={} batch={} payload={}B duration={elapsed:.1}s requests={} failed_requests={} items_stored={} items_not_stored={}",
        args.devices,
        args.batch,
        args.payload_bytes,
        totals.requests,
        totals.failed_requests,
        totals.items,
        totals.not_stored_items
    );
    println!(
        "push: {rate:.0} items/s  latency p50={:.1}ms p95={:.1}ms p99={:.1}ms max={:.1}ms",
        hist.value_at_quantile(0.50) as f64 / 1000.0,
        hist.value_at_quantile(0.95) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
    );
    Ok(rate)
}

/// The server's own store code (the exactly-once push transaction), called directly: no HTTP,
/// no JSON. Separates what the push costs Redis from what the HTTP layer costs.
async fn store_phase(args: &Args, target: &Target) -> Result<f64, String> {
    use kryonix_server::store::redis::RedisOptions;
    use kryonix_server::store::{NewItem, PushOptions, RedisStore};
    let options = RedisOptions {
        partitions: target.partitions(args),
        allow_evicting: false,
        ..RedisOptions::default()
    };
    let store = RedisStore::open(&target.topology(), options)
        .await
        .map_err(|e| e.to_string())?;
    let tenant = TenantId::new("loadgen-store").map_err(|e| e.to_string())?;
    let tier = Tier::try_from(args.tier).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.devices.max(1))
        .map(|device| {
            let store = store.clone();
            let tenant = tenant.clone();
            let batch = args.batch;
            let body = payload(args.payload_bytes, device);
            let device_id = format!("loadgen-{device}");
            let producer = uuid::Uuid::now_v7().to_string();
            tokio::spawn(async move {
                let options = PushOptions {
                    producer_ttl: kryonix_server::config::DEFAULT_PRODUCER_TTL,
                    min_replicas_acked: 0,
                    wait_timeout: Duration::from_millis(500),
                };
                let mut items = 0u64;
                let mut seq = 0u64;
                while Instant::now() < deadline {
                    let batch_items: Vec<NewItem> = (0..batch)
                        .map(|i| NewItem {
                            id: uuid::Uuid::now_v7().to_string(),
                            seq: seq + 1 + i as u64,
                            tier,
                            namespace: Namespace::UserCache,
                            key: format!("item:{i}"),
                            op: Op::Put,
                            payload: body.clone(),
                            encoding: Encoding::Identity,
                            created_at_ms: 0,
                        })
                        .collect();
                    seq += batch as u64;
                    let outcome = store
                        .push(&tenant, &device_id, &producer, &batch_items, &options)
                        .await
                        .map_err(|e| e.to_string())?;
                    items += outcome.stored.iter().filter(|new| **new).count() as u64;
                }
                Ok::<_, String>(items)
            })
        })
        .collect();
    let mut items = 0u64;
    for task in tasks {
        items += task.await.map_err(|e| e.to_string())??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = items as f64 / elapsed;
    println!(
        "store: {items} items through the push transaction (no HTTP) in {elapsed:.1}s by {} tasks: {rate:.0} items/s",
        args.devices.max(1)
    );
    Ok(rate)
}

/// Deletes the up streams of `tenants` in `tier`, every partition (as a backend consuming them
/// would trim them), so the rounds of a run do not fill the bench Redis. Best effort.
async fn clear_streams(target: &Target, partitions: u16, tenants: &[&str], tier: Tier) {
    let Ok(mut cons) = target.raw_connections().await else {
        return;
    };
    let Some(con) = cons.first_mut() else { return };
    for tenant in tenants {
        let Ok(tenant) = TenantId::new(*tenant) else {
            continue;
        };
        for p in 0..partitions {
            if let Ok(stream) = keys::up_stream(&tenant, p, tier) {
                let mut pipe = redis::pipe();
                pipe.cmd("DEL").arg(stream.as_str()).ignore();
                let _ = con.run(&pipe).await;
            }
        }
    }
}

/// Where the sync store is: one Redis, or a Cluster.
#[derive(Debug, Clone)]
enum Target {
    Standalone(String),
    Cluster(Vec<String>),
}

impl Target {
    fn from_args(args: &Args) -> Option<Self> {
        if !args.redis_cluster.is_empty() {
            return Some(Self::Cluster(args.redis_cluster.clone()));
        }
        args.redis_url.clone().map(Self::Standalone)
    }

    fn partitions(&self, args: &Args) -> u16 {
        args.up_partitions.unwrap_or(match self {
            Self::Standalone(_) => 1,
            Self::Cluster(_) => 16,
        })
    }

    fn topology(&self) -> kryonix_server::store::redis::Topology {
        use kryonix_server::store::redis::Topology;
        match self {
            Self::Standalone(url) => Topology::Standalone {
                cache_url: url.clone(),
                sync_url: None,
                groups: kryonix_server::store::redis::CacheGroups::default(),
            },
            Self::Cluster(seeds) => Topology::Cluster {
                seeds: seeds.clone(),
            },
        }
    }

    /// Connections for the raw phase: as many as the server's push pool on one Redis (a
    /// baseline squeezed through one socket would flatter the ratio); the cluster connection
    /// (one per node, routed by slot) on a Cluster.
    async fn raw_connections(&self) -> Result<Vec<RawCon>, String> {
        match self {
            Self::Standalone(url) => {
                let client = kryonix_server::store::redis::client_for_db(url, 11)
                    .map_err(|e| e.to_string())?;
                // 100 tasks queue their pipelines on these connections: the default 500 ms
                // response timeout is too short for the last in line on a busy machine.
                let config = redis::AsyncConnectionConfig::new()
                    .set_response_timeout(Some(Duration::from_secs(30)));
                let mut cons = Vec::with_capacity(kryonix_server::store::redis::PUSH_CONNECTIONS);
                for _ in 0..kryonix_server::store::redis::PUSH_CONNECTIONS {
                    cons.push(RawCon::Single(
                        client
                            .get_multiplexed_async_connection_with_config(&config)
                            .await
                            .map_err(|e| e.to_string())?,
                    ));
                }
                Ok(cons)
            }
            Self::Cluster(seeds) => {
                let client = redis::cluster::ClusterClientBuilder::new(seeds.clone())
                    .response_timeout(Duration::from_secs(30))
                    .build()
                    .map_err(|e| e.to_string())?;
                let con = client
                    .get_async_connection()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(vec![RawCon::Cluster(con)])
            }
        }
    }
}

/// A connection of the raw phase.
#[derive(Clone)]
enum RawCon {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl RawCon {
    async fn run(&mut self, pipe: &redis::Pipeline) -> Result<(), String> {
        match self {
            Self::Single(con) => pipe.query_async::<()>(con).await,
            Self::Cluster(con) => pipe.query_async::<()>(con).await,
        }
        .map_err(|e| e.to_string())
    }
}

async fn raw_phase(args: &Args, target: &Target) -> Result<f64, String> {
    let cons = target.raw_connections().await?;
    let partitions = target.partitions(args);
    let tenant = TenantId::new("loadgen-raw").map_err(|e| e.to_string())?;
    let tier = Tier::try_from(args.tier).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.devices.max(1))
        .map(|device| {
            let mut con = cons[device % cons.len()].clone();
            let batch = args.batch;
            let body = payload(args.payload_bytes, device);
            let device_id = format!("loadgen-{device}");
            // The stream the server would use for this device: its partition's.
            let stream = keys::up_stream(&tenant, keys::partition_of(&device_id, partitions), tier)
                .map(|k| k.as_str().to_owned())
                .map_err(|e| e.to_string());
            let producer = uuid::Uuid::now_v7().to_string();
            tokio::spawn(async move {
                let stream = stream?;
                let mut items = 0u64;
                while Instant::now() < deadline {
                    let mut pipe = redis::pipe();
                    for i in 0..batch {
                        // The same entry the server writes: item metadata and payload.
                        let meta = serde_json::to_string(&ItemMetadata {
                            id: uuid::Uuid::now_v7().to_string(),
                            device_id: device_id.clone(),
                            producer: producer.clone(),
                            seq: items + 1 + i as u64,
                            tier: tier.number(),
                            namespace: Namespace::UserCache.name().to_owned(),
                            key: format!("item:{i}"),
                            op: Op::Put,
                            encoding: Encoding::Identity,
                            created_at_ms: 0,
                        })
                        .map_err(|e| e.to_string())?;
                        pipe.cmd("XADD")
                            .arg(stream.as_str())
                            .arg("*")
                            .arg("item")
                            .arg(meta)
                            .arg("payload")
                            .arg(body.as_slice())
                            .ignore();
                    }
                    con.run(&pipe).await?;
                    items += batch as u64;
                }
                Ok::<_, String>(items)
            })
        })
        .collect();
    let mut items = 0u64;
    for task in tasks {
        items += task.await.map_err(|e| e.to_string())??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = items as f64 / elapsed;
    println!(
        "raw: {items} items XADDed in {elapsed:.1}s by {} pipelined tasks: {rate:.0} items/s",
        args.devices.max(1)
    );
    // Leave the bench Redis as it was.
    clear_streams(target, partitions, &[tenant.as_str()], tier).await;
    Ok(rate)
}

async fn open_idle(host: &str, port: u16) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    request_health(&mut stream, host).await?;
    Ok(stream)
}

/// One keep-alive `GET /healthz`; reads the whole small answer.
async fn request_health(stream: &mut TcpStream, host: &str) -> Result<(), String> {
    let request = format!(
        "GET {} HTTP/1.1\r\nhost: {host}\r\nconnection: keep-alive\r\n\r\n",
        routes::HEALTHZ
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(15).any(|w| w == b"{\"status\":\"ok\"}") {
            return Ok(());
        }
    }
}

async fn idle_phase(args: &Args, host: &str, port: u16) -> Result<(), String> {
    let before = args.server_pid.and_then(rss_kib);
    let started = Instant::now();
    let mut streams = Vec::with_capacity(args.idle_connections);
    let mut failures = 0usize;
    // Open in waves so the accept queue is not overrun.
    for wave in (0..args.idle_connections).collect::<Vec<_>>().chunks(500) {
        let opened = futures_join(
            wave.iter()
                .map(|_| {
                    let host = host.to_owned();
                    async move { open_idle(&host, port).await }
                })
                .collect(),
        )
        .await;
        for result in opened {
            match result {
                Ok(s) => streams.push(s),
                Err(_) => failures += 1,
            }
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    let after_open = args.server_pid.and_then(rss_kib);
    tokio::time::sleep(Duration::from_secs(args.idle_hold_secs)).await;
    // The connections must still be usable, not silently dropped.
    let step = (streams.len() / 100).max(1);
    let mut sampled = 0;
    let mut alive = 0;
    for stream in streams.iter_mut().step_by(step) {
        sampled += 1;
        if request_health(stream, host).await.is_ok() {
            alive += 1;
        }
    }
    let after_hold = args.server_pid.and_then(rss_kib);
    println!(
        "idle: opened {} keep-alive connections ({failures} failed) in {open_secs:.1}s; after {}s, {alive}/{sampled} sampled still answer",
        streams.len(),
        args.idle_hold_secs
    );
    if let (Some(b), Some(o), Some(h)) = (before, after_open, after_hold) {
        let per_conn = (o.saturating_sub(b)) as f64 * 1024.0 / streams.len().max(1) as f64;
        println!(
            "idle: server RSS {:.1} MiB before, {:.1} MiB with the connections open, {:.1} MiB after the hold (~{per_conn:.0} B per connection)",
            b as f64 / 1024.0,
            o as f64 / 1024.0,
            h as f64 / 1024.0
        );
    }
    Ok(())
}

/// Awaits all futures concurrently (a tiny join_all without an extra dependency).
async fn futures_join<T: Send + 'static>(
    futures: Vec<impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(v) = handle.await {
            out.push(v);
        }
    }
    out
}

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

async fn run(args: Args) -> Result<(), String> {
    if args.rounds == 0 || args.rounds > 20 {
        return Err("--rounds must be 1 to 20".into());
    }
    if !(0.0..=1000.0).contains(&args.batches_per_sec) {
        return Err("--batches-per-sec must be 0 to 1000".into());
    }
    if args.duration_secs == 0 || args.duration_secs > MAX_DURATION_SECS {
        return Err(format!("--duration-secs must be 1 to {MAX_DURATION_SECS}"));
    }
    if args.idle_hold_secs > MAX_DURATION_SECS {
        return Err(format!(
            "--idle-hold-secs must be at most {MAX_DURATION_SECS}"
        ));
    }
    let (host, port) = host_port(&args.url).ok_or("cannot parse --url")?;
    if !is_loopback_host(&host) {
        return Err(format!(
            "refusing to load {host}: only loopback targets are allowed"
        ));
    }
    for redis_url in args.redis_url.iter().chain(&args.redis_cluster) {
        let (redis_host, _) = host_port(redis_url).ok_or("cannot parse --redis-url")?;
        if !is_loopback_host(&redis_host) {
            return Err(format!(
                "refusing to load {redis_host}: only loopback targets are allowed"
            ));
        }
    }
    if args.memory {
        let redis_url = args
            .redis_url
            .as_deref()
            .ok_or("--memory needs --redis-url")?;
        let plan = memory::Plan {
            items: args.memory_items,
            devices: args.memory_devices,
            tiers: args.memory_tiers,
            batch: args.batch,
            payload_bytes: args.payload_bytes,
        };
        return memory::run(&plan, redis_url).await;
    }
    let tenant = TenantId::new(args.tenant.clone()).map_err(|e| e.to_string())?;
    let secret = match (&args.jwt_secret, args.devices) {
        (Some(secret), _) => secret.clone(),
        (None, 0) => String::new(),
        (None, _) => return Err("the push phase needs --jwt-secret (or KRYONIX_JWT_SECRET)".into()),
    };
    let keys_ = TokenKeys::new(secret.as_bytes(), Duration::from_secs(30));
    // Rounds interleave the phases, so a neighbour's load on a shared machine hits them alike;
    // the medians of the per-round ratios are the figures to compare.
    let mut push_ratios = Vec::new();
    let mut store_ratios = Vec::new();
    let mut check_ratios = Vec::new();
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            println!("-- round {round}/{}", args.rounds);
        }
        let mut push_rate = None;
        if args.devices > 0 {
            if args.compare_revocation_check {
                // Alternate which goes first, so neither always runs on the fuller Redis.
                // Each phase starts on empty streams (with --redis-url), so neither pays for
                // the other's data.
                let unchecked_first = round % 2 == 0;
                let mut unchecked = None;
                if unchecked_first {
                    println!("(tokens without an id: no revocation lookup)");
                    unchecked = Some(push_phase(&args, &keys_, &tenant, false).await?);
                    clear_pushed(&args).await;
                }
                let checked = push_phase(&args, &keys_, &tenant, true).await?;
                if !unchecked_first {
                    clear_pushed(&args).await;
                    println!("(tokens without an id: no revocation lookup)");
                    unchecked = Some(push_phase(&args, &keys_, &tenant, false).await?);
                }
                if let Some(unchecked) = unchecked {
                    println!(
                        "ratio: push with / without the revocation check = {:.3}",
                        checked / unchecked
                    );
                    check_ratios.push(checked / unchecked);
                }
                push_rate = Some(checked);
            } else {
                push_rate = Some(push_phase(&args, &keys_, &tenant, true).await?);
            }
        }
        if let Some(target) = Target::from_args(&args) {
            let raw = raw_phase(&args, &target).await?;
            if let Some(push) = push_rate {
                println!("ratio: push / raw = {:.2}", push / raw);
                push_ratios.push(push / raw);
            }
            if args.store_ceiling {
                let store = store_phase(&args, &target).await?;
                println!("ratio: store push / raw = {:.2}", store / raw);
                store_ratios.push(store / raw);
            }
            if let Ok(tier) = Tier::try_from(args.tier) {
                let tenants = [args.tenant.as_str(), "loadgen-store"];
                clear_streams(&target, target.partitions(&args), &tenants, tier).await;
            }
        }
    }
    if args.rounds > 1 {
        if let Some(m) = median(&mut push_ratios) {
            println!("median over {} rounds: push / raw = {m:.2}", args.rounds);
        }
        if let Some(m) = median(&mut check_ratios) {
            println!(
                "median over {} rounds: push with / without the revocation check = {m:.3}",
                args.rounds
            );
        }
        if let Some(m) = median(&mut store_ratios) {
            println!(
                "median over {} rounds: store push / raw = {m:.2}",
                args.rounds
            );
        }
    }
    if args.idle_connections > 0 {
        idle_phase(&args, &host, port).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kryonix-loadgen: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_accepted() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1/x",
            "redis://127.0.0.1:6379/0",
            "http://[::1]:80",
        ] {
            let (host, _) = host_port(ok).unwrap();
            assert!(is_loopback_host(&host), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8080",
            "http://example.com",
            "redis://192.168.1.2:6379",
        ] {
            let (host, _) = host_port(bad).unwrap();
            assert!(!is_loopback_host(&host), "{bad}");
        }
        assert_eq!(host_port("http://127.0.0.1:8080/v1").unwrap().1, 8080);
    }
}
