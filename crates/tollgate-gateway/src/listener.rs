//! Client connections, accepted here rather than by `axum::serve` so that
//! each one has limits a public deployment needs:
//!
//! - **at most `server.max_connections` at once**: one more is answered
//!   `503` with `Retry-After` (in OpenAI's error shape) and closed;
//! - **idle keep-alive**: a connection that sends nothing for
//!   `server.idle_timeout_secs` while no request of it is being served (a
//!   new connection that sends nothing, too) is closed;
//! - **header read**: once the first byte of a request has come, its headers
//!   must be complete within `server.header_read_timeout_secs`, or the
//!   connection is closed (a client that trickles its headers cannot hold
//!   it);
//! - **body read**: the request body must be in within
//!   `server.body_read_timeout_secs` of its headers (408, see
//!   the request pipeline).
//!
//! While a request is being served (waiting for its slot, for the upstream,
//! or streaming) no timeout of this module applies: those have their own.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::config::ServerConfig;

/// Connections beyond the limit answered with a 503 at the same time; past
/// this they are closed without an answer (answering costs a task each).
const MAX_REFUSING: usize = 256;
/// How long a refused connection's request is waited for and its answer
/// written, at most.
const REFUSAL_TIMEOUT: Duration = Duration::from_millis(500);

/// The limits of client connections (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest silence of a connection with no request being served.
    pub idle: Duration,
    /// Longest time from a request's first byte to the end of its headers.
    pub header_read: Duration,
}

impl ConnectionLimits {
    /// The limits `server` sets.
    pub fn of(server: &ServerConfig) -> Self {
        ConnectionLimits {
            max_connections: server.max_connections,
            idle: Duration::from_secs_f64(server.idle_timeout_secs),
            header_read: Duration::from_secs_f64(server.header_read_timeout_secs),
        }
    }
}

/// Open connections, for the gauge.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections open now.
    pub open: AtomicUsize,
    /// Connections refused (over the limit) since start.
    pub refused: AtomicUsize,
    /// Connections closed by a timeout of this module since start.
    pub timed_out: AtomicUsize,
    /// HTTP requests being served now (a stream until its last byte).
    pub requests_in_flight: AtomicUsize,
}

/// Serves `app` on `listener` until `shutdown` completes, then lets the
/// requests being served finish.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    stats: Arc<ConnectionStats>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors (or a connection reset before
                    // it was accepted): wait a little instead of spinning.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            if let Ok(p) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(p);
                });
            }
            continue;
        };
        let state = Arc::new(Mutex::new(ConnState::new()));
        let io = TokioIo::new(Watched::new(stream, state.clone(), limits, stats.clone()));
        let app = app.clone();
        let svc_stats = stats.clone();
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let guard = InFlight::begin(state.clone(), svc_stats.clone());
            let app = app.clone();
            async move {
                let resp = app.oneshot(req.map(Body::new)).await?;
                Ok::<_, std::convert::Infallible>(resp.map(|b| {
                    Body::new(Tracked {
                        inner: b,
                        guard: Some(guard),
                    })
                }))
            }
        });
        // No hyper timer: this module's own deadlines apply (and one timer
        // per request head would cost every request).
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
        let conn = graceful.watch(conn);
        let stats = stats.clone();
        stats.open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "connection ended");
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Answers a connection over the limit: waits briefly for its request's
/// head (so the client reads the answer instead of a reset), writes the 503
/// and closes.
async fn refuse(mut stream: TcpStream) {
    let mut buf = [0u8; 8192];
    let mut seen = 0;
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        while seen < buf.len() {
            match stream.read(&mut buf[seen..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen += n,
            }
            if buf[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    let body = serde_json::json!({"error": {
        "message": "The gateway is at its connection limit; retry after the time in the Retry-After header.",
        "type": "server_error",
        "param": null,
        "code": "too_many_connections",
    }})
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nx-request-id: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        crate::request_id::RequestId::new(),
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// What a connection is doing, for its timeouts.
#[derive(Debug)]
struct ConnState {
    /// Requests being served (more than one only with pipelining).
    in_flight: usize,
    /// When the connection last fell idle (opened, or its last answer ended).
    idle_since: Instant,
    /// When the first byte of the next request came, while idle.
    head_started: Option<Instant>,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            in_flight: 0,
            idle_since: Instant::now(),
            head_started: None,
        }
    }

    /// When the connection is to be closed if nothing changes.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        if self.in_flight > 0 {
            return None;
        }
        Some(match self.head_started {
            Some(t) => t + limits.header_read,
            None => self.idle_since + limits.idle,
        })
    }
}

/// A request being served; dropped when its answer has been sent (or
/// abandoned).
struct InFlight(Arc<Mutex<ConnState>>, Arc<ConnectionStats>);

impl InFlight {
    fn begin(state: Arc<Mutex<ConnState>>, stats: Arc<ConnectionStats>) -> Self {
        {
            let mut s = state.lock();
            s.in_flight += 1;
            s.head_started = None;
        }
        stats.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(state, stats)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.1.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut s = self.0.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
            s.head_started = None;
        }
    }
}

/// A response body that ends its request's [`InFlight`] when it is done.
struct Tracked {
    inner: Body,
    guard: Option<InFlight>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A client socket that closes itself (a read error hyper ends the
/// connection on) when its idle or header-read deadline passes.
struct Watched {
    inner: TcpStream,
    state: Arc<Mutex<ConnState>>,
    limits: ConnectionLimits,
    stats: Arc<ConnectionStats>,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl Watched {
    fn new(
        inner: TcpStream,
        state: Arc<Mutex<ConnState>>,
        limits: ConnectionLimits,
        stats: Arc<ConnectionStats>,
    ) -> Self {
        Watched {
            inner,
            state,
            limits,
            stats,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let mut s = this.state.lock();
                    if s.in_flight == 0 && s.head_started.is_none() {
                        s.head_started = Some(Instant::now());
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = this.state.lock().deadline(&this.limits) else {
                    return Poll::Pending;
                };
                // The timer is moved only to an earlier deadline: one that
                // moved later (a request came and went) is found when the
                // timer fires, so a busy connection re-arms it at most once
                // per timeout rather than once per request.
                if this.armed.is_none_or(|armed| deadline < armed) {
                    this.timer.as_mut().reset(deadline);
                    this.armed = Some(deadline);
                }
                while this.timer.as_mut().poll(cx).is_ready() {
                    if Instant::now() >= deadline {
                        this.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "connection idle or its request's headers too slow",
                        )));
                    }
                    this.timer.as_mut().reset(deadline);
                    this.armed = Some(deadline);
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
