//! The admin API's organisations and the levels' own limits (behind the
//! admin token, like the rest of [`crate::admin`]):
//!
//! - `POST /admin/orgs` `{"id": "acme", "name": "Acme", "limits":
//!   {"rpm", "tpm", "daily_budget_usd", "monthly_budget_usd"}}`: a new
//!   organisation (201; the same one again is a 200 and no change; other
//!   settings, or the id of a config-file organisation, a 409);
//! - `GET /admin/orgs`, `GET /admin/orgs/{id}`: organisations with their
//!   limits, where each comes from, and their clients;
//! - `PATCH /admin/orgs/{id}` `{"name", "limits", "disabled"}` (each
//!   optional; `limits` replaces the whole set): a config-file
//!   organisation too (the database then holds its entry);
//! - `PUT /admin/clients/{id}/org` `{"org": "acme"}` (or `null`): the
//!   organisation of a client the API created;
//! - `PUT /admin/clients/{id}/limits` `{"rpm": 10, ...}`: a client's own
//!   limits and budgets over its tier's (`{}`: its tier's again);
//! - `PUT /admin/keys/{id}/limits` `{"daily_budget_usd": 1.0, ...}`: an
//!   issued key's own limits and budgets, inside its client's.
//!
//! Every limit is validated as the file's (the same errors); every change
//! applies on every instance within `store.sync_interval_ms`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::{Admin, AdminJson, Refusal};
use crate::budget::Level;
use crate::config::LimitsConfig;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::registry::issue::Created;
use crate::registry::orgs::{NewOrg, OrgPatch};
use crate::registry::Registry;

/// Body of `PUT /admin/clients/{id}/org`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetOrg {
    /// The organisation (`null`: none).
    pub org: Option<String>,
}

fn no_org(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        format!("No organisation {id:?}; GET /admin/orgs lists them."),
    )
}

/// Organisation `id` as answered after change `version`.
fn org_answer(reg: &Registry, id: &str, version: u64) -> Result<Value, Refusal> {
    let o = reg.org(id).ok_or_else(|| no_org(id))?;
    let mut body = serde_json::to_value(reg.org_info(&o)).unwrap_or_default();
    body["version"] = json!(version);
    Ok(body)
}

/// `POST /admin/orgs`.
pub async fn create_org(
    State(gw): State<Arc<Gateway>>,
    AdminJson(new): AdminJson<NewOrg>,
) -> Result<Response, Refusal> {
    let reg = gw.registry();
    let (status, version) = match reg.create_org(&new).await? {
        Created::New(v) => {
            gw.announce(v).await;
            tracing::info!(org = %new.id, version = v, "organisation created");
            (StatusCode::CREATED, v)
        }
        Created::Existing(v) => (StatusCode::OK, v),
    };
    Ok((status, Json(org_answer(&reg, &new.id, version)?)).into_response())
}

/// `GET /admin/orgs`.
pub async fn orgs(State(gw): State<Arc<Gateway>>, _: Admin) -> Json<Value> {
    let reg = gw.registry();
    let all: Vec<_> = reg.orgs().iter().map(|o| reg.org_info(o)).collect();
    Json(json!({ "orgs": all }))
}

/// `GET /admin/orgs/{id}`.
pub async fn org(
    State(gw): State<Arc<Gateway>>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let reg = gw.registry();
    let o = reg.org(&id).ok_or_else(|| no_org(&id))?;
    Ok(Json(reg.org_info(&o)).into_response())
}

/// `PATCH /admin/orgs/{id}`.
pub async fn patch_org(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    AdminJson(patch): AdminJson<OrgPatch>,
) -> Result<Json<Value>, Refusal> {
    let reg = gw.registry();
    let version = reg.patch_org(&id, &patch).await?;
    gw.announce(version).await;
    tracing::info!(org = %id, version, "organisation changed");
    Ok(Json(org_answer(&reg, &id, version)?))
}

/// `PUT /admin/clients/{id}/org`.
pub async fn set_client_org(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    AdminJson(req): AdminJson<SetOrg>,
) -> Result<Json<Value>, Refusal> {
    let version = gw
        .registry()
        .set_client_org(&id, req.org.as_deref())
        .await?;
    gw.announce(version).await;
    tracing::info!(client = %id, org = ?req.org, version, "client's organisation set");
    Ok(Json(json!({"id": id, "org": req.org, "version": version})))
}

/// `PUT /admin/clients/{id}/limits`.
pub async fn set_client_limits(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    AdminJson(limits): AdminJson<LimitsConfig>,
) -> Result<Json<Value>, Refusal> {
    put_limits(&gw, Level::Client, id, limits).await
}

/// `PUT /admin/keys/{id}/limits`.
pub async fn set_key_limits(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    AdminJson(limits): AdminJson<LimitsConfig>,
) -> Result<Json<Value>, Refusal> {
    put_limits(&gw, Level::Key, id, limits).await
}

/// Sets the own limits of client or key `id`.
async fn put_limits(
    gw: &Gateway,
    level: Level,
    id: String,
    limits: LimitsConfig,
) -> Result<Json<Value>, Refusal> {
    let reg = gw.registry();
    let version = match level {
        Level::Key => reg.set_key_limits(&id, &limits).await,
        _ => reg.set_client_limits(&id, &limits).await,
    }?;
    gw.announce(version).await;
    tracing::info!(level = level.name(), %id, ?limits, version, "own limits set");
    Ok(Json(
        json!({"id": id, "limits": limits, "version": version}),
    ))
}
