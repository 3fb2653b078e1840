//! The request path of `/v1/chat/completions`, `/v1/embeddings` and
//! `/v1/responses`: auth, body and checks, admission, forwarding (streamed
//! or not), settlement, headers.
//!
//! An answer is passed on as the upstream sent it only when it is what it
//! claims: a 200 body is decoded (gzip, deflate, brotli) and must be JSON,
//! else the client gets a 502 `upstream_bad_body`; a stream is relayed by
//! [`stream`]. Whatever happens after the request reached the upstream, it
//! is charged by the rule of [`usage`] and counted once with its outcome.

mod body;
mod forward;
mod headers;
mod hold;
mod stream;
mod tally;
mod usage;
mod validate;

pub(crate) use body::read as read_body;
pub use forward::penalize;
pub use headers::{format_reset, ratelimit_headers, upstream_backoff, BUCKET_HEADER};
pub use hold::{asked_pause, Hold, Paused, MAX_HOLD};
pub use stream::{EventScanner, SseRelay, Timeouts};
pub use tally::{Stage, Tally};
pub use usage::{output_cap, output_text, output_tokens, usage_in, usage_of, Charge, Part};
pub use validate::{check, Checked, Endpoint};

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::admission::Admission;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::outcome::Outcome;
use crate::registry::Client;
use crate::request_id::RequestId;
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
    // Dropped unrecorded (the client left before the answer), it counts the
    // request as `client_gone`; a stream takes it over.
    let mut tally = Tally::new(gw.clone(), client.clone());
    match serve(
        &gw, &client, &headers, body, endpoint, request_id, &mut tally,
    )
    .await
    {
        Ok(r) => {
            tally.record(Outcome::Ok);
            r
        }
        Err((e, outcome)) => {
            tally.record(outcome);
            e.into_response()
        }
    }
}

type Failure = (ApiError, Outcome);

async fn serve(
    gw: &Arc<Gateway>,
    client: &Arc<Client>,
    headers: &HeaderMap,
    body: Body,
    endpoint: Endpoint,
    request_id: RequestId,
    tally: &mut Tally,
) -> Result<Response, Failure> {
    let limit = gw.config.server.max_body_bytes;
    let timeout = Duration::from_secs_f64(gw.config.server.body_read_timeout_secs);
    let bytes = body::read(headers, body, limit, timeout)
        .await
        .map_err(|e| (e, Outcome::BadRequest))?;
    let checked = check(&gw.models, endpoint, &bytes).map_err(|e| (e, Outcome::BadRequest))?;
    tally.model(&checked.model.name);
    if gw.config.server.log_prompts {
        tracing::debug!(client = %client.id, body = %checked.body, "request");
    }
    let cap = output_cap(
        endpoint,
        &checked.body,
        checked.model.context_window,
        checked.input,
        checked.output,
    );
    let Checked {
        model,
        upstream_body,
        input,
        output,
        stream,
        client_wants_usage,
        ..
    } = checked;
    let started = Instant::now();
    // Admission runs as a task of its own: a client that leaves while its
    // reservations are on their way to the store drops this future, not the
    // admission, which then finishes and (dropped unused) gives back
    // everything it took, the budget's hold included.
    let admitting = tokio::spawn({
        let (gw, client, model) = (gw.clone(), client.clone(), model.clone());
        async move { Admission::admit(&gw, &client, &model, input, output).await }
    });
    let (admitted, paused) =
        tokio::join!(admitting, model.hold.check(&gw.store, store_timeout(gw)));
    let admitted = admitted.unwrap_or_else(|e| {
        tracing::error!(error = %e, "admission task failed");
        Err(ApiError::internal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the gateway could not admit this request; try again",
        ))
    });
    let mut admission = match admitted {
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
    tally.stage(Stage::Queued);
    // The headers describe the client's bucket right after this request was
    // let in, known from its permit: no store round trip.
    let rl_headers = admission
        .client_status
        .as_deref()
        .map(ratelimit_headers)
        .unwrap_or_default();
    // A pause asked by the upstream, seen at admission or begun while this
    // request waited for its slot, is waited out when the tier may wait that
    // long, else refused (dropping the admission gives everything back).
    let refuse = |e: Failure| {
        let (mut e, outcome) = e;
        e.headers.extend(rl_headers.clone());
        (e, outcome)
    };
    wait_out_pause(gw, client, &model, started, paused)
        .await
        .map_err(refuse)?;
    admission.wait_for_slot().await;
    if admission.wait > Duration::ZERO {
        let paused = model.hold.check(&gw.store, store_timeout(gw)).await;
        wait_out_pause(gw, client, &model, started, paused)
            .await
            .map_err(refuse)?;
    }
    tally.stage(Stage::Upstream);
    let ask = forward::Ask {
        endpoint,
        payload: upstream_body,
        stream,
        // Only chat streams carry a usage chunk that was asked for.
        strip_usage: endpoint == Endpoint::Chat && !client_wants_usage,
        cap,
    };
    match forward::forward(gw, &model, admission, ask, tally).await {
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

/// How long a store call of the request path may wait (`store.timeout_ms`).
fn store_timeout(gw: &Gateway) -> Duration {
    Duration::from_millis(gw.config.store.timeout_ms)
}

/// Waits while `model` is paused (`paused`, then as the store says), if the
/// client's tier may wait that long since `started`; else the refusal.
async fn wait_out_pause(
    gw: &Gateway,
    client: &Client,
    model: &Model,
    started: Instant,
    mut paused: Option<Paused>,
) -> Result<(), Failure> {
    while let Some(p) = paused {
        let may_wait = client.tier.max_wait.saturating_sub(started.elapsed());
        if p.left > may_wait {
            let outcome = if p.status == 503 {
                Outcome::UpstreamError
            } else {
                Outcome::UpstreamRateLimited
            };
            return Err((hold::refusal(model, p), outcome));
        }
        tokio::time::sleep(p.left).await;
        paused = model.hold.check(&gw.store, store_timeout(gw)).await;
    }
    Ok(())
}

/// The client bucket's headers read from the store (for refusals, after the
/// refused request's reservations were released).
async fn client_headers(client: &Client) -> HeaderMap {
    match client.limiter.status().await {
        Ok(s) => ratelimit_headers(&s.dimensions),
        Err(_) => HeaderMap::new(),
    }
}
