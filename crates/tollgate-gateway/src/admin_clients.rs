//! The admin API's clients and keys, listed, read, changed and disabled
//! (behind the admin token, like the rest of [`crate::admin`]):
//!
//! - `GET /admin/clients?tier=&org=&disabled=&limit=&after=`: clients by
//!   id, each with tier, organisation, source (`file` or `api`), whether
//!   disabled, bucket usage and spend; `next` is the `after` of the next
//!   page (`limit` 1 to 1000, default 100);
//! - `GET /admin/clients/{id}`: one of them;
//! - `PATCH /admin/clients/{id}` `{"tier": "pro", "disabled": true}` (each
//!   optional): moves it, disables it (its keys refused on every instance
//!   within `store.sync_interval_ms`) or enables it again;
//! - `GET /admin/keys/{id}`: one key, as listed;
//! - `PATCH /admin/keys/{id}` `{"name": "ci", "models": ["gpt-4o-mini"]}`
//!   (each optional, `null` clears): renames it or changes its models.
//!
//! A key is disabled for good by revoking it (`DELETE /admin/keys/{id}`,
//! [`crate::admin_keys`]); a client is disabled and enabled again here.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate::Dimension;

use crate::admin::{move_client, store_unavailable, unknown_client, Admin, AdminJson, Refusal};
use crate::budget::nano_to_usd;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::registry::manage::{ClientFilter, ClientSummary, KeyPatch};

/// The most a page of a listing holds.
pub const MAX_PAGE: usize = 1_000;
/// A page's size when the query gives none.
pub const DEFAULT_PAGE: usize = 100;

/// Query of `GET /admin/clients`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientQuery {
    /// Only those on this tier.
    pub tier: Option<String>,
    /// Only those of this organisation.
    pub org: Option<String>,
    /// Only the disabled ones, or only the others.
    pub disabled: Option<bool>,
    /// At most this many (1 to [`MAX_PAGE`], default [`DEFAULT_PAGE`]).
    pub limit: Option<usize>,
    /// Those whose id sorts after this one (a page's `next`).
    pub after: Option<String>,
}

/// The page size a query asks for, within bounds.
pub(crate) fn page_size(limit: Option<usize>) -> usize {
    limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

/// The query, or the 400 that says what is wrong with it.
pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::invalid("invalid_query", "query", e.body_text()))
}

/// A client as listed: what the registry holds, and its bucket usage and
/// spend from the store (`null` for a disabled client, which has no
/// bucket). A store outage is a 503, never zeros that look like data.
async fn client_json(gw: &Gateway, s: &ClientSummary) -> Result<Value, Refusal> {
    let mut v = json!(s);
    let Some(c) = gw.registry().client(&s.id) else {
        v["usage"] = Value::Null;
        v["spend"] = Value::Null;
        return Ok(v);
    };
    let status = c.limiter().status().await.map_err(store_unavailable)?;
    let spend = gw.budgets.spend(&c.id).await.map_err(store_unavailable)?;
    let mut usage = serde_json::Map::new();
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
    v["usage"] = Value::Object(usage);
    v["spend"] = json!({
        "today_usd": nano_to_usd(spend.today),
        "month_usd": nano_to_usd(spend.month),
        // The client's own budgets over its tier's.
        "daily_budget_usd": c.budget.daily.map(nano_to_usd),
        "monthly_budget_usd": c.budget.monthly.map(nano_to_usd),
    });
    Ok(v)
}

/// `GET /admin/clients`.
pub async fn clients(
    State(gw): State<Arc<Gateway>>,
    _: Admin,
    q: Result<Query<ClientQuery>, QueryRejection>,
) -> Result<Json<Value>, Refusal> {
    let q = query(q)?;
    let filter = ClientFilter {
        tier: q.tier,
        org: q.org,
        disabled: q.disabled,
    };
    let (page, next) = gw
        .registry()
        .client_page(&filter, q.after.as_deref(), page_size(q.limit));
    let mut out = Vec::with_capacity(page.len());
    for s in &page {
        out.push(client_json(&gw, s).await?);
    }
    Ok(Json(json!({ "clients": out, "next": next })))
}

/// `GET /admin/clients/{id}`.
pub async fn client(
    State(gw): State<Arc<Gateway>>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<Value>, Refusal> {
    let s = gw
        .registry()
        .client_summary(&id)
        .ok_or_else(|| unknown_client(&id))?;
    Ok(Json(client_json(&gw, &s).await?))
}

/// Body of `PATCH /admin/clients/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientPatch {
    /// Its new tier.
    #[serde(default)]
    pub tier: Option<String>,
    /// Disable it (`true`) or enable it again (`false`).
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// `PATCH /admin/clients/{id}`.
pub async fn patch_client(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    AdminJson(patch): AdminJson<ClientPatch>,
) -> Result<Json<Value>, Refusal> {
    let reg = gw.registry();
    if reg.client_summary(&id).is_none() {
        return Err(unknown_client(&id).into());
    }
    let mut version = None;
    if let Some(tier) = &patch.tier {
        version = Some(move_client(&gw, &id, tier).await?);
    }
    if let Some(disabled) = patch.disabled {
        if let Some(v) = reg.set_client_disabled(&id, disabled).await? {
            gw.announce(v).await;
            tracing::info!(client = %id, disabled, version = v, "client disabled or enabled");
            version = Some(v);
        }
    }
    let s = reg.client_summary(&id).ok_or_else(|| unknown_client(&id))?;
    let mut v = json!(s);
    v["version"] = json!(version);
    Ok(Json(v))
}

/// `GET /admin/keys/{id}`.
pub async fn key(
    State(gw): State<Arc<Gateway>>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    match gw.registry().key_info(&id).await? {
        Some(info) => Ok(Json(info).into_response()),
        None => Err(crate::registry::issue::Refused::NotFound(format!("No key {id:?}.")).into()),
    }
}

/// `PATCH /admin/keys/{id}`.
pub async fn patch_key(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    AdminJson(patch): AdminJson<KeyPatch>,
) -> Result<Response, Refusal> {
    let (info, version) = gw.registry().update_key(&id, &patch).await?;
    if let Some(v) = version {
        gw.announce(v).await;
        tracing::info!(key = %id, version = v, "key changed");
    }
    Ok(Json(info).into_response())
}
