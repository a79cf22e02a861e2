//! What the cache counts, and the snapshot it hands out.
//!
//! Counters are atomics bumped on the hot path; latencies go into two HDR histograms (get and
//! put) behind their own locks, so a reader never waits for a writer's bookkeeping. Byte usage
//! is not counted here: it lives in the cache's ledger, which changes only when a transaction
//! commits, and is joined in when a snapshot is taken.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use kryonix_protocol::namespace::NAMESPACES;
use kryonix_protocol::{EvictionPolicy, Namespace};

/// Number of namespaces; the ledger and counters are arrays indexed by namespace id.
pub(crate) const NS_COUNT: usize = NAMESPACES.len();

/// Longest latency the histograms tell apart (one minute, in nanoseconds); longer ones are
/// recorded as this value.
const MAX_TRACKED_NS: u64 = 60_000_000_000;

/// Bytes and entries of one namespace, as committed to the database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub entries: u64,
    /// Bytes charged to the budget: stored value plus key.
    pub charged: u64,
    /// Values before compression.
    pub raw: u64,
    /// Values as stored (after compression).
    pub stored: u64,
}

/// Latency percentiles of one operation, since the cache was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Number of operations measured.
    pub count: u64,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// One namespace in a [`CacheStats`] snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceStats {
    pub namespace: Namespace,
    pub policy: EvictionPolicy,
    pub entries: u64,
    /// Bytes charged to the budget (stored values plus keys).
    pub used_bytes: u64,
    pub budget_bytes: u64,
    /// Values before compression.
    pub raw_bytes: u64,
    /// Values as stored.
    pub stored_bytes: u64,
    pub evictions: u64,
    pub expirations: u64,
}

/// A snapshot of the cache's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheStats {
    pub hits: u64,
    /// Reads that found nothing, including entries found expired.
    pub misses: u64,
    /// `hits / (hits + misses)`, 0 before the first read.
    pub hit_ratio: f64,
    /// Live entries removed to make room under a namespace's policy.
    pub evictions: u64,
    /// Entries removed because their TTL had passed (on read, by purge, or to make room).
    pub expirations: u64,
    pub entries: u64,
    /// Values before compression, over all namespaces.
    pub raw_bytes: u64,
    /// Values as stored, over all namespaces.
    pub stored_bytes: u64,
    /// Per namespace, in id order.
    pub namespaces: Vec<NamespaceStats>,
    pub get_latency: LatencySummary,
    pub put_latency: LatencySummary,
}

/// The live counters.
#[derive(Debug)]
pub(crate) struct Stats {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: [AtomicU64; NS_COUNT],
    expirations: [AtomicU64; NS_COUNT],
    get_latency: Latency,
    put_latency: Latency,
}

#[derive(Debug)]
struct Latency(Mutex<Option<Histogram<u64>>>);

impl Latency {
    fn new() -> Self {
        // The bounds are constants that satisfy every precondition of `new_with_bounds`
        // (low >= 1, high >= 2 * low, sigfig <= 5), so this is always `Some`; if it ever were
        // not, latencies would read as zero rather than the cache failing.
        Self(Mutex::new(
            Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3).ok(),
        ))
    }

    fn record(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = guard.as_mut() {
            h.saturating_record(ns.clamp(1, MAX_TRACKED_NS));
        }
    }

    fn summary(&self) -> LatencySummary {
        let guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(h) if !h.is_empty() => LatencySummary {
                count: h.len(),
                p50: Duration::from_nanos(h.value_at_quantile(0.50)),
                p90: Duration::from_nanos(h.value_at_quantile(0.90)),
                p99: Duration::from_nanos(h.value_at_quantile(0.99)),
                max: Duration::from_nanos(h.max()),
            },
            _ => LatencySummary::default(),
        }
    }
}

impl Stats {
    pub fn new() -> Self {
        Self {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: std::array::from_fn(|_| AtomicU64::new(0)),
            expirations: std::array::from_fn(|_| AtomicU64::new(0)),
            get_latency: Latency::new(),
            put_latency: Latency::new(),
        }
    }

    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn evicted(&self, ns: usize, n: u64) {
        if let Some(c) = self.evictions.get(ns) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn expired(&self, ns: usize, n: u64) {
        if let Some(c) = self.expirations.get(ns) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn record_get(&self, elapsed: Duration) {
        self.get_latency.record(elapsed);
    }

    pub fn record_put(&self, elapsed: Duration) {
        self.put_latency.record(elapsed);
    }

    pub fn snapshot(&self, usage: &[Usage; NS_COUNT], budgets: &[u64; NS_COUNT]) -> CacheStats {
        let hits = self.hits.load(Ordering::Relaxed);
        let misses = self.misses.load(Ordering::Relaxed);
        let reads = hits + misses;
        let namespaces: Vec<NamespaceStats> = NAMESPACES
            .iter()
            .zip(usage.iter().zip(budgets))
            .zip(self.evictions.iter().zip(&self.expirations))
            .map(|((info, (u, budget)), (ev, ex))| NamespaceStats {
                namespace: info.namespace,
                policy: info.eviction,
                entries: u.entries,
                used_bytes: u.charged,
                budget_bytes: *budget,
                raw_bytes: u.raw,
                stored_bytes: u.stored,
                evictions: ev.load(Ordering::Relaxed),
                expirations: ex.load(Ordering::Relaxed),
            })
            .collect();
        CacheStats {
            hits,
            misses,
            hit_ratio: if reads == 0 {
                0.0
            } else {
                hits as f64 / reads as f64
            },
            evictions: namespaces.iter().map(|n| n.evictions).sum(),
            expirations: namespaces.iter().map(|n| n.expirations).sum(),
            entries: namespaces.iter().map(|n| n.entries).sum(),
            raw_bytes: namespaces.iter().map(|n| n.raw_bytes).sum(),
            stored_bytes: namespaces.iter().map(|n| n.stored_bytes).sum(),
            namespaces,
            get_latency: self.get_latency.summary(),
            put_latency: self.put_latency.summary(),
        }
    }
}
