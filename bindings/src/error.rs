//! The one error the bindings export, and the one place core errors are mapped to it.
//!
//! Variants are what an app acts on: wait for a network (`Offline`), sign in again
//! (`Unauthorized`), fix the call (`InvalidInput`), free space or drop data (`NamespaceFull`),
//! free space on the device (`StorageFull`), report a broken database (`Storage`), reopen
//! (`Closed`), ship an update (`UpgradeRequired`), wait for the other agent on the file
//! (`AlreadyOpen`), find the right key or give up the data (`WrongKey`), migrate a plaintext file
//! (`NotEncrypted`). Everything else is `Other`.
//! Named `KryonixError`, never `Error`, so it cannot clash with Swift's `Error` protocol;
//! Kotlin sees it as `KryonixException`.

use crate::types::Count;
use kryonix_core::sync::FailureKind;
use kryonix_core::{CacheError, Error, OutboxError, StoreError};

/// A path for the app: it chose it, so showing it back leaks nothing.
fn display(path: &std::path::Path) -> String {
    path.display().to_string()
}

#[derive(Debug, thiserror::Error, uniffi::Error)]
// Display is exported: Swift gets `description` (and, through `ios/`, `localizedDescription`), Kotlin
// `toString()`, both the sentence above each case rather than a dump of its fields.
#[uniffi::export(Display)]
pub enum KryonixError {
    /// The server could not be reached, or answered "try later". Retry when the network changes.
    #[error("offline: {reason}")]
    Offline { reason: String },
    /// The server refused the token even after a refresh, or the token provider said the user
    /// must sign in: the user must sign in again.
    #[error("unauthorized: {reason}")]
    Unauthorized { reason: String },
    /// The token is another tenant's than `AgentConfig.tenant`. Nothing was sent (uploads
    /// would have gone to the token's tenant); open the agent with matching tenant and token.
    #[error("tenant mismatch: {reason}")]
    TenantMismatch {
        token_tenant: String,
        reason: String,
    },
    /// The server's certificate was refused: not from a trusted CA (the platform's, or
    /// `AgentConfig.serverCaPem`), expired, for another host, or matching no `serverPins`.
    /// Nothing was sent and every item is kept; the agent tries again at the tier's next slot.
    #[error("untrusted server: {reason}")]
    Untrusted { reason: String },
    /// The call can never succeed as made: a bad key, tenant, id or TTL, a value too large.
    #[error("invalid input: {reason}")]
    InvalidInput { reason: String },
    /// A `noeviction` namespace has no room left; nothing was written.
    #[error("namespace {namespace} is full ({} of {} bytes used, {} needed)", used.0, budget.0, needed.0)]
    NamespaceFull {
        namespace: String,
        used: Count,
        needed: Count,
        budget: Count,
    },
    /// No dead letter (or queued item) with this id.
    #[error("not found: {id}")]
    NotFound { id: String },
    /// The device's storage is full: nothing was written, and everything written before is
    /// intact. The same call succeeds once space is freed (the cache has already evicted what
    /// its policies allow).
    #[error("the device storage is full; nothing was written")]
    StorageFull,
    /// The database failed. `retryable` is true when the same call may succeed later (the file
    /// was locked by another process); otherwise the file is unusable as it is.
    #[error("storage: {reason}")]
    Storage { reason: String, retryable: bool },
    /// The server no longer serves this app or protocol version: the app must be updated.
    /// Nothing queued is lost; an updated app opening the same database uploads it.
    #[error(
        "upgrade required (minimum protocol {min_protocol:?}, minimum app version {min_app_version:?})"
    )]
    UpgradeRequired {
        min_protocol: Option<i32>,
        min_app_version: Option<String>,
    },
    /// The agent was closed; open a new one.
    #[error("closed: {reason}")]
    Closed { reason: String },
    /// Another agent, in this process or another, has this database file open. Shut that one
    /// down first; a crashed process never leaves the file held.
    #[error("{path} is already open by another agent")]
    AlreadyOpen { path: String },
    /// The key given does not open the database: another key, no key for an encrypted file, or
    /// a file that is not a database at all (encrypted pages look like random bytes). The file
    /// was not changed. Without its key the data cannot be recovered.
    #[error("the key does not open the database: {reason}")]
    WrongKey { reason: String },
    /// Opened with a key, the database is still plaintext. Encrypt it first with
    /// `encrypt_database`, or open it without a key; it is never converted silently.
    #[error("{path} is not encrypted; call encrypt_database first")]
    NotEncrypted { path: String },
    /// Anything else (a failed task, a callback that threw).
    #[error("{reason}")]
    Other { reason: String },
}

impl From<Error> for KryonixError {
    fn from(error: Error) -> Self {
        let retryable = error.is_retryable();
        let mapped = match error {
            Error::Transport(e) => match e.kind {
                FailureKind::Unauthorized => Self::Unauthorized { reason: e.message },
                FailureKind::TenantMismatch { token_tenant } => Self::TenantMismatch {
                    token_tenant,
                    reason: e.message,
                },
                FailureKind::TooLarge => Self::InvalidInput { reason: e.message },
                FailureKind::Untrusted => Self::Untrusted { reason: e.message },
                FailureKind::Retryable { .. } => Self::Offline { reason: e.message },
                FailureKind::UpgradeRequired(u) => Self::UpgradeRequired {
                    min_protocol: u.min_protocol.and_then(|p| i32::try_from(p).ok()),
                    min_app_version: u.min_app_version,
                },
            },
            Error::Cache(CacheError::NamespaceFull {
                namespace,
                used,
                needed,
                budget,
                ..
            }) => Self::NamespaceFull {
                namespace: namespace.name().to_owned(),
                used: Count::of(used),
                needed: Count::of(needed),
                budget: Count::of(budget),
            },
            Error::Outbox(OutboxError::NotFound(id)) => Self::NotFound { id: id.to_string() },
            Error::Store(StoreError::AlreadyOpen { path }) => Self::AlreadyOpen {
                path: display(&path),
            },
            Error::Store(e @ (StoreError::WrongKey { .. } | StoreError::KeyRequired { .. })) => {
                Self::WrongKey {
                    reason: e.to_string(),
                }
            }
            Error::Store(StoreError::NotEncrypted { path }) => Self::NotEncrypted {
                path: display(&path),
            },
            // Only a build without SQLCipher says this; the bindings always link it.
            Error::Store(e @ StoreError::EncryptionUnavailable) => Self::Other {
                reason: e.to_string(),
            },
            Error::Cache(
                e @ (CacheError::InvalidKey(_)
                | CacheError::ValueTooLarge { .. }
                | CacheError::InvalidTtl
                | CacheError::ExceedsNamespaceBudget { .. }),
            ) => Self::InvalidInput {
                reason: e.to_string(),
            },
            Error::Outbox(
                e @ (OutboxError::InvalidKey(_)
                | OutboxError::PayloadTooLarge { .. }
                | OutboxError::InternalNamespace(_)),
            ) => Self::InvalidInput {
                reason: e.to_string(),
            },
            Error::Store(StoreError::Full)
            | Error::Cache(CacheError::Store(StoreError::Full))
            | Error::Outbox(OutboxError::Store(StoreError::Full)) => Self::StorageFull,
            e @ (Error::Store(_)
            | Error::Cache(CacheError::Store(_) | CacheError::Codec(_))
            | Error::Outbox(OutboxError::Store(_) | OutboxError::BadRow(_))) => Self::Storage {
                reason: e.to_string(),
                retryable,
            },
            Error::Closed => Self::closed(),
            e @ Error::InvalidConfig(_) => Self::InvalidInput {
                reason: e.to_string(),
            },
            Error::Task(reason) | Error::Setup(reason) => Self::Other { reason },
        };
        // What the app cannot fix by itself is logged here, once; the rest is its own business.
        match &mapped {
            Self::Storage {
                retryable: false, ..
            }
            | Self::Other { .. } => tracing::error!(error = %mapped, "kryonix call failed"),
            Self::Storage { .. }
            | Self::NamespaceFull { .. }
            | Self::StorageFull
            | Self::WrongKey { .. }
            | Self::AlreadyOpen { .. } => {
                tracing::warn!(error = %mapped, "kryonix call failed");
            }
            _ => tracing::debug!(error = %mapped, "kryonix call failed"),
        }
        mapped
    }
}

impl KryonixError {
    pub(crate) fn closed() -> Self {
        Self::Closed {
            reason: "the agent was shut down; open a new one".into(),
        }
    }
}

impl From<StoreError> for KryonixError {
    fn from(error: StoreError) -> Self {
        Error::from(error).into()
    }
}

impl From<CacheError> for KryonixError {
    fn from(error: CacheError) -> Self {
        Error::from(error).into()
    }
}

#[cfg(test)]
mod tests {
    use kryonix_core::sync::TransportError;
    use kryonix_protocol::key::KeyPart;
    use kryonix_protocol::{EvictionPolicy, KeyError, Namespace};

    use super::*;

    #[test]
    fn each_core_error_maps_to_the_variant_an_app_acts_on() {
        let unauthorized = Error::Transport(TransportError {
            kind: FailureKind::Unauthorized,
            message: "401".into(),
        });
        assert!(matches!(
            KryonixError::from(unauthorized),
            KryonixError::Unauthorized { .. }
        ));
        let offline = Error::Transport(TransportError {
            kind: FailureKind::Retryable { retry_after: None },
            message: "connection refused".into(),
        });
        assert!(matches!(
            KryonixError::from(offline),
            KryonixError::Offline { .. }
        ));
        let key = Error::from(CacheError::InvalidKey(KeyError::Empty(KeyPart::Key)));
        assert!(matches!(
            KryonixError::from(key),
            KryonixError::InvalidInput { .. }
        ));
        let full = Error::from(CacheError::NamespaceFull {
            namespace: Namespace::MobileSync,
            policy: EvictionPolicy::Noeviction,
            used: 10,
            needed: 5,
            budget: 12,
        });
        assert!(matches!(
            KryonixError::from(full),
            KryonixError::NamespaceFull {
                used: Count(10),
                needed: Count(5),
                budget: Count(12),
                ..
            }
        ));
        let full = Error::from(OutboxError::Store(StoreError::Full));
        assert!(full.is_retryable());
        assert!(matches!(
            KryonixError::from(full),
            KryonixError::StorageFull
        ));
        let corrupt = Error::from(StoreError::Corrupt("bad page".into()));
        assert!(matches!(
            KryonixError::from(corrupt),
            KryonixError::Storage {
                retryable: false,
                ..
            }
        ));
        let upgrade = Error::Transport(TransportError {
            kind: FailureKind::UpgradeRequired(kryonix_core::sync::UpgradeRequired {
                min_protocol: Some(2),
                min_app_version: Some("4.2.0".into()),
            }),
            message: "426".into(),
        });
        match KryonixError::from(upgrade) {
            KryonixError::UpgradeRequired {
                min_protocol,
                min_app_version,
            } => {
                assert_eq!(min_protocol, Some(2));
                assert_eq!(min_app_version.as_deref(), Some("4.2.0"));
            }
            other => panic!("expected UpgradeRequired, got {other:?}"),
        }
        assert!(matches!(
            KryonixError::from(Error::Closed),
            KryonixError::Closed { .. }
        ));
    }

    #[test]
    fn store_open_errors_map_to_their_own_variants() {
        use std::path::PathBuf;

        let path = PathBuf::from("/data/app/kryonix.db");
        assert!(matches!(
            KryonixError::from(StoreError::AlreadyOpen { path: path.clone() }),
            KryonixError::AlreadyOpen { path } if path == "/data/app/kryonix.db"
        ));
        for e in [
            StoreError::WrongKey { path: path.clone() },
            StoreError::KeyRequired { path: path.clone() },
        ] {
            assert!(
                matches!(KryonixError::from(e), KryonixError::WrongKey { .. }),
                "wrong key"
            );
        }
        assert!(matches!(
            KryonixError::from(StoreError::NotEncrypted { path }),
            KryonixError::NotEncrypted { .. }
        ));
        assert!(matches!(
            KryonixError::from(StoreError::Cipher("export failed".into())),
            KryonixError::Storage {
                retryable: false,
                ..
            }
        ));
        let short = crate::encryption::key(vec![0; 16]).unwrap_err();
        assert!(
            matches!(short, KryonixError::InvalidInput { ref reason } if reason.contains("32")),
            "{short}"
        );
    }

    #[test]
    fn the_config_debug_never_shows_the_key() {
        let config = crate::types::AgentConfig {
            db_path: "db".into(),
            server_url: "https://sync.example.com".into(),
            tenant: "acme".into(),
            device: crate::types::DeviceClass::Phone,
            network: crate::types::NetworkProfile {
                kind: crate::types::NetworkClass::Wifi,
                metered: false,
            },
            cache_budget_bytes: None,
            max_value_bytes: None,
            request_timeout: None,
            max_db_bytes: None,
            app_version: None,
            encryption_key: Some(vec![0xAB; 32]),
            server_ca_pem: None,
            server_pins: vec![],
            cache_eviction: None,
        };
        let shown = format!("{config:?}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(
            !shown.contains("171") && !shown.to_lowercase().contains("ab, "),
            "{shown}"
        );
    }
}
