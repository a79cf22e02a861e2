//! The sync engine: a state machine from events to actions.
//!
//! Events come in ([`Event`]: the timer fired, the network or device changed, the app enqueued
//! or asked to sync, a push or pull was answered, a request failed); actions go out
//! ([`Action`]: send this push batch, send this pull, sleep until, the status changed). A driver
//! performs the actions against HTTP and a timer and feeds the outcomes back. The engine itself
//! does no I/O beyond the local outbox, so every decision is tested with a manual clock.
//!
//! # When things are sent
//!
//! Each tier has a cadence (60 s, 5 min, 15 min, 1 h) and a next slot. A **wake-up** happens
//! when a tier that the network allows has due items and its slot has come (or the app asks,
//! or the device comes back online). In a wake-up, every allowed tier with due items is sent,
//! highest tier first — lower tiers **ride along** on the radio wake-up that a higher tier paid
//! for, so four busy tiers cost no more wake-ups than tier 1 alone.
//!
//! The network gates tiers: offline sends nothing; slow cellular or a metered network sends
//! tiers 1–2 on schedule and tiers 3–4 only when the app asks or the outbox is under pressure;
//! a fast network sends every tier.
//!
//! # Failures
//!
//! A transient failure is retried within the wake-up after 1 s, 2 s, 4 s (with jitter, or later
//! if the server said `Retry-After`), then the batch waits for its tier's next slot — unless the
//! app asks for the tier (`sync_now`, `flush`), which sends it at once (never before a server's
//! `Retry-After`). The outbox keeps the schedule, so a timer is always armed: a failure never
//! leaves the queue waiting for the next local write. No attempt count ever drops an item; only a per-item rejection by the
//! server moves one to the dead-letter lane, and the rest keeps flowing.

use std::collections::BTreeMap;
use std::time::Duration;

use kryonix_protocol::wire::{ItemOutcome, PushResponse};
use kryonix_protocol::{DeviceClass, NetworkClass, NetworkProfile, Tier};

use crate::clock::{Clock, Millis, duration_ms};
use crate::outbox::{ItemId, Outbox, OutboxError, OutboxItem, RetrySchedule, TierSet};
use std::sync::Arc;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Largest push batch (the protocol's limit is 100).
    pub max_batch: usize,
    /// Outbox depth from which slow or metered networks also send tiers 3 and 4.
    pub pressure_threshold: u64,
    /// In-call retries of a failed push before the batch waits for its tier's next slot.
    pub retries_per_attempt: u32,
    /// Schedule of those in-call retries.
    pub retry: RetrySchedule,
    /// Slots in a row without progress (online, items waiting) before a tier is reported stalled.
    pub watchdog_slots: u32,
    /// Changes asked for per pull.
    pub pull_limit: usize,
    /// Whether each wake-up also pulls downstream changes.
    pub pull: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 100,
            pressure_threshold: 1_000,
            retries_per_attempt: 3,
            retry: RetrySchedule {
                max_delay: Duration::from_secs(60),
                ..RetrySchedule::default()
            },
            watchdog_slots: 3,
            pull_limit: 500,
            pull: true,
        }
    }
}

/// Why a request failed, as the driver classified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// Network error, timeout, 5xx, 429: try again (not before `retry_after`, if given).
    Transient { retry_after: Option<Duration> },
    /// The credentials were refused even after a refresh. Items wait; the app must sign in.
    Unauthorized,
    /// The batch as a whole is too large for the server: send smaller batches.
    TooLarge,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The timer asked for by [`Action::SleepUntil`] fired (or any time passed).
    Tick,
    NetworkChanged(NetworkProfile),
    DeviceChanged(DeviceClass),
    /// The app queued items in this tier.
    Enqueued(Tier),
    /// The app asked for these tiers now, whatever the network class (not offline).
    SyncRequested(TierSet),
    /// The server answered the push in flight.
    PushAnswered {
        response: PushResponse,
        elapsed: Duration,
        /// Request body bytes on the wire.
        bytes: u64,
        /// Request body bytes before compression.
        raw_bytes: u64,
    },
    /// The pull in flight was answered and applied; `has_more` asks for the next page.
    PullAnswered {
        has_more: bool,
    },
    /// The request in flight failed.
    RequestFailed {
        kind: FailureKind,
        error: String,
    },
}

/// What the driver should do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Upload these items in one push request.
    Push(Vec<OutboxItem>),
    /// Fetch downstream changes after the stored cursor.
    Pull { limit: usize },
    /// Nothing to do before this time (an `Event::Tick` is expected then). `None`: no timer is
    /// needed — nothing is waiting, or the device is offline.
    SleepUntil(Option<Millis>),
    /// The status changed; tell the observer.
    Status(SyncStatus),
    /// The server rejected an item for good; it is in the dead-letter lane.
    DeadLettered {
        id: ItemId,
        code: String,
        reason: String,
    },
}

/// Per-tier figures for the observer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierStatus {
    pub depth: u64,
    pub oldest_age_ms: Millis,
    pub in_flight: u64,
    pub dead_letters: u64,
    pub last_success_at: Option<Millis>,
    /// Failed attempts since the last success.
    pub retries: u64,
    /// No progress for `watchdog_slots` slots while online with items waiting.
    pub stalled: bool,
}

/// A snapshot of the engine for the observer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncStatus {
    pub online: bool,
    pub tiers: BTreeMap<Tier, TierStatus>,
    pub wakeups: u64,
    pub items_sent: u64,
    /// Push body bytes on the wire.
    pub bytes_sent: u64,
    /// The same bodies before compression: `bytes_raw - bytes_sent` is what compression saved.
    pub bytes_raw: u64,
    /// Hits / (hits + misses) of the local cache (filled in by the driver).
    pub cache_hit_ratio: f64,
    pub last_error: Option<String>,
    pub unauthorized: bool,
}

#[derive(Debug, Clone, Default)]
struct TierState {
    next_slot: Millis,
    last_success_at: Option<Millis>,
    retries: u64,
    /// In-call retries spent in the current wake-up.
    call_retries: u32,
    /// Slots that passed without progress while online with items waiting.
    idle_slots: u32,
    last_watch: Millis,
}

#[derive(Debug, Clone, PartialEq)]
enum InFlight {
    Push { ids: Vec<ItemId>, tiers: TierSet },
    Pull,
}

/// The sans-I/O sync state machine. See the module docs.
#[derive(Debug)]
pub struct SyncEngine {
    outbox: Outbox,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    network: NetworkProfile,
    device: DeviceClass,
    tiers: BTreeMap<Tier, TierState>,
    in_flight: Option<InFlight>,
    /// Tiers being sent in the current wake-up; `None` between wake-ups.
    wake: Option<TierSet>,
    pull_pending: bool,
    requested: TierSet,
    /// A server's `Retry-After` applies to every request until it passes.
    not_before: Millis,
    /// Batch size, adapted to the measured throughput.
    batch_size: usize,
    /// Largest batch the server took; lowered when it answers "too large".
    batch_cap: usize,
    /// When the current wake-up began: tier slots keep their rhythm from here.
    wake_started: Millis,
    /// Estimated upload throughput, bytes per second.
    throughput: Option<f64>,
    status: SyncStatus,
    last_emitted: Option<SyncStatus>,
}

type Result<T> = std::result::Result<T, OutboxError>;

impl SyncEngine {
    pub fn new(outbox: Outbox, clock: Arc<dyn Clock>, config: EngineConfig) -> Self {
        let now = clock.now_ms();
        let tiers = Tier::ALL
            .into_iter()
            .map(|t| {
                (
                    t,
                    TierState {
                        next_slot: now,
                        last_watch: now,
                        ..TierState::default()
                    },
                )
            })
            .collect();
        let batch_size = config.max_batch;
        Self {
            outbox,
            clock,
            config,
            network: NetworkProfile::OFFLINE,
            device: DeviceClass::Phone,
            tiers,
            in_flight: None,
            wake: None,
            pull_pending: false,
            requested: TierSet::NONE,
            not_before: 0,
            batch_size,
            batch_cap: batch_size,
            wake_started: now,
            throughput: None,
            status: SyncStatus::default(),
            last_emitted: None,
        }
    }

    pub fn network(&self) -> NetworkProfile {
        self.network
    }

    pub fn device(&self) -> DeviceClass {
        self.device
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The current status snapshot (also emitted as [`Action::Status`] when it changes).
    pub fn status(&mut self) -> Result<SyncStatus> {
        self.refresh_status()?;
        Ok(self.status.clone())
    }

    /// Whether a request is out and not yet answered.
    pub fn is_busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// No wake-up in progress and nothing in flight: what `sync_now` waits for.
    pub fn is_idle(&self) -> bool {
        self.wake.is_none() && self.in_flight.is_none()
    }

    /// Ends the current wake-up without sending what was handed out (an OS background window is
    /// closing). The batch goes back to `pending` with no attempt counted; its tiers keep their
    /// place and go at the next wake-up.
    pub fn abandon(&mut self) -> Result<()> {
        if let Some(InFlight::Push { ids, .. }) = self.in_flight.take() {
            self.outbox.release(&ids)?;
        }
        self.in_flight = None;
        if let Some(wake) = self.wake {
            let now = self.clock.now_ms();
            self.end_wake(now, wake);
        }
        Ok(())
    }

    /// Feeds one event; returns what to do next.
    pub fn handle(&mut self, event: Event) -> Result<Vec<Action>> {
        let now = self.clock.now_ms();
        let mut actions = Vec::new();
        match event {
            Event::Tick => {}
            Event::NetworkChanged(network) => {
                let was_online = self.online();
                self.network = network;
                self.batch_size = self.initial_batch_size();
                if !was_online && self.online() {
                    // Back online: drain what piled up, starting now.
                    self.start_wake(now, TierSet::NONE)?;
                }
            }
            Event::DeviceChanged(device) => self.device = device,
            Event::Enqueued(_) => {}
            Event::SyncRequested(tiers) => {
                self.requested = tiers_union(self.requested, tiers);
                if self.online() {
                    // The app asked for these tiers now: items waiting out a backoff or their
                    // tier's next slot go in this wake-up. A server's Retry-After still holds
                    // (`not_before`).
                    self.outbox.make_due(tiers)?;
                    self.start_wake(now, tiers)?;
                }
            }
            Event::PushAnswered {
                response,
                elapsed,
                bytes,
                raw_bytes,
            } => {
                self.status.bytes_raw += raw_bytes;
                self.on_push_answered(now, response, elapsed, bytes, &mut actions)?;
            }
            Event::PullAnswered { has_more } => {
                if self.in_flight == Some(InFlight::Pull) {
                    self.in_flight = None;
                    self.pull_pending = has_more;
                }
            }
            Event::RequestFailed { kind, error } => self.on_failure(now, kind, error)?,
        }
        self.step(now, &mut actions)?;
        Ok(actions)
    }

    fn online(&self) -> bool {
        self.network.class != NetworkClass::Offline
    }

    fn slow(&self) -> bool {
        matches!(self.network.class, NetworkClass::CellularSlow) || self.network.metered
    }

    fn initial_batch_size(&self) -> usize {
        if self.slow() {
            self.config.max_batch.min(25)
        } else {
            self.config.max_batch
        }
    }

    /// Tiers the network lets out now.
    fn allowed(&self) -> Result<TierSet> {
        if !self.online() {
            return Ok(TierSet::NONE);
        }
        if !self.slow() {
            return Ok(TierSet::ALL);
        }
        let mut set = TierSet::of(&[Tier::Critical, Tier::Preferences]);
        let pressure = self.outbox.stats()?.depth() >= self.config.pressure_threshold;
        for tier in [Tier::Application, Tier::Background] {
            if pressure || self.requested.contains(tier) {
                set = set.with(tier);
            }
        }
        Ok(set)
    }

    fn start_wake(&mut self, now: Millis, _reason: TierSet) -> Result<()> {
        let allowed = self.allowed()?;
        if allowed.is_empty() {
            return Ok(());
        }
        let wake = tiers_union(self.wake.unwrap_or(TierSet::NONE), allowed);
        if self.wake.is_none() {
            self.status.wakeups += 1;
            self.wake_started = now;
            self.pull_pending = self.config.pull;
            for state in self.tiers.values_mut() {
                state.call_retries = 0;
            }
            tracing::debug!(now, "sync: wake-up");
        }
        self.wake = Some(wake);
        Ok(())
    }

    /// When the next wake-up is due: the earliest time an allowed tier has a due head and its
    /// slot has come. `None` when nothing waits.
    fn next_wake(&self) -> Result<Option<Millis>> {
        let allowed = self.allowed()?;
        let stats = self.outbox.stats()?;
        let mut next: Option<Millis> = None;
        for tier in allowed.iter() {
            let Some(head) = stats.tier(tier).next_attempt_at else {
                continue;
            };
            let slot = self.tiers.get(&tier).map_or(0, |s| s.next_slot);
            let at = head.max(slot).max(self.not_before);
            next = Some(next.map_or(at, |n: Millis| n.min(at)));
        }
        Ok(next)
    }

    /// Advances: start a due wake-up, send the next request, or say how long to sleep.
    fn step(&mut self, now: Millis, actions: &mut Vec<Action>) -> Result<()> {
        self.watchdog(now)?;
        if self.in_flight.is_none() && now >= self.not_before {
            if self.wake.is_none() {
                if let Some(at) = self.next_wake()? {
                    if at <= now {
                        self.start_wake(now, TierSet::NONE)?;
                    }
                }
            }
            if let Some(wake) = self.wake {
                // One tier per batch, highest first: the server decides back-pressure by the
                // least important tier of a batch, so a tier-1 item sharing a batch with tier-2
                // items would be refused with them.
                let mut batch = Vec::new();
                for tier in self.sendable(wake).iter() {
                    batch = self
                        .outbox
                        .next_batch(self.batch_size, TierSet::of(&[tier]))?;
                    if !batch.is_empty() {
                        break;
                    }
                }
                if !batch.is_empty() {
                    let ids: Vec<ItemId> = batch.iter().map(|i| i.id).collect();
                    let tiers = TierSet::of(&batch.iter().map(|i| i.tier).collect::<Vec<_>>());
                    self.in_flight = Some(InFlight::Push { ids, tiers });
                    actions.push(Action::Push(batch));
                } else if self.pull_pending {
                    self.in_flight = Some(InFlight::Pull);
                    actions.push(Action::Pull {
                        limit: self.config.pull_limit,
                    });
                } else if !self.retry_pending(wake)? {
                    self.end_wake(now, wake);
                }
            }
        }
        if self.in_flight.is_none() {
            let at = match self.wake {
                // Inside a wake-up, the next event is a retry coming due — or, with nothing
                // left to retry, the end of a server's Retry-After, when the wake-up can end.
                // Without that timer a wake-up whose last request (a pull) was refused would
                // stay open with no timer, and `sync_now` would never return.
                Some(wake) => self
                    .earliest_head(self.sendable(wake))?
                    .or((self.not_before > now).then_some(self.not_before)),
                None => self.next_wake()?,
            };
            actions.push(Action::SleepUntil(at.map(|at| at.max(self.not_before))));
        }
        self.refresh_status()?;
        if self.last_emitted.as_ref() != Some(&self.status) {
            self.last_emitted = Some(self.status.clone());
            actions.push(Action::Status(self.status.clone()));
        }
        Ok(())
    }

    /// Tiers of the wake-up that still have in-call retries left.
    fn sendable(&self, wake: TierSet) -> TierSet {
        let mut set = TierSet::NONE;
        for tier in wake.iter() {
            if self
                .tiers
                .get(&tier)
                .is_some_and(|s| s.call_retries <= self.config.retries_per_attempt)
            {
                set = set.with(tier);
            }
        }
        set
    }

    fn earliest_head(&self, tiers: TierSet) -> Result<Option<Millis>> {
        let stats = self.outbox.stats()?;
        Ok(tiers
            .iter()
            .filter_map(|t| stats.tier(t).next_attempt_at)
            .min())
    }

    /// Whether a tier of the wake-up is waiting for an in-call retry.
    fn retry_pending(&self, wake: TierSet) -> Result<bool> {
        let now = self.clock.now_ms();
        let stats = self.outbox.stats()?;
        Ok(self.sendable(wake).iter().any(|t| {
            self.tiers.get(&t).is_some_and(|s| s.call_retries > 0)
                && stats.tier(t).next_attempt_at.is_some_and(|at| at > now)
        }))
    }

    fn end_wake(&mut self, now: Millis, wake: TierSet) {
        for tier in wake.iter() {
            let slot = self.slot_from_wake(now, tier);
            if let Some(state) = self.tiers.get_mut(&tier) {
                state.next_slot = slot;
                state.call_retries = 0;
            }
        }
        self.requested = TierSet::NONE;
        self.wake = None;
        tracing::debug!(now, "sync: wake-up done");
    }

    fn on_push_answered(
        &mut self,
        now: Millis,
        response: PushResponse,
        elapsed: Duration,
        bytes: u64,
        actions: &mut Vec<Action>,
    ) -> Result<()> {
        let Some(InFlight::Push { ids, tiers }) = self.in_flight.take() else {
            return Ok(());
        };
        let mut stored = Vec::new();
        let mut answered = std::collections::HashSet::new();
        for result in response.results {
            let Ok(id) = result.id.parse::<ItemId>() else {
                continue;
            };
            if !ids.contains(&id) {
                continue;
            }
            answered.insert(id);
            match result.outcome {
                ItemOutcome::Accepted | ItemOutcome::Duplicate => stored.push(id),
                ItemOutcome::Rejected { code, reason } => {
                    self.outbox.reject(id, &code, &reason)?;
                    actions.push(Action::DeadLettered { id, code, reason });
                }
            }
        }
        self.outbox.ack(&stored)?;
        // An item the server did not mention was not stored: it goes again, in order.
        let unanswered: Vec<ItemId> = ids
            .iter()
            .filter(|id| !answered.contains(id))
            .copied()
            .collect();
        if !unanswered.is_empty() {
            tracing::warn!(
                count = unanswered.len(),
                "sync: push answer omitted items; they will be sent again"
            );
            self.outbox.release(&unanswered)?;
        }
        self.status.items_sent += stored.len() as u64;
        self.status.bytes_sent += bytes;
        self.status.last_error = None;
        self.status.unauthorized = false;
        for tier in tiers.iter() {
            if let Some(state) = self.tiers.get_mut(&tier) {
                state.last_success_at = Some(now);
                state.retries = 0;
                state.call_retries = 0;
                state.idle_slots = 0;
            }
        }
        self.adapt_batch_size(elapsed, bytes);
        Ok(())
    }

    /// Sizes batches so one push takes about two seconds at the measured throughput.
    fn adapt_batch_size(&mut self, elapsed: Duration, bytes: u64) {
        let secs = elapsed.as_secs_f64();
        if secs <= 0.0 || bytes == 0 {
            return;
        }
        let sample = bytes as f64 / secs;
        let estimate = self.throughput.map_or(sample, |t| 0.7 * t + 0.3 * sample);
        self.throughput = Some(estimate);
        let per_item = bytes as f64 / self.batch_size.max(1) as f64;
        let fit = (estimate * 2.0 / per_item.max(1.0)) as usize;
        self.batch_size = fit.clamp(10.min(self.batch_cap), self.batch_cap);
    }

    fn on_failure(&mut self, now: Millis, kind: FailureKind, error: String) -> Result<()> {
        let Some(in_flight) = self.in_flight.take() else {
            return Ok(());
        };
        self.status.last_error = Some(error.clone());
        let InFlight::Push { ids, tiers } = in_flight else {
            // A failed pull is tried again at the next wake-up.
            self.pull_pending = false;
            if let FailureKind::Transient {
                retry_after: Some(after),
            } = kind
            {
                self.not_before = self.not_before.max(now + duration_ms(after));
            }
            return Ok(());
        };
        match kind {
            FailureKind::TooLarge => {
                self.batch_size = (self.batch_size / 2).max(1);
                self.batch_cap = self.batch_size;
                self.outbox.release(&ids)?;
            }
            FailureKind::Unauthorized => {
                self.status.unauthorized = true;
                let slot = self.slot_after(now, tiers);
                self.outbox.reschedule(&ids, slot, &error)?;
                self.wake = None;
            }
            FailureKind::Transient { retry_after } => {
                if let Some(after) = retry_after {
                    self.not_before = self.not_before.max(now + duration_ms(after));
                }
                let mut call_retries = 0;
                for tier in tiers.iter() {
                    if let Some(state) = self.tiers.get_mut(&tier) {
                        state.retries += 1;
                        state.call_retries += 1;
                        call_retries = call_retries.max(state.call_retries);
                    }
                }
                let at = if call_retries <= self.config.retries_per_attempt {
                    let delay = self.config.retry.delay(call_retries);
                    (now + duration_ms(delay)).max(self.not_before)
                } else {
                    // Retries spent: wait for the tier's next slot, timer armed.
                    self.slot_after(now, tiers).max(self.not_before)
                };
                self.outbox.reschedule(&ids, at, &error)?;
            }
        }
        Ok(())
    }

    /// The first slot of `tier` after `now`, in the rhythm of the current wake-up.
    fn slot_from_wake(&self, now: Millis, tier: Tier) -> Millis {
        let cadence = duration_ms(tier.cadence()).max(1);
        let start = self.wake_started.min(now);
        start + ((now - start) / cadence + 1) * cadence
    }

    /// The next slot of the highest of `tiers`; that tier waits until then.
    fn slot_after(&mut self, now: Millis, tiers: TierSet) -> Millis {
        let tier = tiers.iter().next().unwrap_or(Tier::Background);
        let at = self.slot_from_wake(now, tier);
        if let Some(state) = self.tiers.get_mut(&tier) {
            state.next_slot = at;
        }
        at
    }

    /// Counts slots that pass without progress while online with items waiting.
    fn watchdog(&mut self, now: Millis) -> Result<()> {
        let online = self.online();
        let stats = self.outbox.stats()?;
        for (tier, state) in self.tiers.iter_mut() {
            let cadence = duration_ms(tier.cadence());
            let waiting = stats.tier(*tier).depth > 0;
            if !online || !waiting {
                state.idle_slots = 0;
                state.last_watch = now;
                continue;
            }
            let progress_since = state
                .last_success_at
                .unwrap_or(Millis::MIN)
                .max(state.last_watch);
            if now - progress_since >= cadence {
                let slots =
                    u32::try_from((now - progress_since) / cadence.max(1)).unwrap_or(u32::MAX);
                state.idle_slots = state.idle_slots.saturating_add(slots);
                state.last_watch = now;
                if state.idle_slots == self.config.watchdog_slots {
                    tracing::warn!(%tier, slots = state.idle_slots, "sync: no progress while online");
                }
            }
        }
        Ok(())
    }

    fn refresh_status(&mut self) -> Result<()> {
        let stats = self.outbox.stats()?;
        self.status.online = self.online();
        for tier in Tier::ALL {
            let s = stats.tier(tier);
            let state = self.tiers.get(&tier).cloned().unwrap_or_default();
            self.status.tiers.insert(
                tier,
                TierStatus {
                    depth: s.depth,
                    oldest_age_ms: s.oldest_age_ms,
                    in_flight: s.in_flight,
                    dead_letters: s.dead,
                    last_success_at: state.last_success_at,
                    retries: state.retries,
                    stalled: state.idle_slots >= self.config.watchdog_slots,
                },
            );
        }
        Ok(())
    }
}

fn tiers_union(a: TierSet, b: TierSet) -> TierSet {
    b.iter().fold(a, TierSet::with)
}

#[cfg(test)]
mod tests;
