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
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::admin::{authorize, json_body};
use crate::admin_keys::refused;
use crate::budget::Level;
use crate::config::LimitsConfig;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::registry::issue::Created;
use crate::registry::orgs::{NewOrg, OrgPatch};

/// Body of `PUT /admin/clients/{id}/org`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetOrg {
    /// The organisation (`null`: none).
    pub org: Option<String>,
}

fn no_org(id: &str) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        format!("No organisation {id:?}; GET /admin/orgs lists them."),
    )
    .into_response()
}

/// `POST /admin/orgs`.
pub async fn create_org(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let new: NewOrg = match json_body(&gw, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let reg = gw.registry();
    let (status, version) = match reg.create_org(&new).await {
        Ok(Created::New(v)) => {
            gw.announce(v).await;
            tracing::info!(org = %new.id, version = v, "organisation created");
            (StatusCode::CREATED, v)
        }
        Ok(Created::Existing(v)) => (StatusCode::OK, v),
        Err(e) => return refused(e),
    };
    match reg.org(&new.id) {
        Some(o) => {
            let mut body = serde_json::to_value(reg.org_info(&o)).unwrap_or_default();
            body["version"] = json!(version);
            (status, Json(body)).into_response()
        }
        None => no_org(&new.id),
    }
}

/// `GET /admin/orgs`.
pub async fn orgs(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return e.into_response();
    }
    let reg = gw.registry();
    let all: Vec<_> = reg.orgs().iter().map(|o| reg.org_info(o)).collect();
    Json(json!({ "orgs": all })).into_response()
}

/// `GET /admin/orgs/{id}`.
pub async fn org(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return e.into_response();
    }
    let reg = gw.registry();
    match reg.org(&id) {
        Some(o) => Json(reg.org_info(&o)).into_response(),
        None => no_org(&id),
    }
}

/// `PATCH /admin/orgs/{id}`.
pub async fn patch_org(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> Response {
    let patch: OrgPatch = match json_body(&gw, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let reg = gw.registry();
    match reg.patch_org(&id, &patch).await {
        Ok(version) => {
            gw.announce(version).await;
            tracing::info!(org = %id, version, "organisation changed");
            match reg.org(&id) {
                Some(o) => {
                    let mut body = serde_json::to_value(reg.org_info(&o)).unwrap_or_default();
                    body["version"] = json!(version);
                    Json(body).into_response()
                }
                None => no_org(&id),
            }
        }
        Err(e) => refused(e),
    }
}

/// `PUT /admin/clients/{id}/org`.
pub async fn set_client_org(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> Response {
    let req: SetOrg = match json_body(&gw, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match gw.registry().set_client_org(&id, req.org.as_deref()).await {
        Ok(version) => {
            gw.announce(version).await;
            tracing::info!(client = %id, org = ?req.org, version, "client's organisation set");
            Json(json!({"id": id, "org": req.org, "version": version})).into_response()
        }
        Err(e) => refused(e),
    }
}

/// `PUT /admin/clients/{id}/limits`.
pub async fn set_client_limits(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> Response {
    put_limits(gw, headers, Level::Client, id, body).await
}

/// `PUT /admin/keys/{id}/limits`.
pub async fn set_key_limits(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> Response {
    put_limits(gw, headers, Level::Key, id, body).await
}

/// Sets the own limits of client or key `id`.
async fn put_limits(
    gw: Arc<Gateway>,
    headers: HeaderMap,
    level: Level,
    id: String,
    body: axum::body::Body,
) -> Response {
    let limits: LimitsConfig = match json_body(&gw, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let reg = gw.registry();
    let set = match level {
        Level::Key => reg.set_key_limits(&id, &limits).await,
        _ => reg.set_client_limits(&id, &limits).await,
    };
    match set {
        Ok(version) => {
            gw.announce(version).await;
            tracing::info!(level = level.name(), %id, ?limits, version, "own limits set");
            Json(json!({"id": id, "limits": limits, "version": version})).into_response()
        }
        Err(e) => refused(e),
    }
}
