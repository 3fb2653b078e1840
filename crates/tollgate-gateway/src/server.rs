//! The HTTP surface: routes, start and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::oneshot;

use crate::admin;
use crate::config::Config;
use crate::error::ApiError;
use crate::gateway::{Gateway, StartError};
use crate::proxy::{self, Endpoint};

/// Every route of the gateway.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/admin/tiers", get(admin::tiers))
        .route("/admin/clients", get(admin::clients))
        .route("/admin/clients/{id}/tier", put(admin::set_client_tier))
        .route("/admin/tiers/{name}", patch(admin::patch_tier))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "unknown_url", "Unknown URL; this gateway serves /v1/chat/completions, /v1/embeddings and /v1/models.")
        })
        .with_state(gw)
}

async fn chat(State(gw): State<Arc<Gateway>>, headers: HeaderMap, body: Body) -> Response {
    proxy::handle(gw, headers, body, Endpoint::Chat).await
}

async fn embeddings(State(gw): State<Arc<Gateway>>, headers: HeaderMap, body: Body) -> Response {
    proxy::handle(gw, headers, body, Endpoint::Embeddings).await
}

async fn models(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = proxy::authenticate(&gw, &headers) {
        return e.into_response();
    }
    let data: Vec<_> = gw
        .models
        .values()
        .map(|m| json!({"id": m.name, "object": "model", "created": 0, "owned_by": m.provider}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    let mut text = gw.metrics.render();
    // The limiters' own counters: store errors and outage decisions.
    let mut store_errors = 0;
    let mut outage = 0;
    for m in gw.models.values() {
        let s = m.limiter.stats();
        store_errors += s.store_errors;
        outage += s.outage_open + s.outage_closed + s.outage_local;
    }
    for c in gw.registry().clients.values() {
        let s = c.limiter.stats();
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
        server
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
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
    let server = tokio::spawn(async move {
        axum::serve(no_delay(listener), app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
    });
    let sync = matches!(gw.sync, crate::sync::LiveSync::Redis(_)).then(|| {
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
                    tracing::warn!(error = %e, "could not check for live configuration changes");
                }
            }
        })
    });
    tracing::info!(%addr, store = if gw.store.is_memory() { "memory" } else { "redis" }, "tollgate gateway listening");
    Ok(RunningGateway {
        addr,
        gateway: gw,
        shutdown: Some(tx),
        server: Some(server),
        sync,
    })
}
