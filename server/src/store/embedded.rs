//! The development store: one SQLite file with the same semantics as Redis, so an app developer
//! can run `kryonix-server` on a laptop with no Redis at all.
//!
//! It is not a production store: one process owns the file, there is no replication, and it
//! does not scale past one instance. The server says so at start-up and in `/readyz`.
//!
//! Semantics kept from Redis: a push batch commits in one transaction (dedup markers with an
//! expiry, then the up-stream rows); both down streams share one sequence, so one integer orders
//! them; cache entries expire (checked on read, swept on write); GCRA state per tenant and device.
//! Calls run on tokio's blocking pool because SQLite calls block.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kryonix_protocol::wire::{Change, Op};
use kryonix_protocol::{Encoding, Namespace, TenantId};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{
    Cached, Cursor, NewChange, NewItem, Page, RateDecision, Rates, StoreError, SyncStoreFacts,
    decision, gcra,
};

const SCHEMA: &str = "
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
        let conn = Connection::open(path).map_err(sql)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
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
        items: &[NewItem],
        dedup_ttl: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        let tenant = tenant.as_str().to_owned();
        let device = device.to_owned();
        let items = items.to_vec();
        self.write(move |tx| {
            let now = now_ms();
            let expires = now.saturating_add(millis(dedup_ttl));
            // An expired marker no longer protects its id, exactly like a Redis key past its TTL.
            tx.execute("DELETE FROM seen WHERE expires_at_ms <= ?1", params![now])
                .map_err(sql)?;
            let mut out = Vec::with_capacity(items.len());
            for item in &items {
                let inserted = tx
                    .execute(
                        "INSERT OR IGNORE INTO seen (tenant, item_id, expires_at_ms) VALUES (?1, ?2, ?3)",
                        params![tenant, item.id, expires],
                    )
                    .map_err(sql)?;
                if inserted == 1 {
                    tx.execute(
                        "INSERT INTO up_stream (tenant, tier, item_id, device_id, namespace, key, op, encoding, payload, created_at_ms, received_at_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                        params![
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
                            now
                        ],
                    )
                    .map_err(sql)?;
                }
                out.push(inserted == 1);
            }
            Ok(out)
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
}
