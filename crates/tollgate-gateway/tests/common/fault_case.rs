//! What the fault tests share: a gateway in front of a faulty upstream
//! (`faulty_upstream.rs`) serving one client, the checks of what a request
//! was charged and counted, the log lines the gateway wrote, and readers of
//! event streams.
#![allow(dead_code)]

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};

use super::faulty_upstream::{Fault, FaultyUpstream};
use super::*;

/// "hello world" as the gateway estimates it: 9 input tokens.
pub const INPUT_ESTIMATE: u64 = 9;
pub const MODEL: &str = "gpt-4o-mini";

/// Every log line of this test binary, kept for the tests to read.
static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.get_or_init(Default::default)
            .lock()
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .try_init();
    });
}

/// Log lines naming client `who` that contain every one of `words`.
pub fn logged(who: &str, words: &[&str]) -> bool {
    let logs = LOGS.get_or_init(Default::default).lock();
    let text = String::from_utf8_lossy(&logs);
    let client = format!("client={who}");
    text.lines()
        .any(|l| l.split_whitespace().any(|w| w == client) && words.iter().all(|w| l.contains(w)))
}

/// One faulty upstream and a gateway in front of it, serving client `who`
/// (its tier has the same name), with short upstream timeouts: the first
/// byte of a stream within 1 s, 0.5 s at most between chunks, 2 s in all.
pub struct Case {
    pub up: FaultyUpstream,
    pub gw: tollgate_gateway::RunningGateway,
    pub c: reqwest::Client,
    pub who: &'static str,
}

pub async fn case(fault: Fault, who: &'static str) -> Case {
    case_with(fault, who, pro_tier()).await
}

pub async fn case_with(
    fault: Fault,
    who: &'static str,
    t: tollgate_gateway::config::TierConfig,
) -> Case {
    capture_logs();
    let up = FaultyUpstream::start(fault).await;
    let mut m = model(1000, 1_000_000);
    m.context_window = 128_000;
    let mut cfg = config(&up.base_url(), m, &[(who, t)]);
    cfg.server.upstream_first_byte_timeout_secs = 1.0;
    cfg.server.upstream_idle_timeout_secs = 0.5;
    cfg.server.upstream_timeout_secs = 2.0;
    Case {
        up,
        gw: gateway(cfg).await,
        c: http(),
        who,
    }
}

impl Case {
    /// Sends a chat request and leaves after 300 ms, before its answer.
    pub async fn chat_and_leave(&self, body: &Value) {
        let url = format!("{}/v1/chat/completions", self.gw.url());
        let left = self
            .c
            .post(&url)
            .bearer_auth(format!("key-{}", self.who))
            .json(body)
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        assert!(
            left.is_err_and(|e| e.is_timeout()),
            "left before the answer"
        );
    }

    pub async fn chat(&self, body: &Value) -> reqwest::Response {
        chat(&self.c, &self.gw, self.who, body).await
    }

    pub fn counter(&self, name: &'static str, labels: &[(&str, &str)]) -> f64 {
        self.gw.gateway.metrics.counter(name, labels)
    }

    pub fn outcomes(&self, outcome: &str) -> f64 {
        self.counter(
            "tollgate_requests_total",
            &[
                ("client", self.who),
                ("tier", self.who),
                ("model", MODEL),
                ("outcome", outcome),
            ],
        )
    }

    pub fn tokens(&self) -> (u64, u64) {
        let dir = |d| {
            self.counter(
                "tollgate_tokens_total",
                &[("client", self.who), ("model", MODEL), ("direction", d)],
            ) as u64
        };
        (dir("input"), dir("output"))
    }

    /// Waits for `n` requests to be counted with `outcome` and for their
    /// settlement, then checks the charge: `tokens` (input, output) in the
    /// metrics, the spend at $1/M in and $2/M out, and nothing reserved
    /// beyond it in the client's or the model's bucket.
    pub async fn charged(&self, outcome: &str, n: f64, tokens: (u64, u64)) {
        let want_usd = (tokens.0 as f64 + 2.0 * tokens.1 as f64) / 1e6;
        poll(
            200,
            Duration::from_millis(10),
            || async {
                (
                    self.outcomes(outcome),
                    spend(&self.gw, self.who).await,
                    self.tokens(),
                )
            },
            |(got, usd, t)| *got >= n && (usd - want_usd).abs() < 1e-12 && *t == tokens,
        )
        .await;
        assert_eq!(self.outcomes(outcome), n, "requests counted {outcome}");
        assert_eq!(self.tokens(), tokens, "tokens charged (input, output)");
        let usd = spend(&self.gw, self.who).await;
        assert!(
            (usd - want_usd).abs() < 1e-12,
            "spend {usd}, want {want_usd}"
        );
        let settled = (tokens.0 + tokens.1) as f64;
        let (_, client_tokens) = client_in_use(&self.gw, self.who).await;
        let (_, model_tokens) = model_in_use(&self.gw, MODEL).await;
        assert!(
            client_tokens <= settled + 1e-6 && model_tokens <= settled + 1e-6,
            "nothing reserved beyond the charge of {settled}: client {client_tokens}, model {model_tokens}"
        );
    }
}

impl Case {
    /// Checks that the gateway has closed `n` upstream connections so far
    /// while the upstream still meant to answer.
    pub async fn upstream_saw_close(&self, n: u64) {
        let closed = || self.up.stats.closed_early.load(Ordering::SeqCst);
        let got = poll(
            50,
            Duration::from_millis(10),
            || async { closed() },
            |c| *c == n,
        )
        .await;
        assert_eq!(got, n, "upstream connections closed by the gateway");
    }
}

pub fn streamed(max_tokens: u64, usage: bool) -> Value {
    let mut b = chat_body("hello world", max_tokens);
    b["stream"] = json!(true);
    if usage {
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

/// The `data:` payloads of an event stream, in order.
pub fn data_lines(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(String::from)
        .collect()
}

/// The text the content chunks of `events` carry.
pub fn content_of(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

/// Checks that a stream ended with one error event of `code` in OpenAI's
/// shape and no `[DONE]`; returns the events before it.
pub fn ends_with_error(text: &str, code: &str) -> Vec<String> {
    let mut events = data_lines(text);
    let last: Value =
        serde_json::from_str(events.pop().as_deref().unwrap_or("")).expect("a JSON last event");
    assert_eq!(last["error"]["code"], code, "{text}");
    assert_eq!(last["error"]["type"], "server_error", "{text}");
    assert!(
        last["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("retry")),
        "{text}"
    );
    assert!(!events.iter().any(|e| e == "[DONE]"), "{text}");
    events
}

/// POSTs a Responses API request as the case's client.
pub async fn respond(k: &Case, stream: bool) -> reqwest::Response {
    let body = json!({"model": MODEL, "input": "hello world", "max_output_tokens": 16_000, "stream": stream});
    send(
        k.c.post(format!("{}/v1/responses", k.gw.url()))
            .bearer_auth(format!("key-{}", k.who))
            .json(&body),
    )
    .await
}
