//! Encryption at rest with SQLCipher: the key type, how a connection is keyed, re-keying, and the
//! one-way migration of a plaintext database.
//!
//! The app owns the key: 32 random bytes it keeps in the Android Keystore or the iOS Keychain.
//! It is handed to SQLCipher as a raw key (`PRAGMA key = "x'<64 hex>'"`), so no passphrase KDF
//! runs at open. The key never reaches a log or an error message: [`EncryptionKey`]'s `Debug`
//! is redacted, the copies this crate makes are zeroed when dropped, and errors from statements
//! that carry the key are replaced by fixed messages (rusqlite's syntax errors quote the SQL).
//!
//! SQLCipher is compiled in only with the crate feature `encryption`; without it a key is
//! refused rather than ignored, because plain SQLite accepts `PRAGMA key` silently and would
//! write plaintext. SQLCipher opened without a key behaves as plain SQLite, which is why the
//! server's embedded store and every unkeyed database are unaffected when cargo unifies the
//! feature into a workspace build (see `docs/adr/0007-encryption-at-rest-and-one-agent-per-file.md`).

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rusqlite::Connection;
use zeroize::Zeroizing;

use super::StoreError;

/// The number of bytes of a key: SQLCipher's AES-256 key, used as is.
pub const KEY_LEN: usize = 32;

/// A raw 256-bit database key. Its `Debug` prints no byte of it, and its memory is zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionKey(Zeroizing<[u8; KEY_LEN]>);

impl EncryptionKey {
    pub fn new(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// SQLCipher's raw-key literal, `x'<64 hex digits>'`, in memory that is zeroed on drop.
    fn literal(&self) -> Zeroizing<String> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = Zeroizing::new(String::with_capacity(2 * KEY_LEN + 3));
        s.push_str("x'");
        for b in self.0.iter() {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        s.push('\'');
        s
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

/// A key of the wrong length (the app passed something other than 32 bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an encryption key is {KEY_LEN} bytes, got {0}")]
pub struct KeyLengthError(pub usize);

impl TryFrom<&[u8]> for EncryptionKey {
    type Error = KeyLengthError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return Err(KeyLengthError(bytes.len()));
        }
        key.copy_from_slice(bytes);
        Ok(Self(key))
    }
}

/// Takes the bytes as they come across the FFI and zeroes them whatever the outcome, so the only
/// copy left is the key's own.
impl TryFrom<Vec<u8>> for EncryptionKey {
    type Error = KeyLengthError;

    fn try_from(bytes: Vec<u8>) -> Result<Self, Self::Error> {
        let bytes = Zeroizing::new(bytes);
        Self::try_from(bytes.as_slice())
    }
}

/// Whether the SQLite linked into this build is SQLCipher (asked once, of an in-memory database,
/// so no file is created to find out).
pub fn encryption_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        Connection::open_in_memory()
            .and_then(|c| {
                c.query_row("PRAGMA cipher_version", [], |r| r.get::<_, String>(0))
                    .map(|v| !v.is_empty())
            })
            .unwrap_or(false)
    })
}

pub(super) fn require_support() -> Result<(), StoreError> {
    if encryption_available() {
        Ok(())
    } else {
        Err(StoreError::EncryptionUnavailable)
    }
}

/// Keys a fresh connection: the first statement it runs, before anything reads the file.
pub(super) fn apply_key(conn: &Connection, key: &EncryptionKey) -> Result<(), StoreError> {
    let sql = Zeroizing::new(format!("PRAGMA key = \"{}\"", key.literal().as_str()));
    conn.execute_batch(&sql)
        .map_err(|_| StoreError::Cipher("SQLCipher refused the key statement".into()))?;
    // Pin the on-disk format (SQLCipher 4: 4 KiB pages, HMAC-SHA512). A future SQLCipher major
    // version changes the defaults, and without this every existing file would then look like a
    // wrong key — to an app whose answer to a wrong key is to start afresh.
    conn.execute_batch("PRAGMA cipher_compatibility = 4")
        .map_err(|e| StoreError::Cipher(format!("cipher_compatibility: {e}")))?;
    Ok(())
}

/// Re-encrypts every page under `new_key`, on the writer (the caller holds both connections).
pub(super) fn rekey(conn: &Connection, new_key: &EncryptionKey) -> Result<(), StoreError> {
    let sql = Zeroizing::new(format!("PRAGMA rekey = \"{}\"", new_key.literal().as_str()));
    conn.execute_batch(&sql)
        .map_err(|_| StoreError::Cipher("SQLCipher refused the rekey statement".into()))
}

/// `<db>.encrypting`: where [`encrypt_plaintext`] writes before the rename. Same directory, so
/// the rename is atomic.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".encrypting");
    PathBuf::from(name)
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Removes `path` if it exists.
fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}

/// Copies the plaintext database `conn` (opened on `path`, already inspected as ours) into an
/// encrypted file and renames it over `path`. The caller holds the file lock.
pub(super) fn encrypt_plaintext(
    conn: Connection,
    path: &Path,
    key: &EncryptionKey,
) -> Result<(), StoreError> {
    let temp = temp_path(path);
    // A leftover of a migration that died before its rename: ours by name, never renamed in.
    remove_if_present(&temp)?;
    remove_if_present(&sidecar(&temp, "-journal"))?;

    let result = export(&conn, &temp, key);
    if let Err(e) = result {
        drop(conn);
        // Best effort: the export's error is the one worth reporting.
        let _ = remove_if_present(&temp);
        return Err(e);
    }

    // Closing the last connection checkpoints the plaintext WAL and deletes it. A WAL left
    // beside the renamed file would be read as the new file's own (SQLite does not tie a WAL to
    // its database), so refuse if one survives: another process has the file open.
    drop(conn);
    let wal = sidecar(path, "-wal");
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        let _ = remove_if_present(&temp);
        return Err(StoreError::Cipher(format!(
            "{} is still in use (its write-ahead log was not checkpointed); nothing was changed",
            path.display()
        )));
    }
    remove_if_present(&wal)?;
    // The shared-memory index described the plaintext WAL; the encrypted file builds its own.
    remove_if_present(&sidecar(path, "-shm"))?;

    File::open(&temp)
        .and_then(|f| f.sync_all())
        .map_err(io(&temp))?;
    std::fs::rename(&temp, path).map_err(io(path))?;
    // Make the rename itself durable.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// `sqlcipher_export` of `main` into a new encrypted file at `temp`, then a row count per table
/// on both sides so a short copy is caught before it replaces anything.
fn export(conn: &Connection, temp: &Path, key: &EncryptionKey) -> Result<(), StoreError> {
    let temp_str = temp
        .to_str()
        .ok_or_else(|| StoreError::Cipher(format!("{} is not UTF-8", temp.display())))?;
    // Both the file name and the key are bound, so neither is parsed as SQL and the key never
    // appears in a statement's text. A text key of the `x'..'` form is taken as a raw key.
    conn.execute(
        "ATTACH DATABASE ?1 AS kryonix_encrypted KEY ?2",
        rusqlite::params![temp_str, key.literal().as_str()],
    )
    .map_err(|_| StoreError::Cipher("SQLCipher refused to attach the encrypted copy".into()))?;
    let result = (|| -> Result<(), StoreError> {
        conn.execute_batch("PRAGMA kryonix_encrypted.cipher_compatibility = 4")?;
        conn.query_row("SELECT sqlcipher_export('kryonix_encrypted')", [], |_| {
            Ok(())
        })?;
        // `sqlcipher_export` copies the schema and rows, not the header fields this store reads.
        let app_id: i32 = conn.query_row("PRAGMA main.application_id", [], |r| r.get(0))?;
        let version: i64 = conn.query_row("PRAGMA main.user_version", [], |r| r.get(0))?;
        conn.pragma_update(Some("kryonix_encrypted"), "application_id", app_id)?;
        conn.pragma_update(Some("kryonix_encrypted"), "user_version", version)?;
        let tables: Vec<String> = conn
            .prepare(
                "SELECT name FROM main.sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for table in tables {
            let quoted = table.replace('"', "\"\"");
            let count = |schema: &str| -> rusqlite::Result<i64> {
                conn.query_row(
                    &format!("SELECT count(*) FROM {schema}.\"{quoted}\""),
                    [],
                    |r| r.get(0),
                )
            };
            let (plain, encrypted) = (count("main")?, count("kryonix_encrypted")?);
            if plain != encrypted {
                return Err(StoreError::Cipher(format!(
                    "the encrypted copy of table {table} has {encrypted} rows, not {plain}; nothing was changed"
                )));
            }
        }
        Ok(())
    })();
    // Detach even after a failure, so the temp file is closed before it is removed.
    let detached = conn.execute_batch("DETACH DATABASE kryonix_encrypted");
    result?;
    Ok(detached?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_never_shows_in_debug_and_has_its_length_checked() {
        let key = EncryptionKey::new([0xAB; KEY_LEN]);
        let config = format!("{:?}", Some(key.clone()));
        assert!(!config.to_lowercase().contains("ab"), "{config}");
        assert_eq!(key.literal().as_str(), format!("x'{}'", "ab".repeat(32)));
        assert_eq!(
            EncryptionKey::try_from(&[0u8; 31][..]),
            Err(KeyLengthError(31))
        );
        assert!(EncryptionKey::try_from(&[0u8; 32][..]).is_ok());
        assert_eq!(
            EncryptionKey::try_from(vec![1u8; 33]),
            Err(KeyLengthError(33))
        );
        assert_eq!(
            EncryptionKey::try_from(vec![0xAB; KEY_LEN]),
            Ok(EncryptionKey::new([0xAB; KEY_LEN]))
        );
    }

    /// Without SQLCipher a key is refused before any file is created: plain SQLite would ignore
    /// `PRAGMA key` and write plaintext.
    #[cfg(not(feature = "encryption"))]
    #[test]
    fn a_key_without_sqlcipher_is_refused_and_creates_nothing() {
        use crate::store::{Store, StoreOptions};

        assert!(!encryption_available());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kryonix.db");
        let options = StoreOptions {
            key: Some(EncryptionKey::new([1; KEY_LEN])),
            ..StoreOptions::default()
        };
        let err = Store::open(&path, &options).unwrap_err();
        assert!(matches!(err, StoreError::EncryptionUnavailable), "{err}");
        assert!(!path.exists());
        let err = Store::encrypt_plaintext(&path, &EncryptionKey::new([1; KEY_LEN])).unwrap_err();
        assert!(matches!(err, StoreError::EncryptionUnavailable), "{err}");
    }

    /// Real files, real SQLCipher: what reaches the disk, wrong keys, re-keying, migration.
    #[cfg(feature = "encryption")]
    mod sqlcipher {
        use std::collections::BTreeMap;
        use std::sync::Arc;

        use kryonix_protocol::wire::Op;
        use kryonix_protocol::{Namespace, TenantId, TenantKey, Tier};

        use super::*;
        use crate::cache::{Cache, CacheConfig, Expiry};
        use crate::clock::SystemClock;
        use crate::outbox::{Outbox, OutboxConfig};
        use crate::store::{FileLock, Store, StoreOptions};

        /// Written as a cache key, a cache value, an outbox payload and a meta value; must never
        /// be found in the bytes of an encrypted file.
        const MARKER: &str = "KRYONIX-PLAINTEXT-MARKER-7f3a";

        fn key(byte: u8) -> EncryptionKey {
            EncryptionKey::new([byte; KEY_LEN])
        }

        fn options(key: Option<EncryptionKey>) -> StoreOptions {
            StoreOptions {
                key,
                ..StoreOptions::default()
            }
        }

        fn contains(haystack: &[u8], needle: &str) -> bool {
            haystack
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        }

        fn read(path: &Path) -> Vec<u8> {
            std::fs::read(path).unwrap_or_default()
        }

        fn wal(path: &Path) -> PathBuf {
            sidecar(path, "-wal")
        }

        /// Writes the marker through the cache, the outbox and the meta table.
        fn write_marked(store: Arc<Store>, rows: usize) {
            let tenant = TenantId::new("acme").unwrap();
            let cache =
                Cache::open(store.clone(), Arc::new(SystemClock), CacheConfig::default()).unwrap();
            let outbox = Outbox::open(
                store.clone(),
                Arc::new(SystemClock),
                OutboxConfig::new(tenant.clone()),
            )
            .unwrap();
            for i in 0..rows {
                let k = TenantKey::new(&tenant, Namespace::UserCache, &format!("{MARKER}-{i}"))
                    .unwrap();
                cache
                    .put(
                        &k,
                        format!("{MARKER} value {i}").as_bytes(),
                        Expiry::Adaptive,
                    )
                    .unwrap();
                outbox
                    .enqueue(
                        Namespace::UserCache,
                        &format!("item-{i}"),
                        Op::Put,
                        format!("{MARKER} payload {i}").as_bytes(),
                        Tier::ALL[i % 4],
                    )
                    .unwrap();
            }
            store
                .write(|tx| Store::meta_set(tx, "marker", MARKER.as_bytes()))
                .unwrap();
        }

        /// Every row of every table, as text, by table: what "keeps every row" compares.
        fn dump(store: &Store) -> BTreeMap<String, Vec<String>> {
            store
                .read(|c| {
                    let tables: Vec<String> = c
                        .prepare(
                            "SELECT name FROM sqlite_schema WHERE type = 'table' \
                             AND name NOT LIKE 'sqlite_%' ORDER BY name",
                        )?
                        .query_map([], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    let mut out = BTreeMap::new();
                    for table in tables {
                        let mut stmt = c.prepare(&format!("SELECT * FROM \"{table}\""))?;
                        let columns = stmt.column_count();
                        let mut rows: Vec<String> = stmt
                            .query_map([], |r| {
                                (0..columns)
                                    .map(|i| r.get_ref(i).map(|v| format!("{v:?}")))
                                    .collect::<rusqlite::Result<Vec<_>>>()
                                    .map(|v| v.join("|"))
                            })?
                            .collect::<rusqlite::Result<_>>()?;
                        rows.sort();
                        out.insert(table, rows);
                    }
                    Ok::<_, StoreError>(out)
                })
                .unwrap()
        }

        #[test]
        fn sqlcipher_is_linked() {
            assert!(encryption_available());
        }

        #[test]
        fn an_encrypted_file_and_its_wal_hold_no_plaintext() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kryonix.db");
            let store = Arc::new(Store::open(&path, &options(Some(key(1)))).unwrap());
            assert!(store.is_encrypted());
            write_marked(store.clone(), 50);
            // Before a checkpoint the rows are in the WAL; after it, in the main file.
            let (db, log) = (read(&path), read(&wal(&path)));
            assert!(log.len() > 4096, "the writes went to the WAL");
            assert!(!contains(&db, MARKER) && !contains(&log, MARKER));
            assert!(
                !contains(&db, "SQLite format 3"),
                "even the header is encrypted"
            );
            store
                .write(|tx| {
                    tx.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                        .map_err(StoreError::from)
                })
                .ok();
            drop(store);
            let db = read(&path);
            assert!(db.len() > 16 * 1024, "the rows reached the main file");
            assert!(!contains(&db, MARKER) && !contains(&read(&wal(&path)), MARKER));

            // The same writes without a key do show the marker: the search above can find it.
            let plain = dir.path().join("plain.db");
            let store = Arc::new(Store::open(&plain, &StoreOptions::default()).unwrap());
            write_marked(store.clone(), 50);
            assert!(contains(&read(&wal(&plain)), MARKER));
        }

        #[test]
        fn a_wrong_or_missing_key_is_refused_and_the_file_is_untouched() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kryonix.db");
            {
                let store = Arc::new(Store::open(&path, &options(Some(key(1)))).unwrap());
                write_marked(store, 10);
            }
            let before = read(&path);
            assert!(!wal(&path).exists(), "closed cleanly: no WAL");

            let err = Store::open(&path, &options(Some(key(2)))).unwrap_err();
            assert!(matches!(err, StoreError::WrongKey { .. }), "{err}");
            let err = Store::open(&path, &StoreOptions::default()).unwrap_err();
            assert!(matches!(err, StoreError::KeyRequired { .. }), "{err}");
            let err = Store::open(
                &path,
                &StoreOptions {
                    verify_on_open: true,
                    ..options(Some(key(3)))
                },
            )
            .unwrap_err();
            assert!(matches!(err, StoreError::WrongKey { .. }), "{err}");
            assert_eq!(read(&path), before, "byte-for-byte untouched");
            assert!(!wal(&path).exists());

            // The right key still opens everything.
            let store = Store::open(&path, &options(Some(key(1)))).unwrap();
            let marker = store.read(|c| Store::meta_get(c, "marker")).unwrap();
            assert_eq!(marker.as_deref(), Some(MARKER.as_bytes()));
        }

        #[test]
        fn with_a_key_random_pages_are_a_wrong_key_and_text_is_not_a_database() {
            let dir = tempfile::tempdir().unwrap();
            for (name, content, page_aligned) in [
                ("pages", vec![0x5Au8; 8192], true),
                (
                    "text",
                    b"not a database, with a key or without".to_vec(),
                    false,
                ),
            ] {
                let path = dir.path().join(name);
                std::fs::write(&path, &content).unwrap();
                let err = Store::open(&path, &options(Some(key(1)))).unwrap_err();
                if page_aligned {
                    assert!(matches!(err, StoreError::WrongKey { .. }), "{name}: {err}");
                } else {
                    assert!(
                        matches!(err, StoreError::NotADatabase { .. }),
                        "{name}: {err}"
                    );
                }
                assert_eq!(read(&path), content, "{name} was modified");
                assert!(!wal(&path).exists());
            }
        }

        #[test]
        fn rekey_round_trip() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kryonix.db");
            let store = Arc::new(Store::open(&path, &options(Some(key(1)))).unwrap());
            write_marked(store.clone(), 40);
            let before = dump(&store);
            store.rekey(&key(2)).unwrap();
            // The open store goes on working: the reader was reopened with the new key.
            assert_eq!(dump(&store), before);
            store
                .write(|tx| Store::meta_set(tx, "after", b"rekey"))
                .unwrap();
            assert!(!contains(&read(&path), MARKER));
            drop(store);

            let err = Store::open(&path, &options(Some(key(1)))).unwrap_err();
            assert!(matches!(err, StoreError::WrongKey { .. }), "{err}");
            let store = Store::open(&path, &options(Some(key(2)))).unwrap();
            let mut expected = before;
            expected.get_mut("meta").unwrap().push(format!(
                "{:?}|{:?}",
                rusqlite::types::ValueRef::Text(b"after"),
                rusqlite::types::ValueRef::Blob(b"rekey")
            ));
            expected.get_mut("meta").unwrap().sort();
            assert_eq!(dump(&store), expected);

            // A plaintext store has no key to change.
            let plain = Store::open(dir.path().join("plain.db"), &StoreOptions::default()).unwrap();
            let err = plain.rekey(&key(3)).unwrap_err();
            assert!(matches!(err, StoreError::NotEncrypted { .. }), "{err}");
        }

        #[test]
        fn a_plaintext_file_is_encrypted_only_on_request_and_keeps_every_row() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kryonix.db");
            let before = {
                let store = Arc::new(Store::open(&path, &StoreOptions::default()).unwrap());
                write_marked(store.clone(), 60);
                dump(&store)
            };
            let plaintext = read(&path);
            assert!(contains(&plaintext, MARKER));

            // Opening with a key refuses and changes nothing.
            let err = Store::open(&path, &options(Some(key(1)))).unwrap_err();
            assert!(matches!(err, StoreError::NotEncrypted { .. }), "{err}");
            assert_eq!(read(&path), plaintext);

            // Not while an agent holds the file.
            let held = FileLock::acquire(&path).unwrap();
            let err = Store::encrypt_plaintext(&path, &key(1)).unwrap_err();
            assert!(matches!(err, StoreError::AlreadyOpen { .. }), "{err}");
            assert_eq!(read(&path), plaintext);
            drop(held);

            // A leftover of a migration that died before its rename is replaced.
            std::fs::write(temp_path(&path), b"half an export").unwrap();
            Store::encrypt_plaintext(&path, &key(1)).unwrap();
            assert!(!temp_path(&path).exists());
            let encrypted = read(&path);
            assert!(!contains(&encrypted, MARKER) && !contains(&encrypted, "SQLite format 3"));

            let err = Store::open(&path, &StoreOptions::default()).unwrap_err();
            assert!(matches!(err, StoreError::KeyRequired { .. }), "{err}");
            let err = Store::encrypt_plaintext(&path, &key(1)).unwrap_err();
            assert!(matches!(err, StoreError::KeyRequired { .. }), "{err}");
            let store = Store::open(&path, &options(Some(key(1)))).unwrap();
            assert_eq!(dump(&store), before, "every row kept");
            let (app, version): (i32, i64) = store
                .read(|c| {
                    Ok::<_, StoreError>((
                        c.query_row("PRAGMA application_id", [], |r| r.get(0))?,
                        c.query_row("PRAGMA user_version", [], |r| r.get(0))?,
                    ))
                })
                .unwrap();
            assert_eq!(
                (app, version),
                (crate::store::APPLICATION_ID, crate::store::SCHEMA_VERSION)
            );
        }

        #[test]
        fn a_plaintext_file_with_a_crash_left_wal_is_encrypted_whole() {
            let dir = tempfile::tempdir().unwrap();
            let live = dir.path().join("live.db");
            let path = dir.path().join("kryonix.db");
            let store = Arc::new(Store::open(&live, &StoreOptions::default()).unwrap());
            write_marked(store.clone(), 30);
            // A crash image: the file and its WAL as a killed process leaves them.
            std::fs::copy(&live, &path).unwrap();
            std::fs::copy(wal(&live), wal(&path)).unwrap();
            let before = dump(&store);
            drop(store);
            assert!(contains(&read(&wal(&path)), MARKER), "rows only in the WAL");

            Store::encrypt_plaintext(&path, &key(1)).unwrap();
            assert!(
                !wal(&path).exists(),
                "the plaintext WAL went with the plaintext file"
            );
            let store = Store::open(&path, &options(Some(key(1)))).unwrap();
            assert_eq!(dump(&store), before);
        }

        #[test]
        fn a_plaintext_file_another_connection_has_open_is_not_replaced() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kryonix.db");
            // A store opened without the agent's lock (a tool, a test) keeps the WAL alive.
            let store = Arc::new(Store::open(&path, &StoreOptions::default()).unwrap());
            write_marked(store.clone(), 5);
            let (db, log) = (read(&path), read(&wal(&path)));
            let err = Store::encrypt_plaintext(&path, &key(1)).unwrap_err();
            assert!(
                matches!(err, StoreError::Cipher(ref m) if m.contains("in use")),
                "{err}"
            );
            assert_eq!((read(&path), read(&wal(&path))), (db, log));
            assert!(!temp_path(&path).exists());
            assert_eq!(
                store
                    .read(|c| Store::meta_get(c, "marker"))
                    .unwrap()
                    .as_deref(),
                Some(MARKER.as_bytes())
            );
        }

        #[test]
        fn a_missing_file_has_nothing_to_encrypt() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kryonix.db");
            Store::encrypt_plaintext(&path, &key(1)).unwrap();
            assert!(!path.exists());
        }

        #[test]
        fn another_apps_plaintext_file_opened_with_a_key_is_foreign_and_untouched() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("other.db");
            {
                let c = Connection::open(&path).unwrap();
                c.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('x');")
                    .unwrap();
            }
            let before = read(&path);
            let err = Store::open(&path, &options(Some(key(1)))).unwrap_err();
            assert!(matches!(err, StoreError::ForeignDatabase { .. }), "{err}");
            let err = Store::encrypt_plaintext(&path, &key(1)).unwrap_err();
            assert!(matches!(err, StoreError::ForeignDatabase { .. }), "{err}");
            assert_eq!(read(&path), before);
            assert!(!temp_path(&path).exists());
        }

        #[test]
        fn a_newer_encrypted_schema_is_refused_untouched() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("future.db");
            drop(Store::open(&path, &options(Some(key(1)))).unwrap());
            {
                let c = Connection::open(&path).unwrap();
                apply_key(&c, &key(1)).unwrap();
                c.pragma_update(None, "user_version", crate::store::SCHEMA_VERSION + 1)
                    .unwrap();
                c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                    .unwrap();
            }
            let before = read(&path);
            let err = Store::open(&path, &options(Some(key(1)))).unwrap_err();
            assert!(matches!(err, StoreError::NewerSchema { .. }), "{err}");
            assert_eq!(read(&path), before);
        }
    }
}
