//! The gateway in front of an upstream whose streams misbehave, one way per
//! test (`common/faulty_upstream.rs`): cut off with and without chunked
//! encoding, a malformed `data:` line, no `[DONE]`, headers then silence, a
//! stall between chunks, no headers, a slow drip, and clients that leave.
//! Each test checks the events the client gets, the charge, the metrics and
//! the log, and that nothing stays reserved.

mod common;
#[path = "common/fault_case.rs"]
mod fault_case;
#[path = "common/faulty_upstream.rs"]
mod faulty_upstream;

use std::time::{Duration, Instant};

use common::*;
use fault_case::*;
use faulty_upstream::{Fault, USAGE};
use futures_util::StreamExt;
use serde_json::Value;

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
    k.upstream_saw_close(1).await;
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
        waited >= Duration::from_millis(1200) && waited < Duration::from_millis(1900),
        "ended 0.5 s after the first event at 0.8 s, not at the 1 s first-byte or the 2 s total timeout: {waited:?}"
    );
    let events = ends_with_error(&text, "upstream_timeout");
    assert_eq!(events.len(), 1, "the role chunk, then the error: {text}");
    k.charged("upstream_timeout", 1.0, (INPUT_ESTIMATE, 0))
        .await;
    k.upstream_saw_close(1).await;
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
    k.chat_and_leave(&chat_body("hello world", 16_000)).await;
    k.charged("client_gone", 1.0, (INPUT_ESTIMATE, 0)).await;
    k.upstream_saw_close(1).await;
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
    k.upstream_saw_close(2).await;
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
    k.chat_and_leave(&chat_body("hello world", 100)).await;
    k.charged("client_gone", 1.0, USAGE).await;
    assert_eq!(k.up.requests(), 1, "the queued request never went upstream");
    assert_eq!(k.outcomes("ok"), 1.0);
    assert!(logged("queued", &["client went away", "stage=\"queued\""]));
}

#[tokio::test]
async fn an_error_whose_body_stops_coming_is_answered_within_the_idle_timeout() {
    // A 503 whose body starts and then never ends: the client gets its
    // error once the 0.5 s between chunks have passed, not after the
    // upstream's read timeout, and nothing stays reserved or charged.
    let k = case(Fault::StatusThenSilence(503), "errsilent").await;
    for body in [streamed(16_000, false), chat_body("hello world", 16_000)] {
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), k.chat(&body))
            .await
            .expect("an answer within 10 s");
        let waited = t.elapsed();
        assert!(r.status().is_server_error(), "{}", r.status());
        assert!(
            waited < Duration::from_millis(1_500),
            "answered after {waited:?}"
        );
    }
    k.charged("upstream_error", 2.0, (0, 0)).await;
}
