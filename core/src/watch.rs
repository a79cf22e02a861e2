//! Live data: subscriptions to one cache key, a namespace, or a key prefix within a namespace.
//!
//! An app's UI should update by itself when a value changes, whoever changed it: the app (a put,
//! a delete, a write), the server (a pulled change), or time and space (an expiry noticed, an
//! eviction). The cache tells this registry after each transaction commits, and every
//! subscriber whose key or prefix matches is told in turn. Four rules shape it:
//!
//! - **Current value first.** A subscription begins with the state it watches (the key's value,
//!   or every live entry under the prefix), read from the same database snapshot the
//!   notifications continue from: nothing committed in between is missed or told twice.
//! - **Never blocking the writer.** Telling a subscriber is a short lock on its own pending
//!   changes and a wake-up; the writer never waits for a subscriber to read. Notices are sent
//!   after the commit (nothing that rolled back is ever told), from the committing thread.
//! - **Coalesced, latest per key.** Each subscriber holds at most one pending change per key, the
//!   newest: a pulled page of 100 changes is one batch, a key written 1000 times before the
//!   subscriber reads is one change, and a subscriber that never reads costs at most one value
//!   per key it watches.
//! - **Dropping ends it.** A dropped [`Watch`] (or a [`WatchCanceller`] called) leaves the
//!   registry at once; closing the cache ends every watch after what is pending.
//!
//! Matching is by full key (`tenant:{tenant}:{namespace}:{key}`, [`TenantKey`]): a key watch
//! compares it whole, a namespace or prefix watch compares its start, so tenants never see each
//! other's changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kryonix_protocol::{KeyError, Namespace, TenantId, TenantKey};
use tokio::sync::Notify;

/// Why a key changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The state when the watch began (`None` when the key had no value).
    Initial,
    /// Written on this device: a cache put, an agent write, a read-through fill.
    Put,
    /// Deleted on this device.
    Deleted,
    /// A change pulled from the server: a new value, or `None` for a delete.
    Pulled,
    /// Found expired by a read or a purge (an expired entry already reads as a miss; this is when
    /// the cache notices it).
    Expired,
    /// Evicted under the namespace's policy to make room.
    Evicted,
}

/// One key's new state, as a subscriber receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    /// The app's key, without tenant and namespace.
    pub key: String,
    /// The value now; `None` when the key has none (deleted, expired, evicted, never set).
    pub value: Option<Arc<[u8]>>,
    pub cause: Cause,
}

/// What one committed transaction changed for one key, before it is matched to subscribers.
#[derive(Debug, Clone)]
pub(crate) struct Notice {
    pub(crate) full_key: String,
    pub(crate) value: Option<Arc<[u8]>>,
    pub(crate) cause: Cause,
}

/// Which keys a subscription covers, as full keys.
#[derive(Debug, Clone)]
pub(crate) enum Filter {
    Key(String),
    Prefix(String),
}

impl Filter {
    fn matches(&self, full_key: &str) -> bool {
        match self {
            Self::Key(key) => key == full_key,
            Self::Prefix(prefix) => full_key.starts_with(prefix.as_str()),
        }
    }

    /// One key. Returns the filter and where the app's key starts in the full keys it matches.
    pub(crate) fn key(key: &TenantKey) -> (Self, usize) {
        let start = key.as_str().len() - key.key().len();
        (Self::Key(key.as_str().to_owned()), start)
    }

    /// Every key of `namespace` (and `tenant`) starting with `prefix` (every key when empty). An
    /// invalid prefix (a control character, too long for any key) is refused like a key.
    pub(crate) fn prefix(
        tenant: &TenantId,
        namespace: Namespace,
        prefix: &str,
    ) -> Result<(Self, usize), KeyError> {
        if !prefix.is_empty() {
            // A prefix obeys the rules of the keys it matches.
            TenantKey::new(tenant, namespace, prefix)?;
        }
        let mut full = TenantKey::namespace_prefix(tenant, namespace);
        let start = full.len();
        full.push_str(prefix);
        Ok((Self::Prefix(full), start))
    }

    /// The full-key range this filter covers: `[low, high)` in byte order, as SQLite's `BINARY`
    /// collation compares (`high` is `None` for a single key).
    pub(crate) fn range(&self) -> (&str, Option<Vec<u8>>) {
        match self {
            Self::Key(key) => (key, None),
            Self::Prefix(prefix) => {
                // Every string starting with `prefix` sorts before `prefix` with its last byte
                // raised by one. UTF-8 never contains 0xFF, so the raise never overflows.
                let mut high = prefix.as_bytes().to_vec();
                if let Some(last) = high.last_mut() {
                    *last = last.saturating_add(1);
                }
                (prefix, Some(high))
            }
        }
    }
}

/// The subscriptions of one cache.
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    subs: Mutex<Vec<Arc<Sub>>>,
    /// `subs.len()`, readable without the lock: a write with no subscriber collects nothing.
    count: AtomicUsize,
    next_id: AtomicU64,
    closed: AtomicBool,
}

/// One subscription: its filter and the changes it has not read yet.
#[derive(Debug)]
struct Sub {
    id: u64,
    filter: Filter,
    /// Where the app's key starts in the full keys this subscription matches.
    key_start: usize,
    pending: Mutex<Pending>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    /// At most one change per key, in the order keys first changed since the last read.
    changes: Vec<KeyChange>,
    /// App key → position in `changes`.
    index: HashMap<String, usize>,
    /// The initial state is not read yet: the first read returns even an empty batch.
    initial: bool,
    state: SubState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum SubState {
    #[default]
    Open,
    /// The cache closed: what is pending is still delivered, then the watch ends.
    Closed,
    /// Cancelled or dropped: the watch ends now, pending changes are dropped.
    Cancelled,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while a lock was held leaves the list or pending changes valid (each
    // update is a single push, insert or swap), so carry on.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pending {
    /// Records `change` as the key's newest state, replacing an older pending one in place.
    fn set(&mut self, change: KeyChange) {
        match self.index.get(&change.key) {
            Some(&at) => {
                if let Some(slot) = self.changes.get_mut(at) {
                    *slot = change;
                }
            }
            None => {
                self.index.insert(change.key.clone(), self.changes.len());
                self.changes.push(change);
            }
        }
    }

    fn take(&mut self) -> Option<Vec<KeyChange>> {
        if self.state == SubState::Cancelled || (self.changes.is_empty() && !self.initial) {
            return None;
        }
        self.initial = false;
        self.index.clear();
        Some(std::mem::take(&mut self.changes))
    }
}

impl Watchers {
    /// Whether anyone watches: transactions collect notices only then.
    pub(crate) fn active(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Live subscriptions.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Registers a subscription. The caller holds the cache's ledger lock, so no transaction
    /// commits between this and the snapshot the caller reads next. After [`Watchers::close`] the watch is born ended: its initial state, then `None`.
    pub(crate) fn subscribe(self: &Arc<Self>, filter: Filter, key_start: usize) -> Watch {
        let sub = Arc::new(Sub {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            filter,
            key_start,
            pending: Mutex::new(Pending {
                initial: true,
                ..Pending::default()
            }),
            wake: Notify::new(),
        });
        let mut subs = lock(&self.subs);
        // Checked under the list's lock: `close` sets the flag before taking the list, so a
        // watch is either taken by it or sees the flag.
        if self.closed.load(Ordering::Acquire) {
            lock(&sub.pending).state = SubState::Closed;
        } else {
            subs.push(sub.clone());
            self.count.store(subs.len(), Ordering::Release);
        }
        drop(subs);
        Watch {
            sub,
            watchers: self.clone(),
        }
    }

    fn unsubscribe(&self, id: u64) {
        let mut subs = lock(&self.subs);
        subs.retain(|s| s.id != id);
        self.count.store(subs.len(), Ordering::Release);
    }

    /// Tells every matching subscriber about one committed transaction: one batch each, at most
    /// one change per key. Never waits for a subscriber.
    pub(crate) fn publish(&self, notices: &[Notice]) {
        if notices.is_empty() {
            return;
        }
        let subs = lock(&self.subs).clone();
        for sub in subs {
            let mut told = false;
            let mut pending = lock(&sub.pending);
            for notice in notices.iter().filter(|n| sub.filter.matches(&n.full_key)) {
                let key = notice.full_key.get(sub.key_start..).unwrap_or_default();
                pending.set(KeyChange {
                    key: key.to_owned(),
                    value: notice.value.clone(),
                    cause: notice.cause,
                });
                told = true;
            }
            drop(pending);
            if told {
                sub.wake.notify_one();
            }
        }
    }

    /// Ends every watch once it has read what is pending; later subscriptions end at once.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let subs = std::mem::take(&mut *lock(&self.subs));
        self.count.store(0, Ordering::Release);
        for sub in subs {
            let mut pending = lock(&sub.pending);
            if pending.state == SubState::Open {
                pending.state = SubState::Closed;
            }
            drop(pending);
            sub.wake.notify_one();
        }
    }
}

/// A subscription to a key, a namespace or a key prefix. Read it with [`Watch::next`]; drop it
/// (or call a [`WatchCanceller`]) to end it.
#[derive(Debug)]
pub struct Watch {
    sub: Arc<Sub>,
    watchers: Arc<Watchers>,
}

impl Watch {
    /// Seeds the initial state read from the database (changes with `Cause::Initial`). A key
    /// that already has a pending change committed after that snapshot keeps it (it is newer).
    pub(crate) fn seed(&self, initial: Vec<KeyChange>) {
        let mut pending = lock(&self.sub.pending);
        for change in initial {
            if !pending.index.contains_key(&change.key) {
                pending.set(change);
            }
        }
    }

    /// The next batch: the initial state first (even when empty), then every key that changed
    /// since the previous batch, each once with its newest value. `None` once the watch has
    /// ended (cancelled, or the cache closed and everything pending was read).
    pub async fn next(&mut self) -> Option<Vec<KeyChange>> {
        loop {
            // Registered before looking, so a notice published in between still wakes us.
            let woken = self.sub.wake.notified();
            {
                let mut pending = lock(&self.sub.pending);
                if let Some(batch) = pending.take() {
                    return Some(batch);
                }
                if pending.state != SubState::Open {
                    return None;
                }
            }
            woken.await;
        }
    }

    /// What [`Watch::next`] would return now, without waiting: `None` when nothing is pending
    /// (or the watch has ended).
    pub fn try_next(&mut self) -> Option<Vec<KeyChange>> {
        lock(&self.sub.pending).take()
    }

    /// Whether the watch has ended: cancelled, or its cache closed.
    pub fn is_ended(&self) -> bool {
        lock(&self.sub.pending).state != SubState::Open
    }

    /// A handle that ends this watch from elsewhere (another task, an FFI handle).
    pub fn canceller(&self) -> WatchCanceller {
        WatchCanceller {
            sub: self.sub.clone(),
            watchers: self.watchers.clone(),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        cancel(&self.sub, &self.watchers);
    }
}

/// Ends a [`Watch`] from elsewhere: it leaves the registry at once, and its `next` returns
/// `None` (pending changes are dropped). Cancelling twice, or after the watch is gone, is fine.
#[derive(Debug, Clone)]
pub struct WatchCanceller {
    sub: Arc<Sub>,
    watchers: Arc<Watchers>,
}

impl WatchCanceller {
    pub fn cancel(&self) {
        cancel(&self.sub, &self.watchers);
    }
}

fn cancel(sub: &Sub, watchers: &Watchers) {
    watchers.unsubscribe(sub.id);
    let mut pending = lock(&sub.pending);
    pending.state = SubState::Cancelled;
    pending.changes.clear();
    pending.index.clear();
    drop(pending);
    sub.wake.notify_one();
}

#[cfg(test)]
mod tests;
