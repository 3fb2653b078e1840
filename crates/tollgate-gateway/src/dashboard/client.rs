//! One client's page: its tier, bucket and spend, its keys (by prefix and
//! last characters, with their expiry), a form that issues a key (shown
//! once) and a button per key that revokes it.
//!
//! - `GET /dashboard/clients/{id}`: the page (or the sign-in form);
//! - `GET /dashboard/api/clients/{id}`: what it shows, as JSON;
//! - `POST /dashboard/api/clients/{id}/keys` and `DELETE
//!   /dashboard/api/keys/{id}`: the admin API's `POST /admin/clients/{id}/keys`
//!   and `DELETE /admin/keys/{id}` themselves, handed the session's token as
//!   `Authorization: Bearer` ([`session::as_admin`]): the same checks, the
//!   same answers, the same notices to the other instances. Each needs the
//!   [`session::CHANGE_HEADER`] header, which the page sends.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{assets, clients, session};
use crate::error::ApiError;
use crate::gateway::Gateway;

/// `GET /dashboard/clients/{id}`: the page; its script reads the id from
/// the address.
pub async fn page(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    session::page_or_login(&gw, &headers, assets::CLIENT_HTML)
}

/// `GET /dashboard/api/clients/{id}`.
pub async fn handler(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(denied) = session::check(&gw, &headers) {
        return denied.json();
    }
    let registry = gw.registry();
    let Some(client) = registry.client(&id) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_client",
            format!("No client {id:?} (or it is disabled)."),
        )
        .into_response();
    };
    let keys = match registry.keys_of(&id).await {
        Ok(k) => k,
        Err(e) => {
            return ApiError::internal(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                format!("The registry's keys could not be read: {e}"),
            )
            .into_response()
        }
    };
    let errors = parking_lot::Mutex::new(None);
    let stored = clients::stored(&gw, &client, &errors).await;
    let activity = gw
        .metrics
        .activity()
        .clients([id.as_str()])
        .pop()
        .unwrap_or_default();
    let mut body = clients::row(&client, &activity, &stored);
    body["in_config_file"] = json!(registry.file_client_tier(&id).is_some());
    body["keys"] = json!(keys);
    body["store_error"] = json!(errors.into_inner());
    body["now_ms"] = json!(crate::ledger::row::now_ms());
    // A read-only sign-in sees no buttons; the admin API's guard refuses
    // its changes anyway (403 read_only_token).
    body["can_change"] = json!(crate::admin_access::token(&gw, &headers)
        .is_some_and(|t| t.role == crate::config::AdminRole::ReadWrite));
    (
        StatusCode::OK,
        assets::headers("application/json"),
        body.to_string(),
    )
        .into_response()
}

/// `POST /dashboard/api/clients/{id}/keys`: `POST /admin/clients/{id}/keys`.
pub async fn issue_key(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let headers = match session::as_admin(&gw, &headers) {
        Ok(headers) => headers,
        Err(denied) => return denied.json(),
    };
    let issued = async {
        let body = crate::admin::authorized_body(&gw, &headers, body).await?;
        crate::admin_keys::issue(&gw, &id, &headers, &body).await
    };
    issued.await.into_response()
}

/// `DELETE /dashboard/api/keys/{id}`: `DELETE /admin/keys/{id}`.
pub async fn revoke_key(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let headers = match session::as_admin(&gw, &headers) {
        Ok(headers) => headers,
        Err(denied) => return denied.json(),
    };
    let revoked = async {
        crate::admin::authorize(&gw, &headers)?;
        crate::admin_keys::revoke(&gw, &id).await
    };
    revoked.await.into_response()
}
