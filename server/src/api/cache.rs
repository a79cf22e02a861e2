//! The L2 cache: `GET|PUT|DELETE /v1/cache/{namespace}/{key}` and
//! `POST /v1/cache/{namespace}/_mget`.
//!
//! Keys are always scoped to the caller's tenant and stored in the Redis database numbered like
//! the namespace. Three namespaces are internal and refused here: mobile_sync (the durable
//! streams), rate_limiting (the limiter's own state) and distributed_locks (server coordination);
//! letting a device write them would let it corrupt sync or limits.

use std::time::Duration;

use axum::extract::{Path, State, rejection::PathRejection};
use axum::http::{HeaderMap, StatusCode};
use axum::{Json, response::IntoResponse};
use kryonix_protocol::wire::{CacheEntry, CachePut, MultiGetRequest, MultiGetResponse};
use kryonix_protocol::{DEVICE_PROFILE_HEADER, DeviceProfile, Namespace, TenantKey, default_ttl};

use super::{AppState, Caller, JsonBody};
use crate::error::AppError;

/// Most keys in one multi-get.
pub const MAX_MULTI_GET_KEYS: usize = 100;

/// Resolves and checks the namespace for this caller.
fn namespace_for(
    state: &AppState,
    caller: &Caller,
    name: &str,
    write: bool,
) -> Result<Namespace, AppError> {
    let namespace = Namespace::from_name(name).map_err(|e| AppError::InvalidKey(e.into()))?;
    if namespace.is_internal() {
        return Err(AppError::Forbidden(format!(
            "namespace {namespace} is not available through the cache API"
        )));
    }
    let policy = caller.policy(state);
    if !policy.allows(namespace) {
        return Err(AppError::Forbidden(format!(
            "the tenant may not use namespace {namespace}"
        )));
    }
    if write && policy.read_only {
        return Err(AppError::Forbidden("the tenant is read-only".into()));
    }
    Ok(namespace)
}

fn path(path: Result<Path<(String, String)>, PathRejection>) -> Result<(String, String), AppError> {
    path.map(|Path(p)| p)
        .map_err(|e| AppError::Malformed(format!("invalid path: {e}")))
}

/// `GET /v1/cache/{namespace}/{key}`.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    raw: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<CacheEntry>, AppError> {
    let (ns, key) = path(raw)?;
    let namespace = namespace_for(&state, &caller, &ns, false)?;
    TenantKey::new(&caller.0.tenant, namespace, &key)?;
    let mut found = state
        .store
        .cache_get(&caller.0.tenant, namespace, std::slice::from_ref(&key))
        .await
        .map_err(|e| state.store_error(e))?;
    match found.pop().flatten() {
        Some(c) => Ok(Json(CacheEntry {
            key,
            value: c.value,
            encoding: c.encoding,
            ttl_secs: c.ttl_secs,
        })),
        None => Err(AppError::NotFound("no such cache entry".into())),
    }
}

/// The TTL of a put: the body's, else the adaptive TTL of the device profile header, else the
/// namespace default.
fn ttl_for(
    headers: &HeaderMap,
    namespace: Namespace,
    requested: Option<u64>,
) -> Result<Duration, AppError> {
    if let Some(secs) = requested {
        if secs == 0 {
            return Err(AppError::Malformed("ttl_secs must be positive".into()));
        }
        return Ok(Duration::from_secs(secs));
    }
    match headers.get(DEVICE_PROFILE_HEADER) {
        Some(value) => {
            let profile: DeviceProfile = value
                .to_str()
                .map_err(|_| AppError::Malformed("the device profile header is not text".into()))?
                .parse()
                .map_err(|e: kryonix_protocol::profile::InvalidProfile| {
                    AppError::Malformed(e.to_string())
                })?;
            Ok(default_ttl(namespace, profile))
        }
        None => Ok(namespace.default_ttl()),
    }
}

/// `PUT /v1/cache/{namespace}/{key}`: 204 on success.
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    raw: Result<Path<(String, String)>, PathRejection>,
    JsonBody(body): JsonBody<CachePut>,
) -> Result<impl IntoResponse, AppError> {
    let (ns, key) = path(raw)?;
    let namespace = namespace_for(&state, &caller, &ns, true)?;
    TenantKey::new(&caller.0.tenant, namespace, &key)?;
    if body.value.len() > state.config.max_value_bytes {
        return Err(AppError::TooLarge(format!(
            "the value is over {} bytes",
            state.config.max_value_bytes
        )));
    }
    let ttl = ttl_for(&headers, namespace, body.ttl_secs)?;
    state
        .store
        .cache_put(
            &caller.0.tenant,
            namespace,
            &key,
            &body.value,
            body.encoding,
            ttl,
        )
        .await
        .map_err(|e| state.store_error(e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/cache/{namespace}/{key}`: 204, whether or not the entry existed.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    raw: Result<Path<(String, String)>, PathRejection>,
) -> Result<impl IntoResponse, AppError> {
    let (ns, key) = path(raw)?;
    let namespace = namespace_for(&state, &caller, &ns, true)?;
    TenantKey::new(&caller.0.tenant, namespace, &key)?;
    state
        .store
        .cache_delete(&caller.0.tenant, namespace, &key)
        .await
        .map_err(|e| state.store_error(e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/cache/{namespace}/_mget`: one slot per key, `null` for a miss.
pub async fn multi_get(
    State(state): State<AppState>,
    caller: Caller,
    raw: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<MultiGetRequest>,
) -> Result<Json<MultiGetResponse>, AppError> {
    let Path(ns) = raw.map_err(|e| AppError::Malformed(format!("invalid path: {e}")))?;
    let namespace = namespace_for(&state, &caller, &ns, false)?;
    if body.keys.len() > MAX_MULTI_GET_KEYS {
        return Err(AppError::TooLarge(format!(
            "{} keys in one multi-get; the limit is {MAX_MULTI_GET_KEYS}",
            body.keys.len()
        )));
    }
    for key in &body.keys {
        TenantKey::new(&caller.0.tenant, namespace, key)?;
    }
    let found = state
        .store
        .cache_get(&caller.0.tenant, namespace, &body.keys)
        .await
        .map_err(|e| state.store_error(e))?;
    let entries = body
        .keys
        .into_iter()
        .zip(found)
        .map(|(key, c)| {
            c.map(|c| CacheEntry {
                key,
                value: c.value,
                encoding: c.encoding,
                ttl_secs: c.ttl_secs,
            })
        })
        .collect();
    Ok(Json(MultiGetResponse { entries }))
}
