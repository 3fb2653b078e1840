//! The request path of `/v1/chat/completions`, `/v1/embeddings` and
//! `/v1/responses`: auth, body and checks, admission, forwarding (streamed
//! or not), settlement, headers.

mod body;
mod headers;
mod stream;
mod validate;

pub use headers::{format_reset, ratelimit_headers, upstream_backoff, BUCKET_HEADER};
pub use stream::{usage_in, usage_of, EventScanner, SseRelay};
pub use validate::{check, Checked, Endpoint};

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tollgate::{AcquireOptions, Cost, Dimension};

use crate::admission::Admission;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::outcome::Outcome;
use crate::registry::Client;
use crate::request_id::{self, RequestId};
use crate::routing::Model;

/// The client a request's bearer key belongs to, or 401.
pub fn authenticate(gw: &Gateway, headers: &HeaderMap) -> Result<Arc<Client>, ApiError> {
    let key = crate::auth::bearer(headers).ok_or_else(|| {
        ApiError::unauthorized(
            "You didn't provide an API key. Send it as `Authorization: Bearer YOUR_KEY`.",
        )
    })?;
    let registry = gw.registry();
    registry
        .keys
        .lookup(key)
        .and_then(|id| registry.clients.get(id).cloned())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "Incorrect API key provided. Check the key your platform gave you.",
            )
        })
}

/// Serves one proxied request end to end.
pub async fn handle(
    gw: Arc<Gateway>,
    headers: HeaderMap,
    body: Body,
    endpoint: Endpoint,
    request_id: RequestId,
) -> Response {
    let refused = |e: ApiError, outcome: Outcome| {
        gw.metrics.inc(
            "tollgate_requests_total",
            &[
                ("client", ""),
                ("tier", ""),
                ("model", ""),
                ("outcome", outcome.as_str()),
            ],
        );
        e.into_response()
    };
    let client = match authenticate(&gw, &headers) {
        Ok(c) => c,
        Err(e) => return refused(e, Outcome::Unauthorized),
    };
    if let Err(e) = body::check_media_type(&headers) {
        return refused(e, Outcome::BadRequest);
    }
    let mut model: Option<Arc<Model>> = None;
    let result = serve(
        &gw, &client, &headers, body, endpoint, request_id, &mut model,
    )
    .await;
    let (response, outcome) = match result {
        Ok(r) => (r, Outcome::Ok),
        Err((e, outcome)) => (e.into_response(), outcome),
    };
    gw.metrics.inc(
        "tollgate_requests_total",
        &[
            ("client", &client.id),
            ("tier", &client.tier.name),
            ("model", model.as_ref().map_or("", |m| m.name.as_str())),
            ("outcome", outcome.as_str()),
        ],
    );
    response
}

type Failure = (ApiError, Outcome);

async fn serve(
    gw: &Arc<Gateway>,
    client: &Arc<Client>,
    headers: &HeaderMap,
    body: Body,
    endpoint: Endpoint,
    request_id: RequestId,
    model_used: &mut Option<Arc<Model>>,
) -> Result<Response, Failure> {
    let limit = gw.config.server.max_body_bytes;
    let timeout = Duration::from_secs_f64(gw.config.server.body_read_timeout_secs);
    let bytes = body::read(headers, body, limit, timeout)
        .await
        .map_err(|e| (e, Outcome::BadRequest))?;
    let checked = check(&gw.models, endpoint, &bytes).map_err(|e| (e, Outcome::BadRequest))?;
    *model_used = Some(checked.model.clone());
    if gw.config.server.log_prompts {
        tracing::debug!(client = %client.id, body = %checked.body, "request");
    }
    let Checked {
        model,
        upstream_body,
        input,
        output,
        stream,
        client_wants_usage,
        ..
    } = checked;
    let mut admission = match Admission::admit(gw, client, &model, input, output).await {
        Ok(a) => a,
        Err(mut e) => {
            // A bucket's refusal carries that bucket's headers; a budget's
            // refusal the client bucket's.
            if e.status == StatusCode::TOO_MANY_REQUESTS && e.headers.is_empty() {
                e.headers = Box::new(client_headers(client).await);
            }
            let outcome = Outcome::of_refusal(&e);
            return Err((e, outcome));
        }
    };
    admission.set_request_id(request_id.0);
    admission.wait_for_slot().await;
    // The headers describe the client's bucket right after this request was
    // let in, known from its permit: no store round trip.
    let rl_headers = admission
        .client_status
        .as_deref()
        .map(ratelimit_headers)
        .unwrap_or_default();
    let result = forward(
        gw,
        &model,
        admission,
        endpoint,
        upstream_body,
        stream,
        client_wants_usage,
    )
    .await;
    match result {
        Ok(mut r) => {
            r.headers_mut().extend(rl_headers);
            Ok(r)
        }
        Err((mut e, outcome)) => {
            e.headers.extend(rl_headers);
            Err((e, outcome))
        }
    }
}

/// The client bucket's headers read from the store (for refusals, after the
/// refused request's reservations were released).
async fn client_headers(client: &Client) -> HeaderMap {
    match client.limiter.status().await {
        Ok(s) => ratelimit_headers(&s.dimensions),
        Err(_) => HeaderMap::new(),
    }
}

async fn forward(
    gw: &Arc<Gateway>,
    model: &Arc<Model>,
    mut admission: Admission,
    endpoint: Endpoint,
    payload: bytes::Bytes,
    stream: bool,
    client_wants_usage: bool,
) -> Result<Response, Failure> {
    let mut req = gw
        .http
        .post(model.url(endpoint).clone())
        .header(header::CONTENT_TYPE, "application/json")
        .body(payload);
    if let Some(key) = &model.api_key {
        req = req.bearer_auth(key);
    }
    admission.forwarded = true;
    admission.used = (0, 0);
    let started = Instant::now();
    let sent = req.send().await;
    gw.metrics.observe(
        "tollgate_upstream_latency_seconds",
        &[("model", &model.name)],
        started.elapsed().as_secs_f64(),
    );
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            gw.metrics.inc(
                "tollgate_upstream_responses_total",
                &[("model", &model.name), ("status", "0")],
            );
            tracing::warn!(model = %model.name, provider = %model.provider, error = %e, "upstream unreachable");
            drop(admission);
            let (status, code, outcome) = if e.is_timeout() {
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    Outcome::UpstreamTimeout,
                )
            } else {
                (
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    Outcome::UpstreamError,
                )
            };
            let err = ApiError::internal(
                status,
                code,
                format!(
                    "The upstream provider {:?} could not be reached; retry later.",
                    model.provider
                ),
            );
            return Err((err, outcome));
        }
    };
    let status = resp.status();
    let upstream_id = resp
        .headers()
        .get(request_id::HEADER)
        .cloned()
        .map(|v| HeaderMap::from_iter([(request_id::UPSTREAM_HEADER, v)]))
        .unwrap_or_default();
    gw.metrics.inc(
        "tollgate_upstream_responses_total",
        &[("model", &model.name), ("status", status.as_str())],
    );
    if !status.is_success() {
        let backoff = upstream_backoff(resp.headers());
        let bytes = resp.bytes().await.unwrap_or_default();
        admission.settle(0, 0).await;
        let upstream_429 = status.as_u16() == 429;
        if upstream_429 {
            penalize(model, backoff).await;
        }
        let mut err = upstream_error(status.as_u16(), &bytes, &model.provider);
        if upstream_429 {
            err.retry_after = Some(backoff);
        }
        err.headers.extend(upstream_id);
        return Err((
            err,
            if upstream_429 {
                Outcome::UpstreamRateLimited
            } else {
                Outcome::UpstreamError
            },
        ));
    }
    let mut out = if stream {
        let relay = SseRelay::new(
            Box::pin(resp.bytes_stream()),
            admission,
            !client_wants_usage,
        );
        let mut r = Response::new(Body::from_stream(relay));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
    } else {
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(model = %model.name, error = %e, "upstream body failed");
                let used = (admission.estimate.0, 0);
                admission.settle(used.0, used.1).await;
                let err = ApiError::internal(
                    StatusCode::BAD_GATEWAY,
                    "upstream_failed",
                    "The upstream response broke off; retry.",
                );
                return Err((err, Outcome::UpstreamError));
            }
        };
        // No usage in the answer: keep the estimate charged (conservative).
        let (input, output) = usage_in(&bytes).unwrap_or(admission.estimate);
        admission.settle(input, output).await;
        let mut r = Response::new(Body::from(bytes));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    out.headers_mut().extend(upstream_id);
    Ok(out)
}

/// An upstream error in OpenAI's shape: the provider's own body when it has
/// that shape, else a wrapper naming the provider and status.
fn upstream_error(status: u16, body: &[u8], provider: &str) -> ApiError {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let inner = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .filter(|e| e.is_object());
    let kind = if status == 429 {
        "rate_limit_error"
    } else if status >= 500 {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let mut err = ApiError::new(
        code,
        kind,
        &format!("upstream_{status}"),
        format!("The upstream provider {provider:?} answered {status}."),
    );
    if let Some(e) = inner {
        if let Some(m) = e.get("message").and_then(Value::as_str) {
            err.message = format!("Upstream provider {provider:?}: {m}");
        }
        if let Some(c) = e.get("code").and_then(Value::as_str) {
            err.code = c.to_string();
        }
    }
    err
}

/// Makes the provider bucket back off for `d` after an upstream 429: charges
/// every limited token dimension with `d` worth of its rate (at most the
/// bucket's capacity), plus requests for an RPM-only bucket, so every
/// instance sharing the store waits.
pub async fn penalize(model: &Model, d: Duration) {
    let limiter = &model.limiter;
    let policy = limiter.policy();
    let secs = d.as_secs_f64().min(policy.tau * 0.99);
    let units = |dim: Dimension| {
        let inc = policy.increment[dim.index()];
        if inc > 0.0 {
            (secs / inc).floor() as u64
        } else {
            0
        }
    };
    let limited = |dim: Dimension| policy.is_limited(dim).then(|| units(dim));
    let cost = match (
        limited(Dimension::Tokens),
        limited(Dimension::InputTokens),
        limited(Dimension::OutputTokens),
    ) {
        (Some(tok), inp, _) => Cost::split(tok.min(inp.unwrap_or(u64::MAX)), 0),
        (None, None, None) => Cost::request_only(),
        (None, inp, out) => Cost::split(inp.unwrap_or(0), out.unwrap_or(0)),
    };
    let extra_requests = if cost == Cost::request_only() {
        units(Dimension::Requests).clamp(1, 32) - 1
    } else {
        0
    };
    let opts = AcquireOptions::default();
    let mut charge = vec![cost];
    charge.extend((0..extra_requests).map(|_| Cost::request_only()));
    for c in charge {
        match limiter.reserve(c, &opts).await {
            Ok(p) => {
                let _ = limiter.settle(p, c).await;
            }
            Err(e) => tracing::debug!(error = %e, "upstream backoff charge skipped"),
        }
    }
    tracing::info!(model = %model.name, backoff_ms = d.as_millis() as u64, "upstream 429: provider bucket backs off");
}
