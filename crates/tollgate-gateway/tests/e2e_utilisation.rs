//! Utilisation through the gateway with over-estimates: every request asks
//! `max_tokens` 400 and gets 100 (4× the real output), against a provider
//! stand-in that enforces an exact token bucket and answers 429 beyond it.
//! Queued requests move earlier as the calls ahead settle below their
//! estimates, so the gateway keeps the provider's bucket busy (≥ 95% of its
//! rate) without one upstream 429.
//!
//! Utilisation is measured from 5 s into the load (the bucket's initial burst
//! spent) to its end, as the library's accuracy harness does: the tokens the
//! provider took ÷ what it allowed (the room it held then plus its refill);
//! and ÷ its rate alone. The suite runs it for `TOLLGATE_UTILISATION_SECS`
//! (default 15) seconds; `scripts/harness/run-all` runs it for 60 s and
//! holds the first figure to ≥ 95%.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use serde_json::{json, Value};

/// The provider's rate: 60,000 tokens a minute.
const TPM: u64 = 60_000;
/// Its bucket holds 15 s of it (burst 0.25).
const BURST: f64 = 0.25;
/// Tokens each answer uses: 5 in, 100 out.
const USED: u64 = 105;
/// The stand-in's allowance for scheduling jitter, seconds of rate.
const JITTER_SECS: f64 = 0.05;

/// A token bucket of `TPM` holding `BURST × TPM`, charged each call's usage
/// on arrival (GCRA: `tat` is when it would be empty again); the arrival
/// time, tokens and `tat` after each call it took.
struct Bucket {
    start: Instant,
    tat: f64,
    taken: Vec<(f64, u64, f64)>,
}

#[derive(Clone)]
struct Standin {
    bucket: Arc<Mutex<Bucket>>,
    refused: Arc<AtomicU64>,
}

async fn answer(State(s): State<Standin>, Json(body): Json<Value>) -> Response {
    let rate = TPM as f64 / 60.0;
    let tolerance = (BURST * TPM as f64) / rate + JITTER_SECS;
    let ok = {
        let mut b = s.bucket.lock().unwrap();
        let now = b.start.elapsed().as_secs_f64();
        let tat = b.tat.max(now) + USED as f64 / rate;
        if tat - now > tolerance {
            false
        } else {
            b.tat = tat;
            b.taken.push((now, USED, tat));
            true
        }
    };
    if !ok {
        s.refused.fetch_add(1, Ordering::Relaxed);
        let e = json!({"error": {"message": "Rate limit reached", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}});
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            Json(e),
        )
            .into_response();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let model = body["model"].as_str().unwrap_or("m").to_string();
    Json(json!({
        "id": "chatcmpl-standin", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": USED - 5, "total_tokens": USED},
    }))
    .into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_estimated_requests_keep_the_providers_bucket_busy_without_a_429() {
    let secs: f64 = std::env::var("TOLLGATE_UTILISATION_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25.0);
    let standin = Standin {
        bucket: Arc::new(Mutex::new(Bucket {
            start: Instant::now(),
            tat: 0.0,
            taken: Vec::new(),
        })),
        refused: Arc::default(),
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(answer))
        .with_state(standin.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut m = model(1_000_000, TPM);
    m.burst = BURST;
    let tiers = [("acme", tier(1_000_000, 100_000_000, 0, 60_000))];
    let gw = gateway(config(&format!("http://{addr}/v1"), m, &tiers)).await;
    let c = http();
    let url = gw.url();
    let start = standin.bucket.lock().unwrap().start;
    let load_starts = start.elapsed().as_secs_f64();
    let load_ends = Instant::now() + Duration::from_secs_f64(secs);
    let statuses = spawn_all(32, |_| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let mut seen = Vec::new();
            while Instant::now() < load_ends {
                let r = chat_at(&c, &url, "acme", &chat_body("hello", 4 * (USED - 5))).await;
                seen.push(r.status().as_u16());
            }
            seen
        }
    })
    .await;
    let end = load_ends.duration_since(start).as_secs_f64();
    let answered: Vec<u16> = statuses.into_iter().flatten().collect();
    assert!(
        answered.iter().all(|&s| s == 200),
        "not all answered 200: {:?}",
        {
            let mut odd: Vec<_> = answered.iter().filter(|&&s| s != 200).collect();
            odd.dedup();
            odd
        }
    );
    assert_eq!(standin.refused.load(Ordering::Relaxed), 0, "upstream 429s");
    // From when the bucket's initial burst is spent (the load takes it
    // within its first seconds): the tokens the provider took against what
    // it allowed, what it held then plus its refill.
    let from = load_starts + 5.0;
    let rate = TPM as f64 / 60.0;
    let b = standin.bucket.lock().unwrap();
    let taken: u64 = b
        .taken
        .iter()
        .filter(|(at, _, _)| *at >= from && *at < end)
        .map(|(_, t, _)| t)
        .sum();
    let backlog = b
        .taken
        .iter()
        .rfind(|(at, _, _)| *at < from)
        .map_or(0.0, |(_, _, tat)| (tat - from).max(0.0));
    let held = (BURST * TPM as f64 - backlog * rate).max(0.0);
    let allowed = held + rate * (end - from);
    let utilisation = taken as f64 / allowed;
    let of_rate = taken as f64 / (rate * (end - from));
    eprintln!(
        "utilisation {:.1}% over {:.1} s ({taken} of {allowed:.0} tokens: {held:.0} held at the start, then its refill); {:.1}% of its rate; {} requests",
        utilisation * 100.0,
        end - from,
        of_rate * 100.0,
        answered.len()
    );
    // The long run (60 s, `scripts/harness/run-all`) holds the provider to
    // ≥ 95% of what it allowed. In a short one the room the bucket held at
    // the start (what the requests in flight hold beyond their use: 1,700 to
    // 3,800 tokens here, measured) weighs more, so it holds ≥ 80% of that
    // (sleeping out each first slot gives 45%) and ≥ 95% of the rate. The
    // short run measures 20 s: over 10 s the held room alone put two suite
    // runs at 73% and 75% while each took 100.8% of the rate.
    if secs >= 60.0 {
        assert!(
            utilisation >= 0.95,
            "utilisation {:.1}% of what the bucket allowed",
            utilisation * 100.0
        );
    } else {
        assert!(
            utilisation >= 0.80 && of_rate >= 0.95,
            "utilisation {:.1}% of what the bucket allowed, {:.1}% of its rate",
            utilisation * 100.0,
            of_rate * 100.0
        );
    }
}
