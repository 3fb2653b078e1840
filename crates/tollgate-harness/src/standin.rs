//! The provider stand-in: an HTTP server on loopback that enforces an exact
//! token bucket and answers 429 when a call exceeds it.
//!
//! A call is `POST /v1/call` with headers `x-tokens` (tokens it uses),
//! `x-asked` (Unix seconds when its sender asked its limiter; optional) and
//! `x-client` (a label). The answer is 200 with `{"usage":{"total_tokens":n}}`
//! after a simulated latency, or 429 with `retry-after`. Every call is recorded
//! with its arrival time, so a run can be analysed afterwards.
//!
//! It also answers OpenAI's `POST /v1/chat/completions`, for runs through
//! the gateway: each call uses `max_tokens` completion tokens and one prompt
//! token (so the gateway's estimate is never below it), and its label is
//! the last message's text.
//!
//! The server runs on its own thread and runtime, so the harness that starts it
//! may block (starting Redis, waiting for processes) without delaying it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::arrival::Stamped;
use crate::bucket::{Bucket, CallRecord};
use crate::now_unix;

/// The stand-in's limits and behaviour.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StandinConfig {
    /// Requests per window.
    pub requests: u64,
    /// Tokens per window.
    pub tokens: u64,
    /// Window in seconds (capacity = one window's limit).
    pub window_secs: f64,
    /// Scheduling jitter allowance, seconds (see [`Bucket::tolerance`]).
    pub tolerance: f64,
    /// Simulated call latency, uniform in `[min, max]` milliseconds.
    pub latency_ms: (u64, u64),
}

struct State {
    bucket: Bucket,
    records: Vec<CallRecord>,
}

/// A running stand-in. Dropping it stops the server.
pub struct Standin {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    config: StandinConfig,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Standin {
    /// Starts a stand-in on `127.0.0.1:port` (0 picks a free port).
    pub fn start(config: StandinConfig, port: u16) -> anyhow::Result<Self> {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("binding the stand-in to 127.0.0.1:{port}"))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            bucket: Bucket::new(
                config.requests,
                config.tokens,
                config.window_secs,
                config.tolerance,
                now_unix(),
            ),
            records: Vec::new(),
        }));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread_state = state.clone();
        let latency = config.latency_ms;
        let window = config.window_secs;
        let thread = std::thread::Builder::new()
            .name("standin".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("stand-in: cannot build its runtime: {e}");
                        return;
                    }
                };
                rt.block_on(serve(std_listener, thread_state, latency, window, stop_rx));
            })?;
        Ok(Standin {
            addr,
            state,
            config,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address to send calls to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration it enforces.
    pub fn config(&self) -> &StandinConfig {
        &self.config
    }

    /// A copy of every call recorded so far.
    pub fn records(&self) -> Vec<CallRecord> {
        self.state
            .lock()
            .map(|s| s.records.clone())
            .unwrap_or_default()
    }

    /// Calls, 429s and tokens admitted so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        let Ok(s) = self.state.lock() else {
            return (0, 0, 0);
        };
        let mut c = (s.records.len() as u64, 0, 0);
        for r in &s.records {
            if r.admitted {
                c.2 += r.tokens;
            } else {
                c.1 += 1;
            }
        }
        c
    }

    /// Stops the server and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<Mutex<State>>,
    latency: (u64, u64),
    window: f64,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("stand-in: cannot listen: {e}");
            return;
        }
    };
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let (stream, arrivals) = Stamped::new(stream);
                let state = state.clone();
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        // When the request reached the socket, not when this
                        // thread got to it (see `arrival`).
                        let arrival = arrivals.take().unwrap_or_else(now_unix);
                        handle(req, arrival, state.clone(), latency, window)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
    conns.abort_all();
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    arrival: f64,
    state: Arc<Mutex<State>>,
    latency: (u64, u64),
    window: f64,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/v1/chat/completions" {
        return Ok(chat(req, arrival, state, latency, window).await);
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let Some(tokens) = header("x-tokens").and_then(|v| v.parse::<u64>().ok()) else {
        return Ok(reply(
            StatusCode::BAD_REQUEST,
            r#"{"error":{"message":"missing x-tokens header","type":"invalid_request_error"}}"#
                .into(),
        ));
    };
    let asked = header("x-asked")
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let client = header("x-client").unwrap_or_default();
    let decision = {
        let Ok(mut s) = state.lock() else {
            return Ok(reply(StatusCode::INTERNAL_SERVER_ERROR, "{}".into()));
        };
        let d = s.bucket.take(arrival, tokens as f64);
        let level_after = s.bucket.tokens.level();
        s.records.push(CallRecord {
            arrival,
            asked,
            tokens,
            admitted: d.admitted,
            early_by: d.early_by,
            client,
            level_after,
        });
        d
    };
    if !decision.admitted {
        let mut r = reply(
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"error":{"message":"rate limit exceeded","type":"rate_limit_error"}}"#.into(),
        );
        let secs = decision.early_by.min(window).ceil().max(1.0) as u64;
        if let Ok(v) = secs.to_string().parse() {
            r.headers_mut().insert("retry-after", v);
        }
        return Ok(r);
    }
    let (lo, hi) = latency;
    if hi > 0 {
        let ms = rand::rng().random_range(lo.min(hi)..=hi);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    Ok(reply(
        StatusCode::OK,
        format!(r#"{{"usage":{{"total_tokens":{tokens}}}}}"#),
    ))
}

/// An OpenAI chat completion of `max_tokens` tokens, charged on arrival.
async fn chat(
    req: Request<hyper::body::Incoming>,
    arrival: f64,
    state: Arc<Mutex<State>>,
    latency: (u64, u64),
    window: f64,
) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST, "{}".into()),
    };
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return reply(StatusCode::BAD_REQUEST, "{}".into());
    };
    let completion = body["max_tokens"].as_u64().unwrap_or(16);
    let label = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    let tokens = completion + 1;
    let decision = {
        let Ok(mut s) = state.lock() else {
            return reply(StatusCode::INTERNAL_SERVER_ERROR, "{}".into());
        };
        let d = s.bucket.take(arrival, tokens as f64);
        let level_after = s.bucket.tokens.level();
        s.records.push(CallRecord {
            arrival,
            asked: 0.0,
            tokens,
            admitted: d.admitted,
            early_by: d.early_by,
            client: label,
            level_after,
        });
        d
    };
    if !decision.admitted {
        let mut r = reply(
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"error":{"message":"rate limit exceeded","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#.into(),
        );
        let secs = decision.early_by.min(window).ceil().max(1.0) as u64;
        if let Ok(v) = secs.to_string().parse() {
            r.headers_mut().insert("retry-after", v);
        }
        return r;
    }
    let (lo, hi) = latency;
    if hi > 0 {
        let ms = rand::rng().random_range(lo.min(hi)..=hi);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let model = body["model"].as_str().unwrap_or("m");
    reply(
        StatusCode::OK,
        serde_json::json!({
            "id": "chatcmpl-standin", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": completion, "total_tokens": tokens},
        })
        .to_string(),
    )
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
