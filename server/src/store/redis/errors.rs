//! Redis errors in the terms a handler acts on: out of memory (back-pressure), unavailable
//! (retry), or internal (a bug or an unexpected reply).

use redis::RedisError;

use crate::store::StoreError;

/// Maps a Redis error to what a handler acts on.
pub fn classify(err: &RedisError) -> StoreError {
    if err.code() == Some("OOM") || err.to_string().contains("OOM command not allowed") {
        return StoreError::OutOfMemory;
    }
    // A transaction whose queued commands Redis refused: EXEC aborts and nothing runs. Refused
    // for memory, that is back-pressure like any OOM; the error lists the refusals.
    if err.code() == Some("EXECABORT") && err.to_string().contains("OOM") {
        return StoreError::OutOfMemory;
    }
    if err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || matches!(
            err.code(),
            Some("LOADING" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "BUSY")
        )
    {
        return StoreError::Unavailable(err.to_string());
    }
    StoreError::Internal(err.to_string())
}

/// A connection that could not be set up, in the terms an operator acts on: the certificate,
/// the credentials, or else the network (retryable). The text is Redis's or rustls's, which
/// never holds the password.
pub(super) fn connect_error(err: RedisError) -> StoreError {
    let text = err.to_string();
    let lower = text.to_lowercase();
    if lower.contains("certificate") || lower.contains("tls") && lower.contains("handshake") {
        return StoreError::Unavailable(format!(
            "TLS to Redis failed: {text} (the server's certificate must chain to the system roots or to --redis-ca-file, be valid now and name the host)"
        ));
    }
    if err.kind() == redis::ErrorKind::AuthenticationFailed
        || ["WRONGPASS", "NOAUTH", "invalid username-password"]
            .iter()
            .any(|m| text.contains(m))
    {
        return StoreError::Unavailable(format!(
            "Redis refused the credentials: {text} (check --redis-username and KRYONIX_REDIS_PASSWORD or --redis-password-file)"
        ));
    }
    classify(&err)
}

pub(super) fn map(err: RedisError) -> StoreError {
    classify(&err)
}

pub(super) fn key_err(err: kryonix_protocol::KeyError) -> StoreError {
    // Handlers validate every part first, so a key that fails here is a bug.
    StoreError::Internal(format!("server-built key refused: {err}"))
}
