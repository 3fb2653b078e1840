//! The HTTP surface: routes, start and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, patch, post, put, MethodRouter};
use axum::{Extension, Json, Router};
use serde_json::json;
use tokio::sync::oneshot;

use crate::admin;
use crate::config::Config;
use crate::error::ApiError;
use crate::gateway::{Gateway, StartError};
use crate::model::Endpoint;
use crate::request;
use crate::request_id::{self, RequestId};

/// Every route of the gateway.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/chat/completions", proxied(Endpoint::Chat))
        .route("/v1/embeddings", proxied(Endpoint::Embeddings))
        .route("/v1/responses", proxied(Endpoint::Responses))
        .route("/v1/completions", any(legacy_completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(crate::dashboard::routes())
        .route("/admin/tiers", get(admin::tiers))
        .route("/admin/models", get(admin::models))
        .route(
            "/admin/clients",
            get(crate::admin_clients::clients).post(crate::admin_keys::create_client),
        )
        .route(
            "/admin/clients/{id}",
            get(crate::admin_clients::client).patch(crate::admin_clients::patch_client),
        )
        .route(
            "/admin/keys/{id}",
            get(crate::admin_clients::key)
                .patch(crate::admin_clients::patch_key)
                .delete(crate::admin_keys::revoke_key),
        )
        .route(
            "/admin/clients/{id}/keys",
            get(crate::admin_keys::keys).post(crate::admin_keys::issue_key),
        )
        .route(
            "/admin/keys/{id}/rotate",
            post(crate::admin_keys::rotate_key),
        )
        .route(
            "/admin/orgs",
            get(crate::admin_orgs::orgs).post(crate::admin_orgs::create_org),
        )
        .route(
            "/admin/orgs/{id}",
            get(crate::admin_orgs::org).patch(crate::admin_orgs::patch_org),
        )
        .route(
            "/admin/clients/{id}/org",
            put(crate::admin_orgs::set_client_org),
        )
        .route(
            "/admin/clients/{id}/limits",
            put(crate::admin_orgs::set_client_limits),
        )
        .route(
            "/admin/keys/{id}/limits",
            put(crate::admin_orgs::set_key_limits),
        )
        .route("/admin/clients/{id}/tier", put(admin::set_client_tier))
        .route("/admin/tiers/{name}", patch(admin::patch_tier))
        .route("/admin/routes", get(admin::routes))
        .route("/admin/routes/{name}", put(admin::put_route))
        .route("/admin/overrides", get(admin::overrides))
        .route("/admin/usage", get(admin::usage))
        .route("/admin/audit", get(crate::admin_access::audit))
        .route(
            "/admin/overrides/tiers/{name}",
            delete(admin::remove_tier_override),
        )
        .route(
            "/admin/overrides/clients/{id}",
            delete(admin::remove_client_override),
        )
        .route(
            "/admin/overrides/routes/{name}",
            delete(admin::remove_route_override),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unknown_url",
                format!("Unknown URL; this gateway serves {SERVED}."),
            )
        })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            crate::admin_access::guard,
        ))
        .layer(axum::middleware::from_fn(request_id::layer))
        .with_state(gw)
}

/// What the client API serves, for the 404s.
const SERVED: &str = "POST /v1/chat/completions, POST /v1/responses, POST /v1/embeddings, GET /v1/models and GET /v1/models/{model}";

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        format!(
            "{method} is not allowed on {}; this gateway serves {SERVED}.",
            uri.path()
        ),
    )
}

async fn legacy_completions() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unsupported_endpoint",
        format!("The legacy completions API (/v1/completions) is not served by this gateway; use /v1/chat/completions or /v1/responses. It serves {SERVED}."),
    )
}

/// The route of a proxied endpoint: `POST`, handled by the request pipeline.
fn proxied(endpoint: Endpoint) -> MethodRouter<Arc<Gateway>> {
    post(
        move |State(gw): State<Arc<Gateway>>,
              Extension(id): Extension<RequestId>,
              headers: HeaderMap,
              body: Body| proxy(gw, id, headers, body, endpoint),
    )
}

/// One proxied request. Its future is what axum boxes and moves for every
/// request: the request path's own (kilobytes) is made in a box of its own
/// inside it ([`request::boxed`]), so that this one is a few words.
pub(crate) async fn proxy(
    gw: Arc<Gateway>,
    id: RequestId,
    headers: HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Response {
    request::boxed(|| request::handle(&gw.pipeline, gw.registry(), headers, body, endpoint, id))
        .await
}

fn model_object(m: &crate::model::Model) -> serde_json::Value {
    json!({"id": m.name, "object": "model", "created": 0, "owned_by": m.provider})
}

/// A route alias in OpenAI's model shape, so that SDKs can discover it
/// beside the models: owned by the gateway, with the models its rules may
/// send a request to (each once, in the order the rules name them).
fn route_object(name: &str, route: &crate::config::RouteConfig) -> serde_json::Value {
    let mut models: Vec<&str> = Vec::new();
    for m in route.rules.iter().flat_map(|r| &r.models) {
        if !models.contains(&m.as_str()) {
            models.push(m);
        }
    }
    json!({
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "tollgate",
        "tollgate_route": {"models": models},
    })
}

async fn model(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = request::client_of(&gw.registry(), &headers) {
        return e.into_response();
    }
    if let Some(m) = gw.models.get(&id) {
        return Json(model_object(m)).into_response();
    }
    match gw.registry().routes().get(&id) {
        Some(r) => Json(route_object(&id, r)).into_response(),
        None => {
            let mut e = ApiError::invalid(
                "model_not_found",
                "model",
                format!("The model {id:?} does not exist on this gateway; GET /v1/models lists the models you can use."),
            );
            e.status = StatusCode::NOT_FOUND;
            e.into_response()
        }
    }
}

async fn models(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = request::client_of(&gw.registry(), &headers) {
        return e.into_response();
    }
    let mut data: Vec<_> = gw.models.values().map(|m| model_object(m)).collect();
    let routes = gw.registry().routes();
    data.extend(routes.iter().map(|(name, r)| route_object(name, r)));
    Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /metrics` on the client port: behind the admin token, unless
/// `metrics.listen` moved it to a listener of its own.
async fn metrics(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Some(addr) = &gw.config.metrics.listen {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            format!("/metrics is served on the metrics listener ({addr}), not here."),
        )
        .into_response();
    }
    if let Err(e) = admin::authorize(&gw, &headers) {
        return e.into_response();
    }
    metrics_text(&gw).await
}

/// `GET /metrics` on the metrics listener (no token: keep it private).
async fn metrics_open(State(gw): State<Arc<Gateway>>) -> Response {
    metrics_text(&gw).await
}

/// Sets the gauges read at scrape time, then renders everything.
async fn metrics_text(gw: &Gateway) -> Response {
    use crate::metrics::names;
    use std::sync::atomic::Ordering::Relaxed;
    let m = &gw.metrics;
    if let Some(ledger) = &gw.ledger {
        crate::ledger::http::publish_metrics(m, ledger);
    }
    let c = &gw.connections;
    m.gauge_set(
        names::IN_FLIGHT,
        &[],
        c.requests_in_flight.load(Relaxed) as f64,
    );
    m.gauge_set(names::CONNECTIONS_OPEN, &[], c.open.load(Relaxed) as f64);
    m.gauge_set(
        names::CONNECTIONS_REFUSED,
        &[],
        c.refused.load(Relaxed) as f64,
    );
    m.gauge_set(
        names::CONNECTIONS_TIMED_OUT,
        &[],
        c.timed_out.load(Relaxed) as f64,
    );
    let mut store_up = gw.sync.ping().await.is_ok();
    let mut left = Vec::new();
    let mut whole = Vec::new();
    let registry = gw.registry();
    let clients = registry.clients();
    for client in &clients {
        let budget = client.budget;
        if budget.daily.is_none() && budget.monthly.is_none() {
            continue;
        }
        let Ok(spend) = gw.budgets.spend(&client.id).await else {
            store_up = false;
            break;
        };
        let tier = client.tier.name.as_str();
        for (period, limit, spent) in [
            ("day", budget.daily, spend.today),
            ("month", budget.monthly, spend.month),
        ] {
            if let Some(limit) = limit {
                let usd = crate::budget::nano_to_usd((limit - spent).max(0));
                let pairs = vec![
                    ("client", client.id.as_str()),
                    ("tier", tier),
                    ("period", period),
                ];
                whole.push((pairs.clone(), crate::budget::nano_to_usd(limit)));
                left.push((pairs, usd));
            }
        }
    }
    m.gauge_replace(names::BUDGET_LEFT, &left);
    m.gauge_replace(names::BUDGET, &whole);
    let models = crate::shares::statuses(gw.models.values()).await;
    crate::shares::publish(m, &gw.config, &models);
    m.gauge_set(names::STORE_UP, &[], if store_up { 1.0 } else { 0.0 });
    let mut text = m.render();
    // The limiters' own counters: store errors and outage decisions.
    let mut store_errors = 0;
    let mut outage = 0;
    for m in gw.models.values() {
        let s = m.limiter.stats();
        store_errors += s.store_errors;
        outage += s.outage_open + s.outage_closed + s.outage_local;
    }
    // A client no request has used yet has no bucket, and nothing to count.
    for c in gw.registry().clients() {
        let Some(l) = c.built_limiter() else { continue };
        let s = l.stats();
        store_errors += s.store_errors;
        outage += s.outage_open + s.outage_closed + s.outage_local;
    }
    text.push_str(&format!(
        "# HELP tollgate_limiter_store_errors_total Store errors seen by the limiters (retries included).\n# TYPE tollgate_limiter_store_errors_total counter\ntollgate_limiter_store_errors_total {store_errors}\n# HELP tollgate_limiter_outage_decisions_total Decisions made by the outage policy.\n# TYPE tollgate_limiter_outage_decisions_total counter\ntollgate_limiter_outage_decisions_total {outage}\n"
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    let limiter_ok = match gw.models.values().next() {
        Some(m) => m
            .limiter
            .status()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        None => Ok(()),
    };
    let sync_ok = gw.sync.ping().await;
    match (limiter_ok, sync_ok) {
        (Ok(_), Ok(())) => "ready".into_response(),
        (Err(e), _) | (_, Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store not ready: {e}"),
        )
            .into_response(),
    }
}

/// A gateway that is listening. Dropping it stops it.
pub struct RunningGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its shared state (metrics, registry, ...).
    pub gateway: Arc<Gateway>,
    /// Where `/metrics` listens, when `metrics.listen` gives it a listener
    /// of its own.
    pub metrics_addr: Option<SocketAddr>,
    metrics_server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    sync: Option<tokio::task::JoinHandle<()>>,
}

impl RunningGateway {
    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs until `shutdown` is signalled by [`RunningGateway::stop`] or the
    /// server fails.
    pub async fn wait(mut self) -> std::io::Result<()> {
        match self.server.take() {
            Some(task) => task.await.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            None => Ok(()),
        }
    }

    /// Serves until `signal` completes, then stops gracefully (running requests
    /// finish); returns early with the error if the server fails.
    pub async fn serve_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let Some(mut server) = self.server.take() else {
            return Ok(());
        };
        tokio::select! {
            r = &mut server => return r.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            _ = signal => {}
        }
        self.stop();
        let served = server
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        // The ledger's queue goes to the database (or the spool) before the
        // process ends.
        if let Some(ledger) = &self.gateway.ledger {
            ledger.close().await;
        }
        served
    }

    /// Stops accepting connections; running requests finish.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.sync.take() {
            t.abort();
        }
        if let Some(t) = self.metrics_server.take() {
            t.abort();
        }
        if let Some(t) = self.server.take() {
            t.abort();
        }
    }
}

/// Pending connections a listener holds before the kernel drops new ones
/// (capped by `net.core.somaxconn`). The usual default, 128, overflows when
/// a burst of clients connects at once: each dropped SYN costs its request a
/// 1 s retransmission.
const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `addr` (`host:port`) with a backlog of [`LISTEN_BACKLOG`].
pub(crate) async fn bind(
    addr: impl tokio::net::ToSocketAddrs,
) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

/// Accepted connections send small writes at once (TCP_NODELAY): streamed
/// events are small, and Nagle's algorithm would hold one back until the
/// previous one is acknowledged.
pub(crate) fn no_delay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    })
}

/// Builds the gateway and listens on `server.listen`.
pub async fn start(config: Config) -> Result<RunningGateway, StartError> {
    let listen = config.server.listen.clone();
    let gw = Gateway::new(config).await?;
    let listener = bind(&listen).await.map_err(|source| StartError::Bind {
        addr: listen.clone(),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: listen,
        source,
    })?;
    let (tx, rx) = oneshot::channel::<()>();
    let app = router(gw.clone());
    let limits = crate::listener::ConnectionLimits::of(&gw.config.server);
    let stats = gw.connections.clone();
    let server = tokio::spawn(crate::listener::serve(
        listener,
        app,
        limits,
        stats,
        async move {
            let _ = rx.await;
        },
    ));
    let (metrics_addr, metrics_server) = match &gw.config.metrics.listen {
        Some(addr) => {
            let listener = bind(addr).await.map_err(|source| StartError::Bind {
                addr: addr.clone(),
                source,
            })?;
            let bound = listener.local_addr().map_err(|source| StartError::Bind {
                addr: addr.clone(),
                source,
            })?;
            let app = Router::new()
                .route("/metrics", get(metrics_open))
                .layer(axum::middleware::from_fn(request_id::layer))
                .with_state(gw.clone());
            let task = tokio::spawn(crate::listener::serve(
                listener,
                app,
                limits,
                Arc::default(),
                std::future::pending(),
            ));
            tracing::info!(addr = %bound, "metrics listening");
            (Some(bound), Some(task))
        }
        None => (None, None),
    };
    // Every instance checks for registry changes, also without Redis: a
    // database shared by several instances holds them all.
    let sync = Some({
        let gw = gw.clone();
        let every = Duration::from_millis(gw.config.store.sync_interval_ms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = gw.refresh().await {
                    gw.metrics
                        .inc("tollgate_store_errors_total", &[("component", "sync")]);
                    tracing::warn!(error = %e, "could not check for registry changes");
                }
            }
        })
    });
    tracing::info!(%addr, store = if gw.store.is_memory() { "memory" } else { "redis" }, "tollgate gateway listening");
    Ok(RunningGateway {
        addr,
        gateway: gw,
        metrics_addr,
        metrics_server,
        shutdown: Some(tx),
        server: Some(server),
        sync,
    })
}
