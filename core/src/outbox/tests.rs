use std::collections::HashSet;
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
    FailAll,
    RejectFirst,
    Advance(u16),
    Reopen,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (1u8..=4).prop_map(Action::Enqueue),
        2 => (1usize..=120).prop_map(Action::Batch),
        2 => Just(Action::AckAll),
        1 => Just(Action::FailAll),
        1 => Just(Action::RejectFirst),
        2 => (0u16..5000).prop_map(Action::Advance),
        1 => Just(Action::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Nothing is lost, nothing is handed out twice at once, and FIFO holds within a tier:
    /// every item is eventually acked exactly once or sits in the dead-letter lane.
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
        for (n, a) in actions.into_iter().enumerate() {
            match a {
                Action::Enqueue(t) => {
                    let tier = Tier::try_from(t).unwrap();
                    let id = put(&outbox, &format!("k{n}"), tier);
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
                    // Tiers are handed out in priority order.
                    prop_assert!(batch.windows(2).all(|w| w[0].tier <= w[1].tier));
                    in_flight.extend(ids(&batch));
                }
                Action::AckAll => {
                    outbox.ack(&in_flight).unwrap();
                    for q in live.values_mut() {
                        q.retain(|id| !in_flight.contains(id));
                    }
                    acked.extend(in_flight.drain(..));
                }
                Action::FailAll => {
                    let at = f.clock.now_ms() + 1_000;
                    for tier in Tier::ALL {
                        outbox
                            .apply(&Write::Reschedule { tier, at, error: "boom".into() })
                            .unwrap();
                    }
                    in_flight.clear();
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
