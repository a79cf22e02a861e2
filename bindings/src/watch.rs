//! `WatchHandle` and the task that carries a core `Watch` to the app's `CacheWatcher`.
//!
//! Each watch gets one task on the bindings' runtime: it waits for the core watch's next batch
//! and calls the watcher with it, so the watcher is called for one batch at a time and a slow
//! one only lets more changes merge in core (the newest value per key), never queues them here.
//! The handle ends it at once: `cancel()`, or dropping it (Kotlin `close()`, Swift `deinit`).
//! It holds no reference to the agent, so a forgotten handle does not keep the agent alive; the
//! agent's shutdown ends every watch.

use std::sync::{Arc, Mutex, PoisonError};

use kryonix_core::{Watch, WatchCanceller};
use tokio::task::JoinHandle;

use crate::callbacks::CacheWatcher;
use crate::error::KryonixError;
use crate::runtime;
use crate::types::CacheChange;

/// A live watch. Cancel it (or drop it) to stop the callbacks.
#[derive(Debug, uniffi::Object)]
pub struct WatchHandle {
    canceller: WatchCanceller,
    task: Mutex<Option<JoinHandle<()>>>,
}

#[uniffi::export]
impl WatchHandle {
    /// Ends the watch: the agent forgets it at once and no new callback starts (one already
    /// running completes). Cancelling twice is fine.
    pub fn cancel(&self) {
        self.canceller.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Starts forwarding `watch` to `watcher` on the bindings' runtime.
pub(crate) fn forward(
    mut watch: Watch,
    watcher: Arc<dyn CacheWatcher>,
) -> Result<Arc<WatchHandle>, KryonixError> {
    let canceller = watch.canceller();
    let task = runtime::handle()?.spawn(async move {
        while let Some(batch) = watch.next().await {
            let changes = batch.into_iter().map(CacheChange::from).collect();
            if let Err(error) = watcher.on_change(changes) {
                tracing::warn!(%error, "the app's CacheWatcher.on_change failed");
            }
        }
    });
    Ok(Arc::new(WatchHandle {
        canceller,
        task: Mutex::new(Some(task)),
    }))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::KryonixAgent;
    use crate::callbacks::{CallbackError, TokenProvider};
    use crate::types::{
        AgentConfig, ChangeCause, Count, DeviceClass, Namespace, NetworkClass, NetworkProfile,
    };

    #[derive(Default)]
    struct Recorder(Mutex<Vec<CacheChange>>);

    impl CacheWatcher for Recorder {
        fn on_change(&self, changes: Vec<CacheChange>) -> Result<(), CallbackError> {
            self.0.lock().unwrap().extend(changes);
            Ok(())
        }
    }

    struct NoToken;

    impl TokenProvider for NoToken {
        fn token(&self, _: bool) -> Result<String, crate::callbacks::TokenError> {
            Ok(String::new())
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_watch_calls_back_until_its_handle_is_cancelled_or_dropped() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(watch_until_cancelled());
    }

    async fn watch_until_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let agent = KryonixAgent::open(
            AgentConfig {
                db_path: dir.path().join("a.db").to_string_lossy().into_owned(),
                server_url: "http://127.0.0.1:9".into(),
                tenant: "acme".into(),
                device: DeviceClass::Phone,
                network: NetworkProfile {
                    kind: NetworkClass::Offline,
                    metered: false,
                },
                cache_budget_bytes: None,
                max_value_bytes: None,
                request_timeout: None,
                max_db_bytes: None,
                app_version: None,
                encryption_key: None,
                server_ca_pem: None,
                server_pins: vec![],
                cache_eviction: None,
            },
            Arc::new(NoToken),
            None,
        )
        .await
        .unwrap();
        let seen = Arc::new(Recorder::default());
        let handle = agent
            .watch(Namespace::TenantConfig, "flags".into(), seen.clone())
            .await
            .unwrap();
        let all = agent
            .watch_namespace(Namespace::TenantConfig, None, Arc::new(Recorder::default()))
            .await
            .unwrap();
        assert_eq!(agent.watcher_count().unwrap(), Count(2));
        // Read before the put: unread, the put would replace it (newest value per key).
        wait_for("the initial state", || seen.0.lock().unwrap().len() == 1);
        agent
            .put_blocking(
                Namespace::TenantConfig,
                "flags".into(),
                b"on".to_vec(),
                None,
            )
            .unwrap();
        let want = [
            CacheChange {
                key: "flags".into(),
                value: None,
                cause: ChangeCause::Initial,
            },
            CacheChange {
                key: "flags".into(),
                value: Some(b"on".to_vec()),
                cause: ChangeCause::Put,
            },
        ];
        wait_for("the put", || seen.0.lock().unwrap().len() == 2);
        assert_eq!(*seen.0.lock().unwrap(), want);

        handle.cancel();
        handle.cancel();
        assert_eq!(agent.watcher_count().unwrap(), Count(1));
        drop(all);
        assert_eq!(agent.watcher_count().unwrap(), Count(0));
        agent
            .delete_blocking(Namespace::TenantConfig, "flags".into())
            .unwrap();
        assert_eq!(*seen.0.lock().unwrap(), want, "nothing after the cancel");
        assert!(matches!(
            agent
                .watch_namespace(Namespace::TenantConfig, Some("bad\u{1}".into()), seen)
                .await,
            Err(KryonixError::InvalidInput { .. })
        ));
    }
}
