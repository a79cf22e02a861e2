//! Agents for scenarios: a real [`Agent`] on a database file in a temp dir, with a static
//! device token, test-friendly settings, and an observer that records what it was told.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kryonix_core::sync::{RetrySchedule, StaticToken, SyncObserver, SyncStatus};
use kryonix_core::{Agent, AgentConfig, ItemId};
use kryonix_protocol::TenantId;

use crate::{HarnessError, Result};

/// Settings for a test agent: short request timeout (a withheld answer costs seconds, not 30),
/// and in-call retries that start at 200 ms instead of 1 s so fault scenarios stay quick. The
/// shape of the schedule (×2, jitter, 3 retries, then the tier's next slot) is the product's.
pub fn agent_config(db_path: &Path, server_url: &str, tenant: &str) -> Result<AgentConfig> {
    let tenant = TenantId::new(tenant).map_err(|e| HarnessError::Server(e.to_string()))?;
    let mut config = AgentConfig::new(db_path, server_url, tenant);
    config.request_timeout = Duration::from_secs(3);
    config.engine.retry = RetrySchedule {
        min_delay: Duration::from_millis(200),
        factor: 2.0,
        max_delay: Duration::from_secs(5),
        jitter: true,
    };
    Ok(config)
}

/// Opens an agent on the current tokio runtime with a static token.
pub fn open_agent(
    config: AgentConfig,
    token: String,
    observer: Option<Arc<RecordingObserver>>,
) -> Result<Agent> {
    let observer = observer.map(|o| o as Arc<dyn SyncObserver>);
    Ok(Agent::open(
        config,
        Arc::new(StaticToken(token)),
        observer,
        &tokio::runtime::Handle::current(),
    )?)
}

/// A dead letter as the observer heard of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterEvent {
    pub id: ItemId,
    pub code: String,
    pub reason: String,
}

/// Records every status and dead-letter event.
#[derive(Debug, Default)]
pub struct RecordingObserver {
    statuses: Mutex<Vec<SyncStatus>>,
    dead: Mutex<Vec<DeadLetterEvent>>,
}

impl RecordingObserver {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn dead_letters(&self) -> Vec<DeadLetterEvent> {
        self.dead
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn last_status(&self) -> Option<SyncStatus> {
        self.statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .cloned()
    }

    pub fn status_count(&self) -> usize {
        self.statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl SyncObserver for RecordingObserver {
    fn on_status(&self, status: &SyncStatus) {
        self.statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(status.clone());
    }

    fn on_dead_letter(&self, id: ItemId, code: &str, reason: &str) {
        self.dead
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(DeadLetterEvent {
                id,
                code: code.to_owned(),
                reason: reason.to_owned(),
            });
    }
}
