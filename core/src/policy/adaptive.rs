//! The adaptive policy: W-TinyLFU (Einziger, Friedman and Manes, 2017) with the window sized by a
//! hill climber, as Caffeine does it, and an admission test that can weigh what a miss costs.
//!
//! New entries enter a small LRU *window*. What leaves the window is a *candidate* for the main
//! area, an SLRU of *probation* and *protected* segments; it gets in only if the frequency sketch
//! says it is used more than what it would displace. So a scan passes through the window without
//! flushing the hot set (LRU's failure), and a key that stopped being popular loses its place as
//! the sketch halves (LFU's failure). Which of recency or frequency matters more depends on the
//! workload: every `10 × entries` accesses the climber compares the hit ratio with the previous
//! sample and moves the window's share up or down, shrinking its steps as it settles and starting
//! over when the ratio jumps.
//!
//! Two rules keep the filter from churning the main area on loops (ADR 0026): the access that
//! brought a candidate in does not count for it (its estimate less one must beat the victims':
//! in a loop every key is seen as often as the next, and the newcomer has simply been seen
//! last), and hits inside the window are not counted (a burst is not popularity).
//!
//! Memory: the sketch (64 bytes per expected entry) and the lists' per-entry nodes; nothing per
//! key once a key is gone. Every access is O(1): a hash probe, four counters in one cache line,
//! list moves; an eviction compares one candidate with the few victims it would displace.

use std::hash::Hash;

use super::list::{Lists, Slot};
use super::sketch::FrequencySketch;
use super::{Entry, Kind, Policy, Refused, check_weight};

const WINDOW: usize = 0;
const PROBATION: usize = 1;
const PROTECTED: usize = 2;

/// The adaptive policy's constants. [`Tuning::default`] is what the cache runs; the simulator
/// can try others (`kryonix-cachesim --tune`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// The window's share of the capacity before the climber moves it.
    pub initial_window: f64,
    /// The protected segment's share of the main area.
    pub protected_share: f64,
    /// The climber's first step, as a share of the capacity (0 turns the climber off).
    pub step: f64,
    /// Each step is this much smaller than the last while the hit ratio keeps its course.
    pub step_decay: f64,
    /// A change in hit ratio this large means the workload changed: steps start over.
    pub restart: f64,
    /// Accesses per climber sample, in expected entries.
    pub sample: f64,
    /// A candidate is admitted only if its frequency, less this margin, beats its victims'.
    pub margin: f64,
    /// Whether hits in the window count towards the sketch (1) or not (0).
    pub window_hits: f64,
    /// Sketch table words (16 counters each) per expected entry.
    pub sketch_words: f64,
    /// The sketch halves its counters every `reset` × its words increments.
    pub reset: f64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            initial_window: 0.01,
            protected_share: 0.8,
            step: 0.0625,
            step_decay: 0.98,
            restart: 0.05,
            sample: 10.0,
            margin: 1.0,
            window_hits: 0.0,
            sketch_words: 8.0,
            reset: 0.625,
        }
    }
}

impl Tuning {
    /// Applies `name=value,…` overrides (the field names above).
    pub fn parse_overrides(mut self, text: &str) -> Result<Self, String> {
        for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not name=value"))?;
            let value: f64 = value
                .trim()
                .parse()
                .map_err(|_| format!("{value:?} is not a number"))?;
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!("{name} must be a finite, non-negative number"));
            }
            let field = match name.trim() {
                "initial_window" => &mut self.initial_window,
                "protected_share" => &mut self.protected_share,
                "step" => &mut self.step,
                "step_decay" => &mut self.step_decay,
                "restart" => &mut self.restart,
                "sample" => &mut self.sample,
                "margin" => &mut self.margin,
                "window_hits" => &mut self.window_hits,
                "sketch_words" => &mut self.sketch_words,
                "reset" => &mut self.reset,
                other => return Err(format!("unknown tuning {other:?}")),
            };
            *field = value;
        }
        Ok(self)
    }
}

/// The sketch's first size when capacity is in bytes and the entry count unknown.
const FIRST_ENTRIES: u64 = 1024;

/// What a miss costs, which the admission test weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// Every miss costs the same (one fetch): keeping more entries is better, so a heavy
    /// candidate must outscore all the lighter entries it would displace.
    Count,
    /// A miss costs its bytes (a slow or metered radio): an entry's value is its frequency times
    /// its size, which keeps large, reused entries that `Count` gives up for many small ones.
    Bytes,
}

/// Hit-ratio sampling and the window size it steers.
#[derive(Debug)]
struct Climber {
    hits: u64,
    misses: u64,
    previous: f64,
    /// Signed: the direction the window moves next.
    step: f64,
    /// The window's target weight (fractional, so small steps add up).
    window: f64,
}

/// What the victims of one admission would free and are worth.
#[derive(Debug, Default, Clone, Copy)]
struct Weighed {
    /// Their summed value (frequency, or frequency × weight with `Cost::Bytes`).
    value: u64,
    /// Their summed weight.
    freed: u64,
    /// The highest frequency among them.
    most: u64,
}

/// The adaptive policy.
#[derive(Debug)]
pub struct Adaptive<K> {
    lists: Lists<K, 3>,
    sketch: FrequencySketch,
    climber: Climber,
    capacity: u64,
    cost: Cost,
    tuning: Tuning,
    /// Accesses per climber sample (from the tuning and the sketch's size).
    sample_every: u64,
    /// The victims buffer of `evict`, kept to spare an allocation per miss.
    scratch: Vec<Slot>,
    window_max: u64,
    protected_max: u64,
}

impl<K: Hash + Eq + Clone> Adaptive<K> {
    /// An empty adaptive policy over `capacity`, weighing misses by `cost`.
    pub fn new(capacity: u64, cost: Cost) -> Self {
        Self::with_tuning(capacity, cost, Tuning::default())
    }

    /// The same with other constants.
    pub fn with_tuning(capacity: u64, cost: Cost, tuning: Tuning) -> Self {
        let mut policy = Self {
            lists: Lists::new(),
            sketch: FrequencySketch::with_shape(
                capacity.clamp(1, FIRST_ENTRIES) as usize,
                tuning.sketch_words as usize,
                tuning.reset,
            ),
            climber: Climber {
                hits: 0,
                misses: 0,
                previous: 0.0,
                step: tuning.step * capacity as f64,
                window: tuning.initial_window * capacity as f64,
            },
            capacity,
            cost,
            tuning,
            sample_every: 0,
            scratch: Vec::new(),
            window_max: 0,
            protected_max: 0,
        };
        policy.resize_segments();
        policy.sample_every = policy.sample_size();
        policy
    }

    /// The window's current maximum weight (what the climber has chosen).
    pub fn window_max(&self) -> u64 {
        self.window_max
    }

    fn resize_segments(&mut self) {
        let capacity = self.capacity as f64;
        self.climber.window = self.climber.window.clamp(0.0, capacity);
        self.window_max = self.climber.window.round() as u64;
        self.protected_max =
            (self.tuning.protected_share * (self.capacity - self.window_max) as f64).round() as u64;
    }

    fn total(&self) -> u64 {
        self.lists.ends(WINDOW).weight
            + self.lists.ends(PROBATION).weight
            + self.lists.ends(PROTECTED).weight
    }

    /// Counts an access in the sketch and keeps the estimate (with the halving period it
    /// belongs to) in the entry's tag, so admission need not read the sketch again.
    #[inline]
    fn count(&mut self, slot: Slot, hash: u64) {
        let frequency = self.sketch.increment(hash);
        let period = (self.sketch.halvings() & 15) as u8;
        self.lists.set_tag(slot, (period << 4) | frequency as u8);
    }

    /// Whether the candidate is worth more than the victims it would displace.
    fn admits(&self, cand: Slot, victims: Weighed) -> bool {
        let Weighed { value, freed, most } = victims;
        let tag = self.lists.tag(cand);
        let frequency = if u64::from(tag >> 4) == self.sketch.halvings() & 15 {
            // Counted at its last increment, in this halving period: still the estimate (bar
            // a collision since).
            u64::from(tag & 15)
        } else {
            self.sketch.frequency(self.lists.extra(cand))
        };
        let frequency = frequency.saturating_sub(self.tuning.margin as u64);
        match self.cost {
            // Fetches saved per byte held: the candidate's frequency per byte against the
            // victims' summed frequency per byte freed.
            // It must also be used more often than each victim: among equals (a loop)
            // a smaller newcomer would otherwise displace a larger resident every pass.
            Cost::Count => {
                frequency > most && frequency * freed > value * self.lists.weight_of(cand)
            }
            // Bytes saved per byte held: the candidate's frequency against the victims' mean
            // frequency per byte freed.
            Cost::Bytes => frequency * freed > value,
        }
    }

    fn sample_size(&self) -> u64 {
        (self.tuning.sample * self.sketch.entries() as f64) as u64
    }

    /// Counts an access towards the climber's sample and adapts when the sample is full.
    fn sample(&mut self, hit: bool) {
        if hit {
            self.climber.hits += 1;
        } else {
            self.climber.misses += 1;
        }
        let requests = self.climber.hits + self.climber.misses;
        if requests < self.sample_every {
            return;
        }
        let rate = self.climber.hits as f64 / requests as f64;
        let change = rate - self.climber.previous;
        let amount = if change >= 0.0 {
            self.climber.step
        } else {
            -self.climber.step
        };
        self.climber.step = if change.abs() >= self.tuning.restart {
            self.tuning.step * self.capacity as f64 * amount.signum()
        } else {
            self.tuning.step_decay * amount
        };
        self.climber.previous = rate;
        self.climber.hits = 0;
        self.climber.misses = 0;
        self.climber.window += amount;
        self.resize_segments();
    }

    /// Keeps the sketch at least as large as the number of resident entries: it starts small
    /// (a capacity in bytes does not say how many entries there will be) and doubles.
    fn grow_sketch(&mut self) {
        let len = self.len_all();
        if len > self.sketch.entries() {
            // Popularity is relearnt: the old counters do not map onto the new table. Keys keep
            // their hashes (the hasher is fixed).
            let entries = (len * 2).min(usize::try_from(self.capacity).unwrap_or(usize::MAX));
            let mut sketch = FrequencySketch::with_shape(
                entries.max(len),
                self.tuning.sketch_words as usize,
                self.tuning.reset,
            );
            sketch.follow(&self.sketch);
            self.sketch = sketch;
            self.sample_every = self.sample_size();
        }
    }

    fn len_all(&self) -> usize {
        self.lists.ends(WINDOW).len
            + self.lists.ends(PROBATION).len
            + self.lists.ends(PROTECTED).len
    }

    /// Moves what overflows the window and protected segments into probation, then evicts until
    /// the total fits, admitting each window candidate only if it is worth more than what it
    /// displaces.
    fn evict(&mut self, evicted: &mut Vec<K>) {
        while self.lists.ends(PROTECTED).weight > self.protected_max {
            let Some(slot) = self.lists.tail(PROTECTED) else {
                break;
            };
            self.lists.move_to(slot, PROBATION);
        }
        // What overflows the window asks into the main area, oldest first, and is weighed
        // where it stands (a candidate turned away never moves).
        while self.lists.ends(WINDOW).weight > self.window_max {
            let Some(cand) = self.lists.tail(WINDOW) else {
                break;
            };
            let total = self.total();
            if total <= self.capacity {
                self.lists.move_to(cand, PROBATION);
                continue;
            }
            let mut victims = std::mem::take(&mut self.scratch);
            let weighed = self.victims_for(cand, total - self.capacity, &mut victims);
            if !victims.is_empty() && self.admits(cand, weighed) {
                for &victim in &victims {
                    evicted.extend(self.lists.remove(victim));
                }
                self.lists.move_to(cand, PROBATION);
            } else {
                evicted.extend(self.lists.remove(cand));
            }
            self.scratch = victims;
        }
        // Still over (a heavier write, a narrower main area): plain LRU order, probation before
        // protected before window.
        while self.total() > self.capacity {
            let Some(victim) = [PROBATION, PROTECTED, WINDOW]
                .into_iter()
                .find_map(|list| self.lists.tail(list))
            else {
                break;
            };
            evicted.extend(self.lists.remove(victim));
        }
    }

    /// The oldest main-area entries (probation, then protected) that together free `need`,
    /// never `cand`, and their summed value.
    /// `victims` is the caller's buffer (kept in `self.scratch` between evictions, so a miss
    /// does not allocate).
    fn victims_for(&self, cand: Slot, need: u64, victims: &mut Vec<Slot>) -> Weighed {
        victims.clear();
        let mut weighed = Weighed::default();
        for list in [PROBATION, PROTECTED] {
            let mut at = self.lists.tail(list);
            while let Some(slot) = at {
                if weighed.freed >= need {
                    return weighed;
                }
                if slot != cand {
                    let frequency = self.sketch.frequency(self.lists.extra(slot));
                    let weight = self.lists.weight_of(slot);
                    weighed.freed += weight;
                    weighed.value += match self.cost {
                        Cost::Count => frequency,
                        Cost::Bytes => frequency * weight,
                    };
                    weighed.most = weighed.most.max(frequency);
                    victims.push(slot);
                }
                at = self.lists.newer(slot);
            }
        }
        if weighed.freed < need {
            // The main area cannot free enough: the candidate goes.
            victims.clear();
        }
        weighed
    }

    fn promote(&mut self, slot: Slot, list: usize) {
        match list {
            PROBATION => self.lists.move_to(slot, PROTECTED),
            other => self.lists.move_to(slot, other),
        }
    }
}

impl<K: Hash + Eq + Clone + Send + std::fmt::Debug> Policy<K> for Adaptive<K> {
    fn kind(&self) -> Kind {
        Kind::Adaptive
    }
    fn capacity(&self) -> u64 {
        self.capacity
    }
    fn weight(&self) -> u64 {
        self.total()
    }
    fn len(&self) -> usize {
        self.len_all()
    }
    fn contains(&self, key: &K) -> bool {
        self.lists.find(key).is_some()
    }
    fn hit(&mut self, key: &K) {
        let hash = self.sketch.hash(key);
        self.sketch.prefetch(hash);
        let Some((slot, list)) = self.lists.find(key) else {
            return;
        };
        if list != WINDOW || self.tuning.window_hits > 0.0 {
            self.count(slot, hash);
        }
        self.promote(slot, list);
        if list == PROBATION {
            // Keep protected within its share: its oldest go back to probation.
            while self.lists.ends(PROTECTED).weight > self.protected_max {
                let Some(oldest) = self.lists.tail(PROTECTED) else {
                    break;
                };
                if oldest == slot {
                    break;
                }
                self.lists.move_to(oldest, PROBATION);
            }
        }
        self.sample(true);
    }
    fn insert(&mut self, key: K, entry: Entry, evicted: &mut Vec<K>) -> Result<(), Refused> {
        check_weight(entry.weight, self.capacity)?;
        let hash = self.sketch.hash(&key);
        self.sketch.prefetch(hash);
        match self.lists.push_new(WINDOW, key, entry.weight, hash) {
            Ok(slot) => {
                self.count(slot, hash);
                self.sample(false);
                self.grow_sketch();
            }
            Err((slot, list)) => {
                self.count(slot, hash);
                self.lists.set_weight(slot, entry.weight);
                self.promote(slot, list);
            }
        }
        self.evict(evicted);
        Ok(())
    }
    fn insert_admitted(
        &mut self,
        key: K,
        entry: Entry,
        evicted: &mut Vec<K>,
    ) -> Result<(), Refused> {
        let start = evicted.len();
        self.insert(key.clone(), entry, evicted)?;
        let Some(at) = evicted[start..].iter().position(|k| *k == key) else {
            return Ok(());
        };
        evicted.remove(start + at);
        // Turned away by the filter: kept all the same, as the newest of probation (it has
        // been counted by `insert`), and the room comes from the oldest entries instead.
        let hash = self.sketch.hash(&key);
        let Ok(slot) = self.lists.push_new(PROBATION, key, entry.weight, hash) else {
            return Ok(());
        };
        while self.total() > self.capacity {
            let victim = [PROBATION, PROTECTED, WINDOW].into_iter().find_map(|list| {
                let tail = self.lists.tail(list)?;
                // The kept entry is probation's newest: its tail only when alone there.
                if tail == slot { None } else { Some(tail) }
            });
            let Some(victim) = victim else {
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
    fn set_cost(&mut self, cost: Cost) {
        // The sketch's counts stay valid: only how they are weighed changes.
        self.cost = cost;
    }
}
