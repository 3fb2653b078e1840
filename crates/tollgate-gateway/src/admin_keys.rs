//! The admin API's clients and keys (behind the admin token, like the rest
//! of [`crate::admin`]):
//!
//! - `POST /admin/clients` `{"id": "acme", "tier": "pro", "org": "acme-corp",
//!   "limits": {"rpm": 10}}` (`org` and `limits` optional): a new client
//!   (201; the same client again is a 200 and no change; another tier, or
//!   the id of a config-file client, a 409);
//! - `POST /admin/clients/{id}/keys` `{"name", "expires_at_ms" |
//!   "expires_in_secs", "models"}` (each optional): a new key, answered once
//!   as `key` with its `id` (201); with an `Idempotency-Key` header, a retry
//!   gets the same answer (201, `Idempotent-Replayed: true`) and no second
//!   key, for 24 hours (see [`crate::registry::idempotency`]);
//! - `GET /admin/clients/{id}/keys?limit=&after=`: its keys, oldest first,
//!   shown by prefix and last characters, never the keys; `next` is the
//!   `after` of the next page;
//! - `POST /admin/keys/{id}/rotate` `{"overlap_secs": 3600}`: a new key in
//!   its place, carrying on its bucket and its budget's spend; the old one
//!   works for the overlap, then no more; an `Idempotency-Key` works as on
//!   issuance;
//! - `DELETE /admin/keys/{id}`: revoked, refused on every instance within
//!   `store.sync_interval_ms` (again: no change).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::admin::{authorize, authorized_body, bad_body, change_failed, json_body};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::registry::idempotency::Idempotency;
use crate::registry::issue::{Created, Issued, NewKey, Refused};

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

/// The answer to a key just issued (or issued before, to a retry with its
/// `Idempotency-Key`): 201 with the key, announced and logged once.
async fn answer_issued(gw: &Gateway, issued: Issued, what: &str) -> Response {
    let mut r = if issued.replayed {
        let mut r = (StatusCode::CREATED, Json(&issued)).into_response();
        r.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
        r
    } else {
        gw.announce(issued.version).await;
        tracing::info!(client = %issued.info.client, key = %issued.info.id, shown = %issued.info.shown, "{what}");
        (StatusCode::CREATED, Json(&issued)).into_response()
    };
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    r
}

/// The request's `Idempotency-Key`, if it has one, for `scope` (the client
/// a key is issued to, or `rotate ID`) and `body`.
fn idempotency(
    headers: &HeaderMap,
    scope: &str,
    body: &[u8],
) -> Result<Option<Idempotency>, Refused> {
    let Some(h) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = h
        .to_str()
        .map_err(|_| Refused::Invalid("Idempotency-Key: printable ASCII only".into()))?;
    Idempotency::new(key, scope, body).map(Some)
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
    let mut new: NewKey = if body.is_empty() {
        NewKey::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return bad_body(e),
        }
    };
    new.idempotency = match idempotency(&headers, &id, &body) {
        Ok(i) => i,
        Err(e) => return refused(e),
    };
    match gw.registry().issue_key(&id, &new).await {
        Ok(issued) => answer_issued(&gw, issued, "key issued").await,
        Err(e) => refused(e),
    }
}

/// Query of `GET /admin/clients/{id}/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyQuery {
    /// At most this many (1 to 1000, default 100).
    pub limit: Option<usize>,
    /// Those whose id sorts after this one (a page's `next`).
    pub after: Option<String>,
}

/// `GET /admin/clients/{id}/keys`.
pub async fn keys(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<KeyQuery>, QueryRejection>,
) -> Response {
    if let Err(e) = authorize(&gw, &headers) {
        return e.into_response();
    }
    let q = match crate::admin_clients::query(q) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let limit = crate::admin_clients::page_size(q.limit);
    match gw
        .registry()
        .key_page(&id, q.after.as_deref(), limit as u64)
        .await
    {
        Ok(keys) => {
            let next = (keys.len() == limit)
                .then(|| keys.last().map(|k| k.id.clone()))
                .flatten();
            Json(json!({"client": id, "keys": keys, "next": next})).into_response()
        }
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
    let body = match authorized_body(&gw, &headers, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let req: Rotate = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_body(e),
    };
    let idem = match idempotency(&headers, &format!("rotate {id}"), &body) {
        Ok(i) => i,
        Err(e) => return refused(e),
    };
    match gw
        .registry()
        .rotate_key(&id, req.overlap_secs, idem.as_ref())
        .await
    {
        Ok(issued) => {
            let what = format!("key {id} rotated, overlap {} s", req.overlap_secs);
            answer_issued(&gw, issued, &what).await
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
