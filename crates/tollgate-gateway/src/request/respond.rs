//! The HTTP layer's answers: every typed outcome of the request path turned
//! into the client's response — OpenAI's error shape with the status, code,
//! message and headers (rate-limit headers, `Retry-After`) each calls for.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tollgate::Error as LimitError;

use super::admit::{Bucket, Refusal, StoreKind};
use super::auth::AuthError;
use super::forward::{Upstream, UpstreamFailure};
use super::route::RouteError;
use super::stream::SseRelay;
use super::{ratelimit_headers, Failure, Invalid, Reply, BUCKET_HEADER};
use crate::budget::{BudgetError, Period};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::pause::Paused;
use crate::registry::Client;

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        let mut err = ApiError::invalid(e.code, e.param, e.message);
        err.status = e.status;
        err
    }
}

/// Headers an upstream's answer ends up with: its type, up to eight of
/// the client bucket's, the three of `Trail::mark`, the request's and the
/// upstream's ids.
const ANSWER_HEADERS: usize = 16;

/// A 200 JSON body.
pub(super) fn json(bytes: bytes::Bytes) -> Response {
    let mut r = Response::new(Body::from(bytes));
    // Room for the headers the way back adds (rate limits, trail, ids), so
    // that the map is not grown and rehashed on the way.
    r.headers_mut().reserve(ANSWER_HEADERS);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A relayed event stream.
pub(super) fn event_stream(relay: SseRelay) -> Response {
    let mut r = Response::new(Body::from_stream(relay));
    r.headers_mut().reserve(ANSWER_HEADERS);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The answer to a request refused before its client was known, counted
/// with empty labels.
pub(super) fn unknown_client(metrics: &Metrics, f: Failure) -> Response {
    let outcome = f.outcome();
    metrics.inc(
        "tollgate_requests_total",
        &[
            ("client", ""),
            ("tier", ""),
            ("model", ""),
            ("outcome", outcome.as_str()),
        ],
    );
    error(None, &f, None).into_response()
}

/// The answer to a failure of a request of `client` (on `model`, once it
/// was routed).
pub(super) fn failure(client: &Client, model: Option<&Model>, up: &Upstream, f: Failure) -> Reply {
    Reply {
        error: error(model.map(|m| (client, m)), &f, Some(up)),
        outcome: f.outcome(),
    }
}

/// The answer to an admission's refusal: a bucket's refusal carries that
/// bucket's headers, any other 429 the client bucket's (read now, after the
/// refused request's reservations were given back).
pub(super) async fn refusal(client: &Client, model: &Model, r: Refusal) -> Reply {
    let outcome = r.outcome();
    let mut error = refused(client, model, r);
    if error.status == StatusCode::TOO_MANY_REQUESTS && error.headers.is_empty() {
        if let Ok(s) = client.limiter().status().await {
            error.headers = Box::new(ratelimit_headers(&s.dimensions));
        }
    }
    Reply { error, outcome }
}

/// 401 for a missing or unknown key.
pub(super) fn unauthorized(e: AuthError) -> ApiError {
    match e {
        AuthError::Missing => ApiError::unauthorized(
            "You didn't provide an API key. Send it as `Authorization: Bearer YOUR_KEY`.",
        ),
        AuthError::Unknown => ApiError::unauthorized(
            "Incorrect API key provided. Check the key your platform gave you.",
        ),
    }
}

fn error(at: Option<(&Client, &Model)>, f: &Failure, up: Option<&Upstream>) -> ApiError {
    match (f, at) {
        (Failure::Unauthorized(e), _) => unauthorized(*e),
        (Failure::Invalid(e), _) => e.clone().into(),
        (Failure::Route(e), _) => route_error(e),
        (Failure::Paused(p), Some((_, m))) => paused(m, *p),
        (Failure::Upstream(u), Some((_, m))) => upstream(m, u, up),
        _ => ApiError::internal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the gateway could not admit this request; try again",
        ),
    }
}

fn route_error(e: &RouteError) -> ApiError {
    match e {
        RouteError::NotFound(name) => {
            let mut e = ApiError::invalid(
                "model_not_found",
                "model",
                format!("The model {name:?} does not exist on this gateway; GET /v1/models lists the models you can use."),
            );
            e.status = StatusCode::NOT_FOUND;
            e
        }
        RouteError::WrongKind { name, kind } => ApiError::invalid(
            "model_not_supported",
            "model",
            format!("The model {name:?} is a {kind:?} model and cannot serve this endpoint.")
                .to_lowercase(),
        ),
        RouteError::NoRule {
            route,
            tier,
            task,
            prompt_tokens,
            hint,
        } => {
            let task = task.map_or("not read", |t| t.as_str());
            let hint = hint.as_deref().unwrap_or("none");
            ApiError::invalid(
                "no_route",
                "model",
                format!("No rule of route {route:?} matches this request (tier {tier:?}, task {task}, about {prompt_tokens} prompt tokens, hint {hint:?}); name a model, or ask the operator for a rule that matches (GET /admin/routes lists them)."),
            )
        }
    }
}

/// The answer to a request that came while its model is paused.
fn paused(model: &Model, p: Paused) -> ApiError {
    let message = format!(
        "The upstream provider {:?} asked to wait before more requests to {:?}; retry after {} s.",
        model.provider,
        model.name,
        p.left.as_secs_f64().ceil()
    );
    let mut e = if p.status == 503 {
        ApiError::internal(StatusCode::SERVICE_UNAVAILABLE, "upstream_paused", message)
    } else {
        ApiError::rate_limited("rate_limit_error", "upstream_paused", message, p.left)
    };
    e.retry_after = Some(p.left);
    e
}

/// The answer to an admission's refusal.
fn refused(client: &Client, model: &Model, r: Refusal) -> ApiError {
    let (bucket, error, status, (dim, limit)) = match r {
        Refusal::Bucket(b) => {
            let b = *b;
            (b.bucket, b.error, b.status, b.culprit)
        }
        Refusal::Budget(e) => return budget_refused(e),
        Refusal::StoreUnavailable(kind) => return store_unavailable(kind),
    };
    let whose = match bucket {
        Bucket::Client => format!("client {:?} (tier {:?})", client.id, client.tier.name),
        Bucket::Model => format!(
            "model {:?} (shared provider limit, priority class {})",
            model.name, client.tier.class
        ),
        Bucket::Org => format!(
            "organisation {:?} (of client {:?})",
            client.org.as_ref().map_or("", |o| o.id.as_str()),
            client.id
        ),
        Bucket::Key => format!("this API key of client {:?}", client.id),
    };
    let mut err = match error {
        LimitError::RateLimited { retry_after, max_wait, .. } => ApiError::rate_limited(
            "rate_limit_error",
            &format!("{}_{}_exceeded", bucket.name(), dim.short_name()),
            format!(
                "Rate limit reached for {whose} on {dim} (limit {limit} per minute): the next slot is {:.3} s away, longer than the tier's maximum wait of {:.3} s. Retry after the time in the Retry-After header.",
                retry_after.as_secs_f64(),
                max_wait.as_secs_f64()
            ),
            retry_after,
        ),
        LimitError::QueueFull { retry_after, depth, .. } => ApiError::rate_limited(
            "rate_limit_error",
            "queue_full",
            format!("The queue for {whose} is full ({depth} requests waiting). Retry after the time in the Retry-After header."),
            retry_after,
        ),
        LimitError::TooLargeForShare { needed, capacity, dimension, share, .. } => ApiError::invalid(
            "model_request_too_large_for_share",
            "max_tokens",
            format!(
                "Request too large for tier {tier:?}'s share of model {name:?}: it needs {needed} {unit} but the tier's lane holds at most {capacity} ({pct:.1}% of the model's limits) and no other tier's lane could lend it room now. Raise tiers.{tier}.floor or tiers.{tier}.weight (or providers.{provider}.models.{name:?}.floors.{tier}), or the model's burst; or lower max_tokens or shorten the prompt.",
                tier = client.tier.name,
                name = model.name,
                provider = model.provider,
                unit = dimension.unit(),
                pct = share * 100.0,
            ),
        ),
        LimitError::TooLarge(inner) => ApiError::invalid(
            &format!("{}_request_too_large", bucket.name()),
            "max_tokens",
            format!("Request too large for {whose}: {inner}. Lower max_tokens or shorten the prompt."),
        ),
        _ => return store_unavailable(StoreKind::Limits),
    };
    if let Some(status) = status {
        let mut h = ratelimit_headers(&status.dimensions);
        h.insert(BUCKET_HEADER, HeaderValue::from_static(bucket.name()));
        err.headers = Box::new(h);
    }
    err
}

fn store_unavailable(kind: StoreKind) -> ApiError {
    let message = match kind {
        StoreKind::Limits => "The rate-limit store is unavailable; retry shortly.",
        StoreKind::Spend => "The spend store is unavailable; retry shortly.",
    };
    ApiError::internal(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        message,
    )
}

fn budget_refused(e: BudgetError) -> ApiError {
    let period = Period::now();
    let (code, retry_after) = match e {
        BudgetError::Daily { .. } => ("daily_budget_exceeded", period.until_tomorrow()),
        BudgetError::Monthly { .. } => ("monthly_budget_exceeded", period.until_next_month()),
        BudgetError::Store(_) => return store_unavailable(StoreKind::Spend),
    };
    let level = match &e {
        BudgetError::Daily { level, .. } | BudgetError::Monthly { level, .. } => level.name(),
        BudgetError::Store(_) => "client",
    };
    let mut err = ApiError::rate_limited("insufficient_quota", code, e.to_string(), retry_after);
    err.headers.insert(
        super::headers::BUDGET_LEVEL_HEADER,
        HeaderValue::from_static(level),
    );
    err
}

/// The answer to an upstream's failure.
fn upstream(model: &Model, f: &UpstreamFailure, up: Option<&Upstream>) -> ApiError {
    let provider = &model.provider;
    match f {
        UpstreamFailure::Unreachable => ApiError::internal(
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            format!("The upstream provider {provider:?} could not be reached; retry later."),
        ),
        UpstreamFailure::Timeout => {
            let (first_byte, total) = up
                .map(|u| (u.timeouts.first_byte, u.timeouts.total))
                .unwrap_or_default();
            ApiError::internal(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!(
                    "The upstream provider {provider:?} did not answer in time (first byte of a stream within {first_byte:?}, the whole answer within {total:?}); retry."
                ),
            )
        }
        UpstreamFailure::Status {
            status,
            body,
            backoff,
            asked,
        } => {
            let mut err = upstream_error(*status, body, provider);
            if *status == 429 {
                err.retry_after = Some(*backoff);
            }
            if let (429 | 503, Some(d)) = (*status, asked) {
                err.retry_after = Some(*d);
            }
            err
        }
        UpstreamFailure::BadBody(what) => bad_body(provider, what),
        UpstreamFailure::BrokeOff => bad_body(provider, "broke off before its end"),
        UpstreamFailure::Encoding(enc) => bad_body(
            provider,
            &format!("was encoded as {enc:?}, which this gateway cannot decode"),
        ),
    }
}

/// 502 `upstream_bad_body`: the upstream said 200 but its body `what`.
fn bad_body(provider: &str, what: &str) -> ApiError {
    ApiError::internal(
        StatusCode::BAD_GATEWAY,
        "upstream_bad_body",
        format!("The upstream provider {provider:?} answered 200 but its body {what}; retry."),
    )
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
