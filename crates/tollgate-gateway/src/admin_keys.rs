//! The admin API's clients and keys (behind the admin token, like the rest
//! of [`crate::admin`]):
//!
//! - `POST /admin/clients` `{"id": "acme", "tier": "pro", "org": "acme-corp",
//!   "limits": {"rpm": 10}}` (`org` and `limits` optional): a new client
//!   (201; the same client again is a 200 and no change; another tier, or
//!   the id of a config-file client, a 409);
//! - `POST /admin/clients/{id}/keys` `{"name", "expires_at_ms" |
//!   "expires_in_secs", "models"}` (each optional): a new key, answered once
//!   as `key` with its `id` (201);
//! - `GET /admin/clients/{id}/keys`: its keys, shown by prefix and last
//!   characters, never the keys;
//! - `POST /admin/keys/{id}/rotate` `{"overlap_secs": 3600}`: a new key in
//!   its place; the old one works for the overlap, then no more;
//! - `DELETE /admin/keys/{id}`: revoked, refused on every instance within
//!   `store.sync_interval_ms` (again: no change).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::admin::{authorize, authorized_body, bad_body, change_failed, json_body};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::registry::issue::{Created, NewKey, Refused};

/// Body of `POST /admin/clients`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    /// Its id.
    pub id: String,
    /// Its tier.
    pub tier: String,
    /// Its organisation.
    #[serde(default)]
    pub org: Option<String>,
    /// Its own limits and budgets over its tier's.
    #[serde(default)]
    pub limits: crate::config::LimitsConfig,
}

/// Body of `POST /admin/keys/{id}/rotate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// How long the old key keeps working, seconds (0: not at all).
    pub overlap_secs: u64,
}

/// The answer to a refused client, key or organisation change.
pub(crate) fn refused(e: Refused) -> Response {
    let (status, code) = match &e {
        Refused::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_value"),
        Refused::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        Refused::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        Refused::Registry(_) => {
            let Refused::Registry(e) = e else {
                unreachable!()
            };
            return change_failed(e, "invalid_change", "body");
        }
    };
    ApiError::new(status, "invalid_request_error", code, e.to_string()).into_response()
}

/// `POST /admin/clients`.
pub async fn create_client(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let req: NewClient = match json_body(&gw, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let created = gw
        .registry()
        .create_client_in(&req.id, &req.tier, req.org.as_deref(), &req.limits)
        .await;
    match created {
        Ok(Created::New(version)) => {
            gw.announce(version).await;
            tracing::info!(client = %req.id, tier = %req.tier, version, "client created");
            let body = json!({"id": req.id, "tier": req.tier, "org": req.org, "limits": req.limits, "version": version});
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Ok(Created::Existing(version)) => {
            let body = json!({"id": req.id, "tier": req.tier, "org": req.org, "limits": req.limits, "version": version});
            Json(body).into_response()
        }
        Err(e) => refused(e),
    }
}

/// `POST /admin/clients/{id}/keys`.
pub async fn issue_key(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> Response {
    let body = match authorized_body(&gw, &headers, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let new: NewKey = if body.is_empty() {
        NewKey::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return bad_body(e),
        }
    };
    match gw.registry().issue_key(&id, &new).await {
        Ok(issued) => {
            gw.announce(issued.version).await;
            tracing::info!(client = %id, key = %issued.info.id, shown = %issued.info.shown, "key issued");
            (StatusCode::CREATED, Json(issued)).into_response()
        }
        Err(e) => refused(e),
    }
}

/// `GET /admin/clients/{id}/keys`.
pub async fn keys(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return e.into_response();
    }
    match gw.registry().keys_of(&id).await {
        Ok(keys) => Json(json!({"client": id, "keys": keys})).into_response(),
        Err(e) => refused(e),
    }
}

/// `POST /admin/keys/{id}/rotate`.
pub async fn rotate_key(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> Response {
    let req: Rotate = match json_body(&gw, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match gw.registry().rotate_key(&id, req.overlap_secs).await {
        Ok(issued) => {
            gw.announce(issued.version).await;
            tracing::info!(old = %id, key = %issued.info.id, overlap_secs = req.overlap_secs, "key rotated");
            (StatusCode::CREATED, Json(issued)).into_response()
        }
        Err(e) => refused(e),
    }
}

/// `DELETE /admin/keys/{id}`.
pub async fn revoke_key(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return e.into_response();
    }
    match gw.registry().revoke_key(&id).await {
        Ok((info, version)) => {
            if let Some(v) = version {
                gw.announce(v).await;
                tracing::info!(key = %id, version = v, "key revoked");
            }
            Json(info).into_response()
        }
        Err(e) => refused(e),
    }
}
