//! The in-memory usage ledger's bookkeeping: what one write transaction changes, and applying
//! it once the transaction has committed.
//!
//! The ledger exists so a put never scans `cache_entries` to learn whether it fits. To stay
//! exact it must never see a change that rolls back, so a transaction collects its row sizes in
//! a `Change` as it goes (several writes in one transaction see each other's bytes through it)
//! and the ledger takes the change only after the commit. A removal also records why the row
//! left (`Removal`), because the eviction and expiration counters are taken from the same
//! committed change and so can never count a removal that rolled back. For the same reason the
//! change also carries, while anyone watches, the notices for the watchers (`crate::watch`): what
//! each key became and why, told only once the transaction has committed.

use std::sync::Arc;

use super::Cache;
use super::stats::{NS_COUNT, Usage};
use crate::watch::{Cause, Notice};

/// Net effect of one committed write transaction, applied to the ledger and the counters.
#[derive(Debug, Default, Clone)]
pub(super) struct Change {
    pub(super) usage: [UsageDelta; NS_COUNT],
    evicted: [u64; NS_COUNT],
    expired: [u64; NS_COUNT],
    /// What watchers are told after the commit; `None` while nobody watches, so a transaction
    /// nobody watches collects nothing.
    notices: Option<Vec<Notice>>,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct UsageDelta {
    entries: i64,
    pub(super) charged: i64,
    raw: i64,
    stored: i64,
}

/// The size columns of one row, as they count against the ledger.
#[derive(Debug, Clone, Copy)]
pub(super) struct RowSize {
    pub(super) namespace: usize,
    pub(super) charged: i64,
    pub(super) raw: i64,
    pub(super) stored: i64,
}

impl RowSize {
    pub(super) fn from_row(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Self> {
        let ns: i64 = row.get(first)?;
        Ok(Self {
            // The schema's CHECK keeps the column in 0..=15; anything else is ignored by the
            // ledger (`get_mut` below) instead of panicking.
            namespace: usize::try_from(ns).unwrap_or(usize::MAX),
            charged: row.get(first + 1)?,
            raw: row.get(first + 2)?,
            stored: row.get(first + 3)?,
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Removal {
    Evicted,
    Expired,
    Deleted,
}

impl Removal {
    /// What a watcher is told a removal of this kind was.
    fn cause(self) -> Cause {
        match self {
            Self::Evicted => Cause::Evicted,
            Self::Expired => Cause::Expired,
            Self::Deleted => Cause::Deleted,
        }
    }
}

impl Change {
    /// An empty change that collects notices when `watched`.
    pub(super) fn new(watched: bool) -> Self {
        Self {
            notices: watched.then(Vec::new),
            ..Self::default()
        }
    }

    /// Whether notices are collected (someone watches).
    pub(super) fn watched(&self) -> bool {
        self.notices.is_some()
    }

    /// Records what `full_key` became, for the watchers.
    pub(super) fn notice(&mut self, full_key: &str, value: Option<Arc<[u8]>>, cause: Cause) {
        if let Some(notices) = &mut self.notices {
            notices.push(Notice {
                full_key: full_key.to_owned(),
                value,
                cause,
            });
        }
    }

    /// A row removed for `why`, under `full_key`: the ledger and the watchers both hear of it.
    pub(super) fn removed(&mut self, row: RowSize, why: Removal, full_key: &str) {
        self.remove(row, why);
        self.notice(full_key, None, why.cause());
    }

    /// The notices collected, leaving none.
    pub(super) fn take_notices(&mut self) -> Vec<Notice> {
        self.notices.take().unwrap_or_default()
    }

    pub(super) fn add(&mut self, row: RowSize) {
        if let Some(d) = self.usage.get_mut(row.namespace) {
            d.entries += 1;
            d.charged += row.charged;
            d.raw += row.raw;
            d.stored += row.stored;
        }
    }

    /// Bytes this change gives back (charged bytes of removed rows, net of rows added).
    pub(super) fn freed(&self) -> u64 {
        let net: i64 = self.usage.iter().map(|d| d.charged).sum();
        u64::try_from(-net).unwrap_or(0)
    }

    pub(super) fn remove(&mut self, row: RowSize, why: Removal) {
        let ns = row.namespace;
        if let Some(d) = self.usage.get_mut(ns) {
            d.entries -= 1;
            d.charged -= row.charged;
            d.raw -= row.raw;
            d.stored -= row.stored;
        }
        let counter = match why {
            Removal::Evicted => self.evicted.get_mut(ns),
            Removal::Expired => self.expired.get_mut(ns),
            Removal::Deleted => None,
        };
        if let Some(c) = counter {
            *c += 1;
        }
    }
}

impl Cache {
    /// Takes a committed change into the ledger and the eviction and expiration counters.
    pub(super) fn apply(&self, ledger: &mut [Usage; NS_COUNT], change: &Change) {
        for (ns, (usage, delta)) in ledger.iter_mut().zip(&change.usage).enumerate() {
            usage.entries = usage.entries.saturating_add_signed(delta.entries);
            usage.charged = usage.charged.saturating_add_signed(delta.charged);
            usage.raw = usage.raw.saturating_add_signed(delta.raw);
            usage.stored = usage.stored.saturating_add_signed(delta.stored);
            if let Some(&n) = change.evicted.get(ns).filter(|n| **n > 0) {
                self.stats.evicted(ns, n);
            }
            if let Some(&n) = change.expired.get(ns).filter(|n| **n > 0) {
                self.stats.expired(ns, n);
            }
        }
    }
}
