//! One owner per database file: an exclusive OS lock on a sidecar `<db>.lock` file.
//!
//! SQLite lets any number of connections share a file, so without this a second agent opened on
//! a file a live agent holds would start a second sync loop over the same outbox, and both would
//! hand out the same items. The lock is advisory (`flock` on Unix, through std's
//! [`File::try_lock`]) and belongs to the open file description: the kernel drops it when the
//! process dies, however it dies, so a crash or SIGKILL never leaves the database locked.
//!
//! The lock lives on a sidecar rather than on the database itself because SQLite takes its own
//! POSIX locks on the database file, and closing any descriptor of that file would drop them.
//! The sidecar is never deleted: removing it while another process waits on it would let two
//! processes lock two different files of the same name.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use super::StoreError;

/// Held while an agent (or a maintenance call such as [`super::Store::encrypt_plaintext`]) owns
/// the database file; dropping it releases the lock.
#[derive(Debug)]
pub struct FileLock {
    /// Kept open: closing it is what releases the lock.
    _file: File,
    path: PathBuf,
}

/// The sidecar of `db_path`: the same name with `.lock` appended (`kryonix.db.lock`).
pub fn lock_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl FileLock {
    /// Takes the lock of `db_path`, or fails at once with [`StoreError::AlreadyOpen`] when
    /// another agent, in this process or another, holds it. Never waits.
    pub fn acquire(db_path: &Path) -> Result<Self, StoreError> {
        let path = lock_path(db_path);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file, path }),
            Err(TryLockError::WouldBlock) => Err(StoreError::AlreadyOpen {
                path: db_path.to_path_buf(),
            }),
            Err(TryLockError::Error(source)) => Err(io(source)),
        }
    }

    /// The sidecar file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("device.db");
        let first = FileLock::acquire(&db).unwrap();
        assert_eq!(first.path(), dir.path().join("device.db.lock"));
        // Same process, another descriptor: flock locks conflict between descriptors.
        let err = FileLock::acquire(&db).unwrap_err();
        assert!(
            matches!(err, StoreError::AlreadyOpen { ref path } if *path == db),
            "{err}"
        );
        drop(first);
        let again = FileLock::acquire(&db).unwrap();
        // Other files are independent.
        let _other = FileLock::acquire(&dir.path().join("other.db")).unwrap();
        drop(again);
        assert!(dir.path().join("device.db.lock").exists(), "never deleted");
    }

    #[test]
    fn a_missing_directory_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = FileLock::acquire(&dir.path().join("missing/device.db")).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
    }
}
