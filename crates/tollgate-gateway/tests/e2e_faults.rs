//! The gateway in front of an upstream that misbehaves, one way per test
//! (`common/faulty_upstream.rs`, a real HTTP server on loopback). Each test
//! checks what the client gets (status, body or events, headers), what is
//! charged (tokens and spend), what the metrics and the log say, and that
//! nothing stays reserved.

mod common;
#[path = "common/faulty_upstream.rs"]
mod faulty_upstream;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use faulty_upstream::{Fault, FaultyUpstream, USAGE};
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::{json, Value};

/// "hello world" as the gateway estimates it: 9 input tokens.
const INPUT_ESTIMATE: u64 = 9;
const MODEL: &str = "gpt-4o-mini";

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

fn capture_logs() {
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
fn logged(who: &str, words: &[&str]) -> bool {
    let logs = LOGS.get_or_init(Default::default).lock();
    let text = String::from_utf8_lossy(&logs);
    let client = format!("client={who}");
    text.lines()
        .any(|l| l.split_whitespace().any(|w| w == client) && words.iter().all(|w| l.contains(w)))
}

/// One faulty upstream and a gateway in front of it, serving client `who`
/// (its tier has the same name), with short upstream timeouts: the first
/// byte of a stream within 1 s, 0.5 s at most between chunks, 2 s in all.
struct Case {
    up: FaultyUpstream,
    gw: tollgate_gateway::RunningGateway,
    c: reqwest::Client,
    who: &'static str,
}

async fn case(fault: Fault, who: &'static str) -> Case {
    case_with(fault, who, pro_tier()).await
}

async fn case_with(
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
    async fn chat(&self, body: &Value) -> reqwest::Response {
        chat(&self.c, &self.gw, self.who, body).await
    }

    fn counter(&self, name: &'static str, labels: &[(&str, &str)]) -> f64 {
        self.gw.gateway.metrics.counter(name, labels)
    }

    fn outcomes(&self, outcome: &str) -> f64 {
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

    fn tokens(&self) -> (u64, u64) {
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
    async fn charged(&self, outcome: &str, n: f64, tokens: (u64, u64)) {
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
    /// Checks that the gateway closed the upstream connection while the
    /// upstream still meant to answer.
    async fn upstream_saw_close(&self) {
        let closed = || self.up.stats.closed_early.load(Ordering::SeqCst);
        let n = poll(
            50,
            Duration::from_millis(10),
            || async { closed() },
            |n| *n == 1,
        )
        .await;
        assert_eq!(n, 1, "the upstream connection was closed");
    }
}

fn streamed(max_tokens: u64, usage: bool) -> Value {
    let mut b = chat_body("hello world", max_tokens);
    b["stream"] = json!(true);
    if usage {
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

/// The `data:` payloads of an event stream, in order.
fn data_lines(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(String::from)
        .collect()
}

/// The text the content chunks of `events` carry.
fn content_of(events: &[String]) -> String {
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
fn ends_with_error(text: &str, code: &str) -> Vec<String> {
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

#[tokio::test]
async fn a_gzip_answer_is_decoded_for_the_client_and_charged_the_upstreams_usage() {
    let k = case(Fault::Gzip, "gzip").await;
    let r = k.chat(&chat_body("hello world", 16_000)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-encoding"), None);
    let v: Value = r.json().await.expect("plain JSON");
    assert_eq!(v["choices"][0]["message"]["content"], "Hi there!");
    let r = k.chat(&streamed(16_000, true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-encoding"), None);
    let events = data_lines(&r.text().await.unwrap());
    assert_eq!(content_of(&events), "Hi there!");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let asked =
        k.up.stats
            .last_accept_encoding
            .lock()
            .clone()
            .unwrap_or_default();
    assert!(
        asked.contains("gzip"),
        "the gateway says what it decodes: {asked:?}"
    );
    k.charged("ok", 2.0, (2 * USAGE.0, 2 * USAGE.1)).await;
}

#[tokio::test]
async fn an_answer_in_an_encoding_the_gateway_cannot_decode_is_a_502() {
    let k = case(Fault::Zstd, "zstd").await;
    for body in [chat_body("hello world", 16_000), streamed(16_000, false)] {
        let e = expect_error(k.chat(&body).await, 502, "upstream_bad_body").await;
        assert!(e["message"].as_str().unwrap().contains("zstd"), "{e}");
    }
    k.charged("upstream_bad_body", 2.0, (2 * INPUT_ESTIMATE, 0))
        .await;
    assert!(logged("zstd", &["outcome=\"upstream_bad_body\""]));
}

#[tokio::test]
async fn an_answer_without_usage_is_charged_the_tokens_it_carried_streamed_or_not() {
    let k = case(Fault::NoUsage, "nousage").await;
    let r = k.chat(&chat_body("hello world", 16_000)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hi there!");
    for usage in [false, true] {
        let r = k.chat(&streamed(16_000, usage)).await;
        let events = data_lines(&r.text().await.unwrap());
        assert_eq!(content_of(&events), "Hi there!");
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    }
    // Input as estimated, output as counted: 3 tokens, not the 16,000 asked.
    k.charged("ok", 3.0, (3 * INPUT_ESTIMATE, 3 * 3)).await;
    assert_eq!(
        k.counter("tollgate_usage_missing_total", &[("model", MODEL)]),
        3.0
    );
    assert!(logged("nousage", &["without usage"]));
}

#[tokio::test]
async fn a_200_that_is_not_json_is_a_502_in_openai_shape_streamed_or_not() {
    let k = case(Fault::NotJson, "notjson").await;
    for body in [chat_body("hello world", 16_000), streamed(16_000, false)] {
        let r = k.chat(&body).await;
        assert!(header(&r, "x-ratelimit-remaining-requests").is_some());
        let e = expect_error(r, 502, "upstream_bad_body").await;
        assert_eq!(e["type"], "server_error");
    }
    // It reached the upstream: its input is charged, no output.
    k.charged("upstream_bad_body", 2.0, (2 * INPUT_ESTIMATE, 0))
        .await;
    assert!(logged("notjson", &["outcome=\"upstream_bad_body\""]));
}

#[tokio::test]
async fn usage_beyond_max_tokens_is_flagged_and_charged_at_most_max_tokens_times_n() {
    let k = case(Fault::Usage(50_000), "overmax").await;
    let r = k.chat(&chat_body("hello world", 10)).await;
    assert_eq!(r.status(), 200);
    let mut two = streamed(10, false);
    two["n"] = json!(2);
    let r = k.chat(&two).await;
    assert!(!r.text().await.unwrap().contains("usage"));
    // 10 and 2 x 10 output tokens, not 2 x 50,000.
    k.charged("ok", 2.0, (2 * USAGE.0, 10 + 20)).await;
    assert_eq!(
        k.counter("tollgate_usage_over_limit_total", &[("model", MODEL)]),
        2.0
    );
    assert!(logged("overmax", &["beyond max_tokens", "reported=50000"]));
}

#[tokio::test]
async fn an_upstream_429_or_503_with_retry_after_pauses_the_model_and_the_client_is_told() {
    let k = case(Fault::Status(429, Some("1")), "paused").await;
    for (status, code) in [(429, "rate_limit_exceeded"), (503, "rate_limit_exceeded")] {
        k.up.set(Fault::Status(status, Some("1")));
        let before = k.up.requests();
        let r = k.chat(&chat_body("hello world", 100)).await;
        assert_eq!(header(&r, "retry-after"), Some("1"));
        expect_error(r, status, code).await;
        // Nothing more reaches the upstream for that second.
        k.up.set(Fault::Well { spaced: false });
        let t = Instant::now();
        let r = k.chat(&chat_body("hello world", 100)).await;
        assert_eq!(header(&r, "retry-after"), Some("1"));
        expect_error(r, status, "upstream_paused").await;
        assert_eq!(k.up.requests(), before + 1, "held back");
        tokio::time::sleep(Duration::from_millis(1050).saturating_sub(t.elapsed())).await;
        let r = k.chat(&chat_body("hello world", 100)).await;
        assert_eq!(r.status(), 200, "traffic resumes after the pause");
    }
    k.charged("ok", 2.0, (2 * USAGE.0, 2 * USAGE.1)).await;
    assert_eq!(k.outcomes("upstream_rate_limited"), 2.0);
    assert_eq!(k.outcomes("upstream_error"), 2.0);
    assert!(logged(
        "paused",
        &["outcome=\"upstream_rate_limited\"", "stage=\"upstream\""]
    ));
}

#[tokio::test]
async fn a_request_whose_tier_may_wait_waits_out_an_upstream_pause() {
    let mut patient = pro_tier();
    patient.max_wait_ms = 5_000;
    let k = case_with(Fault::Status(429, Some("1")), "patient", patient).await;
    let r = k.chat(&chat_body("hello world", 100)).await;
    expect_error(r, 429, "rate_limit_exceeded").await;
    k.up.set(Fault::Well { spaced: false });
    let t = Instant::now();
    let r = k.chat(&chat_body("hello world", 100)).await;
    assert_eq!(r.status(), 200);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "waited {:?}",
        t.elapsed()
    );
    assert_eq!(k.up.requests(), 2);
    k.charged("ok", 1.0, USAGE).await;
}

async fn cut_stream_ends_with_an_error_event(fault: Fault, who: &'static str) {
    let k = case(fault, who).await;
    let r = k.chat(&streamed(16_000, true)).await;
    assert_eq!(r.status(), 200);
    let text = r
        .text()
        .await
        .expect("the body ends cleanly, with the error event");
    let events = ends_with_error(&text, "stream_broken");
    assert_eq!(content_of(&events), "Hi");
    // The input as estimated and the one token it carried.
    k.charged("stream_broken", 1.0, (INPUT_ESTIMATE, 1)).await;
    assert!(logged(
        who,
        &["outcome=\"stream_broken\"", "stage=\"streaming\""]
    ));
}

#[tokio::test]
async fn a_close_delimited_stream_cut_off_ends_with_an_error_event() {
    cut_stream_ends_with_an_error_event(Fault::CutClose, "cutclose").await;
}

#[tokio::test]
async fn a_chunked_stream_that_breaks_off_ends_with_an_error_event() {
    cut_stream_ends_with_an_error_event(Fault::CutChunked, "cutchunked").await;
}

#[tokio::test]
async fn a_malformed_data_line_is_dropped_and_counted_and_the_rest_passes() {
    let k = case(Fault::Malformed, "malformed").await;
    let r = k.chat(&streamed(16_000, false)).await;
    let text = r.text().await.unwrap();
    let events = data_lines(&text);
    assert!(
        events
            .iter()
            .all(|e| e == "[DONE]" || serde_json::from_str::<Value>(e).is_ok()),
        "only JSON is forwarded: {text}"
    );
    assert_eq!(content_of(&events), "Hi there!");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(!text.contains("usage"), "{text}");
    k.charged("ok", 1.0, USAGE).await;
    assert_eq!(
        k.counter("tollgate_stream_malformed_lines_total", &[("model", MODEL)]),
        1.0
    );
    assert!(logged("malformed", &["not JSON", "lines=1"]));
}

#[tokio::test]
async fn a_finished_stream_without_done_is_complete_and_gets_its_done() {
    let k = case(Fault::NoDone, "nodone").await;
    let text = k.chat(&streamed(16_000, true)).await.text().await.unwrap();
    let events = data_lines(&text);
    assert_eq!(content_of(&events), "Hi there!");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
    k.charged("ok", 1.0, USAGE).await;
}

#[tokio::test]
async fn headers_then_silence_end_with_a_timeout_event_after_the_first_byte_timeout() {
    let k = case(Fault::Silent, "silent").await;
    let t = Instant::now();
    let r = k.chat(&streamed(16_000, false)).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(1900),
        "ended after the 1 s first-byte timeout, not the 2 s total: {waited:?}"
    );
    assert!(ends_with_error(&text, "upstream_timeout").is_empty());
    k.charged("upstream_timeout", 1.0, (INPUT_ESTIMATE, 0))
        .await;
    k.upstream_saw_close().await;
    assert!(logged("silent", &["outcome=\"upstream_timeout\""]));
}

#[tokio::test]
async fn a_stream_silent_between_chunks_ends_with_a_timeout_event() {
    // The first event comes within the 1 s first-byte timeout, the next
    // would come 0.8 s later: past the 0.5 s between chunks.
    let k = case(Fault::Drip(Duration::from_millis(800)), "idle").await;
    let t = Instant::now();
    let text = k.chat(&streamed(16_000, false)).await.text().await.unwrap();
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1200) && waited < Duration::from_millis(1600),
        "{waited:?}"
    );
    let events = ends_with_error(&text, "upstream_timeout");
    assert_eq!(events.len(), 1, "the role chunk, then the error: {text}");
    k.charged("upstream_timeout", 1.0, (INPUT_ESTIMATE, 0))
        .await;
    k.upstream_saw_close().await;
    assert!(logged(
        "idle",
        &["outcome=\"upstream_timeout\"", "stage=\"streaming\""]
    ));
}

#[tokio::test]
async fn no_headers_is_a_504_after_the_first_byte_or_the_total_timeout() {
    let k = case(Fault::NoHeaders, "noheaders").await;
    for (body, within) in [
        (streamed(16_000, false), Duration::from_secs(1)),
        (chat_body("hello world", 16_000), Duration::from_secs(2)),
    ] {
        let t = Instant::now();
        let r = k.chat(&body).await;
        let waited = t.elapsed();
        assert!(
            waited >= within.mul_f64(0.9) && waited < within + Duration::from_millis(900),
            "answered after {waited:?}, timeout {within:?}"
        );
        let e = expect_error(r, 504, "upstream_timeout").await;
        assert!(!e["message"]
            .as_str()
            .unwrap()
            .contains("could not be reached"));
    }
    k.charged("upstream_timeout", 2.0, (2 * INPUT_ESTIMATE, 0))
        .await;
    assert!(logged("noheaders", &["outcome=\"upstream_timeout\""]));
}

#[tokio::test]
async fn a_slow_drip_stream_passes_through_chunk_by_chunk() {
    let k = case(Fault::Drip(Duration::from_millis(150)), "drip").await;
    let r = k.chat(&streamed(16_000, true)).await;
    let mut s = r.bytes_stream();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = s.next().await {
        let chunk = String::from_utf8(chunk.unwrap().to_vec()).unwrap();
        arrivals.push((Instant::now(), chunk.matches("data: ").count()));
        text.push_str(&chunk);
    }
    let events = data_lines(&text);
    assert_eq!(content_of(&events), "Hi there!");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    // Each event came on its own, as the upstream sent it (150 ms apart).
    assert!(arrivals.iter().all(|(_, n)| *n == 1), "{arrivals:?}");
    let spread = arrivals.last().unwrap().0 - arrivals[0].0;
    assert!(spread >= Duration::from_millis(600), "{spread:?}");
    k.charged("ok", 1.0, USAGE).await;
}

#[tokio::test]
async fn a_client_that_leaves_a_slow_answer_is_billed_its_input_and_counted_client_gone() {
    let k = case(Fault::Slow(Duration::from_secs(5)), "gone").await;
    let url = format!("{}/v1/chat/completions", k.gw.url());
    let left =
        k.c.post(&url)
            .bearer_auth("key-gone")
            .json(&chat_body("hello world", 16_000))
            .timeout(Duration::from_millis(300))
            .send()
            .await;
    assert!(left.is_err_and(|e| e.is_timeout()));
    k.charged("client_gone", 1.0, (INPUT_ESTIMATE, 0)).await;
    k.upstream_saw_close().await;
    assert!(logged("gone", &["client went away", "stage=\"upstream\""]));

    // Mid-stream: the input and the tokens sent so far.
    k.up.set(Fault::Drip(Duration::from_millis(100)));
    let r = k.chat(&streamed(16_000, false)).await;
    let mut s = r.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("\"Hi\"") {
        seen.push_str(&String::from_utf8_lossy(&s.next().await.unwrap().unwrap()));
    }
    drop(s);
    k.charged("client_gone", 2.0, (2 * INPUT_ESTIMATE, 1)).await;
    assert!(logged("gone", &["client went away", "stage=\"streaming\""]));
}

#[tokio::test]
async fn a_client_that_leaves_while_queued_is_counted_and_charged_nothing() {
    // One request a minute, and a tier that may wait that long: the second
    // request waits a minute for its slot.
    let k = case_with(
        Fault::Well { spaced: false },
        "queued",
        tier(1, 100_000, 0, 120_000),
    )
    .await;
    assert_eq!(k.chat(&chat_body("hello world", 100)).await.status(), 200);
    let url = format!("{}/v1/chat/completions", k.gw.url());
    let left =
        k.c.post(&url)
            .bearer_auth("key-queued")
            .json(&chat_body("hello world", 100))
            .timeout(Duration::from_millis(300))
            .send()
            .await;
    assert!(left.is_err_and(|e| e.is_timeout()));
    k.charged("client_gone", 1.0, USAGE).await;
    assert_eq!(k.up.requests(), 1, "the queued request never went upstream");
    assert_eq!(k.outcomes("ok"), 1.0);
    assert!(logged("queued", &["client went away", "stage=\"queued\""]));
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_and_costs_nothing() {
    let k = case(Fault::Well { spaced: false }, "unreachable").await;
    k.up.stop().await;
    for body in [chat_body("hello world", 16_000), streamed(16_000, false)] {
        let e = expect_error(k.chat(&body).await, 502, "upstream_unreachable").await;
        assert!(e["message"]
            .as_str()
            .unwrap()
            .contains("could not be reached"));
    }
    k.charged("upstream_error", 2.0, (0, 0)).await;
    assert!(logged("unreachable", &["outcome=\"upstream_error\""]));
}

/// POSTs a Responses API request as the case's client.
async fn respond(k: &Case, stream: bool) -> reqwest::Response {
    let body = json!({"model": MODEL, "input": "hello world", "max_output_tokens": 16_000, "stream": stream});
    send(
        k.c.post(format!("{}/v1/responses", k.gw.url()))
            .bearer_auth(format!("key-{}", k.who))
            .json(&body),
    )
    .await
}

#[tokio::test]
async fn the_responses_api_is_charged_by_the_same_rule_and_a_cut_stream_says_so() {
    let k = case(Fault::Well { spaced: true }, "responses").await;
    let v: Value = respond(&k, false).await.json().await.unwrap();
    assert_eq!(v["output"][0]["content"][0]["text"], "Hi there!");
    let text = respond(&k, true).await.text().await.unwrap();
    assert!(text.contains("event: response.completed"), "{text}");
    assert!(
        text.contains("\"input_tokens\": 11"),
        "its usage is passed on: {text}"
    );
    k.charged("ok", 2.0, (2 * USAGE.0, 2 * USAGE.1)).await;

    // Without usage: the output counted, 3 tokens.
    k.up.set(Fault::NoUsage);
    respond(&k, false).await.bytes().await.unwrap();
    respond(&k, true).await.bytes().await.unwrap();
    // The input as estimated (the Responses API's own estimate of "hello
    // world"), for each of the two.
    let input = (k.tokens().0 - 2 * USAGE.0) / 2;
    assert!(input > 0);
    k.charged("ok", 4.0, (2 * USAGE.0 + 2 * input, 2 * USAGE.1 + 2 * 3))
        .await;

    // Cut after the first delta: an error event, the input and 1 token.
    k.up.set(Fault::CutChunked);
    let text = respond(&k, true).await.text().await.unwrap();
    ends_with_error(&text, "stream_broken");
    assert!(!text.contains("response.completed"), "{text}");
    k.charged(
        "stream_broken",
        1.0,
        (2 * USAGE.0 + 3 * input, 2 * USAGE.1 + 2 * 3 + 1),
    )
    .await;
}
