//! Who may use the admin API, and what is recorded of it.
//!
//! Admin tokens ([`crate::auth::AdminTokens`]: `admin.token_sha256`, a
//! read-write token named `admin`, and `[[admin.tokens]]`, each with a
//! name and a role) are kept as hashes. [`guard`] stands in front of every
//! `/admin/…` and `/dashboard/api/…` route: a read-only token may read
//! (GET, HEAD) and is answered 403 `read_only_token` on every other
//! method, before the handler runs; a read-write token's request runs with
//! its name and route as the [`Actor`] of the registry changes it makes, so
//! each lands in the audit table (see [`crate::registry::audit`]).
//!
//! - `GET /admin/audit?limit=100&before=VERSION&object=client:acme`: the
//!   audit, newest first, `next` the cursor of the next page.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::auth::AdminToken;
use crate::config::AdminRole;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::registry::audit::{self, Actor};

/// The admin token a request carries (bearer header, or the dashboard's
/// cookie).
pub(crate) fn token<'a>(gw: &'a Gateway, headers: &HeaderMap) -> Option<&'a AdminToken> {
    gw.admin_tokens
        .find(crate::auth::bearer(headers))
        .or_else(|| {
            let cookie = crate::dashboard::session::cookie_token(headers)?;
            gw.admin_tokens.find(Some(&cookie))
        })
}

/// Whether a request by `method` may change something.
fn changes(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The guard of the admin routes (see the module's doc). A request
/// without a known token goes on to its handler, which answers 401 (or 403
/// `admin_disabled`) as it always did.
pub(crate) async fn guard(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !(path.starts_with("/admin/") || path.starts_with("/dashboard/api/")) {
        return next.run(req).await;
    }
    let Some(t) = token(&gw, req.headers()) else {
        return next.run(req).await;
    };
    let action = format!("{} {path}", req.method());
    if changes(req.method()) && t.role == AdminRole::ReadOnly {
        tracing::warn!(token = %t.name, %action, "admin change refused: read-only token");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "read_only_token",
            format!(
                "The admin token {:?} is read-only: it may read (GET) but not change anything; use a read_write token of [[admin.tokens]].",
                t.name
            ),
        )
        .into_response();
    }
    let actor = Actor {
        token: t.name.clone(),
        action,
    };
    audit::with_actor(actor, next.run(req)).await
}

/// Query of `GET /admin/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// At most this many entries (default 100, at most
    /// [`audit::MAX_PAGE`]).
    pub limit: Option<u64>,
    /// Entries older than this change (a page's `next`).
    pub before: Option<u64>,
    /// Only the entries of this object (`client:acme`, `key:key_…`).
    pub object: Option<String>,
}

/// `GET /admin/audit`.
pub async fn audit(
    State(gw): State<Arc<Gateway>>,
    _: crate::admin::Admin,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, crate::admin::Refusal> {
    let p = crate::admin_clients::query(params)?;
    let limit = p.limit.unwrap_or(100).clamp(1, audit::MAX_PAGE);
    let entries = audit::page(gw.registry().db(), p.before, p.object.as_deref(), limit)
        .await
        .map_err(|e| crate::admin::change_failed(e.into(), "invalid_query", "query"))?;
    let next = (entries.len() as u64 == limit)
        .then(|| entries.last().map(|e| e.version))
        .flatten();
    Ok(Json(json!({"entries": entries, "next": next})))
}
