//! Metrics that tell causes apart: a store outage, a budget, a bucket, bad
//! input and an upstream error are each their own outcome; a request the
//! client bucket refused is not counted as granted by the budget; gauges for
//! the queue, requests in flight, budget left and the store's health; client
//! ids only where the operator turns them on; `/metrics` behind the admin
//! token or on a listener of its own.

mod common;

use std::time::Duration;

use common::redis::Redis;
use common::*;
use reqwest::Method;
use serde_json::json;
use tollgate_gateway::upstream_sim::SimConfig;
use tollgate_gateway::RunningGateway;

async fn scrape(c: &reqwest::Client, gw: &RunningGateway) -> String {
    let r = send(admin(c, gw, Method::GET, "/metrics")).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The value of the series `line_start` (name and labels) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn outcome(gw: &RunningGateway, tier: &str, outcome: &str) -> f64 {
    let m = &gw.gateway.metrics;
    ["", "gpt-4o-mini"]
        .iter()
        .map(|model| {
            m.counter(
                "tollgate_requests_total",
                &[
                    ("client", tier),
                    ("tier", tier),
                    ("model", model),
                    ("outcome", outcome),
                ],
            )
        })
        .sum()
}

#[tokio::test]
async fn each_cause_of_a_refusal_or_failure_is_its_own_outcome() {
    let redis = Redis::start().await;
    let sim = sim().await;
    let mut budget = tier(1_000, 1_000_000, 0, 0);
    budget.daily_budget_usd = Some(0.000_001);
    let mut config = shared_config(
        &sim.base_url(),
        &redis.url,
        &[
            ("pro", pro_tier()),
            ("one", tier(1, 100_000, 0, 0)),
            ("broke", budget),
        ],
    );
    config.store.timeout_ms = 100;
    let gw = gateway(config).await;
    let c = http();
    assert_eq!(
        chat(&c, &gw, "one", &chat_body("hi", 5)).await.status(),
        200
    );
    assert_eq!(
        chat(&c, &gw, "one", &chat_body("hi", 5)).await.status(),
        429
    );
    assert_eq!(
        chat(&c, &gw, "broke", &chat_body("hi", 5)).await.status(),
        429
    );
    let bad = json!({"model": "gpt-4o-mini", "messages": "nope"});
    assert_eq!(chat(&c, &gw, "pro", &bad).await.status(), 400);
    assert_eq!(
        chat(&c, &gw, "pro", &chat_body("[sim:500]", 5))
            .await
            .status(),
        500
    );
    redis.pause();
    // Refused at once (the store calls time out after 100 ms), never held
    // while a settlement is retried.
    let refusals = async {
        for _ in 0..3 {
            assert_eq!(
                chat(&c, &gw, "pro", &chat_body("hi", 5)).await.status(),
                503
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(20), refusals)
        .await
        .expect("503s during the outage, not a hang");
    let text = scrape(&c, &gw).await;
    assert_eq!(value(&text, "tollgate_store_up{}"), Some(0.0), "{text}");
    redis.resume();
    assert_eq!(outcome(&gw, "one", "ok"), 1.0);
    assert_eq!(outcome(&gw, "one", "rate_limited"), 1.0);
    assert_eq!(outcome(&gw, "broke", "budget_exceeded"), 1.0);
    assert_eq!(outcome(&gw, "pro", "bad_request"), 1.0);
    assert_eq!(outcome(&gw, "pro", "upstream_error"), 1.0);
    assert_eq!(outcome(&gw, "pro", "store_unavailable"), 3.0);
    assert_eq!(
        outcome(&gw, "pro", "rate_limited"),
        0.0,
        "an outage is not a rate limit"
    );
    let m = &gw.gateway.metrics;
    let decisions = |tier, decision| {
        m.counter(
            "tollgate_limiter_decisions_total",
            &[("bucket", "client"), ("tier", tier), ("decision", decision)],
        )
    };
    assert_eq!(decisions("pro", "refused"), 0.0);
    assert!(decisions("pro", "store_unavailable") >= 3.0);
    let text = scrape(&c, &gw).await;
    assert_eq!(value(&text, "tollgate_store_up{}"), Some(1.0), "{text}");
}

#[tokio::test]
async fn the_budget_is_not_counted_as_granted_for_requests_the_client_bucket_refused() {
    let mut t = tier(1, 100_000, 0, 0);
    t.daily_budget_usd = Some(10.0);
    let (_sim, gw, c) = start(model(100_000, 100_000_000), &[("pro", t)]).await;
    for _ in 0..3 {
        chat(&c, &gw, "pro", &chat_body("hi", 5)).await;
    }
    let granted = gw.gateway.metrics.counter(
        "tollgate_limiter_decisions_total",
        &[
            ("bucket", "budget"),
            ("tier", "pro"),
            ("decision", "granted"),
        ],
    );
    assert_eq!(granted, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_show_the_queue_requests_in_flight_and_budget_left() {
    let sim = sim_with(SimConfig {
        latency: Duration::from_secs(3),
        chunk_interval: Duration::ZERO,
        completion_tokens: 16,
        ..Default::default()
    })
    .await;
    let mut t = tier(1_000, 1_000_000, 0, 5_000);
    t.daily_budget_usd = Some(1.0);
    // The provider model takes one request every 2 s; all but one of its
    // 30 are taken here, so of three requests two queue (for 2 and 4 s).
    let config = config(&sim.base_url(), model(30, 100_000_000), &[("pro", t)]);
    let gw = gateway(config).await;
    let limiter = gw.gateway.models["gpt-4o-mini"].limiter.clone();
    let mut taken = Vec::new();
    for _ in 0..29 {
        let opts = tollgate::AcquireOptions::default();
        taken.push(
            limiter
                .reserve(tollgate::Cost::request_only(), &opts)
                .await
                .unwrap(),
        );
    }
    let c = http();
    let url = gw.url();
    let running = spawn_all(3, |_| {
        let (c, url) = (c.clone(), url.clone());
        async move { chat_at(&c, &url, "pro", &chat_body("hi", 5)).await.status() }
    });
    let series = "tollgate_queue_depth{model=\"gpt-4o-mini\",class=\"0\"}";
    let watch = poll(
        90,
        Duration::from_millis(20),
        || scrape(&c, &gw),
        |text| value(text, series) == Some(2.0),
    );
    let (statuses, text) = tokio::join!(running, watch);
    assert_eq!(statuses, vec![200, 200, 200]);
    assert_eq!(value(&text, series), Some(2.0), "{text}");
    // Three chats (one upstream, two queued) and this scrape.
    assert_eq!(
        value(&text, "tollgate_requests_in_flight{}"),
        Some(4.0),
        "{text}"
    );
    let text = scrape(&c, &gw).await;
    assert_eq!(value(&text, series), Some(0.0));
    assert_eq!(value(&text, "tollgate_requests_in_flight{}"), Some(1.0));
    let spent = settled_spend(&gw, "pro", |s| s > 0.0).await;
    let text = scrape(&c, &gw).await;
    let left = value(
        &text,
        "tollgate_budget_left_usd{tier=\"pro\",period=\"day\"}",
    )
    .unwrap();
    assert!(
        spent > 0.0 && (left - (1.0 - spent)).abs() < 1e-9,
        "{left} left, {spent} spent"
    );
    assert!(
        !text.contains("client=\"pro\""),
        "no client labels unless turned on:\n{text}"
    );
    drop(taken);
}

#[tokio::test]
async fn client_labels_and_the_metrics_listener_are_the_operators_choice() {
    let sim = sim().await;
    let mut t = pro_tier();
    t.daily_budget_usd = Some(1.0);
    let mut cfg = config(&sim.base_url(), model(100_000, 100_000_000), &[("pro", t)]);
    cfg.metrics.client_labels = true;
    cfg.metrics.listen = Some("127.0.0.1:0".into());
    let gw = gateway(cfg).await;
    let c = http();
    assert_eq!(
        chat(&c, &gw, "pro", &chat_body("hi", 5)).await.status(),
        200
    );
    // Not on the client port any more, with or without the token.
    let r = send(admin(&c, &gw, Method::GET, "/metrics")).await;
    assert_eq!(r.status(), 404);
    let addr = gw.metrics_addr.expect("a metrics listener");
    let text = send(c.get(format!("http://{addr}/metrics")))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("tollgate_requests_total{client=\"pro\""),
        "{text}"
    );
    assert!(
        text.contains("tollgate_budget_left_usd{client=\"pro\",tier=\"pro\",period=\"day\"}"),
        "{text}"
    );
    // Without a listener: the admin token is needed.
    let (_sim, gw, c) = start(model(100_000, 100_000_000), &[("pro", pro_tier())]).await;
    assert_eq!(get(&c, &gw, "/metrics").await.status(), 401);
    let r = send(
        c.get(format!("{}/metrics", gw.url()))
            .bearer_auth("key-pro"),
    )
    .await;
    assert_eq!(r.status(), 401, "a client key is not the admin token");
    assert_eq!(
        send(admin(&c, &gw, Method::GET, "/metrics")).await.status(),
        200
    );
}
