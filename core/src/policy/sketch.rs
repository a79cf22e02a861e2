//! How often a key was seen lately, in four bits per counter: a count-min sketch with periodic
//! halving, the "TinyLFU" half of the adaptive policy.
//!
//! Memory is fixed by the expected number of entries (eight 64-bit words — 128 counters — per
//! entry), not by how many keys ever pass: that is what lets the policy remember the popularity of
//! keys it no longer holds. A key's four counters sit in one 64-byte block, so an access touches
//! one cache line. Every `5 × entries` increments all counters are halved, so old popularity fades
//! and a shift in what is hot is followed.
//!
//! Both figures were chosen on the public traces (`scripts/bench-cachesim`, ADR 0026). The table
//! is eight times Caffeine's (one word per entry): with Caffeine's, the counters of a loop longer
//! than the cache were too noisy for the filter to hold a stable part of it. The halving period
//! is half Caffeine's (`10 × entries`): once the admission test asks a newcomer to beat its
//! victim by more than the access that brought it (see `adaptive.rs`), faster ageing no longer
//! churns loops and follows shifting popularity sooner (mean gap to the best libCacheSim policy
//! 0.22 points at `10 × entries`, 0.11 at `5 ×`, 0.46 at the former `80 ×`).

use std::hash::{BuildHasher, Hash};

use foldhash::fast::FixedState;

/// Counters saturate here (four bits).
const MAX_COUNT: u64 = 15;
/// Keeps each nibble's high three bits when halving a word.
const HALVE_MASK: u64 = 0x7777_7777_7777_7777;
/// Table words per expected entry.
const WORDS_PER_ENTRY: usize = 8;
/// Increments between halvings, per table word: 5 × entries at eight words per entry.
const RESET_PER_WORD: f64 = 0.625;
/// Words per block: one 64-byte cache line.
const BLOCK: usize = 8;
/// Fixed, so a simulation gives the same answer every run.
const SEED: u64 = 0x6b72_796f_6e69_7801;

/// The frequency sketch.
#[derive(Debug, Clone)]
pub struct FrequencySketch {
    table: Vec<u64>,
    entries: usize,
    block_mask: u64,
    additions: u64,
    halvings: u64,
    sample: u64,
    hasher: FixedState,
}

impl FrequencySketch {
    /// A sketch for about `entries` distinct live keys.
    pub fn new(entries: usize) -> Self {
        Self::with_shape(entries, WORDS_PER_ENTRY, RESET_PER_WORD)
    }

    /// A sketch of `words_per_entry` table words per entry, halved every `reset` × words
    /// increments.
    pub fn with_shape(entries: usize, words_per_entry: usize, reset: f64) -> Self {
        let words = (entries.saturating_mul(words_per_entry.max(1)))
            .max(BLOCK)
            .next_power_of_two();
        Self {
            table: vec![0; words],
            entries: entries.max(1),
            block_mask: (words / BLOCK - 1) as u64,
            additions: 0,
            halvings: 0,
            sample: ((reset * words as f64) as u64).max(1),
            hasher: FixedState::with_seed(SEED),
        }
    }

    /// The number of entries the sketch was sized for.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Increments between two halvings.
    pub fn sample_size(&self) -> u64 {
        self.sample
    }

    /// The key's hash as the sketch uses it.
    pub fn hash<K: Hash + ?Sized>(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The key's block (first word) and, for each of its four counters, the word within the
    /// block and the bit shift of its nibble.
    #[inline]
    fn locate(&self, hash: u64) -> (usize, [(usize, u32); 4]) {
        // The block comes from the low bits; each counter's word and nibble from 7 other bits.
        let block = (hash & self.block_mask) as usize * BLOCK;
        let at = |i: u32| {
            let bits = (hash >> (32 + 7 * i)) as usize;
            (bits & (BLOCK - 1), ((bits >> 3) & 15) as u32 * 4)
        };
        (block, [at(0), at(1), at(2), at(3)])
    }

    #[inline]
    fn block(&self, start: usize) -> &[u64; BLOCK] {
        // `start` is a multiple of BLOCK below the table's length (a multiple of BLOCK).
        self.table[start..start + BLOCK]
            .try_into()
            .unwrap_or(&[0; BLOCK])
    }

    /// Starts loading the key's block, so the cache miss overlaps with the caller's own
    /// lookups instead of following them.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        let block = (hash & self.block_mask) as usize * BLOCK;
        if let Some(word) = self.table.get(block) {
            std::hint::black_box(*word);
        }
    }

    /// The key's estimated count (0–15).
    #[inline]
    pub fn frequency(&self, hash: u64) -> u64 {
        let (start, counters) = self.locate(hash);
        let block = self.block(start);
        let count = |(word, shift): (usize, u32)| (block[word] >> shift) & MAX_COUNT;
        count(counters[0])
            .min(count(counters[1]))
            .min(count(counters[2]).min(count(counters[3])))
    }

    /// Counts one access of the key; returns its estimated count after it.
    #[inline]
    pub fn increment(&mut self, hash: u64) -> u64 {
        let (start, counters) = self.locate(hash);
        let Some(block) = self
            .table
            .get_mut(start..start + BLOCK)
            .and_then(|words| <&mut [u64; BLOCK]>::try_from(words).ok())
        else {
            return 0;
        };
        let count = |(word, shift): (usize, u32)| (block[word] >> shift) & MAX_COUNT;
        let min = count(counters[0])
            .min(count(counters[1]))
            .min(count(counters[2]).min(count(counters[3])));
        if min == MAX_COUNT {
            return MAX_COUNT;
        }
        // Conservative update: only the smallest counters grow, which keeps the estimate tight.
        // (Re-read: two of a key's counters may be the same nibble, which grows once.)
        for (word, shift) in counters {
            if (block[word] >> shift) & MAX_COUNT == min {
                block[word] += 1 << shift;
            }
        }
        self.additions += 1;
        if self.additions >= self.sample {
            self.halve();
            // The counter just reached min + 1 and was halved with the rest.
            return (min + 1) >> 1;
        }
        min + 1
    }

    /// Numbers this sketch's halving periods after `previous`'s (which it replaces), so a count
    /// taken in the old sketch is not mistaken for one of the new.
    pub fn follow(&mut self, previous: &Self) {
        self.halvings = previous.halvings + 1;
    }

    /// How many times the counters have been halved.
    pub fn halvings(&self) -> u64 {
        self.halvings
    }

    #[cold]
    fn halve(&mut self) {
        for word in &mut self.table {
            *word = (*word >> 1) & HALVE_MASK;
        }
        self.additions /= 2;
        self.halvings += 1;
    }
}
