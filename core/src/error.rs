//! The crate-wide error: one enum over each module's own, so callers that don't care which part
//! failed (the sync engine, the FFI layer) handle one type, and callers that do can match.

use crate::cache::CacheError;
use crate::outbox::OutboxError;
use crate::store::StoreError;

/// Any error of `kryonix-core`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("sync: {0}")]
    Transport(crate::sync::TransportError),
    #[error("the agent is closed")]
    Closed,
    /// The configuration can never work as given (a server URL that is not an http(s) URL);
    /// found at open, so a config bug does not look like a network outage later.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The agent could not be set up (e.g. no TLS roots for the HTTP client): retrying the same
    /// call will not help.
    #[error("cannot start the agent: {0}")]
    Setup(String),
    #[error("the sync task failed: {0}")]
    Task(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the same call may succeed later without the caller changing anything: a database
    /// locked by another process, or held by another agent, is retryable; an invalid key, a
    /// wrong encryption key or a corrupt file is not.
    pub fn is_retryable(&self) -> bool {
        if let Self::Transport(e) = self {
            return matches!(e.kind, crate::sync::FailureKind::Retryable { .. });
        }
        if let Self::Store(StoreError::AlreadyOpen { .. }) = self {
            return true;
        }
        let store = match self {
            Self::Store(e) => Some(e),
            Self::Cache(CacheError::Store(e)) => Some(e),
            Self::Outbox(OutboxError::Store(e)) => Some(e),
            _ => None,
        };
        // A full disk is retryable too: the same call succeeds once space is freed.
        matches!(store, Some(StoreError::Full))
            || matches!(
                store,
                Some(StoreError::Sqlite(e)) if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                )
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kryonix_protocol::KeyError;

    #[test]
    fn permanent_errors_are_not_retryable() {
        let e: Error = OutboxError::PayloadTooLarge { size: 2, max: 1 }.into();
        assert!(!e.is_retryable());
        let e: Error = CacheError::InvalidKey(KeyError::Malformed).into();
        assert!(!e.is_retryable());
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        let e: Error = OutboxError::from(busy).into();
        assert!(e.is_retryable());
    }
}
