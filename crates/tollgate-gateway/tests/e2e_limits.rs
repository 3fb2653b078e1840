//! End to end over HTTP: tier limits with 429 and Retry-After, queueing within
//! the maximum wait, budgets under concurrency, priority under a flood.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

#[tokio::test]
async fn over_the_tier_rpm_a_client_gets_429_with_an_honest_retry_after() {
    let (sim, gw, c) = start(model(1000, 1_000_000), &[("free", tier(3, 100_000, 0, 0))]).await;
    for i in 0..3 {
        let r = chat(&c, &gw, "free", &chat_body("hi", 5)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "x-ratelimit-remaining-requests"),
            Some((2 - i).to_string().as_str())
        );
    }
    let r = chat(&c, &gw, "free", &chat_body("hi", 5)).await;
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("3"));
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some("0"));
    let secs = header_u64(&r, "retry-after");
    let ms = header_u64(&r, "retry-after-ms");
    // 3 per minute: the next request fits 20 s after the first.
    assert!(
        (19..=20).contains(&secs) && (19_000..=20_000).contains(&ms),
        "{secs} s, {ms} ms"
    );
    let e = expect_error(r, 429, "client_rpm_exceeded").await;
    assert!(e["message"].as_str().unwrap().contains("Retry"), "{e}");

    // Tokens: a tier with 1000 TPM, after a request that used about 815 of
    // them, refuses one estimated at about 300 and names the token limit.
    let gw = gateway(config(
        &sim.base_url(),
        model(1000, 1_000_000),
        &[("small", tier(1000, 1000, 0, 0))],
    ))
    .await;
    assert_eq!(
        chat(&c, &gw, "small", &chat_body("hi [sim:tokens=800]", 800))
            .await
            .status(),
        200
    );
    let r = chat(&c, &gw, "small", &chat_body("hi", 300)).await;
    expect_error(r, 429, "client_tpm_exceeded").await;
    // A request larger than the tier's whole bucket can never run: 400, not 429.
    let r = chat(&c, &gw, "small", &chat_body("hi", 2000)).await;
    expect_error(r, 400, "client_request_too_large").await;
}

#[tokio::test]
async fn requests_wait_in_the_queue_up_to_the_tiers_max_wait() {
    // 120 RPM with a bucket of one request: one every 0.5 s; may wait 1.2 s.
    let mut t = tier(120, 1_000_000, 0, 1200);
    t.burst = 1.0 / 120.0;
    let (_sim, gw, c) = start(model(1000, 1_000_000), &[("pro", t)]).await;
    let started = Instant::now();
    let mut results = spawn_all(4, |i| {
        let (c, url) = (c.clone(), gw.url());
        async move {
            tokio::time::sleep(Duration::from_millis(20 * i as u64)).await;
            let r = chat_at(&c, &url, "pro", &chat_body("hi", 5)).await;
            (r.status().as_u16(), started.elapsed())
        }
    })
    .await;
    results.sort_by_key(|r| r.1);
    let statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    assert_eq!(count(&statuses, 200), 3, "{results:?}");
    assert_eq!(count(&statuses, 429), 1, "{results:?}");
    let served: Vec<Duration> = results.iter().filter(|r| r.0 == 200).map(|r| r.1).collect();
    assert!(
        served[2] >= Duration::from_millis(950),
        "the third waited for its slot: {served:?}"
    );
}

#[tokio::test]
async fn two_hundred_concurrent_requests_cannot_overspend_a_nearly_spent_daily_budget() {
    let mut m = model(1_000_000, 100_000_000);
    // $1000 per million tokens = $0.001 a token either way.
    m.input_usd_per_mtok = 1000.0;
    m.output_usd_per_mtok = 1000.0;
    let mut t = tier(1_000_000, 100_000_000, 0, 0);
    t.daily_budget_usd = Some(1.0);
    let (_sim, gw, c) = start(m, &[("acme", t)]).await;
    // Spend most of the budget: about 16 in + 850 out = $0.866.
    let r = chat(
        &c,
        &gw,
        "acme",
        &chat_body("hello world [sim:tokens=850]", 880),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let used = v["usage"]["total_tokens"].as_u64().unwrap() as f64 * 0.001;
    let before = spend(&gw, "acme").await;
    assert!((before - used).abs() < 1e-9 && before > 0.85, "{before}");
    // 200 at once, each estimated at 9 + 100 tokens = $0.109, using $0.025.
    let answers = spawn_all(200, |_| {
        let (c, url) = (c.clone(), gw.url());
        async move {
            let r = chat_at(&c, &url, "acme", &chat_body("hello world", 100)).await;
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (status, v)
        }
    })
    .await;
    let (mut ok, mut refused, mut over_estimate) = (0, 0, 0.0);
    for (status, v) in answers {
        match status {
            200 => {
                ok += 1;
                let u = &v["usage"];
                let actual = (u["prompt_tokens"].as_u64().unwrap()
                    + u["completion_tokens"].as_u64().unwrap()) as f64
                    * 0.001;
                over_estimate += (actual - 0.109f64).max(0.0);
            }
            429 => {
                assert_eq!(v["error"]["code"], "daily_budget_exceeded", "{v}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    let after = spend(&gw, "acme").await;
    assert!(ok >= 1 && refused >= 150, "ok {ok}, refused {refused}");
    assert!(
        after <= 1.0 + over_estimate + 1e-9,
        "spent ${after} of a $1 budget (allowed overshoot {over_estimate})"
    );
    assert!(
        (after - (before + ok as f64 * 0.025)).abs() < 1e-9,
        "spend is exactly the actual usage: {after}"
    );
    // A request that can no longer fit is refused with the time to midnight UTC.
    let r = chat(&c, &gw, "acme", &chat_body("hello world", 100)).await;
    if r.status() == 429 {
        let secs = header_u64(&r, "retry-after");
        assert!(secs <= 86_400);
    }
}

#[tokio::test]
async fn an_enterprise_client_gets_through_a_free_tier_flood_within_its_max_wait() {
    // The provider allows 120 requests a minute (one per 0.5 s once the
    // bucket is drained). Free (class 3, headroom 0.4) never waits; enterprise
    // (class 0) waits up to 3 s. Client tiers are generous: the provider
    // bucket is the bottleneck.
    let (_sim, gw, c) = start(
        model(120, 10_000_000),
        &[
            ("free", tier(100_000, 100_000_000, 3, 0)),
            ("enterprise", tier(100_000, 100_000_000, 0, 3000)),
        ],
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let (free_ok, free_429, honest) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let flood: Vec<_> = (0..16)
        .map(|_| {
            let (c, url, stop) = (c.clone(), gw.url(), stop.clone());
            let (free_ok, free_429, honest) = (free_ok.clone(), free_429.clone(), honest.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = chat_at(&c, &url, "free", &chat_body("hi", 5)).await;
                    if r.status() == 200 {
                        free_ok.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    assert_eq!(r.status(), 429);
                    free_429.fetch_add(1, Ordering::Relaxed);
                    let ms = header_u64(&r, "retry-after-ms");
                    let (_, e) = error_of(r).await;
                    assert_eq!(e["code"], "model_rpm_exceeded", "{e}");
                    // Free's share is 40 % of a 60 s bucket; with enterprise
                    // traffic on top a free slot is at most a few seconds away.
                    if ms <= 5_000 {
                        honest.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(ms.min(200))).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut worst = Duration::ZERO;
    for _ in 0..8 {
        let t = Instant::now();
        let r = chat(&c, &gw, "enterprise", &chat_body("hi", 5)).await;
        assert_eq!(r.status(), 200, "enterprise refused during the flood");
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    let (ok, refused) = (
        free_ok.load(Ordering::Relaxed),
        free_429.load(Ordering::Relaxed),
    );
    eprintln!("enterprise worst wait {worst:?}; free ok {ok}, refused {refused}");
    assert!(
        worst <= Duration::from_secs(3),
        "enterprise waited {worst:?}"
    );
    assert!(refused > 0 && ok > 0, "free ok {ok}, refused {refused}");
    // Free took at most its 40% share of the bucket plus what drained meanwhile.
    assert!(ok <= 48 + 10, "free got {ok}");
    assert_eq!(
        honest.load(Ordering::Relaxed),
        refused,
        "every Retry-After was a few seconds at most"
    );
    // Honest: once the flood stops, a free request that waits its Retry-After gets in.
    let r = chat(&c, &gw, "free", &chat_body("hi", 5)).await;
    if r.status() == 429 {
        let ms = header_u64(&r, "retry-after-ms");
        tokio::time::sleep(Duration::from_millis(ms + 20)).await;
        assert_eq!(
            chat(&c, &gw, "free", &chat_body("hi", 5)).await.status(),
            200,
            "retry after {ms} ms failed"
        );
    }
}

#[tokio::test]
async fn a_refusal_by_the_provider_bucket_leaves_the_client_and_its_budget_uncharged() {
    let mut t = tier(10, 1_000_000, 0, 0);
    t.daily_budget_usd = Some(10.0);
    let (_sim, gw, c) = start(model(2, 1_000_000), &[("pro", t)]).await;
    let first = Instant::now();
    assert_eq!(
        chat(&c, &gw, "pro", &chat_body("hi", 5)).await.status(),
        200
    );
    assert_eq!(
        chat(&c, &gw, "pro", &chat_body("hi", 5)).await.status(),
        200
    );
    let spent = spend(&gw, "pro").await;
    let r = chat(&c, &gw, "pro", &chat_body("hi", 5)).await;
    // The 429's headers describe the bucket that refused: the provider's.
    assert_eq!(header(&r, "x-tollgate-ratelimit-bucket"), Some("model"));
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some("0"));
    expect_error(r, 429, "model_rpm_exceeded").await;
    let (requests, _) = client_in_use(&gw, "pro").await;
    // Two requests, less what drained since the first (10 a minute: less
    // than one in the test's time, so a charged third would show), and
    // nothing of the refused one, however long the requests took.
    let drained = first.elapsed().as_secs_f64() * 10.0 / 60.0;
    assert!(
        requests > 2.0 - drained - 0.01 && requests <= 2.0,
        "client bucket holds {requests} requests ({drained:.3} drained since the first)"
    );
    assert_eq!(
        spend(&gw, "pro").await,
        spent,
        "budget untouched by the refused request"
    );
}

#[tokio::test]
async fn a_refusal_by_the_client_bucket_leaves_the_provider_bucket_uncharged() {
    let (_sim, gw, c) = start(model(1000, 1_000_000), &[("pro", tier(100, 1000, 0, 0))]).await;
    let provider_in_use = || model_in_use(&gw, "gpt-4o-mini");
    // A small request leaves the client's bucket nearly full, so the next
    // one asks the provider bucket at the same time as the client's.
    assert_eq!(
        chat(&c, &gw, "pro", &chat_body("hi", 5)).await.status(),
        200
    );
    let (requests, tokens) = provider_in_use().await;
    // Too many tokens for what is left of the client's 1000 TPM: refused at once.
    let r = chat(&c, &gw, "pro", &chat_body("hi", 990)).await;
    expect_error(r, 429, "client_tpm_exceeded").await;
    let (after_requests, after_tokens) = provider_in_use().await;
    assert!(
        after_requests <= requests + 1e-9 && after_tokens <= tokens + 1e-6,
        "provider bucket kept the refused request: {requests}/{tokens} before, {after_requests}/{after_tokens} after"
    );
}
