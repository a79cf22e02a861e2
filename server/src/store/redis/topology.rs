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
use redis::{Client, ConnectionInfo, IntoConnectionInfo, RedisError};
use tokio::sync::Notify;

use super::access::{self, RedisAccess};
use super::cluster::ClusterPush;
use super::conn::Conn;
use super::errors::{connect_error, map};
use super::info::{facts_from_info, parse_info};
use super::pool::{PUSH_CONNECTIONS, TxPool};
use super::push::PushRoute;
use super::routing::{self, CacheGroups, Home, PolicyGroup};
use crate::keys;
use crate::startup::{Finding, assess};
use crate::store::{StoreError, SyncStoreFacts};

/// The Redis deployment the server runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    Standalone {
        cache_url: String,
        sync_url: Option<String>,
        /// Instances of their own for the cache namespaces of some eviction policies (see
        /// `routing`); the others stay on `cache_url`.
        groups: CacheGroups,
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
    /// Each kind of connection and its first URL, for what `check` reports about encryption.
    pub fn connections(&self) -> Vec<(&'static str, Vec<String>)> {
        match self {
            Self::Standalone {
                cache_url,
                sync_url,
                groups,
            } => {
                let mut out = vec![
                    ("cache", vec![cache_url.clone()]),
                    (
                        "sync store",
                        vec![sync_url.clone().unwrap_or_else(|| cache_url.clone())],
                    ),
                ];
                for (group, url) in groups.configured() {
                    out.push((group.connection_name(), vec![url.to_owned()]));
                }
                out
            }
            Self::Sentinel {
                sentinels,
                node_url,
                ..
            } => vec![
                ("Sentinels", sentinels.clone()),
                (
                    "primary",
                    vec![
                        node_url
                            .clone()
                            .unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
                    ],
                ),
            ],
            Self::Cluster { seeds } => vec![("cluster nodes", seeds.clone())],
        }
    }

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

/// Opens a client on one logical database of `url` (whatever database the URL names), with the
/// URL's own credentials and the system's roots: for tools and tests.
pub fn client_for_db(url: &str, db: i64) -> Result<Client, RedisError> {
    client_on_db(&RedisAccess::default(), &url.into_connection_info()?, db)
}

/// A client on one logical database of `info`, reached as `access` says.
fn client_on_db(
    access: &RedisAccess,
    info: &ConnectionInfo,
    db: i64,
) -> Result<Client, RedisError> {
    let settings = info.redis_settings().clone().set_db(db);
    access.client(info.clone().set_redis_settings(settings))
}

/// The connection settings a URL names (its password stays in them, never in an error).
pub(super) fn parse(url: &str) -> Result<ConnectionInfo, StoreError> {
    url.into_connection_info()
        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", access::redacted(url))))
}

async fn manager(client: Client) -> Result<ConnectionManager, StoreError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        // Longer than any WAIT the server issues, shorter than a device's patience.
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(2);
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(connect_error)
}

/// Links to a standalone Redis (a Sentinel's current primary is one too), with the cache
/// namespaces of each configured policy group on that group's instance (`routing::home`).
/// `groups` holds the parsed URL of each configured group.
pub(super) async fn standalone(
    access: &RedisAccess,
    cache_url: &ConnectionInfo,
    sync_url: Option<&ConnectionInfo>,
    groups: &GroupTargets,
) -> Result<Links, StoreError> {
    let sync_db = keys::database(Namespace::MobileSync);
    let sync_base = sync_url.unwrap_or(cache_url);
    let push_client = client_on_db(access, sync_base, sync_db).map_err(unavailable)?;
    let sync = open_on_db(access, sync_base, sync_db, "the sync store").await?;
    let mut cache = Vec::with_capacity(16);
    for ns in Namespace::all() {
        let db = keys::database(ns);
        let conn = match routing::home(ns, &groups.urls) {
            // mobile_sync itself: the sync connection, not a second one to the same database.
            Home::Sync if db == sync_db => sync.clone(),
            Home::Sync => open_on_db(access, sync_base, db, "the sync store").await?,
            Home::Main => open_on_db(access, cache_url, db, "the main cache Redis").await?,
            Home::Group(group) => {
                let info = groups.info(group).ok_or_else(|| {
                    StoreError::Internal(format!("no parsed URL for the {group} group"))
                })?;
                open_on_db(access, info, db, group.connection_name()).await?
            }
        };
        cache.push(conn);
    }
    Ok(Links {
        sync,
        cache,
        push: PushRoute::Standalone(TxPool::new(push_client, PUSH_CONNECTIONS)),
        nodes: vec![sync_base.addr().to_string()],
        cluster: None,
    })
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A connection to database `db` of `info`; a failure names the instance (`what`, address), so
/// an operator with several instances knows which one did not answer.
async fn open_on_db(
    access: &RedisAccess,
    info: &ConnectionInfo,
    db: i64,
    what: &str,
) -> Result<Conn, StoreError> {
    let client = client_on_db(access, info, db).map_err(unavailable)?;
    match manager(client).await {
        Ok(con) => Ok(Conn::Standalone(con)),
        Err(StoreError::Unavailable(text)) => Err(StoreError::Unavailable(format!(
            "{what} at {}: {text}",
            info.addr()
        ))),
        Err(other) => Err(other),
    }
}

/// The configured policy groups with their URLs parsed, for [`standalone`].
#[derive(Clone, Default)]
pub(super) struct GroupTargets {
    urls: CacheGroups,
    parsed: Vec<(PolicyGroup, ConnectionInfo)>,
}

impl GroupTargets {
    /// Parses every configured group URL; an error names the flag.
    pub(super) fn parse(groups: &CacheGroups) -> Result<Self, StoreError> {
        groups
            .validate()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let parsed = groups
            .configured()
            .map(|(group, url)| parse(url).map(|info| (group, info)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            urls: groups.clone(),
            parsed,
        })
    }

    fn info(&self, group: PolicyGroup) -> Option<&ConnectionInfo> {
        self.parsed
            .iter()
            .find(|(g, _)| *g == group)
            .map(|(_, info)| info)
    }
}

/// Links to a Redis Cluster.
pub(super) async fn cluster(access: &RedisAccess, seeds: &[String]) -> Result<Links, StoreError> {
    let first = parse(
        seeds
            .first()
            .ok_or_else(|| StoreError::Unavailable("no cluster node given".into()))?,
    )?;
    let client = access
        .cluster_builder(seeds)
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(10))
        .retries(6)
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let con = client.get_async_connection().await.map_err(connect_error)?;
    let push = Arc::new(
        ClusterPush::new(con.clone(), first, access.clone())
            .await
            .map_err(map)?,
    );
    let conn = Conn::Cluster(con);
    Ok(Links {
        sync: conn.clone(),
        cache: (0..16).map(|_| conn.clone()).collect(),
        push: PushRoute::Cluster(Arc::clone(&push)),
        nodes: push.primaries(),
        cluster: Some(push),
    })
}

/// `INFO` of one node, by address, with the settings of `template` (credentials, TLS).
pub(super) async fn node_facts(
    access: &RedisAccess,
    template: &ConnectionInfo,
    addr: &str,
) -> Result<SyncStoreFacts, StoreError> {
    let info = access::at(template, addr).map_err(StoreError::Internal)?;
    let client = access
        .client(info)
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(connect_error)?;
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
    /// Settings for data-node connections (credentials, TLS); its address is replaced.
    node: ConnectionInfo,
    access: RedisAccess,
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
        access: RedisAccess,
        sentinels: Vec<String>,
        master: String,
        node_url: Option<String>,
        allow_evicting: bool,
    ) -> Result<Arc<Self>, StoreError> {
        let node = parse(node_url.as_deref().unwrap_or("redis://127.0.0.1:6379"))?;
        let primary = ask_primary(&access, &sentinels, &master).await?;
        let links = standalone(
            &access,
            &node_at(&node, &primary)?,
            None,
            &GroupTargets::default(),
        )
        .await?;
        let follower = Arc::new(Self {
            sentinels,
            master,
            node,
            access,
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
        let primary = match ask_primary(&self.access, &self.sentinels, &self.master).await {
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
        let links = match node_at(&self.node, &primary) {
            Ok(node) => standalone(&self.access, &node, None, &GroupTargets::default()).await,
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
        let verdict = match node_facts(&self.access, &self.node, primary).await {
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

/// The data-node settings at the primary's address, `host:port`.
fn node_at(node: &ConnectionInfo, addr: &str) -> Result<ConnectionInfo, StoreError> {
    access::at(node, addr).map_err(StoreError::Unavailable)
}

/// Asks each Sentinel in turn for the primary's address, until one answers.
pub(super) async fn ask_primary(
    access: &RedisAccess,
    sentinels: &[String],
    master: &str,
) -> Result<String, StoreError> {
    let mut last = String::from("no Sentinel given");
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)));
    for sentinel in sentinels {
        let answer = async {
            let client = access.sentinel_client(sentinel)?;
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
            Ok(None) => {
                last = format!(
                    "{} does not know master {master:?}",
                    access::redacted(sentinel)
                )
            }
            Err(e) => last = format!("{}: {e}", access::redacted(sentinel)),
        }
    }
    Err(StoreError::Unavailable(format!(
        "no Sentinel named the primary: {last}"
    )))
}
