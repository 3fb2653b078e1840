//! Forwarding a request and reading its answer: the upstream's error
//! statuses passed on (and its pauses started), a 200 body decoded and
//! checked before it is passed on, a stream handed to the relay, timeouts,
//! and the settlement of what the answer used.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::Value;
use tollgate::{AcquireOptions, Cost, Dimension};

use super::stream::{self, SseRelay, Timeouts};
use super::tally::Tally;
use super::usage::{output_tokens, usage_in, Charge, Part};
use super::{asked_pause, upstream_backoff, Endpoint, Failure};
use crate::admission::Admission;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::outcome::Outcome;
use crate::request_id;
use crate::routing::Model;

/// What goes upstream and how its answer is read.
pub(super) struct Ask {
    pub(super) endpoint: Endpoint,
    pub(super) payload: bytes::Bytes,
    pub(super) stream: bool,
    pub(super) strip_usage: bool,
    /// The most output the answer may be charged.
    pub(super) cap: u64,
}

pub(super) fn timeouts(gw: &Gateway) -> Timeouts {
    let s = &gw.config.server;
    Timeouts {
        first_byte: Duration::from_secs_f64(s.upstream_first_byte_timeout_secs),
        idle: Duration::from_secs_f64(s.upstream_idle_timeout_secs),
        total: Duration::from_secs_f64(s.upstream_timeout_secs),
    }
}

pub(super) async fn forward(
    gw: &Arc<Gateway>,
    model: &Arc<Model>,
    mut admission: Admission,
    mut ask: Ask,
    tally: &mut Tally,
) -> Result<Response, Failure> {
    let t = timeouts(gw);
    let mut req = gw
        .http
        .post(model.url(ask.endpoint).clone())
        .header(header::CONTENT_TYPE, "application/json")
        .body(std::mem::take(&mut ask.payload));
    if let Some(key) = &model.api_key {
        req = req.bearer_auth(key);
    }
    if !ask.stream {
        req = req.timeout(t.total);
    }
    // From here on the upstream may have the request: a client that leaves
    // is charged its input at least (the admission settles that when dropped).
    admission.forwarded = true;
    admission.used = (admission.estimate.0, 0);
    let sent_at = tokio::time::Instant::now();
    let started = Instant::now();
    let sent = if ask.stream {
        match tokio::time::timeout(t.first_byte.min(t.total), req.send()).await {
            Ok(r) => r,
            Err(_) => {
                return Err(timed_out(gw, model, admission, &t).await);
            }
        }
    } else {
        req.send().await
    };
    gw.metrics.observe(
        "tollgate_upstream_latency_seconds",
        &[("model", &model.name)],
        started.elapsed().as_secs_f64(),
    );
    let resp = match sent {
        Ok(r) => r,
        // A connection that could not be made in time never reached the
        // upstream: unreachable, not timed out, and nothing used.
        Err(e) if e.is_timeout() && !e.is_connect() => {
            return Err(timed_out(gw, model, admission, &t).await);
        }
        Err(e) => {
            gw.metrics.inc(
                "tollgate_upstream_responses_total",
                &[("model", &model.name), ("status", "0")],
            );
            tracing::warn!(model = %model.name, provider = %model.provider, error = %e, "upstream unreachable");
            // Never connected, or the connection failed before an answer:
            // nothing was used.
            admission.settle(0, 0).await;
            let err = ApiError::internal(
                StatusCode::BAD_GATEWAY,
                "upstream_unreachable",
                format!(
                    "The upstream provider {:?} could not be reached; retry later.",
                    model.provider
                ),
            );
            return Err((err, Outcome::UpstreamError));
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
    let sent = Sent {
        resp,
        at: sent_at,
        timeouts: t,
    };
    let mut out = read_answer(gw, model, admission, ask, tally, sent).await;
    match &mut out {
        Ok(r) => r.headers_mut().extend(upstream_id),
        Err((e, _)) => e.headers.extend(upstream_id),
    }
    out
}

/// An upstream's answer (its headers) to a request sent at `at`.
struct Sent {
    resp: reqwest::Response,
    at: tokio::time::Instant,
    timeouts: Timeouts,
}

/// Reads the upstream's answer to `ask` and passes it on, settling the
/// admission by what it used.
async fn read_answer(
    gw: &Arc<Gateway>,
    model: &Arc<Model>,
    admission: Admission,
    ask: Ask,
    tally: &mut Tally,
    sent: Sent,
) -> Result<Response, Failure> {
    let Sent {
        resp,
        at: sent_at,
        timeouts: t,
    } = sent;
    let status = resp.status();
    if !status.is_success() {
        return Err(refused_upstream(gw, model, admission, resp).await);
    }
    if let Some(enc) = unknown_encoding(resp.headers()) {
        let input = admission.estimate.0;
        admission.settle(input, 0).await;
        tracing::warn!(model = %model.name, encoding = %enc, "upstream answer in an encoding the gateway cannot decode");
        return Err(bad_body(
            model,
            &format!("was encoded as {enc:?}, which this gateway cannot decode"),
        ));
    }
    if ask.stream && !is_event_stream(resp.headers()) {
        let input = admission.estimate.0;
        admission.settle(input, 0).await;
        tracing::warn!(model = %model.name, "upstream answered a stream request with something else than an event stream");
        return Err(bad_body(model, "is not an event stream"));
    }
    if ask.stream {
        let relay = SseRelay::new(
            Box::pin(resp.bytes_stream()),
            stream::Relayed {
                gw: gw.clone(),
                model: model.clone(),
                admission,
                tally: tally.take(),
                cap: ask.cap,
                strip_usage: ask.strip_usage,
                sent: sent_at,
                timeouts: t,
            },
        );
        let mut r = Response::new(Body::from_stream(relay));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ok(r);
    }
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) if e.is_timeout() => return Err(timed_out(gw, model, admission, &t).await),
        Err(e) => {
            tracing::warn!(model = %model.name, error = %e, "upstream body failed");
            let input = admission.estimate.0;
            admission.settle(input, 0).await;
            return Err(bad_body(model, "broke off or could not be decoded"));
        }
    };
    // The usual answer reports its usage: read it without building the
    // document. Only one without is parsed whole, to count its output.
    let (usage, counted) = match usage_in(&bytes) {
        Some(u) => (Some(u), 0),
        None => match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) if v.is_object() => (None, output_tokens(model.tokenizer, &v, Part::Whole)),
            _ => {
                let input = admission.estimate.0;
                admission.settle(input, 0).await;
                tracing::warn!(model = %model.name, bytes = bytes.len(), "upstream 200 answer is not a JSON object");
                return Err(bad_body(model, "is not JSON"));
            }
        },
    };
    let charge = Charge::of(usage, counted, admission.estimate.0, ask.cap);
    stream::note_charge(gw, model, tally.client_id(), &charge);
    admission.settle(charge.input, charge.output).await;
    let mut r = Response::new(Body::from(bytes));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// A `Content-Encoding` still on an answer after the client decoded what it
/// can (gzip, deflate, brotli): one the gateway did not ask for.
fn unknown_encoding(h: &reqwest::header::HeaderMap) -> Option<String> {
    let enc = h
        .get(header::CONTENT_ENCODING)?
        .to_str()
        .unwrap_or("?")
        .trim();
    (!enc.is_empty() && !enc.eq_ignore_ascii_case("identity")).then(|| enc.to_string())
}

fn is_event_stream(h: &reqwest::header::HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// 502 `upstream_bad_body`: the upstream said 200 but its body `what`.
fn bad_body(model: &Model, what: &str) -> Failure {
    let err = ApiError::internal(
        StatusCode::BAD_GATEWAY,
        "upstream_bad_body",
        format!(
            "The upstream provider {:?} answered 200 but its body {what}; retry.",
            model.provider
        ),
    );
    (err, Outcome::UpstreamBadBody)
}

/// 504 `upstream_timeout`; the request reached the upstream, so its input
/// is charged.
async fn timed_out(gw: &Gateway, model: &Model, admission: Admission, t: &Timeouts) -> Failure {
    gw.metrics.inc(
        "tollgate_upstream_responses_total",
        &[("model", &model.name), ("status", "0")],
    );
    tracing::warn!(model = %model.name, provider = %model.provider, outcome = Outcome::UpstreamTimeout.as_str(), "upstream did not answer in time");
    let input = admission.estimate.0;
    admission.settle(input, 0).await;
    let err = ApiError::internal(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
        format!(
            "The upstream provider {:?} did not answer in time (first byte of a stream within {:?}, the whole answer within {:?}); retry.",
            model.provider, t.first_byte, t.total
        ),
    );
    (err, Outcome::UpstreamTimeout)
}

/// An upstream error status passed on in OpenAI's shape; nothing charged.
/// A 429 slows the provider bucket; a 429 or 503 that says how long to wait
/// (`Retry-After`) also pauses the model that long on every instance.
/// The most of an upstream's error body the gateway reads (its message is
/// passed on; the rest is dropped).
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// An upstream error's body: what arrives within `wait`, at most
/// [`ERROR_BODY_LIMIT`] bytes, so that a body that trickles or never ends
/// holds neither the client nor its reservations.
async fn error_body(mut resp: reqwest::Response, wait: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        while let Ok(Some(chunk)) = resp.chunk().await {
            out.extend_from_slice(&chunk);
            if out.len() >= ERROR_BODY_LIMIT {
                out.truncate(ERROR_BODY_LIMIT);
                break;
            }
        }
    };
    let _ = tokio::time::timeout(wait, read).await;
    out
}

async fn refused_upstream(
    gw: &Gateway,
    model: &Model,
    admission: Admission,
    resp: reqwest::Response,
) -> Failure {
    let status = resp.status().as_u16();
    let asked = asked_pause(resp.headers());
    let backoff = upstream_backoff(resp.headers());
    let wait = Duration::from_secs_f64(gw.config.server.upstream_idle_timeout_secs);
    let bytes = error_body(resp, wait).await;
    admission.settle(0, 0).await;
    let mut err = upstream_error(status, &bytes, &model.provider);
    if status == 429 {
        penalize(model, backoff).await;
        err.retry_after = Some(backoff);
    }
    if let (429 | 503, Some(d)) = (status, asked) {
        model
            .hold
            .start(&gw.store, super::store_timeout(gw), status, d)
            .await;
        tracing::info!(model = %model.name, status, pause_ms = d.as_millis() as u64, "upstream asked to wait: model paused on every instance");
        err.retry_after = Some(d);
    }
    let outcome = if status == 429 {
        Outcome::UpstreamRateLimited
    } else {
        Outcome::UpstreamError
    };
    (err, outcome)
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
