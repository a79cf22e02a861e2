//! Engine tests. A small synchronous driver ([`Sim`]) runs the engine with [`step`] against a
//! real outbox on a temp file, a scripted server and a manual clock, and records every event and
//! the actions it produced. Behaviour tests assert on the outcome; transcript tests pin the
//! whole conversation in `transcripts/` (insta), so a change in what the engine decides shows up
//! as a readable diff.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

use kryonix_protocol::wire::{Op, PushResult};
use kryonix_protocol::{Namespace, TenantId};

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::outbox::{Outbox, OutboxConfig, OutboxItem};
use crate::store::{Store, StoreOptions};
use crate::sync::driver::step;
use std::sync::Arc;

const WIFI: NetworkProfile = NetworkProfile::WIFI;
const SLOW: NetworkProfile = NetworkProfile {
    class: NetworkClass::CellularSlow,
    metered: false,
};

/// What the fake server does with one push.
type Server =
    Box<dyn FnMut(&[OutboxItem], Millis) -> std::result::Result<PushResponse, FailureKind>>;

struct Sim {
    _dir: tempfile::TempDir,
    clock: ManualClock,
    start: Millis,
    outbox: Outbox,
    engine: SyncEngine,
    server: Server,
    /// (time, tiers) of every push sent.
    pushes: Vec<(Millis, Vec<Tier>)>,
    dead: Vec<ItemId>,
    queue: VecDeque<Event>,
    sleep: Option<Millis>,
    /// How the next pull fails, if it should (taken once).
    pull_failure: Option<FailureKind>,
    /// How the next hello fails, if it should (taken once), and what it answers otherwise.
    hello_failure: Option<FailureKind>,
    hello_answer: [u64; 4],
    /// Short names of items for the transcript ("t1.0" is the first item of tier 1).
    labels: HashMap<ItemId, String>,
    enqueued_per_tier: HashMap<Tier, usize>,
    transcript: String,
}

fn accept_all() -> Server {
    Box::new(|items, _| {
        Ok(PushResponse {
            results: items
                .iter()
                .map(|i| PushResult {
                    id: i.id.to_string(),
                    outcome: ItemOutcome::Accepted,
                })
                .collect(),
            last_seq: [0; 4],
        })
    })
}

/// Answers the first push with a retryable failure carrying `Retry-After`, then accepts all.
fn refuse_once_with_retry_after(after: Duration) -> Server {
    let mut first = true;
    Box::new(move |items, now| {
        if std::mem::take(&mut first) {
            return Err(FailureKind::Retryable {
                retry_after: Some(after),
            });
        }
        accept_all()(items, now)
    })
}

impl Sim {
    fn new(config: EngineConfig) -> Self {
        Self::starting_at(config, 1_000_000)
    }

    /// A simulation whose clock starts at `start` (Unix milliseconds).
    fn starting_at(config: EngineConfig, start: Millis) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(start);
        let store = Arc::new(Store::open(dir.path().join("db"), &StoreOptions::default()).unwrap());
        let oc = OutboxConfig::new(TenantId::new("acme").unwrap());
        let outbox = Outbox::open(store, Arc::new(clock.clone()), oc).unwrap();
        let mut config = config;
        config.retry.jitter = false;
        config.pull = false;
        let start = clock.now_ms();
        let engine = SyncEngine::new(config, start);
        Self {
            _dir: dir,
            clock,
            start,
            outbox,
            engine,
            server: accept_all(),
            pushes: Vec::new(),
            dead: Vec::new(),
            queue: VecDeque::new(),
            sleep: None,
            pull_failure: None,
            hello_failure: None,
            hello_answer: [0; 4],
            labels: HashMap::new(),
            enqueued_per_tier: HashMap::new(),
            transcript: String::new(),
        }
    }

    fn enqueue(&mut self, tier: Tier, n: usize) {
        for _ in 0..n {
            let count = self.enqueued_per_tier.entry(tier).or_default();
            let label = format!("t{}.{count}", tier.number());
            *count += 1;
            let id = self
                .outbox
                .enqueue(Namespace::UserCache, &label, Op::Put, b"v", tier)
                .unwrap();
            self.labels.insert(id, label);
        }
        self.queue.push_back(Event::Enqueued(tier));
    }

    fn send(&mut self, event: Event) {
        self.queue.push_back(event);
        self.drain_events();
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.queue.pop_front() {
            let now = self.clock.now_ms();
            let line = self.describe_event(&event);
            let step = step(&mut self.engine, &self.outbox, now, event).unwrap();
            self.record(now, &line, &step);
            self.dead.extend(step.dead_lettered.iter().map(|r| r.id));
            for action in step.actions {
                match action {
                    Action::Push { tier, limit } => {
                        let items = self.outbox.next_batch(limit, TierSet::of(&[tier])).unwrap();
                        let event = self.answer(&items, now);
                        self.queue.push_back(event);
                    }
                    Action::Hello => {
                        let event = match self.hello_failure.take() {
                            Some(kind) => Event::RequestFailed {
                                kind,
                                error: "hello refused".into(),
                            },
                            None => Event::HelloAnswered {
                                last_seq: self.hello_answer,
                            },
                        };
                        self.queue.push_back(event);
                    }
                    Action::Pull { .. } => {
                        let event = match self.pull_failure.take() {
                            Some(kind) => Event::RequestFailed {
                                kind,
                                error: "pull refused".into(),
                            },
                            None => Event::PullAnswered { has_more: false },
                        };
                        self.queue.push_back(event);
                    }
                    Action::SleepUntil(at) => self.sleep = at,
                    Action::Status(_) | Action::Outbox(_) => {}
                }
            }
        }
    }

    /// What the scripted server makes of one batch.
    fn answer(&mut self, items: &[OutboxItem], now: Millis) -> Event {
        if items.is_empty() {
            return Event::NothingToPush;
        }
        self.pushes
            .push((now, items.iter().map(|i| i.tier).collect()));
        match (self.server)(items, now) {
            Ok(response) => Event::PushAnswered {
                sent: items.iter().map(|i| i.id).collect(),
                response,
                elapsed: Duration::from_millis(50),
                bytes: 100 * items.len() as u64,
                raw_bytes: 300 * items.len() as u64,
            },
            Err(kind) => Event::RequestFailed {
                kind,
                error: "fault".into(),
            },
        }
    }

    /// Runs timers until `end`, jumping the clock from one armed timer to the next.
    fn run_until(&mut self, end: Millis) {
        self.drain_events();
        while let Some(at) = self.sleep {
            if at > end {
                break;
            }
            self.clock.set(at.max(self.clock.now_ms()));
            self.sleep = None;
            self.send(Event::Tick);
        }
        self.clock.set(end.max(self.clock.now_ms()));
        self.send(Event::Tick);
    }

    fn depth(&self) -> u64 {
        self.outbox.stats().unwrap().depth()
    }

    fn label(&self, id: &ItemId) -> String {
        self.labels.get(id).cloned().unwrap_or_else(|| "?".into())
    }

    fn labels_of(&self, ids: &[ItemId]) -> String {
        let names: Vec<String> = ids.iter().map(|id| self.label(id)).collect();
        names.join(" ")
    }

    fn at(&self, t: Millis) -> String {
        format!("{:>9.3}s", (t - self.start) as f64 / 1000.0)
    }

    fn describe_event(&self, event: &Event) -> String {
        match event {
            Event::Tick => "tick".into(),
            Event::NetworkChanged(n) => format!(
                "network {:?}{}",
                n.class,
                if n.metered { " metered" } else { "" }
            ),
            Event::DeviceChanged(d) => format!("device {d:?}"),
            Event::Enqueued(t) => format!("app enqueued in t{}", t.number()),
            Event::SyncRequested(tiers) => format!("app asks for {}", tier_list(*tiers)),
            Event::PushAnswered { sent, response, .. } => {
                let mut line = format!("push of {} answered:", self.labels_of(sent));
                for r in &response.results {
                    let id = r.id.parse().map(|id| self.label(&id)).unwrap_or_default();
                    let outcome = match &r.outcome {
                        ItemOutcome::Accepted => "accepted".to_owned(),
                        ItemOutcome::Duplicate => "duplicate".to_owned(),
                        ItemOutcome::Rejected { code, .. } => format!("rejected ({code})"),
                    };
                    let _ = write!(line, " {id} {outcome};");
                }
                line
            }
            Event::NothingToPush => "nothing to push".into(),
            Event::PushAbandoned => "push abandoned".into(),
            Event::HelloAnswered { last_seq } => format!("hello answered, last seq {last_seq:?}"),
            Event::PullAnswered { has_more } => format!("pull answered, more: {has_more}"),
            Event::RequestFailed { kind, .. } => {
                format!("request failed: {}", describe_failure(kind))
            }
        }
    }

    fn describe_write(&self, write: &Write) -> String {
        match write {
            Write::Settle {
                tier,
                stored,
                rejected,
                retry_at,
            } => {
                let rejected: Vec<ItemId> = rejected.iter().map(|r| r.id).collect();
                let mut text = format!(
                    "settle t{}: stored [{}]",
                    tier.number(),
                    self.labels_of(stored)
                );
                if !rejected.is_empty() {
                    let _ = write!(text, ", rejected [{}]", self.labels_of(&rejected));
                }
                let _ = write!(text, ", the rest due at {}", self.at(*retry_at).trim());
                text
            }
            Write::Reschedule { tier, at, .. } => {
                format!("reschedule t{} to {}", tier.number(), self.at(*at).trim())
            }
            Write::Release { tier } => format!("release t{}", tier.number()),
            Write::MakeDue(tiers) => format!("make {} due now", tier_list(*tiers)),
            Write::Defer { tier, at } => {
                format!("defer t{} to {}", tier.number(), self.at(*at).trim())
            }
            Write::Clamp { tier, at } => {
                format!("pull t{} back to {}", tier.number(), self.at(*at).trim())
            }
            Write::Reconcile { last_seq } => {
                format!("reconcile numbering with the server's {last_seq:?}")
            }
        }
    }

    fn record(&mut self, now: Millis, event: &str, step: &crate::sync::driver::Step) {
        if matches!(event, "tick")
            && step
                .actions
                .iter()
                .all(|a| matches!(a, Action::SleepUntil(_)))
        {
            // A tick that only re-arms the timer says nothing new.
            return;
        }
        let mut out = format!("{} <- {event}\n", self.at(now));
        for write in &step.writes {
            let text = self.describe_write(write);
            let _ = writeln!(out, "{:>11}  -> {text}", "");
        }
        for rejection in &step.dead_lettered {
            let _ = writeln!(
                out,
                "{:>11}  -> dead letter {} ({})",
                "",
                self.label(&rejection.id),
                rejection.code
            );
        }
        for action in &step.actions {
            let text = match action {
                Action::Push { tier, limit } => format!("push t{} (up to {limit})", tier.number()),
                Action::Hello => "hello".into(),
                Action::Pull { limit } => format!("pull (up to {limit})"),
                Action::SleepUntil(None) => "sleep".into(),
                Action::SleepUntil(Some(at)) => format!("sleep until {}", self.at(*at).trim()),
                Action::Status(s) => {
                    let depth: Vec<String> =
                        s.tiers.values().map(|t| t.depth.to_string()).collect();
                    format!(
                        "status: {}, depth {}, sent {}, wake-ups {}{}{}",
                        if s.online { "online" } else { "offline" },
                        depth.join("/"),
                        s.items_sent,
                        s.wakeups,
                        if s.tiers.values().any(|t| t.stalled) {
                            ", stalled"
                        } else {
                            ""
                        },
                        if s.upgrade_required.is_some() {
                            ", upgrade required"
                        } else {
                            ""
                        }
                    )
                }
                Action::Outbox(write) => format!("outbox {write:?}"),
            };
            let _ = writeln!(out, "{:>11}  -> {text}", "");
        }
        self.transcript.push_str(&out);
    }
}

fn describe_failure(kind: &FailureKind) -> String {
    match kind {
        FailureKind::Retryable { retry_after: None } => "retryable".into(),
        FailureKind::Retryable {
            retry_after: Some(after),
        } => format!("retryable, Retry-After {} s", after.as_secs()),
        FailureKind::Unauthorized => "unauthorized".into(),
        FailureKind::TooLarge => "too large".into(),
        FailureKind::Untrusted => "untrusted certificate".into(),
        FailureKind::TenantMismatch { token_tenant } => {
            format!("the token is tenant {token_tenant:?}'s")
        }
        FailureKind::UpgradeRequired(u) => format!(
            "upgrade required (min protocol {:?}, min app {:?})",
            u.min_protocol, u.min_app_version
        ),
    }
}

fn tier_list(tiers: TierSet) -> String {
    let names: Vec<String> = tiers.iter().map(|t| format!("t{}", t.number())).collect();
    names.join("+")
}

/// Pins a transcript under `transcripts/`.
fn assert_transcript(name: &str, sim: &Sim) {
    insta::with_settings!({ snapshot_path => "transcripts", prepend_module_to_snapshot => false, omit_expression => true }, {
        insta::assert_snapshot!(name, sim.transcript);
    });
}

#[test]
fn offline_sends_nothing_then_drains_tier_one_first() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.enqueue(Tier::Background, 150);
    sim.enqueue(Tier::Critical, 150);
    sim.enqueue(Tier::Application, 30);
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 3_600_000);
    assert!(sim.pushes.is_empty(), "offline must send nothing");
    assert_eq!(
        sim.sleep,
        Some(t0 + 3_600_000 + 1),
        "offline, the only timer is the status refresh when tier 3 turns overdue (1 h)"
    );

    sim.send(Event::NetworkChanged(WIFI));
    assert_eq!(
        sim.depth(),
        0,
        "coming online drains everything in one wake-up"
    );
    let order: Vec<Tier> = sim
        .pushes
        .iter()
        .flat_map(|(_, t)| t.iter().copied())
        .collect();
    assert_eq!(order.len(), 330);
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "no lower tier before a higher one"
    );
    assert!(sim.pushes.iter().all(|(_, t)| t.len() <= 100));
    assert_eq!(sim.engine.status().wakeups, 1);
}

#[test]
fn slow_cellular_holds_tiers_three_and_four_until_asked() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.send(Event::NetworkChanged(SLOW));
    assert!(
        sim.engine.batch_size() < 100,
        "smaller batches on a slow link"
    );
    sim.enqueue(Tier::Critical, 3);
    sim.enqueue(Tier::Preferences, 3);
    sim.enqueue(Tier::Application, 3);
    sim.enqueue(Tier::Background, 3);
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 2 * 3_600_000);
    let stats = sim.outbox.stats().unwrap();
    assert_eq!(stats.tier(Tier::Critical).depth, 0);
    assert_eq!(stats.tier(Tier::Preferences).depth, 0);
    assert_eq!(stats.tier(Tier::Application).depth, 3);
    assert_eq!(stats.tier(Tier::Background).depth, 3);

    sim.send(Event::SyncRequested(TierSet::of(&[Tier::Background])));
    let stats = sim.outbox.stats().unwrap();
    assert_eq!(stats.tier(Tier::Background).depth, 0, "the app asked");
    assert_eq!(stats.tier(Tier::Application).depth, 3, "not asked for");
}

#[test]
fn slow_cellular_sends_everything_under_pressure() {
    let mut sim = Sim::new(EngineConfig {
        pressure_threshold: 50,
        ..EngineConfig::default()
    });
    sim.send(Event::NetworkChanged(SLOW));
    sim.enqueue(Tier::Background, 60);
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 120_000);
    // Sent until the pressure is relieved, not necessarily to the last item.
    assert!(sim.depth() < 50, "depth {}", sim.depth());
}

#[test]
fn tiers_ride_along_one_wakeup_per_minute() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.send(Event::NetworkChanged(WIFI));
    let t0 = sim.clock.now_ms();
    // Every tier stays busy: items arrive every 10 s in each tier.
    let mut t = t0;
    while t < t0 + 3_600_000 {
        sim.run_until(t);
        for tier in Tier::ALL {
            sim.enqueue(tier, 1);
        }
        sim.drain_events();
        t += 10_000;
    }
    sim.run_until(t0 + 3_600_000);
    let wakeups = sim.engine.status().wakeups;
    assert!(
        wakeups <= 61,
        "{wakeups} wake-ups in an hour; one timer per tier would be 77"
    );
    // Tier 4 was not starved: everything enqueued more than a minute ago is gone.
    assert!(
        sim.outbox
            .stats()
            .unwrap()
            .tier(Tier::Background)
            .oldest_age_ms
            <= 60_000
    );
}

#[test]
fn transient_failures_retry_three_times_then_wait_for_the_slot() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.server = Box::new(|_, _| Err(FailureKind::Retryable { retry_after: None }));
    sim.enqueue(Tier::Critical, 1);
    sim.send(Event::NetworkChanged(WIFI));
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 59_000);
    let times: Vec<Millis> = sim.pushes.iter().map(|(t, _)| t - t0).collect();
    assert_eq!(
        times,
        [0, 1_000, 3_000, 7_000],
        "1 s, 2 s, 4 s, then the next slot"
    );
    assert!(sim.sleep.is_some(), "a timer stays armed after a failure");
    sim.run_until(t0 + 60_500);
    assert_eq!(sim.pushes.len(), 5, "retried at the tier's next slot");
    assert_eq!(sim.pushes[4].0 - t0, 60_000);
    // Still there, never dropped.
    assert_eq!(sim.depth(), 1);
    assert!(sim.engine.status().tiers[&Tier::Critical].retries >= 5);
}

#[test]
fn items_are_never_dropped_and_go_once_the_server_recovers() {
    let mut sim = Sim::new(EngineConfig::default());
    let healthy_at = 1_000_000 + 3 * 3_600_000;
    sim.server = Box::new(move |items, now| {
        if now < healthy_at {
            return Err(FailureKind::Retryable { retry_after: None });
        }
        accept_all()(items, now)
    });
    sim.send(Event::NetworkChanged(WIFI));
    sim.enqueue(Tier::Critical, 5);
    sim.enqueue(Tier::Background, 5);
    sim.run_until(healthy_at + 3_600_000);
    assert_eq!(sim.depth(), 0);
    assert!(sim.dead.is_empty());
}

const DAY: Millis = 86_400_000;
/// 2026-12-01, where the clock tests start: a day back must still be a real date.
const DEC_2026: Millis = 1_796_083_200_000;

/// Fails the first `n` pushes, then accepts everything.
fn fail_first(n: usize) -> Server {
    let mut left = n;
    Box::new(move |items, now| {
        if left > 0 {
            left -= 1;
            return Err(FailureKind::Retryable { retry_after: None });
        }
        accept_all()(items, now)
    })
}

/// Fails every push until `healthy` is set.
fn fail_until(healthy: Arc<std::sync::atomic::AtomicBool>) -> Server {
    Box::new(move |items, now| {
        if !healthy.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(FailureKind::Retryable { retry_after: None });
        }
        accept_all()(items, now)
    })
}

#[test]
fn a_clock_set_back_a_day_mid_backoff_delays_a_retry_by_at_most_the_backoff_cap() {
    let config = EngineConfig::default();
    let cap = duration_ms(config.retry.max_delay); // no jitter in the simulation
    let mut sim = Sim::starting_at(config, DEC_2026);
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    sim.server = fail_until(healthy.clone());
    sim.enqueue(Tier::Critical, 3);
    sim.enqueue(Tier::Background, 2);
    sim.send(Event::NetworkChanged(WIFI));
    let t0 = sim.clock.now_ms();
    // Failures at 0 s and 1 s: both batches are backing off, due at +3 s.
    sim.run_until(t0 + 1_500);
    assert_eq!(sim.pushes.len(), 4, "{:?}", sim.pushes);
    // The user sets the clock back a day and the server recovers; the driver's timer fires (it
    // sleeps on a monotonic clock, so it fires when it was due).
    let jumped = t0 + 1_500 - DAY;
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    sim.clock.set(jumped);
    sim.send(Event::Tick);
    sim.run_until(jumped + 10 * 60_000);
    let critical: Vec<Millis> = sim
        .pushes
        .iter()
        .skip(4)
        .filter(|(_, tiers)| tiers.contains(&Tier::Critical))
        .map(|(t, _)| t - jumped)
        .collect();
    assert!(
        critical.first().is_some_and(|t| *t <= cap),
        "the retry waited longer than the cap ({cap} ms) after the jump: {critical:?}"
    );
    assert_eq!(sim.depth(), 0, "everything went within minutes, not a day");
    assert!(sim.dead.is_empty());
    // Nothing in memory still points a day ahead either: a new item goes within its cadence.
    sim.enqueue(Tier::Background, 1);
    let now = sim.clock.now_ms();
    sim.run_until(now + duration_ms(Tier::Background.cadence()));
    assert_eq!(sim.depth(), 0);
}

#[test]
fn a_clock_set_forward_a_day_mid_backoff_sends_at_once_and_only_once() {
    let mut sim = Sim::starting_at(EngineConfig::default(), DEC_2026);
    sim.server = fail_first(1);
    sim.enqueue(Tier::Critical, 3);
    sim.send(Event::NetworkChanged(WIFI));
    let t0 = sim.clock.now_ms();
    assert_eq!(sim.pushes.len(), 1);
    let jumped = t0 + 200 + DAY;
    sim.clock.set(jumped);
    sim.send(Event::Tick);
    assert_eq!(sim.pushes.len(), 2, "the due retry goes at the first tick");
    assert_eq!(sim.pushes[1].0, jumped);
    assert_eq!(sim.depth(), 0);
    sim.run_until(jumped + 3_600_000);
    assert_eq!(sim.pushes.len(), 2, "nothing is sent twice");
}

#[test]
fn a_retry_after_of_days_is_waited_for_an_hour_at_most() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.server = refuse_once_with_retry_after(Duration::from_secs(10 * 86_400));
    sim.enqueue(Tier::Critical, 1);
    sim.send(Event::NetworkChanged(WIFI));
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 2 * 3_600_000);
    assert_eq!(sim.depth(), 0);
    let second = sim.pushes[1].0 - t0;
    assert!(
        (duration_ms(MAX_RETRY_AFTER)..=duration_ms(MAX_RETRY_AFTER) + 60_000).contains(&second),
        "asked again after {second} ms"
    );
}

#[test]
fn transcript_the_clock_goes_back_a_day_mid_backoff() {
    let mut sim = Sim::starting_at(EngineConfig::default(), DEC_2026);
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    sim.server = fail_until(healthy.clone());
    sim.enqueue(Tier::Critical, 1);
    sim.send(Event::NetworkChanged(WIFI));
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 1_500);
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    sim.clock.set(t0 + 1_500 - DAY);
    sim.send(Event::Tick);
    sim.run_until(t0 + 1_500 - DAY + 120_000);
    assert_eq!(sim.depth(), 0);
    assert_transcript("the_clock_goes_back_a_day_mid_backoff", &sim);
}

#[test]
fn retry_after_is_honoured() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.server = refuse_once_with_retry_after(Duration::from_secs(30));
    sim.enqueue(Tier::Critical, 1);
    sim.enqueue(Tier::Background, 1);
    sim.send(Event::NetworkChanged(WIFI));
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 120_000);
    let after: Vec<Millis> = sim.pushes.iter().skip(1).map(|(t, _)| t - t0).collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|t| *t >= 30_000),
        "a request went before Retry-After: {after:?}"
    );
    assert_eq!(sim.depth(), 0);
}

#[test]
fn rejected_items_are_dead_lettered_and_the_rest_flows() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.server = Box::new(|items, _| {
        Ok(PushResponse {
            results: items
                .iter()
                .map(|i| PushResult {
                    id: i.id.to_string(),
                    outcome: if i.key == "t1.1" {
                        ItemOutcome::Rejected {
                            code: "invalid_key".into(),
                            reason: "bad".into(),
                        }
                    } else {
                        ItemOutcome::Accepted
                    },
                })
                .collect(),
            last_seq: [0; 4],
        })
    });
    sim.enqueue(Tier::Critical, 3);
    sim.send(Event::NetworkChanged(WIFI));
    assert_eq!(sim.dead.len(), 1);
    assert_eq!(sim.depth(), 0);
    assert_eq!(sim.outbox.dead_letters().unwrap().len(), 1);
    assert_eq!(sim.engine.status().tiers[&Tier::Critical].dead_letters, 1);
}

#[test]
fn too_large_halves_the_batch() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.server = Box::new(|items, now| {
        if items.len() > 30 {
            return Err(FailureKind::TooLarge);
        }
        accept_all()(items, now)
    });
    sim.enqueue(Tier::Application, 100);
    sim.send(Event::NetworkChanged(WIFI));
    assert_eq!(sim.depth(), 0);
    assert!(sim.engine.batch_size() <= 30);
}

#[test]
fn watchdog_reports_a_stalled_tier() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.server = Box::new(|_, _| Err(FailureKind::Retryable { retry_after: None }));
    sim.send(Event::NetworkChanged(WIFI));
    sim.enqueue(Tier::Critical, 1);
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 30_000);
    assert!(!sim.engine.status().tiers[&Tier::Critical].stalled);
    sim.run_until(t0 + 5 * 60_000);
    assert!(sim.engine.status().tiers[&Tier::Critical].stalled);
}

#[test]
fn the_status_shows_items_older_than_their_tiers_freshness_ttl() {
    // Offline: nothing can go. Critical items are fresh for 5 minutes, background ones for 2 h.
    let mut sim = Sim::new(EngineConfig::default());
    sim.enqueue(Tier::Critical, 2);
    sim.enqueue(Tier::Background, 1);
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 5 * 60_000);
    let overdue = |sim: &Sim, tier| sim.engine.status().tiers[&tier].overdue;
    assert_eq!(overdue(&sim, Tier::Critical), 0);
    sim.run_until(t0 + 6 * 60_000);
    assert_eq!(overdue(&sim, Tier::Critical), 2);
    assert_eq!(overdue(&sim, Tier::Background), 0);
    // Back online, the items go and the figure falls back to zero.
    sim.send(Event::NetworkChanged(WIFI));
    sim.run_until(t0 + 7 * 60_000);
    assert_eq!(sim.depth(), 0);
    assert_eq!(overdue(&sim, Tier::Critical), 0);
}

#[test]
fn a_pull_refused_with_retry_after_still_ends_the_wake_up() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.engine.config.pull = true;
    sim.pull_failure = Some(FailureKind::Retryable {
        retry_after: Some(Duration::from_secs(5)),
    });
    sim.enqueue(Tier::Critical, 3);
    sim.send(Event::NetworkChanged(WIFI));
    assert_eq!(sim.depth(), 0);
    assert!(
        sim.sleep.is_some() || sim.engine.is_idle(),
        "a wake-up left open with no timer: sync_now would never return"
    );
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 10_000);
    assert!(sim.engine.is_idle(), "the wake-up never ended");
}

#[test]
fn a_batch_never_mixes_tiers() {
    let mut sim = Sim::new(EngineConfig::default());
    // A server under back-pressure: a batch with anything below tier 1 is refused whole.
    sim.server = Box::new(|items, now| {
        if items.iter().any(|i| i.tier != Tier::Critical) {
            return Err(FailureKind::Retryable {
                retry_after: Some(Duration::from_secs(5)),
            });
        }
        accept_all()(items, now)
    });
    sim.enqueue(Tier::Critical, 150);
    sim.enqueue(Tier::Preferences, 50);
    sim.send(Event::NetworkChanged(WIFI));
    assert!(
        sim.pushes
            .iter()
            .all(|(_, tiers)| tiers.windows(2).all(|w| w[0] == w[1])),
        "a batch mixed tiers"
    );
    assert_eq!(
        sim.outbox.stats().unwrap().tier(Tier::Critical).depth,
        0,
        "tier 1 was held back by tier 2"
    );
    assert_eq!(sim.depth(), 50);
}

#[test]
fn an_app_request_sends_what_waits_for_the_next_slot() {
    let mut sim = Sim::new(EngineConfig::default());
    let t0 = sim.clock.now_ms();
    sim.server = Box::new(move |items, now| {
        if now < t0 + 10_000 {
            return Err(FailureKind::Retryable { retry_after: None });
        }
        accept_all()(items, now)
    });
    sim.enqueue(Tier::Critical, 1);
    sim.send(Event::NetworkChanged(WIFI));
    sim.run_until(t0 + 20_000);
    assert_eq!(
        sim.pushes.len(),
        4,
        "retries spent, waiting for the slot at 60 s"
    );
    assert_eq!(sim.depth(), 1);

    sim.send(Event::SyncRequested(TierSet::of(&[Tier::Critical])));
    assert_eq!(
        sim.depth(),
        0,
        "the app's request went at once, not at the next slot"
    );
    assert_eq!(sim.pushes[4].0 - t0, 20_000);
}

#[test]
fn an_app_request_does_not_jump_a_retry_after() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.server = refuse_once_with_retry_after(Duration::from_secs(30));
    sim.enqueue(Tier::Critical, 1);
    sim.send(Event::NetworkChanged(WIFI));
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 5_000);
    sim.send(Event::SyncRequested(TierSet::ALL));
    assert_eq!(sim.pushes.len(), 1, "sent before the server's Retry-After");
    sim.run_until(t0 + 40_000);
    assert_eq!(sim.depth(), 0);
    assert!(sim.pushes[1].0 - t0 >= 30_000);
}

#[test]
fn the_retry_schedule_backs_off_and_never_drops_an_item() {
    // The one retry policy of the device, end to end through the outbox: 1 s, 2 s, 4 s in the
    // wake-up, then the tier's slot, for as long as it takes, attempts counted on the item.
    let mut sim = Sim::new(EngineConfig::default());
    sim.server = Box::new(|_, _| Err(FailureKind::Retryable { retry_after: None }));
    sim.enqueue(Tier::Preferences, 1);
    sim.send(Event::NetworkChanged(WIFI));
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 3_600_000);
    let times: Vec<Millis> = sim.pushes.iter().map(|(t, _)| t - t0).take(6).collect();
    assert_eq!(times, [0, 1_000, 3_000, 7_000, 300_000, 301_000]);
    let (item, state) = {
        let batch = sim.outbox.stats().unwrap();
        assert_eq!(batch.depth(), 1);
        let id = *sim.labels.keys().next().unwrap();
        sim.outbox.get(id).unwrap().unwrap()
    };
    assert_eq!(state, crate::outbox::ItemState::Pending);
    assert_eq!(item.attempts as usize, sim.pushes.len());
}

#[test]
fn a_failed_settle_is_repaired_from_the_snapshot() {
    // The disk refuses the write that would settle a batch: the rows stay in flight while the
    // engine has nothing out. The next poll sees them in the snapshot and releases them; they
    // are sent again (the server answers `duplicate`, which settles them).
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let store = Arc::new(Store::open(dir.path().join("db"), &StoreOptions::default()).unwrap());
    let outbox = Outbox::open(
        store,
        Arc::new(clock.clone()),
        OutboxConfig::new(TenantId::new("acme").unwrap()),
    )
    .unwrap();
    let now = clock.now_ms();
    let mut engine = SyncEngine::new(
        EngineConfig {
            pull: false,
            ..EngineConfig::default()
        },
        now,
    );
    let id = outbox
        .enqueue(Namespace::UserCache, "k", Op::Put, b"v", Tier::Critical)
        .unwrap();
    let first = step(&mut engine, &outbox, now, Event::NetworkChanged(WIFI)).unwrap();
    assert!(
        first.actions.contains(&Action::Hello),
        "a session says hello first"
    );
    let first = step(
        &mut engine,
        &outbox,
        now,
        Event::HelloAnswered { last_seq: [0; 4] },
    )
    .unwrap();
    assert!(first.actions.contains(&Action::Push {
        tier: Tier::Critical,
        limit: 100
    }));
    let batch = outbox.next_batch(100, TierSet::ALL).unwrap();
    assert_eq!(batch.len(), 1);
    let writes = engine.handle(
        now,
        Event::PushAnswered {
            sent: vec![id],
            response: PushResponse {
                results: vec![PushResult {
                    id: id.to_string(),
                    outcome: ItemOutcome::Accepted,
                }],
                last_seq: [0; 4],
            },
            elapsed: Duration::from_millis(10),
            bytes: 10,
            raw_bytes: 10,
        },
    );
    assert!(matches!(
        writes.as_slice(),
        [Action::Outbox(Write::Settle { .. })]
    ));
    // ... and that write never happens.
    let snapshot = outbox.stats().unwrap();
    assert_eq!(snapshot.tier(Tier::Critical).in_flight, 1);
    let actions = engine.poll(now, &snapshot);
    assert!(actions.contains(&Action::Outbox(Write::Release {
        tier: Tier::Critical
    })));
    assert!(
        actions.contains(&Action::SleepUntil(Some(now))),
        "{actions:?}"
    );
    for action in actions {
        if let Action::Outbox(write) = action {
            outbox.apply(&write).unwrap();
        }
    }
    let again = step(&mut engine, &outbox, now, Event::Tick).unwrap();
    assert!(again.actions.contains(&Action::Push {
        tier: Tier::Critical,
        limit: 100
    }));
    assert_eq!(outbox.next_batch(100, TierSet::ALL).unwrap()[0].id, id);
}

#[test]
fn an_answer_about_other_ids_changes_nothing() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.server = Box::new(|items, _| {
        assert!(!items.is_empty());
        Ok(PushResponse {
            // A confused server: it acknowledges an id that was never sent, and nothing else.
            results: vec![PushResult {
                id: ItemId::new().to_string(),
                outcome: ItemOutcome::Accepted,
            }],
            last_seq: [0; 4],
        })
    });
    sim.enqueue(Tier::Critical, 2);
    sim.send(Event::NetworkChanged(WIFI));
    assert_eq!(
        sim.depth(),
        2,
        "nothing the server did not name may be deleted"
    );
    assert_eq!(sim.engine.status().items_sent, 0);
}

// Transcripts: whole conversations, pinned.

#[test]
fn transcript_offline_then_online() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.enqueue(Tier::Background, 2);
    sim.enqueue(Tier::Critical, 2);
    sim.drain_events();
    sim.send(Event::NetworkChanged(WIFI));
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 30_000);
    assert_eq!(sim.depth(), 0);
    assert_transcript("offline_then_online", &sim);
}

#[test]
fn transcript_retries_then_the_slot_then_the_app_asks() {
    let mut sim = Sim::new(EngineConfig::default());
    let t0 = sim.clock.now_ms();
    sim.server = Box::new(move |items, now| {
        if now < t0 + 20_000 {
            return Err(FailureKind::Retryable { retry_after: None });
        }
        accept_all()(items, now)
    });
    sim.enqueue(Tier::Critical, 1);
    sim.send(Event::NetworkChanged(WIFI));
    sim.run_until(t0 + 30_000);
    sim.send(Event::SyncRequested(TierSet::of(&[Tier::Critical])));
    assert_eq!(sim.depth(), 0);
    assert_transcript("retries_then_the_slot_then_the_app_asks", &sim);
}

/// Refuses every push as the server of a newer release would: `426`, with its minimums.
fn upgrade_gate() -> Server {
    Box::new(|_, _| {
        Err(FailureKind::UpgradeRequired(UpgradeRequired {
            min_protocol: Some(2),
            min_app_version: Some("4.2.0".into()),
        }))
    })
}

#[test]
fn behind_the_upgrade_gate_nothing_more_is_sent_and_every_item_waits() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.server = upgrade_gate();
    sim.enqueue(Tier::Critical, 3);
    sim.enqueue(Tier::Background, 2);
    sim.send(Event::NetworkChanged(WIFI));
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 6 * 3_600_000);
    sim.send(Event::SyncRequested(TierSet::ALL));
    sim.send(Event::NetworkChanged(WIFI));
    assert_eq!(
        sim.pushes.len(),
        1,
        "pushed again behind the gate: {:?}",
        sim.pushes
    );
    assert_eq!(sim.depth(), 5);
    assert!(sim.dead.is_empty());
    let stats = sim.outbox.stats().unwrap();
    assert_eq!(
        stats.tier(Tier::Critical).in_flight,
        0,
        "the batch was not released"
    );
    let status = sim.engine.status();
    assert_eq!(
        status.upgrade_required,
        Some(UpgradeRequired {
            min_protocol: Some(2),
            min_app_version: Some("4.2.0".into()),
        })
    );
    // The refused batch was not an attempt: the updated app sends it as its first try.
    for id in sim.labels.keys() {
        let (item, _) = sim.outbox.get(*id).unwrap().unwrap();
        assert_eq!(item.attempts, 0, "{item:?}");
    }
}

#[test]
fn transcript_the_upgrade_gate_stops_every_tier() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.server = upgrade_gate();
    sim.enqueue(Tier::Critical, 1);
    sim.enqueue(Tier::Application, 1);
    sim.send(Event::NetworkChanged(WIFI));
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 120_000);
    sim.send(Event::SyncRequested(TierSet::ALL));
    assert_eq!(sim.depth(), 2);
    assert_transcript("the_upgrade_gate_stops_every_tier", &sim);
}

#[test]
fn transcript_retry_after_holds_every_request() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.server = refuse_once_with_retry_after(Duration::from_secs(30));
    sim.enqueue(Tier::Critical, 1);
    sim.enqueue(Tier::Preferences, 1);
    sim.send(Event::NetworkChanged(WIFI));
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 5_000);
    sim.send(Event::SyncRequested(TierSet::ALL));
    sim.run_until(t0 + 60_000);
    assert_eq!(sim.depth(), 0);
    assert_transcript("retry_after_holds_every_request", &sim);
}

#[test]
fn transcript_rejected_and_omitted_items() {
    let mut sim = Sim::new(EngineConfig::default());
    let mut first = true;
    sim.server = Box::new(move |items, _| {
        let answer_all = !std::mem::take(&mut first);
        Ok(PushResponse {
            results: items
                .iter()
                .enumerate()
                // The first answer leaves out the last item: it must go again, in order.
                .filter(|(n, _)| answer_all || *n + 1 < items.len())
                .map(|(_, i)| PushResult {
                    id: i.id.to_string(),
                    outcome: if i.key == "t1.1" {
                        ItemOutcome::Rejected {
                            code: "invalid_key".into(),
                            reason: "bad".into(),
                        }
                    } else {
                        ItemOutcome::Accepted
                    },
                })
                .collect(),
            last_seq: [0; 4],
        })
    });
    sim.enqueue(Tier::Critical, 3);
    sim.send(Event::NetworkChanged(WIFI));
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 5_000);
    assert_eq!(sim.depth(), 0);
    assert_eq!(sim.dead.len(), 1);
    assert_transcript("rejected_and_omitted_items", &sim);
}

#[test]
fn transcript_slow_cellular_holds_tiers_three_and_four() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.send(Event::NetworkChanged(SLOW));
    for tier in Tier::ALL {
        sim.enqueue(tier, 1);
    }
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 20 * 60_000);
    sim.send(Event::SyncRequested(TierSet::of(&[Tier::Background])));
    assert_eq!(sim.depth(), 1, "tier 3 was not asked for");
    assert_transcript("slow_cellular_holds_tiers_three_and_four", &sim);
}

#[test]
fn transcript_a_failed_hello_defers_the_tier_until_the_app_asks() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.hello_failure = Some(FailureKind::Retryable { retry_after: None });
    sim.enqueue(Tier::Critical, 1);
    sim.send(Event::NetworkChanged(WIFI));
    let t0 = sim.clock.now_ms();
    // The first hello fails; the tier waits 1 s like a failed push, then the hello goes again.
    sim.run_until(t0 + 500);
    assert_eq!(sim.depth(), 1);
    assert!(sim.pushes.is_empty(), "no push before a hello was answered");
    sim.hello_failure = Some(FailureKind::Unauthorized);
    sim.run_until(t0 + 5_000);
    assert!(sim.engine.status().unauthorized);
    assert_eq!(sim.depth(), 1);
    // Signed in again, the app asks: the wait for the slot is cut short.
    sim.send(Event::SyncRequested(TierSet::ALL));
    assert_eq!(sim.depth(), 0);
    assert_transcript("a_failed_hello_defers_the_tier_until_the_app_asks", &sim);
}
