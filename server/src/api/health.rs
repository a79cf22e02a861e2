//! `/healthz` (the process answers), `/readyz` (the store answers, and what start-up found about
//! it) and `/metrics` (Prometheus text format).
//!
//! These routes need no token: load balancers and scrapers call them. Keep them on an internal
//! network (the operations guide says so); they reveal no tenant data.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use crate::error::AppError;
use crate::store::SyncStoreFacts;

/// `GET /healthz`.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `/readyz` answer.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// `redis` or `embedded`.
    pub store: &'static str,
    /// True for the embedded SQLite store: fine on a laptop, never in production.
    pub development_store: bool,
    pub sync_store: Option<SyncStoreFacts>,
    /// `used_memory / maxmemory` of the sync store, when it has a limit.
    pub memory_pressure: Option<f64>,
    pub warnings: Vec<String>,
}

/// `GET /readyz`: 200 when the store answers, 503 otherwise.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let facts = state.store.sync_facts().await;
    if let Err(err) = &facts {
        tracing::warn!(%err, "readiness check failed");
    }
    let facts = facts.ok();
    // A Cluster with unserved slots, or a Sentinel primary that pushes are refused on, is not
    // ready: a load balancer should send devices to an instance that can store their items.
    let ready = facts.as_ref().is_some_and(|f| {
        f.cluster_state.as_deref().is_none_or(|s| s == "ok") && f.refusing_pushes.is_none()
    });
    let memory_pressure = facts.as_ref().and_then(SyncStoreFacts::memory_pressure);
    let body = Readiness {
        ready,
        store: state.store.kind(),
        development_store: state.store.kind() == "embedded",
        sync_store: facts,
        memory_pressure,
        warnings: state.warnings.clone(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Result<Response, AppError> {
    let text = state
        .metrics
        .render()
        .map_err(|e| AppError::Internal(format!("rendering metrics: {e}")))?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}
