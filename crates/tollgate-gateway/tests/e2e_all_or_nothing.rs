//! An admission is all or nothing, on Redis and in memory: when the client
//! bucket or a budget refuses, the provider bucket (and the budget) were
//! never asked; when the provider bucket refuses, the client's are given
//! back before the answer, which is the one the client always got. Each
//! limiter's own counters say whether it was asked at all.

mod common;

use common::redis::Redis;
use common::*;
use tollgate::StatsSnapshot;
use tollgate_gateway::upstream_sim::SimUpstream;
use tollgate_gateway::RunningGateway;

const MODEL: &str = "gpt-4o-mini";

/// (granted, cancelled) of `client`'s bucket and of the provider bucket.
fn counters(gw: &RunningGateway, client: &str) -> ((u64, u64), (u64, u64)) {
    let pair = |s: StatsSnapshot| (s.granted, s.cancelled);
    let reg = gw.gateway.registry();
    let c = reg.client(client).expect("a client").limiter().stats();
    (pair(c), pair(gw.gateway.models[MODEL].limiter.stats()))
}

async fn started(
    store: &str,
    chat_model: tollgate_gateway::config::ModelConfig,
    tiers: &[(&str, tollgate_gateway::config::TierConfig)],
) -> (SimUpstream, RunningGateway) {
    let sim = sim().await;
    let mut config = config(&sim.base_url(), chat_model, tiers);
    config.store.url = store.to_string();
    let gw = gateway(config).await;
    (sim, gw)
}

async fn client_bucket_refuses(store: &str) {
    // 1,000 TPM: the first request keeps 309 tokens and leaves plenty of
    // room; the second asks 709 of the 691 left.
    let (_sim, gw) = started(
        store,
        model(100_000, 100_000_000),
        &[("pro", tier(1_000, 1_000, 0, 0))],
    )
    .await;
    let c = http();
    let r = chat(&c, &gw, "pro", &chat_body("hi [sim:tokens=300]", 300)).await;
    assert_eq!(r.status(), 200);
    let spent = settled_spend(&gw, "pro", |s| s > 0.0).await;
    let (client_before, model_before) = counters(&gw, "pro");
    let r = chat(&c, &gw, "pro", &chat_body("hi", 700)).await;
    assert_eq!(header(&r, "x-tollgate-ratelimit-bucket"), Some("client"));
    assert_eq!(r.status(), 429);
    let (client_after, model_after) = counters(&gw, "pro");
    assert_eq!(model_after, model_before, "the provider bucket was asked");
    assert_eq!(
        client_after, client_before,
        "nothing granted, nothing given back"
    );
    assert_eq!(spend(&gw, "pro").await, spent);
}

#[tokio::test]
async fn the_client_bucket_refuses_and_the_provider_bucket_is_never_asked_on_redis() {
    let redis = Redis::start().await;
    client_bucket_refuses(&redis.url).await;
}

#[tokio::test]
async fn the_client_bucket_refuses_and_the_provider_bucket_is_never_asked_in_memory() {
    client_bucket_refuses("memory://").await;
}

async fn budget_refuses(store: &str) {
    let mut t = tier(1_000, 1_000_000, 0, 0);
    // Each request's estimate and use (about 15 in, 100 out) cost about
    // $0.00022: the budget takes one, not two.
    t.daily_budget_usd = Some(0.0003);
    let (_sim, gw) = started(store, model(100_000, 100_000_000), &[("acme", t)]).await;
    let c = http();
    let body = chat_body("hi [sim:tokens=100]", 100);
    // The first also rebuilds the month's spend from the ledger (on Redis,
    // apart: see docs/DESIGN.md).
    assert_eq!(chat(&c, &gw, "acme", &body).await.status(), 200);
    let spent = settled_spend(&gw, "acme", |s| s > 0.0).await;
    let (client_before, model_before) = counters(&gw, "acme");
    let r = chat(&c, &gw, "acme", &body).await;
    expect_error(r, 429, "daily_budget_exceeded").await;
    let (client_after, model_after) = counters(&gw, "acme");
    assert_eq!(client_after, client_before, "the client bucket was asked");
    assert_eq!(model_after, model_before, "the provider bucket was asked");
    assert_eq!(spend(&gw, "acme").await, spent);
}

#[tokio::test]
async fn a_budget_refuses_and_no_bucket_is_touched_on_redis() {
    let redis = Redis::start().await;
    budget_refuses(&redis.url).await;
}

#[tokio::test]
async fn a_budget_refuses_and_no_bucket_is_touched_in_memory() {
    budget_refuses("memory://").await;
}

async fn provider_refuses(store: &str) {
    let mut t = tier(1_000, 1_000_000, 0, 0);
    t.daily_budget_usd = Some(10.0);
    // 2 RPM at the provider.
    let (_sim, gw) = started(store, model(2, 100_000_000), &[("acme", t)]).await;
    let c = http();
    let body = chat_body("hi [sim:tokens=20]", 20);
    for _ in 0..2 {
        assert_eq!(chat(&c, &gw, "acme", &body).await.status(), 200);
    }
    let spent = settled_spend(&gw, "acme", |s| s > 0.0).await;
    let in_use = client_in_use(&gw, "acme").await;
    let r = chat(&c, &gw, "acme", &body).await;
    assert_eq!(header(&r, "x-tollgate-ratelimit-bucket"), Some("model"));
    assert_eq!(header_u64(&r, "x-ratelimit-limit-requests"), 2);
    assert_eq!(header_u64(&r, "x-ratelimit-remaining-requests"), 0);
    expect_error(r, 429, "model_rpm_exceeded").await;
    // The client's bucket and budget hold nothing of the refused request.
    let after = client_in_use(&gw, "acme").await;
    assert!(
        after.0 <= in_use.0 + 1e-9 && after.1 <= in_use.1 + 1e-9,
        "{in_use:?} then {after:?}"
    );
    assert_eq!(spend(&gw, "acme").await, spent);
    // Refused again at once: the provider bucket is still full.
    let r = chat(&c, &gw, "acme", &body).await;
    assert_eq!(r.status(), 429);
}

#[tokio::test]
async fn the_provider_bucket_refuses_and_the_clients_are_given_back_on_redis() {
    let redis = Redis::start().await;
    provider_refuses(&redis.url).await;
}

#[tokio::test]
async fn the_provider_bucket_refuses_and_the_clients_are_given_back_in_memory() {
    provider_refuses("memory://").await;
}
