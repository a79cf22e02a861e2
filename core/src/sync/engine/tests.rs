use std::collections::VecDeque;

use kryonix_protocol::wire::{Op, PushResult};
use kryonix_protocol::{Namespace, TenantId};

use super::*;
use crate::clock::ManualClock;
use crate::outbox::OutboxConfig;
use crate::store::{Store, StoreOptions};

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
        })
    })
}

/// Answers the first push with a transient failure carrying `Retry-After`, then accepts all.
fn refuse_once_with_retry_after(after: Duration) -> Server {
    let mut first = true;
    Box::new(move |items, now| {
        if std::mem::take(&mut first) {
            return Err(FailureKind::Transient {
                retry_after: Some(after),
            });
        }
        accept_all()(items, now)
    })
}

impl Sim {
    fn new(config: EngineConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000_000);
        let store = Arc::new(Store::open(dir.path().join("db"), &StoreOptions::default()).unwrap());
        let mut oc = OutboxConfig::new(TenantId::new("acme").unwrap());
        oc.retry.jitter = false;
        let outbox = Outbox::open(store, Arc::new(clock.clone()), oc).unwrap();
        let mut config = config;
        config.retry.jitter = false;
        config.pull = false;
        let engine = SyncEngine::new(outbox.clone(), Arc::new(clock.clone()), config);
        Self {
            _dir: dir,
            clock,
            outbox,
            engine,
            server: accept_all(),
            pushes: Vec::new(),
            dead: Vec::new(),
            queue: VecDeque::new(),
            sleep: None,
            pull_failure: None,
        }
    }

    fn enqueue(&mut self, tier: Tier, n: usize) {
        for i in 0..n {
            self.outbox
                .enqueue(Namespace::UserCache, &format!("k{i}"), Op::Put, b"v", tier)
                .unwrap();
        }
        self.queue.push_back(Event::Enqueued(tier));
    }

    fn send(&mut self, event: Event) {
        self.queue.push_back(event);
        self.drain_events();
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.queue.pop_front() {
            for action in self.engine.handle(event).unwrap() {
                match action {
                    Action::Push(items) => {
                        let now = self.clock.now_ms();
                        self.pushes
                            .push((now, items.iter().map(|i| i.tier).collect()));
                        let event = match (self.server)(&items, now) {
                            Ok(response) => Event::PushAnswered {
                                response,
                                elapsed: Duration::from_millis(50),
                                bytes: 100 * items.len() as u64,
                                raw_bytes: 300 * items.len() as u64,
                            },
                            Err(kind) => Event::RequestFailed {
                                kind,
                                error: "fault".into(),
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
                    Action::Status(_) => {}
                    Action::DeadLettered { id, .. } => self.dead.push(id),
                }
            }
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
    assert_eq!(sim.sleep, None, "no timer needed while offline");

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
    assert_eq!(sim.engine.status().unwrap().wakeups, 1);
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
    let wakeups = sim.engine.status().unwrap().wakeups;
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
    sim.server = Box::new(|_, _| Err(FailureKind::Transient { retry_after: None }));
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
    assert!(sim.engine.status().unwrap().tiers[&Tier::Critical].retries >= 5);
}

#[test]
fn items_are_never_dropped_and_go_once_the_server_recovers() {
    let mut sim = Sim::new(EngineConfig::default());
    let healthy_at = 1_000_000 + 3 * 3_600_000;
    sim.server = Box::new(move |items, now| {
        if now < healthy_at {
            return Err(FailureKind::Transient { retry_after: None });
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
                    outcome: if i.key == "k1" {
                        ItemOutcome::Rejected {
                            code: "invalid_key".into(),
                            reason: "bad".into(),
                        }
                    } else {
                        ItemOutcome::Accepted
                    },
                })
                .collect(),
        })
    });
    sim.enqueue(Tier::Critical, 3);
    sim.send(Event::NetworkChanged(WIFI));
    assert_eq!(sim.dead.len(), 1);
    assert_eq!(sim.depth(), 0);
    assert_eq!(sim.outbox.dead_letters().unwrap().len(), 1);
    assert_eq!(
        sim.engine.status().unwrap().tiers[&Tier::Critical].dead_letters,
        1
    );
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
    sim.server = Box::new(|_, _| Err(FailureKind::Transient { retry_after: None }));
    sim.send(Event::NetworkChanged(WIFI));
    sim.enqueue(Tier::Critical, 1);
    let t0 = sim.clock.now_ms();
    sim.run_until(t0 + 30_000);
    assert!(!sim.engine.status().unwrap().tiers[&Tier::Critical].stalled);
    sim.run_until(t0 + 5 * 60_000);
    assert!(sim.engine.status().unwrap().tiers[&Tier::Critical].stalled);
}

#[test]
fn a_pull_refused_with_retry_after_still_ends_the_wake_up() {
    let mut sim = Sim::new(EngineConfig::default());
    sim.engine.config.pull = true;
    sim.pull_failure = Some(FailureKind::Transient {
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
            return Err(FailureKind::Transient {
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
            return Err(FailureKind::Transient { retry_after: None });
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
