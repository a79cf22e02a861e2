//! `POST /v1/tokens/revoke`: a backend (service token) revokes one of its tenant's tokens before
//! it expires — a lost phone, a signed-out device. The revocation is kept in `auth_tokens` until
//! the token's expiry, and every request after it answers `401` for that token (the check is in
//! `authenticate`); the device's other tokens keep working until they are revoked too.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use kryonix_protocol::wire::{RevokeRequest, RevokeResponse};

use super::{AppState, Caller, JsonBody};
use crate::auth::{Scope, valid_token_id};
use crate::error::AppError;

/// How long a revocation given by id alone is kept: longer than any token this server mints
/// for devices (`token --ttl-secs` defaults to a day; apps mint for hours).
pub const DEFAULT_REVOCATION_SECS: u64 = 30 * 24 * 3600;

/// The longest a revocation is kept, whatever expiry it is given: a hundred years (and within
/// what Redis accepts for `EXAT`).
pub const MAX_REVOCATION_SECS: u64 = 100 * 365 * 24 * 3600;

/// `until` no further than [`MAX_REVOCATION_SECS`] from `now`.
pub fn bounded(until: u64, now: u64) -> u64 {
    until.min(now.saturating_add(MAX_REVOCATION_SECS))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `POST /v1/tokens/revoke` (service token).
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<RevokeRequest>,
) -> Result<Json<RevokeResponse>, AppError> {
    caller.require(Scope::Service)?;
    let tenant = &caller.0.tenant;
    let (jti, until) = match (request.token, request.jti) {
        (Some(token), None) => {
            // Signed here (a forged token is refused), perhaps expired, of this tenant only.
            let principal = state
                .tokens
                .inspect(&token)
                .map_err(|e| AppError::Malformed(format!("token: {e}")))?;
            if &principal.tenant != tenant {
                return Err(AppError::Forbidden(
                    "a service revokes only its own tenant's tokens".into(),
                ));
            }
            let jti = principal.jti.ok_or_else(|| {
                AppError::Malformed(
                    "the token has no id (jti): it cannot be revoked alone; rotate the secret"
                        .into(),
                )
            })?;
            (jti, principal.expires_at)
        }
        (None, Some(jti)) => {
            if !valid_token_id(&jti) {
                return Err(AppError::Malformed(
                    "jti must be 1 to 64 characters without ':' or control characters".into(),
                ));
            }
            let until = request
                .expires_at
                .unwrap_or_else(|| now_secs().saturating_add(DEFAULT_REVOCATION_SECS));
            (jti, until)
        }
        _ => {
            return Err(AppError::Malformed(
                "give either the token or its jti (with expires_at)".into(),
            ));
        }
    };
    let until = bounded(until, now_secs());
    if until <= now_secs() {
        // Expired already: every request refuses it without a record.
        return Ok(Json(RevokeResponse {
            jti,
            revoked_until: until,
        }));
    }
    state
        .store
        .revoke(tenant, &jti, until)
        .await
        .map_err(|e| state.store_error(e))?;
    tracing::info!(tenant = %tenant, jti, until, "token revoked");
    Ok(Json(RevokeResponse {
        jti,
        revoked_until: until,
    }))
}
