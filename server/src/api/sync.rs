//! Push and hello (device → server), pull (server → device) and publish (backend → devices).
//!
//! Push validates item by item: a bad item is `rejected` with a code while the rest of its batch
//! is stored; only problems with the request as a whole (auth, body, producer, batch size,
//! back-pressure) fail the request, and then nothing is written. Exactly-once rests on each
//! item's `seq` within its producer and tier: the store keeps the last one stored and appends
//! only above it. The hello tells a device where the server stands with its producer. Publish is
//! all-or-nothing: a backend gets one error for the whole request and can fix and resend it.

use std::time::Instant;

use axum::Json;
use axum::extract::{Query, State, rejection::QueryRejection};
use kryonix_protocol::wire::{
    HelloRequest, HelloResponse, ItemOutcome, MAX_PRODUCER_LEN, MAX_PULL_LIMIT, PublishRequest,
    PublishResponse, PullResponse, PushRequest, PushResponse, PushResult, error_code,
};
use kryonix_protocol::{KeyError, Namespace, TenantId, TenantKey, Tier};
use serde::Deserialize;

use super::{AppState, Caller, JsonBody};
use crate::auth::{Principal, Scope, valid_subject};
use crate::backpressure::Admission;
use crate::config::TenantPolicy;
use crate::error::AppError;
use crate::keys;
use crate::store::{Cursor, NewChange, NewItem, PushOptions, PushOutcome, tier_slot};

/// Longest client item id: UUIDs (36) and ULIDs (26) fit with room to spare.
pub const MAX_ITEM_ID_LEN: usize = 64;

/// Item ids become part of a Redis key, so they are kept to a safe alphabet.
fn valid_item_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ITEM_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Producer ids become part of a Redis key: a short, safe alphabet.
fn valid_producer(producer: &str) -> bool {
    !producer.is_empty()
        && producer.len() <= MAX_PRODUCER_LEN
        && producer
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// Refuses a bad producer id as a whole-request error: nothing of the request is written.
fn check_producer(caller: &Caller, producer: &str) -> Result<(), AppError> {
    if !valid_producer(producer) {
        return Err(AppError::Malformed(format!(
            "producer must be 1 to {MAX_PRODUCER_LEN} characters of A-Z a-z 0-9 - _"
        )));
    }
    // Every part is valid on its own; a very long tenant id can still make the record's key
    // longer than the key rules allow (checked with the longest partition number).
    keys::producer(
        &caller.0.tenant,
        keys::MAX_PARTITIONS - 1,
        &caller.0.subject,
        producer,
    )?;
    Ok(())
}

fn reject(code: &str, reason: impl Into<String>) -> ItemOutcome {
    ItemOutcome::Rejected {
        code: code.to_owned(),
        reason: reason.into(),
    }
}

fn key_code(err: &KeyError) -> &'static str {
    match err {
        KeyError::UnknownNamespace(_) => error_code::UNKNOWN_NAMESPACE,
        _ => error_code::INVALID_KEY,
    }
}

/// Checks one pushed item; `Err` is its rejection.
fn validate_item(
    tenant: &TenantId,
    policy: &TenantPolicy,
    max_value_bytes: usize,
    item: kryonix_protocol::wire::PushItem,
) -> Result<NewItem, ItemOutcome> {
    if !valid_item_id(&item.id) {
        return Err(reject(
            error_code::INVALID_ID,
            format!("item ids are 1 to {MAX_ITEM_ID_LEN} characters of A-Z a-z 0-9 - _ ."),
        ));
    }
    let tier =
        Tier::try_from(item.tier).map_err(|e| reject(error_code::INVALID_TIER, e.to_string()))?;
    if item.seq == 0 {
        return Err(reject(
            error_code::INVALID_SEQ,
            "seq starts at 1 in each tier of a producer",
        ));
    }
    let namespace = Namespace::from_name(&item.namespace)
        .map_err(|e| reject(error_code::UNKNOWN_NAMESPACE, e.to_string()))?;
    TenantKey::new(tenant, namespace, &item.key)
        .map_err(|e| reject(key_code(&e), e.to_string()))?;
    if namespace.is_internal() {
        return Err(reject(
            error_code::FORBIDDEN,
            format!("namespace {namespace} is internal to the server; devices may not write it"),
        ));
    }
    if !policy.allows(namespace) {
        return Err(reject(
            error_code::FORBIDDEN,
            format!("the tenant may not use namespace {namespace}"),
        ));
    }
    if item.payload.len() > max_value_bytes {
        return Err(reject(
            error_code::TOO_LARGE,
            format!("the payload is over {max_value_bytes} bytes"),
        ));
    }
    Ok(NewItem {
        id: item.id,
        seq: item.seq,
        tier,
        namespace,
        key: item.key,
        op: item.op,
        payload: item.payload,
        encoding: item.encoding,
        created_at_ms: item.created_at_ms,
    })
}

/// `POST /v1/sync/push`.
///
/// In four steps: check the request as a whole and validate its items one by one, admit the
/// batch past back-pressure, store it (and wait for replicas when configured), then answer in
/// request order and count the outcomes.
pub async fn push(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<PushRequest>,
) -> Result<Json<PushResponse>, AppError> {
    let started = Instant::now();
    let batch = validate_batch(&state, &caller, request)?;
    let tenant = &caller.0.tenant;
    admit(&state, &batch.valid).await?;
    let outcome = store_batch(&state, &caller, &batch).await?;
    let response = answer(&state, tenant, batch, outcome);
    state.metrics.push_seconds(started.elapsed().as_secs_f64());
    Ok(Json(response))
}

/// A push request after validation.
struct Batch {
    producer: String,
    /// Every item's id, in request order.
    ids: Vec<String>,
    /// Per item, in request order: its tier (valid: stored below) or its rejection, so the
    /// answer keeps the request's order without copying payloads.
    slots: Vec<Result<u8, ItemOutcome>>,
    /// The valid items, in request order.
    valid: Vec<NewItem>,
}

/// Refuses a request that fails as a whole (scope, read-only tenant, producer, batch size), then
/// validates its items one by one: a bad item is rejected on its own, and an item whose `seq` is
/// not above the previous valid item of its tier in the batch is rejected `invalid_seq` (the
/// store relies on each tier's items coming in increasing order).
fn validate_batch(
    state: &AppState,
    caller: &Caller,
    request: PushRequest,
) -> Result<Batch, AppError> {
    caller.require(Scope::Device)?;
    let policy = caller.policy(state);
    if policy.read_only {
        return Err(AppError::Forbidden("the tenant is read-only".into()));
    }
    check_producer(caller, &request.producer)?;
    let max = state.config.max_push_items;
    if request.items.len() > max {
        return Err(AppError::TooLarge(format!(
            "{} items in one batch; the limit is {max}",
            request.items.len()
        )));
    }
    let tenant = &caller.0.tenant;
    let mut batch = Batch {
        producer: request.producer,
        ids: Vec::with_capacity(request.items.len()),
        slots: Vec::with_capacity(request.items.len()),
        valid: Vec::with_capacity(request.items.len()),
    };
    // The seq of the previous valid item of each tier in this batch.
    let mut previous = [0u64; 4];
    for item in request.items {
        batch.ids.push(item.id.clone());
        let checked =
            validate_item(tenant, policy, state.config.max_value_bytes, item).and_then(|item| {
                let slot = &mut previous[tier_slot(item.tier)];
                if item.seq <= *slot {
                    return Err(reject(
                        error_code::INVALID_SEQ,
                        format!(
                            "seq {} is not above {}, the previous item of tier {} in this batch",
                            item.seq,
                            *slot,
                            item.tier.number()
                        ),
                    ));
                }
                *slot = item.seq;
                Ok(item)
            });
        match checked {
            Ok(item) => {
                batch.slots.push(Ok(item.tier.number()));
                batch.valid.push(item);
            }
            Err(outcome) => batch.slots.push(Err(outcome)),
        }
    }
    Ok(batch)
}

/// The push validation alone — scope, producer, batch size, every item — without a store: what
/// the fuzz targets (`fuzz/`) drive with arbitrary bodies. The number of valid items, or the
/// whole-request error.
#[doc(hidden)]
pub fn validate_push_body(
    state: &AppState,
    principal: Principal,
    request: PushRequest,
) -> Result<usize, AppError> {
    validate_batch(state, &Caller(principal), request).map(|batch| batch.valid.len())
}

/// Back-pressure is decided by the least important tier in the batch: a batch is stored whole or
/// not at all, and a device sends one tier per batch.
async fn admit(state: &AppState, valid: &[NewItem]) -> Result<(), AppError> {
    let Some(lowest) = valid.iter().map(|i| i.tier).max() else {
        return Ok(());
    };
    let pressure = state
        .backpressure
        .pressure(&state.store)
        .await
        .map_err(|e| state.store_error(e))?;
    if let Admission::Refuse { retry_after } = state.backpressure.admit(lowest, pressure) {
        state.metrics.backpressured(lowest.number());
        return Err(AppError::Backpressure { retry_after });
    }
    Ok(())
}

/// Stores the valid items; returns per item whether it is new, and the producer's last seqs. A
/// store out of memory refuses the batch as back-pressure; with `min_replicas_acked`, the store
/// waits for the replicas and too few answer 503.
async fn store_batch(
    state: &AppState,
    caller: &Caller,
    batch: &Batch,
) -> Result<PushOutcome, AppError> {
    let tenant = &caller.0.tenant;
    let valid = &batch.valid;
    let options = PushOptions {
        producer_ttl: state.config.producer_ttl,
        min_replicas_acked: state.config.min_replicas_acked,
        wait_timeout: state.config.wait_timeout,
    };
    let outcome = match state
        .store
        .push(tenant, &caller.0.subject, &batch.producer, valid, &options)
        .await
    {
        Ok(outcome) => outcome,
        Err(err) => {
            if let (crate::store::StoreError::OutOfMemory, Some(lowest)) =
                (&err, valid.iter().map(|i| i.tier).max())
            {
                state.metrics.backpressured(lowest.number());
                state.store_error(err);
                return Err(AppError::Backpressure {
                    retry_after: crate::backpressure::Backpressure::retry_after(lowest),
                });
            }
            return Err(state.store_error(err));
        }
    };
    if outcome.conflicts > 0 {
        state.metrics.push_conflicts(u64::from(outcome.conflicts));
    }
    let wanted = options.min_replicas_acked;
    if wanted > 0 && !valid.is_empty() && outcome.replicas_acked < wanted {
        // The items are on the primary; the device retries and gets `duplicate` once the
        // replicas have caught up or a new primary has them.
        tracing::warn!(
            acked = outcome.replicas_acked,
            wanted,
            "push not acknowledged by enough replicas"
        );
        return Err(AppError::Unavailable(format!(
            "the write reached {} of {wanted} required replicas; retry later",
            outcome.replicas_acked
        )));
    }
    Ok(outcome)
}

/// One result per item in request order, the producer's last seqs, and the item metrics.
fn answer(state: &AppState, tenant: &TenantId, batch: Batch, outcome: PushOutcome) -> PushResponse {
    let mut stored = outcome.stored.into_iter();
    let mut new_count = 0u64;
    // Indexed by tier (0 = no valid tier) and outcome.
    let mut counts = [[0u64; 3]; 5];
    let results: Vec<PushResult> = batch
        .ids
        .into_iter()
        .zip(batch.slots)
        .map(|(id, slot)| {
            let (tier, outcome) = match slot {
                Ok(tier) => {
                    let is_new = stored.next().unwrap_or(false);
                    new_count += u64::from(is_new);
                    let outcome = if is_new {
                        ItemOutcome::Accepted
                    } else {
                        ItemOutcome::Duplicate
                    };
                    (tier, outcome)
                }
                Err(outcome) => (0, outcome),
            };
            let kind = match outcome {
                ItemOutcome::Accepted => 0,
                ItemOutcome::Duplicate => 1,
                ItemOutcome::Rejected { .. } => 2,
            };
            counts[usize::from(tier.min(4))][kind] += 1;
            PushResult { id, outcome }
        })
        .collect();
    // One metrics update per (tier, outcome) rather than one per item.
    for (tier, row) in (0u8..).zip(counts) {
        for (outcome, n) in ["accepted", "duplicate", "rejected"].into_iter().zip(row) {
            if n > 0 {
                state.metrics.items(tier, outcome, n);
            }
        }
    }
    state.metrics.tenant_items(tenant.as_str(), new_count);
    PushResponse {
        results,
        last_seq: outcome.last_seq,
    }
}

/// `POST /v1/sync/hello`: where the server stands with a producer (its last stored seq per
/// tier, 0 when it never stored anything or forgot the producer after its idle time). Keeps the
/// producer known for another idle time.
pub async fn hello(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<HelloRequest>,
) -> Result<Json<HelloResponse>, AppError> {
    caller.require(Scope::Device)?;
    check_producer(&caller, &request.producer)?;
    let last_seq = state
        .store
        .hello(
            &caller.0.tenant,
            &caller.0.subject,
            &request.producer,
            state.config.producer_ttl,
        )
        .await
        .map_err(|e| state.store_error(e))?;
    state.metrics.hello(last_seq != [0; 4]);
    Ok(Json(HelloResponse {
        producer: request.producer,
        last_seq,
        tenant: Some(caller.0.tenant.as_str().to_owned()),
        max_value_bytes: u64::try_from(state.config.max_value_bytes).ok(),
    }))
}

/// `GET /v1/sync/pull` query.
#[derive(Debug, Deserialize)]
pub struct PullQuery {
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Changes per page when the device does not say.
pub const DEFAULT_PULL_LIMIT: usize = 100;

/// `GET /v1/sync/pull`.
pub async fn pull(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<PullQuery>, QueryRejection>,
) -> Result<Json<PullResponse>, AppError> {
    caller.require(Scope::Device)?;
    let Query(query) = query.map_err(|e| AppError::Malformed(format!("invalid query: {e}")))?;
    let limit = query.limit.unwrap_or(DEFAULT_PULL_LIMIT);
    if !(1..=MAX_PULL_LIMIT).contains(&limit) {
        return Err(AppError::Malformed(format!(
            "limit must be 1 to {MAX_PULL_LIMIT}"
        )));
    }
    let cursor = Cursor::decode(query.cursor.as_deref().unwrap_or_default())
        .map_err(|e| state.store_error(e))?;
    let page = state
        .store
        .pull(&caller.0.tenant, &caller.0.subject, &cursor, limit)
        .await
        .map_err(|e| state.store_error(e))?;
    Ok(Json(PullResponse {
        changes: page.changes,
        cursor: page.next.encode(),
        has_more: page.has_more,
    }))
}

/// `POST /v1/publish` (service token).
pub async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<PublishRequest>,
) -> Result<Json<PublishResponse>, AppError> {
    caller.require(Scope::Service)?;
    let tenant = &caller.0.tenant;
    let policy = caller.policy(&state);
    if request
        .device_id
        .as_deref()
        .is_some_and(|device| !valid_subject(device))
    {
        return Err(AppError::Malformed(
            "device_id must be 1 to 64 characters without ':' or control characters".into(),
        ));
    }
    let max = state.config.max_push_items;
    if request.changes.len() > max {
        return Err(AppError::TooLarge(format!(
            "{} changes in one request; the limit is {max}",
            request.changes.len()
        )));
    }
    let mut changes = Vec::with_capacity(request.changes.len());
    for change in request.changes {
        let key = TenantKey::from_parts(tenant.as_str(), &change.namespace, &change.key)?;
        let namespace = key.namespace();
        if namespace.is_internal() {
            return Err(AppError::Forbidden(format!(
                "namespace {namespace} is internal to the server"
            )));
        }
        if !policy.allows(namespace) {
            return Err(AppError::Forbidden(format!(
                "the tenant may not use namespace {namespace}"
            )));
        }
        if change.value.len() > state.config.max_value_bytes {
            return Err(AppError::TooLarge(format!(
                "a value is over {} bytes",
                state.config.max_value_bytes
            )));
        }
        if change.ttl_secs == Some(0) {
            return Err(AppError::Malformed("ttl_secs must be positive".into()));
        }
        changes.push(NewChange {
            namespace,
            key: change.key,
            op: change.op,
            value: change.value,
            encoding: change.encoding,
            ttl_secs: change.ttl_secs,
        });
    }
    let ids = state
        .store
        .publish(
            tenant,
            request.device_id.as_deref(),
            &changes,
            state.config.down_retention,
        )
        .await
        .map_err(|e| state.store_error(e))?;
    Ok(Json(PublishResponse { ids }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_id_alphabet() {
        assert!(valid_item_id("01932c07-7a6e-7d3c-9f4e-2b1a0c9d8e7f"));
        assert!(valid_item_id("01ARZ3NDEKTSV4RRFFQ69G5FAV"));
        assert!(!valid_item_id(""));
        assert!(!valid_item_id("a:b"));
        assert!(!valid_item_id("a b"));
        assert!(!valid_item_id(&"a".repeat(65)));
    }

    #[test]
    fn producer_alphabet() {
        assert!(valid_producer("0193a1f0-7c2e-7b61-9d1a-3f4e5a6b7c8d"));
        assert!(valid_producer("phone_1-A"));
        assert!(valid_producer(&"p".repeat(MAX_PRODUCER_LEN)));
        for bad in ["", "a.b", "a:b", "a b", "é", "a/b"] {
            assert!(!valid_producer(bad), "{bad:?}");
        }
        assert!(!valid_producer(&"p".repeat(MAX_PRODUCER_LEN + 1)));
    }
}
