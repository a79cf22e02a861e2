//! Where the Redis behind the server is, and the connections to it.
//!
//! Three deployments, one set of operations ([`Links`] is what every operation uses):
//!
//! - **Standalone**: one Redis for the cache namespaces (a logical database per namespace) and
//!   optionally a dedicated one for mobile_sync (database 11).
//! - **Sentinel**: the same layout on the primary that a set of Sentinels names. A follower task
//!   asks the Sentinels for the primary every half second (and at once when a request found the
//!   store unavailable); when it changed, it opens links to the new primary, checks it is safe to
//!   accept pushes on (start-up's checks: `noeviction`), and swaps them in. Requests in flight on
//!   the old links fail with a retryable error and the devices retry.
//! - **Cluster**: no logical databases; every namespace in database 0 (the namespace is in every
//!   key), the cluster connection routing each command by slot, push transactions on dedicated
//!   connections per primary (`cluster`).

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use kryonix_protocol::Namespace;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::{Client, IntoConnectionInfo, RedisError};
use tokio::sync::Notify;

use super::cluster::ClusterPush;
use super::conn::Conn;
use super::errors::map;
use super::info::{facts_from_info, parse_info};
use super::pool::{PUSH_CONNECTIONS, TxPool};
use super::push::PushRoute;
use crate::keys;
use crate::startup::{Finding, assess};
use crate::store::{StoreError, SyncStoreFacts};

/// The Redis deployment the server runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    Standalone {
        cache_url: String,
        sync_url: Option<String>,
    },
    Sentinel {
        /// `redis://host:26379` of each Sentinel.
        sentinels: Vec<String>,
        /// The name the Sentinels monitor the primary under.
        master: String,
        /// Credentials and settings for the data nodes (the host and port come from the
        /// Sentinels): `redis://[user:password@]_` — anything but the address is used.
        node_url: Option<String>,
    },
    Cluster {
        /// `redis://host:port` of some nodes; the rest is discovered.
        seeds: Vec<String>,
    },
}

impl Topology {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Standalone { .. } => "standalone",
            Self::Sentinel { .. } => "sentinel",
            Self::Cluster { .. } => "cluster",
        }
    }
}

/// Connections to one deployment: what every operation uses.
pub(super) struct Links {
    pub sync: Conn,
    /// Indexed by namespace id.
    pub cache: Vec<Conn>,
    pub push: PushRoute,
    /// `host:port` of the data nodes behind `sync` (the primaries of a Cluster).
    pub nodes: Vec<String>,
    pub cluster: Option<Arc<ClusterPush>>,
}

impl Links {
    pub fn cache(&self, namespace: Namespace) -> Result<Conn, StoreError> {
        self.cache
            .get(usize::from(namespace.id()))
            .cloned()
            .ok_or_else(|| StoreError::Internal("no connection for namespace".into()))
    }
}

/// Opens a client on one logical database of `url` (whatever database the URL names).
pub fn client_for_db(url: &str, db: i64) -> Result<Client, RedisError> {
    let info = url.into_connection_info()?;
    let settings = info.redis_settings().clone().set_db(db);
    Client::open(info.set_redis_settings(settings))
}

fn address_of(url: &str) -> String {
    url.into_connection_info()
        .map(|info| info.addr().to_string())
        .unwrap_or_else(|_| "?".into())
}

async fn manager(client: Client) -> Result<ConnectionManager, StoreError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        // Longer than any WAIT the server issues, shorter than a device's patience.
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(2);
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(map)
}

/// Links to a standalone Redis (a Sentinel's current primary is one too).
pub(super) async fn standalone(
    cache_url: &str,
    sync_url: Option<&str>,
) -> Result<Links, StoreError> {
    let unavailable = |e: RedisError| StoreError::Unavailable(e.to_string());
    let mut cache = Vec::with_capacity(16);
    for ns in Namespace::all() {
        let client = client_for_db(cache_url, keys::database(ns)).map_err(unavailable)?;
        cache.push(Conn::Standalone(manager(client).await?));
    }
    let sync_db = keys::database(Namespace::MobileSync);
    let sync_base = sync_url.unwrap_or(cache_url);
    let push_client = client_for_db(sync_base, sync_db).map_err(unavailable)?;
    let sync = match sync_url {
        Some(url) => {
            Conn::Standalone(manager(client_for_db(url, sync_db).map_err(unavailable)?).await?)
        }
        None => cache
            .get(usize::from(Namespace::MobileSync.id()))
            .cloned()
            .ok_or_else(|| StoreError::Internal("no mobile_sync connection".into()))?,
    };
    Ok(Links {
        sync,
        cache,
        push: PushRoute::Standalone(TxPool::new(push_client, PUSH_CONNECTIONS)),
        nodes: vec![address_of(sync_base)],
        cluster: None,
    })
}

/// Links to a Redis Cluster.
pub(super) async fn cluster(seeds: &[String]) -> Result<Links, StoreError> {
    let first = seeds
        .first()
        .ok_or_else(|| StoreError::Unavailable("no cluster node given".into()))?;
    let client = ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(10))
        .retries(6)
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let con = client.get_async_connection().await.map_err(map)?;
    let push = Arc::new(ClusterPush::new(con.clone(), first).await.map_err(map)?);
    let conn = Conn::Cluster(con);
    Ok(Links {
        sync: conn.clone(),
        cache: (0..16).map(|_| conn.clone()).collect(),
        push: PushRoute::Cluster(Arc::clone(&push)),
        nodes: push.primaries(),
        cluster: Some(push),
    })
}

/// `INFO` of one node, by address, with the credentials of `template` (a URL).
pub(super) async fn node_facts(template: &str, addr: &str) -> Result<SyncStoreFacts, StoreError> {
    let info = template
        .into_connection_info()
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| StoreError::Internal(format!("bad node address {addr}")))?;
    let client = Client::open(info.set_addr(redis::ConnectionAddr::Tcp(host, port)))
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(map)?;
    let text: String = redis::cmd("INFO")
        .query_async(&mut con)
        .await
        .map_err(map)?;
    let mut facts = facts_from_info(&parse_info(&text));
    facts.address = Some(addr.to_owned());
    Ok(facts)
}

/// The Sentinel side: which primary, and the links to it.
pub(super) struct Follower {
    sentinels: Vec<String>,
    master: String,
    /// Settings for data-node connections (credentials); its address is replaced.
    node_url: String,
    allow_evicting: bool,
    current: RwLock<Arc<Links>>,
    primary: RwLock<String>,
    /// Why pushes are refused on the current primary (it could evict), if they are.
    refusing: RwLock<Option<String>>,
    nudge: Notify,
}

/// How often the follower asks the Sentinels for the primary.
const POLL: Duration = Duration::from_millis(500);

impl Follower {
    /// Asks the Sentinels for the primary and opens links to it.
    pub(super) async fn start(
        sentinels: Vec<String>,
        master: String,
        node_url: Option<String>,
        allow_evicting: bool,
    ) -> Result<Arc<Self>, StoreError> {
        let node_url = node_url.unwrap_or_else(|| "redis://127.0.0.1:6379".into());
        let primary = ask_primary(&sentinels, &master).await?;
        let links = standalone(&url_for(&node_url, &primary)?, None).await?;
        let follower = Arc::new(Self {
            sentinels,
            master,
            node_url,
            allow_evicting,
            current: RwLock::new(Arc::new(links)),
            primary: RwLock::new(primary.clone()),
            refusing: RwLock::new(None),
            nudge: Notify::new(),
        });
        follower.judge(&primary).await;
        let weak = Arc::downgrade(&follower);
        tokio::spawn(async move {
            loop {
                let Some(follower) = weak.upgrade() else {
                    return;
                };
                let nudged = follower.nudge.notified();
                tokio::select! {
                    () = nudged => {}
                    () = tokio::time::sleep(POLL) => {}
                }
                follower.follow().await;
            }
        });
        Ok(follower)
    }

    pub(super) fn links(&self) -> Arc<Links> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(super) fn primary(&self) -> String {
        self.primary
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn refusing(&self) -> Option<String> {
        self.refusing
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A request found the store unavailable: look for a new primary now.
    pub(super) fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// One look at the Sentinels; switches to a new primary when they name one.
    async fn follow(&self) {
        let primary = match ask_primary(&self.sentinels, &self.master).await {
            Ok(primary) => primary,
            Err(error) => {
                tracing::warn!(%error, "no Sentinel answered; keeping the current primary");
                return;
            }
        };
        if primary == self.primary() {
            // An operator may fix the policy of a primary pushes are refused on: look again.
            if self.refusing().is_some() {
                self.judge(&primary).await;
            }
            return;
        }
        let started = Instant::now();
        let links = match url_for(&self.node_url, &primary) {
            Ok(url) => standalone(&url, None).await,
            Err(error) => Err(error),
        };
        match links {
            Ok(links) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(links);
                *self.primary.write().unwrap_or_else(PoisonError::into_inner) = primary.clone();
                self.judge(&primary).await;
                tracing::warn!(
                    primary,
                    switch_ms = started.elapsed().as_millis() as u64,
                    "Sentinel named a new primary; following it"
                );
            }
            Err(error) => {
                tracing::warn!(%error, primary, "the new primary does not answer yet");
            }
        }
    }

    /// Start-up's safety rule on the current primary: pushes are refused while it could evict.
    async fn judge(&self, primary: &str) {
        let verdict = match node_facts(&self.node_url, primary).await {
            Ok(facts) => assess(&facts).into_iter().find_map(|f| match f {
                Finding::Refusal(text) if !self.allow_evicting => Some(text),
                _ => None,
            }),
            Err(error) => Some(format!("cannot read INFO of the new primary: {error}")),
        };
        match (&verdict, self.refusing()) {
            (Some(reason), None) => {
                tracing::error!(primary, reason, "pushes refused on this primary")
            }
            (None, Some(_)) => {
                tracing::warn!(primary, "the primary is safe again; pushes accepted")
            }
            _ => {}
        }
        *self
            .refusing
            .write()
            .unwrap_or_else(PoisonError::into_inner) = verdict;
    }
}

/// `node_url` with its address replaced by `addr` (`host:port`).
fn url_for(node_url: &str, addr: &str) -> Result<String, StoreError> {
    let info = node_url
        .into_connection_info()
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let settings = info.redis_settings();
    let auth = match (settings.username(), settings.password()) {
        (Some(user), Some(password)) => format!("{user}:{password}@"),
        (None, Some(password)) => format!(":{password}@"),
        _ => String::new(),
    };
    Ok(format!("redis://{auth}{addr}"))
}

/// Asks each Sentinel in turn for the primary's address, until one answers.
pub(super) async fn ask_primary(sentinels: &[String], master: &str) -> Result<String, StoreError> {
    let mut last = String::from("no Sentinel given");
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)));
    for sentinel in sentinels {
        let answer = async {
            let client = Client::open(sentinel.as_str())?;
            let mut con = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master)
                .query_async::<Option<(String, u16)>>(&mut con)
                .await
        }
        .await;
        match answer {
            Ok(Some((host, port))) => return Ok(format!("{host}:{port}")),
            Ok(None) => last = format!("{sentinel} does not know master {master:?}"),
            Err(e) => last = format!("{sentinel}: {e}"),
        }
    }
    Err(StoreError::Unavailable(format!(
        "no Sentinel named the primary: {last}"
    )))
}
