//! Hand-checked victim sequences for every policy, and the adaptive policy's adaptation.

use super::sketch::FrequencySketch;
use super::*;

fn unit(policy: &mut dyn Policy<u64>, key: u64) -> Vec<u64> {
    let mut evicted = Vec::new();
    policy.access(key, Entry::UNIT, &mut evicted);
    evicted
}

fn put(policy: &mut dyn Policy<u64>, key: u64, weight: u64, expires_at: Option<u64>) -> Vec<u64> {
    let mut evicted = Vec::new();
    policy
        .insert(key, Entry { weight, expires_at }, &mut evicted)
        .expect("fits");
    evicted
}

#[test]
fn lru_evicts_the_least_recently_used() {
    let mut lru = Lru::new(3);
    for key in [1, 2, 3] {
        assert!(unit(&mut lru, key).is_empty());
    }
    lru.hit(&1);
    assert_eq!(unit(&mut lru, 4), [2]);
    assert_eq!(unit(&mut lru, 5), [3]);
    assert_eq!(unit(&mut lru, 6), [1]);
    assert_eq!((lru.len(), lru.weight()), (3, 3));
}

#[test]
fn lru_makes_room_by_weight_and_never_evicts_the_written_key() {
    let mut lru = Lru::new(10);
    put(&mut lru, 1, 4, None);
    put(&mut lru, 2, 4, None);
    // Rewriting 1 heavier: 2 goes, 1 stays although it was written first.
    assert_eq!(put(&mut lru, 1, 8, None), [2]);
    assert!(lru.contains(&1));
    assert_eq!(lru.weight(), 8);
}

#[test]
fn lfu_evicts_the_least_used_then_the_oldest_among_equals() {
    let mut lfu = Lfu::new(3);
    for key in [1, 2, 3] {
        unit(&mut lfu, key);
    }
    lfu.hit(&1);
    lfu.hit(&1);
    lfu.hit(&3);
    // Counts: 1→3, 2→1, 3→2.
    assert_eq!(unit(&mut lfu, 4), [2]);
    // Counts: 1→3, 3→2, 4→1: the newcomer is the least used.
    assert_eq!(unit(&mut lfu, 5), [4]);
    lfu.hit(&5);
    lfu.hit(&5);
    // 3 and 5 both at 2: 3 was used longer ago.
    assert_eq!(unit(&mut lfu, 6), [3]);
}

#[test]
fn volatile_lru_evicts_only_entries_with_a_ttl_and_refuses_otherwise() {
    let mut policy = VolatileLru::new(3);
    put(&mut policy, 1, 1, None);
    put(&mut policy, 2, 1, Some(100));
    put(&mut policy, 3, 1, Some(50));
    policy.hit(&2);
    assert_eq!(put(&mut policy, 4, 1, None), [3]);
    assert_eq!(put(&mut policy, 5, 1, None), [2]);
    let mut evicted = Vec::new();
    let full = policy.insert(6, Entry::UNIT, &mut evicted);
    assert_eq!(
        full,
        Err(Refused::Full {
            needed: 1,
            evictable: 0
        })
    );
    assert!(evicted.is_empty());
    assert_eq!(policy.len(), 3);
    assert!(!policy.contains(&6));
}

#[test]
fn volatile_ttl_evicts_the_soonest_to_expire() {
    let mut policy = VolatileTtl::new(3);
    put(&mut policy, 1, 1, Some(300));
    put(&mut policy, 2, 1, Some(100));
    put(&mut policy, 3, 1, None);
    policy.hit(&2);
    assert_eq!(put(&mut policy, 4, 1, Some(200)), [2]);
    assert_eq!(put(&mut policy, 5, 1, Some(400)), [4]);
    assert_eq!(put(&mut policy, 6, 1, Some(500)), [1]);
    // Rewriting 6 without a TTL leaves only 5 evictable.
    assert!(put(&mut policy, 6, 1, None).is_empty());
    assert_eq!(put(&mut policy, 7, 1, Some(1)), [5]);
}

#[test]
fn noeviction_refuses_what_does_not_fit_and_changes_nothing() {
    let mut policy = NoEviction::new(4);
    put(&mut policy, 1, 2, None);
    put(&mut policy, 2, 2, None);
    let mut evicted = Vec::new();
    assert!(matches!(
        policy.insert(3, Entry::UNIT, &mut evicted),
        Err(Refused::Full { needed: 1, .. })
    ));
    // A rewrite that fits in its own place is fine.
    put(&mut policy, 2, 1, None);
    assert_eq!(policy.weight(), 3);
    assert!(policy.remove(&1));
    put(&mut policy, 3, 3, None);
    assert_eq!(policy.weight(), 4);
}

#[test]
fn every_policy_refuses_an_entry_larger_than_its_capacity() {
    for kind in Kind::ALL {
        let mut policy = kind.build::<u64>(10);
        let mut evicted = Vec::new();
        let entry = Entry {
            weight: 11,
            expires_at: Some(1),
        };
        assert_eq!(
            policy.insert(1, entry, &mut evicted),
            Err(Refused::TooLarge {
                weight: 11,
                capacity: 10
            }),
            "{kind}"
        );
        assert!(policy.is_empty(), "{kind}");
    }
}

#[test]
fn every_policy_stays_within_capacity_and_reports_what_it_evicts() {
    // A pseudo-random stream with sizes: resident weight is never over capacity, and the keys
    // the policy holds are exactly those inserted and not evicted or removed.
    for kind in Kind::ALL {
        let mut policy = kind.build::<u64>(1_000);
        let mut resident = std::collections::HashSet::new();
        let mut state = 7u64;
        for step in 0..20_000u64 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = (state >> 33) % 300;
            let weight = 1 + (state >> 20) % 40;
            let expires_at = (step % 3 != 0).then_some(step + (state >> 50));
            let mut evicted = Vec::new();
            if step % 17 == 0 {
                assert_eq!(policy.remove(&key), resident.remove(&key), "{kind}");
            } else if policy.contains(&key) && step % 2 == 0 {
                policy.hit(&key);
            } else if policy
                .insert(key, Entry { weight, expires_at }, &mut evicted)
                .is_ok()
            {
                resident.insert(key);
            }
            for gone in evicted {
                assert!(
                    resident.remove(&gone),
                    "{kind} evicted {gone}, not resident"
                );
            }
            assert!(policy.weight() <= policy.capacity(), "{kind}");
            assert_eq!(policy.len(), resident.len(), "{kind}");
            assert_eq!(policy.contains(&key), resident.contains(&key), "{kind}");
        }
    }
}

#[test]
fn arc_moves_between_recency_and_frequency_as_worked_out_by_hand() {
    let mut arc = Arc::new(2);
    unit(&mut arc, 1);
    unit(&mut arc, 2);
    // 1 seen twice moves to T2.
    assert!(arc.access(1, Entry::UNIT, &mut Vec::new()));
    // 3 is new: T1's oldest (2) becomes a ghost.
    assert_eq!(unit(&mut arc, 3), [2]);
    // 2 again: a ghost hit in B1 grows T1's target to 1; T1 is at target, so T2's oldest (1)
    // goes, and 2 comes back into T2.
    assert_eq!(unit(&mut arc, 2), [1]);
    assert!(arc.contains(&2) && arc.contains(&3));
    // 1 again: a ghost hit in B2 shrinks the target to 0: T1's 3 goes.
    assert_eq!(unit(&mut arc, 1), [3]);
}

#[test]
fn sketch_counts_saturates_and_halves() {
    let mut sketch = FrequencySketch::new(64);
    let hash = sketch.hash(&42u64);
    let other = sketch.hash(&43u64);
    for expected in 1..=15 {
        sketch.increment(hash);
        assert_eq!(sketch.frequency(hash), expected);
    }
    sketch.increment(hash);
    assert_eq!(sketch.frequency(hash), 15);
    assert_eq!(sketch.frequency(other), 0);
    // The 15 counted increments above and the rest of the sample trigger the halving.
    for i in 15..sketch.sample_size() {
        sketch.increment(sketch.hash(&(1_000 + i)));
    }
    assert_eq!(sketch.frequency(hash), 7);
}

#[test]
fn adaptive_keeps_a_hot_set_through_a_scan() {
    let mut adaptive = Adaptive::new(100, Cost::Count);
    let mut lru = Lru::new(100);
    for _ in 0..20 {
        for key in 0..50 {
            unit(&mut adaptive, key);
            unit(&mut lru, key);
        }
    }
    for key in 10_000..20_000 {
        unit(&mut adaptive, key);
        unit(&mut lru, key);
    }
    let kept = (0..50).filter(|key| adaptive.contains(key)).count();
    assert!(
        kept >= 45,
        "the scan flushed the hot set: {kept} of 50 left"
    );
    assert_eq!((0..50).filter(|key| lru.contains(key)).count(), 0);
}

/// A newcomer the filter turns away is kept when written with `insert_admitted`, the room
/// taken from the oldest entries; weight and capacity stay exact.
#[test]
fn adaptive_keeps_an_admitted_write_the_filter_would_turn_away() {
    // Entries of 10 in a capacity of 100: each newcomer overflows the 1 % window at once and is
    // weighed against the main area as it is written.
    let ten = Entry {
        weight: 10,
        expires_at: None,
    };
    let mut adaptive = Adaptive::new(100, Cost::Count);
    let mut evicted = Vec::new();
    for _ in 0..5 {
        for key in 0..10 {
            adaptive.access(key, ten, &mut evicted);
        }
    }
    evicted.clear();
    adaptive.insert(1_000, ten, &mut evicted).unwrap();
    assert_eq!(evicted, [1_000], "a newcomer written once is turned away");
    evicted.clear();
    adaptive.insert_admitted(1_001, ten, &mut evicted).unwrap();
    assert!(adaptive.contains(&1_001));
    assert_eq!(evicted.len(), 1);
    assert!(evicted[0] < 10 && !adaptive.contains(&evicted[0]));
    assert_eq!((adaptive.len(), adaptive.weight()), (10, 100));
    // Every other policy keeps the key it writes anyway.
    let mut lru = Lru::new(2);
    for key in 0..2 {
        unit(&mut lru, key);
    }
    let mut evicted = Vec::new();
    lru.insert_admitted(9, Entry::UNIT, &mut evicted).unwrap();
    assert_eq!(evicted, [0]);
}

#[test]
fn adaptive_follows_a_shift_in_popularity_within_a_bounded_number_of_accesses() {
    let mut adaptive = Adaptive::new(100, Cost::Count);
    // A long, popular first phase builds up counts the new phase must overcome.
    for _ in 0..200 {
        for key in 0..80 {
            unit(&mut adaptive, key);
        }
    }
    // Then another 80 keys are the hot ones: after 30 rounds (2 400 accesses, 24 × the
    // capacity) they hit at least 90 % of the time.
    for _ in 0..30 {
        for key in 1_000..1_080 {
            unit(&mut adaptive, key);
        }
    }
    let hits = (0..5)
        .flat_map(|_| 1_000..1_080u64)
        .filter(|&key| adaptive.access(key, Entry::UNIT, &mut Vec::new()))
        .count();
    assert!(hits >= 360, "{hits} of 400 hits after the shift");
}

/// A stream where recency is all that matters: every key is used twice, the second time after a
/// gap drawn uniformly from 1–1 200 steps, and never again.
fn recency_stream(steps: u64) -> Vec<u64> {
    let mut due: std::collections::BTreeMap<u64, Vec<u64>> = std::collections::BTreeMap::new();
    let mut state = 11u64;
    let mut stream = Vec::new();
    for step in 0..steps {
        stream.push(step);
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        due.entry(step + 1 + (state >> 33) % 1_200)
            .or_default()
            .push(step);
        stream.extend(due.remove(&step).unwrap_or_default());
    }
    stream
}

#[test]
fn adaptive_grows_its_window_when_recency_pays() {
    // A frequency filter can only hurt here (every newcomer has been seen once, like what it
    // would displace); LRU hits every second use whose gap fits. The climber must widen the
    // window until the adaptive policy hits nearly as often.
    let stream = recency_stream(200_000);
    let late = stream.len() * 4 / 5;
    let mut adaptive = Adaptive::new(1_000, Cost::Count);
    let mut lru = Lru::new(1_000);
    let start = adaptive.window_max();
    let (mut adaptive_hits, mut lru_hits) = (0, 0);
    for (at, &key) in stream.iter().enumerate() {
        let a = adaptive.access(key, Entry::UNIT, &mut Vec::new());
        let l = lru.access(key, Entry::UNIT, &mut Vec::new());
        if at >= late {
            adaptive_hits += usize::from(a);
            lru_hits += usize::from(l);
        }
    }
    assert!(
        adaptive.window_max() > start * 10,
        "window stayed at {} (started at {start})",
        adaptive.window_max()
    );
    assert!(
        adaptive_hits * 10 >= lru_hits * 9,
        "adaptive {adaptive_hits} hits, LRU {lru_hits} in the last fifth"
    );
}

#[test]
fn adaptive_weighs_bytes_when_a_miss_costs_its_size() {
    // 100 bytes full of ten 10-byte entries used twice each; then a 60-byte entry used four
    // times asks in (its first use does not count: the filter wants a newcomer seen before).
    // Counting fetches, six small entries (12 uses) are worth more than one large one (3);
    // counting bytes over the radio, 3 uses per byte held beat the small entries' 2.
    for (cost, large_kept) in [(Cost::Count, false), (Cost::Bytes, true)] {
        let mut adaptive = Adaptive::new(100, cost);
        for key in 0..10 {
            put(&mut adaptive, key, 10, None);
            adaptive.hit(&key);
        }
        for _ in 0..4 {
            let mut evicted = Vec::new();
            let _ = adaptive.insert(
                99,
                Entry {
                    weight: 60,
                    expires_at: None,
                },
                &mut evicted,
            );
        }
        assert_eq!(adaptive.contains(&99), large_kept, "{cost:?}");
        let small = (0..10).filter(|key| adaptive.contains(key)).count();
        assert_eq!(small, if large_kept { 4 } else { 10 }, "{cost:?}");
    }
}

/// Hits in the last `last` passes of `passes` over `keys` (each weighing `weight(key)`), and the
/// number of accesses those passes made.
fn loop_hits(
    policy: &mut dyn Policy<u64>,
    keys: u64,
    passes: u64,
    last: u64,
    weight: impl Fn(u64) -> u64,
) -> (u64, u64) {
    let mut hits = 0;
    for pass in 0..passes {
        for key in 0..keys {
            let entry = Entry {
                weight: weight(key),
                expires_at: None,
            };
            let hit = policy.access(key, entry, &mut Vec::new());
            if pass >= passes - last {
                hits += u64::from(hit);
            }
        }
    }
    (hits, last * keys)
}

#[test]
fn adaptive_holds_a_slice_of_a_loop_longer_than_itself() {
    // 150 keys in a loop through 100 places: LRU never hits; the best a cache can do is keep 100
    // of them (2 hits in 3). Every key is seen as often as the next, so a newcomer must not win
    // merely for having been seen last — if it did, each pass would rewrite the main area.
    let mut adaptive = Adaptive::new(100, Cost::Count);
    let (hits, accesses) = loop_hits(&mut adaptive, 150, 60, 20, |_| 1);
    // 1 952 of 3 000; counting the newcomer's own access (Caffeine's rule), 1 864.
    assert!(hits * 100 >= accesses * 64, "{hits} hits of {accesses}");
    let mut lru = Lru::new(100);
    assert_eq!(loop_hits(&mut lru, 150, 60, 20, |_| 1).0, 0);
}

#[test]
fn adaptive_holds_a_loop_of_mixed_sizes_with_either_cost() {
    // The same with weights of 1–5: a smaller newcomer used as often as a larger resident must
    // not displace it every pass (counting fetches per byte would favour it).
    for cost in [Cost::Count, Cost::Bytes] {
        let mut adaptive = Adaptive::new(300, cost);
        let (hits, accesses) = loop_hits(&mut adaptive, 150, 60, 20, |key| 1 + key % 5);
        // Count: 1 958 of 3 000; with fetches per byte alone (no "more often than each
        // victim"), 1 480.
        assert!(
            hits * 100 >= accesses * 60,
            "{cost:?}: {hits} hits of {accesses}"
        );
    }
}

#[test]
fn sketch_increment_answers_the_new_estimate_and_counts_halvings() {
    // What the adaptive policy keeps in a newcomer's node for its admission.
    let mut sketch = FrequencySketch::new(64);
    let hash = sketch.hash(&7u64);
    for expected in 1..=15 {
        assert_eq!(sketch.increment(hash), expected);
    }
    assert_eq!(sketch.increment(hash), 15);
    assert_eq!(sketch.halvings(), 0);
    for i in 0..sketch.sample_size() {
        sketch.increment(sketch.hash(&(1_000 + i)));
    }
    assert_eq!(sketch.halvings(), 1);
    assert_eq!(sketch.frequency(hash), 7);
}

#[test]
fn kinds_round_trip_their_names() {
    for kind in Kind::ALL {
        assert_eq!(Kind::from_name(kind.name()), Some(kind));
        assert_eq!(kind.build::<u64>(5).kind(), kind);
    }
    assert_eq!(Kind::from_name("random"), None);
}
