//! Applying downstream changes (one pull page) to the cache, with the new cursor, in one
//! transaction: either the whole page and its cursor are stored, or neither is.
//!
//! Two rules make re-delivery and local edits safe:
//!
//! - **Applied once.** Each change id is recorded in `applied_changes`; a page delivered again
//!   (the answer was lost after the server sent it) changes nothing the second time. Ids older
//!   than the server's retention (48 h) are pruned, since the server cannot send them again.
//! - **Local writes shadow.** While the outbox still holds a write of the same namespace and key
//!   (pending or in flight), the server's value is not applied: the app keeps seeing its own
//!   write until the push is acknowledged. After that, the server is authoritative
//!   (`docs/adr/0005-conflicts.md`).
//!
//! A change that cannot be stored (bad key, undecodable value, a full `noeviction` namespace) is
//! skipped and counted, never allowed to wedge the cursor.
//!
//! The page is one transaction, so watchers hear of it as one batch (at most one change per key,
//! `Cause::Pulled`), and only of the changes that took effect: a duplicate or shadowed change
//! changed nothing.

use std::time::Duration;

use kryonix_protocol::wire::{Change as RemoteChange, Op};
use kryonix_protocol::{TenantId, TenantKey};
use rusqlite::{OptionalExtension, Transaction, params};

use super::ledger::{Change, Removal, RowSize};
use super::policies::{Policies, RowKey};
use super::sql::DELETE_SQL;
use super::stats::{NS_COUNT, Usage};
use super::{Cache, CacheError, Expiry, PreparedPut, codec, upsert};
use crate::clock::{Millis, duration_ms};
use crate::outbox::ItemState;
use crate::store::Store;
use crate::watch::Cause;

/// How long the server keeps downstream changes; older applied ids can be forgotten.
const APPLIED_RETENTION: Duration = Duration::from_secs(48 * 3600);

/// What applying a page did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub applied: usize,
    /// Already applied from an earlier delivery.
    pub duplicates: usize,
    /// Skipped because a local write of the same key is not yet acknowledged.
    pub shadowed: usize,
    /// Skipped because they could not be stored (logged).
    pub skipped: usize,
}

impl ApplyReport {
    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::Duplicate => self.duplicates += 1,
            Outcome::Shadowed => self.shadowed += 1,
            Outcome::Skipped => self.skipped += 1,
        }
    }
}

/// What became of one change of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    Duplicate,
    Shadowed,
    Skipped,
}

/// One change of a page as prepared before the transaction.
enum Prepared<'k> {
    Put(PreparedPut<'k>),
    Delete,
    Skip,
}

impl Cache {
    /// Applies `changes` for `tenant` and stores `cursor` under the meta key `cursor_key`, in one
    /// transaction.
    pub fn apply_remote(
        &self,
        tenant: &TenantId,
        changes: &[RemoteChange],
        cursor_key: &str,
        cursor: &str,
    ) -> Result<ApplyReport, CacheError> {
        let now = self.clock.now_ms();
        let keys = page_keys(tenant, changes);
        let prepared = self.prepare_page(changes, &keys, now);
        self.write_rows(|tx, ledger, delta, policies| {
            let mut report = ApplyReport::default();
            let mut page = Page {
                tx,
                ledger,
                delta,
                policies,
                now,
            };
            for ((change, key), prepared) in changes.iter().zip(&keys).zip(&prepared) {
                let outcome = page.apply_change(change, key.as_ref(), prepared)?;
                report.count(outcome);
            }
            tx.prepare_cached("DELETE FROM applied_changes WHERE applied_at < ?1")?
                .execute([now - duration_ms(APPLIED_RETENTION)])?;
            Store::meta_set(tx, cursor_key, cursor.as_bytes())?;
            Ok(report)
        })
    }

    /// Decodes, checks and compresses each change of a page before the write transaction (the
    /// slow part needs no lock). A change that cannot be stored becomes `Skip`, logged here.
    fn prepare_page<'k>(
        &self,
        changes: &[RemoteChange],
        keys: &'k [Option<TenantKey>],
        now: Millis,
    ) -> Vec<Prepared<'k>> {
        let mut prepared = Vec::with_capacity(changes.len());
        for (change, key) in changes.iter().zip(keys) {
            let Some(key) = key else {
                prepared.push(Prepared::Skip);
                continue;
            };
            prepared.push(match change.op {
                Op::Delete => Prepared::Delete,
                Op::Put | Op::Event => match self.prepare_remote(key, change, now) {
                    Ok(put) => Prepared::Put(put),
                    Err(error) => {
                        tracing::warn!(id = change.id, %error, "pull: change skipped");
                        Prepared::Skip
                    }
                },
            });
        }
        prepared
    }

    fn prepare_remote<'k>(
        &self,
        key: &'k TenantKey,
        change: &RemoteChange,
        now: Millis,
    ) -> Result<super::PreparedPut<'k>, CacheError> {
        let value = codec::decode(change.encoding, &change.value, self.max_value_bytes)?;
        let expiry = match change.ttl_secs {
            Some(0) | None => Expiry::Adaptive,
            Some(secs) => Expiry::After(Duration::from_secs(secs)),
        };
        let mut put = self.prepare_put(key, &value, expiry, now)?;
        put.cause = Cause::Pulled;
        Ok(put)
    }

    /// The stored value of a meta key as text (the pull cursor).
    pub fn meta_text(&self, key: &str) -> Result<Option<String>, CacheError> {
        let bytes = self
            .store
            .read(|conn| Store::meta_get(conn, key).map_err(CacheError::from))?;
        Ok(bytes.and_then(|b| String::from_utf8(b).ok()))
    }
}

/// The validated key of each change of a page; `None` (logged) for a change whose key is invalid.
fn page_keys(tenant: &TenantId, changes: &[RemoteChange]) -> Vec<Option<TenantKey>> {
    changes
        .iter()
        .map(
            |c| match TenantKey::from_parts(tenant.as_str(), &c.namespace, &c.key) {
                Ok(key) => Some(key),
                Err(error) => {
                    tracing::warn!(id = c.id, %error, "pull: change with an invalid key skipped");
                    None
                }
            },
        )
        .collect()
}

/// The write transaction a page is applied in, with what the cache's writes need.
struct Page<'a, 't> {
    tx: &'a Transaction<'t>,
    ledger: &'a [Usage; NS_COUNT],
    delta: &'a mut Change,
    policies: &'a mut Policies,
    now: Millis,
}

impl Page<'_, '_> {
    /// Applies one change of a page inside its transaction. The id is recorded before anything
    /// else, so even a change that is skipped is not looked at again when the page comes back.
    fn apply_change(
        &mut self,
        change: &RemoteChange,
        key: Option<&TenantKey>,
        prepared: &Prepared<'_>,
    ) -> Result<Outcome, CacheError> {
        if !record_first_delivery(self.tx, &change.id, self.now)? {
            return Ok(Outcome::Duplicate);
        }
        let Some(key) = key else {
            return Ok(Outcome::Skipped);
        };
        if shadowed_by_local_write(self.tx, key)? {
            return Ok(Outcome::Shadowed);
        }
        match prepared {
            Prepared::Skip => Ok(Outcome::Skipped),
            Prepared::Delete => {
                self.delete_row(key)?;
                Ok(Outcome::Applied)
            }
            Prepared::Put(put) => self.put_in_savepoint(put, &change.id),
        }
    }

    /// Deletes the row under `key`, if any, counted as a deletion whatever its TTL (a local
    /// `delete` counts an expired row as an expiration instead).
    fn delete_row(&mut self, key: &TenantKey) -> rusqlite::Result<()> {
        if let Some((row, rowid)) = self
            .tx
            .prepare_cached(DELETE_SQL)?
            .query_row([key.as_str()], |r| {
                Ok((RowSize::from_row(r, 0)?, r.get::<_, i64>(5)?))
            })
            .optional()?
        {
            self.policies
                .forget(row.namespace, RowKey::new(rowid, key.as_str()));
            self.delta.remove(row, Removal::Deleted);
            self.delta.notice(key.as_str(), None, Cause::Pulled);
        }
        Ok(())
    }

    /// Writes a pulled value in a savepoint of its own: a value that does not fit a full
    /// `noeviction` namespace is skipped without undoing the rest of the page. The namespace's
    /// policy, changed by the attempt, is rebuilt from the rows the savepoint restored.
    fn put_in_savepoint(&mut self, put: &PreparedPut<'_>, id: &str) -> Result<Outcome, CacheError> {
        let before = self.delta.clone();
        let earlier = self.policies.take_touched();
        self.tx.execute_batch("SAVEPOINT remote_change")?;
        match upsert(
            self.tx,
            self.ledger,
            self.delta,
            self.policies,
            put,
            self.now,
        ) {
            Ok(()) => {
                self.tx.execute_batch("RELEASE remote_change")?;
                self.policies.mark_touched(earlier);
                Ok(Outcome::Applied)
            }
            Err(CacheError::NamespaceFull { .. }) => {
                self.tx
                    .execute_batch("ROLLBACK TO remote_change; RELEASE remote_change")?;
                // The savepoint undid the rows; the ledger's pending change must forget them
                // too, and the policies they reached must be rebuilt.
                *self.delta = before;
                let touched = self.policies.take_touched();
                self.policies.rebuild_mask(self.tx, touched, self.delta)?;
                self.policies.mark_touched(earlier | touched);
                tracing::warn!(
                    id,
                    key = put.key.as_str(),
                    "pull: namespace full, change skipped"
                );
                Ok(Outcome::Skipped)
            }
            Err(e) => Err(e),
        }
    }
}

/// Records `id` as applied; `false` when it already was (an earlier delivery of the page).
fn record_first_delivery(tx: &Transaction<'_>, id: &str, now: Millis) -> rusqlite::Result<bool> {
    let seen: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM applied_changes WHERE id = ?1)")?
        .query_row([id], |r| r.get(0))?;
    if seen {
        return Ok(false);
    }
    tx.prepare_cached("INSERT INTO applied_changes (id, applied_at) VALUES (?1, ?2)")?
        .execute(params![id, now])?;
    Ok(true)
}

/// Whether the outbox still holds a write of this namespace and key that the server has not
/// acknowledged (pending or in flight): the app's own value wins until then.
fn shadowed_by_local_write(tx: &Transaction<'_>, key: &TenantKey) -> rusqlite::Result<bool> {
    tx.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM outbox WHERE namespace = ?1 AND key = ?2
                        AND state != ?3)",
    )?
    .query_row(
        params![key.namespace().id(), key.key(), ItemState::Dead],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kryonix_protocol::wire::{Change as RemoteChange, Op};
    use kryonix_protocol::{Encoding, Namespace, Tier};

    use super::*;
    use crate::cache::CacheConfig;
    use crate::clock::ManualClock;
    use crate::outbox::{Outbox, OutboxConfig};
    use crate::store::StoreOptions;

    fn change(id: &str, ns: &str, key: &str, op: Op, value: &[u8]) -> RemoteChange {
        RemoteChange {
            id: id.into(),
            namespace: ns.into(),
            key: key.into(),
            op,
            value: value.to_vec(),
            encoding: Encoding::Identity,
            ttl_secs: None,
            published_at_ms: 0,
        }
    }

    struct Fx {
        _dir: tempfile::TempDir,
        cache: Cache,
        outbox: Outbox,
        tenant: TenantId,
    }

    fn fx(config: CacheConfig) -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("db"), &StoreOptions::default()).unwrap());
        let clock = Arc::new(ManualClock::new(1_000_000));
        let tenant = TenantId::new("acme").unwrap();
        let cache = Cache::open(store.clone(), clock.clone(), config).unwrap();
        let outbox = Outbox::open(store, clock, OutboxConfig::new(tenant.clone())).unwrap();
        Fx {
            _dir: dir,
            cache,
            outbox,
            tenant,
        }
    }

    fn key(f: &Fx, ns: Namespace, k: &str) -> TenantKey {
        TenantKey::new(&f.tenant, ns, k).unwrap()
    }

    #[test]
    fn a_page_is_applied_once_with_its_cursor() {
        let f = fx(CacheConfig::default());
        let page = vec![
            change("t-1", "user_cache", "a", Op::Put, b"1"),
            change("t-2", "user_cache", "b", Op::Put, b"2"),
            change("t-3", "user_cache", "a", Op::Delete, b""),
        ];
        let report = f
            .cache
            .apply_remote(&f.tenant, &page, "cursor", "c1")
            .unwrap();
        assert_eq!(
            report,
            ApplyReport {
                applied: 3,
                ..ApplyReport::default()
            }
        );
        assert_eq!(
            f.cache.get(&key(&f, Namespace::UserCache, "a")).unwrap(),
            None
        );
        assert_eq!(
            f.cache.get(&key(&f, Namespace::UserCache, "b")).unwrap(),
            Some(b"2".to_vec())
        );
        assert_eq!(f.cache.meta_text("cursor").unwrap().as_deref(), Some("c1"));

        // The local app deletes b; the same page arrives again: nothing is re-applied.
        f.cache.delete(&key(&f, Namespace::UserCache, "b")).unwrap();
        let again = f
            .cache
            .apply_remote(&f.tenant, &page, "cursor", "c1")
            .unwrap();
        assert_eq!(
            again,
            ApplyReport {
                duplicates: 3,
                ..ApplyReport::default()
            }
        );
        assert_eq!(
            f.cache.get(&key(&f, Namespace::UserCache, "b")).unwrap(),
            None
        );
    }

    #[test]
    fn unacknowledged_local_writes_shadow_the_server() {
        let f = fx(CacheConfig::default());
        let k = key(&f, Namespace::UserCache, "profile");
        f.cache.put(&k, b"local", Expiry::Adaptive).unwrap();
        let id = f
            .outbox
            .enqueue(
                Namespace::UserCache,
                "profile",
                Op::Put,
                b"local",
                Tier::Critical,
            )
            .unwrap();
        let report = f
            .cache
            .apply_remote(
                &f.tenant,
                &[change("t-1", "user_cache", "profile", Op::Put, b"server")],
                "cursor",
                "c1",
            )
            .unwrap();
        assert_eq!(report.shadowed, 1);
        assert_eq!(f.cache.get(&k).unwrap(), Some(b"local".to_vec()));
        // Once acknowledged, the server's next change wins.
        f.outbox
            .next_batch(100, crate::outbox::TierSet::ALL)
            .unwrap();
        f.outbox.ack(&[id]).unwrap();
        f.cache
            .apply_remote(
                &f.tenant,
                &[change("t-2", "user_cache", "profile", Op::Put, b"server2")],
                "cursor",
                "c2",
            )
            .unwrap();
        assert_eq!(f.cache.get(&k).unwrap(), Some(b"server2".to_vec()));
    }

    #[test]
    fn unstorable_changes_are_skipped_and_the_cursor_moves() {
        // A tiny budget: distributed_locks (noeviction is only mobile_sync, so use a value that
        // can never fit its namespace instead) and an invalid key and a bad encoding.
        let f = fx(CacheConfig {
            device_budget_bytes: 64 * 1024 * 1024,
            ..CacheConfig::default()
        });
        let mut bad_encoding = change("t-3", "user_cache", "z", Op::Put, b"not gzip");
        bad_encoding.encoding = Encoding::Gzip;
        let page = vec![
            change("t-1", "nope", "x", Op::Put, b"1"),
            change("t-2", "user_cache", "", Op::Put, b"1"),
            bad_encoding,
            change("t-4", "user_cache", "ok", Op::Put, b"fine"),
        ];
        let report = f
            .cache
            .apply_remote(&f.tenant, &page, "cursor", "c9")
            .unwrap();
        assert_eq!((report.applied, report.skipped), (1, 3));
        assert_eq!(f.cache.meta_text("cursor").unwrap().as_deref(), Some("c9"));
    }

    #[test]
    fn a_full_noeviction_namespace_skips_only_that_change() {
        let f = fx(CacheConfig {
            device_budget_bytes: 1024 * 1024,
            ..CacheConfig::default()
        });
        let budget = f.cache.budget(Namespace::MobileSync) as usize;
        // Incompressible, so compression cannot make both fit.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let big: Vec<u8> = (0..budget / 2)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect();
        let page = vec![
            change("t-1", "mobile_sync", "a", Op::Put, &big),
            change("t-2", "mobile_sync", "b", Op::Put, &big),
            change("t-3", "user_cache", "c", Op::Put, b"small"),
        ];
        let report = f
            .cache
            .apply_remote(&f.tenant, &page, "cursor", "c1")
            .unwrap();
        assert_eq!((report.applied, report.skipped), (2, 1));
        assert!(
            f.cache
                .get(&key(&f, Namespace::MobileSync, "a"))
                .unwrap()
                .is_some()
        );
        assert!(
            f.cache
                .get(&key(&f, Namespace::MobileSync, "b"))
                .unwrap()
                .is_none()
        );
        assert!(
            f.cache
                .get(&key(&f, Namespace::UserCache, "c"))
                .unwrap()
                .is_some()
        );
        let stats = f.cache.stats();
        assert!(
            stats
                .namespaces
                .iter()
                .all(|n| n.used_bytes <= n.budget_bytes)
        );
    }
}
