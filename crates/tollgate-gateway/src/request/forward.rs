//! Forwarding: the request goes to one model's upstream and its answer is
//! read — an error status (with its body, at most [`ERROR_BODY_LIMIT`]
//! bytes within the idle timeout), a 200 body decoded and checked before it
//! is passed on, or a stream's headers, checked, for the
//! [`stream`](super::stream) relay. Every way it can fail is an
//! [`UpstreamFailure`] that says what the request used; settling it and
//! answering the client are the pipeline's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderValue};
use bytes::Bytes;
use serde_json::Value;
use tollgate::{AcquireOptions, Cost, Dimension, RateLimiter, Store};

use super::headers::upstream_backoff;
use super::settle::Usage;
use super::stream::{Timeouts, UpstreamBody};
use super::usage::{output_tokens, usage_in, Charge, Part};
use crate::metrics::Metrics;
use crate::model::{Endpoint, Model};
use crate::outcome::Outcome;
use crate::pause::asked_pause;
use crate::request_id;

/// What forwarding needs of the gateway.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// The HTTP client.
    pub(crate) http: reqwest::Client,
    /// The upstream timeouts.
    pub(crate) timeouts: Timeouts,
    /// Where pauses are shared, and how long a call to it may take.
    pub(crate) store: Store,
    /// How long a store call of the request path may wait.
    pub(crate) store_timeout: Duration,
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
}

/// What goes upstream and how its answer is read.
pub(crate) struct Ask {
    pub(crate) endpoint: Endpoint,
    pub(crate) payload: Bytes,
    pub(crate) stream: bool,
    /// The most output the answer may be charged.
    pub(crate) cap: u64,
    /// The estimated input (charged when the answer does not say).
    pub(crate) input: u64,
    /// What is left of the request's deadline: the answer (a stream's
    /// headers) must come within it.
    pub(crate) within: Duration,
}

/// An upstream's answer that can be passed on.
pub(crate) enum Answer {
    /// A whole JSON body and what it is charged.
    Whole {
        /// The body as the upstream sent it (decoded).
        bytes: Bytes,
        /// Its charge.
        charge: Charge,
    },
    /// An event stream, to relay; sent upstream at `sent`.
    Stream {
        /// The body.
        body: UpstreamBody,
        /// When the request went upstream.
        sent: tokio::time::Instant,
    },
}

/// How forwarding failed.
#[derive(Debug)]
pub(crate) enum UpstreamFailure {
    /// The connection could not be made, or failed before an answer.
    Unreachable,
    /// No answer (or no first byte of a stream) in time.
    Timeout,
    /// An error status.
    Status {
        /// The status.
        status: u16,
        /// The start of its body.
        body: Vec<u8>,
        /// How long the provider bucket backs off (after a 429).
        backoff: Duration,
        /// The pause the upstream asked for (`Retry-After`), if any.
        asked: Option<Duration>,
    },
    /// A 200 whose body is not what it claims: it `what`.
    BadBody(&'static str),
    /// A 200 whose body broke off before its end, before any of it went
    /// to the client.
    BrokeOff,
    /// A 200 in an encoding this gateway cannot decode.
    Encoding(String),
}

impl UpstreamFailure {
    /// What the request used: nothing when the upstream never had it or
    /// refused it, else its input.
    pub(crate) fn used(&self, input: u64) -> Usage {
        match self {
            UpstreamFailure::Unreachable | UpstreamFailure::Status { .. } => Usage::NONE,
            _ => Usage::new(input, 0),
        }
    }

    /// Whether the next candidate may be tried: the upstream could not be
    /// reached, did not answer in time, failed (5xx) or was over its limits
    /// (429). Any other status is about the request and would fail the same
    /// elsewhere; a body that is not what it claims is not retried either.
    pub(crate) fn falls_back(&self) -> bool {
        match self {
            UpstreamFailure::Unreachable | UpstreamFailure::Timeout | UpstreamFailure::BrokeOff => {
                true
            }
            UpstreamFailure::Status { status, .. } => *status == 429 || *status >= 500,
            UpstreamFailure::BadBody(_) | UpstreamFailure::Encoding(_) => false,
        }
    }

    /// How the request ended.
    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            UpstreamFailure::Unreachable => Outcome::UpstreamError,
            UpstreamFailure::Timeout => Outcome::UpstreamTimeout,
            UpstreamFailure::Status { status: 429, .. } => Outcome::UpstreamRateLimited,
            UpstreamFailure::Status { .. } => Outcome::UpstreamError,
            UpstreamFailure::BadBody(_)
            | UpstreamFailure::BrokeOff
            | UpstreamFailure::Encoding(_) => Outcome::UpstreamBadBody,
        }
    }
}

/// A forwarded request's result and the upstream's own request id.
pub(crate) struct Forwarded {
    /// The answer, or how it failed.
    pub(crate) result: Result<Answer, UpstreamFailure>,
    /// The upstream's `x-request-id`, passed on.
    pub(crate) upstream_id: Option<HeaderValue>,
}

/// Sends `ask` to `model` and reads its answer.
pub(crate) async fn forward(up: &Upstream, model: &Model, ask: Ask) -> Forwarded {
    let failed = |f| Forwarded {
        result: Err(f),
        upstream_id: None,
    };
    let (resp, sent_at) = match send(up, model, &ask).await {
        Ok(r) => r,
        Err(f) => return failed(f),
    };
    let status = resp.status();
    let upstream_id = resp.headers().get(request_id::HEADER).cloned();
    up.metrics.inc(
        "tollgate_upstream_responses_total",
        &[("model", &model.name), ("status", status.as_str())],
    );
    let result = if !status.is_success() {
        Err(refused_upstream(up, resp).await)
    } else {
        read_answer(up, model, &ask, resp, sent_at).await
    };
    Forwarded {
        result,
        upstream_id,
    }
}

/// Sends the request; its answer's headers and when it was sent.
async fn send(
    up: &Upstream,
    model: &Model,
    ask: &Ask,
) -> Result<(reqwest::Response, tokio::time::Instant), UpstreamFailure> {
    let t = up.timeouts;
    let mut req = up
        .http
        .post(model.url(ask.endpoint).clone())
        .header(header::CONTENT_TYPE, "application/json")
        .body(ask.payload.clone());
    if let Some(key) = &model.api_key {
        req = req.bearer_auth(key);
    }
    if !ask.stream {
        req = req.timeout(t.total.min(ask.within));
    }
    let sent_at = tokio::time::Instant::now();
    let started = Instant::now();
    let sent = if ask.stream {
        match tokio::time::timeout(t.first_byte.min(t.total).min(ask.within), req.send()).await {
            Ok(r) => r,
            Err(_) => return Err(no_answer(up, model, UpstreamFailure::Timeout)),
        }
    } else {
        req.send().await
    };
    up.metrics.observe(
        "tollgate_upstream_latency_seconds",
        &[("model", &model.name)],
        started.elapsed().as_secs_f64(),
    );
    match sent {
        Ok(r) => Ok((r, sent_at)),
        // A connection that could not be made in time never reached the
        // upstream: unreachable, not timed out, and nothing used.
        Err(e) if e.is_timeout() && !e.is_connect() => {
            Err(no_answer(up, model, UpstreamFailure::Timeout))
        }
        Err(e) => {
            tracing::warn!(model = %model.name, provider = %model.provider, error = %e, "upstream unreachable");
            Err(no_answer(up, model, UpstreamFailure::Unreachable))
        }
    }
}

/// Counts an upstream that gave no answer (status 0).
fn no_answer(up: &Upstream, model: &Model, f: UpstreamFailure) -> UpstreamFailure {
    up.metrics.inc(
        "tollgate_upstream_responses_total",
        &[("model", &model.name), ("status", "0")],
    );
    if matches!(f, UpstreamFailure::Timeout) {
        tracing::warn!(model = %model.name, provider = %model.provider, outcome = Outcome::UpstreamTimeout.as_str(), "upstream did not answer in time");
    }
    f
}

/// Reads a success: a stream's headers checked, or a whole body decoded
/// and charged.
async fn read_answer(
    up: &Upstream,
    model: &Model,
    ask: &Ask,
    resp: reqwest::Response,
    sent: tokio::time::Instant,
) -> Result<Answer, UpstreamFailure> {
    if let Some(enc) = unknown_encoding(resp.headers()) {
        tracing::warn!(model = %model.name, encoding = %enc, "upstream answer in an encoding the gateway cannot decode");
        return Err(UpstreamFailure::Encoding(enc));
    }
    if ask.stream {
        if !is_event_stream(resp.headers()) {
            tracing::warn!(model = %model.name, "upstream answered a stream request with something else than an event stream");
            return Err(UpstreamFailure::BadBody("is not an event stream"));
        }
        let body = Box::pin(resp.bytes_stream());
        return Ok(Answer::Stream { body, sent });
    }
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) if e.is_timeout() => {
            return Err(no_answer(up, model, UpstreamFailure::Timeout));
        }
        Err(e) if e.is_decode() && !broke_off(&e) => {
            tracing::warn!(model = %model.name, error = %e, "upstream body could not be decoded");
            return Err(UpstreamFailure::BadBody("could not be decoded"));
        }
        Err(e) => {
            tracing::warn!(model = %model.name, error = %e, "upstream body broke off");
            return Err(UpstreamFailure::BrokeOff);
        }
    };
    // The usual answer reports its usage: read it without building the
    // document. Only one without is parsed whole, to count its output.
    let (usage, counted) = match usage_in(&bytes) {
        Some(u) => (Some(u), 0),
        None => match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) if v.is_object() => (None, output_tokens(model.tokenizer, &v, Part::Whole)),
            _ => {
                tracing::warn!(model = %model.name, bytes = bytes.len(), "upstream 200 answer is not a JSON object");
                return Err(UpstreamFailure::BadBody("is not JSON"));
            }
        },
    };
    let charge = Charge::of(usage, counted, ask.input, ask.cap);
    Ok(Answer::Whole { bytes, charge })
}

/// Whether a body error is the connection breaking off (the decoder
/// passes it on as its own error) rather than bytes that do not decode.
fn broke_off(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<hyper::Error>().is_some_and(|h| {
            h.is_incomplete_message() || h.is_body_write_aborted() || h.is_closed()
        }) || s.downcast_ref::<std::io::Error>().is_some()
        {
            return true;
        }
        source = s.source();
    }
    false
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

/// Reads an upstream error status: its body within the idle timeout, the
/// pause it asks for and the back-off a 429 means.
async fn refused_upstream(up: &Upstream, resp: reqwest::Response) -> UpstreamFailure {
    let status = resp.status().as_u16();
    let asked = asked_pause(resp.headers());
    let backoff = upstream_backoff(resp.headers());
    let body = error_body(resp, up.timeouts.idle).await;
    UpstreamFailure::Status {
        status,
        body,
        backoff,
        asked,
    }
}

/// What an upstream error status asks of every instance, once the
/// request's own reservations are settled: a 429 slows the provider bucket;
/// a 429 or 503 that says how long to wait (`Retry-After`) also pauses the
/// model that long.
pub(crate) async fn slow_down(up: &Upstream, model: &Model, f: &UpstreamFailure) {
    let UpstreamFailure::Status {
        status,
        backoff,
        asked,
        ..
    } = *f
    else {
        return;
    };
    if status == 429 {
        penalize(model, backoff).await;
    }
    if let (429 | 503, Some(d)) = (status, asked) {
        model
            .hold
            .start(&up.store, up.store_timeout, status, d)
            .await;
        tracing::info!(model = %model.name, status, pause_ms = d.as_millis() as u64, "upstream asked to wait: model paused on every instance");
    }
}

/// Makes the provider bucket back off for `d` after an upstream 429: charges
/// every limited token dimension with `d` worth of its rate (at most the
/// bucket's capacity), plus requests for an RPM-only bucket, so every
/// instance sharing the store waits. When tiers share the model, each
/// tier's lane is charged `d` worth of its own rate, so every tier backs off.
pub async fn penalize(model: &Model, d: Duration) {
    let shares = model.limiter.lane_shares();
    let lanes: Vec<(u8, f64)> = if shares.is_empty() {
        vec![(0, 1.0)]
    } else {
        (0..).zip(shares).collect()
    };
    for (class, part) in lanes {
        charge_backoff(&model.limiter, d, class, part).await;
    }
    tracing::info!(model = %model.name, backoff_ms = d.as_millis() as u64, "upstream 429: provider bucket backs off");
}

/// Charges class `class`, whose lane is `part` of the bucket, `d` worth of
/// its rate.
async fn charge_backoff(limiter: &RateLimiter, d: Duration, class: u8, part: f64) {
    let policy = limiter.policy();
    let secs = d.as_secs_f64().min(policy.tau * 0.99);
    let units = |dim: Dimension| {
        let inc = policy.increment[dim.index()];
        if inc > 0.0 {
            (secs / inc * part).floor() as u64
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
    let opts = AcquireOptions::class(class);
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
}

/// The body sent to `model`: the client's own bytes when nothing has to
/// change (the usual non-streamed call), else the body with the model's
/// upstream name and, for a chat stream, the usage chunk asked for (the
/// Responses API reports usage in its final event by itself).
pub(crate) fn payload(req: &super::parse::Parsed, model: &Model) -> Bytes {
    let gateway_fields = gateway_only(&req.body);
    if !req.stream && model.upstream_name == req.model && !gateway_fields {
        return req.bytes.clone();
    }
    let mut body = req.body.clone();
    body.insert("model".into(), Value::String(model.upstream_name.clone()));
    if gateway_fields {
        strip_gateway_fields(&mut body);
    }
    if req.stream && req.endpoint == Endpoint::Chat {
        let opts = body
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Default::default()));
        if opts.is_null() {
            *opts = Value::Object(Default::default());
        }
        if let Some(o) = opts.as_object_mut() {
            o.insert("include_usage".into(), Value::Bool(true));
        }
    }
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// Keys of a request's `metadata` that are the gateway's (route hints) and
/// never go upstream begin with this.
pub(crate) const GATEWAY_METADATA_PREFIX: &str = "tollgate_";

/// Whether `body`'s `metadata` holds gateway-only keys.
fn gateway_only(body: &serde_json::Map<String, Value>) -> bool {
    body.get("metadata")
        .and_then(Value::as_object)
        .is_some_and(|m| m.keys().any(|k| k.starts_with(GATEWAY_METADATA_PREFIX)))
}

/// Removes the gateway-only keys of `metadata`, and `metadata` itself when
/// nothing else was in it.
fn strip_gateway_fields(body: &mut serde_json::Map<String, Value>) {
    let Some(Value::Object(m)) = body.get_mut("metadata") else {
        return;
    };
    m.retain(|k, _| !k.starts_with(GATEWAY_METADATA_PREFIX));
    if m.is_empty() {
        body.remove("metadata");
    }
}
