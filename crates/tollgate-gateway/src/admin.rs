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

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::RouteConfig;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::overrides::Overrides;
pub use crate::overrides::TierPatch;
use crate::registry::db::Entity;
use crate::registry::issue::Refused;
use crate::registry::RegistryError;

pub(crate) fn store_unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "admin request failed: store unavailable");
    ApiError::internal(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        format!("The store is unavailable ({e}); nothing was changed. Retry shortly."),
    )
}

/// The answer to a failed change: 400 for an invalid one (`code`, at
/// `param`), 503 when the database could not be reached, 409 when other
/// changes kept coming first.
pub(crate) fn change_failed(e: RegistryError, code: &str, param: &'static str) -> ApiError {
    match e {
        RegistryError::Config(e) => ApiError::invalid(code, param, e.to_string()),
        RegistryError::Store(e) => store_unavailable(e),
        RegistryError::Database(e) => {
            tracing::warn!(error = %e, "admin change failed: database unavailable");
            ApiError::internal(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                format!("The registry's database is unavailable ({e}); nothing was changed. Retry shortly."),
            )
        }
        RegistryError::Contended => ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "conflict",
            e.to_string(),
        ),
    }
}

/// Why an admin request is refused, as its answer: the one mapping from
/// what the registry answers ([`Refused`], [`RegistryError`]) and from a
/// request's own faults ([`ApiError`]) to HTTP, so a handler returns
/// `Result<_, Refusal>` and uses `?`.
#[derive(Debug)]
pub struct Refusal(ApiError);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Refusal {
        Refusal(e)
    }
}

impl From<RegistryError> for Refusal {
    fn from(e: RegistryError) -> Refusal {
        Refusal(change_failed(e, "invalid_change", "body"))
    }
}

impl From<Refused> for Refusal {
    fn from(e: Refused) -> Refusal {
        let (status, code) = match e {
            Refused::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_value"),
            Refused::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Refused::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Refused::Registry(e) => return e.into(),
        };
        Refusal(ApiError::new(
            status,
            "invalid_request_error",
            code,
            e.to_string(),
        ))
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

/// A request that carries an admin token (extractor): refused with 401,
/// or 403 `admin_disabled` when the admin API is off, before the handler
/// runs.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<Arc<Gateway>> for Admin {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, gw: &Arc<Gateway>) -> Result<Admin, Refusal> {
        authorize(gw, &parts.headers)?;
        Ok(Admin)
    }
}

/// The body of an admin request (extractor), read only once its token was
/// checked ([`authorized_body`]).
#[derive(Debug)]
pub struct AdminBody(pub Bytes);

impl FromRequest<Arc<Gateway>> for AdminBody {
    type Rejection = Refusal;

    async fn from_request(req: Request, gw: &Arc<Gateway>) -> Result<AdminBody, Refusal> {
        let (parts, body) = req.into_parts();
        Ok(AdminBody(authorized_body(gw, &parts.headers, body).await?))
    }
}

/// The JSON body of an admin request (extractor): [`AdminBody`], parsed;
/// one that is not valid is a 400 `invalid_body` that says why.
#[derive(Debug)]
pub struct AdminJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<Gateway>> for AdminJson<T> {
    type Rejection = Refusal;

    async fn from_request(req: Request, gw: &Arc<Gateway>) -> Result<AdminJson<T>, Refusal> {
        let AdminBody(body) = AdminBody::from_request(req, gw).await?;
        Ok(AdminJson(parse_body(&body)?))
    }
}

/// An admin request's body as `T`, or the 400 that says why not.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            "invalid_body",
            "body",
            format!("The admin request body is not valid: {e}"),
        )
    })
}

/// `GET /admin/tiers`.
pub async fn tiers(State(gw): State<Arc<Gateway>>, _: Admin) -> Json<Value> {
    let reg = gw.registry();
    let tiers: Vec<Value> = reg
        .tiers()
        .iter()
        .map(|t| {
            let clients = reg.tier_client_count(&t.name);
            json!({"name": t.name, "config": t.config, "clients": clients})
        })
        .collect();
    Json(json!({ "tiers": tiers }))
}

/// `GET /admin/models`.
pub async fn models(State(gw): State<Arc<Gateway>>, _: Admin) -> Result<Json<Value>, Refusal> {
    let mut out = Vec::new();
    for (m, status) in crate::shares::statuses(gw.models.values()).await {
        let s = status.map_err(store_unavailable)?;
        out.push(crate::shares::model_json(&gw.config, &m, &s));
    }
    Ok(Json(json!({ "models": out })))
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

/// `PUT /admin/clients/{id}/tier`.
pub async fn set_client_tier(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    AdminJson(req): AdminJson<SetTier>,
) -> Result<Json<Value>, Refusal> {
    let version = move_client(&gw, &id, &req.tier).await?;
    Ok(Json(
        json!({"id": id, "tier": req.tier, "version": version}),
    ))
}

/// Moves client `id` to `tier` (announced, logged); answers the change's
/// number.
pub(crate) async fn move_client(gw: &Gateway, id: &str, tier: &str) -> Result<u64, Refusal> {
    let reg = gw.registry();
    if reg.client_summary(id).is_none() {
        return Err(unknown_client(id).into());
    }
    if !reg.has_tier(tier) {
        let known: Vec<String> = reg.tiers().iter().map(|t| t.name.clone()).collect();
        return Err(ApiError::invalid(
            "unknown_tier",
            "tier",
            format!("No tier {tier:?}; known tiers: {known:?}."),
        )
        .into());
    }
    // A client the API made is its own row; one of the file is moved by an
    // assignment over the file.
    let moved = if reg.file_client_tier(id).is_some() {
        reg.assign_tier(id, tier).await
    } else {
        reg.move_api_client(id, tier).await
    };
    let version = moved.map_err(|e| change_failed(e, "invalid_change", "tier"))?;
    gw.announce(version).await;
    tracing::info!(client = %id, tier = %tier, version, "client tier changed");
    Ok(version)
}

/// 404 `unknown_client`.
pub(crate) fn unknown_client(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown_client",
        format!("No client {id:?}; GET /admin/clients lists them."),
    )
}

/// `PATCH /admin/tiers/{name}`.
pub async fn patch_tier(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    AdminJson(patch): AdminJson<TierPatch>,
) -> Result<Json<Value>, Refusal> {
    let reg = gw.registry();
    if !reg.has_tier(&name) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_tier",
            format!("No tier {name:?}; GET /admin/tiers lists them."),
        )
        .into());
    }
    // Validated by the file's own rules, so the API accepts exactly what
    // the file would; an invalid change is a 400 and changes nothing.
    let (version, t) = reg
        .patch_tier(&name, &patch)
        .await
        .map_err(|e| change_failed(e, "invalid_tier", "body"))?;
    gw.announce(version).await;
    tracing::info!(tier = %name, version, "tier changed");
    Ok(Json(json!({"name": name, "config": t, "version": version})))
}

/// `GET /admin/routes`.
pub async fn routes(State(gw): State<Arc<Gateway>>, _: Admin) -> Json<Value> {
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
    Json(json!({ "routes": routes }))
}

/// `PUT /admin/routes/{name}`.
pub async fn put_route(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    AdminJson(route): AdminJson<RouteConfig>,
) -> Result<Json<Value>, Refusal> {
    // The file's own rules, so the API accepts exactly what the file would.
    let version = gw
        .registry()
        .set_route(&name, &route)
        .await
        .map_err(|e| change_failed(e, "invalid_route", "body"))?;
    gw.announce(version).await;
    tracing::info!(route = %name, version, "route changed");
    Ok(Json(
        json!({"name": name, "rules": route.rules, "version": version}),
    ))
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
pub async fn overrides(State(gw): State<Arc<Gateway>>, _: Admin) -> Json<Value> {
    let (version, o) = gw.overrides().await;
    Json(listing(&gw, version, &o))
}

async fn remove_override(gw: &Gateway, entity: Entity) -> Result<Json<Value>, Refusal> {
    let what = match &entity {
        Entity::Tier(name) => format!("tier {name:?}"),
        Entity::Route(name) => format!("route {name:?}"),
        other => format!("client {:?}", other.id()),
    };
    let Some(version) = gw.registry().remove_override(&entity).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_override",
            format!("No override for {what}; GET /admin/overrides lists them."),
        )
        .into());
    };
    gw.announce(version).await;
    tracing::info!(
        version,
        "override for {what} removed; the config file applies"
    );
    let (version, o) = gw.overrides().await;
    Ok(Json(listing(gw, version, &o)))
}

/// `DELETE /admin/overrides/tiers/{name}`.
pub async fn remove_tier_override(
    State(gw): State<Arc<Gateway>>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Json<Value>, Refusal> {
    remove_override(&gw, Entity::Tier(name)).await
}

/// `DELETE /admin/overrides/clients/{id}`.
pub async fn remove_client_override(
    State(gw): State<Arc<Gateway>>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<Value>, Refusal> {
    remove_override(&gw, Entity::Assignment(id)).await
}

/// `DELETE /admin/overrides/routes/{name}`.
pub async fn remove_route_override(
    State(gw): State<Arc<Gateway>>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Json<Value>, Refusal> {
    remove_override(&gw, Entity::Route(name)).await
}

/// `GET /admin/usage?from=&to=&group_by=`: the usage ledger's report.
pub async fn usage(
    State(gw): State<Arc<Gateway>>,
    _: Admin,
    headers: HeaderMap,
    axum::extract::Query(params): axum::extract::Query<crate::ledger::http::UsageParams>,
) -> Response {
    crate::ledger::http::usage_response(gw.ledger.as_deref(), &params, &headers).await
}
