//! An OpenAI-compatible upstream that misbehaves in one chosen way: a real
//! HTTP/1.1 server on a loopback port, written on raw TCP so that it can do
//! what no well-behaved server library would (cut a body off, lie about its
//! encoding, send headers and then nothing). Every answer closes its
//! connection.
//!
//! A well answer is "Hi there!" (3 tokens: `Hi`, ` there`, `!`) with usage
//! 11 prompt / 3 completion tokens; streamed, it is a role chunk, one chunk
//! per token, a `finish_reason` chunk, the usage chunk when the request asked
//! for it, and `[DONE]`.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The text of a well answer, one token per piece.
pub const PIECES: [&str; 3] = ["Hi", " there", "!"];
/// The usage a well answer reports.
pub const USAGE: (u64, u64) = (11, 3);

/// How the upstream answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// A correct answer, its JSON written with spaces (`"usage": {`) or
    /// compact.
    Well {
        /// `", "` and `": "` between items, as Python's `json.dumps` writes.
        spaced: bool,
    },
    /// A correct answer, gzip-compressed with `Content-Encoding: gzip`.
    Gzip,
    /// A correct answer, uncompressed, labelled with an encoding the
    /// gateway does not ask for (`Content-Encoding: zstd`).
    Zstd,
    /// An answer without usage (no usage chunk when streamed).
    NoUsage,
    /// A 200 whose body is HTML, labelled `application/json`.
    NotJson,
    /// Usage reporting this many completion tokens.
    Usage(u64),
    /// An error status with this `Retry-After` (if any) and OpenAI's body.
    Status(u16, Option<&'static str>),
    /// A stream without `Content-Length` or chunked encoding, closed after
    /// the role chunk and one token.
    CutClose,
    /// A chunked stream that stops after the role chunk and one token,
    /// without the closing chunk.
    CutChunked,
    /// A complete stream with one `data:` line that is not JSON after the
    /// first token.
    Malformed,
    /// A complete stream (`finish_reason`, usage) that ends without `[DONE]`.
    NoDone,
    /// Headers of a stream, then nothing.
    Silent,
    /// An error status whose body starts and then stops coming.
    StatusThenSilence(u16),
    /// Reads the request and never answers.
    NoHeaders,
    /// A correct stream with this pause before each event.
    Drip(Duration),
    /// A correct answer after this delay.
    Slow(Duration),
}

/// What the upstream saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests read.
    pub requests: AtomicU64,
    /// Connections the gateway closed while this upstream was still
    /// answering or waiting to.
    pub closed_early: AtomicU64,
    /// The last request body.
    pub last_body: Mutex<Option<Value>>,
    /// The last request's `Accept-Encoding`.
    pub last_accept_encoding: Mutex<Option<String>>,
}

/// A running faulty upstream; dropping it stops accepting connections.
pub struct FaultyUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub stats: Arc<Stats>,
    fault: Arc<Mutex<Fault>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultyUpstream {
    /// Starts on a free loopback port, answering as `fault` says.
    pub async fn start(fault: Fault) -> FaultyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let fault = Arc::new(Mutex::new(fault));
        let (s, f) = (stats.clone(), fault.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (s, f) = (s.clone(), f.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, &s, &f).await;
                });
            }
        });
        FaultyUpstream {
            addr,
            stats,
            fault,
            task,
        }
    }

    /// The base URL to configure (`http://ADDR/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Answers the next requests as `fault` says.
    pub fn set(&self, fault: Fault) {
        *self.fault.lock() = fault;
    }

    /// Stops listening: connections are refused from now on.
    pub async fn stop(&self) {
        self.task.abort();
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Requests read so far.
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::SeqCst)
    }
}

/// One request as read: its path, headers (lower-cased names) and JSON body.
struct Request {
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

/// Reads one request.
async fn read_request(conn: &mut TcpStream) -> std::io::Result<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
    Ok(Request {
        path,
        headers,
        body,
    })
}

/// Waits until the peer closes the connection, or `d` passes; returns
/// whether it closed.
async fn closed_within(conn: &mut TcpStream, d: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(d, conn.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn serve(mut conn: TcpStream, stats: &Stats, fault: &Mutex<Fault>) -> std::io::Result<()> {
    let Request {
        path,
        headers,
        body,
    } = read_request(&mut conn).await?;
    let responses_api = path.ends_with("/responses");
    stats.requests.fetch_add(1, Ordering::SeqCst);
    *stats.last_accept_encoding.lock() = headers
        .iter()
        .find(|(k, _)| k == "accept-encoding")
        .map(|(_, v)| v.clone());
    *stats.last_body.lock() = Some(body.clone());
    let fault = fault.lock().clone();
    let stream = body["stream"].as_bool().unwrap_or(false);
    let wants_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let model = body["model"].as_str().unwrap_or("m").to_string();
    let forever = Duration::from_secs(3600);
    let note_close = |closed: bool| {
        if closed {
            stats.closed_early.fetch_add(1, Ordering::SeqCst);
        }
    };
    match fault {
        Fault::NoHeaders => {
            note_close(closed_within(&mut conn, forever).await);
            return Ok(());
        }
        Fault::Status(status, retry_after) => {
            let body = json!({"error": {"message": format!("upstream says {status}"), "type": "requests", "param": null, "code": "rate_limit_exceeded"}}).to_string();
            let retry = retry_after.map_or(String::new(), |r| format!("Retry-After: {r}\r\n"));
            let head = format!("HTTP/1.1 {status} Error\r\nContent-Type: application/json\r\n{retry}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            conn.write_all(head.as_bytes()).await?;
            conn.write_all(body.as_bytes()).await?;
            return Ok(());
        }
        Fault::StatusThenSilence(status) => {
            let head = format!("HTTP/1.1 {status} Error\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"error\": {{\"message\": ");
            conn.write_all(head.as_bytes()).await?;
            note_close(closed_within(&mut conn, forever).await);
            return Ok(());
        }
        Fault::Slow(d) if closed_within(&mut conn, d).await => {
            note_close(true);
            return Ok(());
        }
        _ => {}
    }
    let usage = match fault {
        Fault::NoUsage => None,
        Fault::Usage(out) => Some((USAGE.0, out)),
        _ => Some(USAGE),
    };
    let spaced = matches!(fault, Fault::Well { spaced: true });
    if !stream {
        let body = match fault {
            Fault::NotJson => b"<html><body>502 Bad Gateway</body></html>".to_vec(),
            _ if responses_api => write_json(&response(&model, usage), spaced).into_bytes(),
            _ => write_json(&answer(&model, usage), spaced).into_bytes(),
        };
        let (body, enc) = match fault {
            Fault::Gzip => (gzip(&body), "Content-Encoding: gzip\r\n"),
            Fault::Zstd => (body, "Content-Encoding: zstd\r\n"),
            _ => (body, ""),
        };
        let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{enc}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        conn.write_all(head.as_bytes()).await?;
        conn.write_all(&body).await?;
        return Ok(());
    }
    let mut events: Vec<String> = Vec::new();
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({"id": "chatcmpl-faulty", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        if wants_usage && spaced {
            // OpenAI's own chunks carry `"usage": null` when usage was asked for.
            c["usage"] = Value::Null;
        }
        format!("data: {}\n\n", write_json(&c, spaced))
    };
    events.push(chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ));
    for (i, p) in PIECES.iter().enumerate() {
        events.push(chunk(json!({ "content": p }), Value::Null));
        if i == 0 && fault == Fault::Malformed {
            events.push("data: {\"choices\": [{\"delta\": {\"content\": \"x\"\n\n".into());
        }
    }
    events.push(chunk(json!({}), json!("stop")));
    if let (true, Some((i, o))) = (wants_usage, usage) {
        let u = json!({"id": "chatcmpl-faulty", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [],
            "usage": {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o}});
        events.push(format!("data: {}\n\n", write_json(&u, spaced)));
    }
    events.push("data: [DONE]\n\n".into());
    if fault == Fault::NoDone {
        events.pop();
    }
    if responses_api {
        events = response_events(&model, usage, spaced);
    }
    if matches!(fault, Fault::CutClose | Fault::CutChunked) {
        events.truncate(2);
    }
    if fault == Fault::NotJson {
        events = vec!["<html><body>502 Bad Gateway</body></html>".into()];
    }
    let close_delimited = fault == Fault::CutClose;
    let framing = if close_delimited {
        ""
    } else {
        "Transfer-Encoding: chunked\r\n"
    };
    let (ctype, enc) = match fault {
        Fault::NotJson => ("text/html", ""),
        Fault::Gzip => ("text/event-stream", "Content-Encoding: gzip\r\n"),
        Fault::Zstd => ("text/event-stream", "Content-Encoding: zstd\r\n"),
        _ => ("text/event-stream", ""),
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n{enc}{framing}Connection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await?;
    if fault == Fault::Silent {
        conn.flush().await?;
        note_close(closed_within(&mut conn, forever).await);
        return Ok(());
    }
    if fault == Fault::Gzip {
        write_chunk(&mut conn, &gzip(events.concat().as_bytes())).await?;
        conn.write_all(b"0\r\n\r\n").await?;
        return Ok(());
    }
    for e in &events {
        if let Fault::Drip(d) = fault {
            if closed_within(&mut conn, d).await {
                note_close(true);
                return Ok(());
            }
        }
        if close_delimited {
            conn.write_all(e.as_bytes()).await?;
        } else {
            write_chunk(&mut conn, e.as_bytes()).await?;
        }
        conn.flush().await?;
    }
    if !matches!(fault, Fault::CutClose | Fault::CutChunked) {
        conn.write_all(b"0\r\n\r\n").await?;
    }
    conn.flush().await?;
    // Let the last bytes leave before the connection is closed.
    tokio::time::sleep(Duration::from_millis(5)).await;
    Ok(())
}

async fn write_chunk(conn: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    conn.write_all(format!("{:x}\r\n", bytes.len()).as_bytes())
        .await?;
    conn.write_all(bytes).await?;
    conn.write_all(b"\r\n").await
}

/// A whole answer of the Responses API.
fn response(model: &str, usage: Option<(u64, u64)>) -> Value {
    let mut v = json!({"id": "resp_faulty", "object": "response", "created_at": 0, "status": "completed", "model": model,
        "output": [{"type": "message", "id": "msg_faulty", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": PIECES.concat(), "annotations": []}]}]});
    if let Some((i, o)) = usage {
        v["usage"] = json!({"input_tokens": i, "output_tokens": o, "total_tokens": i + o});
    }
    v
}

/// A streamed answer of the Responses API: created, one text delta per
/// token, completed (with the usage, if any).
fn response_events(model: &str, usage: Option<(u64, u64)>, spaced: bool) -> Vec<String> {
    let event = |v: Value| {
        let kind = v["type"].as_str().unwrap();
        format!("event: {kind}\ndata: {}\n\n", write_json(&v, spaced))
    };
    let mut created = response(model, None);
    created["status"] = json!("in_progress");
    created["output"] = json!([]);
    let mut events = vec![event(
        json!({"type": "response.created", "sequence_number": 0, "response": created}),
    )];
    for (i, p) in PIECES.iter().enumerate() {
        events.push(event(json!({"type": "response.output_text.delta", "sequence_number": i + 1,
            "item_id": "msg_faulty", "output_index": 0, "content_index": 0, "delta": p, "logprobs": []})));
    }
    events.push(event(json!({"type": "response.completed", "sequence_number": 4, "response": response(model, usage)})));
    events
}

/// A whole chat answer.
fn answer(model: &str, usage: Option<(u64, u64)>) -> Value {
    let mut v = json!({"id": "chatcmpl-faulty", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": PIECES.concat()}, "finish_reason": "stop"}]});
    if let Some((i, o)) = usage {
        v["usage"] = json!({"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o});
    }
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// JSON on one line, with `", "` and `": "` separators when `spaced`.
pub fn write_json(v: &Value, spaced: bool) -> String {
    if !spaced {
        return v.to_string();
    }
    match v {
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(|i| write_json(i, true)).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), write_json(v, true)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
        other => other.to_string(),
    }
}
