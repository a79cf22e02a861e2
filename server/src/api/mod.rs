//! The HTTP surface: shared state, the router, and the layers every request goes through.
//!
//! Layers, outermost first: metrics and logging (sees every final status), the request timeout
//! (so graceful shutdown cannot hang on a stuck request), gzip of large answers, the protocol
//! version check; then, on authenticated routes only, token verification and rate limiting.
//! Handlers live in [`sync`] (push, hello, pull, publish), [`cache`] and [`health`].

pub mod cache;
pub mod health;
pub mod sync;
pub mod tokens;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kryonix_protocol::codec::{self, CodecError};
use kryonix_protocol::routes;
use kryonix_protocol::{
    APP_VERSION_HEADER, AppVersion, COMPRESSION_THRESHOLD, Encoding, InvalidAppVersion,
    MIN_PROTOCOL_VERSION, PROTOCOL_HEADER, PROTOCOL_VERSION,
};
use serde::de::DeserializeOwned;

use crate::auth::{AuthError, Principal, Scope, TokenKeys};
use crate::backpressure::Backpressure;
use crate::config::{ServerConfig, TenantPolicy};
use crate::error::AppError;
use crate::metrics::Metrics;
use crate::store::{RateDecision, Rates, Store, StoreError};

/// Everything handlers share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

/// The contents of [`AppState`].
#[derive(Debug)]
pub struct Inner {
    pub config: ServerConfig,
    pub store: Store,
    pub tokens: TokenKeys,
    pub metrics: Metrics,
    pub backpressure: Backpressure,
    /// Start-up findings that `/readyz` repeats (AOF off, evicting store allowed, embedded).
    pub warnings: Vec<String>,
    /// Tokens lately confirmed unrevoked (see [`crate::revocations`]).
    pub confirmed: crate::revocations::Confirmed,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(config: ServerConfig, store: Store, warnings: Vec<String>) -> Self {
        let tokens = config.token_keys();
        let metrics = Metrics::new(config.tenants.keys().cloned());
        let backpressure = Backpressure::new(config.backpressure.clone());
        Self(Arc::new(Inner {
            config,
            store,
            tokens,
            metrics,
            backpressure,
            warnings,
            confirmed: crate::revocations::Confirmed::default(),
        }))
    }

    /// Counts a store error by kind and turns it into the HTTP error.
    pub fn store_error(&self, err: StoreError) -> AppError {
        self.metrics.store_error(match &err {
            StoreError::OutOfMemory => "out_of_memory",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::BadCursor => "bad_cursor",
            StoreError::Internal(_) => "internal",
        });
        if matches!(err, StoreError::OutOfMemory) {
            self.backpressure.mark_full();
        }
        err.into()
    }
}

/// The router with every route (paths from [`kryonix_protocol::routes`]) and layer.
pub fn app(state: AppState) -> Router {
    let authenticated = Router::new()
        .route(routes::PUSH, post(sync::push))
        .route(routes::HELLO, post(sync::hello))
        .route(routes::PULL, get(sync::pull))
        .route(routes::PUBLISH, post(sync::publish))
        .route(routes::TOKENS_REVOKE, post(tokens::revoke))
        .route(routes::CACHE_MULTI_GET, post(cache::multi_get))
        .route(
            routes::CACHE_ENTRY,
            get(cache::get).put(cache::put).delete(cache::delete),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let public = Router::new()
        .route(routes::HEALTHZ, get(health::healthz))
        .route(routes::READYZ, get(health::readyz))
        .route(routes::METRICS, get(health::metrics));
    Router::new()
        .merge(authenticated)
        .merge(public)
        .fallback(|| async { AppError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            check_versions,
        ))
        .layer(middleware::from_fn(gzip_answers))
        .layer(middleware::from_fn_with_state(state.clone(), timeout))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Counts every answer by route template and status, and logs it.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let in_flight = state.metrics.in_flight();
    let response = next.run(request).await;
    drop(in_flight);
    let status = response.status().as_u16();
    state.metrics.request(&route, &method, status);
    tracing::debug!(%route, %method, status, elapsed_ms = started.elapsed().as_millis() as u64, "request");
    response
}

/// Bounds every request; a push cut short here may still have been stored, which is safe: the
/// device retries and gets `duplicate`.
async fn timeout(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.config.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            AppError::Unavailable("the request timed out; retry later".into()).into_response()
        }
    }
}

/// The upgrade gate. A device older than the server's minimum protocol or app version is
/// answered `426 upgrade_required` with the minimums in the body, and stops syncing until the
/// app is updated: version 2 changed what a push means (sequences instead of per-item
/// markers), so a version 1 device must not be served as if it spoke 2. A device newer than the
/// server is answered `400 unsupported_protocol` (the server must be updated, not the app).
/// A request without the headers is served (tools such as curl, backends).
async fn check_versions(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Err(refusal) = versions_allowed(&state, request.headers()) {
        return refusal.into_response();
    }
    next.run(request).await
}

fn versions_allowed(state: &AppState, headers: &HeaderMap) -> Result<(), AppError> {
    let min_app_version = state.config.min_app_version.as_ref();
    let upgrade = |message: String| AppError::UpgradeRequired {
        message,
        min_app_version: min_app_version.map(|v| v.to_string()),
    };
    if let Some(value) = headers.get(PROTOCOL_HEADER) {
        let version = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .ok_or_else(|| AppError::Malformed(format!("{PROTOCOL_HEADER} must be a number")))?;
        if version < MIN_PROTOCOL_VERSION {
            return Err(upgrade(format!(
                "protocol version {version} is no longer served (the oldest is {MIN_PROTOCOL_VERSION}): update the app"
            )));
        }
        if version > PROTOCOL_VERSION {
            return Err(AppError::UnsupportedProtocol(format!(
                "protocol version {version} is newer than this server's ({PROTOCOL_VERSION})"
            )));
        }
    }
    if let Some(value) = headers.get(APP_VERSION_HEADER) {
        let stated: AppVersion = value
            .to_str()
            .map_err(|_| AppError::Malformed(format!("{APP_VERSION_HEADER} must be ASCII")))?
            .parse()
            .map_err(|e: InvalidAppVersion| AppError::Malformed(e.to_string()))?;
        if let Some(min) = min_app_version
            && stated < *min
        {
            return Err(upgrade(format!(
                "app version {stated} is no longer served (the oldest is {min}): update the app"
            )));
        }
    }
    Ok(())
}

/// gzip-encodes JSON answers above the threshold for clients that accept gzip.
async fn gzip_answers(request: Request, next: Next) -> Response {
    let wants_gzip = request
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(codec::accepts_gzip);
    let response = next.run(request).await;
    if !wants_gzip || response.headers().contains_key(header::CONTENT_ENCODING) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Answers are built in memory by the handlers, so reading them back is bounded by them.
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(err) => return AppError::Internal(format!("reading an answer: {err}")).into_response(),
    };
    if bytes.len() <= COMPRESSION_THRESHOLD {
        return Response::from_parts(parts, Body::from(bytes));
    }
    match codec::encode(Encoding::Gzip, &bytes) {
        Ok(packed) => {
            parts
                .headers
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            parts
                .headers
                .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(packed))
        }
        Err(_) => Response::from_parts(parts, Body::from(bytes)),
    }
}

/// Verifies the bearer token and applies the tenant's and device's rate limits.
async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, AppError> {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = state.tokens.verify_header(header).map_err(|e| {
        AppError::Unauthorized(match e {
            AuthError::Missing => "a bearer token is required".into(),
            AuthError::Expired => "the token has expired".into(),
            // Forged, malformed, wrong algorithm, bad claims: one answer, no oracle.
            _ => "invalid token".into(),
        })
    })?;
    // Revoked tokens: one EXISTS per request. When it cannot be answered, only a token confirmed
    // unrevoked lately goes on (a device riding through a failover); any other gets 503.
    if let Some(jti) = &principal.jti {
        let key = format!("{}:{jti}", principal.tenant);
        let now = Instant::now();
        match state.store.is_revoked(&principal.tenant, jti).await {
            Ok(false) => state.confirmed.confirm(key, now),
            Ok(true) => {
                state.confirmed.forget(&key);
                return Err(AppError::Unauthorized("the token has been revoked".into()));
            }
            Err(err) if err.is_retryable() && state.confirmed.recently(&key, now) => {
                state.metrics.store_error("revocation_unread");
                tracing::warn!(%err, "revocation lookup failed; the token was confirmed lately");
            }
            Err(err) => return Err(state.store_error(err)),
        }
    }
    let policy = state.config.policy(principal.tenant.as_str());
    let rates = Rates {
        tenant_per_sec: policy.rate_per_sec,
        device_per_sec: policy.device_rate_per_sec,
    };
    match state
        .store
        .rate_limit(&principal.tenant, &principal.subject, rates)
        .await
    {
        Ok(RateDecision::Allowed) => {}
        Ok(RateDecision::Limited { scope, retry_after }) => {
            state.metrics.rate_limited(scope);
            return Err(AppError::RateLimited { scope, retry_after });
        }
        Err(err) => {
            // Fail open: a rate-limit store outage must not take sync down with it; the
            // request still needs the sync store, which reports its own errors.
            state.store_error(err);
            tracing::warn!("rate limiting skipped: store error");
        }
    }
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

/// The authenticated caller, put in place by [`authenticate`].
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, AppError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| AppError::Unauthorized("a bearer token is required".into()))
    }
}

impl Caller {
    /// Refuses a caller of the wrong scope.
    pub fn require(&self, scope: Scope) -> Result<(), AppError> {
        if self.0.scope == scope {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "this endpoint needs a {} token",
                scope.as_str()
            )))
        }
    }

    pub fn policy<'a>(&self, state: &'a AppState) -> &'a TenantPolicy {
        state.config.policy(self.0.tenant.as_str())
    }
}

/// A JSON body, decoded per its `Content-Encoding` (gzip or lz4), with errors in the API's format.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, AppError> {
        let encoding = request
            .headers()
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("invalid").to_owned());
        let limit = state.config.max_body_bytes;
        let raw = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    AppError::TooLarge(format!("the body is over {limit} bytes"))
                } else {
                    AppError::Malformed("the body could not be read".into())
                }
            })?;
        let decoded = codec::content_encoding(encoding.as_deref())
            .and_then(|encoding| match encoding {
                // A plain body is used as it came: no copy.
                Encoding::Identity => Ok(None),
                // The decoded size is capped like the raw size: a small gzip bomb is refused.
                packed => codec::decode(packed, &raw, limit).map(Some),
            })
            .map_err(|e| match e {
                CodecError::TooLarge { .. } => AppError::TooLarge(e.to_string()),
                other => AppError::Malformed(other.to_string()),
            })?;
        let bytes = decoded.as_deref().unwrap_or(&raw);
        serde_json::from_slice(bytes)
            .map(JsonBody)
            .map_err(|e| AppError::Malformed(format!("invalid JSON body: {e}")))
    }
}
