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
    let queued = gw.gateway.metrics.counter(
        "tollgate_limiter_decisions_total",
        &[
            ("bucket", "model"),
            ("tier", "acme"),
            ("decision", "waited"),
        ],
    );
    assert_eq!(queued, 1.0, "the second request was queued");
}
