//! The admin API (behind `Authorization: Bearer ADMIN_TOKEN`):
//!
//! - `GET /admin/tiers`: tiers with their settings and client counts;
//! - clients and keys listed, read, changed and disabled: see
//!   [`crate::admin_clients`];
//! - `GET /admin/models`: each provider model's bucket usage and queue and,
//!   when the tiers share the models, each tier's floor, weight, share,
//!   lane usage and queue;
//! - `PUT /admin/clients/{id}/tier` `{"tier": "pro"}`: move a client;
//! - clients and keys: see [`crate::admin_keys`];
//! - `PATCH /admin/tiers/{name}` `{"rpm": 100, ...}`: change a tier's limits
//!   (validated as the file is; `null` removes a limit, 0 is refused) and,
//!   when the file's tiers share the provider models, its `floor`, `weight`
//!   and `lendable` (put in force on every model's bucket, here at once and
//!   on the other instances at their next check);
//! - `GET /admin/routes`: the routes in force, each with where it comes from;
//! - `PUT /admin/routes/{name}` `{"rules": [...]}`: set a route (validated as
//!   the file's routes are), in place of the file's of that name or beside them;
//! - `GET /admin/overrides`: the changes in force over the config file,
//!   with their versions and the file's values they shadow;
//! - `GET /admin/usage?from=&to=&group_by=client|tier|model|route|day`: the
//!   usage ledger's report (JSON, or CSV for `Accept: text/csv`);
//! - `DELETE /admin/overrides/tiers/{name}`, `DELETE
//!   /admin/overrides/clients/{id}`, `DELETE /admin/overrides/routes/{name}`:
//!   remove one (the file's values apply again).
//!
//! Changes are written to the registry's database, apply at once here and,
//! announced through the store, on every other instance within
//! `store.sync_interval_ms` (see [`crate::registry`], also for how they
//! combine with the file). While the database cannot be reached, changes
//! answer 503 `database_unavailable` and nothing is changed; while the
//! store cannot be reached, the client listing (bucket use, spend) answers
//! 503 `store_unavailable`, and changes still apply (other instances find
//! them in the database).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::RouteConfig;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::overrides::Overrides;
pub use crate::overrides::TierPatch;
use crate::registry::db::Entity;
use crate::registry::RegistryError;

pub(crate) fn store_unavailable(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "admin request failed: store unavailable");
    ApiError::internal(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        format!("The store is unavailable ({e}); nothing was changed. Retry shortly."),
    )
    .into_response()
}

/// The answer to a failed change: 400 for an invalid one, 503 when the
/// database could not be reached, 409 when other changes kept coming first.
pub(crate) fn change_failed(e: RegistryError, code: &str, param: &'static str) -> Response {
    match e {
        RegistryError::Config(e) => ApiError::invalid(code, param, e.to_string()).into_response(),
        RegistryError::Store(e) => store_unavailable(e),
        RegistryError::Database(e) => {
            tracing::warn!(error = %e, "admin change failed: database unavailable");
            ApiError::internal(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                format!("The registry's database is unavailable ({e}); nothing was changed. Retry shortly."),
            )
            .into_response()
        }
        RegistryError::Contended => ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "conflict",
            e.to_string(),
        )
        .into_response(),
    }
}

/// Checks the admin token (its role is [`crate::admin_access::guard`]'s).
pub(crate) fn authorize(gw: &Gateway, headers: &HeaderMap) -> Result<(), ApiError> {
    if gw.admin_tokens.is_empty() {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "permission_error", "admin_disabled", "The admin API is off: set admin.token_sha256 in the config (`tollgate hash-key TOKEN`)."));
    }
    if gw.admin_tokens.find(crate::auth::bearer(headers)).is_some() {
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
    let clients = reg.clients();
    let tiers: Vec<Value> = reg
        .tiers()
        .iter()
        .map(|t| {
            let clients = clients.iter().filter(|c| c.tier.name == t.name).count();
            json!({"name": t.name, "config": t.config, "clients": clients})
        })
        .collect();
    Json(json!({ "tiers": tiers })).into_response()
}

/// `GET /admin/models`.
pub async fn models(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return e.into_response();
    }
    let mut out = Vec::new();
    for (m, status) in crate::shares::statuses(gw.models.values()).await {
        match status {
            Ok(s) => out.push(crate::shares::model_json(&gw.config, &m, &s)),
            Err(e) => return store_unavailable(e),
        }
    }
    Json(json!({ "models": out })).into_response()
}

/// Body of `PUT /admin/clients/{id}/tier`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetTier {
    /// The new tier's name.
    pub tier: String,
}

/// The most an admin request body may hold.
const ADMIN_BODY_LIMIT: usize = 64 * 1024;

/// The body of an admin request, read only once its token was checked and
/// within the server's body-read timeout: a connection without the token,
/// or one that sends half a body, cannot hold the gateway's connections.
pub(crate) async fn authorized_body(
    gw: &Gateway,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<axum::body::Bytes, ApiError> {
    authorize(gw, headers)?;
    let timeout = std::time::Duration::from_secs_f64(gw.config.server.body_read_timeout_secs);
    crate::request::body::read(headers, body, ADMIN_BODY_LIMIT, timeout)
        .await
        .map_err(ApiError::from)
}

/// The JSON body of an admin request ([`authorized_body`]), or the answer
/// to give instead.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    gw: &Gateway,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<T, Response> {
    let body = authorized_body(gw, headers, body)
        .await
        .map_err(IntoResponse::into_response)?;
    serde_json::from_slice(&body).map_err(bad_body)
}

pub(crate) fn bad_body(e: impl std::fmt::Display) -> Response {
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
    body: axum::body::Body,
) -> Response {
    let req: SetTier = match json_body(&gw, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match move_client(&gw, &id, &req.tier).await {
        Ok(version) => {
            Json(json!({"id": id, "tier": req.tier, "version": version})).into_response()
        }
        Err(r) => r,
    }
}

/// Moves client `id` to `tier` (announced, logged); answers the change's
/// number, or the answer to give instead.
pub(crate) async fn move_client(gw: &Gateway, id: &str, tier: &str) -> Result<u64, Response> {
    let reg = gw.registry();
    if reg.client_summary(id).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_client",
            format!("No client {id:?}; GET /admin/clients lists them."),
        )
        .into_response());
    }
    if !reg.has_tier(tier) {
        let known: Vec<String> = reg.tiers().iter().map(|t| t.name.clone()).collect();
        return Err(ApiError::invalid(
            "unknown_tier",
            "tier",
            format!("No tier {tier:?}; known tiers: {known:?}."),
        )
        .into_response());
    }
    // A client the API made is its own row; one of the file is moved by an
    // assignment over the file.
    let moved = if reg.file_client_tier(id).is_some() {
        reg.assign_tier(id, tier).await
    } else {
        reg.move_api_client(id, tier).await
    };
    match moved {
        Ok(version) => {
            gw.announce(version).await;
            tracing::info!(client = %id, tier = %tier, version, "client tier changed");
            Ok(version)
        }
        Err(e) => Err(change_failed(e, "invalid_change", "tier")),
    }
}

/// `PATCH /admin/tiers/{name}`.
pub async fn patch_tier(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Body,
) -> Response {
    let patch: TierPatch = match json_body(&gw, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let reg = gw.registry();
    if !reg.has_tier(&name) {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_tier",
            format!("No tier {name:?}; GET /admin/tiers lists them."),
        )
        .into_response();
    }
    // Validated by the file's own rules, so the API accepts exactly what
    // the file would; an invalid change is a 400 and changes nothing.
    match reg.patch_tier(&name, &patch).await {
        Ok((version, t)) => {
            gw.announce(version).await;
            tracing::info!(tier = %name, version, "tier changed");
            Json(json!({"name": name, "config": t, "version": version})).into_response()
        }
        Err(e) => change_failed(e, "invalid_tier", "body"),
    }
}

/// `GET /admin/routes`.
pub async fn routes(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return e.into_response();
    }
    let (_, live) = gw.overrides().await;
    let routes: serde_json::Map<String, Value> = gw
        .registry()
        .routes()
        .iter()
        .map(|(name, r)| {
            let version = live.routes.get(name).map(|o| o.version);
            let source = if version.is_some() {
                "override"
            } else {
                "file"
            };
            (
                name.clone(),
                json!({"rules": r.rules, "source": source, "version": version}),
            )
        })
        .collect();
    Json(json!({ "routes": routes })).into_response()
}

/// `PUT /admin/routes/{name}`.
pub async fn put_route(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Body,
) -> Response {
    let route: RouteConfig = match json_body(&gw, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    // The file's own rules, so the API accepts exactly what the file would.
    match gw.registry().set_route(&name, &route).await {
        Ok(version) => {
            gw.announce(version).await;
            tracing::info!(route = %name, version, "route changed");
            Json(json!({"name": name, "rules": route.rules, "version": version})).into_response()
        }
        Err(e) => change_failed(e, "invalid_route", "body"),
    }
}

/// The overrides as listed: each with its version, the fields it sets and
/// the file's tier (or client's tier) it shadows.
fn listing(gw: &Gateway, version: u64, o: &Overrides) -> Value {
    let tiers: serde_json::Map<String, Value> = o
        .tiers
        .iter()
        .map(|(name, t)| {
            let file = gw.config.tiers.get(name);
            let effective = file.map(|f| t.fields.apply(f));
            (
                name.clone(),
                json!({"version": t.version, "fields": t.fields, "file": file, "effective": effective}),
            )
        })
        .collect();
    let clients: serde_json::Map<String, Value> = o
        .client_tiers
        .iter()
        .map(|(id, c)| {
            let file = gw
                .config
                .clients
                .iter()
                .find(|f| &f.id == id)
                .map(|f| &f.tier);
            (
                id.clone(),
                json!({"version": c.version, "tier": c.tier, "file_tier": file}),
            )
        })
        .collect();
    let routes: serde_json::Map<String, Value> = o
        .routes
        .iter()
        .map(|(name, r)| {
            let file = gw.config.routes.get(name);
            (
                name.clone(),
                json!({"version": r.version, "rules": r.route.rules, "file": file}),
            )
        })
        .collect();
    json!({
        "version": version,
        "routes": routes,
        "precedence": "field by field: a field an override sets wins over the config file; every other field is the file's. DELETE an override to return to the file.",
        "tiers": tiers,
        "clients": clients,
    })
}

/// `GET /admin/overrides`.
pub async fn overrides(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return e.into_response();
    }
    let (version, o) = gw.overrides().await;
    Json(listing(&gw, version, &o)).into_response()
}

async fn remove_override(gw: &Gateway, headers: &HeaderMap, entity: Entity) -> Response {
    if let Err(e) = authorize(gw, headers) {
        return e.into_response();
    }
    let what = match &entity {
        Entity::Tier(name) => format!("tier {name:?}"),
        Entity::Route(name) => format!("route {name:?}"),
        other => format!("client {:?}", other.id()),
    };
    match gw.registry().remove_override(&entity).await {
        Ok(Some(version)) => {
            gw.announce(version).await;
            tracing::info!(
                version,
                "override for {what} removed; the config file applies"
            );
            let (version, o) = gw.overrides().await;
            Json(listing(gw, version, &o)).into_response()
        }
        Ok(None) => ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_override",
            format!("No override for {what}; GET /admin/overrides lists them."),
        )
        .into_response(),
        Err(e) => change_failed(e, "invalid_change", "body"),
    }
}

/// `DELETE /admin/overrides/tiers/{name}`.
pub async fn remove_tier_override(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    remove_override(&gw, &headers, Entity::Tier(name)).await
}

/// `DELETE /admin/overrides/clients/{id}`.
pub async fn remove_client_override(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    remove_override(&gw, &headers, Entity::Assignment(id)).await
}

/// `DELETE /admin/overrides/routes/{name}`.
pub async fn remove_route_override(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    remove_override(&gw, &headers, Entity::Route(name)).await
}

/// `GET /admin/usage?from=&to=&group_by=`: the usage ledger's report.
pub async fn usage(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    axum::extract::Query(params): axum::extract::Query<crate::ledger::http::UsageParams>,
) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return e.into_response();
    }
    crate::ledger::http::usage_response(gw.ledger.as_deref(), &params, &headers).await
}
