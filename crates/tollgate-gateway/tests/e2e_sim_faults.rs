//! The simulated upstream's failure modes, seen by a real HTTP client: each
//! mode does what it says, and a seeded rate fails exactly the requests the
//! seed picks.

mod common;

use std::time::{Duration, Instant};

use common::{http, sim_with};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tollgate_gateway::upstream_sim::{Fault, Faults, SimConfig, SimUpstream};

async fn failing(specs: &[&str], seed: u64) -> SimUpstream {
    let mut faults = Faults {
        seed,
        ..Faults::default()
    };
    for s in specs {
        faults.add(s).unwrap();
    }
    sim_with(SimConfig {
        latency: Duration::ZERO,
        chunk_interval: Duration::ZERO,
        completion_tokens: 8,
        faults,
    })
    .await
}

fn body(model: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
}

async fn post(sim: &SimUpstream, path: &str, body: &Value) -> reqwest::Response {
    http()
        .post(format!("{}{path}", sim.base_url()))
        .json(body)
        .send()
        .await
        .expect("the simulator answers")
}

#[tokio::test]
async fn server_errors_and_429s_answer_in_openais_shape() {
    let sim = failing(&["m5=502", "m4=429:3"], 0).await;
    let r = post(&sim, "/chat/completions", &body("m5", false)).await;
    assert_eq!(r.status(), 502);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "server_error", "{e}");
    let r = post(&sim, "/chat/completions", &body("m4", true)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "rate_limit_exceeded", "{e}");
    // Embeddings and the Responses API meet the same faults.
    let r = post(&sim, "/embeddings", &json!({"model": "m5", "input": "x"})).await;
    assert_eq!(r.status(), 502);
    let r = post(&sim, "/responses", &json!({"model": "m4", "input": "x"})).await;
    assert_eq!(r.status(), 429);
    // Another model is untouched.
    let r = post(&sim, "/chat/completions", &body("fine", false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(sim.stats.requests_for("m5"), 2);
    assert_eq!(sim.stats.requests_for("m4"), 2);
    assert_eq!(sim.stats.requests_for("fine"), 1);
    assert_eq!(
        sim.stats.faults.load(std::sync::atomic::Ordering::Relaxed),
        4
    );
}

#[tokio::test]
async fn a_hanging_model_never_answers_and_a_slow_one_answers_late() {
    let sim = failing(&["stuck=hang", "late=slow:400"], 0).await;
    let hung = http()
        .post(format!("{}/chat/completions", sim.base_url()))
        .json(&body("stuck", false))
        .timeout(Duration::from_millis(800))
        .send()
        .await;
    assert!(hung.unwrap_err().is_timeout());
    assert_eq!(sim.stats.requests_for("stuck"), 1);
    let t = Instant::now();
    let r = post(&sim, "/chat/completions", &body("late", false)).await;
    assert_eq!(r.status(), 200);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 8);
}

#[tokio::test]
async fn a_stream_closed_mid_way_sends_its_first_events_then_breaks() {
    let sim = failing(&["cut=close:3"], 0).await;
    let r = post(&sim, "/chat/completions", &body("cut", true)).await;
    assert_eq!(r.status(), 200, "headers come: the break is after them");
    let mut s = r.bytes_stream();
    let mut text = String::new();
    let mut broke = false;
    while let Some(chunk) = s.next().await {
        match chunk {
            Ok(b) => text.push_str(&String::from_utf8_lossy(&b)),
            Err(_) => {
                broke = true;
                break;
            }
        }
    }
    assert!(broke, "the body ends in an error, not cleanly: {text}");
    assert_eq!(text.matches("data: ").count(), 3, "{text}");
    assert!(!text.contains("[DONE]"));
    // Not streamed: half a JSON body, then the break.
    let r = post(&sim, "/chat/completions", &body("cut", false)).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err());
}

#[tokio::test]
async fn a_seeded_rate_fails_exactly_the_requests_the_seed_picks() {
    let specs = ["m=503@0.3", "m=429@0.2"];
    let sim = failing(&specs, 7).await;
    let mut expected = Faults {
        seed: 7,
        ..Faults::default()
    };
    for s in specs {
        expected.add(s).unwrap();
    }
    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(
            post(&sim, "/chat/completions", &body("m", false))
                .await
                .status()
                .as_u16(),
        );
    }
    let predicted: Vec<u16> = (0..60)
        .map(|n| match expected.pick("m", n) {
            Some(Fault::ServerError { status }) => status,
            Some(Fault::RateLimited { .. }) => 429,
            None => 200,
            Some(other) => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(statuses, predicted);
    let fails = statuses.iter().filter(|s| **s != 200).count();
    assert!(
        (15..=45).contains(&fails),
        "{fails} of 60 failed at a 50% rate"
    );
    assert!(statuses.contains(&503) && statuses.contains(&429) && statuses.contains(&200));
}
