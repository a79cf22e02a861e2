//! `KryonixAgent`: the object apps hold. Each method forwards to `kryonix_core::Agent`.
//!
//! The agent sits behind an `RwLock<Option<..>>` so that `shutdown` can end it while other calls
//! are in flight: calls that start after `shutdown` get `KryonixError::Closed`, whatever they are.

use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};

use kryonix_core::cache::Expiry;
use kryonix_core::{Agent, ItemId};
use kryonix_protocol::{AppVersion, DeviceProfile, TenantId};

use crate::callbacks::{CacheWatcher, ObserverAdapter, SyncObserver, TokenAdapter, TokenProvider};
use crate::error::KryonixError;
use crate::types::{
    AgentConfig, CacheStats, Count, DeadLetter, DeviceClass, Millis, Namespace, NetworkProfile,
    NewItem, Op, SyncReport, SyncStatus, Tier, tier_set,
};
use crate::watch::{self, WatchHandle};
use crate::{direct, encryption, runtime};

type Result<T, E = KryonixError> = std::result::Result<T, E>;

/// An open agent: local cache, durable outbox and the sync task.
#[derive(Debug, uniffi::Object)]
pub struct KryonixAgent {
    inner: RwLock<Option<Arc<Agent>>>,
    /// This agent's number for the direct entry points (`crate::direct`).
    direct_id: u64,
}

fn invalid(reason: impl ToString) -> KryonixError {
    KryonixError::InvalidInput {
        reason: reason.to_string(),
    }
}

/// An id that does not parse names no item there is: `NotFound`, as for an id that parses but
/// is gone (the app asks about ids it was given; it has no other kind of mistake to fix).
fn item_id(id: &str) -> Result<ItemId> {
    ItemId::from_str(id).map_err(|_| KryonixError::NotFound { id: id.to_owned() })
}

/// The core configuration `config` describes, or `InvalidInput` naming the field that is wrong.
fn core_config(config: AgentConfig) -> Result<kryonix_core::AgentConfig> {
    let tenant = TenantId::new(config.tenant).map_err(invalid)?;
    let mut core = kryonix_core::AgentConfig::new(config.db_path, config.server_url, tenant);
    core.profile = DeviceProfile {
        device: config.device.into(),
        network: config.network.into(),
    };
    if let Some(bytes) = config.cache_budget_bytes {
        core.cache.device_budget_bytes = bytes.to_u64("cacheBudgetBytes")?;
    }
    if let Some(eviction) = config.cache_eviction {
        core.cache.eviction = eviction.into();
    }
    if let Some(bytes) = config.max_value_bytes {
        core.cache.max_value_bytes =
            usize::try_from(bytes.to_u64("maxValueBytes")?).unwrap_or(usize::MAX);
    }
    if let Some(timeout) = config.request_timeout {
        core.request_timeout = timeout.to_duration("requestTimeout")?;
    }
    core.max_db_bytes = config
        .max_db_bytes
        .map(|b| b.to_u64("maxDbBytes"))
        .transpose()?;
    if let Some(version) = config.app_version {
        core.app_version = Some(version.parse::<AppVersion>().map_err(invalid)?);
    }
    core.encryption_key = config.encryption_key.map(encryption::key).transpose()?;
    core.server_trust = kryonix_core::sync::trust::ServerTrust {
        ca_pem: config.server_ca_pem,
        pins: config
            .server_pins
            .iter()
            .map(|p| p.parse())
            .collect::<Result<_, _>>()
            .map_err(invalid)?,
    };
    Ok(core)
}

/// Every call that reads or writes the database is `suspend` (Kotlin) / `async` (Swift) and runs
/// on the bindings' blocking pool, except the hot cache and outbox calls below, which stay
/// blocking here (`…Blocking`) because a UniFFI async call costs far more than they do from
/// Kotlin (ADR 0024): the platform packages wrap them in `suspend` / `async` functions named
/// without the suffix (android/src/main/kotlin/…/Agent.kt, ios/Sources/KryonixSync/Agent.swift).
#[uniffi::export]
impl KryonixAgent {
    /// Opens (or creates) the database and starts the sync task on the bindings' runtime.
    /// The observer, if any, is called from that runtime's threads. Fails with `InvalidConfig`
    /// for a server URL that cannot be one, `AlreadyOpen` while another agent has the file.
    #[uniffi::constructor]
    pub async fn open(
        config: AgentConfig,
        tokens: Arc<dyn TokenProvider>,
        observer: Option<Arc<dyn SyncObserver>>,
    ) -> Result<Arc<Self>> {
        let core = core_config(config)?;
        let observer = observer
            .map(|o| Arc::new(ObserverAdapter(o)) as Arc<dyn kryonix_core::sync::SyncObserver>);
        let handle = runtime::handle()?;
        let agent = runtime::spawn_blocking(move || {
            Ok(Agent::open(
                core,
                Arc::new(TokenAdapter(tokens)),
                observer,
                &handle,
            )?)
        })
        .await?;
        let agent = Arc::new(Self {
            inner: RwLock::new(Some(Arc::new(agent))),
            direct_id: direct::next_id(),
        });
        direct::register(&agent);
        Ok(agent)
    }

    /// The latest status the sync task published, with the queue figures read now.
    pub async fn status(&self) -> Result<SyncStatus> {
        let agent = self.agent()?;
        runtime::spawn_blocking(move || Ok(agent.status().into())).await
    }

    pub async fn cache_stats(&self) -> Result<CacheStats> {
        let agent = self.agent()?;
        runtime::spawn_blocking(move || Ok(agent.cache().stats().into())).await
    }

    /// Watches one key: `watcher` is told its current value first (null when it has none), then
    /// every change — put, delete, write, a pulled change, an expiry noticed, an eviction.
    /// Keep the handle: cancelling or closing it ends the watch, and so does shutdown.
    pub async fn watch(
        &self,
        namespace: Namespace,
        key: String,
        watcher: Arc<dyn CacheWatcher>,
    ) -> Result<Arc<WatchHandle>> {
        let agent = self.agent()?;
        let watch =
            runtime::spawn_blocking(move || Ok(agent.watch(namespace.into(), &key)?)).await?;
        watch::forward(watch, watcher)
    }

    /// Watches every key of `namespace`, or those starting with `prefix`: every live entry
    /// first, then a batch per committed change (a pulled page is one batch, one change per key).
    pub async fn watch_namespace(
        &self,
        namespace: Namespace,
        prefix: Option<String>,
        watcher: Arc<dyn CacheWatcher>,
    ) -> Result<Arc<WatchHandle>> {
        let agent = self.agent()?;
        let watch = runtime::spawn_blocking(move || {
            Ok(agent.watch_namespace(namespace.into(), prefix.as_deref())?)
        })
        .await?;
        watch::forward(watch, watcher)
    }

    /// Items the server refused for good.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        let agent = self.agent()?;
        runtime::spawn_blocking(move || {
            Ok(agent.dead_letters()?.into_iter().map(Into::into).collect())
        })
        .await
    }

    /// Queues a dead letter again. `NotFound` when there is no dead letter with that id.
    pub async fn retry_dead_letter(&self, id: String) -> Result<()> {
        let agent = self.agent()?;
        let id = item_id(&id)?;
        runtime::spawn_blocking(move || Ok(agent.retry_dead_letter(id)?)).await
    }

    /// Drops a dead letter for good. `NotFound` when there is none with that id.
    pub async fn discard_dead_letter(&self, id: String) -> Result<()> {
        let agent = self.agent()?;
        let id = item_id(&id)?;
        runtime::spawn_blocking(move || Ok(agent.discard_dead_letter(id)?)).await
    }

    /// Syncs `tiers` now (all tiers when the list is empty) and returns when the wake-up is
    /// over. Cancelling the caller (a Kotlin coroutine) abandons the wait, not the sync.
    pub async fn sync_now(&self, tiers: Vec<Tier>) -> Result<SyncReport> {
        let agent = self.agent()?;
        let tiers = tier_set(&tiers);
        runtime::spawn(async move { Ok(agent.sync_now(tiers).await?.into()) }).await
    }

    /// Uploads what fits in `window` (an OS background task's time), highest tiers first.
    pub async fn flush(&self, window: Millis) -> Result<SyncReport> {
        let agent = self.agent()?;
        let window = window.to_duration("window")?;
        runtime::spawn(async move { Ok(agent.flush(window).await?.into()) }).await
    }

    /// A cached value, fetched from the server's cache on a miss when online.
    pub async fn get_or_fetch(&self, namespace: Namespace, key: String) -> Result<Option<Vec<u8>>> {
        let agent = self.agent()?;
        runtime::spawn(async move { Ok(agent.get_or_fetch(namespace.into(), &key).await?) }).await
    }

    /// Stops the sync task after the request in flight; queued items stay for the next open.
    /// Every later call fails with `Closed`; shutting down twice is fine. (Not named `close`:
    /// the generated Kotlin class already has `AutoCloseable.close`, which frees the handle.)
    pub async fn shutdown(&self) -> Result<()> {
        let agent = self
            .inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match agent {
            Some(agent) => runtime::spawn(async move { Ok(agent.close().await?) }).await,
            None => Ok(()),
        }
    }
}

/// The hot calls, blocking: a few microseconds of SQLite each (a commit for the writes). Call
/// them from a thread that may block, or use the platform packages' `suspend` / `async` forms.
#[uniffi::export]
impl KryonixAgent {
    /// A cached value, or `None` (never touches the network).
    pub fn get_blocking(&self, namespace: Namespace, key: String) -> Result<Option<Vec<u8>>> {
        let agent = self.agent()?;
        let key = agent.key(namespace.into(), &key)?;
        Ok(agent.cache().get(&key)?)
    }

    /// Several cached values of one namespace, in the order of `keys`.
    pub fn get_many_blocking(
        &self,
        namespace: Namespace,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let agent = self.agent()?;
        let keys = keys
            .iter()
            .map(|k| agent.key(namespace.into(), k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(agent.cache().get_many(&keys)?)
    }

    /// Stores a value locally for `ttl`, or unset: the adaptive TTL of the device profile.
    pub fn put_blocking(
        &self,
        namespace: Namespace,
        key: String,
        value: Vec<u8>,
        ttl: Option<Millis>,
    ) -> Result<()> {
        let agent = self.agent()?;
        let key = agent.key(namespace.into(), &key)?;
        let expiry = match ttl {
            Some(ttl) => Expiry::After(ttl.to_duration("ttl")?),
            None => Expiry::Adaptive,
        };
        Ok(agent.cache().put(&key, &value, expiry)?)
    }

    /// Removes a cached value; true if there was one.
    pub fn delete_blocking(&self, namespace: Namespace, key: String) -> Result<bool> {
        let agent = self.agent()?;
        let key = agent.key(namespace.into(), &key)?;
        Ok(agent.cache().delete(&key)?)
    }

    pub fn contains_blocking(&self, namespace: Namespace, key: String) -> Result<bool> {
        let agent = self.agent()?;
        let key = agent.key(namespace.into(), &key)?;
        Ok(agent.cache().contains(&key)?)
    }

    /// Queues a mutation for upload and returns its id once it is durable.
    pub fn enqueue_blocking(
        &self,
        namespace: Namespace,
        key: String,
        op: Op,
        payload: Vec<u8>,
        tier: Tier,
    ) -> Result<String> {
        let id = self
            .agent()?
            .enqueue(namespace.into(), &key, op.into(), &payload, tier.into())?;
        Ok(id.to_string())
    }

    /// Queues several items in one transaction (all or none) and returns their ids, in order,
    /// once they are durable: one commit for the batch, far cheaper per item than `enqueue`.
    pub fn enqueue_all_blocking(&self, items: Vec<NewItem>) -> Result<Vec<String>> {
        let core: Vec<kryonix_core::NewItem<'_>> = items
            .iter()
            .map(|i| kryonix_core::NewItem {
                namespace: i.namespace.into(),
                key: &i.key,
                op: i.op.into(),
                payload: &i.payload,
                tier: i.tier.into(),
            })
            .collect();
        let ids = self.agent()?.enqueue_all(&core)?;
        Ok(ids.iter().map(ToString::to_string).collect())
    }

    /// Writes a value to the cache and queues it for upload in one transaction.
    pub fn write_blocking(
        &self,
        namespace: Namespace,
        key: String,
        value: Vec<u8>,
        tier: Tier,
    ) -> Result<String> {
        let id = self
            .agent()?
            .write(namespace.into(), &key, &value, tier.into())?;
        Ok(id.to_string())
    }
}

/// Calls that never wait on the database: safe on any thread, the main one included.
#[uniffi::export]
impl KryonixAgent {
    /// The OS reported a network change.
    pub fn set_network(&self, network: NetworkProfile) -> Result<()> {
        Ok(self.agent()?.set_network(network.into())?)
    }

    pub fn set_device(&self, device: DeviceClass) -> Result<()> {
        Ok(self.agent()?.set_device(device.into())?)
    }

    /// How many watches are live (a cancelled or closed handle no longer counts).
    pub fn watcher_count(&self) -> Result<Count> {
        Ok(Count::of(self.agent()?.watcher_count()))
    }

    /// This agent's number for the platform packages' direct calls (`kryonix_direct_*`, which
    /// skip the generated marshalling on the hottest paths). Not for apps.
    pub fn direct_id(&self) -> i64 {
        i64::try_from(self.direct_id).unwrap_or(-1)
    }
}

impl Drop for KryonixAgent {
    fn drop(&mut self) {
        direct::unregister(self.direct_id);
    }
}

impl KryonixAgent {
    pub(crate) fn registry_id(&self) -> u64 {
        self.direct_id
    }

    pub(crate) fn agent(&self) -> Result<Arc<Agent>> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(KryonixError::closed)
    }
}
