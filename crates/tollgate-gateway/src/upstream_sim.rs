//! A simulated OpenAI-compatible upstream: plausible text, exact usage and
//! configurable latency, streamed or not. Used by `tollgate serve --demo`, the
//! tests and the benchmark; it listens on loopback only.
//!
//! It answers as OpenAI does where clients can tell: `n` choices, each cut
//! at `max_tokens` (`finish_reason: "length"`) or ended (`"stop"`);
//! embeddings as floats or, with `encoding_format: "base64"` (the Node SDK's
//! default), as the base64 of their little-endian `f32` bytes; the Responses
//! API (`/v1/responses`, streamed and not, usage in its final event); and an
//! `x-request-id` of its own on every answer.
//!
//! The last message's text may steer it: `[sim:429]` answers 429 with
//! `retry-after: 1`, `[sim:500]` / `[sim:503]` answer those errors,
//! `[sim:tokens=N]` makes each completion N tokens long.
//!
//! Each model may also fail at a given rate ([`Faults`]: 5xx, 429 with
//! `retry-after`, hang, slow, close mid-stream), drawn from a seed so that a
//! test knows exactly which requests fail.

mod faults;

pub use faults::{draw, Fault, FaultRule, FaultSpecError, Faults, FaultsError};

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
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::tokenizer::Tokenizer;

/// The longest completion the simulator writes (`[sim:tokens=N]` above it
/// is cut to this).
pub const MAX_COMPLETION_TOKENS: u64 = 16_384;

/// The most choices (`n`) the simulator writes, as OpenAI's API allows.
pub const MAX_CHOICES: u64 = 128;
/// How the simulated upstream behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Delay before the response (or the first chunk).
    pub latency: Duration,
    /// Delay between streamed chunks.
    pub chunk_interval: Duration,
    /// Completion length when `max_tokens` allows it.
    pub completion_tokens: u64,
    /// Failure modes per model (none by default).
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency: Duration::from_millis(2),
            chunk_interval: Duration::from_millis(1),
            completion_tokens: 16,
            faults: Faults::default(),
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
    /// The names of the last request's headers, lower case.
    pub last_header_names: Mutex<Vec<String>>,
    /// Requests that met one of the configured faults.
    pub faults: AtomicU64,
    by_model: faults::Counters,
}

impl SimStats {
    /// Requests received for `model` (the name the upstream was sent),
    /// counted before any fault.
    pub fn requests_for(&self, model: &str) -> u64 {
        self.by_model.get(model)
    }
}

struct SimState {
    config: SimConfig,
    stats: Arc<SimStats>,
    /// Ends when the simulator stops, so that a hanging answer ends too.
    stopped: tokio::sync::watch::Receiver<()>,
}

/// A running simulated upstream.
pub struct SimUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub stats: Arc<SimStats>,
    task: tokio::task::JoinHandle<()>,
    _stop: tokio::sync::watch::Sender<()>,
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
    let (stop, stopped) = tokio::sync::watch::channel(());
    let state = Arc::new(SimState {
        config,
        stats: stats.clone(),
        stopped,
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses))
        .route(
            "/v1/models",
            get(|| async { Json(json!({"object": "list", "data": []})) }),
        )
        .layer(axum::middleware::map_response(upstream_id))
        .with_state(state);
    let task = tokio::spawn(async move {
        let _ = axum::serve(crate::server::no_delay(listener), app).await;
    });
    Ok(SimUpstream {
        addr,
        stats,
        task,
        _stop: stop,
    })
}

/// The upstream's own request id on every answer, as OpenAI's.
async fn upstream_id(mut r: Response) -> Response {
    let id = format!("req_sim{:016x}", rand::random::<u64>());
    if let Ok(v) = header::HeaderValue::from_str(&id) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
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
    *s.stats.last_header_names.lock() = headers.keys().map(|k| k.as_str().to_string()).collect();
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return not_json();
    };
    *s.stats.last_body.lock() = Some(req.clone());
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("sim")
        .to_string();
    if !s.config.latency.is_zero() {
        tokio::time::sleep(s.config.latency).await;
    }
    let cut = match s.meet(&model).await {
        Ok(cut) => cut,
        Err(r) => return r,
    };
    cut_after(cut, chat_answer(&s, req, model))
}

/// The chat answer once faults are met: a steered error or the completion.
fn chat_answer(s: &SimState, req: Value, model: String) -> Response {
    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let text = last_text(&messages);
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
        .and_then(Value::as_u64);
    let choices = req
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, MAX_CHOICES);
    let (n, finish) = s.completion(&text, cap);
    let total = n * choices;
    s.stats
        .completion_tokens
        .fetch_add(total, Ordering::Relaxed);
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": total, "total_tokens": prompt + total});
    let id = format!("chatcmpl-sim{}", s.stats.requests.load(Ordering::Relaxed));
    let created = now();
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        let content = words(n);
        let choices: Vec<Value> = (0..choices)
            .map(|i| json!({"index": i, "message": {"role": "assistant", "content": content}, "finish_reason": finish}))
            .collect();
        return Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices,
            "usage": usage,
        }))
        .into_response();
    }
    let include_usage = req
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let chunk = move |index: u64, delta: Value, finish: Value| {
        let v = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]});
        v
    };
    let mut events: Vec<String> = Vec::with_capacity(((n + 2) * choices) as usize + 2);
    for c in 0..choices {
        events.push(chunk(c, json!({"role": "assistant", "content": ""}), Value::Null).to_string());
    }
    for i in 0..n {
        for c in 0..choices {
            let delta = json!({"content": WORDS[i as usize % WORDS.len()]});
            events.push(chunk(c, delta, Value::Null).to_string());
        }
    }
    let mut last = Value::Null;
    for c in 0..choices {
        last = chunk(c, json!({}), json!(finish));
        events.push(last.to_string());
    }
    if include_usage {
        last["choices"] = json!([]);
        last["usage"] = usage;
        events.push(last.to_string());
    }
    events.push("[DONE]".into());
    let events = events.into_iter().map(|e| format!("data: {e}\n\n"));
    sse(events.collect(), s.config.chunk_interval)
}

/// `n` words of plausible text.
fn words(n: u64) -> String {
    (0..n).map(|i| WORDS[i as usize % WORDS.len()]).collect()
}

impl SimState {
    /// How long one completion is and why it ends: the length asked for
    /// (`[sim:tokens=N]` or the configured one), cut at `cap` (then
    /// `"length"`, as OpenAI says when `max_tokens` cut the answer).
    fn completion(&self, text: &str, cap: Option<u64>) -> (u64, &'static str) {
        // Bounded: the simulator runs inside `serve --demo`, and a prompt
        // must not make it allocate without limit.
        let wanted = directive(text, "tokens")
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(self.config.completion_tokens)
            .min(MAX_COMPLETION_TOKENS);
        match cap {
            Some(cap) if cap < wanted => (cap, "length"),
            _ => (wanted, "stop"),
        }
    }
}

/// A streamed answer: the events in order, `interval` apart.
fn sse(events: Vec<String>, interval: Duration) -> Response {
    let body = futures_util::stream::unfold(
        (events.into_iter(), false),
        move |(mut it, started)| async move {
            let e = it.next()?;
            if started && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            Some((Ok::<_, std::io::Error>(Bytes::from(e)), (it, true)))
        },
    );
    let mut r = Response::new(Body::from_stream(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    r
}

/// `POST /v1/responses`: OpenAI's Responses API, streamed (typed events,
/// usage in `response.completed`) or not.
impl SimState {
    /// Counts and parses a request, remembers it, waits the latency and
    /// meets its model's faults; the body, its model and where to cut the
    /// answer, or what to answer instead.
    async fn take(&self, body: &[u8]) -> Result<(Value, String, Option<u32>), Response> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let req = serde_json::from_slice::<Value>(body).map_err(|_| not_json())?;
        *self.stats.last_body.lock() = Some(req.clone());
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        let model = req
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("sim")
            .to_string();
        let cut = self.meet(&model).await?;
        Ok((req, model, cut))
    }

    /// Draws this request's fault for `model` and meets it: an error to
    /// answer instead, a wait, or how many events to send before closing.
    async fn meet(&self, model: &str) -> Result<Option<u32>, Response> {
        let n = self.stats.by_model.next(model);
        let Some(fault) = self.config.faults.pick(model, n) else {
            return Ok(None);
        };
        self.stats.faults.fetch_add(1, Ordering::Relaxed);
        match fault {
            Fault::ServerError { status } => Err(error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "server_error",
                "server_error",
                "The server had an error while processing your request (simulated).",
            )),
            Fault::RateLimited { retry_after_secs } => {
                let mut r = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "requests",
                    "rate_limit_exceeded",
                    "Rate limit reached (simulated).",
                );
                if let Ok(v) = header::HeaderValue::from_str(&retry_after_secs.to_string()) {
                    r.headers_mut().insert("retry-after", v);
                }
                Err(r)
            }
            Fault::Hang => {
                let mut stopped = self.stopped.clone();
                // Returns once the simulator stops (its sender dropped).
                let _ = stopped.changed().await;
                Err(StatusCode::SERVICE_UNAVAILABLE.into_response())
            }
            Fault::Slow { delay_ms } => {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                Ok(None)
            }
            Fault::CloseMidStream { after_events } => Ok(Some(after_events)),
        }
    }
}

/// How long after its last bytes a cut answer's connection closes.
const CLOSE_AFTER: Duration = Duration::from_millis(20);

/// With `Some(k)`, the answer's connection closes part-way: a stream after
/// `k` events, any other body after half its bytes.
fn cut_after(cut: Option<u32>, r: Response) -> Response {
    let Some(k) = cut else {
        return r;
    };
    let streamed = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let (mut parts, body) = r.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    // The close comes a moment after the last bytes, so that they are
    // written out first (hyper drops unflushed bytes on a body error).
    let closed = || {
        futures_util::stream::once(async {
            tokio::time::sleep(CLOSE_AFTER).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "closed (simulated)",
            ))
        })
    };
    let body = if streamed {
        // `sse` sends one event per frame.
        let head = body
            .into_data_stream()
            .take(k as usize)
            .map(|f| f.map_err(std::io::Error::other));
        Body::from_stream(head.chain(closed()))
    } else {
        Body::from_stream(
            futures_util::stream::once(async move {
                let all = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .map_err(std::io::Error::other)?;
                Ok::<_, std::io::Error>(all.slice(..all.len() / 2))
            })
            .chain(closed()),
        )
    };
    Response::from_parts(parts, body)
}

async fn responses(State(s): State<Arc<SimState>>, body: Bytes) -> Response {
    let (req, model, cut) = match s.take(&body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    cut_after(cut, responses_answer(&s, req, model))
}

fn responses_answer(s: &SimState, req: Value, model: String) -> Response {
    let input = req.get("input").cloned().unwrap_or(Value::Null);
    let text = match &input {
        Value::String(t) => t.clone(),
        Value::Array(items) => last_text(items),
        _ => String::new(),
    };
    let instructions = req.get("instructions").and_then(Value::as_str);
    let prompt =
        Tokenizer::for_model(&model).responses_input(&input, instructions, req.get("tools"));
    let cap = req.get("max_output_tokens").and_then(Value::as_u64);
    let (n, finish) = s.completion(&text, cap);
    s.stats.completion_tokens.fetch_add(n, Ordering::Relaxed);
    let seq = s.stats.requests.load(Ordering::Relaxed);
    let (id, msg_id) = (format!("resp_sim{seq}"), format!("msg_sim{seq}"));
    let content = words(n);
    let cut = finish == "length";
    let item = |text: &str, status: &str| json!({"type": "message", "id": msg_id, "status": status, "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]});
    let response = |status: &str, output: Vec<Value>, usage: Value| {
        json!({
            "id": id, "object": "response", "created_at": now(), "status": status, "model": model,
            "output": output, "usage": usage, "error": null,
            "incomplete_details": if cut && status != "in_progress" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        })
    };
    let usage = json!({"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": n, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + n});
    let status = if cut { "incomplete" } else { "completed" };
    let done = response(status, vec![item(&content, status)], usage);
    if !req.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        return Json(done).into_response();
    }
    let mut events = vec![
        json!({"type": "response.created", "response": response("in_progress", vec![], Value::Null)}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": item("", "in_progress")}),
        json!({"type": "response.content_part.added", "item_id": msg_id, "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
    ];
    for i in 0..n {
        events.push(json!({"type": "response.output_text.delta", "item_id": msg_id, "output_index": 0, "content_index": 0, "delta": WORDS[i as usize % WORDS.len()]}));
    }
    events.push(json!({"type": "response.output_text.done", "item_id": msg_id, "output_index": 0, "content_index": 0, "text": content}));
    events.push(json!({"type": "response.content_part.done", "item_id": msg_id, "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": content, "annotations": []}}));
    events.push(json!({"type": "response.output_item.done", "output_index": 0, "item": item(&content, status)}));
    let last = if cut {
        "response.incomplete"
    } else {
        "response.completed"
    };
    events.push(json!({"type": last, "response": done}));
    let events = events
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e["sequence_number"] = json!(i);
            format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or(""))
        })
        .collect();
    sse(events, s.config.chunk_interval)
}

async fn embeddings(State(s): State<Arc<SimState>>, body: Bytes) -> Response {
    let (req, model, cut) = match s.take(&body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    cut_after(cut, embeddings_answer(req, model))
}

fn embeddings_answer(req: Value, model: String) -> Response {
    let input = req.get("input").cloned().unwrap_or(Value::Null);
    let tokens = Tokenizer::for_model(&model)
        .embeddings_input(&input)
        .unwrap_or(0);
    let count = match &input {
        Value::Array(a) if a.iter().all(|x| !x.is_number()) => a.len(),
        _ => 1,
    };
    let base64 = match req.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(f) if f == "float" => false,
        Some(f) if f == "base64" => true,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_value",
                "encoding_format must be \"float\" or \"base64\"",
            )
        }
    };
    let vector = [0.1f32, -0.2, 0.3, 0.05, 0.0, 0.7, -0.4, 0.2];
    let embedding = if base64 {
        json!(embedding_base64(&vector))
    } else {
        json!(vector)
    };
    let data: Vec<Value> = (0..count)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": embedding}))
        .collect();
    Json(json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})).into_response()
}

/// An embedding as OpenAI sends it for `encoding_format: "base64"`: the
/// base64 of the vector's little-endian `f32` bytes.
pub fn embedding_base64(vector: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_embeddings_are_little_endian_f32() {
        // 1.0f32 is 0x3f800000: bytes 00 00 80 3f.
        assert_eq!(embedding_base64(&[1.0]), "AACAPw==");
    }
}
