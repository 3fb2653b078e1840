//! Two gateway instances sharing one real `redis-server` (started here on a
//! free loopback port): a client's RPM and TPM hold across both, spend and
//! budgets are shared, and a live tier change reaches the other instance
//! within a second.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A `redis-server` of our own, killed on drop.
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    async fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test installs it)");
        let url = format!("redis://127.0.0.1:{port}");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Redis { child, url }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shared(
    sim_url: &str,
    redis: &Redis,
    tiers: &[(&str, tollgate_gateway::config::TierConfig)],
) -> tollgate_gateway::Config {
    let mut c = config(sim_url, model(100_000, 100_000_000), tiers);
    c.store.url = redis.url.clone();
    c
}

#[tokio::test]
async fn two_instances_hold_a_clients_rpm_and_tpm_together() {
    let redis = Redis::start().await;
    let sim = sim().await;
    let tiers = [
        ("small", tier(10, 1_000_000, 0, 0)),
        ("tokens", tier(1000, 1000, 0, 0)),
    ];
    let a = gateway(shared(&sim.base_url(), &redis, &tiers)).await;
    let b = gateway(shared(&sim.base_url(), &redis, &tiers)).await;
    let c = http();
    let mut ok = 0;
    for i in 0..20 {
        let gw = if i % 2 == 0 { &a } else { &b };
        if chat(&c, gw, "small", &chat_body("hi", 5)).await.status() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 10, "10 RPM across both instances, not 20");
    // TPM 1000: each request keeps 9 + 300 tokens (the simulator uses them all).
    let mut ok = 0;
    for i in 0..10 {
        let gw = if i % 2 == 0 { &a } else { &b };
        if chat(&c, gw, "tokens", &chat_body("hi [sim:tokens=300]", 300))
            .await
            .status()
            == 200
        {
            ok += 1;
        }
    }
    assert_eq!(ok, 3, "1000 TPM across both instances");
    // Spend is shared too.
    let (sa, sb) = (spend(&a, "tokens").await, spend(&b, "tokens").await);
    assert!(sa > 0.0 && (sa - sb).abs() < 1e-12, "{sa} vs {sb}");
}

#[tokio::test]
async fn a_daily_budget_holds_across_two_instances_under_concurrency() {
    let redis = Redis::start().await;
    let sim = sim().await;
    let mut t = tier(1_000_000, 100_000_000, 0, 0);
    t.daily_budget_usd = Some(0.001);
    let a = gateway(shared(&sim.base_url(), &redis, &[("acme", t.clone())])).await;
    let b = gateway(shared(&sim.base_url(), &redis, &[("acme", t)])).await;
    let c = http();
    // Each request is estimated at (9 + 100 out × 2) = $0.000209 and uses
    // (9 + 16 × 2) = $0.000041.
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (c, url) = (c.clone(), if i % 2 == 0 { a.url() } else { b.url() });
            tokio::spawn(async move {
                c.post(format!("{url}/v1/chat/completions"))
                    .bearer_auth("key-acme")
                    .json(&chat_body("hello world", 100))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let spent = spend(&a, "acme").await;
    assert!(ok >= 4, "{ok}");
    assert!(spent <= 0.001 + 1e-12, "spent {spent} of 0.001");
    assert!(
        (spent - ok as f64 * 0.000041).abs() < 1e-9,
        "spend is the actual usage: {spent}, {ok} ok"
    );
}

#[tokio::test]
async fn a_live_tier_change_reaches_the_other_instance_within_a_second() {
    let redis = Redis::start().await;
    let sim = sim().await;
    let tiers = [
        ("free", tier(10, 100_000, 3, 0)),
        ("pro", tier(500, 1_000_000, 0, 0)),
    ];
    let a = gateway(shared(&sim.base_url(), &redis, &tiers)).await;
    let b = gateway(shared(&sim.base_url(), &redis, &tiers)).await;
    let c = http();
    let limit = |r: &reqwest::Response| header(r, "x-ratelimit-limit-requests").map(String::from);
    assert_eq!(
        limit(&chat(&c, &b, "free", &chat_body("hi", 5)).await).as_deref(),
        Some("10")
    );
    let changed = Instant::now();
    let r = c
        .put(format!("{}/admin/clients/free/tier", a.url()))
        .bearer_auth(ADMIN)
        .json(&json!({"tier": "pro"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    loop {
        let seen = limit(&chat(&c, &b, "free", &chat_body("hi", 5)).await);
        if seen.as_deref() == Some("500") {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "instance b still sees {seen:?} after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tier_change = Instant::now();
    let r = c
        .patch(format!("{}/admin/tiers/pro", b.url()))
        .bearer_auth(ADMIN)
        .json(&json!({"rpm": 700}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    loop {
        let seen = limit(&chat(&c, &a, "free", &chat_body("hi", 5)).await);
        if seen.as_deref() == Some("700") {
            break;
        }
        assert!(
            tier_change.elapsed() < Duration::from_secs(1),
            "instance a still sees {seen:?} after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "client move seen in {:?}; tier change seen in {:?}",
        tier_change - changed,
        tier_change.elapsed()
    );
    // A third instance started later picks up both changes at once.
    let late = gateway(shared(&sim.base_url(), &redis, &tiers)).await;
    assert_eq!(
        limit(&chat(&c, &late, "free", &chat_body("hi", 5)).await).as_deref(),
        Some("700")
    );
}
