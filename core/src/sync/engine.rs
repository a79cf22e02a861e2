//! The sync engine: a state machine from events to actions, with no I/O at all.
//!
//! Events come in ([`Event`]: time passed, the network or device changed, the app enqueued or
//! asked to sync, a push or pull was answered, a request failed); actions go out ([`Action`]:
//! send a push of this tier, send a pull, change the outbox like this, sleep until, the status
//! changed). The engine holds only plain data. It never reads the outbox: a driver hands it a
//! snapshot of the queue ([`OutboxStats`], read once per step) and carries out the outbox
//! [`Write`]s it asks for. Time is an argument too. So every decision is a pure function of
//! what came in, and the tests are recorded transcripts — events in, actions out — that read
//! as a story (`engine/transcripts/`).
//!
//! One step is two calls: [`SyncEngine::handle`] takes the event and returns what it changes in
//! the outbox; the driver applies those writes, reads a fresh snapshot, and
//! [`SyncEngine::poll`] decides what comes next. `sync::driver::step` is that loop body, shared
//! by the async driver, the tests and the benchmarks.
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
//! A retryable failure is retried within the wake-up after 1 s, 2 s, 4 s (the one
//! [`RetrySchedule`], with jitter, or later if the server said `Retry-After`), then the batch
//! waits for its tier's next slot — unless the app asks for the tier (`sync_now`, `flush`),
//! which sends it at once (never before a server's `Retry-After`). The outbox keeps the
//! schedule, so a timer is always armed: a failure never leaves the queue waiting for the next
//! local write. No attempt count ever drops an item; only a per-item rejection by the server
//! moves one to the dead-letter lane, and the rest keeps flowing.
//!
//! # The wall clock
//!
//! Times are wall-clock milliseconds (the outbox stores them, so a backoff survives a restart),
//! and a user or NTP may move that clock. Forward, waits simply end early. Backward, every
//! scheduled time — a stored retry, a tier's slot, a server's `Retry-After` — would suddenly lie
//! as far ahead as the jump. So no wait may lie further ahead than the longest the engine ever
//! chooses (its *horizon*: the tier's cadence, the retry schedule's cap with jitter, or
//! [`MAX_RETRY_AFTER`]); every poll pulls anything beyond it back, the stored retries with
//! [`Write::Clamp`]. After a backward jump a batch waits at most that horizon
//! (docs/adr/0008-tier-freshness-and-the-wall-clock.md).
//!
//! The outbox is the truth: should a write the engine asked for fail (a full disk), the items
//! stay in flight in the database while the engine has nothing in flight. The next poll sees
//! that in the snapshot and releases them, so a failed write delays items but never strands
//! them.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use kryonix_protocol::wire::{ItemOutcome, PushResponse};
use kryonix_protocol::{DeviceClass, NetworkClass, NetworkProfile, Tier};

use super::retry::RetrySchedule;
use crate::clock::{Millis, duration_ms};
use crate::outbox::{ItemId, OutboxStats, Rejection, TierSet, Write};

/// The longest `Retry-After` honoured: a server asking for more is waited for this long, then
/// asked again (a typo'd or hostile header must not park a phone's uploads for days).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

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
            max_batch: kryonix_protocol::wire::MAX_PUSH_ITEMS,
            pressure_threshold: 1_000,
            retries_per_attempt: 3,
            retry: RetrySchedule::default(),
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
    Retryable { retry_after: Option<Duration> },
    /// The credentials were refused even after a refresh. Items wait; the app must sign in.
    Unauthorized,
    /// The batch as a whole is too large for the server: send smaller batches.
    TooLarge,
    /// The server no longer serves this protocol or app version (`426`): nothing is sent until
    /// the app is updated (a new agent, opened by the updated app). Items wait.
    UpgradeRequired(UpgradeRequired),
    /// The server's certificate was refused: not signed by a trusted CA (the platform's, or the
    /// app's own), expired, for another name, or matching no pinned key. Nothing was sent; items
    /// wait and the engine tries again later (the server may be fixed, or it may be an attack).
    Untrusted,
    /// The token belongs to another tenant than the agent was opened for: its uploads would go
    /// to the token's tenant while the local cache keys them under the configured one. Nothing
    /// is sent until the app opens the agent with matching tenant and token.
    TenantMismatch { token_tenant: String },
}

/// The server's minimums, from its `426 upgrade_required` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpgradeRequired {
    /// The oldest protocol version the server serves.
    pub min_protocol: Option<u32>,
    /// The oldest app version the server serves, when it has a minimum.
    pub min_app_version: Option<String>,
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
        /// The ids the driver sent: an answer about any other id is ignored.
        sent: Vec<ItemId>,
        response: PushResponse,
        elapsed: Duration,
        /// Request body bytes on the wire.
        bytes: u64,
        /// Request body bytes before compression.
        raw_bytes: u64,
    },
    /// The batch asked for by [`Action::Push`] was empty when the driver took it (the app
    /// cancelled its items meanwhile); nothing was sent.
    NothingToPush,
    /// The driver did not send the batch asked for: an OS background window is closing. The
    /// wake-up ends; its tiers keep their place and go at the next one.
    PushAbandoned,
    /// The server answered the hello: its last stored number per tier for the current producer.
    HelloAnswered {
        last_seq: [u64; 4],
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
    /// Take the tier's next batch (at most `limit` items) from the outbox and upload it in one
    /// push request; answer with [`Event::PushAnswered`], [`Event::RequestFailed`],
    /// [`Event::NothingToPush`] or [`Event::PushAbandoned`].
    Push { tier: Tier, limit: usize },
    /// Ask where the server stands with the current producer; answer with
    /// [`Event::HelloAnswered`] or [`Event::RequestFailed`]. Once per engine (per session),
    /// before the first push: the outbox uses the answer to notice a database restored from an
    /// older copy before any item could be taken for a duplicate.
    Hello,
    /// Fetch downstream changes after the stored cursor; answer with [`Event::PullAnswered`] or
    /// [`Event::RequestFailed`].
    Pull { limit: usize },
    /// Change the outbox; carried out in order, before the next [`SyncEngine::poll`].
    Outbox(Write),
    /// Nothing to do before this time (an [`Event::Tick`] is expected then). `None`: no timer
    /// is needed — nothing is waiting, or the device is offline.
    SleepUntil(Option<Millis>),
    /// The status changed; tell the observer.
    Status(SyncStatus),
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
    /// Waiting items older than the tier's freshness TTL (5 min, 30 min, 1 h, 2 h): the server
    /// should have had them by now. Reported once by the watchdog when it becomes non-zero.
    pub overdue: u64,
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
    /// The server refused this app as too old: nothing is sent until the app is updated.
    pub upgrade_required: Option<UpgradeRequired>,
    /// The token's tenant, when it is not the tenant the agent was opened for: nothing is sent
    /// until the app opens the agent with a matching configuration.
    pub tenant_mismatch: Option<String>,
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
    /// The watchdog has logged this tier's overdue items (reset when none are left).
    overdue_reported: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlight {
    Push(Tier),
    /// The hello, sent for the tier that wanted to push.
    Hello(Tier),
    Pull,
}

/// The sans-I/O sync state machine. See the module docs.
#[derive(Debug)]
pub struct SyncEngine {
    config: EngineConfig,
    network: NetworkProfile,
    device: DeviceClass,
    tiers: BTreeMap<Tier, TierState>,
    in_flight: Option<InFlight>,
    /// Tiers being sent in the current wake-up; `None` between wake-ups.
    wake: Option<TierSet>,
    /// A wake-up should start at the next poll (back online, or the app asked).
    wake_requested: bool,
    /// This session's hello was answered: pushes may go.
    hello_done: bool,
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

impl SyncEngine {
    /// A new engine, offline, every tier's first slot at `now`.
    pub fn new(config: EngineConfig, now: Millis) -> Self {
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
            config,
            network: NetworkProfile::OFFLINE,
            device: DeviceClass::Phone,
            tiers,
            in_flight: None,
            wake: None,
            wake_requested: false,
            hello_done: false,
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

    pub fn config(&self) -> &EngineConfig {
        &self.config
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

    /// The status as of the last poll (also emitted as [`Action::Status`] when it changes).
    pub fn status(&self) -> &SyncStatus {
        &self.status
    }

    /// Whether a request is out and not yet answered.
    pub fn is_busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// No wake-up in progress or about to start, and nothing in flight: what `sync_now` waits
    /// for.
    pub fn is_idle(&self) -> bool {
        self.wake.is_none() && self.in_flight.is_none() && !self.wake_requested
    }

    /// Takes one event. Returns the outbox writes it implies (to be applied, in order, before
    /// the next [`poll`](Self::poll)); decisions about what to send wait for that poll.
    pub fn handle(&mut self, now: Millis, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Tick | Event::Enqueued(_) => {}
            Event::NetworkChanged(network) => {
                let was_online = self.online();
                self.network = network;
                self.batch_size = self.initial_batch_size();
                // Back online: drain what piled up, starting now.
                self.wake_requested |= !was_online && self.online();
            }
            Event::DeviceChanged(device) => self.device = device,
            Event::SyncRequested(tiers) => {
                self.requested = tiers_union(self.requested, tiers);
                if self.online() {
                    // The app asked for these tiers now: items waiting out a backoff or their
                    // tier's next slot go in this wake-up. A server's Retry-After still holds
                    // (`not_before`).
                    actions.push(Action::Outbox(Write::MakeDue(tiers)));
                    self.wake_requested = true;
                }
            }
            Event::PushAnswered {
                sent,
                response,
                elapsed,
                bytes,
                raw_bytes,
            } => {
                self.status.bytes_raw += raw_bytes;
                self.on_push_answered(now, &sent, response, elapsed, bytes, &mut actions);
            }
            Event::NothingToPush => {
                if matches!(self.in_flight, Some(InFlight::Push(_))) {
                    self.in_flight = None;
                }
            }
            Event::PushAbandoned => {
                self.in_flight = None;
                if let Some(wake) = self.wake {
                    self.end_wake(now, wake);
                }
            }
            Event::HelloAnswered { last_seq } => {
                if matches!(self.in_flight, Some(InFlight::Hello(_))) {
                    self.in_flight = None;
                    self.hello_done = true;
                    self.status.last_error = None;
                    self.status.unauthorized = false;
                    actions.push(Action::Outbox(Write::Reconcile { last_seq }));
                }
            }
            Event::PullAnswered { has_more } => {
                if self.in_flight == Some(InFlight::Pull) {
                    self.in_flight = None;
                    self.pull_pending = has_more;
                }
            }
            Event::RequestFailed { kind, error } => {
                self.on_failure(now, kind, error, &mut actions);
            }
        }
        actions
    }

    /// Decides what comes next from a fresh snapshot of the outbox: start a due wake-up, send
    /// the next request, or say how long to sleep; and the status, when it changed.
    pub fn poll(&mut self, now: Millis, outbox: &OutboxStats) -> Vec<Action> {
        let mut actions = Vec::new();
        if std::mem::take(&mut self.wake_requested) {
            self.start_wake(now, outbox);
        }
        self.watchdog(now, outbox);
        // While orphans are released or schedules pulled back the snapshot is stale: decide at
        // the next step.
        let clamped = self.clamp_to_clock(now, outbox, &mut actions);
        let recovering = self.recover_orphans(outbox, &mut actions) || clamped;
        if self.in_flight.is_none() && now >= self.not_before && !recovering {
            if self.wake.is_none() && self.next_wake(outbox).is_some_and(|at| at <= now) {
                self.start_wake(now, outbox);
            }
            if let Some(wake) = self.wake {
                self.send_next(now, wake, outbox, &mut actions);
            }
        }
        if self.in_flight.is_none() {
            let at = match self.wake {
                // Inside a wake-up, the next event is a retry coming due — or, with nothing
                // left to retry, the end of a server's Retry-After, when the wake-up can end.
                // Without that timer a wake-up whose last request (a pull) was refused would
                // stay open with no timer, and `sync_now` would never return.
                Some(wake) => earliest_head(outbox, self.sendable(wake))
                    .or((self.not_before > now).then_some(self.not_before)),
                None => self.next_wake(outbox),
            };
            // Wake when a tier's first item turns overdue, so the status shows it even while
            // offline (a status refresh only: no request goes unless one is due).
            let at = match (at, first_overdue(now, outbox)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // Released orphans are due at once; look again shortly rather than never.
            let at = if recovering {
                Some(at.map_or(now, |at| at.min(now)))
            } else {
                at
            };
            actions.push(Action::SleepUntil(at.map(|at| at.max(self.not_before))));
        }
        self.refresh_status(outbox);
        if self.last_emitted.as_ref() != Some(&self.status) {
            self.last_emitted = Some(self.status.clone());
            actions.push(Action::Status(self.status.clone()));
        }
        actions
    }

    /// In a wake-up with nothing in flight: push the highest ready tier, else pull, else end
    /// the wake-up unless a retry is coming due.
    fn send_next(
        &mut self,
        now: Millis,
        wake: TierSet,
        outbox: &OutboxStats,
        actions: &mut Vec<Action>,
    ) {
        // One tier per batch, highest first: the server decides back-pressure by the least
        // important tier of a batch, so a tier-1 item sharing a batch with tier-2 items would be
        // refused with them.
        let ready = self.sendable(wake).iter().find(|tier| {
            let t = outbox.tier(*tier);
            t.in_flight == 0 && t.next_attempt_at.is_some_and(|at| at <= now)
        });
        if let Some(tier) = ready {
            if self.hello_done {
                self.in_flight = Some(InFlight::Push(tier));
                actions.push(Action::Push {
                    tier,
                    limit: self.batch_size,
                });
            } else {
                self.in_flight = Some(InFlight::Hello(tier));
                actions.push(Action::Hello);
            }
        } else if self.pull_pending {
            self.in_flight = Some(InFlight::Pull);
            actions.push(Action::Pull {
                limit: self.config.pull_limit,
            });
        } else if !self.retry_pending(now, wake, outbox) {
            self.end_wake(now, wake);
        }
    }

    /// Releases items the snapshot shows in flight in a tier the engine has no batch out for:
    /// a settle or reschedule that failed to write left them there. Returns whether any were.
    fn recover_orphans(&mut self, outbox: &OutboxStats, actions: &mut Vec<Action>) -> bool {
        let mut any = false;
        for tier in Tier::ALL {
            if outbox.tier(tier).in_flight > 0 && self.in_flight != Some(InFlight::Push(tier)) {
                tracing::warn!(%tier, "sync: items left in flight by a failed write are released");
                actions.push(Action::Outbox(Write::Release { tier }));
                any = true;
            }
        }
        any
    }

    /// The longest wait the engine would choose for `tier` now: the retry schedule's cap (which
    /// jitter at most doubles) while the tier backs off within a wake-up, else its slot cadence.
    fn horizon(&self, tier: Tier) -> Millis {
        let jitter = if self.config.retry.jitter { 2 } else { 1 };
        let retry_cap = duration_ms(self.config.retry.max_delay).saturating_mul(jitter);
        let backing_off = self.wake.is_some_and(|w| w.contains(tier))
            && self
                .tiers
                .get(&tier)
                .is_some_and(|s| (1..=self.config.retries_per_attempt).contains(&s.call_retries));
        if backing_off {
            retry_cap
        } else {
            duration_ms(tier.cadence()).max(retry_cap)
        }
    }

    /// Pulls every scheduled time back within its horizon of `now` (see "The wall clock" in the
    /// module docs): a clock set back must not make anything wait as long as the jump. Returns
    /// whether the outbox was asked to change.
    fn clamp_to_clock(
        &mut self,
        now: Millis,
        outbox: &OutboxStats,
        actions: &mut Vec<Action>,
    ) -> bool {
        let retry_after_limit = now.saturating_add(duration_ms(MAX_RETRY_AFTER));
        if self.not_before > retry_after_limit {
            tracing::warn!(
                ahead_ms = self.not_before - now,
                "sync: the clock went back; the server's Retry-After is shortened"
            );
            self.not_before = retry_after_limit;
        }
        let mut any = false;
        for tier in Tier::ALL {
            let limit = now.saturating_add(self.horizon(tier));
            if let Some(state) = self.tiers.get_mut(&tier) {
                state.next_slot = state.next_slot.min(limit);
                state.last_watch = state.last_watch.min(now);
            }
            let at = limit.max(self.not_before);
            if self.in_flight != Some(InFlight::Push(tier))
                && outbox
                    .tier(tier)
                    .next_attempt_at
                    .is_some_and(|head| head > at)
            {
                tracing::warn!(
                    %tier,
                    ahead_ms = outbox.tier(tier).next_attempt_at.map(|h| h - now),
                    "sync: the clock went back; retries scheduled beyond the backoff cap are pulled in"
                );
                actions.push(Action::Outbox(Write::Clamp { tier, at }));
                any = true;
            }
        }
        any
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
    fn allowed(&self, outbox: &OutboxStats) -> TierSet {
        // Behind the upgrade gate nothing goes: every request would be refused the same way;
        // with another tenant's token everything would go to the wrong tenant.
        if !self.online()
            || self.status.upgrade_required.is_some()
            || self.status.tenant_mismatch.is_some()
        {
            return TierSet::NONE;
        }
        if !self.slow() {
            return TierSet::ALL;
        }
        let mut set = TierSet::of(&[Tier::Critical, Tier::Preferences]);
        let pressure = outbox.depth() >= self.config.pressure_threshold;
        for tier in [Tier::Application, Tier::Background] {
            if pressure || self.requested.contains(tier) {
                set = set.with(tier);
            }
        }
        set
    }

    fn start_wake(&mut self, now: Millis, outbox: &OutboxStats) {
        let allowed = self.allowed(outbox);
        if allowed.is_empty() {
            return;
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
    }

    /// When the next wake-up is due: the earliest time an allowed tier has a due head and its
    /// slot has come. `None` when nothing waits.
    fn next_wake(&self, outbox: &OutboxStats) -> Option<Millis> {
        self.allowed(outbox)
            .iter()
            .filter_map(|tier| {
                let head = outbox.tier(tier).next_attempt_at?;
                let slot = self.tiers.get(&tier).map_or(0, |s| s.next_slot);
                Some(head.max(slot).max(self.not_before))
            })
            .min()
    }

    /// Tiers of the wake-up that still have in-call retries left.
    fn sendable(&self, wake: TierSet) -> TierSet {
        wake.iter()
            .filter(|tier| {
                self.tiers
                    .get(tier)
                    .is_some_and(|s| s.call_retries <= self.config.retries_per_attempt)
            })
            .fold(TierSet::NONE, TierSet::with)
    }

    /// Whether a tier of the wake-up is waiting for an in-call retry.
    fn retry_pending(&self, now: Millis, wake: TierSet, outbox: &OutboxStats) -> bool {
        self.sendable(wake).iter().any(|t| {
            self.tiers.get(&t).is_some_and(|s| s.call_retries > 0)
                && outbox.tier(t).next_attempt_at.is_some_and(|at| at > now)
        })
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
        sent: &[ItemId],
        response: PushResponse,
        elapsed: Duration,
        bytes: u64,
        actions: &mut Vec<Action>,
    ) {
        let Some(InFlight::Push(tier)) = self.in_flight.take() else {
            return;
        };
        let sent: HashSet<&ItemId> = sent.iter().collect();
        let mut stored = Vec::new();
        let mut rejected = Vec::new();
        let mut answered = 0;
        for result in response.results {
            let Ok(id) = result.id.parse::<ItemId>() else {
                continue;
            };
            if !sent.contains(&id) {
                continue;
            }
            answered += 1;
            match result.outcome {
                ItemOutcome::Accepted | ItemOutcome::Duplicate => stored.push(id),
                ItemOutcome::Rejected { code, reason } => {
                    rejected.push(Rejection { id, code, reason });
                }
            }
        }
        self.status.items_sent += stored.len() as u64;
        self.status.bytes_sent += bytes;
        self.status.unauthorized = false;
        let omitted = sent.len() - answered;
        let retry_at = if omitted > 0 {
            // The server did not take them: a retryable failure for those items, on the same
            // schedule (resending at once would spin against a server that keeps omitting).
            let error = format!("the server's answer omitted {omitted} items");
            tracing::warn!(
                omitted,
                "sync: push answer omitted items; they will be sent again"
            );
            self.status.last_error = Some(error);
            self.retry_time(now, tier)
        } else {
            self.status.last_error = None;
            if let Some(state) = self.tiers.get_mut(&tier) {
                state.retries = 0;
                state.call_retries = 0;
            }
            now
        };
        actions.push(Action::Outbox(Write::Settle {
            tier,
            stored,
            rejected,
            retry_at,
        }));
        if let Some(state) = self.tiers.get_mut(&tier) {
            state.last_success_at = Some(now);
            state.idle_slots = 0;
        }
        self.adapt_batch_size(elapsed, bytes);
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

    fn on_failure(
        &mut self,
        now: Millis,
        kind: FailureKind,
        error: String,
        actions: &mut Vec<Action>,
    ) {
        let Some(in_flight) = self.in_flight.take() else {
            return;
        };
        self.status.last_error = Some(error.clone());
        let halt = match &kind {
            FailureKind::UpgradeRequired(minimums) => {
                tracing::warn!(
                    min_protocol = ?minimums.min_protocol,
                    min_app_version = ?minimums.min_app_version,
                    "sync: the server requires a newer app; syncing stops until the app is updated"
                );
                self.status.upgrade_required = Some(minimums.clone());
                true
            }
            FailureKind::TenantMismatch { token_tenant } => {
                tracing::error!(
                    token_tenant,
                    "sync: the token is another tenant's; syncing stops until the agent is opened with a matching tenant"
                );
                self.status.tenant_mismatch = Some(token_tenant.clone());
                true
            }
            _ => false,
        };
        if halt {
            if let Some(wake) = self.wake {
                self.end_wake(now, wake);
            }
            if !matches!(in_flight, InFlight::Push(_)) {
                return;
            }
        }
        let retry_after = match &kind {
            FailureKind::Retryable { retry_after } => *retry_after,
            _ => None,
        };
        if let Some(after) = retry_after {
            let after = after.min(MAX_RETRY_AFTER);
            self.not_before = self.not_before.max(now + duration_ms(after));
        }
        let tier = match in_flight {
            InFlight::Push(tier) => tier,
            InFlight::Hello(tier) => {
                // Nothing is in flight in the outbox: the tier that wanted to push waits as if
                // its push had failed (an app's request still cuts the wait short).
                let at = if matches!(kind, FailureKind::Unauthorized | FailureKind::Untrusted) {
                    if matches!(kind, FailureKind::Unauthorized) {
                        self.status.unauthorized = true;
                    }
                    self.wake = None;
                    self.slot_after(now, tier)
                } else {
                    self.retry_time(now, tier)
                };
                actions.push(Action::Outbox(Write::Defer { tier, at }));
                return;
            }
            InFlight::Pull => {
                // A failed pull is tried again at the next wake-up.
                self.pull_pending = false;
                return;
            }
        };
        let write = match kind {
            FailureKind::TooLarge => {
                self.batch_size = (self.batch_size / 2).max(1);
                self.batch_cap = self.batch_size;
                Write::Release { tier }
            }
            FailureKind::Unauthorized => {
                self.status.unauthorized = true;
                self.wake = None;
                Write::Reschedule {
                    tier,
                    at: self.slot_after(now, tier),
                    error,
                }
            }
            // A refused certificate does not mend within seconds (nor should an attacker get
            // a retry burst): the tier waits for its next slot, and the wake-up ends.
            FailureKind::Untrusted => {
                self.wake = None;
                Write::Reschedule {
                    tier,
                    at: self.slot_after(now, tier),
                    error,
                }
            }
            // A batch in flight goes back as it was: not an attempt, nothing reordered.
            FailureKind::UpgradeRequired(_) | FailureKind::TenantMismatch { .. } => {
                Write::Release { tier }
            }
            FailureKind::Retryable { .. } => Write::Reschedule {
                tier,
                at: self.retry_time(now, tier),
                error,
            },
        };
        actions.push(Action::Outbox(write));
    }

    /// Counts a failed attempt of the tier and says when to try again: the retry schedule
    /// within the wake-up, then the tier's next slot (never before a server's `Retry-After`).
    fn retry_time(&mut self, now: Millis, tier: Tier) -> Millis {
        let state = self.tiers.entry(tier).or_default();
        state.retries += 1;
        state.call_retries += 1;
        let call_retries = state.call_retries;
        let at = if call_retries <= self.config.retries_per_attempt {
            now + duration_ms(self.config.retry.delay(call_retries))
        } else {
            // Retries spent: wait for the tier's next slot, timer armed.
            self.slot_after(now, tier)
        };
        at.max(self.not_before)
    }

    /// The first slot of `tier` after `now`, in the rhythm of the current wake-up.
    fn slot_from_wake(&self, now: Millis, tier: Tier) -> Millis {
        let cadence = duration_ms(tier.cadence()).max(1);
        let start = self.wake_started.min(now);
        start + ((now - start) / cadence + 1) * cadence
    }

    /// The next slot of `tier`; the tier waits until then.
    fn slot_after(&mut self, now: Millis, tier: Tier) -> Millis {
        let at = self.slot_from_wake(now, tier);
        if let Some(state) = self.tiers.get_mut(&tier) {
            state.next_slot = at;
        }
        at
    }

    /// Counts slots that pass without progress while online with items waiting.
    fn watchdog(&mut self, now: Millis, outbox: &OutboxStats) {
        let online = self.online();
        for (tier, state) in self.tiers.iter_mut() {
            let overdue = outbox.tier(*tier).overdue;
            if overdue == 0 {
                state.overdue_reported = false;
            } else if !state.overdue_reported {
                state.overdue_reported = true;
                tracing::warn!(
                    %tier,
                    overdue,
                    fresh_for_secs = tier.freshness_ttl().as_secs(),
                    online,
                    "sync: items older than their tier's freshness TTL are still waiting"
                );
            }
            let cadence = duration_ms(tier.cadence());
            let waiting = outbox.tier(*tier).depth > 0;
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
    }

    fn refresh_status(&mut self, outbox: &OutboxStats) {
        self.status.online = self.online();
        for tier in Tier::ALL {
            let s = outbox.tier(tier);
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
                    overdue: s.overdue,
                },
            );
        }
    }
}

/// When the oldest waiting item of a tier with none overdue yet turns overdue.
fn first_overdue(now: Millis, outbox: &OutboxStats) -> Option<Millis> {
    Tier::ALL
        .iter()
        .filter_map(|&tier| {
            let s = outbox.tier(tier);
            (s.depth > 0 && s.overdue == 0).then(|| {
                let fresh_for = duration_ms(tier.freshness_ttl());
                // Overdue means strictly older than the TTL: one millisecond past it.
                (now - s.oldest_age_ms)
                    .saturating_add(fresh_for)
                    .saturating_add(1)
            })
        })
        .min()
}

/// The earliest time the head of one of `tiers` is due.
fn earliest_head(outbox: &OutboxStats, tiers: TierSet) -> Option<Millis> {
    tiers
        .iter()
        .filter_map(|t| outbox.tier(t).next_attempt_at)
        .min()
}

fn tiers_union(a: TierSet, b: TierSet) -> TierSet {
    b.iter().fold(a, TierSet::with)
}

#[cfg(test)]
mod tests;
