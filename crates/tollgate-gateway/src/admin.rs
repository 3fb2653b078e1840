//! The admin API (behind `Authorization: Bearer ADMIN_TOKEN`):
//!
//! - `GET /admin/tiers`: tiers with their settings and client counts;
//! - `GET /admin/clients`: clients with tier, bucket usage and spend;
//! - `PUT /admin/clients/{id}/tier` `{"tier": "pro"}`: move a client;
//! - `PATCH /admin/tiers/{name}` `{"rpm": 100, ...}`: change a tier's limits.
//!
//! Changes apply at once here and, through the store, on every other instance
//! within `store.sync_interval_ms`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate::Dimension;

use crate::budget::nano_to_usd;
use crate::error::ApiError;
use crate::gateway::Gateway;

fn authorize(gw: &Gateway, headers: &HeaderMap) -> Result<(), ApiError> {
    if gw.admin_hash.is_none() {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "permission_error", "admin_disabled", "The admin API is off: set admin.token_sha256 in the config (`tollgate hash-key TOKEN`)."));
    }
    if crate::auth::admin_token_ok(gw.admin_hash.as_ref(), crate::auth::bearer(headers)) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("Missing or wrong admin token."))
    }
}

/// `GET /admin/tiers`.
pub async fn tiers(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return e.into_response();
    }
    let reg = gw.registry();
    let tiers: Vec<Value> = reg
        .tiers
        .values()
        .map(|t| {
            let clients = reg
                .clients
                .values()
                .filter(|c| c.tier.name == t.name)
                .count();
            json!({"name": t.name, "config": t.config, "clients": clients})
        })
        .collect();
    Json(json!({ "tiers": tiers })).into_response()
}

/// `GET /admin/clients`.
pub async fn clients(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return e.into_response();
    }
    let reg = gw.registry();
    let mut out = Vec::new();
    for c in reg.clients.values() {
        let mut usage = serde_json::Map::new();
        if let Ok(status) = c.limiter.status().await {
            for d in &status.dimensions {
                let name = match d.dimension {
                    Dimension::Requests => "requests",
                    Dimension::Tokens => "tokens",
                    Dimension::InputTokens => "input_tokens",
                    Dimension::OutputTokens => "output_tokens",
                };
                usage.insert(
                    name.into(),
                    json!({"limit": d.limit, "in_use": d.in_use.round(), "available": d.available.floor(), "full_in_ms": d.full_in.as_millis() as u64}),
                );
            }
        }
        let spend = gw.budgets.spend(&c.id).await.unwrap_or_default();
        out.push(json!({
            "id": c.id,
            "tier": c.tier.name,
            "usage": usage,
            "spend": {
                "today_usd": nano_to_usd(spend.today),
                "month_usd": nano_to_usd(spend.month),
                "daily_budget_usd": c.tier.config.daily_budget_usd,
                "monthly_budget_usd": c.tier.config.monthly_budget_usd,
            },
        }));
    }
    Json(json!({ "clients": out })).into_response()
}

/// Body of `PUT /admin/clients/{id}/tier`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetTier {
    /// The new tier's name.
    pub tier: String,
}

fn bad_body(e: impl std::fmt::Display) -> Response {
    ApiError::invalid(
        "invalid_body",
        "body",
        format!("The admin request body is not valid: {e}"),
    )
    .into_response()
}

/// `PUT /admin/clients/{id}/tier`.
pub async fn set_client_tier(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return e.into_response();
    }
    let req: SetTier = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_body(e),
    };
    let reg = gw.registry();
    if !reg.clients.contains_key(&id) {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_client",
            format!("No client {id:?}; GET /admin/clients lists them."),
        )
        .into_response();
    }
    if !reg.tiers.contains_key(&req.tier) {
        let known: Vec<&String> = reg.tiers.keys().collect();
        return ApiError::invalid(
            "unknown_tier",
            "tier",
            format!("No tier {:?}; known tiers: {known:?}.", req.tier),
        )
        .into_response();
    }
    let tier = req.tier.clone();
    match gw
        .change(|o| {
            o.client_tiers.insert(id.clone(), tier);
        })
        .await
    {
        Ok(()) => {
            tracing::info!(client = %id, tier = %req.tier, "client tier changed");
            Json(json!({"id": id, "tier": req.tier})).into_response()
        }
        Err(e) => ApiError::invalid("invalid_change", "tier", e.to_string()).into_response(),
    }
}

/// Body of `PATCH /admin/tiers/{name}`: the fields to change.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierPatch {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// Burst factor.
    pub burst: Option<f64>,
    /// Priority class.
    pub priority: Option<u8>,
    /// Maximum wait, ms.
    pub max_wait_ms: Option<u64>,
    /// Daily budget, USD.
    pub daily_budget_usd: Option<f64>,
    /// Monthly budget, USD.
    pub monthly_budget_usd: Option<f64>,
}

/// `PATCH /admin/tiers/{name}`.
pub async fn patch_tier(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return e.into_response();
    }
    let patch: TierPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return bad_body(e),
    };
    let Some(current) = gw.registry().tiers.get(&name).map(|t| t.config.clone()) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_tier",
            format!("No tier {name:?}; GET /admin/tiers lists them."),
        )
        .into_response();
    };
    let mut t = current;
    if let Some(v) = patch.rpm {
        t.rpm = Some(v);
    }
    if let Some(v) = patch.tpm {
        t.tpm = Some(v);
    }
    if let Some(v) = patch.burst {
        t.burst = v;
    }
    if let Some(v) = patch.priority {
        t.priority = v;
    }
    if let Some(v) = patch.max_wait_ms {
        t.max_wait_ms = v;
    }
    if let Some(v) = patch.daily_budget_usd {
        t.daily_budget_usd = Some(v);
    }
    if let Some(v) = patch.monthly_budget_usd {
        t.monthly_budget_usd = Some(v);
    }
    // Check before publishing, so an invalid change is a 400 and changes nothing.
    if let Err(e) = crate::config::validate_tier(
        &format!("tiers.{name}"),
        &t,
        gw.config.priority.headroom.len(),
    ) {
        return ApiError::invalid("invalid_tier", "body", e.to_string()).into_response();
    }
    let new = t.clone();
    match gw
        .change(|o| {
            o.tiers.insert(name.clone(), new);
        })
        .await
    {
        Ok(()) => {
            tracing::info!(tier = %name, "tier changed");
            Json(json!({"name": name, "config": t})).into_response()
        }
        Err(e) => ApiError::invalid("invalid_tier", "body", e.to_string()).into_response(),
    }
}
