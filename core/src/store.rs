//! The device database: one SQLite file holding the cache, the outbox and sync metadata.
//!
//! One writer connection and one reader connection, both in WAL mode, so reads (cache hits)
//! never wait for a write transaction (an enqueue burst) and vice versa. All access goes through
//! [`Store::read`] and [`Store::write`]: a write closure runs inside an immediate transaction that
//! commits only when the closure returns `Ok`, so a failed operation never leaves half a change.
//!
//! Opening is careful with files it does not own. A file that is not SQLite, a SQLite database
//! of another application, one written by a newer version of this library, or — with
//! encryption — an encrypted file and a key that does not open it, gets a typed error, and the
//! file is left byte-for-byte as it was: the checks run before any statement that could write
//! (even `journal_mode = WAL` rewrites the header).
//!
//! With a key ([`StoreOptions::key`], crate feature `encryption`), the file is a SQLCipher
//! database ([`encryption`]). Whether a file is encrypted is never changed behind the app's
//! back: a plaintext file opened with a key is refused with [`StoreError::NotEncrypted`] and is
//! migrated only by [`Store::encrypt_plaintext`]; [`Store::rekey`] changes the key.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};

pub mod encryption;
pub mod lock;

pub use encryption::{EncryptionKey, KEY_LEN, KeyLengthError, encryption_available};
pub use lock::FileLock;

/// Identifies a Kryonix database in the SQLite header (`PRAGMA application_id`): "KRYX".
pub const APPLICATION_ID: i32 = 0x4B52_5958;

/// Migrations, in order; migration `n` (1-based) brings the schema to `user_version = n`.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_initial.sql"),
    include_str!("../migrations/0002_applied_changes.sql"),
    include_str!("../migrations/0003_charged_bytes.sql"),
    include_str!("../migrations/0004_producer_sequences.sql"),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Prepared statements kept per connection: the cache, the outbox and the sync engine together
/// use a few dozen, and rusqlite's default of 16 would re-prepare them on every call.
const STATEMENT_CACHE_CAPACITY: usize = 64;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path} is not a SQLite database; it was left untouched")]
    NotADatabase { path: PathBuf },
    #[error(
        "{path} is a SQLite database of another application (application_id {application_id:#x}); it was left untouched"
    )]
    ForeignDatabase { path: PathBuf, application_id: i32 },
    #[error(
        "the database was written by a newer version (schema {found}, this build knows up to {supported}); it was left untouched"
    )]
    NewerSchema { found: i64, supported: i64 },
    #[error("the database file is corrupt: {0}")]
    Corrupt(String),
    /// The disk, or the database's size limit ([`StoreOptions::max_size_bytes`]), is full. The
    /// statement was rolled back: nothing was written, and nothing written before is harmed.
    /// The same call succeeds once space is freed.
    #[error("the disk or the database's size limit is full; nothing was written")]
    Full,
    /// The key does not decrypt the file. SQLCipher cannot tell a wrong key from a file that is
    /// not a database at all (both fail the first page's HMAC), so the message says both.
    #[error(
        "{path} cannot be opened with this key: the key is wrong, or the file is not a database or is damaged; it was left untouched"
    )]
    WrongKey { path: PathBuf },
    /// Opened without a key, the file is not plaintext SQLite but has the shape of an encrypted
    /// database (whole pages): it needs its key. A file of random bytes looks the same.
    #[error(
        "{path} is not a plaintext SQLite database: it looks encrypted, so it needs its key (or it is not a database); it was left untouched"
    )]
    KeyRequired { path: PathBuf },
    /// Opened with a key, the file is an unencrypted database of ours. It is encrypted only on
    /// request, by [`Store::encrypt_plaintext`].
    #[error(
        "{path} is not encrypted; encrypt it first (Store::encrypt_plaintext) or open it without a key; it was left untouched"
    )]
    NotEncrypted { path: PathBuf },
    /// A key was given, but this build links plain SQLite (crate feature `encryption` off),
    /// which would ignore the key and write plaintext.
    #[error("this build has no encryption support (SQLCipher); refusing to open with a key")]
    EncryptionUnavailable,
    /// SQLCipher refused a key, re-key or export step. Never carries the key.
    #[error("encryption: {0}")]
    Cipher(String),
    /// Another agent, in this process or another, has the file open.
    #[error("{path} is already open by another agent; close it first")]
    AlreadyOpen { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sqlite: {0}")]
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseCorrupt) => Self::Corrupt(e.to_string()),
            Some(ErrorCode::DiskFull) => Self::Full,
            _ => Self::Sqlite(e),
        }
    }
}

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous = NORMAL`: a commit survives an app kill or crash; a power loss may lose the
    /// last few commits (never corrupts). The default — see `docs/adr/0002-sqlite-durability.md`.
    #[default]
    Normal,
    /// `synchronous = FULL`: every commit is fsynced and survives power loss, at about one
    /// fsync per commit.
    Full,
}

/// Options for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub durability: Durability,
    /// How long a statement waits for a lock held by another connection before `SQLITE_BUSY`.
    pub busy_timeout: Duration,
    /// Run `PRAGMA quick_check` at open (reads every page: seconds on a large database).
    pub verify_on_open: bool,
    /// The most the database file may hold (`PRAGMA max_page_count`), or `None` for no limit
    /// but the disk's. Past it, writes fail with [`StoreError::Full`] exactly as on a full
    /// disk. Never below what the file already holds.
    pub max_size_bytes: Option<u64>,
    /// The SQLCipher key, or `None` for a plaintext database. Needs the crate feature
    /// `encryption`; without it a key gets [`StoreError::EncryptionUnavailable`].
    pub key: Option<EncryptionKey>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Normal,
            busy_timeout: Duration::from_secs(5),
            verify_on_open: false,
            max_size_bytes: None,
            key: None,
        }
    }
}

/// The device database. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    path: PathBuf,
    /// Opened with a key: [`Store::rekey`] applies. The key itself is not kept.
    encrypted: bool,
    /// What the reader was opened with, to open it again after a re-key.
    durability: Durability,
    busy_timeout: Duration,
}

/// A poisoned lock only means another thread panicked while holding it; SQLite rolled back its
/// transaction when the statement was dropped, so the connection is still consistent.
fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store {
    /// Opens (creating if missing) and migrates the database at `path`, encrypted when
    /// `options.key` is set.
    pub fn open(path: impl AsRef<Path>, options: &StoreOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let kind = check_header(&path)?;
        let key = options.key.as_ref();
        if key.is_some() {
            encryption::require_support()?;
        }
        match (kind, key) {
            (FileKind::Opaque, None) => return Err(StoreError::KeyRequired { path }),
            (FileKind::Plaintext, Some(_)) => {
                // Say what the file is first: another app's or a newer one gets the same error
                // as without a key; only a database of ours is "not encrypted".
                inspect(&Connection::open(&path)?, &path, None)?;
                return Err(StoreError::NotEncrypted { path });
            }
            _ => {}
        }
        let writer = Connection::open(&path)?;
        if let Some(key) = key {
            encryption::apply_key(&writer, key)?;
        }
        writer.busy_timeout(options.busy_timeout)?;
        inspect(&writer, &path, key)?;
        if options.verify_on_open {
            quick_check(&writer)?;
        }
        configure(&writer, options.durability)?;
        migrate(&writer)?;
        if let Some(bytes) = options.max_size_bytes {
            limit_size(&writer, bytes)?;
        }
        writer.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        let reader = open_reader(&path, options.durability, options.busy_timeout, key)?;
        Ok(Self {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            path,
            encrypted: key.is_some(),
            durability: options.durability,
            busy_timeout: options.busy_timeout,
        })
    }

    /// Encrypts the plaintext database at `path` under `key`, in place: `sqlcipher_export` into
    /// `<path>.encrypting`, a row count of every table on both sides, then an atomic rename over
    /// the original. Nothing is changed if any step fails; a crash before the rename leaves the
    /// plaintext file as it was (the next call replaces the leftover). A missing or empty file
    /// has nothing to encrypt and is left alone.
    ///
    /// Refused with [`StoreError::AlreadyOpen`] while an agent has the file open, and with the
    /// open-path errors for a file that is not a plaintext database of ours (another app's, a
    /// newer schema, one that is already encrypted: [`StoreError::KeyRequired`]). The plaintext
    /// the file held may survive in freed blocks of the flash; only never writing it avoids that.
    pub fn encrypt_plaintext(
        path: impl AsRef<Path>,
        key: &EncryptionKey,
    ) -> Result<(), StoreError> {
        let path = path.as_ref();
        encryption::require_support()?;
        let _lock = FileLock::acquire(path)?;
        match check_header(path)? {
            FileKind::New => return Ok(()),
            FileKind::Opaque => {
                return Err(StoreError::KeyRequired {
                    path: path.to_path_buf(),
                });
            }
            FileKind::Plaintext => {}
        }
        let conn = Connection::open(path)?;
        inspect(&conn, path, None)?;
        tracing::info!(path = %path.display(), "encrypting a plaintext database");
        encryption::encrypt_plaintext(conn, path, key)
    }

    /// Re-encrypts the database under `new_key` (`PRAGMA rekey`): every page is rewritten in one
    /// transaction, so a crash leaves the file under the old key or the new one, never a mix.
    /// Reads and writes wait while it runs. The old key opens nothing afterwards; the app should
    /// keep both keys until this returns, and then forget the old one.
    pub fn rekey(&self, new_key: &EncryptionKey) -> Result<(), StoreError> {
        if !self.encrypted {
            return Err(StoreError::NotEncrypted {
                path: self.path.clone(),
            });
        }
        let writer = lock(&self.writer);
        let mut reader = lock(&self.reader);
        encryption::rekey(&writer, new_key)?;
        // Move the re-encrypted pages from the WAL into the main file, so no page under the old
        // key is left on disk (as far as the file system goes).
        writer.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        // The reader still holds the old key. Opening a new one with the new key also verifies
        // the re-key, which SQLCipher reports as done even when its commit failed.
        *reader = open_reader(
            &self.path,
            self.durability,
            self.busy_timeout,
            Some(new_key),
        )
        .map_err(|e| StoreError::Cipher(format!("the re-keyed file does not open: {e}")))?;
        tracing::info!(path = %self.path.display(), "database re-keyed");
        Ok(())
    }

    /// Whether the database was opened with a key.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the read connection. Several statements inside `f` see one snapshot only if
    /// `f` opens a transaction itself; single statements are always consistent.
    pub fn read<T, E>(&self, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let conn = lock(&self.reader);
        f(&conn)
    }

    /// Runs `f` inside an immediate write transaction, committed when `f` returns `Ok` and rolled
    /// back otherwise.
    pub fn write<T, E>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let mut conn = lock(&self.writer);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let value = f(&tx)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(value)
    }

    /// Reads a metadata value.
    pub fn meta_get(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        use rusqlite::OptionalExtension;
        Ok(conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()?)
    }

    /// Writes a metadata value inside the caller's transaction.
    pub fn meta_set(tx: &Transaction<'_>, key: &str, value: &[u8]) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            rusqlite::params![key, value],
        )?;
        Ok(())
    }
}

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    /// Missing or empty: a new database.
    New,
    /// Starts with SQLite's magic string: a plaintext database (or a damaged one).
    Plaintext,
    /// Not plaintext SQLite, but whole 512-byte multiples: what a SQLCipher file looks like
    /// from outside (random salt, then encrypted pages). Only a key can tell more.
    Opaque,
}

/// Classifies the file by its header and size, without opening it in SQLite; refuses a file
/// that can be neither plaintext SQLite nor an encrypted database.
fn check_header(path: &Path) -> Result<FileKind, StoreError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileKind::New),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut header = [0u8; 16];
    let mut read = 0;
    while read < header.len() {
        match file.read(&mut header[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    let len = file
        .metadata()
        .map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    // An empty file is an empty database (SQLite creates files this way).
    if read == 0 {
        Ok(FileKind::New)
    } else if read == header.len() && &header == SQLITE_MAGIC {
        Ok(FileKind::Plaintext)
    } else if len % 512 == 0 {
        // SQLCipher writes whole pages, and a page is 512 bytes to 64 KiB.
        Ok(FileKind::Opaque)
    } else {
        Err(StoreError::NotADatabase {
            path: path.to_path_buf(),
        })
    }
}

/// Read-only look at who owns the database and which schema it has. With a key, this is also
/// where a wrong one shows: the first page fails its HMAC and SQLCipher answers "not a
/// database".
fn inspect(conn: &Connection, path: &Path, key: Option<&EncryptionKey>) -> Result<(), StoreError> {
    let read = || -> rusqlite::Result<(i32, i64, i64)> {
        let app_id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let objects: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        Ok((app_id, version, objects))
    };
    let (app_id, version, objects) = read().map_err(|e| match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) if key.is_some() => StoreError::WrongKey {
            path: path.to_path_buf(),
        },
        Some(ErrorCode::NotADatabase) => StoreError::NotADatabase {
            path: path.to_path_buf(),
        },
        _ => StoreError::from(e),
    })?;
    match (app_id, objects) {
        (APPLICATION_ID, _) if version > SCHEMA_VERSION => Err(StoreError::NewerSchema {
            found: version,
            supported: SCHEMA_VERSION,
        }),
        (APPLICATION_ID, _) | (0, 0) => Ok(()),
        (application_id, _) => Err(StoreError::ForeignDatabase {
            path: path.to_path_buf(),
            application_id,
        }),
    }
}

/// The read connection: keyed first like the writer, and never allowed to write.
fn open_reader(
    path: &Path,
    durability: Durability,
    busy_timeout: Duration,
    key: Option<&EncryptionKey>,
) -> Result<Connection, StoreError> {
    let reader = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    if let Some(key) = key {
        encryption::apply_key(&reader, key)?;
    }
    reader.busy_timeout(busy_timeout)?;
    configure(&reader, durability)?;
    // The reader must never write, even by mistake: writes go through the writer's lock.
    reader.pragma_update(None, "query_only", true)?;
    reader.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    Ok(reader)
}

fn quick_check(conn: &Connection) -> Result<(), StoreError> {
    let result: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
    if result == "ok" {
        Ok(())
    } else {
        Err(StoreError::Corrupt(result))
    }
}

fn configure(conn: &Connection, durability: Durability) -> Result<(), StoreError> {
    // WAL: readers and the writer don't block each other, and a commit is one append.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(
            mode,
            "SQLite refused WAL mode; durability guarantees still hold, concurrency is lower"
        );
    }
    let sync = match durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    // Android's default temp directory is not writable by apps; keep temporary tables in memory.
    conn.pragma_update(None, "temp_store", 2)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

/// Caps the file at `bytes` (whole pages, at least one more than it holds: SQLite never shrinks
/// the limit below the current size).
fn limit_size(conn: &Connection, bytes: u64) -> Result<(), StoreError> {
    // SQLCipher answers `page_size` as text (its `cipher_page_size`); plain SQLite as a number.
    let page_size = match conn.query_row("PRAGMA page_size", [], |r| {
        r.get::<_, rusqlite::types::Value>(0)
    })? {
        rusqlite::types::Value::Integer(n) => n,
        rusqlite::types::Value::Text(text) => text.trim().parse().unwrap_or(4096),
        _ => 4096,
    };
    let pages = i64::try_from(bytes).unwrap_or(i64::MAX) / page_size.max(1);
    let set = conn.query_row(
        &format!("PRAGMA max_page_count = {}", pages.max(1)),
        [],
        |r| r.get::<_, rusqlite::types::Value>(0),
    )?;
    tracing::debug!(bytes, pages = ?set, "database size limit");
    Ok(())
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version >= SCHEMA_VERSION {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| -> Result<(), StoreError> {
        for (index, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(version).unwrap_or(0))
        {
            conn.execute_batch(sql)?;
            tracing::info!(to = index + 1, "applied schema migration");
        }
        conn.pragma_update(None, "application_id", APPLICATION_ID)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            conn.execute_batch("COMMIT")?;
            Ok(())
        }
        Err(e) => {
            // Best effort: the error that caused the rollback is the one worth reporting.
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_bytes(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    #[test]
    fn creates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kryonix.db");
        {
            let store = Store::open(&path, &StoreOptions::default()).unwrap();
            store
                .write(|tx| Store::meta_set(tx, "cursor", b"abc"))
                .unwrap();
        }
        let store = Store::open(&path, &StoreOptions::default()).unwrap();
        let value = store.read(|c| Store::meta_get(c, "cursor")).unwrap();
        assert_eq!(value.as_deref(), Some(&b"abc"[..]));
        let (app, version): (i32, i64) = store
            .read(|c| {
                Ok::<_, StoreError>((
                    c.query_row("PRAGMA application_id", [], |r| r.get(0))?,
                    c.query_row("PRAGMA user_version", [], |r| r.get(0))?,
                ))
            })
            .unwrap();
        assert_eq!((app, version), (APPLICATION_ID, SCHEMA_VERSION));
        let mode: String = store
            .read(|c| {
                c.query_row("PRAGMA journal_mode", [], |r| r.get(0))
                    .map_err(StoreError::from)
            })
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn failed_write_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db"), &StoreOptions::default()).unwrap();
        let result: Result<(), StoreError> = store.write(|tx| {
            Store::meta_set(tx, "k", b"v")?;
            Err(StoreError::Corrupt("simulated".into()))
        });
        assert!(result.is_err());
        assert_eq!(store.read(|c| Store::meta_get(c, "k")).unwrap(), None);
    }

    #[test]
    fn reader_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db"), &StoreOptions::default()).unwrap();
        let result = store.read(|c| {
            c.execute("INSERT INTO meta (key, value) VALUES ('a', x'00')", [])
                .map_err(StoreError::from)
        });
        assert!(result.is_err());
    }

    #[test]
    fn not_a_database_is_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let random = |len: u32| -> Vec<u8> {
            (0..len)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect()
        };
        for (name, content) in [
            (
                "text",
                b"hello, this is a text file and not a database at all".to_vec(),
            ),
            ("short", b"SQLite".to_vec()),
            ("random", random(8000)),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, &content).unwrap();
            let err = Store::open(&path, &StoreOptions::default()).unwrap_err();
            assert!(
                matches!(err, StoreError::NotADatabase { .. }),
                "{name}: {err}"
            );
            assert_eq!(file_bytes(&path), content, "{name} was modified");
            assert!(!dir.path().join(format!("{name}-wal")).exists());
        }
        // Random bytes in whole pages are what an encrypted database looks like without its key:
        // refused as needing one, and left untouched all the same.
        let path = dir.path().join("pages");
        let content = random(8192);
        std::fs::write(&path, &content).unwrap();
        let err = Store::open(&path, &StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::KeyRequired { .. }), "{err}");
        assert_eq!(file_bytes(&path), content);
        assert!(!dir.path().join("pages-wal").exists());
    }

    #[test]
    fn header_ok_but_garbage_after_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake.db");
        let mut content = SQLITE_MAGIC.to_vec();
        content.extend(std::iter::repeat_n(0xAB, 4096));
        std::fs::write(&path, &content).unwrap();
        let err = Store::open(&path, &StoreOptions::default()).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NotADatabase { .. } | StoreError::Corrupt(_)
            ),
            "{err}"
        );
        assert_eq!(file_bytes(&path), content);
    }

    #[test]
    fn foreign_database_is_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
                .unwrap();
        }
        let before = file_bytes(&path);
        let err = Store::open(&path, &StoreOptions::default()).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::ForeignDatabase {
                    application_id: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(file_bytes(&path), before);
    }

    #[test]
    fn newer_schema_is_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("future.db");
        drop(Store::open(&path, &StoreOptions::default()).unwrap());
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        }
        let before = file_bytes(&path);
        let err = Store::open(&path, &StoreOptions::default()).unwrap_err();
        assert!(
            matches!(err, StoreError::NewerSchema { found, supported } if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
            "{err}"
        );
        assert_eq!(file_bytes(&path), before);
    }

    #[test]
    fn corrupt_pages_are_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corrupt.db");
        {
            let store = Store::open(&path, &StoreOptions::default()).unwrap();
            store
                .write(|tx| {
                    for i in 0..500 {
                        Store::meta_set(tx, &format!("key-{i}"), &[7u8; 300])?;
                    }
                    Ok::<_, StoreError>(())
                })
                .unwrap();
            store
                .read(|c| {
                    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                        .map_err(StoreError::from)
                })
                .ok();
        }
        // Checkpoint from a plain connection so every page is in the main file.
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let mut bytes = file_bytes(&path);
        let page = 4096;
        let end = bytes.len().min(6 * page);
        for b in &mut bytes[2 * page..end] {
            *b = 0x5A;
        }
        std::fs::write(&path, &bytes).unwrap();
        let options = StoreOptions {
            verify_on_open: true,
            ..StoreOptions::default()
        };
        let err = Store::open(&path, &options).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        assert_eq!(file_bytes(&path), bytes);
    }

    #[test]
    fn a_version_one_database_migrates_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            // A database exactly as version 1 of this library left it.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "application_id", APPLICATION_ID)
                .unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO outbox (id, tier, namespace, key, op, payload, created_at, next_attempt_at)
                 VALUES ('0193', 1, 2, 'k', 'put', x'01', 5, 5)",
                [],
            )
            .unwrap();
            c.execute("INSERT INTO meta (key, value) VALUES ('cursor', x'02')", [])
                .unwrap();
        }
        let store = Store::open(&path, &StoreOptions::default()).unwrap();
        let (version, outbox, tables): (i64, i64, i64) = store
            .read(|c| {
                Ok::<_, StoreError>((
                    c.query_row("PRAGMA user_version", [], |r| r.get(0))?,
                    c.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?,
                    c.query_row(
                        "SELECT count(*) FROM sqlite_schema WHERE name = 'applied_changes'",
                        [],
                        |r| r.get(0),
                    )?,
                ))
            })
            .unwrap();
        assert_eq!((version, outbox, tables), (SCHEMA_VERSION, 1, 1));
        // The queued item is numbered under the database's first producer, and the tier's
        // numbering continues after it.
        let (seq, next, producer): (i64, i64, String) = store
            .read(|c| {
                Ok::<_, StoreError>((
                    c.query_row("SELECT tier_seq FROM outbox", [], |r| r.get(0))?,
                    c.query_row(
                        "SELECT next_seq FROM outbox_tiers WHERE tier = 1",
                        [],
                        |r| r.get(0),
                    )?,
                    c.query_row("SELECT id FROM outbox_producers", [], |r| r.get(0))?,
                ))
            })
            .unwrap();
        assert_eq!((seq, next, producer.len()), (1, 2, 32));
        assert_eq!(
            store.read(|c| Store::meta_get(c, "cursor")).unwrap(),
            Some(vec![2])
        );
    }

    /// Usage of one namespace: (namespace, entries, charged, raw, stored bytes).
    type NamespaceUsage = (i64, i64, i64, i64, i64);

    /// Writes a database exactly as version 2 of this library left it, holding `rows` (key,
    /// identity-encoded value, charged bytes), and returns its usage as version 2 summed it.
    fn version_two_database(
        path: &Path,
        rows: &[(kryonix_protocol::TenantKey, Vec<u8>, i64)],
    ) -> Vec<NamespaceUsage> {
        let c = Connection::open(path).unwrap();
        for sql in &MIGRATIONS[..2] {
            c.execute_batch(sql).unwrap();
        }
        c.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        c.pragma_update(None, "user_version", 2).unwrap();
        for (key, value, charged) in rows {
            c.execute(
                "INSERT INTO cache_entries (full_key, tenant, namespace, value, encoding, \
                 raw_size, stored_size, created_at, expires_at, last_access, access_count) \
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, 5, NULL, 5, 0)",
                rusqlite::params![
                    key.as_str(),
                    key.tenant(),
                    key.namespace().id(),
                    value,
                    value.len() as i64,
                    charged
                ],
            )
            .unwrap();
        }
        c.prepare(
            "SELECT namespace, count(*), sum(stored_size), sum(raw_size), sum(length(value)) \
             FROM cache_entries GROUP BY namespace ORDER BY namespace",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
    }

    #[test]
    fn a_version_two_database_keeps_its_cache_rows_and_usage() {
        use std::sync::Arc;

        use kryonix_protocol::{Namespace, TenantId, TenantKey};

        use crate::cache::{Cache, CacheConfig};
        use crate::clock::ManualClock;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.db");
        let tenant = TenantId::new("acme").unwrap();
        let rows = [
            (Namespace::UserCache, "a", 10),
            (Namespace::UserCache, "b", 300),
            (Namespace::ApiCache, "c", 7),
        ]
        .map(|(ns, k, len)| {
            let key = TenantKey::new(&tenant, ns, k).unwrap();
            // What version 2 charged: stored value plus key.
            let charged = (len + key.as_str().len()) as i64;
            (key, vec![0x5a; len], charged)
        });
        let before = version_two_database(&path, &rows);
        assert_eq!(before.len(), 2, "two namespaces in use");

        let store = Arc::new(Store::open(&path, &StoreOptions::default()).unwrap());
        let (version, old_column, migrated): (i64, i64, Vec<(String, i64)>) = store
            .read(|c| {
                Ok::<_, StoreError>((
                    c.query_row("PRAGMA user_version", [], |r| r.get(0))?,
                    c.query_row(
                        "SELECT count(*) FROM pragma_table_info('cache_entries') \
                         WHERE name = 'stored_size'",
                        [],
                        |r| r.get(0),
                    )?,
                    c.prepare(
                        "SELECT full_key, charged_bytes FROM cache_entries ORDER BY full_key",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?,
                ))
            })
            .unwrap();
        assert_eq!((version, old_column), (SCHEMA_VERSION, 0));
        let mut expected: Vec<(String, i64)> = rows
            .iter()
            .map(|(key, _, charged)| (key.as_str().to_owned(), *charged))
            .collect();
        expected.sort();
        assert_eq!(migrated, expected, "every row keeps its charged bytes");

        // The cache's ledger, summed from the renamed column, opens with version 2's usage.
        let clock = Arc::new(ManualClock::new(1_000));
        let cache = Cache::open(store, clock, CacheConfig::default()).unwrap();
        let after: Vec<NamespaceUsage> = cache
            .stats()
            .namespaces
            .iter()
            .filter(|n| n.entries > 0)
            .map(|n| {
                let [entries, charged, raw, stored] =
                    [n.entries, n.used_bytes, n.raw_bytes, n.stored_bytes].map(|v| v as i64);
                (i64::from(n.namespace.id()), entries, charged, raw, stored)
            })
            .collect();
        assert_eq!(after, before);
        let (key, value, charged) = &rows[1];
        let entry = cache.get_entry(key).unwrap().unwrap();
        assert_eq!(
            (&entry.value, entry.charged_bytes),
            (value, *charged as u64)
        );
    }

    #[test]
    fn full_durability_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            durability: Durability::Full,
            ..StoreOptions::default()
        };
        let store = Store::open(dir.path().join("db"), &options).unwrap();
        let sync: i64 = store
            .read(|c| {
                c.query_row("PRAGMA synchronous", [], |r| r.get(0))
                    .map_err(StoreError::from)
            })
            .unwrap();
        assert_eq!(sync, 2, "FULL");
    }
}
