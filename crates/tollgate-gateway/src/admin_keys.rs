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
use serde_json::{json, Value};

use crate::admin::{parse_body, Admin, AdminBody, AdminJson, Refusal};
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

/// `POST /admin/clients`.
pub async fn create_client(
    State(gw): State<Arc<Gateway>>,
    AdminJson(req): AdminJson<NewClient>,
) -> Result<Response, Refusal> {
    let created = gw
        .registry()
        .create_client_in(&req.id, &req.tier, req.org.as_deref(), &req.limits)
        .await?;
    let (status, version) = match created {
        Created::New(version) => {
            gw.announce(version).await;
            tracing::info!(client = %req.id, tier = %req.tier, version, "client created");
            (StatusCode::CREATED, version)
        }
        Created::Existing(version) => (StatusCode::OK, version),
    };
    let body = json!({"id": req.id, "tier": req.tier, "org": req.org, "limits": req.limits, "version": version});
    Ok((status, Json(body)).into_response())
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
    Path(id): Path<String>,
    headers: HeaderMap,
    AdminBody(body): AdminBody,
) -> Result<Response, Refusal> {
    issue(&gw, &id, &headers, &body).await
}

/// Issues a key to client `id` as the (authorized) request with `headers`
/// and `body` asks (`POST /admin/clients/{id}/keys`, and the dashboard's).
pub(crate) async fn issue(
    gw: &Gateway,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Refusal> {
    let mut new: NewKey = match body.is_empty() {
        true => NewKey::default(),
        false => parse_body(body)?,
    };
    new.idempotency = idempotency(headers, id, body)?;
    let issued = gw.registry().issue_key(id, &new).await?;
    Ok(answer_issued(gw, issued, "key issued").await)
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
    _: Admin,
    Path(id): Path<String>,
    q: Result<Query<KeyQuery>, QueryRejection>,
) -> Result<Json<Value>, Refusal> {
    let q = crate::admin_clients::query(q)?;
    let limit = crate::admin_clients::page_size(q.limit);
    let keys = gw
        .registry()
        .key_page(&id, q.after.as_deref(), limit as u64)
        .await?;
    let next = (keys.len() == limit)
        .then(|| keys.last().map(|k| k.id.clone()))
        .flatten();
    Ok(Json(json!({"client": id, "keys": keys, "next": next})))
}

/// `POST /admin/keys/{id}/rotate`.
pub async fn rotate_key(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    AdminBody(body): AdminBody,
) -> Result<Response, Refusal> {
    let req: Rotate = parse_body(&body)?;
    let idem = idempotency(&headers, &format!("rotate {id}"), &body)?;
    let issued = gw
        .registry()
        .rotate_key(&id, req.overlap_secs, idem.as_ref())
        .await?;
    let what = format!("key {id} rotated, overlap {} s", req.overlap_secs);
    Ok(answer_issued(&gw, issued, &what).await)
}

/// `DELETE /admin/keys/{id}`.
pub async fn revoke_key(
    State(gw): State<Arc<Gateway>>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    revoke(&gw, &id).await
}

/// Revokes key `id` (`DELETE /admin/keys/{id}`, and the dashboard's).
pub(crate) async fn revoke(gw: &Gateway, id: &str) -> Result<Response, Refusal> {
    let (info, version) = gw.registry().revoke_key(id).await?;
    if let Some(v) = version {
        gw.announce(v).await;
        tracing::info!(key = %id, version = v, "key revoked");
    }
    Ok(Json(info).into_response())
}
