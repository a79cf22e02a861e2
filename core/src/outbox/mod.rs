//! The outbox: the durable queue of mutations waiting to be uploaded.
//!
//! The app hands an item to [`Outbox::enqueue`] and forgets about it. From that moment the
//! outbox owns it, and the contract is simple: **the item is delivered or it stays visible**.
//!
//! - `enqueue` returns the item's id only after the row is committed (WAL), so an id the app
//!   has seen survives an app kill or crash.
//! - Every item is in one of three states ([`ItemState`]). `pending` items wait for their tier's
//!   turn; [`Outbox::next_batch`] moves up to 100 of them to `in_flight`. What happens next is
//!   the sync engine's decision, which it hands over as a [`Write`] for [`Outbox::apply`]: items
//!   the server stored are deleted, items it rejected for good move to `dead` (the dead-letter
//!   lane, where they stay until the app retries or discards them), and after a retryable
//!   failure the batch goes back to `pending` with the `next_attempt_at` the engine chose. There
//!   is no attempt limit: **no item is ever dropped because retries ran out**.
//! - Items found `in_flight` when the outbox opens were interrupted by a crash; they go back to
//!   `pending`, keeping their place. The server deduplicates by id, so sending them again is safe.
//!
//! Order: tier 1 before tier 2 before 3 before 4; within a tier, strictly FIFO. A tier with a
//! batch in flight hands out nothing more until that batch is settled, and a tier whose oldest
//! item is backing off waits as a whole, so a later item never overtakes an earlier one.
//!
//! # Numbering: exactly-once without a marker per item
//!
//! Every item is numbered in the transaction that inserts it: `seq` grows strictly per
//! (producer, tier), where the producer is a random id this outbox keeps in its database. The
//! server keeps only the last number it stored per producer and tier and stores an item only
//! above it, so a resent batch answers `duplicate` (Kafka's idempotent producer, KIP-98). A tier
//! is handed out in number order, and a dead letter the app retries gets a new number (it was
//! never stored, and its old number may now be below the server's).
//!
//! A phone may restore this file from a backup, rolling the numbering back while the server
//! remembers further. New items would then reuse numbers the server has seen and be taken for
//! duplicates. So each session says hello before its first push (the engine sees to it): the
//! outbox remembers the numbering as it stood when the database was first opened since the
//! last hello (`unverified_from`); no push happens in between, so a server ahead of it can only
//! mean a restored file. [`Write::Reconcile`] then moves every item numbered since to a new
//! producer, numbered from 1, and leaves the older ones under the old producer, where the
//! server's numbers tell which it already has (see `docs/sync-protocol.md`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kryonix_protocol::wire::{MAX_PUSH_ITEMS, MAX_VALUE_BYTES, Op};
use kryonix_protocol::{KeyError, Namespace, TenantId, TenantKey, Tier};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{OptionalExtension, Row, ToSql, Transaction, params};
use uuid::Uuid;

use crate::clock::{Clock, Millis, duration_ms};
use crate::store::{Store, StoreError};

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("invalid key: {0}")]
    InvalidKey(#[from] KeyError),
    #[error("payload of {size} bytes is over the {max}-byte limit")]
    PayloadTooLarge { size: usize, max: usize },
    #[error("namespace {0} is internal to the server; items cannot be uploaded to it")]
    InternalNamespace(Namespace),
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

/// Outbox settings.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// The tenant the device syncs as: keys are validated as `tenant:{tenant}:{ns}:{key}`.
    pub tenant: TenantId,
    /// Largest payload `enqueue` accepts: by default the server's limit, so an item the server
    /// would refuse is refused here, where the app can still act on it.
    pub max_payload_bytes: usize,
}

impl OutboxConfig {
    pub fn new(tenant: TenantId) -> Self {
        Self {
            tenant,
            max_payload_bytes: MAX_VALUE_BYTES,
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
    /// The producer that numbered the item (every item of a batch has the same).
    pub producer: String,
    /// The item's number in its producer's tier.
    pub seq: u64,
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
    /// Waiting items older than the tier's freshness TTL ([`Tier::freshness_ttl`]): data the
    /// server should have had by now.
    pub overdue: u64,
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
    /// The server's value limit from its last hello; 0 while unknown.
    server_max_payload: Arc<AtomicUsize>,
}

/// Where an item is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemState {
    /// Waiting for its tier's turn (or for its backoff to pass).
    Pending,
    /// Handed out in a batch that is not settled yet.
    InFlight,
    /// Refused for good by the server: in the dead-letter lane.
    Dead,
}

impl ItemState {
    /// The word stored in the `state` column (the schema's CHECK lists the same three).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InFlight => "in_flight",
            Self::Dead => "dead",
        }
    }
}

impl ToSql for ItemState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for ItemState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "pending" => Ok(Self::Pending),
            "in_flight" => Ok(Self::InFlight),
            "dead" => Ok(Self::Dead),
            other => Err(FromSqlError::Other(
                format!("unknown outbox state {other:?}").into(),
            )),
        }
    }
}

/// An item the server refused for good, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub id: ItemId,
    pub code: String,
    pub reason: String,
}

/// A change to the queue that the sync engine decided on, as plain data: the engine never
/// touches SQLite, its driver hands these to [`Outbox::apply`].
///
/// Every write names a tier rather than listing the in-flight ids: a tier has at most one batch
/// in flight, so "the in-flight items of tier 2" is exactly the batch the engine asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// The server answered the tier's batch: delete `stored`, dead-letter `rejected`, and put
    /// whatever the answer did not mention back to `pending`, due at `retry_at`, one attempt
    /// counted. Only items of the tier that are in flight are touched, so an answer naming
    /// other ids changes nothing.
    Settle {
        tier: Tier,
        stored: Vec<ItemId>,
        rejected: Vec<Rejection>,
        retry_at: Millis,
    },
    /// The tier's batch failed: back to `pending`, due at `at`, one attempt counted.
    Reschedule {
        tier: Tier,
        at: Millis,
        error: String,
    },
    /// The tier's batch goes back to `pending`, due now, no attempt counted (it was never
    /// refused: too large as a whole, or left in flight by a write that failed).
    Release { tier: Tier },
    /// The server's answer to this session's hello: the last number it stored per tier (index 0
    /// is tier 1) for the current producer. A server ahead of the numbering as it stood when the
    /// session opened means the database was restored from an older copy: every item numbered
    /// since moves to a new producer. Otherwise the numbering is confirmed.
    Reconcile { last_seq: [u64; 4] },
    /// The pending items of these tiers are due now (the app asked): backoffs and waits for a
    /// tier's next slot are cut short. Order, attempts and states are unchanged.
    MakeDue(TierSet),
    /// The tier's pending items wait until at least `at` (the session's hello failed before
    /// they could be sent): no attempt counted.
    Defer { tier: Tier, at: Millis },
    /// The tier's pending items wait no later than `at`: the wall clock was set back, and a
    /// retry it scheduled now lies further ahead than any wait the engine would choose.
    /// Order, attempts and states are unchanged.
    Clamp { tier: Tier, at: Millis },
}

/// What [`Outbox::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Items deleted because the server has them.
    pub stored: usize,
    /// Items moved to the dead-letter lane (the observer is told about each).
    pub dead_lettered: Vec<Rejection>,
    /// Items put back to `pending` without an attempt counted.
    pub released: usize,
    /// Items put back to `pending` with an attempt counted (a failure, or left out of an
    /// answer), or made due.
    pub rescheduled: usize,
    /// The new producer, when a hello found the database restored from an older copy.
    pub new_producer: Option<String>,
    /// Items moved to that producer.
    pub renumbered: usize,
}

/// Brings the tier's pending items that are due later than `at` forward to `at` (an app's
/// request, or a clock set back); order, attempts and states are unchanged. Returns how many.
fn due_by(tx: &Transaction<'_>, tier: Tier, at: Millis) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "UPDATE outbox SET next_attempt_at = ?3
         WHERE state = ?1 AND tier = ?2 AND next_attempt_at > ?3",
    )?
    .execute(params![ItemState::Pending, tier.number(), at])
}

/// Meta key of the largest value the server accepts, as its last hello said.
const SERVER_MAX_PAYLOAD_KEY: &str = "server_max_value_bytes";

/// The columns [`item_from_row`] reads, from `outbox AS o` joined with its producer `p`.
const ITEM_COLUMNS: &str =
    "o.id, o.tier, o.namespace, o.key, o.op, o.payload, o.created_at, o.attempts, p.id, o.tier_seq";
const ITEM_FROM: &str = "outbox AS o JOIN outbox_producers AS p ON p.gen = o.producer_gen";
/// Columns read by [`item_from_row`].
const ITEM_COLUMN_COUNT: usize = 10;

impl Outbox {
    /// Opens the outbox on `store`, returning items a crash left in flight to `pending`, and
    /// noting where the numbering stands until the server confirms it (the session's hello).
    pub fn open(store: Arc<Store>, clock: Arc<dyn Clock>, config: OutboxConfig) -> Result<Self> {
        let resumed = store.write(|tx| {
            // Only the first open since the last hello counts: a file restored from a backup
            // and opened twice before reaching the server must still compare against the
            // numbering it was restored with.
            tx.execute(
                "UPDATE outbox_tiers SET unverified_from = next_seq - 1 WHERE unverified_from IS NULL",
                [],
            )?;
            tx.execute(
                "UPDATE outbox SET state = ?1 WHERE state = ?2",
                params![ItemState::Pending, ItemState::InFlight],
            )
            .map_err(OutboxError::from)
        })?;
        if resumed > 0 {
            tracing::info!(
                resumed,
                "outbox: items interrupted in flight are pending again"
            );
        }
        // What the server said at the last hello; unknown (0) on a new database.
        let server_max = store.read(|conn| {
            Ok::<_, OutboxError>(
                Store::meta_get(conn, SERVER_MAX_PAYLOAD_KEY)?
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0),
            )
        })?;
        Ok(Self {
            store,
            clock,
            config,
            server_max_payload: Arc::new(AtomicUsize::new(server_max)),
        })
    }

    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }

    /// The current producer id: new items are numbered under it.
    pub fn producer(&self) -> Result<String> {
        self.store.read(|conn| Ok(current_producer(conn)?.1))
    }

    fn validate(&self, item: &NewItem<'_>) -> Result<()> {
        TenantKey::new(&self.config.tenant, item.namespace, item.key)?;
        // The server refuses these for good; refusing here lets the app act on it at once.
        if item.namespace.is_internal() {
            return Err(OutboxError::InternalNamespace(item.namespace));
        }
        let max = self.max_payload_bytes();
        if item.payload.len() > max {
            return Err(OutboxError::PayloadTooLarge {
                size: item.payload.len(),
                max,
            });
        }
        Ok(())
    }

    /// The largest payload `enqueue` accepts now: the configured limit, lowered to the server's
    /// own once a hello has told it.
    pub fn max_payload_bytes(&self) -> usize {
        match self.server_max_payload.load(Ordering::Relaxed) {
            0 => self.config.max_payload_bytes,
            server => server.min(self.config.max_payload_bytes),
        }
    }

    /// Records the largest value the server accepts (its hello says so), for this session and
    /// the next ones: from now on `enqueue` refuses what the server would dead-letter.
    pub fn set_server_limit(&self, bytes: u64) -> Result<()> {
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX).max(1);
        if self.server_max_payload.swap(bytes, Ordering::Relaxed) != bytes {
            self.store.write(|tx| {
                Store::meta_set(tx, SERVER_MAX_PAYLOAD_KEY, bytes.to_string().as_bytes())
                    .map_err(OutboxError::from)
            })?;
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
            let (generation, _) = current_producer(tx)?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO outbox
                    (id, tier, namespace, key, op, payload, created_at, next_attempt_at, producer_gen, tier_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9)",
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
                    generation,
                    take_number(tx, item.tier)?,
                ])?;
                ids.push(id);
            }
            Ok(ids)
        })
    }

    /// Hands out up to `max` (at most the protocol's [`MAX_PUSH_ITEMS`]) due items of the
    /// allowed tiers, highest tier first, FIFO within a tier, and marks them in flight. The
    /// caller must settle every returned item ([`Outbox::apply`], or [`ack`](Self::ack) and
    /// [`reject`](Self::reject)).
    pub fn next_batch(&self, max: usize, tiers: TierSet) -> Result<Vec<OutboxItem>> {
        let max = max.min(MAX_PUSH_ITEMS);
        let now = self.clock.now_ms();
        self.store.write(|tx| {
            let mut batch = Vec::new();
            for tier in tiers.iter() {
                let room = max - batch.len();
                if room == 0 {
                    break;
                }
                take_tier(tx, tier, room, now, &mut batch)?;
            }
            Ok(batch)
        })
    }

    /// Carries out one decision of the sync engine, in one transaction.
    pub fn apply(&self, write: &Write) -> Result<Applied> {
        let now = self.clock.now_ms();
        self.store.write(|tx| {
            let mut applied = Applied::default();
            match write {
                Write::Settle {
                    tier,
                    stored,
                    rejected,
                    retry_at,
                } => {
                    applied.stored = delete_in_flight(tx, *tier, stored)?;
                    for rejection in rejected {
                        if dead_letter(tx, Some(*tier), rejection, now)? {
                            applied.dead_lettered.push(rejection.clone());
                        }
                    }
                    applied.rescheduled = back_to_pending(
                        tx,
                        *tier,
                        *retry_at,
                        Some("omitted from the server's answer"),
                        true,
                    )?;
                }
                Write::Reschedule { tier, at, error } => {
                    applied.rescheduled = back_to_pending(tx, *tier, *at, Some(error), true)?;
                }
                Write::Release { tier } => {
                    applied.released = back_to_pending(tx, *tier, now, None, false)?;
                }
                Write::Defer { tier, at } => {
                    applied.rescheduled = tx
                        .prepare_cached(
                            "UPDATE outbox SET next_attempt_at = max(next_attempt_at, ?3)
                             WHERE state = ?1 AND tier = ?2",
                        )?
                        .execute(params![ItemState::Pending, tier.number(), at])?;
                }
                Write::Reconcile { last_seq } => {
                    let (producer, renumbered) = reconcile(tx, last_seq)?;
                    applied.new_producer = producer;
                    applied.renumbered = renumbered;
                }
                Write::Clamp { tier, at } => {
                    applied.rescheduled = due_by(tx, *tier, *at)?;
                }
                Write::MakeDue(tiers) => {
                    for tier in tiers.iter() {
                        applied.rescheduled += due_by(tx, tier, now)?;
                    }
                }
            }
            Ok(applied)
        })
    }

    /// The items were stored by the server (`accepted` or `duplicate`): forget them. Dead
    /// letters are never removed this way. Returns how many were removed.
    pub fn ack(&self, ids: &[ItemId]) -> Result<usize> {
        self.store.write(|tx| {
            let mut delete =
                tx.prepare_cached("DELETE FROM outbox WHERE id = ?1 AND state != ?2")?;
            let mut removed = 0;
            for id in ids {
                removed += delete.execute(params![id.to_string(), ItemState::Dead])?;
            }
            Ok(removed)
        })
    }

    /// A permanent rejection: the item moves to the dead-letter lane with the server's reason.
    pub fn reject(&self, id: ItemId, code: &str, reason: &str) -> Result<()> {
        let now = self.clock.now_ms();
        let rejection = Rejection {
            id,
            code: code.to_owned(),
            reason: reason.to_owned(),
        };
        let moved = self
            .store
            .write(|tx| dead_letter(tx, None, &rejection, now))?;
        if moved {
            Ok(())
        } else {
            Err(OutboxError::NotFound(id))
        }
    }

    /// Removes an item the server cannot have yet (the app changed its mind before it was
    /// sent). Returns `false` if it is in flight, was ever tried (the server may have stored it
    /// and only the answer was lost), is dead or gone.
    pub fn cancel(&self, id: ItemId) -> Result<bool> {
        self.store.write(|tx| {
            let n = tx.execute(
                "DELETE FROM outbox WHERE id = ?1 AND state = ?2 AND attempts = 0",
                params![id.to_string(), ItemState::Pending],
            )?;
            Ok(n == 1)
        })
    }

    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.store.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS}, o.dead_code, o.dead_reason, o.dead_at FROM {ITEM_FROM}
                 WHERE o.state = ?1 ORDER BY o.seq"
            ))?;
            let mut rows = stmt.query([ItemState::Dead])?;
            let mut out = Vec::new();
            let n = ITEM_COLUMN_COUNT;
            while let Some(row) = rows.next()? {
                out.push(DeadLetter {
                    item: item_from_row(row, 0)?,
                    code: row.get::<_, Option<String>>(n)?.unwrap_or_default(),
                    reason: row.get::<_, Option<String>>(n + 1)?.unwrap_or_default(),
                    dead_at: row.get::<_, Option<i64>>(n + 2)?.unwrap_or_default(),
                });
            }
            Ok(out)
        })
    }

    /// Sends a dead letter again: back to `pending` with a new number under the current
    /// producer — so at the end of its tier's queue — due now, attempts reset. (Its old number
    /// may be below what the server has stored since, which would make it a "duplicate".)
    pub fn retry_dead(&self, id: ItemId) -> Result<()> {
        let now = self.clock.now_ms();
        let n = self.store.write(|tx| {
            let tier: Option<u8> = tx
                .prepare_cached("SELECT tier FROM outbox WHERE id = ?1 AND state = ?2")?
                .query_row(params![id.to_string(), ItemState::Dead], |r| r.get(0))
                .optional()?;
            let Some(tier) = tier else {
                return Ok(0);
            };
            let tier = tier_from(tier)?;
            let (generation, _) = current_producer(tx)?;
            let seq = take_number(tx, tier)?;
            tx.execute(
                "UPDATE outbox SET state = ?3, attempts = 0, next_attempt_at = ?2,
                        dead_code = NULL, dead_reason = NULL, dead_at = NULL,
                        producer_gen = ?5, tier_seq = ?6
                 WHERE id = ?1 AND state = ?4",
                params![
                    id.to_string(),
                    now,
                    ItemState::Pending,
                    ItemState::Dead,
                    generation,
                    seq
                ],
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
                "DELETE FROM outbox WHERE id = ?1 AND state = ?2",
                params![id.to_string(), ItemState::Dead],
            )
            .map_err(OutboxError::from)
        })?;
        if n == 0 {
            Err(OutboxError::NotFound(id))
        } else {
            Ok(())
        }
    }

    /// Per-tier depth, in-flight and dead counts, oldest age and next due time: the snapshot
    /// the sync engine decides on, read in one transaction.
    pub fn stats(&self) -> Result<OutboxStats> {
        let now = self.clock.now_ms();
        self.store.read(|conn| {
            // One deferred read transaction: the counts and the heads are of the same moment.
            let tx = conn.unchecked_transaction()?;
            let mut stats = OutboxStats::default();
            for tier in Tier::ALL {
                stats.tiers.insert(tier, TierStats::default());
            }
            // An item is overdue once it is older than its tier's freshness TTL: one cutoff
            // per tier, picked in SQL so the figure comes from the same scan as the counts.
            let mut stmt = tx.prepare_cached(
                "SELECT tier, state, count(*), min(created_at),
                        sum(created_at < CASE tier WHEN 1 THEN ?1 WHEN 2 THEN ?2
                                                   WHEN 3 THEN ?3 ELSE ?4 END)
                 FROM outbox GROUP BY tier, state",
            )?;
            let cutoff = |tier: Tier| now.saturating_sub(duration_ms(tier.freshness_ttl()));
            let mut rows = stmt.query(params![
                cutoff(Tier::Critical),
                cutoff(Tier::Preferences),
                cutoff(Tier::Application),
                cutoff(Tier::Background),
            ])?;
            while let Some(row) = rows.next()? {
                let tier = tier_from(row.get(0)?)?;
                let state: ItemState = row.get(1)?;
                let count: u64 = row.get(2)?;
                let oldest: Millis = row.get(3)?;
                let overdue: u64 = row.get(4)?;
                let entry = stats.tiers.entry(tier).or_default();
                match state {
                    ItemState::Dead => entry.dead = count,
                    ItemState::Pending | ItemState::InFlight => {
                        entry.depth += count;
                        entry.overdue += overdue;
                        if state == ItemState::InFlight {
                            entry.in_flight = count;
                        }
                        entry.oldest_age_ms = entry.oldest_age_ms.max(now - oldest);
                    }
                }
            }
            drop(rows);
            drop(stmt);
            let mut head = tx.prepare_cached(
                "SELECT next_attempt_at FROM outbox WHERE state = ?1 AND tier = ?2
                 ORDER BY producer_gen, tier_seq LIMIT 1",
            )?;
            for (tier, entry) in stats.tiers.iter_mut() {
                entry.next_attempt_at = head
                    .query_row(params![ItemState::Pending, tier.number()], |r| r.get(0))
                    .optional()?;
            }
            Ok(stats)
        })
    }

    /// Looks one item up, in any state (for the app's "is it sent yet?").
    pub fn get(&self, id: ItemId) -> Result<Option<(OutboxItem, ItemState)>> {
        self.store.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS}, o.state FROM {ITEM_FROM} WHERE o.id = ?1"
            ))?;
            let mut rows = stmt.query([id.to_string()])?;
            match rows.next()? {
                None => Ok(None),
                Some(row) => Ok(Some((item_from_row(row, 0)?, row.get(ITEM_COLUMN_COUNT)?))),
            }
        })
    }
}

/// Moves the tier's lowest-numbered due items (at most `room`, all of one producer, the
/// producer of `batch` if it has items already) to `in_flight` and appends them to `batch` —
/// unless the tier already has a batch in flight or its head is backing off, in which case
/// nothing behind the head may go either.
fn take_tier(
    tx: &rusqlite::Transaction<'_>,
    tier: Tier,
    room: usize,
    now: Millis,
    batch: &mut Vec<OutboxItem>,
) -> Result<()> {
    let busy: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM outbox WHERE state = ?1 AND tier = ?2)")?
        .query_row(params![ItemState::InFlight, tier.number()], |r| r.get(0))?;
    if busy {
        return Ok(());
    }
    let head: Option<(Millis, i64, String)> = tx
        .prepare_cached(
            "SELECT o.next_attempt_at, o.producer_gen, p.id
             FROM outbox AS o JOIN outbox_producers AS p ON p.gen = o.producer_gen
             WHERE o.state = ?1 AND o.tier = ?2
             ORDER BY o.producer_gen, o.tier_seq LIMIT 1",
        )?
        .query_row(params![ItemState::Pending, tier.number()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((due, generation, producer)) = head else {
        return Ok(());
    };
    // A batch travels under one producer id; another tier's producer waits for its own batch.
    if due > now
        || batch
            .first()
            .is_some_and(|first| first.producer != producer)
    {
        return Ok(());
    }
    let mut select = tx.prepare_cached(&format!(
        "SELECT {ITEM_COLUMNS} FROM {ITEM_FROM}
         WHERE o.state = ?1 AND o.tier = ?2 AND o.producer_gen = ?3
         ORDER BY o.tier_seq LIMIT ?4"
    ))?;
    let mut rows = select.query(params![
        ItemState::Pending,
        tier.number(),
        generation,
        i64::try_from(room).unwrap_or(i64::MAX)
    ])?;
    let mut last = None;
    while let Some(row) = rows.next()? {
        let item = item_from_row(row, 0)?;
        last = Some(item.seq);
        batch.push(item);
    }
    if let Some(last) = last {
        tx.prepare_cached(
            "UPDATE outbox SET state = ?1
             WHERE state = ?2 AND tier = ?3 AND producer_gen = ?4 AND tier_seq <= ?5",
        )?
        .execute(params![
            ItemState::InFlight,
            ItemState::Pending,
            tier.number(),
            generation,
            i64::try_from(last).unwrap_or(i64::MAX)
        ])?;
    }
    Ok(())
}

/// The current producer: the newest one.
fn current_producer(conn: &rusqlite::Connection) -> Result<(i64, String)> {
    Ok(conn
        .prepare_cached("SELECT gen, id FROM outbox_producers ORDER BY gen DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?)
}

/// Hands out the next number of `tier` under the current producer.
fn take_number(tx: &rusqlite::Transaction<'_>, tier: Tier) -> Result<i64> {
    Ok(tx
        .prepare_cached(
            "UPDATE outbox_tiers SET next_seq = next_seq + 1 WHERE tier = ?1 RETURNING next_seq - 1",
        )?
        .query_row([tier.number()], |r| r.get(0))?)
}

/// Applies the server's answer to the hello (see [`Write::Reconcile`]). Returns the new
/// producer and how many items moved to it, when the file turned out to be restored.
fn reconcile(
    tx: &rusqlite::Transaction<'_>,
    last_seq: &[u64; 4],
) -> Result<(Option<String>, usize)> {
    let mut unverified = [None::<i64>; 4];
    let mut restored = false;
    {
        let mut stmt = tx.prepare_cached("SELECT tier, unverified_from FROM outbox_tiers")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let tier = tier_from(row.get(0)?)?;
            let index = usize::from(tier.number() - 1);
            let from: Option<i64> = row.get(1)?;
            let server = last_seq.get(index).copied().unwrap_or(0);
            if let Some(slot) = unverified.get_mut(index) {
                *slot = from;
            }
            // No push happens between the open that set `unverified_from` and this hello, so
            // the server can only be ahead of it if the file went back in time.
            restored |= from.is_some_and(|from| i64::try_from(server).unwrap_or(i64::MAX) > from);
        }
    }
    let mut moved = 0;
    let mut new_producer = None;
    if restored {
        let (old_gen, old_id) = current_producer(tx)?;
        let id = Uuid::now_v7().simple().to_string();
        let generation = old_gen + 1;
        tx.execute(
            "INSERT INTO outbox_producers (gen, id) VALUES (?1, ?2)",
            params![generation, id],
        )?;
        for tier in Tier::ALL {
            let from = unverified
                .get(usize::from(tier.number() - 1))
                .copied()
                .flatten()
                .unwrap_or(i64::MAX);
            let ids: Vec<String> = tx
                .prepare_cached(
                    "SELECT id FROM outbox
                     WHERE tier = ?1 AND producer_gen = ?2 AND tier_seq > ?3 AND state != ?4
                     ORDER BY tier_seq",
                )?
                .query_map(
                    params![tier.number(), old_gen, from, ItemState::Dead],
                    |r| r.get(0),
                )?
                .collect::<rusqlite::Result<_>>()?;
            let mut renumber = tx.prepare_cached(
                "UPDATE outbox SET producer_gen = ?2, tier_seq = ?3 WHERE id = ?1",
            )?;
            for (n, item) in (1_i64..).zip(&ids) {
                renumber.execute(params![item, generation, n])?;
            }
            tx.prepare_cached("UPDATE outbox_tiers SET next_seq = ?2 WHERE tier = ?1")?
                .execute(params![
                    tier.number(),
                    i64::try_from(ids.len()).unwrap_or(i64::MAX) + 1
                ])?;
            moved += ids.len();
        }
        tracing::warn!(
            old = old_id,
            new = id,
            moved,
            "outbox: the server is ahead of this database, which was restored from an older copy; items queued since move to a new producer"
        );
        new_producer = Some(id);
    }
    tx.execute("UPDATE outbox_tiers SET unverified_from = NULL", [])?;
    // A producer with nothing left to send is forgotten (the current one always stays).
    tx.execute(
        "DELETE FROM outbox_producers
         WHERE gen < (SELECT max(gen) FROM outbox_producers)
           AND NOT EXISTS (SELECT 1 FROM outbox WHERE producer_gen = outbox_producers.gen)",
        [],
    )?;
    Ok((new_producer, moved))
}

/// Deletes the listed items that are in flight in `tier`; returns how many.
fn delete_in_flight(tx: &rusqlite::Transaction<'_>, tier: Tier, ids: &[ItemId]) -> Result<usize> {
    let mut delete =
        tx.prepare_cached("DELETE FROM outbox WHERE id = ?1 AND state = ?2 AND tier = ?3")?;
    let mut removed = 0;
    for id in ids {
        removed += delete.execute(params![id.to_string(), ItemState::InFlight, tier.number()])?;
    }
    Ok(removed)
}

/// Moves one item to the dead-letter lane: only an in-flight item of `tier` when a tier is
/// given (an answer to a batch), any live item otherwise. Returns whether it moved.
fn dead_letter(
    tx: &rusqlite::Transaction<'_>,
    tier: Option<Tier>,
    rejection: &Rejection,
    now: Millis,
) -> Result<bool> {
    let id = rejection.id.to_string();
    let n = match tier {
        Some(tier) => tx
            .prepare_cached(
                "UPDATE outbox SET state = ?1, dead_code = ?2, dead_reason = ?3, dead_at = ?4
                 WHERE id = ?5 AND state = ?6 AND tier = ?7",
            )?
            .execute(params![
                ItemState::Dead,
                rejection.code,
                rejection.reason,
                now,
                id,
                ItemState::InFlight,
                tier.number()
            ])?,
        None => tx
            .prepare_cached(
                "UPDATE outbox SET state = ?1, dead_code = ?2, dead_reason = ?3, dead_at = ?4
                 WHERE id = ?5 AND state != ?1",
            )?
            .execute(params![
                ItemState::Dead,
                rejection.code,
                rejection.reason,
                now,
                id
            ])?,
    };
    if n > 0 {
        tracing::warn!(%id, code = rejection.code, reason = rejection.reason, "outbox: item rejected by the server, moved to dead letters");
    }
    Ok(n > 0)
}

/// Puts the tier's in-flight items back to `pending`, due at `at`; returns how many.
fn back_to_pending(
    tx: &rusqlite::Transaction<'_>,
    tier: Tier,
    at: Millis,
    error: Option<&str>,
    count_attempt: bool,
) -> Result<usize> {
    Ok(tx
        .prepare_cached(
            "UPDATE outbox SET state = ?1, next_attempt_at = ?2,
                    last_error = coalesce(?3, last_error), attempts = attempts + ?4
             WHERE state = ?5 AND tier = ?6",
        )?
        .execute(params![
            ItemState::Pending,
            at,
            error,
            i64::from(count_attempt),
            ItemState::InFlight,
            tier.number()
        ])?)
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
        producer: row.get(offset + 8)?,
        seq: u64::try_from(row.get::<_, i64>(offset + 9)?)
            .map_err(|e| OutboxError::BadRow(format!("seq: {e}")))?,
    })
}

#[cfg(test)]
mod tests;
