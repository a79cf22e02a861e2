//! The async driver: runs the [`SyncEngine`]'s actions against a [`Transport`] and a tokio
//! timer, and feeds the outcomes back as events.
//!
//! One task owns the engine; everything else talks to it through a command channel, so the
//! engine needs no lock and sees events in one order. Requests go out one at a time (the engine
//! asks for no more), which keeps per-tier FIFO trivially true.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kryonix_protocol::{DeviceProfile, TenantId};
use tokio::sync::{mpsc, oneshot};

use super::engine::{Action, Event, FailureKind, SyncEngine, SyncStatus};
use super::transport::Transport;
use crate::cache::Cache;
use crate::clock::{Clock, Millis};
use crate::outbox::{ItemId, Outbox, TierSet};

/// Meta key of the downstream cursor.
pub const PULL_CURSOR_KEY: &str = "pull_cursor";

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

#[derive(Debug)]
pub(crate) enum Command {
    Event(Event),
    SyncNow {
        tiers: TierSet,
        reply: oneshot::Sender<SyncReport>,
    },
    Flush {
        deadline: Instant,
        reply: oneshot::Sender<SyncReport>,
    },
    Shutdown,
}

struct Waiter {
    reply: oneshot::Sender<SyncReport>,
    sent_before: u64,
    deadline: Option<Instant>,
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
        let mut waiters: Vec<Waiter> = Vec::new();
        let mut sleep_until: Option<Millis> = None;
        let mut queue: Vec<Event> = vec![Event::Tick];
        let mut last_push = Duration::from_millis(500);
        loop {
            // Handle every event produced so far, performing requests as the engine asks.
            while let Some(event) = pop_front(&mut queue) {
                let actions = match self.engine.handle(event) {
                    Ok(actions) => actions,
                    Err(error) => {
                        // A local database error: nothing was lost (the outbox is unchanged);
                        // try again on the next tick.
                        tracing::error!(%error, "sync: engine step failed");
                        sleep_until = Some(self.clock.now_ms() + 1_000);
                        continue;
                    }
                };
                for action in actions {
                    match action {
                        Action::Push(items) => {
                            if waiters.iter().any(|w| {
                                w.deadline.is_some_and(|d| Instant::now() + last_push >= d)
                            }) {
                                // A flush window is closing: don't start what can't finish.
                                if let Err(error) = self.engine.abandon() {
                                    tracing::error!(%error, "sync: could not release a batch");
                                }
                                self.finish_flushes(&mut waiters, true);
                                queue.push(Event::Tick);
                                continue;
                            }
                            let started = Instant::now();
                            let result = self.transport.push(&items, self.profile).await;
                            last_push = started.elapsed();
                            queue.push(match result {
                                Ok(reply) => Event::PushAnswered {
                                    response: reply.response,
                                    elapsed: last_push,
                                    bytes: reply.bytes_sent,
                                    raw_bytes: reply.bytes_raw,
                                },
                                Err(e) => Event::RequestFailed {
                                    kind: e.kind,
                                    error: e.message,
                                },
                            });
                        }
                        Action::Pull { limit } => queue.push(self.pull(limit).await),
                        Action::SleepUntil(at) => sleep_until = at,
                        Action::Status(mut status) => {
                            status.cache_hit_ratio = self.cache.stats().hit_ratio;
                            if let Ok(mut shared) = self.status.lock() {
                                *shared = status.clone();
                            }
                            if let Some(observer) = &self.observer {
                                observer.on_status(&status);
                            }
                        }
                        Action::DeadLettered { id, code, reason } => {
                            if let Some(observer) = &self.observer {
                                observer.on_dead_letter(id, &code, &reason);
                            }
                        }
                    }
                }
            }
            if self.engine.is_idle() {
                self.finish_all(&mut waiters);
            }
            let flush_deadline = waiters.iter().filter_map(|w| w.deadline).min();
            let timer = sleep_until.map(|at| {
                let wait = u64::try_from(at - self.clock.now_ms()).unwrap_or(0);
                Duration::from_millis(wait)
            });
            let timer = match (timer, flush_deadline) {
                (Some(t), Some(d)) => Some(t.min(d.saturating_duration_since(Instant::now()))),
                (t, None) => t,
                (None, Some(d)) => Some(d.saturating_duration_since(Instant::now())),
            };
            let command = match timer {
                Some(wait) => tokio::select! {
                    command = commands.recv() => command,
                    () = tokio::time::sleep(wait) => {
                        queue.push(Event::Tick);
                        if flush_deadline.is_some_and(|d| Instant::now() >= d) {
                            self.finish_flushes(&mut waiters, true);
                        }
                        continue;
                    }
                },
                None => commands.recv().await,
            };
            // Take everything already queued, so a burst of enqueues costs one engine step
            // rather than one per item.
            let mut batch = vec![command];
            while let Ok(more) = commands.try_recv() {
                batch.push(Some(more));
            }
            let mut enqueued = false;
            let mut stop = false;
            for command in batch {
                match command {
                    None | Some(Command::Shutdown) => stop = true,
                    Some(Command::Event(Event::Enqueued(tier))) => {
                        if !enqueued {
                            enqueued = true;
                            queue.push(Event::Enqueued(tier));
                        }
                    }
                    Some(Command::Event(event)) => {
                        match &event {
                            Event::NetworkChanged(network) => self.profile.network = *network,
                            Event::DeviceChanged(device) => self.profile.device = *device,
                            _ => {}
                        }
                        queue.push(event);
                    }
                    Some(Command::SyncNow { tiers, reply }) => {
                        waiters.push(Waiter {
                            reply,
                            sent_before: self.sent(),
                            deadline: None,
                        });
                        queue.push(Event::SyncRequested(tiers));
                    }
                    Some(Command::Flush { deadline, reply }) => {
                        waiters.push(Waiter {
                            reply,
                            sent_before: self.sent(),
                            deadline: Some(deadline),
                        });
                        queue.push(Event::SyncRequested(TierSet::ALL));
                    }
                }
            }
            if stop {
                break;
            }
        }
        self.finish_all(&mut waiters);
        tracing::debug!("sync: driver stopped");
    }

    fn sent(&self) -> u64 {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .items_sent
    }

    fn report(&self, waiter: &Waiter, deadline_reached: bool) -> SyncReport {
        let status = self
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        SyncReport {
            items_sent: status.items_sent.saturating_sub(waiter.sent_before),
            remaining: self.outbox.stats().map(|s| s.depth()).unwrap_or(0),
            online: status.online,
            deadline_reached,
        }
    }

    fn finish_all(&self, waiters: &mut Vec<Waiter>) {
        for waiter in waiters.drain(..) {
            let report = self.report(&waiter, false);
            // The caller may have stopped waiting; that is fine.
            let _ = waiter.reply.send(report);
        }
    }

    fn finish_flushes(&self, waiters: &mut Vec<Waiter>, deadline_reached: bool) {
        let (flushes, rest): (Vec<Waiter>, Vec<Waiter>) =
            waiters.drain(..).partition(|w| w.deadline.is_some());
        *waiters = rest;
        for waiter in flushes {
            let report = self.report(&waiter, deadline_reached);
            let _ = waiter.reply.send(report);
        }
    }

    async fn pull(&mut self, limit: usize) -> Event {
        let cursor = match self.cache.meta_text(PULL_CURSOR_KEY) {
            Ok(cursor) => cursor,
            Err(e) => {
                return Event::RequestFailed {
                    kind: FailureKind::Transient { retry_after: None },
                    error: e.to_string(),
                };
            }
        };
        match self.transport.pull(cursor.as_deref(), limit).await {
            Ok(page) => {
                match self.cache.apply_remote(
                    &self.tenant,
                    &page.changes,
                    PULL_CURSOR_KEY,
                    &page.cursor,
                ) {
                    Ok(report) => {
                        tracing::debug!(?report, "sync: pulled a page");
                        Event::PullAnswered {
                            has_more: page.has_more && !page.changes.is_empty(),
                        }
                    }
                    Err(e) => Event::RequestFailed {
                        kind: FailureKind::Transient { retry_after: None },
                        error: format!("applying pulled changes: {e}"),
                    },
                }
            }
            Err(e) => Event::RequestFailed {
                kind: e.kind,
                error: e.message,
            },
        }
    }
}

fn pop_front(queue: &mut Vec<Event>) -> Option<Event> {
    if queue.is_empty() {
        None
    } else {
        Some(queue.remove(0))
    }
}
