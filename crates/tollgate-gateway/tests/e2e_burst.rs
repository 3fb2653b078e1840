//! A burst on the Redis store: 2,000 concurrent requests in front of a slow
//! upstream, on a healthy `redis-server` of the test's own. None of them may
//! be refused for a store outage, and the spend recorded must be exactly the
//! usage the upstream reported, priced: every settlement applied once, also
//! when a store call timed out and was sent again. No read of the shared
//! upstream pause may fail either.

mod common;

use std::time::Duration;

use common::redis::Redis;
use common::*;
use serde_json::Value;
use tollgate_gateway::budget::{nano_to_usd, BudgetLimits};
use tollgate_gateway::upstream_sim::SimConfig;
use tollgate_gateway::upstream_sim::SimUpstream;
use tollgate_gateway::RunningGateway;

const BURST: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_requests_on_redis_are_all_served_and_charged_exactly() {
    let redis = Redis::start().await;
    let sim = sim_with(SimConfig {
        latency: Duration::from_millis(400),
        chunk_interval: Duration::ZERO,
        completion_tokens: 16,
        ..Default::default()
    })
    .await;
    let mut t = tier(1_000_000, 100_000_000, 0, 0);
    // A budget makes every request reserve and settle spend in Redis.
    t.daily_budget_usd = Some(1_000.0);
    let tiers = [("acme", t)];
    let gw = gateway(shared_config(&sim.base_url(), &redis.url, &tiers)).await;
    let other = gateway(shared_config(&sim.base_url(), &redis.url, &tiers)).await;
    let c = http();
    let urls = [gw.url(), other.url()];
    let answers = spawn_all(BURST, |i| {
        let (c, url) = (c.clone(), urls[i % 2].clone());
        async move {
            let body = chat_body(&format!("burst request number {i}"), 64);
            let r = chat_at(&c, &url, "acme", &body).await;
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or_default();
            (status, v)
        }
    })
    .await;
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s != 200)
        .map(|(_, v)| v)
        .collect();
    assert!(
        refused.is_empty(),
        "{} of {BURST} not served, e.g. {}",
        refused.len(),
        refused[0]
    );
    // $1/M in, $2/M out: the nano-USD of each answer's own usage.
    let expected_nano: i64 = answers
        .iter()
        .map(|(_, v)| {
            let u = &v["usage"];
            let (i, o) = (
                u["prompt_tokens"].as_i64().unwrap(),
                u["completion_tokens"].as_i64().unwrap(),
            );
            i * 1000 + o * 2000
        })
        .sum();
    let expected = nano_to_usd(expected_nano);
    let spent = poll(
        100,
        Duration::from_millis(50),
        || spend(&gw, "acme"),
        |s| (s - expected).abs() < 1e-12,
    )
    .await;
    assert!(
        (spent - expected).abs() < 1e-12,
        "recorded ${spent}, used ${expected}"
    );
    assert_eq!(
        gw.gateway
            .metrics
            .counter("tollgate_store_errors_total", &[("component", "budget")]),
        0.0
    );
    // Every read of the shared upstream pause got its answer: none let a
    // request through that a provider's pause might have held back.
    for g in [&gw, &other] {
        let failed: u64 = g
            .gateway
            .models
            .values()
            .map(|m| m.hold.failed_reads())
            .sum();
        assert_eq!(failed, 0, "failed reads of the upstream pause");
    }
}

/// A gateway on `redis` whose store calls time out after 200 ms, in front of
/// an upstream answering after `latency`; client `acme` has a daily budget.
async fn short_timeouts(redis: &Redis, latency: Duration) -> (SimUpstream, RunningGateway) {
    let sim = sim_with(SimConfig {
        latency,
        chunk_interval: Duration::ZERO,
        completion_tokens: 16,
        ..Default::default()
    })
    .await;
    let mut t = tier(1_000_000, 100_000_000, 0, 0);
    t.daily_budget_usd = Some(1_000.0);
    let mut config = shared_config(&sim.base_url(), &redis.url, &[("acme", t)]);
    config.store.timeout_ms = 200;
    let gw = gateway(config).await;
    (sim, gw)
}

#[tokio::test]
async fn a_settlement_sent_twice_is_counted_once() {
    let redis = Redis::start().await;
    let (_sim, gw) = short_timeouts(&redis, Duration::from_millis(1)).await;
    let budgets = &gw.gateway.budgets;
    let limits = BudgetLimits {
        daily: Some(1_000_000),
        monthly: None,
    };
    let hold = budgets.reserve("acme", 5_000, limits).await.unwrap();
    budgets.settle(&hold, 1_234).await.unwrap();
    budgets.settle(&hold, 1_234).await.unwrap();
    // A client without a budget reserves nothing; its settlement too.
    let free = budgets
        .reserve("acme", 0, BudgetLimits::default())
        .await
        .unwrap();
    budgets.settle(&free, 100).await.unwrap();
    budgets.settle(&free, 100).await.unwrap();
    assert_eq!(spend(&gw, "acme").await, nano_to_usd(1_334));
}

#[tokio::test]
async fn a_reservation_whose_answer_timed_out_is_given_back() {
    let redis = Redis::start().await;
    let (_sim, gw) = short_timeouts(&redis, Duration::from_millis(1)).await;
    let limits = BudgetLimits {
        daily: Some(1_000_000),
        monthly: None,
    };
    redis.pause();
    let reserved = gw.gateway.budgets.reserve("acme", 5_000, limits).await;
    assert!(reserved.is_err(), "{reserved:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.resume();
    // The reservation reached Redis once it woke up; its cancellation,
    // retried behind it, gives it back.
    let spent = poll(
        60,
        Duration::from_millis(50),
        || spend(&gw, "acme"),
        |s| *s == 0.0,
    )
    .await;
    assert_eq!(spent, 0.0);
}

#[tokio::test]
async fn a_settlement_that_timed_out_is_retried_and_applied_once() {
    let redis = Redis::start().await;
    let (_sim, gw) = short_timeouts(&redis, Duration::from_millis(300)).await;
    let c = http();
    let url = gw.url();
    let request = tokio::spawn(async move {
        let r = chat_at(&c, &url, "acme", &chat_body("hello world", 100)).await;
        let v: Value = r.json().await.unwrap();
        v
    });
    // Admitted by now; the upstream answers while Redis is frozen, so the
    // settlement's first try times out (5 × 200 ms) and is retried.
    tokio::time::sleep(Duration::from_millis(150)).await;
    redis.pause();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    redis.resume();
    let v = request.await.unwrap();
    let u = &v["usage"];
    let used = nano_to_usd(
        u["prompt_tokens"].as_i64().unwrap() * 1000
            + u["completion_tokens"].as_i64().unwrap() * 2000,
    );
    let spent = poll(
        60,
        Duration::from_millis(50),
        || spend(&gw, "acme"),
        |s| (s - used).abs() < 1e-12,
    )
    .await;
    assert!(
        (spent - used).abs() < 1e-12,
        "recorded ${spent}, used ${used}"
    );
    let failed_tries = gw
        .gateway
        .metrics
        .counter("tollgate_store_errors_total", &[("component", "budget")]);
    assert!(failed_tries >= 1.0, "the first try did fail");
}
