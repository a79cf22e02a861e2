use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::clock::ManualClock;
use crate::store::StoreOptions;

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    clock: ManualClock,
    outbox: Outbox,
}

fn config() -> OutboxConfig {
    OutboxConfig::new(TenantId::new("acme").unwrap())
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let clock = ManualClock::new(1_000_000);
    let outbox = open(&path, &clock);
    Fixture {
        _dir: dir,
        path,
        clock,
        outbox,
    }
}

fn open(path: &std::path::Path, clock: &ManualClock) -> Outbox {
    let store = Arc::new(Store::open(path, &StoreOptions::default()).unwrap());
    Outbox::open(store, Arc::new(clock.clone()), config()).unwrap()
}

fn put(outbox: &Outbox, key: &str, tier: Tier) -> ItemId {
    outbox
        .enqueue(Namespace::UserCache, key, Op::Put, key.as_bytes(), tier)
        .unwrap()
}

fn keys(batch: &[OutboxItem]) -> Vec<&str> {
    batch.iter().map(|i| i.key.as_str()).collect()
}

fn ids(batch: &[OutboxItem]) -> Vec<ItemId> {
    batch.iter().map(|i| i.id).collect()
}

fn row_count(f: &Fixture) -> i64 {
    let store = Store::open(&f.path, &StoreOptions::default()).unwrap();
    store
        .read(|c| {
            c.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
                .map_err(StoreError::from)
        })
        .unwrap()
}

#[test]
fn higher_tiers_first_and_fifo_within_a_tier() {
    let f = fixture();
    put(&f.outbox, "bg-1", Tier::Background);
    put(&f.outbox, "app-1", Tier::Application);
    put(&f.outbox, "crit-1", Tier::Critical);
    put(&f.outbox, "bg-2", Tier::Background);
    put(&f.outbox, "crit-2", Tier::Critical);
    put(&f.outbox, "pref-1", Tier::Preferences);
    let batch = f.outbox.next_batch(100, TierSet::ALL).unwrap();
    assert_eq!(
        keys(&batch),
        ["crit-1", "crit-2", "pref-1", "app-1", "bg-1", "bg-2"]
    );
    assert!(batch.iter().all(|i| i.attempts == 0));
    assert_eq!(batch[0].payload, b"crit-1");
}

#[test]
fn batches_hold_at_most_one_hundred() {
    let f = fixture();
    let items: Vec<String> = (0..250).map(|i| format!("k{i:03}")).collect();
    let new: Vec<NewItem<'_>> = items
        .iter()
        .map(|k| NewItem {
            namespace: Namespace::ApiCache,
            key: k,
            op: Op::Event,
            payload: b"",
            tier: Tier::Application,
        })
        .collect();
    f.outbox.enqueue_many(&new).unwrap();
    let first = f.outbox.next_batch(1000, TierSet::ALL).unwrap();
    assert_eq!(first.len(), MAX_PUSH_ITEMS);
    assert_eq!(first[0].key, "k000");
    assert_eq!(first[99].key, "k099");
    // The tier is busy until the batch is settled: nothing may overtake it.
    assert!(f.outbox.next_batch(100, TierSet::ALL).unwrap().is_empty());
    f.outbox.ack(&ids(&first)).unwrap();
    let second = f.outbox.next_batch(100, TierSet::ALL).unwrap();
    assert_eq!(second[0].key, "k100");
}

#[test]
fn only_allowed_tiers_are_handed_out() {
    let f = fixture();
    put(&f.outbox, "crit", Tier::Critical);
    put(&f.outbox, "bg", Tier::Background);
    let batch = f
        .outbox
        .next_batch(100, TierSet::of(&[Tier::Background]))
        .unwrap();
    assert_eq!(keys(&batch), ["bg"]);
    assert!(f.outbox.next_batch(100, TierSet::NONE).unwrap().is_empty());
}

#[test]
fn a_rescheduled_batch_waits_until_its_time_and_counts_attempts() {
    let f = fixture();
    let id = put(&f.outbox, "k", Tier::Critical);
    for attempt in 1..=5u32 {
        let batch = f.outbox.next_batch(100, TierSet::ALL).unwrap();
        assert_eq!(
            ids(&batch),
            [id],
            "attempt {attempt}: the item is still there"
        );
        assert_eq!(batch[0].attempts, attempt - 1);
        let at = f.clock.now_ms() + 1_000 * i64::from(attempt);
        let applied = f
            .outbox
            .apply(&Write::Reschedule {
                tier: Tier::Critical,
                at,
                error: "connection reset".into(),
            })
            .unwrap();
        assert_eq!(applied.rescheduled, 1);
        assert_eq!(
            f.outbox
                .stats()
                .unwrap()
                .tier(Tier::Critical)
                .next_attempt_at,
            Some(at)
        );
        // Not due a millisecond early.
        f.clock.set(at - 1);
        assert!(f.outbox.next_batch(100, TierSet::ALL).unwrap().is_empty());
        f.clock.set(at);
    }
    let batch = f.outbox.next_batch(100, TierSet::ALL).unwrap();
    f.outbox.ack(&ids(&batch)).unwrap();
    assert_eq!(f.outbox.stats().unwrap().depth(), 0);
}

#[test]
fn settle_touches_only_the_tiers_batch_in_flight() {
    let f = fixture();
    let a = put(&f.outbox, "a", Tier::Critical);
    let b = put(&f.outbox, "b", Tier::Critical);
    let c = put(&f.outbox, "c", Tier::Critical);
    let waiting = put(&f.outbox, "other", Tier::Preferences);
    f.outbox
        .next_batch(100, TierSet::of(&[Tier::Critical]))
        .unwrap();
    let applied = f
        .outbox
        .apply(&Write::Settle {
            tier: Tier::Critical,
            // `waiting` is pending in another tier: naming it must not delete it.
            stored: vec![a, waiting],
            rejected: vec![Rejection {
                id: b,
                code: "invalid_key".into(),
                reason: "bad".into(),
            }],
            retry_at: f.clock.now_ms() + 1_000,
        })
        .unwrap();
    assert_eq!(applied.stored, 1);
    assert_eq!(applied.dead_lettered.len(), 1);
    assert_eq!(
        applied.rescheduled, 1,
        "c was not answered: back to pending"
    );
    assert_eq!(f.outbox.get(c).unwrap().unwrap().0.attempts, 1);
    assert_eq!(f.outbox.get(c).unwrap().unwrap().1, ItemState::Pending);
    assert_eq!(
        f.outbox.get(waiting).unwrap().unwrap().1,
        ItemState::Pending
    );
    assert_eq!(f.outbox.get(b).unwrap().unwrap().1, ItemState::Dead);
    assert!(f.outbox.get(a).unwrap().is_none());
}

#[test]
fn make_due_cuts_a_wait_short_without_reordering() {
    let f = fixture();
    put(&f.outbox, "first", Tier::Critical);
    f.outbox.next_batch(100, TierSet::ALL).unwrap();
    put(&f.outbox, "second", Tier::Critical);
    f.outbox
        .apply(&Write::Reschedule {
            tier: Tier::Critical,
            at: f.clock.now_ms() + 60_000,
            error: "timeout".into(),
        })
        .unwrap();
    assert!(f.outbox.next_batch(100, TierSet::ALL).unwrap().is_empty());
    f.outbox
        .apply(&Write::MakeDue(TierSet::of(&[Tier::Critical])))
        .unwrap();
    let batch = f.outbox.next_batch(100, TierSet::ALL).unwrap();
    assert_eq!(keys(&batch), ["first", "second"]);
    assert_eq!(batch[0].attempts, 1, "making due is not an attempt");
}

#[test]
fn a_backing_off_head_holds_its_whole_tier() {
    let f = fixture();
    put(&f.outbox, "first", Tier::Critical);
    f.outbox.next_batch(100, TierSet::ALL).unwrap();
    put(&f.outbox, "second", Tier::Critical);
    put(&f.outbox, "other-tier", Tier::Application);
    f.outbox
        .apply(&Write::Reschedule {
            tier: Tier::Critical,
            at: f.clock.now_ms() + 1_000,
            error: "timeout".into(),
        })
        .unwrap();
    // "second" is due but must not overtake "first"; the other tier flows.
    let batch = f.outbox.next_batch(100, TierSet::ALL).unwrap();
    assert_eq!(keys(&batch), ["other-tier"]);
    f.clock.advance(Duration::from_secs(1));
    let batch = f.outbox.next_batch(100, TierSet::ALL).unwrap();
    assert_eq!(keys(&batch), ["first", "second"]);
}

#[test]
fn rejection_moves_to_dead_letters_and_the_rest_flows() {
    let f = fixture();
    let bad = put(&f.outbox, "bad", Tier::Critical);
    let good = put(&f.outbox, "good", Tier::Critical);
    let batch = f.outbox.next_batch(100, TierSet::ALL).unwrap();
    assert_eq!(batch.len(), 2);
    f.outbox.reject(bad, "invalid_key", "key too long").unwrap();
    f.outbox.ack(&[good]).unwrap();
    let dead = f.outbox.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].item.id, bad);
    assert_eq!(
        (dead[0].code.as_str(), dead[0].reason.as_str()),
        ("invalid_key", "key too long")
    );
    // Dead letters are never handed out, and never acked away.
    put(&f.outbox, "next", Tier::Critical);
    assert_eq!(
        keys(&f.outbox.next_batch(100, TierSet::ALL).unwrap()),
        ["next"]
    );
    assert_eq!(f.outbox.ack(&[bad]).unwrap(), 0);
    let stats = f.outbox.stats().unwrap().tier(Tier::Critical);
    assert_eq!((stats.dead, stats.depth, stats.in_flight), (1, 1, 1));
}

#[test]
fn dead_letters_leave_only_on_explicit_calls() {
    let f = fixture();
    let a = put(&f.outbox, "a", Tier::Critical);
    let b = put(&f.outbox, "b", Tier::Critical);
    f.outbox.next_batch(100, TierSet::ALL).unwrap();
    f.outbox.reject(a, "x", "y").unwrap();
    f.outbox.reject(b, "x", "y").unwrap();
    f.outbox.retry_dead(a).unwrap();
    assert_eq!(
        keys(&f.outbox.next_batch(100, TierSet::ALL).unwrap()),
        ["a"]
    );
    f.outbox.discard_dead(b).unwrap();
    assert!(f.outbox.dead_letters().unwrap().is_empty());
    assert!(matches!(
        f.outbox.discard_dead(b),
        Err(OutboxError::NotFound(_))
    ));
    assert!(matches!(
        f.outbox.retry_dead(ItemId::new()),
        Err(OutboxError::NotFound(_))
    ));
}

#[test]
fn in_flight_items_resume_as_pending_on_open() {
    let f = fixture();
    put(&f.outbox, "a", Tier::Critical);
    put(&f.outbox, "b", Tier::Background);
    let batch = f.outbox.next_batch(100, TierSet::ALL).unwrap();
    assert_eq!(batch.len(), 2);
    // The app dies with the batch in flight.
    drop(f.outbox);
    let reopened = open(&f.path, &f.clock);
    let stats = reopened.stats().unwrap();
    assert_eq!(stats.tier(Tier::Critical).in_flight, 0);
    assert_eq!(stats.depth(), 2);
    assert_eq!(
        keys(&reopened.next_batch(100, TierSet::ALL).unwrap()),
        ["a", "b"]
    );
}

#[test]
fn enqueued_items_survive_an_unclean_drop() {
    let f = fixture();
    let mut expected = HashSet::new();
    for i in 0..500 {
        expected.insert(put(&f.outbox, &format!("k{i}"), Tier::ALL[i % 4]));
    }
    // Leak the connections: no close, no checkpoint, the WAL is all there is.
    std::mem::forget(f.outbox);
    let reopened = open(&f.path, &f.clock);
    let mut found = HashSet::new();
    loop {
        let batch = reopened.next_batch(100, TierSet::ALL).unwrap();
        if batch.is_empty() {
            break;
        }
        found.extend(ids(&batch));
        reopened.ack(&ids(&batch)).unwrap();
    }
    assert_eq!(found, expected);
}

#[test]
fn stats_report_depth_and_age() {
    let f = fixture();
    put(&f.outbox, "a", Tier::Critical);
    f.clock.advance(Duration::from_secs(10));
    put(&f.outbox, "b", Tier::Critical);
    put(&f.outbox, "c", Tier::Background);
    f.clock.advance(Duration::from_secs(5));
    let stats = f.outbox.stats().unwrap();
    assert_eq!(stats.tier(Tier::Critical).depth, 2);
    assert_eq!(stats.tier(Tier::Critical).oldest_age_ms, 15_000);
    assert_eq!(stats.tier(Tier::Background).oldest_age_ms, 5_000);
    assert_eq!(stats.tier(Tier::Preferences), TierStats::default());
    assert_eq!(stats.depth(), 3);
}

#[test]
fn items_older_than_their_tiers_freshness_ttl_are_overdue() {
    let f = fixture();
    let old = put(&f.outbox, "old", Tier::Critical);
    put(&f.outbox, "slow", Tier::Background);
    let dead = put(&f.outbox, "dead", Tier::Critical);
    f.outbox
        .next_batch(100, TierSet::of(&[Tier::Critical]))
        .unwrap();
    f.outbox
        .apply(&Write::Settle {
            tier: Tier::Critical,
            stored: vec![],
            rejected: vec![Rejection {
                id: dead,
                code: "invalid_key".into(),
                reason: "bad".into(),
            }],
            retry_at: f.clock.now_ms(),
        })
        .unwrap();
    f.clock.advance(Duration::from_secs(4 * 60));
    put(&f.outbox, "young", Tier::Critical);

    // Exactly at the TTL is still fresh: overdue means older than it.
    f.clock.advance(Duration::from_secs(60));
    let stats = f.outbox.stats().unwrap();
    assert_eq!(stats.tier(Tier::Critical).overdue, 0);

    f.clock.advance(Duration::from_millis(1));
    let stats = f.outbox.stats().unwrap();
    let critical = stats.tier(Tier::Critical);
    assert_eq!((critical.depth, critical.dead), (2, 1));
    assert_eq!(
        critical.overdue, 1,
        "only `old`: a dead letter is not waiting"
    );
    assert_eq!(stats.tier(Tier::Background).overdue, 0, "fresh for 2 h");

    // In flight still counts: the server has not confirmed it.
    f.outbox
        .next_batch(100, TierSet::of(&[Tier::Critical]))
        .unwrap();
    assert_eq!(f.outbox.stats().unwrap().tier(Tier::Critical).overdue, 1);
    f.outbox.ack(&[old]).unwrap();
    assert_eq!(f.outbox.stats().unwrap().tier(Tier::Critical).overdue, 0);

    f.clock.advance(Duration::from_secs(2 * 3600));
    let stats = f.outbox.stats().unwrap();
    assert_eq!(stats.tier(Tier::Critical).overdue, 1, "young is old now");
    assert_eq!(stats.tier(Tier::Background).overdue, 1);
}

#[test]
fn invalid_input_is_refused_and_nothing_written() {
    let f = fixture();
    let too_big = vec![0u8; MAX_VALUE_BYTES + 1];
    let long_key = "k".repeat(250);
    type Case<'a> = (&'a str, &'a [u8], fn(&OutboxError) -> bool);
    let cases: Vec<Case<'_>> = vec![
        ("", b"x", |e| {
            matches!(e, OutboxError::InvalidKey(KeyError::Empty(_)))
        }),
        ("a\u{0}b", b"x", |e| {
            matches!(
                e,
                OutboxError::InvalidKey(KeyError::ControlCharacter { .. })
            )
        }),
        (&long_key, b"x", |e| {
            matches!(e, OutboxError::InvalidKey(KeyError::TooLong { .. }))
        }),
        ("fine", &too_big, |e| {
            matches!(e, OutboxError::PayloadTooLarge { .. })
        }),
    ];
    for (key, payload, is_expected) in cases {
        let err = f
            .outbox
            .enqueue(Namespace::Sessions, key, Op::Put, payload, Tier::Critical)
            .unwrap_err();
        assert!(is_expected(&err), "{key:?}: {err}");
    }
    // Internal namespaces are refused here as the server refuses them.
    assert!(matches!(
        f.outbox
            .enqueue(Namespace::RateLimiting, "k", Op::Put, b"x", Tier::Critical)
            .unwrap_err(),
        OutboxError::InternalNamespace(Namespace::RateLimiting)
    ));
    // A batch with one bad item writes none of them.
    let batch = [
        NewItem {
            namespace: Namespace::Sessions,
            key: "ok",
            op: Op::Put,
            payload: b"1",
            tier: Tier::Critical,
        },
        NewItem {
            namespace: Namespace::Sessions,
            key: "",
            op: Op::Put,
            payload: b"2",
            tier: Tier::Critical,
        },
    ];
    assert!(f.outbox.enqueue_many(&batch).is_err());
    assert_eq!(row_count(&f), 0);
}

#[test]
fn cancel_only_while_still_local() {
    let f = fixture();
    let a = put(&f.outbox, "a", Tier::Critical);
    let b = put(&f.outbox, "b", Tier::Preferences);
    assert!(f.outbox.cancel(b).unwrap());
    f.outbox.next_batch(100, TierSet::ALL).unwrap();
    assert!(!f.outbox.cancel(a).unwrap(), "in flight: too late");
    assert_eq!(f.outbox.get(a).unwrap().unwrap().1, ItemState::InFlight);
    assert!(f.outbox.get(b).unwrap().is_none());
}

#[test]
fn release_does_not_count_an_attempt() {
    let f = fixture();
    put(&f.outbox, "a", Tier::Critical);
    f.outbox.next_batch(100, TierSet::ALL).unwrap();
    let applied = f
        .outbox
        .apply(&Write::Release {
            tier: Tier::Critical,
        })
        .unwrap();
    assert_eq!(applied.released, 1);
    let batch = f.outbox.next_batch(100, TierSet::ALL).unwrap();
    assert_eq!(batch[0].attempts, 0);
}

#[derive(Debug, Clone)]
enum Action {
    Enqueue(u8),
    Batch(usize),
    AckAll,
    /// Every batch in flight fails; tier `t` backs off `base * t` ms.
    FailAll(u16),
    RejectFirst,
    RetryDead,
    Advance(u16),
    Reopen,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (1u8..=4).prop_map(Action::Enqueue),
        2 => (1usize..=120).prop_map(Action::Batch),
        2 => Just(Action::AckAll),
        1 => (0u16..3000).prop_map(Action::FailAll),
        1 => Just(Action::RejectFirst),
        1 => Just(Action::RetryDead),
        2 => (0u16..5000).prop_map(Action::Advance),
        1 => Just(Action::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Nothing is lost, nothing is handed out twice at once, and FIFO holds within a tier:
    /// every item is eventually acked exactly once or sits in the dead-letter lane. Each tier's
    /// items leave in strictly increasing number (a retried dead letter gets a new, higher
    /// one), and an item backing off is never overtaken within its tier.
    #[test]
    fn queue_invariants(actions in proptest::collection::vec(action(), 1..60)) {
        let f = fixture();
        let mut outbox = f.outbox.clone();
        let mut enqueued: Vec<(ItemId, Tier)> = Vec::new();
        let mut in_flight: Vec<ItemId> = Vec::new();
        let mut acked: HashSet<ItemId> = HashSet::new();
        let mut dead: HashSet<ItemId> = HashSet::new();
        // Live (not acked, not dead) items per tier, in enqueue order.
        let mut live: std::collections::HashMap<Tier, Vec<ItemId>> = Default::default();
        // Highest number handed out per (producer, tier), and the items handed out before.
        let mut highest: std::collections::HashMap<(String, Tier), u64> = Default::default();
        let mut handed_before: HashMap<ItemId, u64> = HashMap::new();
        let mut tier_of: HashMap<ItemId, Tier> = HashMap::new();
        for (n, a) in actions.into_iter().enumerate() {
            match a {
                Action::Enqueue(t) => {
                    let tier = Tier::try_from(t).unwrap();
                    let id = put(&outbox, &format!("k{n}"), tier);
                    tier_of.insert(id, tier);
                    enqueued.push((id, tier));
                    live.entry(tier).or_default().push(id);
                }
                Action::Batch(max) => {
                    let batch = outbox.next_batch(max, TierSet::ALL).unwrap();
                    prop_assert!(batch.len() <= max.min(MAX_PUSH_ITEMS));
                    for item in &batch {
                        prop_assert!(!in_flight.contains(&item.id), "handed out twice");
                        prop_assert!(!acked.contains(&item.id) && !dead.contains(&item.id));
                    }
                    // FIFO within a tier: a batch's items of a tier are that tier's oldest live
                    // items, in order (a tier with items in flight hands out nothing).
                    for tier in Tier::ALL {
                        let handed: Vec<ItemId> =
                            batch.iter().filter(|i| i.tier == tier).map(|i| i.id).collect();
                        let queue = live.get(&tier).cloned().unwrap_or_default();
                        prop_assert_eq!(&handed[..], &queue[..handed.len()]);
                    }
                    // Tiers are handed out in priority order, under one producer.
                    prop_assert!(batch.windows(2).all(|w| w[0].tier <= w[1].tier));
                    prop_assert!(batch.windows(2).all(|w| w[0].producer == w[1].producer));
                    for item in &batch {
                        let top = highest.entry((item.producer.clone(), item.tier)).or_default();
                        match handed_before.get(&item.id) {
                            // Sent again after a failure: the same number as before.
                            Some(seq) => prop_assert_eq!(*seq, item.seq),
                            None => {
                                prop_assert!(item.seq > *top, "{} after {}", item.seq, *top);
                                handed_before.insert(item.id, item.seq);
                            }
                        }
                        *top = (*top).max(item.seq);
                    }
                    in_flight.extend(ids(&batch));
                }
                Action::AckAll => {
                    outbox.ack(&in_flight).unwrap();
                    for q in live.values_mut() {
                        q.retain(|id| !in_flight.contains(id));
                    }
                    acked.extend(in_flight.drain(..));
                }
                Action::FailAll(base) => {
                    for tier in Tier::ALL {
                        let at = f.clock.now_ms() + i64::from(base) * i64::from(tier.number());
                        outbox
                            .apply(&Write::Reschedule { tier, at, error: "boom".into() })
                            .unwrap();
                    }
                    in_flight.clear();
                }
                Action::RetryDead => {
                    let first = outbox.dead_letters().unwrap().first().map(|d| d.item.id);
                    if let Some(id) = first {
                        outbox.retry_dead(id).unwrap();
                        dead.remove(&id);
                        // A new number: it goes to the end of its tier, and counts as new.
                        handed_before.remove(&id);
                        live.entry(tier_of[&id]).or_default().push(id);
                    }
                }
                Action::RejectFirst => {
                    if !in_flight.is_empty() {
                        let id = in_flight.remove(0);
                        outbox.reject(id, "bad", "test").unwrap();
                        for q in live.values_mut() {
                            q.retain(|x| *x != id);
                        }
                        dead.insert(id);
                    }
                }
                Action::Advance(ms) => f.clock.advance(Duration::from_millis(u64::from(ms))),
                Action::Reopen => {
                    drop(outbox);
                    outbox = open(&f.path, &f.clock);
                    in_flight.clear();
                }
            }
            // The figures kept by triggers and read from the age index are a scan's.
            prop_assert_eq!(figures(&outbox.stats().unwrap()), scanned_figures(&f));
        }
        // Drain: far in the future every backoff has expired.
        for tier in Tier::ALL {
            outbox.apply(&Write::Release { tier }).unwrap();
        }
        f.clock.advance(Duration::from_secs(24 * 3600));
        loop {
            let batch = outbox.next_batch(100, TierSet::ALL).unwrap();
            if batch.is_empty() { break; }
            for item in &batch {
                prop_assert!(acked.insert(item.id), "acked twice");
            }
            outbox.ack(&ids(&batch)).unwrap();
        }
        let all: HashSet<ItemId> = enqueued.iter().map(|(id, _)| *id).collect();
        let accounted: HashSet<ItemId> = acked.union(&dead).copied().collect();
        prop_assert_eq!(all, accounted);
        let dead_now: HashSet<ItemId> = outbox.dead_letters().unwrap().iter().map(|d| d.item.id).collect();
        prop_assert_eq!(dead_now, dead);
    }
}

/// Per tier: depth, in flight, dead, oldest age, overdue.
type Figures = Vec<(Tier, [i64; 5])>;

fn figures(stats: &OutboxStats) -> Figures {
    Tier::ALL
        .iter()
        .map(|&tier| {
            let t = stats.tier(tier);
            let n = |v: u64| i64::try_from(v).unwrap();
            (
                tier,
                [
                    n(t.depth),
                    n(t.in_flight),
                    n(t.dead),
                    t.oldest_age_ms,
                    n(t.overdue),
                ],
            )
        })
        .collect()
}

/// The same figures counted from every row, on a connection of their own.
fn scanned_figures(f: &Fixture) -> Figures {
    let now = f.clock.now_ms();
    let store = Store::open(&f.path, &StoreOptions::default()).unwrap();
    Tier::ALL
        .iter()
        .map(|&tier| {
            let cutoff = now.saturating_sub(duration_ms(tier.freshness_ttl()));
            let row = store
                .read(|c| {
                    c.query_row(
                        "SELECT count(*) FILTER (WHERE state != 'dead'),
                                count(*) FILTER (WHERE state = 'in_flight'),
                                count(*) FILTER (WHERE state = 'dead'),
                                coalesce(max(?2 - created_at) FILTER (WHERE state != 'dead'), 0),
                                count(*) FILTER (WHERE state != 'dead' AND created_at < ?3)
                         FROM outbox WHERE tier = ?1",
                        params![tier.number(), now, cutoff],
                        |r| {
                            Ok([
                                r.get(0)?,
                                r.get(1)?,
                                r.get(2)?,
                                r.get::<_, i64>(3)?.max(0),
                                r.get(4)?,
                            ])
                        },
                    )
                    .map_err(StoreError::from)
                })
                .unwrap();
            (tier, row)
        })
        .collect()
}

/// The server's side of sequenced exactly-once, as a model: the last number stored per producer
/// and tier, and every item id it stored.
#[derive(Default)]
struct ModelServer {
    last: HashMap<(String, Tier), u64>,
    stored: Vec<ItemId>,
}

impl ModelServer {
    /// Stores what is new in `batch`; returns the ids the device may forget (stored or duplicate).
    fn push(&mut self, batch: &[OutboxItem]) -> Vec<ItemId> {
        for item in batch {
            let top = self
                .last
                .entry((item.producer.clone(), item.tier))
                .or_default();
            if item.seq > *top {
                *top = item.seq;
                self.stored.push(item.id);
            }
        }
        ids(batch)
    }

    fn hello(&self, producer: &str) -> [u64; 4] {
        std::array::from_fn(|i| {
            self.last
                .get(&(producer.to_owned(), Tier::ALL[i]))
                .copied()
                .unwrap_or(0)
        })
    }
}

/// Says hello for the outbox's producer and applies the answer, as the engine and driver do.
fn hello(outbox: &Outbox, server: &ModelServer) -> Applied {
    let last_seq = server.hello(&outbox.producer().unwrap());
    outbox.apply(&Write::Reconcile { last_seq }).unwrap()
}

/// Sends everything due, batch by batch, to `server`.
fn sync_all(outbox: &Outbox, server: &mut ModelServer) {
    loop {
        let batch = outbox.next_batch(100, TierSet::ALL).unwrap();
        if batch.is_empty() {
            break;
        }
        let done = server.push(&batch);
        outbox.ack(&done).unwrap();
    }
}

/// Copies the database file as a phone backup would (the outbox closed, so the WAL is folded
/// into the main file).
fn backup(path: &std::path::Path, to: &std::path::Path) {
    std::fs::copy(path, to).unwrap();
}

#[test]
fn items_are_numbered_per_tier_from_one() {
    let f = fixture();
    put(&f.outbox, "a", Tier::Critical);
    put(&f.outbox, "b", Tier::Background);
    put(&f.outbox, "c", Tier::Critical);
    let batch = f.outbox.next_batch(100, TierSet::ALL).unwrap();
    let numbers: Vec<(&str, u64)> = batch.iter().map(|i| (i.key.as_str(), i.seq)).collect();
    assert_eq!(numbers, [("a", 1), ("c", 2), ("b", 1)]);
    assert!(
        batch
            .iter()
            .all(|i| i.producer == f.outbox.producer().unwrap())
    );
}

#[test]
fn a_retried_dead_letter_gets_a_new_number_at_the_end_of_its_tier() {
    let f = fixture();
    let bad = put(&f.outbox, "bad", Tier::Critical);
    put(&f.outbox, "next", Tier::Critical);
    f.outbox.next_batch(100, TierSet::ALL).unwrap();
    f.outbox.reject(bad, "invalid_key", "x").unwrap();
    f.outbox
        .apply(&Write::Release {
            tier: Tier::Critical,
        })
        .unwrap();
    put(&f.outbox, "later", Tier::Critical);
    f.outbox.retry_dead(bad).unwrap();
    let batch = f.outbox.next_batch(100, TierSet::ALL).unwrap();
    let numbers: Vec<(&str, u64)> = batch.iter().map(|i| (i.key.as_str(), i.seq)).collect();
    assert_eq!(numbers, [("next", 2), ("later", 3), ("bad", 4)]);
}

#[test]
fn a_tried_item_can_no_longer_be_cancelled() {
    let f = fixture();
    let a = put(&f.outbox, "a", Tier::Critical);
    f.outbox.next_batch(100, TierSet::ALL).unwrap();
    f.outbox
        .apply(&Write::Reschedule {
            tier: Tier::Critical,
            at: f.clock.now_ms(),
            error: "timeout".into(),
        })
        .unwrap();
    // The server may have stored it and only the answer was lost.
    assert!(!f.outbox.cancel(a).unwrap());
}

#[test]
fn reopening_without_a_restore_keeps_the_producer() {
    let f = fixture();
    let mut server = ModelServer::default();
    let producer = f.outbox.producer().unwrap();
    assert_eq!(hello(&f.outbox, &server).new_producer, None);
    put(&f.outbox, "a", Tier::Critical);
    sync_all(&f.outbox, &mut server);
    put(&f.outbox, "b", Tier::Critical);
    drop(f.outbox);
    // Opened twice before the next hello; new items meanwhile.
    let outbox = open(&f.path, &f.clock);
    put(&outbox, "c", Tier::Critical);
    drop(outbox);
    let outbox = open(&f.path, &f.clock);
    assert_eq!(hello(&outbox, &server).new_producer, None);
    assert_eq!(outbox.producer().unwrap(), producer);
    sync_all(&outbox, &mut server);
    assert_eq!(server.stored.len(), 3);
}

#[test]
fn a_restored_database_moves_newer_items_to_a_new_producer_and_loses_nothing() {
    let f = fixture();
    let saved = f.path.with_extension("backup");
    let mut server = ModelServer::default();
    let mut written = Vec::new();
    hello(&f.outbox, &server);
    written.push(put(&f.outbox, "a1", Tier::Critical));
    written.push(put(&f.outbox, "a2", Tier::Critical));
    sync_all(&f.outbox, &mut server);
    // Pending at backup time: b1, b2 (numbers 3, 4), and one in tier 2.
    written.push(put(&f.outbox, "b1", Tier::Critical));
    written.push(put(&f.outbox, "b2", Tier::Critical));
    written.push(put(&f.outbox, "p1", Tier::Preferences));
    drop(f.outbox);
    backup(&f.path, &saved);

    // Life goes on: everything so far is delivered, and more (numbers 5 to 7).
    let outbox = open(&f.path, &f.clock);
    hello(&outbox, &server);
    for key in ["c1", "c2", "c3"] {
        written.push(put(&outbox, key, Tier::Critical));
    }
    sync_all(&outbox, &mut server);
    let before_restore = server.stored.len();
    assert_eq!(before_restore, 8);
    drop(outbox);

    // The phone restores the backup: b1, b2 and p1 are pending again, the numbering is back at 4.
    std::fs::copy(&saved, &f.path).unwrap();
    let outbox = open(&f.path, &f.clock);
    // The app writes before the device reaches the server: numbers 5 and 6 again, which the
    // server has seen (for c1, c2).
    written.push(put(&outbox, "d1", Tier::Critical));
    written.push(put(&outbox, "d2", Tier::Critical));
    drop(outbox);
    // Killed and opened again before the hello: the restored numbering still counts.
    let outbox = open(&f.path, &f.clock);
    written.push(put(&outbox, "d3", Tier::Critical));
    let old = outbox.producer().unwrap();
    let applied = hello(&outbox, &server);
    let new = applied.new_producer.expect("the restore was noticed");
    assert_ne!(new, old);
    assert_eq!(applied.renumbered, 3, "d1, d2, d3 move; b1, b2, p1 stay");
    sync_all(&outbox, &mut server);

    // Every item written is stored exactly once: b1, b2, p1 were duplicates of what the server
    // had, d1..d3 are new.
    let stored: HashSet<ItemId> = server.stored.iter().copied().collect();
    assert_eq!(
        stored.len(),
        server.stored.len(),
        "an item was stored twice"
    );
    assert_eq!(stored, written.iter().copied().collect::<HashSet<_>>());
    assert_eq!(outbox.stats().unwrap().depth(), 0);
    // Later items are numbered under the new producer, after the moved ones.
    put(&outbox, "e", Tier::Critical);
    let batch = outbox.next_batch(100, TierSet::ALL).unwrap();
    assert_eq!(
        (batch[0].producer.as_str(), batch[0].seq),
        (new.as_str(), 4)
    );
}
