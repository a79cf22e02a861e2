//! The one error type every handler returns, and its mapping to an HTTP answer.
//!
//! Every error leaves as `{ "error": { "code", "message" } }` ([`ErrorBody`]) with the status the
//! protocol documents. Client errors carry a message that helps the caller fix the request;
//! server errors (a bug, an unexpected Redis reply) answer a generic 500 and keep the details in
//! the log, so nothing internal leaks to a device.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kryonix_protocol::wire::{ErrorBody, error_code};
use kryonix_protocol::{KeyError, MIN_PROTOCOL_VERSION};

use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the body, query or a header does not parse.
    #[error("{0}")]
    Malformed(String),
    /// 400: the client speaks a newer protocol version than this server.
    #[error("{0}")]
    UnsupportedProtocol(String),
    /// 426: the client's protocol or app version is below the server's minimum.
    #[error("{message}")]
    UpgradeRequired {
        message: String,
        min_app_version: Option<String>,
    },
    /// 401: missing, forged or expired token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a valid token that may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such route or entry.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413: body, batch or value over its limit.
    #[error("{0}")]
    TooLarge(String),
    /// 422: a key or namespace that breaks the key rules.
    #[error("{0}")]
    InvalidKey(#[from] KeyError),
    /// 429: over the tenant's or the device's rate.
    #[error("rate limit exceeded for this {scope}")]
    RateLimited {
        scope: &'static str,
        retry_after: Duration,
    },
    /// 503: the sync store is short of memory; this tier waits so tier 1 keeps the headroom.
    #[error("the sync store is under memory pressure; retry later")]
    Backpressure { retry_after: Duration },
    /// 503: the store cannot be reached, or did not confirm in time.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or an unexpected reply; the string goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    /// The status and the stable code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Malformed(_) => (StatusCode::BAD_REQUEST, error_code::MALFORMED),
            Self::UnsupportedProtocol(_) => {
                (StatusCode::BAD_REQUEST, error_code::UNSUPPORTED_PROTOCOL)
            }
            Self::UpgradeRequired { .. } => {
                (StatusCode::UPGRADE_REQUIRED, error_code::UPGRADE_REQUIRED)
            }
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, error_code::UNAUTHORIZED),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, error_code::FORBIDDEN),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, error_code::NOT_FOUND),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                error_code::METHOD_NOT_ALLOWED,
            ),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, error_code::TOO_LARGE),
            Self::InvalidKey(KeyError::UnknownNamespace(_)) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                error_code::UNKNOWN_NAMESPACE,
            ),
            Self::InvalidKey(_) => (StatusCode::UNPROCESSABLE_ENTITY, error_code::INVALID_KEY),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, error_code::RATE_LIMITED),
            Self::Backpressure { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, error_code::BACKPRESSURE)
            }
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, error_code::UNAVAILABLE),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, error_code::INTERNAL),
        }
    }

    /// How long the client should wait before retrying, when the error is transient.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::Backpressure { retry_after } => {
                Some(*retry_after)
            }
            Self::Unavailable(_) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

impl From<StoreError> for AppError {
    fn from(err: StoreError) -> Self {
        match err {
            // The caller maps memory refusals to the tier-aware answer; reaching here means a
            // write outside the push path (publish, cache) hit a full Redis.
            StoreError::OutOfMemory => Self::Backpressure {
                retry_after: Duration::from_secs(5),
            },
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "store unavailable");
                Self::Unavailable("the store is unavailable; retry later".into())
            }
            StoreError::BadCursor => {
                Self::Malformed("the cursor is not one this server issued".into())
            }
            StoreError::Internal(detail) => Self::Internal(detail),
        }
    }
}

/// Whole seconds, rounded up, at least one: `Retry-After` has no sub-second form.
pub fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            Self::Internal(detail) => {
                // The only place the details go: the log.
                tracing::error!(%detail, "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let retry_after = self.retry_after();
        let mut body = ErrorBody::new(code, message);
        if let Self::UpgradeRequired {
            min_app_version, ..
        } = self
        {
            body.error.min_protocol = Some(MIN_PROTOCOL_VERSION);
            body.error.min_app_version = min_app_version;
        }
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(wait) = retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(wait)),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn internal_errors_do_not_leak() {
        let response =
            AppError::Internal("redis said WRONGTYPE at 10.0.0.3".into()).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(body.error.code, "internal");
        assert!(!body.error.message.contains("WRONGTYPE"));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn key_errors_pick_their_code() {
        let unknown = AppError::InvalidKey(KeyError::UnknownNamespace(
            kryonix_protocol::UnknownNamespace("x".into()),
        ));
        assert_eq!(unknown.status_and_code().1, "unknown_namespace");
        let long = AppError::InvalidKey(KeyError::TooLong { len: 300, max: 250 });
        assert_eq!(
            long.status_and_code(),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_key")
        );
    }
}
