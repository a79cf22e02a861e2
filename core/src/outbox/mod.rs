//! The outbox: the durable queue of mutations waiting to be uploaded.
//!
//! The app hands an item to [`Outbox::enqueue`] and forgets about it. From that moment the
//! outbox owns it, and the contract is simple: **the item is delivered or it stays visible**.
//!
//! - `enqueue` returns the item's id only after the row is committed (WAL), so an id the app
//!   has seen survives an app kill or crash.
//! - Every item is in one of three states. `pending` items wait for their tier's turn;
//!   [`Outbox::next_batch`] moves up to 100 of them to `in_flight`. An acknowledgement
//!   ([`Outbox::ack`]) deletes them; a transient failure ([`Outbox::fail`]) puts them back to
//!   `pending` with a later `next_attempt_at`, on an exponential schedule (1 s, ×2, jitter,
//!   capped) — there is no attempt limit, so **no item is ever dropped because retries ran out**.
//!   A permanent rejection by the server ([`Outbox::reject`]) moves the item to `dead`, the
//!   dead-letter lane, where it stays until the app retries or discards it explicitly.
//! - Items found `in_flight` when the outbox opens were interrupted by a crash; they go back to
//!   `pending`, keeping their place. The server deduplicates by id, so sending them again is safe.
//!
//! Order: tier 1 before tier 2 before 3 before 4; within a tier, strictly FIFO. A tier with a
//! batch in flight hands out nothing more until that batch is settled, and a tier whose oldest
//! item is backing off waits as a whole, so a later item never overtakes an earlier one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use kryonix_protocol::wire::Op;
use kryonix_protocol::{KeyError, Namespace, TenantId, TenantKey, Tier};
use rusqlite::{OptionalExtension, Row, params};
use uuid::Uuid;

use crate::clock::{Clock, Millis, duration_ms};
use crate::store::{Store, StoreError};

/// Most items handed out by one [`Outbox::next_batch`].
pub const MAX_BATCH: usize = 100;

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("invalid key: {0}")]
    InvalidKey(#[from] KeyError),
    #[error("payload of {size} bytes is over the {max}-byte limit")]
    PayloadTooLarge { size: usize, max: usize },
    #[error("no outbox item {0}")]
    NotFound(ItemId),
    #[error("outbox row is unreadable: {0}")]
    BadRow(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for OutboxError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.into())
    }
}

type Result<T, E = OutboxError> = std::result::Result<T, E>;

/// An item's client-made id (UUIDv7: unique, and roughly time-ordered for log readers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemId(pub Uuid);

impl ItemId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for ItemId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for ItemId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl std::str::FromStr for ItemId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// The exponential schedule for transient failures.
#[derive(Debug, Clone, Copy)]
pub struct RetrySchedule {
    pub min_delay: Duration,
    pub factor: f32,
    pub max_delay: Duration,
    pub jitter: bool,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_secs(1),
            factor: 2.0,
            max_delay: Duration::from_secs(15 * 60),
            jitter: true,
        }
    }
}

impl RetrySchedule {
    /// The wait before attempt number `attempt + 1`, after `attempt` failures (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_factor(self.factor)
            .with_max_delay(self.max_delay)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        let steps = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        // With no maximum number of times the iterator never ends; the cap is the fallback anyway.
        builder.build().nth(steps).unwrap_or(self.max_delay)
    }
}

/// Outbox settings.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// The tenant the device syncs as: keys are validated as `tenant:{tenant}:{ns}:{key}`.
    pub tenant: TenantId,
    pub max_payload_bytes: usize,
    pub retry: RetrySchedule,
}

impl OutboxConfig {
    pub fn new(tenant: TenantId) -> Self {
        Self {
            tenant,
            max_payload_bytes: 1024 * 1024,
            retry: RetrySchedule::default(),
        }
    }
}

/// An item to enqueue.
#[derive(Debug, Clone, Copy)]
pub struct NewItem<'a> {
    pub namespace: Namespace,
    pub key: &'a str,
    pub op: Op,
    pub payload: &'a [u8],
    pub tier: Tier,
}

/// A queued item as handed out for upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub id: ItemId,
    pub tier: Tier,
    pub namespace: Namespace,
    pub key: String,
    pub op: Op,
    pub payload: Vec<u8>,
    pub created_at: Millis,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// An item the server refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub item: OutboxItem,
    pub code: String,
    pub reason: String,
    pub dead_at: Millis,
}

/// A set of tiers (which ones a call may touch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierSet(u8);

impl TierSet {
    pub const ALL: Self = Self(0b1111);
    pub const NONE: Self = Self(0);

    pub fn of(tiers: &[Tier]) -> Self {
        Self(
            tiers
                .iter()
                .fold(0, |bits, t| bits | (1 << (t.number() - 1))),
        )
    }

    pub fn contains(self, tier: Tier) -> bool {
        self.0 & (1 << (tier.number() - 1)) != 0
    }

    pub fn with(self, tier: Tier) -> Self {
        Self(self.0 | (1 << (tier.number() - 1)))
    }

    pub fn iter(self) -> impl Iterator<Item = Tier> {
        Tier::ALL.into_iter().filter(move |t| self.contains(*t))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Queue figures for one tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Items waiting (pending or in flight).
    pub depth: u64,
    pub in_flight: u64,
    pub dead: u64,
    /// Age of the oldest waiting item, in milliseconds (0 when empty).
    pub oldest_age_ms: Millis,
    /// When the tier's head may next be sent (`None` when nothing is pending).
    pub next_attempt_at: Option<Millis>,
}

/// Queue figures for all tiers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub tiers: BTreeMap<Tier, TierStats>,
}

impl OutboxStats {
    pub fn tier(&self, tier: Tier) -> TierStats {
        self.tiers.get(&tier).copied().unwrap_or_default()
    }

    /// Items waiting across all tiers.
    pub fn depth(&self) -> u64 {
        self.tiers.values().map(|t| t.depth).sum()
    }
}

/// The durable upload queue.
#[derive(Debug, Clone)]
pub struct Outbox {
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    config: OutboxConfig,
}

const STATE_PENDING: &str = "pending";
const STATE_IN_FLIGHT: &str = "in_flight";
const STATE_DEAD: &str = "dead";

const ITEM_COLUMNS: &str = "id, tier, namespace, key, op, payload, created_at, attempts";

impl Outbox {
    /// Opens the outbox on `store`, returning items a crash left in flight to `pending`.
    pub fn open(store: Arc<Store>, clock: Arc<dyn Clock>, config: OutboxConfig) -> Result<Self> {
        let resumed = store.write(|tx| {
            tx.execute(
                "UPDATE outbox SET state = 'pending' WHERE state = 'in_flight'",
                [],
            )
            .map_err(OutboxError::from)
        })?;
        if resumed > 0 {
            tracing::info!(
                resumed,
                "outbox: items interrupted in flight are pending again"
            );
        }
        Ok(Self {
            store,
            clock,
            config,
        })
    }

    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }

    fn validate(&self, item: &NewItem<'_>) -> Result<()> {
        TenantKey::new(&self.config.tenant, item.namespace, item.key)?;
        if item.payload.len() > self.config.max_payload_bytes {
            return Err(OutboxError::PayloadTooLarge {
                size: item.payload.len(),
                max: self.config.max_payload_bytes,
            });
        }
        Ok(())
    }

    /// Queues one item; returns its id once the row is committed.
    pub fn enqueue(
        &self,
        namespace: Namespace,
        key: &str,
        op: Op,
        payload: &[u8],
        tier: Tier,
    ) -> Result<ItemId> {
        let ids = self.enqueue_many(&[NewItem {
            namespace,
            key,
            op,
            payload,
            tier,
        }])?;
        ids.into_iter()
            .next()
            .ok_or_else(|| OutboxError::BadRow("no id returned".into()))
    }

    /// Queues several items in one transaction: all or none.
    pub fn enqueue_many(&self, items: &[NewItem<'_>]) -> Result<Vec<ItemId>> {
        for item in items {
            self.validate(item)?;
        }
        let now = self.clock.now_ms();
        self.store.write(|tx| {
            let mut insert = tx.prepare_cached(
                "INSERT INTO outbox (id, tier, namespace, key, op, payload, created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            )?;
            let mut ids = Vec::with_capacity(items.len());
            for item in items {
                let id = ItemId::new();
                insert.execute(params![
                    id.to_string(),
                    item.tier.number(),
                    item.namespace.id(),
                    item.key,
                    item.op.as_str(),
                    item.payload,
                    now,
                ])?;
                ids.push(id);
            }
            Ok(ids)
        })
    }

    /// Hands out up to `max` (≤ 100) due items of the allowed tiers, highest tier first, FIFO
    /// within a tier, and marks them in flight. The caller must settle every returned item with
    /// [`ack`](Self::ack), [`fail`](Self::fail), [`reject`](Self::reject) or
    /// [`release`](Self::release).
    pub fn next_batch(&self, max: usize, tiers: TierSet) -> Result<Vec<OutboxItem>> {
        let max = max.min(MAX_BATCH);
        let now = self.clock.now_ms();
        self.store.write(|tx| {
            let mut batch = Vec::new();
            for tier in tiers.iter() {
                let room = max - batch.len();
                if room == 0 {
                    break;
                }
                let busy: bool = tx
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM outbox WHERE state = 'in_flight' AND tier = ?1)",
                    )?
                    .query_row([tier.number()], |r| r.get(0))?;
                if busy {
                    continue;
                }
                let head_due: Option<Millis> = tx
                    .prepare_cached(
                        "SELECT next_attempt_at FROM outbox WHERE state = 'pending' AND tier = ?1
                         ORDER BY seq LIMIT 1",
                    )?
                    .query_row([tier.number()], |r| r.get(0))
                    .optional()?;
                match head_due {
                    Some(at) if at <= now => {}
                    _ => continue,
                }
                let mut select = tx.prepare_cached(&format!(
                    "SELECT seq, {ITEM_COLUMNS} FROM outbox WHERE state = 'pending' AND tier = ?1
                     ORDER BY seq LIMIT ?2"
                ))?;
                let mut rows = select.query(params![tier.number(), room as i64])?;
                let mut last_seq = None;
                while let Some(row) = rows.next()? {
                    last_seq = Some(row.get::<_, i64>(0)?);
                    batch.push(item_from_row(row, 1)?);
                }
                if let Some(last) = last_seq {
                    tx.prepare_cached(
                        "UPDATE outbox SET state = 'in_flight'
                         WHERE state = 'pending' AND tier = ?1 AND seq <= ?2",
                    )?
                    .execute(params![tier.number(), last])?;
                }
            }
            Ok(batch)
        })
    }

    /// The items were stored by the server (`accepted` or `duplicate`): forget them.
    pub fn ack(&self, ids: &[ItemId]) -> Result<usize> {
        self.store.write(|tx| {
            let mut delete =
                tx.prepare_cached("DELETE FROM outbox WHERE id = ?1 AND state != 'dead'")?;
            let mut removed = 0;
            for id in ids {
                removed += delete.execute([id.to_string()])?;
            }
            Ok(removed)
        })
    }

    /// A transient failure: the items go back to `pending`, due after the retry schedule's delay
    /// for their attempt count, or after `retry_after` (a server hint) if that is later.
    pub fn fail(&self, ids: &[ItemId], error: &str, retry_after: Option<Duration>) -> Result<()> {
        let now = self.clock.now_ms();
        self.store.write(|tx| {
            // One delay for the whole batch keeps the batch together (and FIFO) on its next try.
            let attempts: u32 = match ids.first() {
                Some(id) => tx
                    .prepare_cached("SELECT attempts FROM outbox WHERE id = ?1")?
                    .query_row([id.to_string()], |r| r.get(0))
                    .optional()?
                    .unwrap_or(0),
                None => return Ok(()),
            };
            let mut delay = self.config.retry.delay(attempts + 1);
            if let Some(hint) = retry_after {
                delay = delay.max(hint);
            }
            set_pending(tx, ids, now + duration_ms(delay), Some(error), true)
        })
    }

    /// Puts items back to `pending`, due at `at`, counting a failed attempt (the sync engine's
    /// "wait for the tier's next slot" after its in-call retries are spent).
    pub fn reschedule(&self, ids: &[ItemId], at: Millis, error: &str) -> Result<()> {
        self.store
            .write(|tx| set_pending(tx, ids, at, Some(error), true))
    }

    /// Puts in-flight items back to `pending`, due now, without counting an attempt (the upload
    /// was never tried, e.g. the network went away first).
    pub fn release(&self, ids: &[ItemId]) -> Result<()> {
        let now = self.clock.now_ms();
        self.store
            .write(|tx| set_pending(tx, ids, now, None, false))
    }

    /// Makes the pending items of `tiers` due now, cutting short a backoff or a wait for the
    /// tier's next slot (the app asked to sync them). Order, attempts and states are unchanged.
    /// Returns how many items were waiting.
    pub fn make_due(&self, tiers: TierSet) -> Result<usize> {
        let now = self.clock.now_ms();
        self.store.write(|tx| {
            let mut update = tx.prepare_cached(
                "UPDATE outbox SET next_attempt_at = ?2
                 WHERE state = 'pending' AND tier = ?1 AND next_attempt_at > ?2",
            )?;
            let mut changed = 0;
            for tier in tiers.iter() {
                changed += update.execute(params![tier.number(), now])?;
            }
            Ok(changed)
        })
    }

    /// A permanent rejection: the item moves to the dead-letter lane with the server's reason.
    pub fn reject(&self, id: ItemId, code: &str, reason: &str) -> Result<()> {
        let now = self.clock.now_ms();
        let changed = self.store.write(|tx| {
            tx.prepare_cached(
                "UPDATE outbox SET state = 'dead', dead_code = ?2, dead_reason = ?3, dead_at = ?4
                 WHERE id = ?1",
            )?
            .execute(params![id.to_string(), code, reason, now])
            .map_err(OutboxError::from)
        })?;
        if changed == 0 {
            return Err(OutboxError::NotFound(id));
        }
        tracing::warn!(%id, code, reason, "outbox: item rejected by the server, moved to dead letters");
        Ok(())
    }

    /// Removes a still-pending item (the app changed its mind before it was sent). Returns
    /// `false` if the item is in flight, dead or gone.
    pub fn cancel(&self, id: ItemId) -> Result<bool> {
        self.store.write(|tx| {
            let n = tx.execute(
                "DELETE FROM outbox WHERE id = ?1 AND state = 'pending'",
                [id.to_string()],
            )?;
            Ok(n == 1)
        })
    }

    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.store.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS}, dead_code, dead_reason, dead_at FROM outbox
                 WHERE state = 'dead' ORDER BY seq"
            ))?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(DeadLetter {
                    item: item_from_row(row, 0)?,
                    code: row.get::<_, Option<String>>(8)?.unwrap_or_default(),
                    reason: row.get::<_, Option<String>>(9)?.unwrap_or_default(),
                    dead_at: row.get::<_, Option<i64>>(10)?.unwrap_or_default(),
                });
            }
            Ok(out)
        })
    }

    /// Sends a dead letter again: back to `pending` at the end of its tier's queue position it
    /// already had, due now, attempts reset.
    pub fn retry_dead(&self, id: ItemId) -> Result<()> {
        let now = self.clock.now_ms();
        let n = self.store.write(|tx| {
            tx.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?2,
                        dead_code = NULL, dead_reason = NULL, dead_at = NULL
                 WHERE id = ?1 AND state = 'dead'",
                params![id.to_string(), now],
            )
            .map_err(OutboxError::from)
        })?;
        if n == 0 {
            Err(OutboxError::NotFound(id))
        } else {
            Ok(())
        }
    }

    /// Deletes a dead letter for good — only ever on the app's explicit call.
    pub fn discard_dead(&self, id: ItemId) -> Result<()> {
        let n = self.store.write(|tx| {
            tx.execute(
                "DELETE FROM outbox WHERE id = ?1 AND state = 'dead'",
                [id.to_string()],
            )
            .map_err(OutboxError::from)
        })?;
        if n == 0 {
            Err(OutboxError::NotFound(id))
        } else {
            Ok(())
        }
    }

    /// Per-tier depth, in-flight and dead counts, oldest age and next due time.
    pub fn stats(&self) -> Result<OutboxStats> {
        let now = self.clock.now_ms();
        self.store.read(|conn| {
            let mut stats = OutboxStats::default();
            for tier in Tier::ALL {
                stats.tiers.insert(tier, TierStats::default());
            }
            let mut stmt = conn.prepare_cached(
                "SELECT tier, state, count(*), min(created_at) FROM outbox GROUP BY tier, state",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let tier = tier_from(row.get(0)?)?;
                let state: String = row.get(1)?;
                let count: u64 = row.get(2)?;
                let oldest: Millis = row.get(3)?;
                let entry = stats.tiers.entry(tier).or_default();
                match state.as_str() {
                    STATE_DEAD => entry.dead = count,
                    STATE_PENDING | STATE_IN_FLIGHT => {
                        entry.depth += count;
                        if state == STATE_IN_FLIGHT {
                            entry.in_flight = count;
                        }
                        entry.oldest_age_ms = entry.oldest_age_ms.max(now - oldest);
                    }
                    other => return Err(OutboxError::BadRow(format!("unknown state {other}"))),
                }
            }
            let mut head = conn.prepare_cached(
                "SELECT next_attempt_at FROM outbox WHERE state = 'pending' AND tier = ?1
                 ORDER BY seq LIMIT 1",
            )?;
            for (tier, entry) in stats.tiers.iter_mut() {
                entry.next_attempt_at = head.query_row([tier.number()], |r| r.get(0)).optional()?;
            }
            Ok(stats)
        })
    }

    /// Looks one item up, in any state (for the app's "is it sent yet?").
    pub fn get(&self, id: ItemId) -> Result<Option<(OutboxItem, ItemState)>> {
        self.store.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS}, state FROM outbox WHERE id = ?1"
            ))?;
            let mut rows = stmt.query([id.to_string()])?;
            match rows.next()? {
                None => Ok(None),
                Some(row) => {
                    let state = match row.get::<_, String>(8)?.as_str() {
                        STATE_PENDING => ItemState::Pending,
                        STATE_IN_FLIGHT => ItemState::InFlight,
                        STATE_DEAD => ItemState::Dead,
                        other => return Err(OutboxError::BadRow(format!("unknown state {other}"))),
                    };
                    Ok(Some((item_from_row(row, 0)?, state)))
                }
            }
        })
    }
}

/// Where an item is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemState {
    Pending,
    InFlight,
    Dead,
}

fn set_pending(
    tx: &rusqlite::Transaction<'_>,
    ids: &[ItemId],
    at: Millis,
    error: Option<&str>,
    count_attempt: bool,
) -> Result<()> {
    let mut update = tx.prepare_cached(
        "UPDATE outbox SET state = 'pending', next_attempt_at = ?2,
                last_error = coalesce(?3, last_error), attempts = attempts + ?4
         WHERE id = ?1 AND state != 'dead'",
    )?;
    for id in ids {
        update.execute(params![id.to_string(), at, error, i64::from(count_attempt)])?;
    }
    Ok(())
}

fn tier_from(n: u8) -> Result<Tier> {
    Tier::try_from(n).map_err(|e| OutboxError::BadRow(e.to_string()))
}

fn item_from_row(row: &Row<'_>, offset: usize) -> Result<OutboxItem> {
    let id: String = row.get(offset)?;
    let namespace: u8 = row.get(offset + 2)?;
    let op: String = row.get(offset + 4)?;
    Ok(OutboxItem {
        id: id
            .parse()
            .map_err(|e| OutboxError::BadRow(format!("id {id:?}: {e}")))?,
        tier: tier_from(row.get(offset + 1)?)?,
        namespace: Namespace::from_id(namespace).map_err(|e| OutboxError::BadRow(e.to_string()))?,
        key: row.get(offset + 3)?,
        op: Op::parse(&op).ok_or_else(|| OutboxError::BadRow(format!("op {op:?}")))?,
        payload: row.get(offset + 5)?,
        created_at: row.get(offset + 6)?,
        attempts: row.get(offset + 7)?,
    })
}

#[cfg(test)]
mod tests;
