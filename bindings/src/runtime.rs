//! The tokio runtime the bindings own.
//!
//! Kotlin and Swift have no tokio, so the bindings build one multi-threaded runtime, lazily, on
//! the first `KryonixAgent::open`, and every agent's sync driver runs on it. Async exports spawn
//! their work here and await the join handle, so the future the foreign side polls needs no
//! runtime context of its own, and a cancelled Kotlin coroutine only drops the handle: the agent
//! finishes the step it started and stays usable.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

use crate::error::KryonixError;

/// Worker threads: the driver does little CPU work; two keep one slow callback from stalling it.
const WORKER_THREADS: usize = 2;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The shared runtime's handle, building it on first use.
pub(crate) fn handle() -> Result<Handle, KryonixError> {
    let runtime = RUNTIME.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("kryonix-sync")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    match runtime {
        Ok(rt) => Ok(rt.handle().clone()),
        Err(reason) => Err(KryonixError::Other {
            reason: format!("could not start the sync runtime: {reason}"),
        }),
    }
}

/// Runs `future` on the shared runtime and waits for it from any executor.
pub(crate) async fn spawn<F, T>(future: F) -> Result<T, KryonixError>
where
    F: Future<Output = Result<T, KryonixError>> + Send + 'static,
    T: Send + 'static,
{
    handle()?
        .spawn(future)
        .await
        .map_err(|e| KryonixError::Other {
            reason: format!("the task failed: {e}"),
        })?
}

/// Runs blocking `work` (a whole-file SQLCipher rewrite) on the shared runtime's blocking pool and
/// waits for it from any executor, so neither the caller's thread nor a runtime worker is held.
pub(crate) async fn spawn_blocking<F, T>(work: F) -> Result<T, KryonixError>
where
    F: FnOnce() -> Result<T, KryonixError> + Send + 'static,
    T: Send + 'static,
{
    handle()?
        .spawn_blocking(work)
        .await
        .map_err(|e| KryonixError::Other {
            reason: format!("the task failed: {e}"),
        })?
}
