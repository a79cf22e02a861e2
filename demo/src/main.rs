//! `kryonix-demo`: the whole product in one command.
//!
//! Starts `kryonix-server` in-process (on its embedded store, or on Redis with `--redis-url`),
//! then three simulated devices — a phone on slow cellular, a tablet on Wi-Fi, a desktop on a
//! wired link — each with its own agent and SQLite file. They enqueue across the four tiers, go
//! offline, keep writing, come back, and drain. A live display shows each device's queue per
//! tier. At the end the demo reads the server's store directly (not through the API) and checks
//! that every item each device was handed is stored exactly once, per tier, then prints how long
//! tier 1 took to drain after the reconnect.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use kryonix_core::outbox::TierSet;
use kryonix_core::sync::StaticToken;
use kryonix_core::{Agent, AgentConfig, ItemId};
use kryonix_demo::DemoServer;
use kryonix_protocol::wire::Op;
use kryonix_protocol::{
    DeviceClass, DeviceProfile, Namespace, NetworkClass, NetworkProfile, TenantId, Tier,
};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "kryonix-demo",
    about = "A server and three simulated devices, verified end to end"
)]
struct Args {
    /// Run the server on this Redis instead of its embedded store (e.g. redis://127.0.0.1:6379).
    #[arg(long, env = "KRYONIX_REDIS_URL")]
    redis_url: Option<String>,
    /// Items each device enqueues in all (half before going offline, half while offline).
    #[arg(long, default_value_t = 1600)]
    items: usize,
    /// How long to wait for the devices to drain before giving up.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error("server: {0}")]
    Server(String),
    #[error("device {device}: {source}")]
    Agent {
        device: &'static str,
        source: kryonix_core::Error,
    },
    #[error("reading the store: {0}")]
    Verify(String),
    #[error("the devices did not drain within {0:?}")]
    Timeout(Duration),
}

const TENANT: &str = "demo";
/// Share of each device's items per tier: few critical writes, many background ones.
const TIER_SHARE: [(Tier, usize); 4] = [
    (Tier::Critical, 10),
    (Tier::Preferences, 20),
    (Tier::Application, 30),
    (Tier::Background, 40),
];

struct Device {
    name: &'static str,
    profile: DeviceProfile,
    agent: Agent,
    enqueued: Vec<(ItemId, Tier)>,
}

fn profile(device: DeviceClass, class: NetworkClass) -> DeviceProfile {
    DeviceProfile::new(device, class)
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kryonix-demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("kryonix-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(args: Args) -> Result<bool, DemoError> {
    let dir = tempfile::tempdir().map_err(|e| DemoError::Server(e.to_string()))?;
    let server = DemoServer::start(args.redis_url.clone(), dir.path())
        .await
        .map_err(DemoError::Server)?;
    println!(
        "kryonix-server on http://{} ({} store)",
        server.addr, server.store_kind
    );
    let tenant = TenantId::new(TENANT).map_err(|e| DemoError::Server(e.to_string()))?;
    let mut devices = start_devices(&server, dir.path(), &tenant)?;

    let half = args.items / 2;
    online_writes(&mut devices, half).await?;
    offline_writes(&mut devices, args.items - half, half)?;
    let drain = back_online(&devices, Duration::from_secs(args.timeout_secs)).await?;
    let verdict = verify(&devices, args.redis_url.as_deref(), &server, &tenant).await?;
    print_summary(&verdict, &drain);

    for device in &devices {
        let _ = device.agent.close().await;
    }
    server.stop().await;
    Ok(verdict.ok)
}

/// Opens the three devices' agents, each on its own SQLite file in `dir`.
fn start_devices(
    server: &DemoServer,
    dir: &Path,
    tenant: &TenantId,
) -> Result<Vec<Device>, DemoError> {
    let mut devices = Vec::new();
    for (name, p) in [
        (
            "phone",
            profile(DeviceClass::Phone, NetworkClass::CellularSlow),
        ),
        ("tablet", profile(DeviceClass::Tablet, NetworkClass::Wifi)),
        ("desktop", profile(DeviceClass::Desktop, NetworkClass::Wifi)),
    ] {
        let token = server
            .device_token(tenant, name)
            .map_err(DemoError::Server)?;
        let mut agent_config =
            AgentConfig::new(dir.join(format!("{name}.db")), server.url(), tenant.clone());
        agent_config.profile = p;
        let agent = Agent::open(
            agent_config,
            Arc::new(StaticToken(token)),
            None,
            &tokio::runtime::Handle::current(),
        )
        .map_err(|source| DemoError::Agent {
            device: name,
            source,
        })?;
        devices.push(Device {
            name,
            profile: p,
            agent,
            enqueued: Vec::new(),
        });
    }
    println!("devices: phone (cellular-slow), tablet (wifi), desktop (wifi)\n");
    Ok(devices)
}

/// Phase 1: each device writes `n` items and syncs what its network allows.
async fn online_writes(devices: &mut [Device], n: usize) -> Result<(), DemoError> {
    println!("1. online: each device writes {n} items across the four tiers");
    for device in devices.iter_mut() {
        enqueue(device, n, 0)?;
        // The app syncs what its network allows: slow cellular holds tiers 3-4 for later.
        let tiers = if device.profile.network.class == NetworkClass::CellularSlow {
            TierSet::of(&[Tier::Critical, Tier::Preferences])
        } else {
            TierSet::ALL
        };
        device
            .agent
            .sync_now(tiers)
            .await
            .map_err(|source| DemoError::Agent {
                device: device.name,
                source,
            })?;
    }
    show(devices, true);
    Ok(())
}

/// Phase 2: the devices go offline and write `n` more items each, keys from `offset` on.
fn offline_writes(devices: &mut [Device], n: usize, offset: usize) -> Result<(), DemoError> {
    println!("\n2. offline: the devices keep writing {n} more items each");
    for device in devices.iter_mut() {
        device
            .agent
            .set_network(NetworkProfile::OFFLINE)
            .map_err(|source| DemoError::Agent {
                device: device.name,
                source,
            })?;
        enqueue(device, n, offset)?;
    }
    show(devices, true);
    Ok(())
}

/// How the drain after the reconnect went.
struct Drain {
    /// Per device, when its tier 1 was empty, from the reconnect.
    tier1: Vec<Option<Duration>>,
    /// When every device was empty, from the reconnect.
    all: Duration,
}

/// Phase 3: the devices come back online and drain; the display follows their queues (redrawn
/// in place on a terminal, printed once at the end otherwise).
async fn back_online(devices: &[Device], timeout: Duration) -> Result<Drain, DemoError> {
    println!("\n3. back online: everything drains, tier 1 first");
    let back_online = Instant::now();
    for device in devices {
        device
            .agent
            .set_network(device.profile.network)
            .map_err(|source| DemoError::Agent {
                device: device.name,
                source,
            })?;
    }
    let tty = std::io::stdout().is_terminal();
    let tier1 = watch_drain(devices, back_online, timeout, tty).await?;
    let all = back_online.elapsed();
    if !tty {
        show(devices, true);
    }
    Ok(Drain { tier1, all })
}

/// Syncs every device and polls their queues until all are empty, noting when each device's
/// tier 1 emptied and redrawing the display on each poll when `live`. Fails after `timeout`
/// from `since`.
async fn watch_drain(
    devices: &[Device],
    since: Instant,
    timeout: Duration,
    live: bool,
) -> Result<Vec<Option<Duration>>, DemoError> {
    let deadline = since + timeout;
    let mut tier1_drained: Vec<Option<Duration>> = vec![None; devices.len()];
    let syncs = devices.iter().map(|d| d.agent.sync_now(TierSet::ALL));
    let sync_all = futures_join(syncs);
    tokio::pin!(sync_all);
    let mut drawn = false;
    let mut syncs_done = false;
    loop {
        for (device, drained) in devices.iter().zip(tier1_drained.iter_mut()) {
            let t1 = waiting(device, Tier::Critical);
            if t1 == 0 && drained.is_none() {
                *drained = Some(since.elapsed());
            }
        }
        if live {
            show(devices, !drawn);
            drawn = true;
        }
        let done = devices
            .iter()
            .all(|d| Tier::ALL.iter().all(|t| waiting(d, *t) == 0));
        if done {
            return Ok(tier1_drained);
        }
        if Instant::now() > deadline {
            return Err(DemoError::Timeout(timeout));
        }
        let tick = tokio::time::sleep(Duration::from_millis(150));
        if syncs_done {
            tick.await;
            continue;
        }
        tokio::select! {
            results = &mut sync_all => {
                syncs_done = true;
                for (device, result) in devices.iter().zip(results) {
                    result.map_err(|source| DemoError::Agent { device: device.name, source })?;
                }
            }
            () = tick => {}
        }
    }
}

/// What the check against the server's store found.
struct Verdict {
    ok: bool,
    /// Items handed to the agents, per tier, over all devices.
    per_tier: BTreeMap<Tier, usize>,
}

/// Phase 4: reads the server's store directly (Redis when `redis_url` is given, the embedded
/// SQLite file otherwise) and checks that each device's items are stored exactly once, in
/// their tier. Prints one line per device.
async fn verify(
    devices: &[Device],
    redis_url: Option<&str>,
    server: &DemoServer,
    tenant: &TenantId,
) -> Result<Verdict, DemoError> {
    println!("\n4. verifying against the server's store (read directly, not through the API)");
    let stored = match redis_url {
        Some(url) => read_redis(url, tenant).await?,
        None => read_embedded(&server.embedded_path)?,
    };
    let mut ok = true;
    let mut per_tier: BTreeMap<Tier, usize> = BTreeMap::new();
    for device in devices {
        let rows = stored.get(device.name).cloned().unwrap_or_default();
        ok &= check_device(device, &rows);
        for (_, tier) in &device.enqueued {
            *per_tier.entry(*tier).or_default() += 1;
        }
    }
    Ok(Verdict { ok, per_tier })
}

/// Compares what `device` was handed with the `rows` stored for it, prints the device's line,
/// and returns whether every item is stored exactly once in its tier.
fn check_device(device: &Device, rows: &[(String, Tier)]) -> bool {
    let expected: HashSet<String> = device
        .enqueued
        .iter()
        .map(|(id, _)| id.to_string())
        .collect();
    let distinct: HashSet<&String> = rows.iter().map(|(id, _)| id).collect();
    let duplicates = rows.len() - distinct.len();
    let missing = expected.iter().filter(|id| !distinct.contains(id)).count();
    let wrong_tier = device
        .enqueued
        .iter()
        .filter(|(id, tier)| {
            !rows
                .iter()
                .any(|(sid, st)| sid == &id.to_string() && st == tier)
        })
        .count();
    let verdict = if duplicates == 0 && missing == 0 && wrong_tier == 0 {
        "ok"
    } else {
        "FAILED"
    };
    println!(
        "   {:<8} {} items handed to the agent, {} stored, {} missing, {} duplicates: {verdict}",
        device.name,
        expected.len(),
        rows.len(),
        missing,
        duplicates
    );
    verdict == "ok"
}

/// The closing line: what was delivered and how fast tier 1 drained, or that the check failed.
fn print_summary(verdict: &Verdict, drain: &Drain) {
    let slowest_tier1 = drain
        .tier1
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or_default();
    let total: usize = verdict.per_tier.values().sum();
    let tiers: Vec<String> = verdict
        .per_tier
        .iter()
        .map(|(t, n)| format!("tier {}: {n}", t.number()))
        .collect();
    if verdict.ok {
        println!(
            "\nverified: {total} items delivered exactly once ({}); tier 1 drained {} ms after the reconnect, everything in {} ms",
            tiers.join(", "),
            slowest_tier1.as_millis(),
            drain.all.as_millis()
        );
    } else {
        println!("\nverification FAILED: see the lines above");
    }
}

/// Enqueues `n` items split across the tiers; `offset` keeps keys unique across phases.
fn enqueue(device: &mut Device, n: usize, offset: usize) -> Result<(), DemoError> {
    let mut made = 0;
    for (i, (tier, share)) in TIER_SHARE.iter().enumerate() {
        let count = if i == TIER_SHARE.len() - 1 {
            n - made
        } else {
            n * share / 100
        };
        made += count;
        for k in 0..count {
            let key = format!("{}:{}:{}", device.name, tier.number(), offset + k);
            let payload = format!(
                r#"{{"device":"{}","tier":{},"seq":{},"note":"an edit made on the device, queued until the network allows"}}"#,
                device.name,
                tier.number(),
                offset + k
            );
            let namespace = if *tier == Tier::Critical {
                Namespace::UserCache
            } else {
                Namespace::ApiCache
            };
            let id = device
                .agent
                .enqueue(namespace, &key, Op::Put, payload.as_bytes(), *tier)
                .map_err(|source| DemoError::Agent {
                    device: device.name,
                    source,
                })?;
            device.enqueued.push((id, *tier));
        }
    }
    Ok(())
}

/// Prints one line per device: items delivered / handed over, per tier.
fn show(devices: &[Device], fresh: bool) {
    let mut out = std::io::stdout().lock();
    if !fresh {
        // Redraw in place: one line per device.
        let _ = write!(out, "\x1b[{}A", devices.len());
    }
    for device in devices {
        let mut cells = Vec::new();
        for tier in Tier::ALL {
            let total = device.enqueued.iter().filter(|(_, t)| *t == tier).count() as u64;
            let waiting = waiting(device, tier);
            cells.push(format!(
                "t{} {:>5}/{:<5}",
                tier.number(),
                total.saturating_sub(waiting),
                total
            ));
        }
        let network = device.agent.profile().network.class.as_str();
        let _ = writeln!(
            out,
            "\x1b[2K   {:<8} {:<14} {}",
            device.name,
            network,
            cells.join("  ")
        );
    }
    let _ = out.flush();
}

/// Items of `tier` still in the device's outbox, read from its database (not the driver's last
/// status, which may lag a few events behind).
fn waiting(device: &Device, tier: Tier) -> u64 {
    device
        .agent
        .outbox()
        .stats()
        .map_or(0, |s| s.tier(tier).depth)
}

type Stored = HashMap<String, Vec<(String, Tier)>>;

/// Rows of the embedded store's up stream: (device, item id, tier).
fn read_embedded(path: &std::path::Path) -> Result<Stored, DemoError> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| DemoError::Verify(e.to_string()))?;
    let mut stmt = conn
        .prepare("SELECT device_id, item_id, tier FROM up_stream WHERE tenant = ?1")
        .map_err(|e| DemoError::Verify(e.to_string()))?;
    let rows = stmt
        .query_map([TENANT], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u8>(2)?,
            ))
        })
        .map_err(|e| DemoError::Verify(e.to_string()))?;
    let mut stored = Stored::new();
    for row in rows {
        let (device, id, tier) = row.map_err(|e| DemoError::Verify(e.to_string()))?;
        let tier = Tier::try_from(tier).map_err(|e| DemoError::Verify(e.to_string()))?;
        stored.entry(device).or_default().push((id, tier));
    }
    Ok(stored)
}

/// An `XRANGE` entry: id and field/value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

#[derive(serde::Deserialize)]
struct EntryItem {
    id: String,
    device_id: String,
}

/// Entries of the Redis up streams in the `mobile_sync` database.
async fn read_redis(url: &str, tenant: &TenantId) -> Result<Stored, DemoError> {
    let verify = |e: redis::RedisError| DemoError::Verify(e.to_string());
    let client = redis::Client::open(url).map_err(verify)?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(verify)?;
    let db = kryonix_server::keys::database(Namespace::MobileSync);
    redis::cmd("SELECT")
        .arg(db)
        .query_async::<()>(&mut conn)
        .await
        .map_err(verify)?;
    let mut stored = Stored::new();
    for tier in Tier::ALL {
        // Every partition of the tier, as a backend finds them (the demo server has one).
        let (_, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg(format!(
                "{}:t{}",
                kryonix_server::keys::up_stream_pattern(tenant),
                tier.number()
            ))
            .arg("COUNT")
            .arg(10_000)
            .arg("TYPE")
            .arg("stream")
            .query_async(&mut conn)
            .await
            .map_err(verify)?;
        let mut entries: Vec<StreamEntry> = Vec::new();
        for key in keys {
            let mut part: Vec<StreamEntry> = redis::cmd("XRANGE")
                .arg(key.as_str())
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .map_err(verify)?;
            entries.append(&mut part);
        }
        for (_, fields) in entries {
            let Some((_, item)) = fields.iter().find(|(name, _)| name == "item") else {
                continue;
            };
            let item: EntryItem =
                serde_json::from_slice(item).map_err(|e| DemoError::Verify(e.to_string()))?;
            stored
                .entry(item.device_id)
                .or_default()
                .push((item.id, tier));
        }
    }
    Ok(stored)
}

/// Awaits every future, keeping their order (a tiny `join_all`).
async fn futures_join<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in futures {
        out.push(f.await);
    }
    out
}
