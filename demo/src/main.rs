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
    let addr = server.addr;
    let embedded_path = server.embedded_path.clone();
    println!(
        "kryonix-server on http://{addr} ({} store)",
        server.store_kind
    );

    let tenant = TenantId::new(TENANT).map_err(|e| DemoError::Server(e.to_string()))?;
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
            .device_token(&tenant, name)
            .map_err(DemoError::Server)?;
        let mut agent_config = AgentConfig::new(
            dir.path().join(format!("{name}.db")),
            format!("http://{addr}"),
            tenant.clone(),
        );
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

    let half = args.items / 2;
    println!("1. online: each device writes {half} items across the four tiers");
    for device in &mut devices {
        enqueue(device, half, 0)?;
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
    show(&devices, true);

    println!(
        "\n2. offline: the devices keep writing {} more items each",
        args.items - half
    );
    for device in &mut devices {
        device
            .agent
            .set_network(NetworkProfile::OFFLINE)
            .map_err(|source| DemoError::Agent {
                device: device.name,
                source,
            })?;
        enqueue(device, args.items - half, half)?;
    }
    show(&devices, true);

    println!("\n3. back online: everything drains, tier 1 first");
    let back_online = Instant::now();
    for device in &devices {
        device
            .agent
            .set_network(device.profile.network)
            .map_err(|source| DemoError::Agent {
                device: device.name,
                source,
            })?;
    }
    let deadline = back_online + Duration::from_secs(args.timeout_secs);
    let mut tier1_drained: Vec<Option<Duration>> = vec![None; devices.len()];
    let syncs = devices.iter().map(|d| d.agent.sync_now(TierSet::ALL));
    let sync_all = futures_join(syncs);
    tokio::pin!(sync_all);
    let tty = std::io::stdout().is_terminal();
    let mut drawn = false;
    let mut syncs_done = false;
    loop {
        for (device, drained) in devices.iter().zip(tier1_drained.iter_mut()) {
            let t1 = waiting(device, Tier::Critical);
            if t1 == 0 && drained.is_none() {
                *drained = Some(back_online.elapsed());
            }
        }
        if tty {
            show(&devices, !drawn);
            drawn = true;
        }
        let done = devices
            .iter()
            .all(|d| Tier::ALL.iter().all(|t| waiting(d, *t) == 0));
        if done {
            break;
        }
        if Instant::now() > deadline {
            return Err(DemoError::Timeout(Duration::from_secs(args.timeout_secs)));
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
    let drained = back_online.elapsed();
    if !tty {
        show(&devices, true);
    }

    println!("\n4. verifying against the server's store (read directly, not through the API)");
    let stored = match &args.redis_url {
        Some(url) => read_redis(url, &tenant).await?,
        None => read_embedded(&embedded_path)?,
    };
    let mut ok = true;
    let mut per_tier: BTreeMap<Tier, usize> = BTreeMap::new();
    for device in &devices {
        let expected: HashSet<String> = device
            .enqueued
            .iter()
            .map(|(id, _)| id.to_string())
            .collect();
        let rows = stored.get(device.name).cloned().unwrap_or_default();
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
        for (_, tier) in &device.enqueued {
            *per_tier.entry(*tier).or_default() += 1;
        }
        let verdict = if duplicates == 0 && missing == 0 && wrong_tier == 0 {
            "ok"
        } else {
            "FAILED"
        };
        ok &= verdict == "ok";
        println!(
            "   {:<8} {} items handed to the agent, {} stored, {} missing, {} duplicates: {verdict}",
            device.name,
            expected.len(),
            rows.len(),
            missing,
            duplicates
        );
    }
    let slowest_tier1 = tier1_drained
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or_default();
    let total: usize = per_tier.values().sum();
    let tiers: Vec<String> = per_tier
        .iter()
        .map(|(t, n)| format!("tier {}: {n}", t.number()))
        .collect();
    if ok {
        println!(
            "\nverified: {total} items delivered exactly once ({}); tier 1 drained {} ms after the reconnect, everything in {} ms",
            tiers.join(", "),
            slowest_tier1.as_millis(),
            drained.as_millis()
        );
    } else {
        println!("\nverification FAILED: see the lines above");
    }

    for device in &devices {
        let _ = device.agent.close().await;
    }
    server.stop().await;
    Ok(ok)
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
        let key = kryonix_server::keys::up_stream(tenant, tier)
            .map_err(|e| DemoError::Verify(e.to_string()))?;
        let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
            .arg(key.as_str())
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .map_err(verify)?;
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
