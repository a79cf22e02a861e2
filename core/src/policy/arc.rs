//! ARC, the adaptive replacement cache (Megiddo and Modha, FAST 2003): recency and frequency
//! lists with ghost lists that move the balance between them. A baseline for the adaptive
//! policy — the bar is to beat it everywhere — with weights standing in for ARC's unit
//! pages (exact ARC when every weight is 1).

use std::hash::Hash;

use super::list::{Lists, Slot};
use super::{Entry, Kind, Policy, Refused, check_weight};

/// Seen once lately (resident).
const T1: usize = 0;
/// Seen at least twice lately (resident).
const T2: usize = 1;
/// Evicted from T1 (keys only).
const B1: usize = 2;
/// Evicted from T2 (keys only).
const B2: usize = 3;

/// The ARC policy.
#[derive(Debug)]
pub struct Arc<K> {
    lists: Lists<K, 4>,
    capacity: u64,
    /// The target weight of T1.
    target: u64,
}

impl<K: Hash + Eq + Clone> Arc<K> {
    /// An empty ARC over `capacity`.
    pub fn new(capacity: u64) -> Self {
        Self {
            lists: Lists::new(),
            capacity,
            target: 0,
        }
    }

    fn w(&self, list: usize) -> u64 {
        self.lists.ends(list).weight
    }

    fn resident(&self) -> u64 {
        self.w(T1) + self.w(T2)
    }

    /// Moves one resident entry to its ghost list (ARC's REPLACE).
    fn replace(&mut self, hit_in_b2: bool, evicted: &mut Vec<K>) -> bool {
        let t1 = self.w(T1);
        let from_t1 = self.lists.ends(T1).len > 0
            && ((hit_in_b2 && t1 >= self.target)
                || t1 > self.target
                || self.lists.ends(T2).len == 0);
        let (list, ghost) = if from_t1 { (T1, B1) } else { (T2, B2) };
        let Some(victim) = self.lists.tail(list) else {
            return false;
        };
        self.demote_to_ghost(victim, ghost, evicted);
        true
    }

    fn demote_to_ghost(&mut self, slot: Slot, ghost: usize, evicted: &mut Vec<K>) {
        evicted.extend(self.lists.key(slot).cloned());
        self.lists.move_to(slot, ghost);
    }

    fn drop_tail(&mut self, list: usize) -> bool {
        match self.lists.tail(list) {
            Some(slot) => {
                self.lists.remove(slot);
                true
            }
            None => false,
        }
    }

    fn make_room(&mut self, weight: u64, hit_in_b2: bool, evicted: &mut Vec<K>) {
        while self.resident() + weight > self.capacity && self.replace(hit_in_b2, evicted) {}
    }
}

impl<K: Hash + Eq + Clone + Send + std::fmt::Debug> Policy<K> for Arc<K> {
    fn kind(&self) -> Kind {
        Kind::Arc
    }
    fn capacity(&self) -> u64 {
        self.capacity
    }
    fn weight(&self) -> u64 {
        self.resident()
    }
    fn len(&self) -> usize {
        self.lists.ends(T1).len + self.lists.ends(T2).len
    }
    fn contains(&self, key: &K) -> bool {
        matches!(self.lists.find(key), Some((_, T1 | T2)))
    }
    fn hit(&mut self, key: &K) {
        if let Some((slot, T1 | T2)) = self.lists.find(key) {
            self.lists.move_to(slot, T2);
        }
    }
    fn insert(&mut self, key: K, entry: Entry, evicted: &mut Vec<K>) -> Result<(), Refused> {
        check_weight(entry.weight, self.capacity)?;
        let weight = entry.weight;
        let c = self.capacity;
        match self.lists.find(&key) {
            Some((slot, T1 | T2)) => {
                // A rewrite counts as a second use.
                self.lists.set_weight(slot, weight);
                self.lists.move_to(slot, T2);
                while self.resident() > c {
                    // The rewritten key is at T2's head and fits alone.
                    if !self.replace(false, evicted) {
                        break;
                    }
                }
            }
            Some((slot, B1)) => {
                let ratio = (self.w(B2) / self.w(B1).max(1)).max(1);
                self.target = (self.target + ratio * weight).min(c);
                self.lists.remove(slot);
                self.make_room(weight, false, evicted);
                self.lists.push(T2, key, weight, 0);
            }
            Some((slot, _)) => {
                let ratio = (self.w(B1) / self.w(B2).max(1)).max(1);
                self.target = self.target.saturating_sub(ratio * weight);
                self.lists.remove(slot);
                self.make_room(weight, true, evicted);
                self.lists.push(T2, key, weight, 0);
            }
            None => {
                if self.w(T1) + self.w(B1) + weight > c {
                    // L1 is full: forget T1's ghosts first, then T1's own oldest entries.
                    while self.w(T1) + self.w(B1) + weight > c && self.drop_tail(B1) {}
                    while self.w(T1) + weight > c {
                        let Some(victim) = self.lists.tail(T1) else {
                            break;
                        };
                        evicted.extend(self.lists.remove(victim));
                    }
                } else {
                    let total = self.resident() + self.w(B1) + self.w(B2);
                    if total + weight > 2 * c {
                        let mut total = total;
                        while total + weight > 2 * c {
                            let Some(ghost) = self.lists.tail(B2) else {
                                break;
                            };
                            total -= self.lists.weight_of(ghost);
                            self.lists.remove(ghost);
                        }
                    }
                }
                self.make_room(weight, false, evicted);
                self.lists.push(T1, key, weight, 0);
            }
        }
        Ok(())
    }
    fn remove(&mut self, key: &K) -> bool {
        match self.lists.find(key) {
            Some((slot, T1 | T2)) => self.lists.remove(slot).is_some(),
            _ => false,
        }
    }
}
