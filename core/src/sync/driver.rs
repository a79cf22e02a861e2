//! The driver: runs the [`SyncEngine`] against the outbox, a [`Transport`] and a tokio timer.
//!
//! The engine does no I/O; this module does all of it. [`step`] is one turn of the loop, and is
//! synchronous (SQLite calls are): feed the engine one event, apply the outbox writes it asks
//! for, read one snapshot of the queue, and let the engine decide what comes next. The async
//! [`Driver`] wraps it with the network and the timer; the engine tests and the sync benchmark
//! call [`step`] directly with a simulated server and a manual clock.
//!
//! One task owns the engine; everything else talks to it through a command channel, so the
//! engine needs no lock and sees events in one order. Requests go out one at a time (the engine
//! asks for no more), which keeps per-tier FIFO trivially true.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kryonix_protocol::{DeviceProfile, TenantId, Tier};
use tokio::sync::{mpsc, oneshot};

use super::engine::{Action, Event, FailureKind, SyncEngine, SyncStatus};
use super::transport::{Transport, TransportError};
use crate::cache::Cache;
use crate::clock::{Clock, Millis, duration_ms};
use crate::outbox::{ItemId, Outbox, OutboxError, Rejection, TierSet, Write};

/// Meta key of the downstream cursor.
pub const PULL_CURSOR_KEY: &str = "pull_cursor";

/// How long a burst of enqueues may gather before the engine looks at the queue.
const ENQUEUE_SETTLE: Duration = Duration::from_millis(5);

/// An app writing in a loop sends one notice per item; each engine step reads the whole queue's
/// statistics. When the commands that woke the driver are only such notices, wait a moment for
/// the rest of the burst, so that it costs one step instead of one per item. Anything else (a
/// sync request, a network change, shutdown) ends the wait at once.
async fn settle_enqueues(
    commands: &mut mpsc::UnboundedReceiver<Command>,
    batch: &mut Vec<Option<Command>>,
) {
    let is_enqueue = |c: &Option<Command>| matches!(c, Some(Command::Event(Event::Enqueued(_))));
    if !batch.iter().all(is_enqueue) {
        return;
    }
    let settle = tokio::time::sleep(ENQUEUE_SETTLE);
    tokio::pin!(settle);
    loop {
        tokio::select! {
            command = commands.recv() => {
                let more = is_enqueue(&command);
                batch.push(command);
                if !more {
                    return;
                }
            }
            () = &mut settle => return,
        }
    }
}

/// How long the driver waits before trying again after a local storage error.
const STORAGE_RETRY: Duration = Duration::from_secs(1);

/// Told about sync progress. Called from the driver task: keep it quick, don't block.
pub trait SyncObserver: Send + Sync + std::fmt::Debug {
    fn on_status(&self, status: &SyncStatus);
    fn on_dead_letter(&self, id: ItemId, code: &str, reason: &str);
}

/// What a `sync_now` or `flush` achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Items the server stored during the call.
    pub items_sent: u64,
    /// Items still waiting after it.
    pub remaining: u64,
    pub online: bool,
    /// The flush stopped at its deadline with items left.
    pub deadline_reached: bool,
}

/// What one [`step`] leaves for its caller: the engine's requests, timer and status, the outbox
/// writes it carried out (for logs and transcripts), and the items that just moved to the
/// dead-letter lane.
#[derive(Debug, Default)]
pub struct Step {
    pub actions: Vec<Action>,
    pub writes: Vec<Write>,
    pub dead_lettered: Vec<Rejection>,
}

/// One turn of the engine: `handle(event)`, apply its writes, snapshot, `poll`, apply the
/// writes the poll asked for. On a storage error the engine has moved on but the database has
/// not; the next successful step reconciles them (see the engine's module docs).
pub fn step(
    engine: &mut SyncEngine,
    outbox: &Outbox,
    now: Millis,
    event: Event,
) -> Result<Step, OutboxError> {
    let mut step = Step::default();
    let writes = engine.handle(now, event);
    apply(outbox, writes, &mut step)?;
    let snapshot = outbox.stats()?;
    let decided = engine.poll(now, &snapshot);
    apply(outbox, decided, &mut step)?;
    Ok(step)
}

fn apply(outbox: &Outbox, actions: Vec<Action>, step: &mut Step) -> Result<(), OutboxError> {
    for action in actions {
        match action {
            Action::Outbox(write) => {
                let applied = outbox.apply(&write)?;
                step.dead_lettered.extend(applied.dead_lettered);
                step.writes.push(write);
            }
            other => step.actions.push(other),
        }
    }
    Ok(())
}

/// What a `sync_now` or `flush` caller is answered: what the call achieved, or — when it sent
/// nothing and items wait — why (offline, refused credentials, an upgrade required, the server
/// unreachable).
pub(crate) type Reply = oneshot::Sender<Result<SyncReport, TransportError>>;

#[derive(Debug)]
pub(crate) enum Command {
    Event(Event),
    /// The app asks for a sync of `tiers` (`sync_now`), or for everything within `deadline`
    /// (`flush`). `sent_before`: the status's `items_sent` when the app called, so an upload
    /// already under way at that moment counts for the call.
    Sync {
        tiers: TierSet,
        deadline: Option<Instant>,
        reply: Reply,
        sent_before: u64,
    },
    Shutdown,
}

/// A `sync_now` or `flush` caller waiting for the wake-up to end.
struct Waiter {
    reply: Reply,
    sent_before: u64,
    deadline: Option<Instant>,
}

/// The loop's own bookkeeping between engine steps.
struct LoopState {
    waiters: Vec<Waiter>,
    sleep_until: Option<Millis>,
    queue: VecDeque<Event>,
    /// How long the last push took: a flush does not start one it cannot finish.
    last_push: Duration,
}

pub(crate) struct Driver<T> {
    pub engine: SyncEngine,
    pub transport: Arc<T>,
    pub cache: Arc<Cache>,
    pub outbox: Outbox,
    pub tenant: TenantId,
    pub clock: Arc<dyn Clock>,
    pub observer: Option<Arc<dyn SyncObserver>>,
    pub status: Arc<Mutex<SyncStatus>>,
    pub profile: DeviceProfile,
}

impl<T: Transport> Driver<T> {
    pub(crate) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut state = LoopState {
            waiters: Vec::new(),
            sleep_until: None,
            queue: VecDeque::from([Event::Tick]),
            last_push: Duration::from_millis(500),
        };
        loop {
            while let Some(event) = state.queue.pop_front() {
                self.turn(event, &mut state).await;
            }
            if self.engine.is_idle() {
                self.finish_all(&mut state.waiters);
            }
            let Some(mut batch) = self.wait(&mut commands, &mut state).await else {
                continue;
            };
            settle_enqueues(&mut commands, &mut batch).await;
            if self.take_commands(batch, &mut state) {
                break;
            }
        }
        self.finish_all(&mut state.waiters);
        tracing::debug!("sync: driver stopped");
    }

    /// One engine step for `event`, then the requests it asked for (whose outcomes are queued
    /// as the next events).
    async fn turn(&mut self, event: Event, state: &mut LoopState) {
        let now = self.clock.now_ms();
        // A failed request is answered to the waiting callers in this turn, once the engine has
        // taken it in: the status they read next already says why (unauthorized, offline, …).
        let failure = match &event {
            Event::RequestFailed { kind, error } => Some((kind.clone(), error.clone())),
            _ => None,
        };
        let step = match step(&mut self.engine, &self.outbox, now, event) {
            Ok(step) => step,
            Err(error) => {
                // A local database error: nothing accepted is lost (a write either committed
                // or not); the engine reconciles with the database at the next step.
                tracing::error!(%error, "sync: local storage failed; trying again shortly");
                state.sleep_until = Some(now + duration_ms(STORAGE_RETRY));
                return;
            }
        };
        for rejection in &step.dead_lettered {
            if let Some(observer) = &self.observer {
                observer.on_dead_letter(rejection.id, &rejection.code, &rejection.reason);
            }
        }
        let (statuses, actions): (Vec<Action>, Vec<Action>) = step
            .actions
            .into_iter()
            .partition(|a| matches!(a, Action::Status(_)));
        for status in statuses {
            if let Action::Status(status) = status {
                self.publish_status(status);
            }
        }
        if let Some((kind, error)) = failure {
            self.fail_waiters(kind, error, state);
        }
        for action in actions {
            match action {
                Action::Push { tier, limit } => {
                    let event = self.push(tier, limit, state).await;
                    state.queue.push_back(event);
                }
                Action::Hello => state.queue.push_back(self.hello().await),
                Action::Pull { limit } => state.queue.push_back(self.pull(limit).await),
                Action::SleepUntil(at) => state.sleep_until = at,
                // Published above; `step` applied every outbox write already.
                Action::Status(_) | Action::Outbox(_) => {}
            }
        }
    }

    /// Takes the tier's batch and uploads it; returns the outcome as the engine's next event.
    async fn push(&mut self, tier: Tier, limit: usize, state: &mut LoopState) -> Event {
        let closing = state.waiters.iter().any(|w| {
            w.deadline
                .is_some_and(|d| Instant::now() + state.last_push >= d)
        });
        if closing {
            // A flush window is closing: don't start what can't finish.
            self.finish_flushes(&mut state.waiters, true);
            return Event::PushAbandoned;
        }
        let items = match self.outbox.next_batch(limit, TierSet::of(&[tier])) {
            Ok(items) if items.is_empty() => return Event::NothingToPush,
            Ok(items) => items,
            Err(error) => {
                return Event::RequestFailed {
                    kind: FailureKind::Retryable {
                        retry_after: Some(STORAGE_RETRY),
                    },
                    error: format!("local storage: {error}"),
                };
            }
        };
        let started = Instant::now();
        let result = self.transport.push(&items, self.profile).await;
        state.last_push = started.elapsed();
        match result {
            Ok(reply) => Event::PushAnswered {
                sent: items.iter().map(|i| i.id).collect(),
                response: reply.response,
                elapsed: state.last_push,
                bytes: reply.bytes_sent,
                raw_bytes: reply.bytes_raw,
            },
            Err(e) => Event::RequestFailed {
                kind: e.kind,
                error: e.message,
            },
        }
    }

    /// Says hello for the current producer; returns the answer as the engine's next event.
    async fn hello(&self) -> Event {
        let producer = match self.outbox.producer() {
            Ok(producer) => producer,
            Err(error) => {
                return Event::RequestFailed {
                    kind: FailureKind::Retryable {
                        retry_after: Some(STORAGE_RETRY),
                    },
                    error: format!("local storage: {error}"),
                };
            }
        };
        match self.transport.hello(&producer).await {
            Ok(answer)
                if answer
                    .tenant
                    .as_deref()
                    .is_some_and(|t| t != self.tenant.as_str()) =>
            {
                let refused = self.tenant_mismatch(answer.tenant.unwrap_or_default());
                Event::RequestFailed {
                    kind: refused.kind,
                    error: refused.message,
                }
            }
            Ok(answer) if answer.producer == producer => {
                if let Some(max) = answer.max_value_bytes {
                    // Losing this only delays the check to the server's answer: log, go on.
                    if let Err(error) = self.outbox.set_server_limit(max) {
                        tracing::warn!(%error, "could not record the server's value limit");
                    }
                }
                Event::HelloAnswered {
                    last_seq: answer.last_seq,
                }
            }
            Ok(answer) => Event::RequestFailed {
                kind: FailureKind::Retryable { retry_after: None },
                error: format!(
                    "the server answered the hello for producer {:?}, not {producer:?}",
                    answer.producer
                ),
            },
            Err(e) => Event::RequestFailed {
                kind: e.kind,
                error: e.message,
            },
        }
    }

    fn publish_status(&self, mut status: SyncStatus) {
        status.cache_hit_ratio = self.cache.stats().hit_ratio;
        if let Ok(mut shared) = self.status.lock() {
            *shared = status.clone();
        }
        if let Some(observer) = &self.observer {
            observer.on_status(&status);
        }
    }

    /// Waits for the engine's timer, a flush deadline or a command. Returns the commands that
    /// arrived (at least one), or `None` when a timer fired (a tick is queued).
    async fn wait(
        &self,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        state: &mut LoopState,
    ) -> Option<Vec<Option<Command>>> {
        let flush_deadline = state.waiters.iter().filter_map(|w| w.deadline).min();
        let timer = state.sleep_until.map(|at| {
            let wait = u64::try_from(at - self.clock.now_ms()).unwrap_or(0);
            Duration::from_millis(wait)
        });
        let until_deadline = flush_deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let timer = match (timer, until_deadline) {
            (Some(t), Some(d)) => Some(t.min(d)),
            (t, d) => t.or(d),
        };
        let command = match timer {
            Some(wait) => tokio::select! {
                command = commands.recv() => command,
                () = tokio::time::sleep(wait) => {
                    state.queue.push_back(Event::Tick);
                    if flush_deadline.is_some_and(|d| Instant::now() >= d) {
                        self.finish_flushes(&mut state.waiters, true);
                    }
                    return None;
                }
            },
            None => commands.recv().await,
        };
        // Take everything already queued, so a burst of enqueues costs one engine step rather
        // than one per item.
        let mut batch = vec![command];
        while let Ok(more) = commands.try_recv() {
            batch.push(Some(more));
        }
        Some(batch)
    }

    /// Turns commands into events and waiters. Returns whether the driver must stop.
    fn take_commands(&mut self, batch: Vec<Option<Command>>, state: &mut LoopState) -> bool {
        let mut enqueued = false;
        let mut stop = false;
        for command in batch {
            match command {
                None | Some(Command::Shutdown) => stop = true,
                Some(Command::Event(Event::Enqueued(tier))) => {
                    if !std::mem::replace(&mut enqueued, true) {
                        state.queue.push_back(Event::Enqueued(tier));
                    }
                }
                Some(Command::Event(event)) => {
                    match &event {
                        Event::NetworkChanged(network) => self.profile.network = *network,
                        Event::DeviceChanged(device) => self.profile.device = *device,
                        _ => {}
                    }
                    state.queue.push_back(event);
                }
                Some(Command::Sync {
                    tiers,
                    deadline,
                    reply,
                    sent_before,
                }) => {
                    state.waiters.push(Waiter {
                        reply,
                        sent_before,
                        deadline,
                    });
                    state.queue.push_back(Event::SyncRequested(tiers));
                }
            }
        }
        stop
    }

    fn sent(&self) -> u64 {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .items_sent
    }

    fn tenant_mismatch(&self, token_tenant: String) -> TransportError {
        TransportError {
            message: format!(
                "the token is for tenant {token_tenant:?}, but the agent was opened for {:?}",
                self.tenant.as_str()
            ),
            kind: FailureKind::TenantMismatch { token_tenant },
        }
    }

    /// A request failed: callers whose call has sent nothing yet are answered now with the
    /// cause, instead of after the in-call retries (the engine keeps retrying on its schedule).
    fn fail_waiters(&self, kind: FailureKind, error: String, state: &mut LoopState) {
        let sent = self.sent();
        let (failed, rest): (Vec<Waiter>, Vec<Waiter>) =
            state.waiters.drain(..).partition(|w| sent <= w.sent_before);
        state.waiters = rest;
        for waiter in failed {
            let _ = waiter.reply.send(Err(TransportError {
                kind: kind.clone(),
                message: error.clone(),
            }));
        }
    }

    /// The answer for a call that is over: its report, or why it sent nothing while items wait.
    fn answer(
        &self,
        waiter: &Waiter,
        deadline_reached: bool,
    ) -> Result<SyncReport, TransportError> {
        let status = self
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let report = SyncReport {
            items_sent: status.items_sent.saturating_sub(waiter.sent_before),
            remaining: self.outbox.stats().map(|s| s.depth()).unwrap_or(0),
            online: status.online,
            deadline_reached,
        };
        if report.items_sent > 0 || report.remaining == 0 || deadline_reached {
            return Ok(report);
        }
        if let Some(gate) = status.upgrade_required {
            return Err(TransportError {
                kind: FailureKind::UpgradeRequired(gate),
                message: "the server requires a newer app".into(),
            });
        }
        if let Some(token_tenant) = status.tenant_mismatch {
            return Err(self.tenant_mismatch(token_tenant));
        }
        if status.unauthorized {
            return Err(TransportError {
                kind: FailureKind::Unauthorized,
                message: status
                    .last_error
                    .unwrap_or_else(|| "the server refused the credentials".into()),
            });
        }
        if !status.online {
            return Err(TransportError {
                kind: FailureKind::Retryable { retry_after: None },
                message: format!("offline: {} items wait for a network", report.remaining),
            });
        }
        Ok(report)
    }

    fn finish_all(&self, waiters: &mut Vec<Waiter>) {
        for waiter in waiters.drain(..) {
            let answer = self.answer(&waiter, false);
            // The caller may have stopped waiting; that is fine.
            let _ = waiter.reply.send(answer);
        }
    }

    fn finish_flushes(&self, waiters: &mut Vec<Waiter>, deadline_reached: bool) {
        let (flushes, rest): (Vec<Waiter>, Vec<Waiter>) =
            waiters.drain(..).partition(|w| w.deadline.is_some());
        *waiters = rest;
        for waiter in flushes {
            let answer = self.answer(&waiter, deadline_reached);
            let _ = waiter.reply.send(answer);
        }
    }

    /// Fetches one page after the stored cursor and applies it with its new cursor in one
    /// transaction; returns the outcome as the engine's next event.
    async fn pull(&mut self, limit: usize) -> Event {
        let storage_failed = |error: String| Event::RequestFailed {
            kind: FailureKind::Retryable { retry_after: None },
            error,
        };
        let cursor = match self.cache.meta_text(PULL_CURSOR_KEY) {
            Ok(cursor) => cursor,
            Err(e) => return storage_failed(e.to_string()),
        };
        let page = match self.transport.pull(cursor.as_deref(), limit).await {
            Ok(page) => page,
            Err(e) => {
                return Event::RequestFailed {
                    kind: e.kind,
                    error: e.message,
                };
            }
        };
        match self
            .cache
            .apply_remote(&self.tenant, &page.changes, PULL_CURSOR_KEY, &page.cursor)
        {
            Ok(report) => {
                tracing::debug!(?report, "sync: pulled a page");
                Event::PullAnswered {
                    has_more: page.has_more && !page.changes.is_empty(),
                }
            }
            Err(e) => storage_failed(format!("applying pulled changes: {e}")),
        }
    }
}
