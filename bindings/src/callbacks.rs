//! The traits the app implements (foreign traits) and their adapters to core's traits.
//!
//! None is called on the app's main thread. The observer and the cache watcher run on the
//! bindings' runtime threads: keep them quick. The token provider runs on the runtime's blocking pool, so it may
//! block (a token refresh over the network) without stalling other agents' sync. Both must be
//! thread-safe. Implementations must not hold a strong reference to the
//! `KryonixAgent` they are given to (the agent owns them; a reference back is a cycle that
//! keeps both alive).

use std::fmt;
use std::sync::Arc;

use kryonix_core::ItemId;

use crate::types::{CacheChange, SyncStatus};

/// What a callback may throw. Anything else it throws arrives as `Unexpected`.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi::export(Display)]
pub enum CallbackError {
    #[error("{reason}")]
    Failed { reason: String },
    #[error("unexpected callback error: {reason}")]
    Unexpected { reason: String },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for CallbackError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::Unexpected { reason: e.reason }
    }
}

/// Told about sync progress. Errors it throws are logged and otherwise ignored.
#[uniffi::export(with_foreign)]
pub trait SyncObserver: Send + Sync {
    /// A new status snapshot (queue depths, online, last error, unauthorized).
    fn on_status(&self, status: SyncStatus) -> Result<(), CallbackError>;
    /// The server refused an item for good; it is now in `dead_letters()`.
    fn on_dead_letter(&self, id: String, code: String, reason: String)
    -> Result<(), CallbackError>;
}

/// What a token provider throws when it has no token. The kind decides what the app is told:
/// only `SignInRequired` becomes `KryonixError.Unauthorized` ("sign the user in again");
/// `Unavailable` — and anything else the provider throws — is retried like a network failure.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi::export(Display)]
pub enum TokenError {
    /// The user must sign in again (the refresh token was revoked or expired).
    #[error("sign-in required: {reason}")]
    SignInRequired { reason: String },
    /// No token right now (the identity provider is unreachable, a refresh timed out).
    #[error("no token for now: {reason}")]
    Unavailable { reason: String },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for TokenError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::Unavailable {
            reason: first_line(&e.reason),
        }
    }
}

/// The first line of what a foreign exception printed: its type and message, not the stack
/// trace that a Kotlin exception's string form carries (it would end up in `lastError`).
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default().trim();
    line.chars().take(500).collect()
}

/// Told when watched cache keys change (`KryonixAgent.watch`, `watchNamespace`). Called for one
/// watch at a time, in order: first the state when the watch began, then a batch per change that
/// committed, at most one change per key, each with the key's newest value. Keep it quick (hand
/// the batch to a channel or stream): while it runs, later changes of the same keys are merged
/// into the next batch. Errors it throws are logged and otherwise ignored.
#[uniffi::export(with_foreign)]
pub trait CacheWatcher: Send + Sync {
    fn on_change(&self, changes: Vec<CacheChange>) -> Result<(), CallbackError>;
}

/// Supplies bearer tokens; the app owns sign-in.
#[uniffi::export(with_foreign)]
pub trait TokenProvider: Send + Sync {
    /// A token for the server; `refresh` is true after the server refused the previous one.
    /// Asked before every request, on a background thread that may block: return the current
    /// token at once and refresh (over the network if need be) only when `refresh` is true.
    /// Throw `TokenError.SignInRequired` when the user must sign in again, and
    /// `TokenError.Unavailable` when there is no token for now.
    fn token(&self, refresh: bool) -> Result<String, TokenError>;
}

/// Core's observer, forwarding to the app's.
pub(crate) struct ObserverAdapter(pub Arc<dyn SyncObserver>);

impl fmt::Debug for ObserverAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ObserverAdapter")
    }
}

impl kryonix_core::sync::SyncObserver for ObserverAdapter {
    fn on_status(&self, status: &kryonix_core::sync::SyncStatus) {
        if let Err(e) = self.0.on_status(status.clone().into()) {
            tracing::warn!(error = %e, "the app's SyncObserver.on_status failed");
        }
    }

    fn on_dead_letter(&self, id: ItemId, code: &str, reason: &str) {
        if let Err(e) = self
            .0
            .on_dead_letter(id.to_string(), code.to_owned(), reason.to_owned())
        {
            tracing::warn!(error = %e, "the app's SyncObserver.on_dead_letter failed");
        }
    }
}

/// Core's token provider, asking the app's.
pub(crate) struct TokenAdapter(pub Arc<dyn TokenProvider>);

impl fmt::Debug for TokenAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenAdapter")
    }
}

impl kryonix_core::sync::TokenProvider for TokenAdapter {
    fn token(&self, refresh: bool) -> Result<String, kryonix_core::sync::TokenError> {
        use kryonix_core::sync::TokenError as Core;
        self.0.token(refresh).map_err(|e| match e {
            TokenError::SignInRequired { reason } => Core::SignInRequired(first_line(&reason)),
            TokenError::Unavailable { reason } => Core::Unavailable(first_line(&reason)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_exception_keeps_its_message_not_its_stack_trace() {
        let thrown = uniffi::UnexpectedUniFFICallbackError {
            reason: "java.io.IOException: identity provider unreachable\n\tat com.example.Auth.refresh(Auth.kt:12)\n\tat ...".into(),
        };
        match TokenError::from(thrown) {
            TokenError::Unavailable { reason } => {
                assert_eq!(reason, "java.io.IOException: identity provider unreachable");
            }
            other => panic!("{other:?}"),
        }
    }
}
