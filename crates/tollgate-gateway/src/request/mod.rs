//! The request path of `/v1/chat/completions`, `/v1/embeddings` and
//! `/v1/responses`, one way through. The modules follow the request:
//!
//! 1. [`auth`]: the bearer key → client → tier;
//! 2. [`parse`]: the body read ([`body`]) and checked;
//! 3. [`route`]: the ordered, non-empty list of candidate models (the
//!    model named and its fallbacks, or a route's rule's models);
//! 4. [`estimate`]: the tokens it is admitted on, on the candidate;
//! 5. [`admit`]: the client bucket, the budget and the provider bucket
//!    reserved, or a typed refusal;
//! 6. [`wait`]: for the slot, and out of an upstream's pause;
//! 7. [`forward`]: sent upstream, its answer read, or a typed failure; a
//!    failure before the first byte (connection error, timeout, 5xx, 429)
//!    goes back to step 4 on the next candidate, within one attempt budget
//!    and one deadline; so does a candidate whose context window cannot
//!    hold the request (step 4), whose provider bucket cannot start it
//!    within the tier's wait, or whose price the budget cannot take (step
//!    5; a dearer candidate after it is then skipped unasked);
//! 8. [`stream`]: a streamed answer relayed ([`events`] read on the way);
//! 9. [`settle`]: the actual usage settled, exactly once, and recorded.
//!
//! Each step takes the few things it needs and returns a typed outcome;
//! this module, the HTTP layer, alone turns outcomes into responses
//! ([`respond`]) and counts each request once ([`tally`]).

pub(crate) mod admit;
pub(crate) mod auth;
pub(crate) mod body;
pub(crate) mod estimate;
pub(crate) mod events;
pub(crate) mod forward;
pub(crate) mod headers;
mod joint;
pub(crate) mod parse;
mod respond;
pub(crate) mod route;
pub(crate) mod settle;
pub(crate) mod stream;
pub(crate) mod tally;
pub(crate) mod usage;
pub(crate) mod wait;

#[cfg(test)]
mod fixture;
#[cfg(test)]
mod sizes;

pub(crate) use headers::{ratelimit_headers, BUCKET_HEADER};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};

use self::estimate::Estimate;
use self::forward::{Answer, Ask, Upstream, UpstreamFailure};
use self::parse::Parsed;
use self::route::RouteError;
use self::settle::{Admission, Books, RowDraft};
use self::tally::{Stage, Tally};
use crate::model::{Endpoint, Model};
use crate::outcome::Outcome;
use crate::pause::Paused;
use crate::registry::{Client, Registry};
use crate::request_id::RequestId;

/// A request the gateway refuses as it is: a 4xx about one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    /// The status (400 unless said otherwise).
    pub(crate) status: StatusCode,
    /// The machine-readable code.
    pub(crate) code: &'static str,
    /// The field at fault.
    pub(crate) param: &'static str,
    /// What is wrong and what to do.
    pub(crate) message: String,
}

impl Invalid {
    /// 400 about `param`.
    pub(crate) fn new(code: &'static str, param: &'static str, message: impl Into<String>) -> Self {
        Invalid {
            status: StatusCode::BAD_REQUEST,
            code,
            param,
            message: message.into(),
        }
    }

    /// The same with another status.
    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

/// Why a request was not answered by an upstream.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No or unknown API key.
    Unauthorized(auth::AuthError),
    /// The request itself is wrong.
    Invalid(Invalid),
    /// It names no model that can serve it.
    Route(RouteError),
    /// Its model is paused longer than its tier may wait.
    Paused(Paused),
    /// The upstream failed it.
    Upstream(UpstreamFailure),
    /// The gateway itself failed.
    Internal,
}

impl Failure {
    /// How the request ended.
    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            Failure::Unauthorized(_) => Outcome::Unauthorized,
            Failure::Invalid(_) | Failure::Route(_) => Outcome::BadRequest,
            Failure::Paused(p) if p.status == 503 => Outcome::UpstreamError,
            Failure::Paused(_) => Outcome::UpstreamRateLimited,
            Failure::Upstream(f) => f.outcome(),
            Failure::Internal => Outcome::Internal,
        }
    }
}

impl From<Invalid> for Failure {
    fn from(e: Invalid) -> Self {
        Failure::Invalid(e)
    }
}

impl From<RouteError> for Failure {
    fn from(e: RouteError) -> Self {
        Failure::Route(e)
    }
}

/// Everything the request path needs of the gateway.
#[derive(Debug)]
pub(crate) struct Pipeline {
    /// Spend, metrics, ledger.
    pub(crate) books: Arc<Books>,
    /// The upstream HTTP client, its timeouts, the pause store.
    pub(crate) upstream: Upstream,
    /// Models by the name clients use.
    pub(crate) models: Arc<BTreeMap<String, Arc<Model>>>,
    /// `server.max_body_bytes`.
    pub(crate) body_limit: usize,
    /// `server.body_read_timeout_secs`.
    pub(crate) body_timeout: Duration,
    /// `server.log_prompts`.
    pub(crate) log_prompts: bool,
    /// `server.max_attempts` and `server.request_deadline_secs`.
    pub(crate) attempts: Attempts,
    /// `[classifier]`: a prompt's task class, for the routes.
    pub(crate) classifier: crate::routing::Classifier,
}

/// How many upstream calls one request may make, and how long it may take
/// until its answer's first byte, whatever the mix of fallbacks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempts {
    /// At most this many upstream calls.
    pub(crate) max: u32,
    /// No attempt starts, and none waits for its answer, past this long
    /// after the request was routed.
    pub(crate) deadline: Duration,
}

/// Serves one proxied request end to end.
pub(crate) async fn handle(
    path: &Pipeline,
    registry: Arc<Registry>,
    headers: HeaderMap,
    body: Body,
    endpoint: Endpoint,
    request_id: RequestId,
) -> Response {
    let metrics = &path.books.metrics;
    let (client, key) = match auth::authenticate_key(&registry, &headers) {
        Ok(c) => c,
        Err(e) => return respond::unknown_client(metrics, Failure::Unauthorized(e)),
    };
    if let Err(e) = body::check_media_type(&headers) {
        return respond::unknown_client(metrics, e.into());
    }
    // Dropped unrecorded (the client left before the answer), it counts the
    // request as `client_gone`; a stream takes it over.
    let mut tally = Tally::new(metrics.clone(), client.clone());
    let req = Req {
        path,
        registry: &registry,
        client: &client,
        key: key.as_ref(),
        headers: &headers,
        endpoint,
        request_id,
    };
    match serve(&req, body, &mut tally).await {
        Ok(r) => {
            tally.record(Outcome::Ok);
            r
        }
        Err(reply) => {
            tally.record(reply.outcome);
            reply.error.into_response()
        }
    }
}

/// The client of a request to the client API that is not proxied (`GET
/// /v1/models`), or the error to answer.
pub(crate) fn client_of(
    registry: &Registry,
    headers: &HeaderMap,
) -> Result<Arc<Client>, crate::error::ApiError> {
    auth::authenticate(registry, headers).map_err(respond::unauthorized)
}

/// `make()`'s future in a box of its own, the box allocated first so that
/// the future can be written straight into it instead of being made on the
/// stack and copied over: the request path's futures are kilobytes, and
/// each copy costs their size (docs/BENCHMARKS.md).
pub(crate) fn boxed<F: std::future::Future>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    let room = Box::new_uninit();
    Box::into_pin(Box::write(room, make()))
}

/// One request as it goes through.
struct Req<'a> {
    path: &'a Pipeline,
    registry: &'a Registry,
    client: &'a Arc<Client>,
    /// The key, when the admin API issued it.
    key: Option<&'a Arc<crate::registry::Key>>,
    headers: &'a HeaderMap,
    endpoint: Endpoint,
    request_id: RequestId,
}

/// A failure as answered: the client's error and the outcome counted.
struct Reply {
    error: crate::error::ApiError,
    outcome: Outcome,
}

async fn serve(req: &Req<'_>, body: Body, tally: &mut Tally) -> Result<Response, Reply> {
    let (parsed, routed) = prepare(req, body, tally)
        .await
        .map_err(|f| respond::failure(req.client, None, &req.path.upstream, f))?;
    // The request reached admission: its ledger row, written once every
    // attempt has settled (see `settle::RowDraft`).
    // The baseline is the model named, or the route's first choice: what
    // the request would have cost without a downgrade or a fallback.
    let draft = req.path.books.draft(
        req.request_id.0,
        req.client,
        (&parsed.model, &routed.route),
        req.path
            .models
            .get(&parsed.model)
            .or(Some(routed.candidates.first())),
    );
    if let (Some(d), Some(k)) = (&draft, req.key) {
        d.keyed(&k.id);
    }
    let candidates = routed.candidates;
    let mut trail = Trail {
        route: routed.route,
        model: candidates.first().name.clone(),
        attempts: 0,
        draft,
        budget_room: None,
    };
    let started = Instant::now();
    let deadline = started + req.path.attempts.deadline;
    let mut last = None;
    for model in candidates.iter() {
        if trail.attempts >= req.path.attempts.max || Instant::now() >= deadline {
            break;
        }
        let before = std::mem::replace(&mut trail.model, model.name.clone());
        tally.model(&model.name);
        match attempt(req, &parsed, model, started, deadline, tally, &mut trail).await {
            Ok(mut r) => {
                trail.mark(r.headers_mut());
                return Ok(r);
            }
            Err(Attempted::Final(reply)) => {
                last = Some(reply);
                break;
            }
            Err(Attempted::Next(reply)) => last = Some(reply),
            Err(Attempted::Skipped) => {
                tally.model(&before);
                trail.model = before;
            }
        }
    }
    // The first candidate is always tried: `last` is set.
    let mut reply = last.unwrap_or_else(|| {
        respond::failure(req.client, None, &req.path.upstream, Failure::Internal)
    });
    trail.mark(&mut reply.error.headers);
    if let Some(d) = &trail.draft {
        d.ended(reply.outcome, Some(&reply.error.code));
    }
    Err(reply)
}

/// What the answer says about how it was served.
struct Trail {
    /// The model or route the request named.
    route: String,
    /// The model that answered, or the last one tried.
    model: String,
    /// Upstream calls made.
    attempts: u32,
    /// The request's ledger row, which every attempt adds to.
    draft: Option<Arc<RowDraft>>,
    /// What the client's budget had left (nano-USD) when it refused an
    /// estimate: a later candidate is tried only if it costs no more.
    budget_room: Option<i64>,
}

/// `x-tollgate-model`: the model that answered (or the last one tried).
pub(crate) const MODEL_HEADER: HeaderName = HeaderName::from_static("x-tollgate-model");
/// `x-tollgate-route`: the model or route the request named.
pub(crate) const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-tollgate-route");
/// `x-tollgate-attempts`: the upstream calls the request made.
pub(crate) const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-tollgate-attempts");

impl Trail {
    fn mark(&self, h: &mut HeaderMap) {
        use axum::http::HeaderValue;
        for (name, value) in [(MODEL_HEADER, &self.model), (ROUTE_HEADER, &self.route)] {
            if let Ok(v) = HeaderValue::from_str(value) {
                h.insert(name, v);
            }
        }
        h.insert(ATTEMPTS_HEADER, HeaderValue::from(self.attempts));
    }
}

/// How an attempt on one candidate failed.
enum Attempted {
    /// Nothing reached the client and the next candidate may serve it
    /// (connection error, timeout, 5xx, 429, a pause, a prompt this model
    /// cannot take).
    Next(Reply),
    /// The answer to give: another candidate would fail it the same way.
    Final(Reply),
    /// Not tried: its estimate costs more than the budget was seen to have
    /// left (the answer, if no candidate is left, is that refusal's).
    Skipped,
}

/// One attempt on `model`: estimate, admit, wait, forward. Each attempt
/// settles or gives back its own reservations before the next begins.
async fn attempt(
    req: &Req<'_>,
    parsed: &Parsed,
    model: &Arc<Model>,
    started: Instant,
    deadline: Instant,
    tally: &mut Tally,
    trail: &mut Trail,
) -> Result<Response, Attempted> {
    let up = &req.path.upstream;
    let estimate = estimate::estimate(parsed, model)
        .map_err(|e| Attempted::Next(respond::failure(req.client, Some(model), up, e.into())))?;
    let cost = model
        .price
        .cost_nano(estimate.tokens.input, estimate.tokens.output);
    if trail.budget_room.is_some_and(|room| cost > room) {
        return Err(Attempted::Skipped);
    }
    if let Some(d) = &trail.draft {
        d.estimated(estimate.tokens);
    }
    let (mut admission, paused) = admit(req, model, estimate).await.map_err(|(reply, next)| {
        if let Some(room) = next.budget_room {
            trail.budget_room = Some(trail.budget_room.map_or(room, |r| r.min(room)));
        }
        if let (Some(level), Some(d)) = (next.budget_level, &trail.draft) {
            d.budget_refused(level);
        }
        if next.another_model_may {
            Attempted::Next(reply)
        } else {
            Attempted::Final(reply)
        }
    })?;
    admission.set_request(req.request_id.0, trail.draft.clone());
    tally.stage(Stage::Queued);
    // The headers describe the client's bucket right after this request was
    // let in, known from its permit: no store round trip. They are written
    // straight into the answer, whichever it is.
    let client_status = admission.client_status.take();
    let write_headers = |h: &mut HeaderMap| {
        if let Some(dims) = &client_status {
            headers::write_ratelimit_headers(h, dims);
        }
    };
    let with_headers = |mut reply: Reply| {
        write_headers(&mut reply.error.headers);
        reply
    };
    if let Err(r) = wait(req, model, &mut admission, paused, started).await {
        admission.ended(r.outcome, Some(&r.error.code));
        return Err(Attempted::Next(with_headers(r)));
    }
    let Some(within) = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    else {
        // Dropped unsent, the admission gives everything back.
        let f = Failure::Upstream(UpstreamFailure::Timeout);
        return Err(Attempted::Final(with_headers(respond::failure(
            req.client,
            Some(model),
            up,
            f,
        ))));
    };
    tally.stage(Stage::Upstream);
    trail.attempts += 1;
    let mut r = upstream(req, model, parsed, estimate, admission, tally, within)
        .await
        .map_err(|(reply, next)| {
            let reply = with_headers(reply);
            if next {
                Attempted::Next(reply)
            } else {
                Attempted::Final(reply)
            }
        })?;
    write_headers(r.headers_mut());
    Ok(r)
}

/// Reads, parses and routes the request.
async fn prepare(
    req: &Req<'_>,
    body: Body,
    tally: &mut Tally,
) -> Result<(Parsed, route::Routed), Failure> {
    let path = req.path;
    let bytes = body::read(req.headers, body, path.body_limit, path.body_timeout).await?;
    let parsed = parse::parse(req.endpoint, &bytes)?;
    if let Some(key) = req.key.filter(|k| !k.allows(&parsed.model)) {
        return Err(Invalid::new(
            "model_not_allowed",
            "model",
            format!(
                "This API key ({}) may not use {:?}; it may use {:?}.",
                key.id,
                parsed.model,
                key.models.as_deref().unwrap_or_default()
            ),
        )
        .with_status(StatusCode::FORBIDDEN)
        .into());
    }
    let routes = req.registry.routes();
    let table = route::Table {
        models: &path.models,
        routes: &routes,
        classifier: &path.classifier,
    };
    let asked = route::Asked {
        name: &parsed.model,
        endpoint: req.endpoint,
        tier: &req.client.tier.name,
        hint: route::hint(req.headers, &parsed.body),
        body: &parsed.body,
    };
    let routed = route::route(table, asked)?;
    tally.model(&routed.candidates.first().name);
    if path.log_prompts {
        tracing::debug!(client = %req.client.id, body = ?parsed.body, route = %routed.route, task = ?routed.task, "request");
    }
    Ok((parsed, routed))
}

/// What an admission's refusal leaves open for the next candidate.
struct Onward {
    /// Another model may take it: its provider bucket may start it in
    /// time (congestion), or its price may fit the budget.
    another_model_may: bool,
    /// What the budget had left, when it was the budget that refused.
    budget_room: Option<i64>,
    /// The level whose budget refused, when a budget did.
    budget_level: Option<crate::budget::Level>,
}

/// Admits the request on `model`, asking the store about an upstream pause
/// meanwhile; a pause seen is waited out or refused by [`wait`].
async fn admit(
    req: &Req<'_>,
    model: &Arc<Model>,
    estimate: Estimate,
) -> Result<(Admission, Option<Paused>), (Reply, Onward)> {
    let up = &req.path.upstream;
    // Admission runs as a task of its own: a client that leaves while its
    // reservations are on their way to the store drops this future, not the
    // admission, which then finishes and (dropped unused) gives back
    // everything it took, the budget's hold included. The task's future and
    // its outcome are boxed: both are kilobytes, and a task moves them by
    // value several times (into the task, out of it); unboxed, those copies
    // were a third of a request's instructions (docs/BENCHMARKS.md).
    let admitting = tokio::spawn(boxed(|| {
        let (books, client, model) = (req.path.books.clone(), req.client.clone(), model.clone());
        let key = req.key.cloned();
        async move {
            let admitted =
                admit::admit_with(&books, &client, key.as_ref(), &model, estimate.tokens).await;
            Box::new(admitted)
        }
    }));
    let (admitted, paused) = tokio::join!(admitting, model.hold.check(&up.store, up.store_timeout));
    match admitted.map(|outcome| *outcome) {
        Ok(Ok(a)) => Ok((a, paused)),
        Ok(Err(refusal)) => {
            let onward = Onward {
                another_model_may: refusal.another_model_may_take_it(),
                budget_room: refusal.budget_room(),
                budget_level: refusal.budget_level(),
            };
            Err((respond::refusal(req.client, model, refusal).await, onward))
        }
        Err(e) => {
            tracing::error!(error = %e, "admission task failed");
            let reply = respond::failure(req.client, Some(model), up, Failure::Internal);
            let onward = Onward {
                another_model_may: false,
                budget_room: None,
                budget_level: None,
            };
            Err((reply, onward))
        }
    }
}

/// Waits out a pause asked by the upstream, seen at admission or begun
/// while this request waited for its slot, when the tier may wait that
/// long, else refuses it (dropping the admission gives everything back).
async fn wait(
    req: &Req<'_>,
    model: &Model,
    admission: &mut Admission,
    paused: Option<Paused>,
    started: Instant,
) -> Result<(), Reply> {
    let up = &req.path.upstream;
    let out_pause = |paused| {
        wait::out_pause(
            &up.store,
            up.store_timeout,
            req.client,
            model,
            started,
            paused,
        )
    };
    let refuse = |p| respond::failure(req.client, Some(model), up, Failure::Paused(p));
    out_pause(paused).await.map_err(refuse)?;
    wait::for_slot(&req.path.books.metrics, admission).await;
    if admission.wait > Duration::ZERO {
        let paused = model.hold.check(&up.store, up.store_timeout).await;
        out_pause(paused).await.map_err(refuse)?;
    }
    Ok(())
}

/// Forwards the request to `model`, settles what the answer used (a
/// stream settles when it ends) and answers.
async fn upstream(
    req: &Req<'_>,
    model: &Arc<Model>,
    parsed: &Parsed,
    estimate: Estimate,
    mut admission: Admission,
    tally: &mut Tally,
    within: Duration,
) -> Result<Response, (Reply, bool)> {
    let up = &req.path.upstream;
    let ask = Ask {
        endpoint: req.endpoint,
        payload: forward::payload(parsed, model),
        stream: parsed.stream,
        cap: estimate.cap,
        input: estimate.tokens.input,
        within,
    };
    // From here on the upstream may have the request: a client that leaves
    // is charged its input at least (the admission settles that when dropped).
    admission.sent();
    let forwarded = forward::forward(up, model, ask).await;
    let upstream_id = forwarded.upstream_id;
    let mut answered = match forwarded.result {
        Ok(Answer::Whole { bytes, charge }) => {
            stream::note_charge(&up.metrics, model, &req.client.id, &charge);
            admission.answered();
            admission.ended(Outcome::Ok, None);
            admission.settle(charge.usage()).await;
            Ok(respond::json(bytes))
        }
        Ok(Answer::Stream { body, sent }) => {
            admission.answered();
            let relay = stream::SseRelay::new(
                body,
                stream::Relayed {
                    metrics: up.metrics.clone(),
                    model: model.clone(),
                    admission,
                    tally: tally.take(),
                    cap: estimate.cap,
                    // Only chat streams carry a usage chunk that was asked for.
                    strip_usage: req.endpoint == Endpoint::Chat && !parsed.client_wants_usage,
                    sent,
                    timeouts: up.timeouts,
                },
            );
            Ok(respond::event_stream(relay))
        }
        Err(f) => {
            admission.ended(f.outcome(), None);
            admission.settle(f.used(estimate.tokens.input)).await;
            forward::slow_down(up, model, &f).await;
            let next = f.falls_back();
            if next {
                tracing::info!(model = %model.name, outcome = f.outcome().as_str(), "upstream failed before the first byte: next candidate");
            }
            let reply = respond::failure(req.client, Some(model), up, Failure::Upstream(f));
            Err((reply, next))
        }
    };
    if let Some(id) = upstream_id {
        let headers = match &mut answered {
            Ok(r) => r.headers_mut(),
            Err((reply, _)) => &mut reply.error.headers,
        };
        headers.insert(crate::request_id::UPSTREAM_HEADER, id);
    }
    answered
}
