//! A simulated OpenAI-compatible upstream: plausible text, exact usage and
//! configurable latency, streamed or not. Used by `tollgate serve --demo`, the
//! tests and the benchmark; it listens on loopback only.
//!
//! The last message's text may steer it: `[sim:429]` answers 429 with
//! `retry-after: 1`, `[sim:500]` / `[sim:503]` answer those errors,
//! `[sim:tokens=N]` makes the completion N tokens long.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::estimate::Tokenizer;

/// How the simulated upstream behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Delay before the response (or the first chunk).
    pub latency: Duration,
    /// Delay between streamed chunks.
    pub chunk_interval: Duration,
    /// Completion length when `max_tokens` allows it.
    pub completion_tokens: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency: Duration::from_millis(2),
            chunk_interval: Duration::from_millis(1),
            completion_tokens: 16,
        }
    }
}

/// What the simulated upstream saw.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Requests received.
    pub requests: AtomicU64,
    /// Completion tokens produced.
    pub completion_tokens: AtomicU64,
    /// The last `Authorization` header received.
    pub last_authorization: Mutex<Option<String>>,
    /// The last request body received.
    pub last_body: Mutex<Option<Value>>,
}

struct SimState {
    config: SimConfig,
    stats: Arc<SimStats>,
}

/// A running simulated upstream.
pub struct SimUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub stats: Arc<SimStats>,
    task: tokio::task::JoinHandle<()>,
}

impl SimUpstream {
    /// Base URL to put in a provider's `base_url` (`http://ADDR/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for SimUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a simulated upstream on `127.0.0.1:port` (0: any free port).
pub async fn start(config: SimConfig, port: u16) -> std::io::Result<SimUpstream> {
    let listener = crate::server::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(SimStats::default());
    let state = Arc::new(SimState {
        config,
        stats: stats.clone(),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route(
            "/v1/models",
            get(|| async { Json(json!({"object": "list", "data": []})) }),
        )
        .with_state(state);
    let task = tokio::spawn(async move {
        let _ = axum::serve(crate::server::no_delay(listener), app).await;
    });
    Ok(SimUpstream { addr, stats, task })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": kind, "param": null, "code": code}})),
    )
        .into_response()
}

/// The 400 for a request body that is not JSON.
fn not_json() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "invalid_json",
        "body is not JSON",
    )
}

const WORDS: &[&str] = &[
    "The", " gateway", " keeps", " every", " request", " inside", " its", " limits", ",", " and",
    " the", " tokens", " flow", " back", " when", " unused", ".",
];

fn last_text(messages: &[Value]) -> String {
    messages
        .last()
        .and_then(|m| m.get("content"))
        .map(|c| match c {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

fn directive(text: &str, name: &str) -> Option<String> {
    let start = text.find(&format!("[sim:{name}"))? + 5 + name.len();
    let rest = &text[start..];
    let end = rest.find(']')?;
    Some(rest[..end].trim_start_matches('=').to_string())
}

async fn chat(State(s): State<Arc<SimState>>, headers: HeaderMap, body: Bytes) -> Response {
    s.stats.requests.fetch_add(1, Ordering::Relaxed);
    *s.stats.last_authorization.lock() = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return not_json();
    };
    *s.stats.last_body.lock() = Some(req.clone());
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("sim")
        .to_string();
    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let text = last_text(&messages);
    if !s.config.latency.is_zero() {
        tokio::time::sleep(s.config.latency).await;
    }
    if directive(&text, "429").is_some() {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            "rate_limit_exceeded",
            "Rate limit reached (simulated).",
        );
        r.headers_mut()
            .insert("retry-after", header::HeaderValue::from_static("1"));
        return r;
    }
    if directive(&text, "500").is_some() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "server_error",
            "The server had an error (simulated).",
        );
    }
    if directive(&text, "503").is_some() {
        return (StatusCode::SERVICE_UNAVAILABLE, "upstream overloaded").into_response();
    }
    let prompt = Tokenizer::for_model(&model).chat_input(&messages, req.get("tools"));
    let cap = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(u64::MAX);
    let wanted = directive(&text, "tokens")
        .and_then(|n| n.parse().ok())
        .unwrap_or(s.config.completion_tokens);
    let n = wanted.min(cap);
    s.stats.completion_tokens.fetch_add(n, Ordering::Relaxed);
    let usage =
        json!({"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n});
    let id = format!("chatcmpl-sim{}", s.stats.requests.load(Ordering::Relaxed));
    let created = now();
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        let content: String = (0..n).map(|i| WORDS[i as usize % WORDS.len()]).collect();
        return Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response();
    }
    let include_usage = req
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let interval = s.config.chunk_interval;
    let chunk = move |delta: Value, finish: Value| {
        let v = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        v
    };
    let mut events: Vec<String> = Vec::with_capacity(n as usize + 4);
    events.push(chunk(json!({"role": "assistant", "content": ""}), Value::Null).to_string());
    for i in 0..n {
        events.push(
            chunk(
                json!({"content": WORDS[i as usize % WORDS.len()]}),
                Value::Null,
            )
            .to_string(),
        );
    }
    let mut last = chunk(json!({}), json!("stop"));
    events.push(last.to_string());
    if include_usage {
        last["choices"] = json!([]);
        last["usage"] = usage;
        events.push(last.to_string());
    }
    events.push("[DONE]".into());
    let body = futures_util::stream::unfold(
        (events.into_iter(), false),
        move |(mut it, started)| async move {
            let e = it.next()?;
            if started && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            Some((
                Ok::<_, std::io::Error>(Bytes::from(format!("data: {e}\n\n"))),
                (it, true),
            ))
        },
    );
    let mut r = Response::new(Body::from_stream(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    r
}

async fn embeddings(State(s): State<Arc<SimState>>, body: Bytes) -> Response {
    s.stats.requests.fetch_add(1, Ordering::Relaxed);
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return not_json();
    };
    tokio::time::sleep(s.config.latency).await;
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("sim")
        .to_string();
    let input = req.get("input").cloned().unwrap_or(Value::Null);
    let tokens = Tokenizer::for_model(&model)
        .embeddings_input(&input)
        .unwrap_or(0);
    let count = match &input {
        Value::Array(a) if a.iter().all(|x| !x.is_number()) => a.len(),
        _ => 1,
    };
    let data: Vec<Value> = (0..count)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.1, -0.2, 0.3, 0.05, 0.0, 0.7, -0.4, 0.2]}))
        .collect();
    Json(json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})).into_response()
}
