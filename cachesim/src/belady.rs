//! Belady's optimum for unit-size entries: on a miss with the cache full, evict the entry used
//! again furthest in the future — or keep everything and skip the new one, when it is the one
//! used furthest away (caching may be bypassed, as every policy here may decline an insert).
//! No online policy does better, so it is the ceiling the tables print.

use std::collections::{BTreeSet, HashMap};

use crate::Outcome;

/// "Never used again".
const NEVER: usize = usize::MAX;

/// For each access, the index of the same key's next access (or [`NEVER`]).
fn next_uses(keys: &[u64]) -> Vec<usize> {
    let mut next = vec![NEVER; keys.len()];
    let mut seen: HashMap<u64, usize> = HashMap::with_capacity(keys.len() / 4);
    for (at, &key) in keys.iter().enumerate().rev() {
        if let Some(later) = seen.insert(key, at) {
            next[at] = later;
        }
    }
    next
}

/// The optimal hits of a cache of `capacity` unit entries over `keys`.
pub fn replay(keys: &[u64], capacity: u64) -> Outcome {
    let next = next_uses(keys);
    let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
    // Resident keys by their next use; `resident` maps a key to its entry in `by_next`.
    let mut by_next: BTreeSet<(usize, u64)> = BTreeSet::new();
    let mut resident: HashMap<u64, usize> = HashMap::with_capacity(capacity);
    let mut hits = 0u64;
    for (at, &key) in keys.iter().enumerate() {
        let upcoming = next[at];
        if let Some(previous) = resident.get_mut(&key) {
            hits += 1;
            by_next.remove(&(*previous, key));
            *previous = upcoming;
            if upcoming == NEVER {
                // Its last use: holding it on is of no value.
                resident.remove(&key);
            } else {
                by_next.insert((upcoming, key));
            }
            continue;
        }
        if upcoming == NEVER {
            continue;
        }
        if resident.len() >= capacity {
            match by_next.last().copied() {
                Some((furthest, victim)) if furthest > upcoming => {
                    by_next.remove(&(furthest, victim));
                    resident.remove(&victim);
                }
                _ => continue,
            }
        }
        resident.insert(key, upcoming);
        by_next.insert((upcoming, key));
    }
    let accesses = keys.len() as u64;
    Outcome {
        accesses,
        hits,
        bytes: accesses,
        hit_bytes: hits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn belady_on_a_sequence_worked_out_by_hand() {
        // Capacity 2 over 1 2 3 1 2 4 1 2 3:
        //   1 m {1}; 2 m {1,2}; 3 m — used next at 8, after 1 (3) and 2 (4): skipped;
        //   1 h; 2 h; 4 m — never again: skipped; 1 h (last use, dropped); 2 h (dropped);
        //   3 m. Hits: 4.
        let keys = [1, 2, 3, 1, 2, 4, 1, 2, 3];
        assert_eq!(replay(&keys, 2).hits, 4);
        // With room for all, every repeat hits: 9 accesses of 4 keys → 5 hits.
        assert_eq!(replay(&keys, 4).hits, 5);
    }
}
