//! The gateway in front of an upstream whose answers misbehave, one way per
//! test (`common/faulty_upstream.rs`, a real HTTP server on loopback):
//! compressed or non-JSON bodies, missing or impossible usage, 429 and 503
//! with `Retry-After`, an unreachable upstream, the Responses API. Each test
//! checks what the client gets (status, body, headers), what is charged
//! (tokens and spend), what the metrics and the log say, and that nothing
//! stays reserved. Streams that break are in `e2e_stream_faults.rs`.

mod common;
#[path = "common/fault_case.rs"]
mod fault_case;
#[path = "common/faulty_upstream.rs"]
mod faulty_upstream;

use std::time::{Duration, Instant};

use common::*;
use fault_case::*;
use faulty_upstream::{Fault, USAGE};
use serde_json::{json, Value};

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
        assert!(header(&r, "x-ratelimit-remaining-requests").is_some());
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
