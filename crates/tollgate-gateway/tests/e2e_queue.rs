//! Queued gateway requests wait through the library: a request queued behind
//! an over-estimated call starts as soon as that call settles below its
//! estimate, instead of sleeping out the slot it was first given.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tollgate_gateway::upstream_sim::SimConfig;

/// A provider model of 4,800 TPM (80 tokens a second, 4,800 at most), a
/// tier that may wait 30 s, and a simulated upstream that answers 16
/// tokens after `latency`.
async fn setup(
    latency: Duration,
) -> (
    tollgate_gateway::upstream_sim::SimUpstream,
    tollgate_gateway::RunningGateway,
) {
    let sim = sim_with(SimConfig {
        latency,
        chunk_interval: Duration::ZERO,
        completion_tokens: 16,
        ..Default::default()
    })
    .await;
    let tiers = [("acme", tier(10_000, 10_000_000, 0, 30_000))];
    let gw = gateway(config(&sim.base_url(), model(10_000, 4_800), &tiers)).await;
    (sim, gw)
}

/// How many of acme's requests the model's bucket queued.
fn queued(gw: &tollgate_gateway::RunningGateway) -> f64 {
    gw.gateway.metrics.counter(
        "tollgate_limiter_decisions_total",
        &[
            ("bucket", "model"),
            ("tier", "acme"),
            ("decision", "waited"),
        ],
    )
}

/// A request of about 3,010 tokens (max_tokens 3,000): two of them do not
/// fit the model's bucket at once; the second's slot is ~15 s away.
fn big() -> serde_json::Value {
    chat_body("hello", 3_000)
}

#[tokio::test]
async fn a_queued_request_starts_when_the_call_ahead_settles_below_its_estimate() {
    let (_sim, gw) = setup(Duration::from_millis(200)).await;
    let c = http();
    let url = gw.url();
    let first = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move { chat_at(&c, &url, "acme", &big()).await.status().as_u16() }
    });
    // The first is admitted and upstream (for 200 ms) when the second comes.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let sent = Instant::now();
    let second = chat_at(&c, &url, "acme", &big()).await;
    let took = sent.elapsed();
    assert_eq!(second.status().as_u16(), 200);
    assert_eq!(first.await.unwrap(), 200);
    // Its first slot was ~15 s away; the first call used 26 of its ~3,010
    // tokens and settled at ~0.2 s, which made room at once.
    assert!(
        took < Duration::from_secs(3),
        "the second request took {took:?}: it slept out its first slot"
    );
    assert_eq!(queued(&gw), 1.0, "the second request was queued");
}

/// A provider model of 4,800 TPM, a tier that may wait 60 s, and an
/// upstream whose answers use every token `max_tokens` allows: no call
/// settles below its estimate, so only a cancellation makes room.
async fn setup_exact() -> (
    tollgate_gateway::upstream_sim::SimUpstream,
    tollgate_gateway::RunningGateway,
) {
    let sim = sim_with(SimConfig {
        latency: Duration::from_millis(200),
        chunk_interval: Duration::ZERO,
        completion_tokens: 1_000_000,
        ..Default::default()
    })
    .await;
    let tiers = [("acme", tier(10_000, 10_000_000, 0, 60_000))];
    let mut m = model(10_000, 4_800);
    m.context_window = 128_000;
    let gw = gateway(config(&sim.base_url(), m, &tiers)).await;
    (sim, gw)
}

/// Sends a request of `max_tokens` (given up after `timeout`, if any) in a
/// task: its status, and when its answer came.
fn send_in_task(
    gw: &tollgate_gateway::RunningGateway,
    max_tokens: u64,
    timeout: Option<Duration>,
) -> tokio::task::JoinHandle<(Result<u16, reqwest::Error>, Instant)> {
    let (c, url) = (http(), gw.url());
    tokio::spawn(async move {
        let mut req = c
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth("key-acme")
            .json(&chat_body("hello", max_tokens));
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let r = req.send().await;
        (r.map(|r| r.status().as_u16()), Instant::now())
    })
}

#[tokio::test]
async fn queued_requests_move_up_when_a_differently_sized_call_ahead_is_cancelled() {
    let (_sim, gw) = setup_exact().await;
    let spawn_at = |max_tokens, timeout| send_in_task(&gw, max_tokens, timeout);
    let t0 = Instant::now();
    // X (~3,010 tokens) starts at once and leaves ~1,790 in the bucket (80 a
    // second). A (~2,010) queues for ~2.8 s, B (~1,010) behind it to ~15 s,
    // C (~1,010) to ~28 s.
    let x = spawn_at(3_000, None);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let a = spawn_at(2_000, Some(Duration::from_millis(800)));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let b = spawn_at(1_000, None);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let cc = spawn_at(1_000, None);
    // A's client leaves while it waits (at ~0.95 s).
    let (a_result, _) = a.await.unwrap();
    assert!(
        a_result.is_err(),
        "A was to give up while queued: {a_result:?}"
    );
    let (x_status, _) = x.await.unwrap();
    assert_eq!(x_status.unwrap(), 200);
    let (b_status, b_done) = b.await.unwrap();
    let (c_status, c_done) = cc.await.unwrap();
    assert_eq!(b_status.unwrap(), 200);
    assert_eq!(c_status.unwrap(), 200);
    let (b_at, c_at) = (b_done - t0, c_done - t0);
    // Without A, B fits at once: it starts when A leaves (~0.95 s) and is
    // answered 0.2 s later.
    assert!(
        b_at < Duration::from_millis(2_500),
        "B was answered {b_at:?} after X: it did not take A's place"
    );
    // C fits once X's and B's ~4,020 tokens and its own ~1,010 have drained
    // from the 4,800 to what 80 a second refills: ~2.9 s after X, answered
    // 0.2 s later. Never before the bucket allows (that would overdraw it).
    assert!(
        c_at >= Duration::from_millis(2_700),
        "C was answered {c_at:?} after X: before the bucket had room for it"
    );
    assert!(
        c_at < Duration::from_millis(6_000),
        "C was answered {c_at:?} after X: it did not move up behind B"
    );
    // Nothing of A stays reserved: the model's bucket is back to full after
    // the three calls drained.
    assert_eq!(queued(&gw), 3.0, "A, B and C were queued");
}

#[tokio::test]
async fn queued_requests_move_up_when_a_call_queued_in_the_middle_is_cancelled() {
    let (_sim, gw) = setup_exact().await;
    let spawn_at = |max_tokens, timeout| send_in_task(&gw, max_tokens, timeout);
    let t0 = Instant::now();
    // X (~4,400 tokens) starts at once and leaves ~400 (80 a second come
    // back). W (~520) queues to ~1.5 s, A (~1,600) behind it to ~21.5 s,
    // B (~160) to ~23.5 s, C (~160) to ~25.5 s.
    let x = spawn_at(4_390, None);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let w = spawn_at(510, None);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let a = spawn_at(1_590, Some(Duration::from_millis(600)));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let b = spawn_at(150, None);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let cc = spawn_at(150, None);
    // A's client leaves at ~0.9 s, while W is still queued ahead of it.
    let (a_result, _) = a.await.unwrap();
    assert!(
        a_result.is_err(),
        "A was to give up while queued: {a_result:?}"
    );
    for (name, h) in [("X", x), ("W", w)] {
        assert_eq!(h.await.unwrap().0.unwrap(), 200, "{name}");
    }
    let (b_status, b_done) = b.await.unwrap();
    let (c_status, c_done) = cc.await.unwrap();
    assert_eq!(b_status.unwrap(), 200);
    assert_eq!(c_status.unwrap(), 200);
    let (b_at, c_at) = (b_done - t0, c_done - t0);
    // Without A, B fits 2 s after W's slot (~3.5 s) and C 2 s after B
    // (~5.5 s); each is answered 0.2 s after it starts. Never earlier:
    // that would overdraw the bucket.
    assert!(
        b_at >= Duration::from_millis(3_200) && b_at < Duration::from_millis(5_500),
        "B was answered {b_at:?} after X, not at ~3.7 s: it did not take A's place"
    );
    assert!(
        c_at >= Duration::from_millis(5_200) && c_at < Duration::from_millis(8_000),
        "C was answered {c_at:?} after X, not at ~5.7 s: it did not move up behind B"
    );
}

#[tokio::test]
async fn the_queue_moves_up_as_far_as_a_short_answer_frees_not_only_by_the_next_ones_headroom() {
    // 4,800 TPM (80 tokens a second), a tier that may wait 90 s, answers of
    // 16 tokens after 0.2 s. X (~4,700 tokens estimated) starts at once; W
    // (~2,600) queues to ~31 s and V (~2,200) behind it to ~59 s. X settles
    // at ~0.2 s having used ~26: W fits at once then, V ~0.1 s later. W's
    // headroom (what of X's refund the bucket could take back while W kept
    // its slot) alone moved W to ~3.8 s and V to ~31 s.
    let sim = sim_with(SimConfig {
        latency: Duration::from_millis(200),
        chunk_interval: Duration::ZERO,
        completion_tokens: 16,
        ..Default::default()
    })
    .await;
    let tiers = [("acme", tier(10_000, 10_000_000, 0, 90_000))];
    let mut m = model(10_000, 4_800);
    m.context_window = 128_000;
    let gw = gateway(config(&sim.base_url(), m, &tiers)).await;
    let t0 = Instant::now();
    let x = send_in_task(&gw, 4_690, None);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let w = send_in_task(&gw, 2_590, Some(Duration::from_secs(8)));
    tokio::time::sleep(Duration::from_millis(60)).await;
    let v = send_in_task(&gw, 2_190, Some(Duration::from_secs(8)));
    let (x_status, _) = x.await.unwrap();
    assert_eq!(x_status.unwrap(), 200);
    let (w_status, w_done) = w.await.unwrap();
    let (v_status, v_done) = v.await.unwrap();
    assert_eq!(w_status.unwrap(), 200, "W");
    assert_eq!(v_status.unwrap(), 200, "V");
    let (w_at, v_at) = (w_done - t0, v_done - t0);
    assert!(
        w_at < Duration::from_millis(1_500),
        "W was answered {w_at:?} after X: it moved only by its own headroom"
    );
    assert!(
        v_at < Duration::from_millis(2_000),
        "V was answered {v_at:?} after X: it did not move up behind W"
    );
    assert_eq!(queued(&gw), 2.0, "W and V were queued");
}
