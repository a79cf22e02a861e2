//! The agent: what an app holds. One object that owns the database, the cache, the outbox and
//! the sync driver task, with the calls an app makes — read and write the cache, enqueue, ask
//! for a sync, tell it about the network, watch its status and watch cached data.
//!
//! The bindings (`kryonix-ffi`) export this object to Kotlin and Swift almost one to one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kryonix_protocol::wire::Op;
use kryonix_protocol::{
    AppVersion, DeviceClass, DeviceProfile, Namespace, NetworkProfile, TenantId, TenantKey, Tier,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::cache::{Cache, CacheConfig, Expiry, codec};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::outbox::{DeadLetter, ItemId, NewItem, Outbox, OutboxConfig, TierSet};
use crate::store::{Durability, EncryptionKey, FileLock, Store, StoreOptions};
use crate::sync::driver::{Command, Driver, SyncObserver, SyncReport};
use crate::sync::engine::{EngineConfig, Event, FailureKind, SyncEngine, SyncStatus};
use crate::sync::transport::{HttpTransport, TokenProvider, Transport};
use crate::sync::trust::ServerTrust;
use crate::watch::Watch;

/// Everything an agent needs to start.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The SQLite file (created if missing).
    pub db_path: PathBuf,
    /// `https://sync.example.com`.
    pub server_url: String,
    /// The tenant the device belongs to (the server takes it from the token; the device uses it
    /// to build its keys).
    pub tenant: TenantId,
    pub profile: DeviceProfile,
    pub cache: CacheConfig,
    pub durability: Durability,
    pub engine: EngineConfig,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// The most the database file may grow to, or `None` for no limit but the disk's. At the
    /// limit, writes fail with a full-storage error exactly as on a full disk
    /// ([`crate::StoreError::Full`]).
    pub max_db_bytes: Option<u64>,
    /// The app's version, sent in every request (`kryonix-app-version`) so a server with a
    /// minimum app version can stop apps too old for it (`426 upgrade_required`). `None`: not
    /// sent, and only the protocol version is gated.
    pub app_version: Option<AppVersion>,
    /// The database key (from the Android Keystore or iOS Keychain), or `None` for a plaintext
    /// file. See [`StoreOptions::key`].
    pub encryption_key: Option<EncryptionKey>,
    /// Which servers to trust: the platform's roots by default, or an app CA, and pinned keys
    /// ([`crate::sync::trust`]). A server that fails it is `Untrusted`; nothing is sent.
    pub server_trust: ServerTrust,
}

impl AgentConfig {
    pub fn new(
        db_path: impl Into<PathBuf>,
        server_url: impl Into<String>,
        tenant: TenantId,
    ) -> Self {
        Self {
            db_path: db_path.into(),
            server_url: server_url.into(),
            tenant,
            profile: DeviceProfile::default(),
            cache: CacheConfig::default(),
            durability: Durability::Normal,
            engine: EngineConfig::default(),
            request_timeout: Duration::from_secs(30),
            max_db_bytes: None,
            app_version: None,
            encryption_key: None,
            server_trust: ServerTrust::default(),
        }
    }
}

/// The device agent. See the module docs.
#[derive(Debug)]
pub struct Agent<T: Transport = HttpTransport> {
    tenant: TenantId,
    cache: Arc<Cache>,
    outbox: Outbox,
    transport: Arc<T>,
    profile: Mutex<DeviceProfile>,
    status: Arc<Mutex<SyncStatus>>,
    commands: mpsc::UnboundedSender<Command>,
    task: Mutex<Option<JoinHandle<()>>>,
    store: Arc<Store>,
    /// This agent's claim on the file (one agent per database). The sync task holds a clone, so
    /// the claim ends when both the agent has let go (`close`, or drop) and the task has ended:
    /// a dropped agent's task may still be finishing a request that writes to the outbox.
    lock: Mutex<Option<Arc<FileLock>>>,
}

impl Agent<HttpTransport> {
    /// Opens the database and starts syncing on `runtime` (the app's or the bindings' tokio
    /// runtime). The agent starts offline: call [`Agent::set_network`] when the OS says what it
    /// has.
    pub fn open(
        config: AgentConfig,
        tokens: Arc<dyn TokenProvider>,
        observer: Option<Arc<dyn SyncObserver>>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self> {
        check_server_url(&config.server_url)?;
        let transport = HttpTransport::with_trust(
            &config.server_url,
            tokens,
            config.request_timeout,
            &config.server_trust,
        )
        .map_err(|e| match e.kind {
            FailureKind::Untrusted => Error::InvalidConfig(format!("server trust: {}", e.message)),
            _ => Error::Setup(e.message),
        })?
        .with_app_version(config.app_version.clone());
        Self::with_transport(config, transport, Arc::new(SystemClock), observer, runtime)
    }
}

impl<T: Transport> Agent<T> {
    /// Like [`Agent::open`] with any transport and clock (tests, simulations).
    ///
    /// Fails with [`crate::StoreError::AlreadyOpen`] while another agent, in this process or
    /// another, has the same file open: two sync loops would hand out the same outbox items.
    /// The file is free again once [`Agent::close`] returns; after a drop without `close`, once
    /// the sync task has ended (it stops at its next step, after the request in flight).
    pub fn with_transport(
        config: AgentConfig,
        transport: T,
        clock: Arc<dyn Clock>,
        observer: Option<Arc<dyn SyncObserver>>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self> {
        // Before the store opens, so a refused second agent never touches the file.
        let lock = Arc::new(FileLock::acquire(&config.db_path)?);
        let options = StoreOptions {
            durability: config.durability,
            max_size_bytes: config.max_db_bytes,
            key: config.encryption_key,
            ..StoreOptions::default()
        };
        let store = Arc::new(Store::open(&config.db_path, &options)?);
        let cache_config = CacheConfig {
            profile: config.profile,
            ..config.cache
        };
        let cache = Arc::new(Cache::open(store.clone(), clock.clone(), cache_config)?);
        let outbox = Outbox::open(
            store.clone(),
            clock.clone(),
            OutboxConfig::new(config.tenant.clone()),
        )?;
        let engine = SyncEngine::new(config.engine.clone(), clock.now_ms());
        let transport = Arc::new(transport);
        let status = Arc::new(Mutex::new(SyncStatus::default()));
        let (commands, receiver) = mpsc::unbounded_channel();
        let offline_profile = DeviceProfile {
            network: NetworkProfile::OFFLINE,
            ..config.profile
        };
        let driver = Driver {
            engine,
            transport: transport.clone(),
            cache: cache.clone(),
            outbox: outbox.clone(),
            tenant: config.tenant.clone(),
            clock,
            observer,
            status: status.clone(),
            profile: offline_profile,
        };
        let claim = lock.clone();
        let task = runtime.spawn(async move {
            driver.run(receiver).await;
            drop(claim);
        });
        let agent = Self {
            tenant: config.tenant,
            cache,
            outbox,
            transport,
            profile: Mutex::new(config.profile),
            status,
            commands,
            task: Mutex::new(Some(task)),
            store,
            lock: Mutex::new(Some(lock)),
        };
        agent.send(Command::Event(Event::DeviceChanged(config.profile.device)))?;
        agent.send(Command::Event(Event::NetworkChanged(
            config.profile.network,
        )))?;
        Ok(agent)
    }

    /// Re-encrypts the database under `new_key` ([`Store::rekey`]); calls wait while every page
    /// is rewritten. Keep the old key until this returns `Ok`, then forget it.
    pub fn rekey(&self, new_key: &EncryptionKey) -> Result<()> {
        // Held throughout, so `close` cannot hand the file to another agent mid-rewrite; a
        // closed agent no longer owns the file and changes nothing.
        let lock = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if lock.is_none() {
            return Err(Error::Closed);
        }
        Ok(self.store.rekey(new_key)?)
    }

    fn send(&self, command: Command) -> Result<()> {
        self.commands.send(command).map_err(|_| Error::Closed)
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// A key of this agent's tenant.
    pub fn key(&self, namespace: Namespace, key: &str) -> Result<TenantKey> {
        Ok(TenantKey::new(&self.tenant, namespace, key).map_err(crate::cache::CacheError::from)?)
    }

    /// The local cache (reads and writes never touch the network).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The outbox (dead letters, stats).
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Queues a mutation for upload; returns once it is durable. The sync driver is told, so a
    /// tier whose slot has passed goes out at once.
    pub fn enqueue(
        &self,
        namespace: Namespace,
        key: &str,
        op: Op,
        payload: &[u8],
        tier: Tier,
    ) -> Result<ItemId> {
        let id = self.outbox.enqueue(namespace, key, op, payload, tier)?;
        self.send(Command::Event(Event::Enqueued(tier)))?;
        Ok(id)
    }

    /// Queues several items in one transaction: all or none (an invalid item refuses the whole
    /// batch, naming it). Much cheaper per item than one `enqueue` each: one commit, one wake of
    /// the sync task. Ids are returned in the order of `items`.
    pub fn enqueue_all(&self, items: &[NewItem<'_>]) -> Result<Vec<ItemId>> {
        let ids = self.outbox.enqueue_many(items)?;
        let mut tiers = TierSet::NONE;
        for item in items {
            tiers = tiers.with(item.tier);
        }
        for tier in tiers.iter() {
            self.send(Command::Event(Event::Enqueued(tier)))?;
        }
        Ok(ids)
    }

    /// Writes a value locally and queues it for upload: the app sees its own write at once, and
    /// it shadows server values for that key until the server has it.
    ///
    /// Should the queue refuse it (a full disk), the cached copy is dropped again, so the app
    /// never sees a value locally that will not reach the server; the key then reads as a
    /// miss (read-through refills it).
    pub fn write(
        &self,
        namespace: Namespace,
        key: &str,
        value: &[u8],
        tier: Tier,
    ) -> Result<ItemId> {
        let tenant_key = self.key(namespace, key)?;
        // Admitted whatever the adaptive policy thinks of it: the app reads its own write.
        self.cache
            .put_admitted(&tenant_key, value, Expiry::Adaptive)?;
        let queued = self.enqueue(namespace, key, Op::Put, value, tier);
        // Only a refusal by the queue means "not queued"; an agent closed after the enqueue has
        // the item queued all the same.
        if let Err(Error::Outbox(_)) = &queued
            && let Err(error) = self.cache.delete(&tenant_key)
        {
            // The key is the app's data: not in a warning.
            tracing::warn!(%error, %namespace, "could not drop the cached copy of a write that was not queued");
        }
        queued
    }

    /// Syncs the given tiers now (whatever the network class, unless offline) and returns when
    /// the wake-up is over: everything sent, or retries spent and rescheduled.
    ///
    /// When the call sends nothing while items wait, it fails with the cause instead of
    /// returning a report: [`FailureKind::Retryable`](crate::sync::FailureKind) when offline or
    /// the server is unreachable (answered at the first failed request; the agent keeps
    /// retrying on its schedule), `Unauthorized` when the credentials are refused,
    /// `UpgradeRequired` behind the upgrade gate. Nothing is lost either way.
    pub async fn sync_now(&self, tiers: TierSet) -> Result<SyncReport> {
        self.sync(tiers, None).await
    }

    /// Uploads as much as fits in `window` (an OS background task's time), highest tiers first,
    /// and never starts a request it expects to outlast the window. What is left resumes later.
    /// Fails like [`Agent::sync_now`] when it sends nothing while items wait.
    pub async fn flush(&self, window: Duration) -> Result<SyncReport> {
        self.sync(TierSet::ALL, Some(Instant::now() + window)).await
    }

    async fn sync(&self, tiers: TierSet, deadline: Option<Instant>) -> Result<SyncReport> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Sync {
            tiers,
            deadline,
            reply,
            sent_before: self.items_sent(),
        })?;
        answer
            .await
            .map_err(|_| Error::Closed)?
            .map_err(Error::Transport)
    }

    fn items_sent(&self) -> u64 {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .items_sent
    }

    /// The OS reported a network change.
    pub fn set_network(&self, network: NetworkProfile) -> Result<()> {
        let profile = {
            let mut profile = self.profile.lock().unwrap_or_else(PoisonError::into_inner);
            profile.network = network;
            *profile
        };
        self.cache.set_profile(profile);
        self.send(Command::Event(Event::NetworkChanged(network)))
    }

    pub fn set_device(&self, device: DeviceClass) -> Result<()> {
        let profile = {
            let mut profile = self.profile.lock().unwrap_or_else(PoisonError::into_inner);
            profile.device = device;
            *profile
        };
        self.cache.set_profile(profile);
        self.send(Command::Event(Event::DeviceChanged(device)))
    }

    pub fn profile(&self) -> DeviceProfile {
        *self.profile.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sync status: the queue figures read now (so a status taken right after an
    /// `enqueue` counts it), the rest as the driver last published it.
    pub fn status(&self) -> SyncStatus {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match self.outbox.stats() {
            Ok(stats) => {
                for tier in Tier::ALL {
                    let s = stats.tier(tier);
                    let entry = status.tiers.entry(tier).or_default();
                    entry.depth = s.depth;
                    entry.oldest_age_ms = s.oldest_age_ms;
                    entry.in_flight = s.in_flight;
                    entry.dead_letters = s.dead;
                    entry.overdue = s.overdue;
                }
            }
            // The published figures are still a status; the error is the database's to report.
            Err(error) => tracing::warn!(%error, "status: could not read the queue"),
        }
        status
    }

    /// Reads a key from the local cache; on a miss (or an expired entry) and when `online`,
    /// fetches it from the server's L2 cache and stores it with the adaptive TTL (or the
    /// server's remaining TTL).
    pub async fn get_or_fetch(&self, namespace: Namespace, key: &str) -> Result<Option<Vec<u8>>> {
        let tenant_key = self.key(namespace, key)?;
        if let Some(value) = self.cache.get(&tenant_key)? {
            return Ok(Some(value));
        }
        let profile = self.profile();
        if profile.network.class == kryonix_protocol::NetworkClass::Offline {
            return Ok(None);
        }
        let entries = self
            .transport
            .cache_get_many(namespace, &[key.to_owned()], profile)
            .await
            .map_err(Error::Transport)?;
        let Some(Some(entry)) = entries.into_iter().next() else {
            return Ok(None);
        };
        // The same bound as a stored value's: a small compressed answer must not be able to make
        // the phone allocate gigabytes (a decompression bomb).
        let value = codec::decode(entry.encoding, &entry.value, self.cache.max_value_bytes())
            .map_err(crate::cache::CacheError::from)?;
        let expiry = entry
            .ttl_secs
            .filter(|s| *s > 0)
            .map_or(Expiry::Adaptive, |s| Expiry::After(Duration::from_secs(s)));
        self.cache.put(&tenant_key, &value, expiry)?;
        Ok(Some(value))
    }

    /// Watches one key of this tenant: its current value first (`None` when it has none), then
    /// every change — a local put, delete or write, a pulled change, an expiry noticed, an
    /// eviction — coalesced to the newest value while the caller is not reading. See
    /// [`crate::watch`]. Dropping the [`Watch`] ends it; closing the agent ends it too.
    pub fn watch(&self, namespace: Namespace, key: &str) -> Result<Watch> {
        self.ensure_open()?;
        Ok(self.cache.watch_key(&self.key(namespace, key)?)?)
    }

    /// Watches every key of `namespace` (or those starting with `prefix`): every live entry
    /// first, then each change, one batch per committed transaction at most one change per key.
    pub fn watch_namespace(&self, namespace: Namespace, prefix: Option<&str>) -> Result<Watch> {
        self.ensure_open()?;
        Ok(self
            .cache
            .watch_prefix(&self.tenant, namespace, prefix.unwrap_or_default())?)
    }

    /// How many watches are live (a cancelled or dropped one no longer counts).
    pub fn watcher_count(&self) -> usize {
        self.cache.watcher_count()
    }

    /// `Closed` once the driver has stopped (after `close`): a watch would never end otherwise.
    fn ensure_open(&self) -> Result<()> {
        if self.commands.is_closed() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        Ok(self.outbox.dead_letters()?)
    }

    /// Sends a dead letter again.
    pub fn retry_dead_letter(&self, id: ItemId) -> Result<()> {
        self.outbox.retry_dead(id)?;
        self.send(Command::Event(Event::Tick))
    }

    pub fn discard_dead_letter(&self, id: ItemId) -> Result<()> {
        Ok(self.outbox.discard_dead(id)?)
    }

    /// Stops the driver after the request in flight (if any) settles, and ends every watch
    /// (after what each has pending). Queued items stay in the database for the next start.
    pub async fn close(&self) -> Result<()> {
        let _ = self.commands.send(Command::Shutdown);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let stopped = match task {
            Some(task) => task.await.map_err(|e| Error::Task(e.to_string())),
            None => Ok(()),
        };
        // After the driver: a page it applied on its way out is still told.
        self.cache.close_watches();
        // No sync loop runs on the file any more (the task dropped its claim when it ended):
        // another agent may open it.
        drop(
            self.lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        stopped
    }
}

impl<T: Transport> Drop for Agent<T> {
    fn drop(&mut self) {
        // The task ends when it sees the channel closed; nothing is lost either way.
        let _ = self.commands.send(Command::Shutdown);
    }
}

/// An `http://` or `https://` URL with a host, or a typed error saying what is wrong with it.
fn check_server_url(url: &str) -> Result<()> {
    let invalid = |why: String| Error::InvalidConfig(format!("server_url {url:?}: {why}"));
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "the scheme must be https (or http), not {:?}",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid(
            "a query or fragment has no place in the server URL".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use kryonix_protocol::wire::{
        CacheEntry, HelloResponse, ItemOutcome, PullResponse, PushResponse, PushResult,
    };

    use super::*;
    use crate::outbox::{OutboxError, OutboxItem};
    use crate::sync::transport::{PushReply, TransportError};
    use crate::{CacheError, StoreError};

    /// An in-memory server at the transport edge that keeps the last number stored per
    /// producer and tier, as the real one does, and the ids it stored.
    #[derive(Debug, Default)]
    struct FakeServer {
        stored: Mutex<HashSet<String>>,
        last: Mutex<std::collections::HashMap<(String, u8), u64>>,
        /// The tenant of the token, echoed in the hello (`None`: an older server's answer).
        token_tenant: Option<String>,
    }

    impl Transport for FakeServer {
        async fn push(
            &self,
            items: &[OutboxItem],
            _: DeviceProfile,
        ) -> Result<PushReply, TransportError> {
            let mut stored = self.stored.lock().unwrap();
            let mut last = self.last.lock().unwrap();
            let results = items
                .iter()
                .map(|i| {
                    let top = last
                        .entry((i.producer.clone(), i.tier.number()))
                        .or_default();
                    let outcome = if i.key == "poison" {
                        ItemOutcome::Rejected {
                            code: "invalid_key".into(),
                            reason: "refused".into(),
                        }
                    } else if i.seq > *top {
                        *top = i.seq;
                        assert!(stored.insert(i.id.to_string()), "stored twice");
                        ItemOutcome::Accepted
                    } else {
                        ItemOutcome::Duplicate
                    };
                    PushResult {
                        id: i.id.to_string(),
                        outcome,
                    }
                })
                .collect();
            Ok(PushReply {
                response: PushResponse {
                    results,
                    last_seq: [0; 4],
                },
                bytes_sent: 10,
                bytes_raw: 20,
            })
        }

        async fn hello(&self, producer: &str) -> Result<HelloResponse, TransportError> {
            let last = self.last.lock().unwrap();
            Ok(HelloResponse {
                max_value_bytes: None,
                tenant: self.token_tenant.clone(),
                producer: producer.to_owned(),
                last_seq: std::array::from_fn(|i| {
                    last.get(&(producer.to_owned(), i as u8 + 1))
                        .copied()
                        .unwrap_or(0)
                }),
            })
        }

        async fn pull(
            &self,
            cursor: Option<&str>,
            _: usize,
        ) -> Result<PullResponse, TransportError> {
            Ok(PullResponse {
                changes: vec![],
                cursor: cursor.unwrap_or("c0").into(),
                has_more: false,
            })
        }

        async fn cache_get_many(
            &self,
            _: Namespace,
            keys: &[String],
            _: DeviceProfile,
        ) -> Result<Vec<Option<CacheEntry>>, TransportError> {
            Ok(keys
                .iter()
                .map(|k| {
                    (k == "remote").then(|| CacheEntry {
                        key: k.clone(),
                        value: b"from-l2".to_vec(),
                        encoding: kryonix_protocol::Encoding::Identity,
                        ttl_secs: Some(60),
                    })
                })
                .collect())
        }
    }

    /// An agent on a temp file, talking to a fresh [`FakeServer`].
    fn open_agent(
        network: NetworkProfile,
        observer: Option<Arc<dyn SyncObserver>>,
    ) -> (tempfile::TempDir, Agent<FakeServer>) {
        let dir = tempfile::tempdir().unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let mut config = AgentConfig::new(dir.path().join("a.db"), "http://unused", tenant);
        config.profile.network = network;
        let runtime = tokio::runtime::Handle::current();
        let clock = Arc::new(SystemClock);
        let agent = Agent::with_transport(config, FakeServer::default(), clock, observer, &runtime);
        (dir, agent.unwrap())
    }

    #[tokio::test]
    async fn enqueue_all_queues_a_batch_in_order_or_nothing() {
        let (_dir, agent) = open_agent(NetworkProfile::OFFLINE, None);
        let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
        let items: Vec<NewItem<'_>> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| NewItem {
                namespace: Namespace::UserCache,
                key,
                op: Op::Put,
                payload: b"v",
                tier: Tier::ALL[i % 4],
            })
            .collect();
        let ids = agent.enqueue_all(&items).unwrap();
        assert_eq!(ids.len(), 50);
        assert_eq!(agent.status().tiers[&Tier::Critical].depth, 13);
        for (id, key) in ids.iter().zip(&keys) {
            assert_eq!(&agent.outbox().get(*id).unwrap().unwrap().0.key, key);
        }
        // One bad item refuses the batch: nothing of it is queued.
        let mut bad = items.clone();
        bad[7].key = "";
        assert!(matches!(
            agent.enqueue_all(&bad),
            Err(Error::Outbox(crate::OutboxError::InvalidKey(_)))
        ));
        assert_eq!(agent.outbox().stats().unwrap().depth(), 50);
    }

    #[tokio::test]
    async fn a_server_url_that_cannot_work_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        for url in [
            "not a url",
            "ftp://sync.example.com",
            "https://",
            "sync.example.com",
            "https://h/?x=1",
        ] {
            let config =
                AgentConfig::new(dir.path().join("a.db"), url, TenantId::new("acme").unwrap());
            let tokens = Arc::new(crate::sync::StaticToken("t".into()));
            let refused = Agent::open(config, tokens, None, &tokio::runtime::Handle::current())
                .err()
                .unwrap_or_else(|| panic!("{url:?} was accepted"));
            assert!(
                matches!(refused, Error::InvalidConfig(_)),
                "{url:?}: {refused:?}"
            );
            assert!(
                !dir.path().join("a.db").exists(),
                "{url:?}: the database was created"
            );
        }
        for url in [
            "https://sync.example.com",
            "http://127.0.0.1:8080/",
            "https://h.example/base",
        ] {
            assert!(check_server_url(url).is_ok(), "{url}");
        }
    }

    #[tokio::test]
    async fn a_token_of_another_tenant_stops_sync_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let mut config = AgentConfig::new(dir.path().join("a.db"), "http://unused", tenant);
        config.profile.network = NetworkProfile::WIFI;
        let server = FakeServer {
            token_tenant: Some("globex".into()),
            ..FakeServer::default()
        };
        let runtime = tokio::runtime::Handle::current();
        let agent =
            Agent::with_transport(config, server, Arc::new(SystemClock), None, &runtime).unwrap();
        agent
            .enqueue(Namespace::UserCache, "k", Op::Put, b"v", Tier::Critical)
            .unwrap();
        let refused = agent.sync_now(TierSet::ALL).await.unwrap_err();
        assert!(
            matches!(&refused, Error::Transport(e) if e.kind == crate::sync::FailureKind::TenantMismatch { token_tenant: "globex".into() }),
            "{refused:?}"
        );
        assert!(refused.to_string().contains("acme"), "{refused}");
        assert!(agent.transport.stored.lock().unwrap().is_empty());
        assert_eq!(agent.status().tenant_mismatch.as_deref(), Some("globex"));
        // Asking again changes nothing.
        assert!(agent.sync_now(TierSet::ALL).await.is_err());
        assert!(agent.transport.stored.lock().unwrap().is_empty());
        assert_eq!(agent.outbox().stats().unwrap().depth(), 1);
        agent.close().await.unwrap();
    }

    /// An agent on the fake server, in the current runtime.
    fn agent_on_fake_server(config: AgentConfig) -> Agent<FakeServer> {
        let runtime = tokio::runtime::Handle::current();
        Agent::with_transport(
            config,
            FakeServer::default(),
            Arc::new(SystemClock),
            None,
            &runtime,
        )
        .unwrap()
    }

    /// The app reads its own write at once, even in a full namespace whose adaptive policy
    /// would turn a plain put of the same value away.
    #[tokio::test]
    async fn a_write_is_read_back_in_a_full_adaptive_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let mut config = AgentConfig::new(dir.path().join("a.db"), "http://unused", tenant);
        // user_cache (allkeys-lru, so adaptive) gets a few dozen of these values.
        config.cache.device_budget_bytes = 2 * 1024 * 1024;
        let agent = agent_on_fake_server(config);
        let ns = Namespace::UserCache;
        let budget = agent.cache().budget(ns);
        // Values that do not compress, so each is charged its 4 KiB.
        let mut state = 7u64;
        let value: Vec<u8> = (0..4096)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                (state >> 56) as u8
            })
            .collect();
        let hot = (budget / 4200) as usize + 8;
        let key = |k: &str| agent.key(ns, k).unwrap();
        for i in 0..hot {
            let hot_key = key(&format!("hot{i}"));
            agent.cache().put(&hot_key, &value, Expiry::Never).unwrap();
        }
        for _ in 0..3 {
            for i in 0..hot {
                agent.cache().get(&key(&format!("hot{i}"))).unwrap();
            }
        }
        agent.cache().flush_access_stats().unwrap();
        let plain = key("plain");
        agent.cache().put(&plain, &value, Expiry::Never).unwrap();
        assert!(
            agent.cache().get(&plain).unwrap().is_none(),
            "a plain put is turned away"
        );
        for i in 0..20 {
            let mine = format!("mine{i}");
            agent.write(ns, &mine, &value, Tier::Preferences).unwrap();
            let read = agent.cache().get(&key(&mine)).unwrap();
            assert!(read.as_deref() == Some(&value[..]), "{mine} reads back");
        }
        agent.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_write_the_full_disk_refuses_is_not_left_in_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let mut config = AgentConfig::new(dir.path().join("a.db"), "http://unused", tenant);
        config.max_db_bytes = Some(256 * 1024);
        let agent = agent_on_fake_server(config);
        // Values that do not compress: each costs its size twice (cache and queue).
        let value = |i: usize| -> Vec<u8> {
            (0..1024u32)
                .map(|b| {
                    (b.wrapping_mul(2_654_435_761) ^ (i as u32).wrapping_mul(40_503) >> 3) as u8
                })
                .collect()
        };
        let mut written = 0;
        let refused = loop {
            match agent.write(
                Namespace::UserCache,
                &format!("k{written}"),
                &value(written),
                Tier::Critical,
            ) {
                Ok(_) => written += 1,
                Err(e) => break e,
            }
            assert!(written < 5_000, "the limit never hit");
        };
        assert!(refused.is_retryable(), "{refused:?}");
        assert!(
            matches!(
                &refused,
                Error::Outbox(OutboxError::Store(StoreError::Full))
                    | Error::Cache(CacheError::Store(StoreError::Full))
            ),
            "{refused:?}"
        );
        let refused_key = agent
            .key(Namespace::UserCache, &format!("k{written}"))
            .unwrap();
        assert_eq!(agent.cache().get(&refused_key).unwrap(), None);
        assert_eq!(agent.outbox().stats().unwrap().depth(), written as u64);
        agent.close().await.unwrap();
    }

    #[tokio::test]
    async fn offline_enqueue_then_sync_now_delivers_everything() {
        let (_dir, agent) = open_agent(NetworkProfile::OFFLINE, None);
        for i in 0..250 {
            agent
                .enqueue(
                    Namespace::UserCache,
                    &format!("k{i}"),
                    Op::Put,
                    b"v",
                    Tier::ALL[i % 4],
                )
                .unwrap();
        }
        // Offline, the call says so instead of reporting that nothing went.
        let offline = agent.sync_now(TierSet::ALL).await.unwrap_err();
        assert!(
            matches!(&offline, Error::Transport(e) if matches!(e.kind, crate::sync::FailureKind::Retryable { .. })),
            "{offline:?}"
        );
        assert!(offline.is_retryable());
        assert_eq!(agent.status().tiers[&Tier::Critical].depth, 63);

        agent.set_network(NetworkProfile::WIFI).unwrap();
        let report = agent.sync_now(TierSet::ALL).await.unwrap();
        assert_eq!(report.remaining, 0);
        assert_eq!(agent.transport.stored.lock().unwrap().len(), 250);
        let status = agent.status();
        assert_eq!(status.items_sent, 250);
        assert!(status.bytes_raw > status.bytes_sent);

        // Read-through: a miss is fetched from the server's L2 cache and kept.
        assert_eq!(
            agent
                .get_or_fetch(Namespace::ApiCache, "remote")
                .await
                .unwrap(),
            Some(b"from-l2".to_vec())
        );
        assert_eq!(
            agent
                .get_or_fetch(Namespace::ApiCache, "absent")
                .await
                .unwrap(),
            None
        );
        let key = agent.key(Namespace::ApiCache, "remote").unwrap();
        assert!(
            agent.cache().get_entry(&key).unwrap().unwrap().ttl.unwrap() <= Duration::from_secs(60)
        );
        agent.close().await.unwrap();
    }

    #[derive(Debug, Default)]
    struct Recorder {
        statuses: Mutex<Vec<SyncStatus>>,
        dead: Mutex<Vec<(ItemId, String)>>,
    }

    impl SyncObserver for Recorder {
        fn on_status(&self, status: &SyncStatus) {
            self.statuses.lock().unwrap().push(status.clone());
        }

        fn on_dead_letter(&self, id: ItemId, code: &str, _reason: &str) {
            self.dead.lock().unwrap().push((id, code.to_owned()));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_observer_sees_progress_and_dead_letters() {
        let recorder = Arc::new(Recorder::default());
        let (_dir, agent) = open_agent(NetworkProfile::WIFI, Some(recorder.clone()));
        let bad = agent
            .enqueue(
                Namespace::UserCache,
                "poison",
                Op::Put,
                b"x",
                Tier::Critical,
            )
            .unwrap();
        for i in 0..5 {
            agent
                .enqueue(
                    Namespace::UserCache,
                    &format!("ok{i}"),
                    Op::Put,
                    b"v",
                    Tier::Preferences,
                )
                .unwrap();
        }
        let report = agent.sync_now(TierSet::ALL).await.unwrap();
        assert_eq!(report.remaining, 0);
        // The wake-up the agent starts when it opens online may send some of the items before
        // this `sync_now` is handled (its report counts only what it sent): count them all.
        assert_eq!(agent.status().items_sent, 5);
        assert_eq!(
            *recorder.dead.lock().unwrap(),
            [(bad, "invalid_key".to_owned())]
        );
        let last = recorder.statuses.lock().unwrap().last().cloned().unwrap();
        assert!(last.online);
        assert_eq!(last.items_sent, 5);
        assert_eq!(last.tiers[&Tier::Critical].dead_letters, 1);
        assert!(last.tiers[&Tier::Preferences].last_success_at.is_some());
        assert_eq!(agent.dead_letters().unwrap().len(), 1);
        agent.discard_dead_letter(bad).unwrap();
        assert!(agent.dead_letters().unwrap().is_empty());
        agent.close().await.unwrap();
        assert!(matches!(
            agent.sync_now(TierSet::ALL).await,
            Err(Error::Closed)
        ));
    }

    #[tokio::test]
    async fn flush_with_no_time_sends_nothing_and_loses_nothing() {
        let (_dir, agent) = open_agent(NetworkProfile::OFFLINE, None);
        agent
            .enqueue(Namespace::UserCache, "k", Op::Put, b"v", Tier::Critical)
            .unwrap();
        let offline = agent.flush(Duration::ZERO).await.unwrap_err();
        assert!(offline.is_retryable(), "{offline:?}");
        assert_eq!(agent.outbox().stats().unwrap().depth(), 1);
        agent.set_network(NetworkProfile::WIFI).unwrap();
        let report = agent.flush(Duration::from_secs(30)).await.unwrap();
        assert_eq!(report.remaining, 0);
        assert!(!report.deadline_reached);
    }
}
