//! Glue shared by the scenarios: a world (Redis + server + a plain Redis connection + a temp
//! dir for device databases), item enqueueing, and the exactly-once check against Redis.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use kryonix_core::sync::SyncReport;
use kryonix_core::{Agent, AgentConfig, TierSet};
use kryonix_e2e::agent::RecordingObserver;
use kryonix_e2e::streams::{self, UpEntry};
use kryonix_e2e::{RedisOptions, RedisServer, ServerOptions, TestServer, agent_config, open_agent};
use kryonix_protocol::wire::Op;
use kryonix_protocol::{Namespace, NetworkProfile, Tier};
use kryonix_server::ServerConfig;
use redis::aio::MultiplexedConnection;
use tempfile::TempDir;

pub const TENANT: &str = "acme";

/// Item ids expected per tier, in enqueue order.
pub type Expected = BTreeMap<u8, Vec<String>>;

/// Redis, the server on it, a plain connection to DB 11, and a place for device databases.
pub struct World {
    pub redis: RedisServer,
    pub server: TestServer,
    pub con: MultiplexedConnection,
    pub dir: TempDir,
}

impl World {
    pub async fn new(redis: RedisOptions, configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let redis = RedisServer::start(redis).unwrap();
        let mut options = ServerOptions::redis(redis.url());
        configure(&mut options.config);
        let server = TestServer::start(options).await.unwrap();
        let con = redis.connection(streams::MOBILE_SYNC_DB).await.unwrap();
        Self {
            redis,
            server,
            con,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub async fn plain() -> Self {
        Self::new(RedisOptions::default(), |_| {}).await
    }

    pub fn db(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Agent settings for device `name` talking to `url`, starting offline.
    pub fn config(&self, name: &str, url: &str) -> AgentConfig {
        let mut config = agent_config(&self.db(&format!("{name}.db")), url, TENANT).unwrap();
        config.profile.network = NetworkProfile::OFFLINE;
        config
    }

    /// Opens device `name` (a fresh token each time: the same device id).
    pub fn agent(
        &self,
        name: &str,
        config: AgentConfig,
        observer: Option<Arc<RecordingObserver>>,
    ) -> Agent {
        let token = self.server.device_token(TENANT, name).unwrap();
        open_agent(config, token, observer).unwrap()
    }

    pub async fn stored(&mut self, tier: u8) -> Vec<UpEntry> {
        streams::up_entries(&mut self.con, TENANT, tier)
            .await
            .unwrap()
    }

    pub async fn stored_total(&mut self) -> u64 {
        streams::up_len_all(&mut self.con, TENANT).await.unwrap()
    }

    /// Every expected item is in its tier's stream exactly once, in enqueue (FIFO) order, and
    /// nothing else is there.
    pub async fn assert_exactly_once(&mut self, expected: &Expected) {
        for tier in 1..=4u8 {
            let want = expected.get(&tier).cloned().unwrap_or_default();
            let got: Vec<String> = self
                .stored(tier)
                .await
                .into_iter()
                .map(|e| e.meta.id)
                .collect();
            let unique: HashSet<&String> = got.iter().collect();
            assert_eq!(
                unique.len(),
                got.len(),
                "tier {tier}: {} duplicate entries",
                got.len() - unique.len()
            );
            let want_set: HashSet<&String> = want.iter().collect();
            let lost: Vec<&&String> = want_set.difference(&unique).collect();
            let extra: Vec<&&String> = unique.difference(&want_set).collect();
            assert!(
                lost.is_empty() && extra.is_empty(),
                "tier {tier}: {} lost, {} unexpected (first lost: {:?})",
                lost.len(),
                extra.len(),
                lost.first()
            );
            assert_eq!(got, want, "tier {tier}: stored out of FIFO order");
        }
    }
}

/// Drives a drain to its end after `first`, the answer of a `sync_now` that ran while the
/// network or the server misbehaved: a call that sent nothing says why (a retryable error,
/// never anything else here), so this asks again until the queue is empty or ten calls passed.
/// Returns what is left.
pub async fn drain(agent: &Agent, first: kryonix_core::Result<SyncReport>) -> u64 {
    let mut last = first;
    for _ in 0..10 {
        match &last {
            Ok(report) if report.remaining == 0 => return 0,
            Ok(_) => {}
            Err(e) => assert!(e.is_retryable(), "a drain failed for good: {e:?}"),
        }
        last = agent.sync_now(TierSet::ALL).await;
    }
    match last {
        Ok(report) => report.remaining,
        Err(e) => panic!("the drain still fails: {e:?}"),
    }
}

/// Enqueues `n` items, tier `tiers[i % len]`, in user_cache, keys `{tag}-{i}`; returns the ids.
pub fn enqueue(agent: &Agent, n: usize, tiers: &[Tier], tag: &str) -> Expected {
    let mut expected = Expected::new();
    for i in 0..n {
        let tier = tiers[i % tiers.len()];
        let payload = format!("{tag} item {i}");
        let id = agent
            .enqueue(
                Namespace::UserCache,
                &format!("{tag}-{i}"),
                Op::Put,
                payload.as_bytes(),
                tier,
            )
            .unwrap();
        expected
            .entry(tier.number())
            .or_default()
            .push(id.to_string());
    }
    expected
}

pub fn total(expected: &Expected) -> u64 {
    expected.values().map(|v| v.len() as u64).sum()
}
