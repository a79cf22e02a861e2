//! The namespace table's own policies: LRU, LFU, volatile-LRU, volatile-TTL and no eviction,
//! with the meanings Redis gives those names.

use std::collections::BTreeMap;
use std::hash::Hash;

use hashbrown::HashMap;

use super::list::Lists;
use super::{Entry, Kind, Policy, Refused, check_weight};

/// The trait's accessors for the policies that keep their keys in a `keys` map beside `weight`
/// and `capacity` fields.
macro_rules! keyed_accessors {
    ($kind:expr) => {
        fn kind(&self) -> Kind {
            $kind
        }
        fn capacity(&self) -> u64 {
            self.capacity
        }
        fn weight(&self) -> u64 {
            self.weight
        }
        fn len(&self) -> usize {
            self.keys.len()
        }
        fn contains(&self, key: &K) -> bool {
            self.keys.contains_key(key)
        }
    };
}

/// The weight that must be freed to add `weight` to `resident` within `capacity`.
fn shortfall(resident: u64, weight: u64, capacity: u64) -> u64 {
    (resident + weight).saturating_sub(capacity)
}

/// Least recently used first.
#[derive(Debug)]
pub struct Lru<K> {
    lists: Lists<K, 1>,
    capacity: u64,
}

impl<K: Hash + Eq + Clone> Lru<K> {
    /// An empty LRU over `capacity`.
    pub fn new(capacity: u64) -> Self {
        Self {
            lists: Lists::new(),
            capacity,
        }
    }
}

impl<K: Hash + Eq + Clone + Send + std::fmt::Debug> Policy<K> for Lru<K> {
    fn kind(&self) -> Kind {
        Kind::Lru
    }
    fn capacity(&self) -> u64 {
        self.capacity
    }
    fn weight(&self) -> u64 {
        self.lists.ends(0).weight
    }
    fn len(&self) -> usize {
        self.lists.ends(0).len
    }
    fn contains(&self, key: &K) -> bool {
        self.lists.find(key).is_some()
    }
    fn hit(&mut self, key: &K) {
        if let Some((slot, _)) = self.lists.find(key) {
            self.lists.move_to(slot, 0);
        }
    }
    fn insert(&mut self, key: K, entry: Entry, evicted: &mut Vec<K>) -> Result<(), Refused> {
        check_weight(entry.weight, self.capacity)?;
        match self.lists.find(&key) {
            Some((slot, _)) => {
                self.lists.set_weight(slot, entry.weight);
                self.lists.move_to(slot, 0);
            }
            None => {
                self.lists.push(0, key, entry.weight, 0);
            }
        }
        // The written key is at the head and fits alone: it is never its own victim.
        while self.lists.ends(0).weight > self.capacity {
            let Some(victim) = self.lists.tail(0) else {
                break;
            };
            evicted.extend(self.lists.remove(victim));
        }
        Ok(())
    }
    fn remove(&mut self, key: &K) -> bool {
        match self.lists.find(key) {
            Some((slot, _)) => self.lists.remove(slot).is_some(),
            None => false,
        }
    }
}

/// What the frequency-ordered policies keep per key.
#[derive(Debug, Clone, Copy)]
struct Counted {
    count: u64,
    tick: u64,
    weight: u64,
}

/// Least frequently used first, the least recently used among equal counts. Counts are kept
/// while the key is resident (no decay): the plain LFU that shifting popularity defeats.
#[derive(Debug)]
pub struct Lfu<K> {
    keys: HashMap<K, Counted>,
    order: BTreeMap<(u64, u64), K>,
    tick: u64,
    weight: u64,
    capacity: u64,
}

impl<K: Hash + Eq + Clone> Lfu<K> {
    /// An empty LFU over `capacity`.
    pub fn new(capacity: u64) -> Self {
        Self {
            keys: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            weight: 0,
            capacity,
        }
    }

    fn bump(&mut self, key: &K, weight: Option<u64>) -> bool {
        self.tick += 1;
        let Some(counted) = self.keys.get_mut(key) else {
            return false;
        };
        if let Some(old) = self.order.remove(&(counted.count, counted.tick)) {
            counted.count += 1;
            counted.tick = self.tick;
            if let Some(weight) = weight {
                self.weight = self.weight - counted.weight + weight;
                counted.weight = weight;
            }
            self.order.insert((counted.count, counted.tick), old);
        }
        true
    }
}

impl<K: Hash + Eq + Clone + Send + std::fmt::Debug> Policy<K> for Lfu<K> {
    keyed_accessors!(Kind::Lfu);
    fn hit(&mut self, key: &K) {
        self.bump(key, None);
    }
    fn insert(&mut self, key: K, entry: Entry, evicted: &mut Vec<K>) -> Result<(), Refused> {
        check_weight(entry.weight, self.capacity)?;
        let own = self.keys.get(&key).map(|c| (c.count, c.tick));
        if own.is_some() {
            self.bump(&key, Some(entry.weight));
        }
        // Room first, so a new key (count 1) is not its own victim.
        let mut need = shortfall(
            self.weight,
            if own.is_some() { 0 } else { entry.weight },
            self.capacity,
        );
        let mut skipped = None;
        while need > 0 {
            let Some(((count, tick), victim)) = self.order.pop_first() else {
                break;
            };
            if victim == key {
                skipped = Some(((count, tick), victim));
                continue;
            }
            if let Some(gone) = self.keys.remove(&victim) {
                self.weight -= gone.weight;
                need = need.saturating_sub(gone.weight);
            }
            evicted.push(victim);
        }
        if let Some((at, own)) = skipped {
            self.order.insert(at, own);
        }
        if own.is_none() {
            self.tick += 1;
            let counted = Counted {
                count: 1,
                tick: self.tick,
                weight: entry.weight,
            };
            self.order
                .insert((counted.count, counted.tick), key.clone());
            self.keys.insert(key, counted);
            self.weight += entry.weight;
        }
        Ok(())
    }
    fn remove(&mut self, key: &K) -> bool {
        match self.keys.remove(key) {
            Some(gone) => {
                self.order.remove(&(gone.count, gone.tick));
                self.weight -= gone.weight;
                true
            }
            None => false,
        }
    }
}

/// The volatile policies' lists: entries that expire, and entries that never do (never evicted).
const EXPIRING: usize = 0;
const PERSISTENT: usize = 1;

/// Least recently used first among entries with a TTL; the others are never evicted.
#[derive(Debug)]
pub struct VolatileLru<K> {
    lists: Lists<K, 2>,
    capacity: u64,
}

impl<K: Hash + Eq + Clone> VolatileLru<K> {
    /// An empty volatile-LRU over `capacity`.
    pub fn new(capacity: u64) -> Self {
        Self {
            lists: Lists::new(),
            capacity,
        }
    }
}

impl<K: Hash + Eq + Clone + Send + std::fmt::Debug> Policy<K> for VolatileLru<K> {
    fn kind(&self) -> Kind {
        Kind::VolatileLru
    }
    fn capacity(&self) -> u64 {
        self.capacity
    }
    fn weight(&self) -> u64 {
        self.lists.ends(EXPIRING).weight + self.lists.ends(PERSISTENT).weight
    }
    fn len(&self) -> usize {
        self.lists.ends(EXPIRING).len + self.lists.ends(PERSISTENT).len
    }
    fn contains(&self, key: &K) -> bool {
        self.lists.find(key).is_some()
    }
    fn hit(&mut self, key: &K) {
        if let Some((slot, list)) = self.lists.find(key) {
            self.lists.move_to(slot, list);
        }
    }
    fn insert(&mut self, key: K, entry: Entry, evicted: &mut Vec<K>) -> Result<(), Refused> {
        check_weight(entry.weight, self.capacity)?;
        let own = self.lists.find(&key);
        let (own_weight, own_expiring) = own.map_or((0, 0), |(slot, list)| {
            let w = self.lists.weight_of(slot);
            (w, if list == EXPIRING { w } else { 0 })
        });
        let needed = shortfall(self.weight() - own_weight, entry.weight, self.capacity);
        let evictable = self.lists.ends(EXPIRING).weight - own_expiring;
        if needed > evictable {
            return Err(Refused::Full { needed, evictable });
        }
        if let Some((slot, _)) = own {
            self.lists.remove(slot);
        }
        let mut need = needed;
        while need > 0 {
            let Some(victim) = self.lists.tail(EXPIRING) else {
                break;
            };
            need = need.saturating_sub(self.lists.weight_of(victim));
            evicted.extend(self.lists.remove(victim));
        }
        let list = if entry.expires_at.is_some() {
            EXPIRING
        } else {
            PERSISTENT
        };
        self.lists.push(list, key, entry.weight, 0);
        Ok(())
    }
    fn remove(&mut self, key: &K) -> bool {
        match self.lists.find(key) {
            Some((slot, _)) => self.lists.remove(slot).is_some(),
            None => false,
        }
    }
}

/// Soonest expiry first among entries with a TTL; the others are never evicted.
#[derive(Debug)]
pub struct VolatileTtl<K> {
    keys: HashMap<K, (u64, Option<(u64, u64)>)>,
    order: BTreeMap<(u64, u64), K>,
    seq: u64,
    weight: u64,
    expiring: u64,
    capacity: u64,
}

impl<K: Hash + Eq + Clone> VolatileTtl<K> {
    /// An empty volatile-TTL over `capacity`.
    pub fn new(capacity: u64) -> Self {
        Self {
            keys: HashMap::new(),
            order: BTreeMap::new(),
            seq: 0,
            weight: 0,
            expiring: 0,
            capacity,
        }
    }
}

impl<K: Hash + Eq + Clone + Send + std::fmt::Debug> Policy<K> for VolatileTtl<K> {
    keyed_accessors!(Kind::VolatileTtl);
    fn hit(&mut self, _key: &K) {}
    fn insert(&mut self, key: K, entry: Entry, evicted: &mut Vec<K>) -> Result<(), Refused> {
        check_weight(entry.weight, self.capacity)?;
        let (own_weight, own_expiring) = self
            .keys
            .get(&key)
            .map_or((0, 0), |&(w, at)| (w, if at.is_some() { w } else { 0 }));
        let needed = shortfall(self.weight - own_weight, entry.weight, self.capacity);
        let evictable = self.expiring - own_expiring;
        if needed > evictable {
            return Err(Refused::Full { needed, evictable });
        }
        self.remove(&key);
        let mut need = needed;
        while need > 0 {
            let Some((_, victim)) = self.order.pop_first() else {
                break;
            };
            if let Some((w, _)) = self.keys.remove(&victim) {
                self.weight -= w;
                self.expiring -= w;
                need = need.saturating_sub(w);
            }
            evicted.push(victim);
        }
        self.seq += 1;
        let at = entry.expires_at.map(|at| (at, self.seq));
        if let Some(at) = at {
            self.order.insert(at, key.clone());
            self.expiring += entry.weight;
        }
        self.weight += entry.weight;
        self.keys.insert(key, (entry.weight, at));
        Ok(())
    }
    fn remove(&mut self, key: &K) -> bool {
        match self.keys.remove(key) {
            Some((w, at)) => {
                if let Some(at) = at {
                    self.order.remove(&at);
                    self.expiring -= w;
                }
                self.weight -= w;
                true
            }
            None => false,
        }
    }
}

/// Never evicts: a write that does not fit is refused.
#[derive(Debug)]
pub struct NoEviction<K> {
    keys: HashMap<K, u64>,
    weight: u64,
    capacity: u64,
}

impl<K: Hash + Eq + Clone> NoEviction<K> {
    /// An empty no-eviction policy over `capacity`.
    pub fn new(capacity: u64) -> Self {
        Self {
            keys: HashMap::new(),
            weight: 0,
            capacity,
        }
    }
}

impl<K: Hash + Eq + Clone + Send + std::fmt::Debug> Policy<K> for NoEviction<K> {
    keyed_accessors!(Kind::NoEviction);
    fn hit(&mut self, _key: &K) {}
    fn insert(&mut self, key: K, entry: Entry, _evicted: &mut Vec<K>) -> Result<(), Refused> {
        check_weight(entry.weight, self.capacity)?;
        let own = self.keys.get(&key).copied().unwrap_or(0);
        let needed = shortfall(self.weight - own, entry.weight, self.capacity);
        if needed > 0 {
            return Err(Refused::Full {
                needed,
                evictable: 0,
            });
        }
        self.weight = self.weight - own + entry.weight;
        self.keys.insert(key, entry.weight);
        Ok(())
    }
    fn remove(&mut self, key: &K) -> bool {
        match self.keys.remove(key) {
            Some(w) => {
                self.weight -= w;
                true
            }
            None => false,
        }
    }
}
