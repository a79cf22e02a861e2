//! The development store: one SQLite file with the same semantics as Redis, so an app developer
//! can run `kryonix-server` on a laptop with no Redis at all.
//!
//! It is not a production store: one process owns the file, there is no replication, and it
//! does not scale past one instance. The server says so at start-up and in `/readyz`.
//!
//! Semantics kept from Redis: a push batch commits in one transaction (the up-stream rows of the
//! items above their producer's last seq, and the producer's new last seqs and expiry; an
//! expired producer row counts as absent, like a Redis key past its TTL); both down streams share
//! one sequence, so one integer orders them; cache entries expire (checked on read, swept on
//! write); GCRA state per tenant and device. Calls run on tokio's blocking pool because SQLite
//! calls block.
//!
//! The schema is versioned with `PRAGMA user_version` and migrated in place when the store opens
//! (version 1 kept a dedup marker per item in a `seen` table; version 2 keeps the producers).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kryonix_protocol::wire::{Change, Op};
use kryonix_protocol::{Encoding, Namespace, TenantId};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{
    Cached, Cursor, NewChange, NewItem, Page, PushOptions, PushOutcome, RateDecision, Rates,
    StoreError, SyncStoreFacts, decision, gcra, tier_slot,
};

/// The schema version this code reads and writes.
const SCHEMA_VERSION: i64 = 2;

/// The producers table: one row per (tenant, device, producer), the last stored seq per tier.
const PRODUCERS: &str = "
CREATE TABLE producers (
    tenant TEXT NOT NULL,
    device_id TEXT NOT NULL,
    producer TEXT NOT NULL,
    last_seq_1 INTEGER NOT NULL,
    last_seq_2 INTEGER NOT NULL,
    last_seq_3 INTEGER NOT NULL,
    last_seq_4 INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, device_id, producer)
) WITHOUT ROWID;
CREATE INDEX producers_by_expiry ON producers (expires_at_ms);
";

/// Version 1 to 2: per-producer sequences replace the per-item dedup markers. Rows stored before
/// keep an empty producer and seq 0.
const MIGRATE_1_TO_2: &str = "
DROP TABLE seen;
ALTER TABLE up_stream ADD COLUMN producer TEXT NOT NULL DEFAULT '';
ALTER TABLE up_stream ADD COLUMN item_seq INTEGER NOT NULL DEFAULT 0;
";

/// Version 2 from an empty file. `up_stream` ends with the columns the migration adds, so a
/// migrated file and a new one have the same layout.
const SCHEMA: &str = "
CREATE TABLE up_stream (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    tier INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    op TEXT NOT NULL,
    encoding TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    producer TEXT NOT NULL DEFAULT '',
    item_seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX up_stream_by_tier ON up_stream (tenant, tier, seq);
CREATE TABLE down_stream (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    device_id TEXT,
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    op TEXT NOT NULL,
    encoding TEXT NOT NULL,
    value BLOB NOT NULL,
    ttl_secs INTEGER,
    published_at_ms INTEGER NOT NULL
);
CREATE INDEX down_stream_by_target ON down_stream (tenant, device_id, seq);
CREATE TABLE cache (
    db INTEGER NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    encoding INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (db, key)
) WITHOUT ROWID;
CREATE TABLE rate (
    key TEXT PRIMARY KEY,
    tat_us INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Brings the file to [`SCHEMA_VERSION`] in one transaction; refuses a newer file untouched.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    let steps = match version {
        0 => format!("{SCHEMA}{PRODUCERS}"),
        1 => format!("{MIGRATE_1_TO_2}{PRODUCERS}"),
        SCHEMA_VERSION => return Ok(()),
        newer => {
            return Err(StoreError::Internal(format!(
                "{} has schema version {newer}, newer than this server's {SCHEMA_VERSION}; it was not changed",
                path.display()
            )));
        }
    };
    let tx = conn.transaction().map_err(sql)?;
    tx.execute_batch(&steps).map_err(sql)?;
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))
        .map_err(sql)?;
    tx.commit().map_err(sql)?;
    if version != 0 {
        tracing::info!(
            path = %path.display(),
            from = version,
            to = SCHEMA_VERSION,
            "embedded store schema migrated"
        );
    }
    Ok(())
}

/// Sequences are `u64` on the wire and `INTEGER` (`i64`) in SQLite: stored bit for bit, so every
/// value a device may send round-trips, and compared only in Rust, as `u64`.
fn seq_to_sql(seq: u64) -> i64 {
    i64::from_ne_bytes(seq.to_ne_bytes())
}

fn seq_from_sql(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

/// The producer's last seqs, when it has an unexpired row.
fn read_producer(
    tx: &Transaction<'_>,
    key: (&str, &str, &str),
    now: i64,
) -> Result<Option<[u64; 4]>, StoreError> {
    let (tenant, device, producer) = key;
    tx.prepare_cached(
        "SELECT last_seq_1, last_seq_2, last_seq_3, last_seq_4 FROM producers
         WHERE tenant = ?1 AND device_id = ?2 AND producer = ?3 AND expires_at_ms > ?4",
    )
    .map_err(sql)?
    .query_row(params![tenant, device, producer, now], |r| {
        Ok([
            seq_from_sql(r.get(0)?),
            seq_from_sql(r.get(1)?),
            seq_from_sql(r.get(2)?),
            seq_from_sql(r.get(3)?),
        ])
    })
    .optional()
    .map_err(sql)
}

/// Forgets producers past their expiry, as Redis does with keys past their TTL.
fn sweep_producers(tx: &Transaction<'_>, now: i64) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM producers WHERE expires_at_ms <= ?1",
        params![now],
    )
    .map_err(sql)?;
    Ok(())
}

/// The SQLite development store.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    conn: Arc<Mutex<Connection>>,
    path: String,
}

fn sql(err: rusqlite::Error) -> StoreError {
    StoreError::Internal(format!("sqlite: {err}"))
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn now_ms() -> i64 {
    now_us() / 1000
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl EmbeddedStore {
    /// Opens (or creates) the store file; `:memory:` gives a throw-away store.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path).map_err(sql)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(sql)?;
        migrate(&mut conn, path)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.display().to_string(),
        })
    }

    /// Runs `f` on the connection, off the async threads.
    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Internal("embedded store lock poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("embedded store task: {e}")))?
    }

    /// Runs `f` in one transaction that commits when it returns `Ok`.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.with(move |conn| {
            let tx = conn.transaction().map_err(sql)?;
            let out = f(&tx)?;
            tx.commit().map_err(sql)?;
            Ok(out)
        })
        .await
    }

    pub async fn push(
        &self,
        tenant: &TenantId,
        device: &str,
        producer: &str,
        items: &[NewItem],
        options: &PushOptions,
    ) -> Result<PushOutcome, StoreError> {
        let tenant = tenant.as_str().to_owned();
        let device = device.to_owned();
        let producer = producer.to_owned();
        let items = items.to_vec();
        let ttl = options.producer_ttl;
        self.write(move |tx| {
            let now = now_ms();
            sweep_producers(tx, now)?;
            let known = read_producer(tx, (&tenant, &device, &producer), now)?;
            let before = known.unwrap_or([0; 4]);
            let mut last = before;
            let mut stored = Vec::with_capacity(items.len());
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO up_stream (tenant, tier, item_id, device_id, namespace, key, op, encoding, payload, created_at_ms, received_at_ms, producer, item_seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )
                .map_err(sql)?;
            for item in &items {
                let slot = &mut last[tier_slot(item.tier)];
                let new = item.seq > *slot;
                if new {
                    *slot = item.seq;
                    insert
                        .execute(params![
                            tenant,
                            item.tier.number(),
                            item.id,
                            device,
                            item.namespace.name(),
                            item.key,
                            item.op.as_str(),
                            item.encoding.as_str(),
                            item.payload,
                            item.created_at_ms,
                            now,
                            producer,
                            seq_to_sql(item.seq),
                        ])
                        .map_err(sql)?;
                }
                stored.push(new);
            }
            // Like Redis: a producer that stores nothing and is not known leaves no row.
            if known.is_some() || last != before {
                tx.execute(
                    "INSERT INTO producers (tenant, device_id, producer, last_seq_1, last_seq_2, last_seq_3, last_seq_4, expires_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (tenant, device_id, producer) DO UPDATE SET
                         last_seq_1 = excluded.last_seq_1, last_seq_2 = excluded.last_seq_2,
                         last_seq_3 = excluded.last_seq_3, last_seq_4 = excluded.last_seq_4,
                         expires_at_ms = excluded.expires_at_ms",
                    params![
                        tenant,
                        device,
                        producer,
                        seq_to_sql(last[0]),
                        seq_to_sql(last[1]),
                        seq_to_sql(last[2]),
                        seq_to_sql(last[3]),
                        now.saturating_add(millis(ttl)),
                    ],
                )
                .map_err(sql)?;
            }
            Ok(PushOutcome {
                stored,
                last_seq: last,
                replicas_acked: 0,
                conflicts: 0,
            })
        })
        .await
    }

    pub async fn hello(
        &self,
        tenant: &TenantId,
        device: &str,
        producer: &str,
        ttl: Duration,
    ) -> Result<[u64; 4], StoreError> {
        let tenant = tenant.as_str().to_owned();
        let device = device.to_owned();
        let producer = producer.to_owned();
        self.write(move |tx| {
            let now = now_ms();
            sweep_producers(tx, now)?;
            let Some(last) = read_producer(tx, (&tenant, &device, &producer), now)? else {
                return Ok([0; 4]);
            };
            tx.execute(
                "UPDATE producers SET expires_at_ms = ?4 WHERE tenant = ?1 AND device_id = ?2 AND producer = ?3",
                params![tenant, device, producer, now.saturating_add(millis(ttl))],
            )
            .map_err(sql)?;
            Ok(last)
        })
        .await
    }

    pub async fn pull(
        &self,
        tenant: &TenantId,
        device: &str,
        cursor: &Cursor,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let position = |p: &str| -> Result<i64, StoreError> {
            if p.is_empty() {
                Ok(0)
            } else {
                p.parse::<i64>().map_err(|_| StoreError::BadCursor)
            }
        };
        // Both streams share one sequence, so the device is past everything up to the larger
        // of its two positions.
        let after = position(&cursor.tenant)?.max(position(&cursor.device)?);
        let tenant = tenant.as_str().to_owned();
        let device = device.to_owned();
        let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let rows = self
            .with(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT seq, device_id, namespace, key, op, encoding, value, ttl_secs, published_at_ms
                         FROM down_stream
                         WHERE tenant = ?1 AND (device_id IS NULL OR device_id = ?2) AND seq > ?3
                         ORDER BY seq LIMIT ?4",
                    )
                    .map_err(sql)?;
                let rows = stmt
                    .query_map(params![tenant, device, after, fetch], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, Option<String>>(1)?,
                            row.get::<_, String>(2)?,
                            row.get::<_, String>(3)?,
                            row.get::<_, String>(4)?,
                            row.get::<_, String>(5)?,
                            row.get::<_, Vec<u8>>(6)?,
                            row.get::<_, Option<i64>>(7)?,
                            row.get::<_, i64>(8)?,
                        ))
                    })
                    .map_err(sql)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(sql)?;
                Ok(rows)
            })
            .await?;
        let has_more = rows.len() > limit;
        let mut next = cursor.clone();
        let mut changes = Vec::with_capacity(limit.min(rows.len()));
        for (seq, target, namespace, key, op, encoding, value, ttl, published) in
            rows.into_iter().take(limit)
        {
            let prefix = if target.is_some() { "d" } else { "t" };
            let position = seq.to_string();
            next.tenant.clone_from(&position);
            next.device = position;
            changes.push(Change {
                id: format!("{prefix}/{seq}"),
                namespace,
                key,
                op: Op::parse(&op)
                    .ok_or_else(|| StoreError::Internal(format!("unknown op {op:?}")))?,
                value,
                encoding: encoding
                    .parse::<Encoding>()
                    .map_err(|e| StoreError::Internal(e.to_string()))?,
                ttl_secs: ttl.and_then(|t| u64::try_from(t).ok()),
                published_at_ms: published,
            });
        }
        Ok(Page {
            changes,
            next,
            has_more,
        })
    }

    pub async fn publish(
        &self,
        tenant: &TenantId,
        device: Option<&str>,
        changes: &[NewChange],
        retention: Duration,
    ) -> Result<Vec<String>, StoreError> {
        let tenant = tenant.as_str().to_owned();
        let device = device.map(str::to_owned);
        let changes = changes.to_vec();
        self.write(move |tx| {
            let now = now_ms();
            tx.execute(
                "DELETE FROM down_stream WHERE published_at_ms < ?1",
                params![now.saturating_sub(millis(retention))],
            )
            .map_err(sql)?;
            let prefix = if device.is_some() { "d" } else { "t" };
            let mut ids = Vec::with_capacity(changes.len());
            for change in &changes {
                tx.execute(
                    "INSERT INTO down_stream (tenant, device_id, namespace, key, op, encoding, value, ttl_secs, published_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        tenant,
                        device,
                        change.namespace.name(),
                        change.key,
                        change.op.as_str(),
                        change.encoding.as_str(),
                        change.value,
                        change.ttl_secs.and_then(|t| i64::try_from(t).ok()),
                        now
                    ],
                )
                .map_err(sql)?;
                ids.push(format!("{prefix}/{}", tx.last_insert_rowid()));
            }
            Ok(ids)
        })
        .await
    }

    fn full_key(tenant: &TenantId, namespace: Namespace, key: &str) -> Result<String, StoreError> {
        crate::keys::cache_entry(tenant, namespace, key)
            .map(|k| k.as_str().to_owned())
            .map_err(|e| StoreError::Internal(format!("server-built key refused: {e}")))
    }

    pub async fn cache_get(
        &self,
        tenant: &TenantId,
        namespace: Namespace,
        keys: &[String],
    ) -> Result<Vec<Option<Cached>>, StoreError> {
        let full = keys
            .iter()
            .map(|k| Self::full_key(tenant, namespace, k))
            .collect::<Result<Vec<_>, _>>()?;
        let db = namespace.id();
        self.with(move |conn| {
            let now = now_ms();
            let mut stmt = conn
                .prepare_cached(
                    "SELECT value, encoding, expires_at_ms FROM cache WHERE db = ?1 AND key = ?2 AND expires_at_ms > ?3",
                )
                .map_err(sql)?;
            full.iter()
                .map(|key| {
                    let row = stmt
                        .query_row(params![db, key, now], |row| {
                            Ok((
                                row.get::<_, Vec<u8>>(0)?,
                                row.get::<_, u8>(1)?,
                                row.get::<_, i64>(2)?,
                            ))
                        })
                        .optional()
                        .map_err(sql)?;
                    row.map(|(value, tag, expires)| {
                        let encoding = Encoding::from_tag(tag).ok_or_else(|| {
                            StoreError::Internal(format!("unknown encoding tag {tag}"))
                        })?;
                        let left_ms = u64::try_from(expires - now).unwrap_or(0);
                        Ok(Cached {
                            value,
                            encoding,
                            ttl_secs: Some(left_ms.div_ceil(1000)),
                        })
                    })
                    .transpose()
                })
                .collect()
        })
        .await
    }

    pub async fn cache_put(
        &self,
        tenant: &TenantId,
        namespace: Namespace,
        key: &str,
        value: &[u8],
        encoding: Encoding,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let full = Self::full_key(tenant, namespace, key)?;
        let value = value.to_vec();
        let db = namespace.id();
        self.write(move |tx| {
            let now = now_ms();
            tx.execute("DELETE FROM cache WHERE expires_at_ms <= ?1", params![now])
                .map_err(sql)?;
            tx.execute(
                "INSERT OR REPLACE INTO cache (db, key, value, encoding, expires_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![db, full, value, encoding.tag(), now.saturating_add(millis(ttl))],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    pub async fn cache_delete(
        &self,
        tenant: &TenantId,
        namespace: Namespace,
        key: &str,
    ) -> Result<(), StoreError> {
        let full = Self::full_key(tenant, namespace, key)?;
        let db = namespace.id();
        self.write(move |tx| {
            tx.execute(
                "DELETE FROM cache WHERE db = ?1 AND key = ?2",
                params![db, full],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    /// Records a revoked token until `until` (Unix seconds), as a row of `auth_tokens` in the
    /// cache table, like Redis's key in database 1.
    pub async fn revoke(&self, tenant: &TenantId, jti: &str, until: u64) -> Result<(), StoreError> {
        let key = crate::keys::revoked_token(tenant, jti)
            .map_err(|e| StoreError::Internal(format!("server-built key refused: {e}")))?
            .as_str()
            .to_owned();
        let db = Namespace::AuthTokens.id();
        let expires_at_ms = i64::try_from(until.saturating_mul(1000)).unwrap_or(i64::MAX);
        self.write(move |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO cache (db, key, value, encoding, expires_at_ms)
                 VALUES (?1, ?2, x'', 0, ?3)",
                params![db, key, expires_at_ms],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    /// Whether the token `jti` of `tenant` is revoked.
    pub async fn is_revoked(&self, tenant: &TenantId, jti: &str) -> Result<bool, StoreError> {
        let key = crate::keys::revoked_token(tenant, jti)
            .map_err(|e| StoreError::Internal(format!("server-built key refused: {e}")))?
            .as_str()
            .to_owned();
        let db = Namespace::AuthTokens.id();
        self.with(move |conn| {
            conn.prepare_cached(
                "SELECT 1 FROM cache WHERE db = ?1 AND key = ?2 AND expires_at_ms > ?3",
            )
            .map_err(sql)?
            .exists(params![db, key, now_ms()])
            .map_err(sql)
        })
        .await
    }

    pub async fn rate_limit(
        &self,
        tenant: &TenantId,
        subject: &str,
        rates: Rates,
    ) -> Result<RateDecision, StoreError> {
        let to_key = |k: Result<kryonix_protocol::TenantKey, kryonix_protocol::KeyError>| {
            k.map(|k| k.as_str().to_owned())
                .map_err(|e| StoreError::Internal(format!("server-built key refused: {e}")))
        };
        let tenant_key = to_key(crate::keys::tenant_rate(tenant))?;
        let device_key = to_key(crate::keys::device_rate(tenant, subject))?;
        self.write(move |tx| {
            let now = now_us();
            let read = |key: &str| -> Result<Option<i64>, StoreError> {
                tx.query_row(
                    "SELECT tat_us FROM rate WHERE key = ?1",
                    params![key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)
            };
            let check = |key: &str, per_sec: u32| -> Result<(i64, Option<i64>), StoreError> {
                if per_sec == 0 {
                    return Ok((0, None));
                }
                let (wait, tat) = gcra(now, read(key)?, per_sec);
                Ok((wait, (wait == 0).then_some(tat)))
            };
            let (tenant_wait, tenant_tat) = check(&tenant_key, rates.tenant_per_sec)?;
            let (device_wait, device_tat) = check(&device_key, rates.device_per_sec)?;
            let verdict = decision(tenant_wait, device_wait);
            if verdict == RateDecision::Allowed {
                for (key, tat) in [(&tenant_key, tenant_tat), (&device_key, device_tat)] {
                    if let Some(tat) = tat {
                        tx.execute(
                            "INSERT OR REPLACE INTO rate (key, tat_us) VALUES (?1, ?2)",
                            params![key, tat],
                        )
                        .map_err(sql)?;
                    }
                }
            }
            Ok(verdict)
        })
        .await
    }

    pub async fn sync_facts(&self) -> Result<SyncStoreFacts, StoreError> {
        // A trivial query proves the file is still usable.
        self.with(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(sql))
            .await?;
        Ok(SyncStoreFacts {
            kind: "embedded",
            ..SyncStoreFacts::default()
        })
    }

    /// Where the store lives (for logs and `/readyz`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Items of one tenant's up stream for one tier, oldest first: what a backend would read
    /// from Redis with `XRANGE`. The contract tests check stored items through it.
    pub async fn up_stream_ids(
        &self,
        tenant: &TenantId,
        tier: kryonix_protocol::Tier,
    ) -> Result<Vec<String>, StoreError> {
        let tenant = tenant.as_str().to_owned();
        let tier = tier.number();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT item_id FROM up_stream WHERE tenant = ?1 AND tier = ?2 ORDER BY seq",
                )
                .map_err(sql)?;
            stmt.query_map(params![tenant, tier], |r| r.get::<_, String>(0))
                .map_err(sql)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql)
        })
        .await
    }

    /// A producer's last seqs and the time (ms since the epoch) it will be forgotten, when it is
    /// known: what `HMGET` and `PEXPIRETIME` show on Redis. Reading does not refresh it. The
    /// contract tests check expiry through it.
    pub async fn producer_state(
        &self,
        tenant: &TenantId,
        device: &str,
        producer: &str,
    ) -> Result<Option<([u64; 4], i64)>, StoreError> {
        let tenant = tenant.as_str().to_owned();
        let device = device.to_owned();
        let producer = producer.to_owned();
        self.with(move |conn| {
            conn.prepare_cached(
                "SELECT last_seq_1, last_seq_2, last_seq_3, last_seq_4, expires_at_ms FROM producers
                 WHERE tenant = ?1 AND device_id = ?2 AND producer = ?3 AND expires_at_ms > ?4",
            )
            .map_err(sql)?
            .query_row(params![tenant, device, producer, now_ms()], |r| {
                Ok((
                    [
                        seq_from_sql(r.get(0)?),
                        seq_from_sql(r.get(1)?),
                        seq_from_sql(r.get(2)?),
                        seq_from_sql(r.get(3)?),
                    ],
                    r.get(4)?,
                ))
            })
            .optional()
            .map_err(sql)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use kryonix_protocol::Tier;
    use kryonix_protocol::wire::Op;

    use super::*;

    /// The version 1 schema as it shipped, to prove the migration.
    const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS seen (
    tenant TEXT NOT NULL,
    item_id TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, item_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS up_stream (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    tier INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    op TEXT NOT NULL,
    encoding TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS up_stream_by_tier ON up_stream (tenant, tier, seq);
CREATE TABLE IF NOT EXISTS down_stream (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    device_id TEXT,
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    op TEXT NOT NULL,
    encoding TEXT NOT NULL,
    value BLOB NOT NULL,
    ttl_secs INTEGER,
    published_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS down_stream_by_target ON down_stream (tenant, device_id, seq);
CREATE TABLE IF NOT EXISTS cache (
    db INTEGER NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    encoding INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (db, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rate (
    key TEXT PRIMARY KEY,
    tat_us INTEGER NOT NULL
) WITHOUT ROWID;
PRAGMA user_version = 1;
";

    fn item(seq: u64) -> NewItem {
        NewItem {
            id: format!("item-{seq}"),
            seq,
            tier: Tier::Critical,
            namespace: Namespace::UserCache,
            key: "k".into(),
            op: Op::Put,
            payload: b"v".to_vec(),
            encoding: Encoding::Identity,
            created_at_ms: 0,
        }
    }

    fn options() -> PushOptions {
        PushOptions {
            producer_ttl: Duration::from_secs(60),
            min_replicas_acked: 0,
            wait_timeout: Duration::from_millis(1),
        }
    }

    fn user_version(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn a_version_1_file_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.sqlite3");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.execute(
                "INSERT INTO seen (tenant, item_id, expires_at_ms) VALUES ('acme', 'old', 99999999999999)",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO up_stream (tenant, tier, item_id, device_id, namespace, key, op, encoding, payload, created_at_ms, received_at_ms)
                 VALUES ('acme', 1, 'old', 'phone-1', 'user_cache', 'k', 'put', 'identity', x'76', 0, 0)",
                [],
            )
            .unwrap();
        }
        assert_eq!(user_version(&path), 1);

        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(user_version(&path), SCHEMA_VERSION);
        let tenant = TenantId::new("acme").unwrap();
        // What was stored stays; new items follow it with their producer and seq.
        let outcome = store
            .push(&tenant, "phone-1", "p-1", &[item(1), item(2)], &options())
            .await
            .unwrap();
        assert_eq!(outcome.stored, [true, true]);
        assert_eq!(outcome.last_seq, [2, 0, 0, 0]);
        assert_eq!(
            store.up_stream_ids(&tenant, Tier::Critical).await.unwrap(),
            ["old", "item-1", "item-2"]
        );
        let conn = Connection::open(&path).unwrap();
        let seen: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'seen'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(seen, 0, "the markers are gone");
        let old: (String, i64) = conn
            .query_row(
                "SELECT producer, item_seq FROM up_stream WHERE item_id = 'old'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(old, (String::new(), 0));
        drop(store);

        // Opening again changes nothing, and the producer is still known.
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(
            store
                .hello(&tenant, "phone-1", "p-1", Duration::from_secs(60))
                .await
                .unwrap(),
            [2, 0, 0, 0]
        );
    }

    #[test]
    fn a_newer_file_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v9.sqlite3");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE future (x INTEGER); PRAGMA user_version = 9;")
            .unwrap();
        let err = EmbeddedStore::open(&path).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
        assert_eq!(user_version(&path), 9);
    }

    #[tokio::test]
    async fn sequences_round_trip_above_i64() {
        let store = EmbeddedStore::open(Path::new(":memory:")).unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let big = [item(u64::MAX - 1), item(u64::MAX)];
        let outcome = store
            .push(&tenant, "phone-1", "p-1", &big, &options())
            .await
            .unwrap();
        assert_eq!(outcome.stored, [true, true]);
        let again = store
            .push(&tenant, "phone-1", "p-1", &big, &options())
            .await
            .unwrap();
        assert_eq!(again.stored, [false, false]);
        assert_eq!(again.last_seq, [u64::MAX, 0, 0, 0]);
    }
}
