//! `KryonixAgent`: the object apps hold. Each method forwards to `kryonix_core::Agent`.
//!
//! The agent sits behind an `RwLock<Option<..>>` so that `shutdown` can end it while other calls
//! are in flight: calls that start after `shutdown` get `KryonixError::Closed`, whatever they are.

use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use kryonix_core::cache::Expiry;
use kryonix_core::{Agent, ItemId};
use kryonix_protocol::{AppVersion, DeviceProfile, TenantId};

use crate::callbacks::{CacheWatcher, ObserverAdapter, SyncObserver, TokenAdapter, TokenProvider};
use crate::error::KryonixError;
use crate::types::{
    AgentConfig, CacheStats, DeadLetter, DeviceClass, Namespace, NetworkProfile, NewItem, Op,
    SyncReport, SyncStatus, Tier, tier_set,
};
use crate::watch::{self, WatchHandle};
use crate::{encryption, runtime};

type Result<T, E = KryonixError> = std::result::Result<T, E>;

/// An open agent: local cache, durable outbox and the sync task.
#[derive(Debug, uniffi::Object)]
pub struct KryonixAgent {
    inner: RwLock<Option<Arc<Agent>>>,
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

fn usize_from(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[uniffi::export]
impl KryonixAgent {
    /// Opens (or creates) the database and starts the sync task on the bindings' runtime.
    /// The observer, if any, is called from that runtime's threads.
    #[uniffi::constructor]
    pub fn open(
        config: AgentConfig,
        tokens: Arc<dyn TokenProvider>,
        observer: Option<Arc<dyn SyncObserver>>,
    ) -> Result<Arc<Self>> {
        let tenant = TenantId::new(config.tenant).map_err(invalid)?;
        let mut core = kryonix_core::AgentConfig::new(config.db_path, config.server_url, tenant);
        core.profile = DeviceProfile {
            device: config.device.into(),
            network: config.network.into(),
        };
        if let Some(bytes) = config.cache_budget_bytes {
            core.cache.device_budget_bytes = bytes;
        }
        if let Some(bytes) = config.max_value_bytes {
            core.cache.max_value_bytes = usize_from(bytes);
        }
        if let Some(ms) = config.request_timeout_ms {
            core.request_timeout = Duration::from_millis(ms);
        }
        core.max_db_bytes = config.max_db_bytes;
        if let Some(version) = config.app_version {
            core.app_version = Some(version.parse::<AppVersion>().map_err(invalid)?);
        }
        core.encryption_key = config.encryption_key.map(encryption::key).transpose()?;
        let observer = observer
            .map(|o| Arc::new(ObserverAdapter(o)) as Arc<dyn kryonix_core::sync::SyncObserver>);
        let agent = Agent::open(
            core,
            Arc::new(TokenAdapter(tokens)),
            observer,
            &runtime::handle()?,
        )?;
        Ok(Arc::new(Self {
            inner: RwLock::new(Some(Arc::new(agent))),
        }))
    }

    /// A cached value, or `None` (never touches the network).
    pub fn get(&self, namespace: Namespace, key: String) -> Result<Option<Vec<u8>>> {
        let agent = self.agent()?;
        let key = agent.key(namespace.into(), &key)?;
        Ok(agent.cache().get(&key)?)
    }

    /// Several cached values of one namespace, in the order of `keys`.
    pub fn get_many(
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

    /// Stores a value locally. `ttl_ms` unset: the adaptive TTL of the device profile.
    pub fn put(
        &self,
        namespace: Namespace,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<()> {
        let agent = self.agent()?;
        let key = agent.key(namespace.into(), &key)?;
        let expiry = ttl_ms.map_or(Expiry::Adaptive, |ms| {
            Expiry::After(Duration::from_millis(ms))
        });
        Ok(agent.cache().put(&key, &value, expiry)?)
    }

    /// Removes a cached value; true if there was one.
    pub fn delete(&self, namespace: Namespace, key: String) -> Result<bool> {
        let agent = self.agent()?;
        let key = agent.key(namespace.into(), &key)?;
        Ok(agent.cache().delete(&key)?)
    }

    pub fn contains(&self, namespace: Namespace, key: String) -> Result<bool> {
        let agent = self.agent()?;
        let key = agent.key(namespace.into(), &key)?;
        Ok(agent.cache().contains(&key)?)
    }

    pub fn cache_stats(&self) -> Result<CacheStats> {
        Ok(self.agent()?.cache().stats().into())
    }

    /// Watches one key: `watcher` is told its current value first (null when it has none), then
    /// every change — put, delete, write, a pulled change, an expiry noticed, an eviction.
    /// Keep the handle: cancelling or closing it ends the watch, and so does shutdown.
    pub fn watch(
        &self,
        namespace: Namespace,
        key: String,
        watcher: Arc<dyn CacheWatcher>,
    ) -> Result<Arc<WatchHandle>> {
        let watch = self.agent()?.watch(namespace.into(), &key)?;
        watch::forward(watch, watcher)
    }

    /// Watches every key of `namespace`, or those starting with `prefix`: every live entry
    /// first, then a batch per committed change (a pulled page is one batch, one change per key).
    pub fn watch_namespace(
        &self,
        namespace: Namespace,
        prefix: Option<String>,
        watcher: Arc<dyn CacheWatcher>,
    ) -> Result<Arc<WatchHandle>> {
        let watch = self
            .agent()?
            .watch_namespace(namespace.into(), prefix.as_deref())?;
        watch::forward(watch, watcher)
    }

    /// How many watches are live (a cancelled or closed handle no longer counts).
    pub fn watcher_count(&self) -> Result<u64> {
        Ok(u64::try_from(self.agent()?.watcher_count()).unwrap_or(u64::MAX))
    }

    /// Queues several items in one transaction (all or none) and returns their ids, in order,
    /// once they are durable: one commit for the batch, far cheaper per item than `enqueue`.
    pub fn enqueue_all(&self, items: Vec<NewItem>) -> Result<Vec<String>> {
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

    /// Queues a mutation for upload and returns its id once it is durable.
    pub fn enqueue(
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

    /// Writes a value to the cache and queues it for upload in one call.
    pub fn write(
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

    /// The OS reported a network change.
    pub fn set_network(&self, network: NetworkProfile) -> Result<()> {
        Ok(self.agent()?.set_network(network.into())?)
    }

    pub fn set_device(&self, device: DeviceClass) -> Result<()> {
        Ok(self.agent()?.set_device(device.into())?)
    }

    /// The latest status the sync task published.
    pub fn status(&self) -> Result<SyncStatus> {
        Ok(self.agent()?.status().into())
    }

    /// Items the server refused for good.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        Ok(self
            .agent()?
            .dead_letters()?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Queues a dead letter again.
    pub fn retry_dead_letter(&self, id: String) -> Result<()> {
        Ok(self.agent()?.retry_dead_letter(item_id(&id)?)?)
    }

    pub fn discard_dead_letter(&self, id: String) -> Result<()> {
        Ok(self.agent()?.discard_dead_letter(item_id(&id)?)?)
    }
}

#[uniffi::export]
impl KryonixAgent {
    /// Syncs `tiers` now (all tiers when the list is empty) and returns when the wake-up is
    /// over. Cancelling the caller (a Kotlin coroutine) abandons the wait, not the sync.
    pub async fn sync_now(&self, tiers: Vec<Tier>) -> Result<SyncReport> {
        let agent = self.agent()?;
        let tiers = tier_set(&tiers);
        runtime::spawn(async move { Ok(agent.sync_now(tiers).await?.into()) }).await
    }

    /// Uploads what fits in `window_ms` (an OS background task's time), highest tiers first.
    pub async fn flush(&self, window_ms: u64) -> Result<SyncReport> {
        let agent = self.agent()?;
        let window = Duration::from_millis(window_ms);
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

impl KryonixAgent {
    pub(crate) fn agent(&self) -> Result<Arc<Agent>> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(KryonixError::closed)
    }
}
