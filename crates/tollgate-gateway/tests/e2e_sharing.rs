//! Tiers sharing a provider model by floor and weight (`floor`, `weight`,
//! `lendable` on tiers): a higher tier flooding the model leaves a lower
//! tier its floor; `/metrics` and `GET /admin/models` show each tier's
//! floor, share, lane use and queue; a request too large for its tier's
//! share borrows another tier's idle lane, or is refused naming the
//! setting to raise; a tier's floor, weight and lendable part changed
//! through the admin API apply on every instance without a restart. The
//! long run with two instances on Redis is the harness's `fairness`
//! (docs/FAIRNESS.md).

mod common;
#[path = "common/scrape.rs"]
mod scrape;

use std::time::{Duration, Instant};

use common::redis::Redis;
use common::*;
use reqwest::Method;
use scrape::Scrape;
use serde_json::json;
use tollgate_gateway::config::TierConfig;

/// A tier with its share of every provider model.
fn shared(priority: u8, max_wait_ms: u64, floor: f64, weight: f64) -> TierConfig {
    let mut t = tier(1_000_000, 1_000_000_000, priority, max_wait_ms);
    t.floor = Some(floor);
    t.weight = Some(weight);
    t
}

/// Closed-loop callers of tier `who` until `until`: the times of their
/// answers 200 (seconds since `t0`) and how many answers were not 200.
async fn callers(
    url: String,
    who: &'static str,
    n: usize,
    t0: Instant,
    until: Instant,
) -> (Vec<f64>, usize) {
    let c = http();
    let runs = spawn_all(n, |_| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let mut ok = Vec::new();
            let mut other = 0;
            while Instant::now() < until {
                let r = chat_at(&c, &url, who, &chat_body("hi", 5)).await;
                if r.status() == 200 {
                    ok.push(t0.elapsed().as_secs_f64());
                } else {
                    other += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            (ok, other)
        }
    })
    .await;
    let mut all = Vec::new();
    let mut other = 0;
    for (ok, o) in runs {
        all.extend(ok);
        other += o;
    }
    (all, other)
}

/// The chat model in `GET /admin/models`.
async fn chat_model(
    c: &reqwest::Client,
    gw: &tollgate_gateway::RunningGateway,
) -> serde_json::Value {
    let models = admin_json(c, gw, "/admin/models").await;
    models["models"]
        .as_array()
        .expect("a list of models")
        .iter()
        .find(|m| m["name"] == "gpt-4o-mini")
        .expect("the chat model")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_tier_flooding_a_model_leaves_a_lower_tier_its_floor() {
    // 600 RPM (10 a second), a bucket of 12 requests; tokens plenty.
    let mut m = model(600, 100_000_000);
    m.burst = 0.02;
    // ent: floor 0.5, free: floor 0.2; the 0.3 left is split 1:1, so the
    // lanes are 0.65 and 0.35 of the model.
    let tiers = [
        ("ent", shared(0, 20_000, 0.5, 1.0)),
        ("free", shared(3, 20_000, 0.2, 1.0)),
    ];
    let (_sim, gw, c) = start(m, &tiers).await;
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(8);
    let flood = tokio::spawn(callers(gw.url(), "ent", 40, t0, until));
    let low = tokio::spawn(callers(gw.url(), "free", 4, t0, until));
    // Mid-run, both tiers are backlogged: each lane's figures are there.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = Scrape::of(&c, &gw).await;
    let of = |name: &str, tier: &str| s.sum(name, &[("model", "gpt-4o-mini"), ("tier", tier)]);
    assert!((of("tollgate_model_share", "ent") - 0.65).abs() < 1e-9);
    assert!((of("tollgate_model_share", "free") - 0.35).abs() < 1e-9);
    assert_eq!(of("tollgate_model_share_floor", "free"), 0.2);
    assert!(
        of("tollgate_model_share_queue_depth", "ent") > 5.0,
        "the flood queues in its own lane"
    );
    let req = |name: &str, tier: &str| {
        s.sum(
            name,
            &[
                ("model", "gpt-4o-mini"),
                ("tier", tier),
                ("dimension", "requests"),
            ],
        )
    };
    assert!((req("tollgate_model_share_capacity", "ent") - 0.65 * 12.0).abs() < 1e-6);
    assert!(req("tollgate_model_share_in_use", "ent") > 0.0);
    let chat = chat_model(&c, &gw).await;
    assert_eq!(chat["shared"], true);
    let free = &chat["tiers"][1];
    assert_eq!(
        (free["tier"].as_str(), free["floor"].as_f64()),
        (Some("free"), Some(0.2))
    );
    assert!(free["usage"]["requests"]["capacity"].as_f64().unwrap() > 4.0);
    let (ent, ent_other) = flood.await.unwrap();
    let (free, free_other) = low.await.unwrap();
    assert_eq!((ent_other, free_other), (0, 0), "nothing refused");
    // From 2 s in (the first burst spent) to the end: the rate is 10 a
    // second, so 60 requests in all.
    let window = |t: &[f64]| t.iter().filter(|&&t| (2.0..8.0).contains(&t)).count() as f64;
    let (ent, free) = (window(&ent), window(&free));
    let total = 10.0 * 6.0;
    assert!(
        ent + free <= total + 12.0 + 1.0,
        "never above the model's limit: {ent} + {free}"
    );
    // Strict priority would give free nothing; its floor is 0.2 of the
    // model and its lane 0.35.
    assert!(
        free >= 0.2 * total,
        "free got {free} of {total}, below its floor"
    );
    assert!(
        free >= 0.8 * 0.35 * total,
        "free got {free} of {total}, below its lane"
    );
    assert!(ent >= 0.8 * 0.65 * total, "ent got {ent} of {total}");
}

#[tokio::test]
async fn a_request_too_large_for_its_tiers_share_borrows_or_names_the_setting_to_raise() {
    // 6,000 TPM in a bucket of 6,000 tokens; free's lane is 0.1 of it (600).
    let m = || model(1_000, 6_000);
    let mut free = shared(3, 0, 0.0, 1.0);
    let mut ent = shared(0, 0, 0.8, 1.0);
    ent.lendable = Some(0.0);
    let tiers = [("ent", ent.clone()), ("free", free.clone())];
    let (_sim, gw, c) = start(m(), &tiers).await;
    let big = chat_body("hi", 1_000);
    let r = chat(&c, &gw, "free", &big).await;
    let e = expect_error(r, 400, "model_request_too_large_for_share").await;
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("tiers.free.floor") && msg.contains("tiers.free.weight"),
        "{msg}"
    );
    // A small one fits its lane.
    assert_eq!(
        chat(&c, &gw, "free", &chat_body("hi", 100)).await.status(),
        200
    );
    // With ent's lane lendable, the large one borrows it (ent is idle).
    ent.lendable = Some(1.0);
    free.max_wait_ms = 0;
    let tiers = [("ent", ent), ("free", free)];
    let (_sim, gw, c) = start(m(), &tiers).await;
    assert_eq!(chat(&c, &gw, "free", &big).await.status(), 200);
}

#[tokio::test]
async fn an_upstream_429_backs_off_every_tiers_lane() {
    // 60,000 TPM, 1,000 tokens a second; ent's lane is 0.7, free's 0.3.
    let tiers = [
        ("ent", shared(0, 0, 0.6, 1.0)),
        ("free", shared(3, 0, 0.2, 1.0)),
    ];
    let (_sim, gw, c) = start(model(600, 60_000), &tiers).await;
    let r = chat(&c, &gw, "free", &chat_body("hi [sim:429]", 10)).await;
    expect_error(r, 429, "rate_limit_exceeded").await;
    // The provider asked for 1 s: each lane holds about 1 s of its own
    // rate, not only the lane of the tier that met the 429.
    let chat = chat_model(&c, &gw).await;
    for (i, share) in [(0, 0.7), (1, 0.3)] {
        let used = chat["tiers"][i]["usage"]["tokens"]["in_use"]
            .as_f64()
            .unwrap();
        assert!(
            used > 0.9 * share * 1_000.0,
            "tier {}'s lane backs off: {used} tokens in use",
            chat["tiers"][i]["tier"]
        );
    }
}

/// Tier `tier`'s lane share of the chat model, as `GET /admin/models` on
/// `gw` shows it.
async fn share_of(c: &reqwest::Client, gw: &tollgate_gateway::RunningGateway, tier: &str) -> f64 {
    let chat = chat_model(c, gw).await;
    chat["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == tier)
        .unwrap_or_else(|| panic!("no tier {tier} in {chat}"))["share"]
        .as_f64()
        .unwrap()
}

/// Polls instance `gw` until tier `tier`'s share is `want`; answers how long
/// that took (at most 5 s, then the test fails).
async fn share_seen(
    c: &reqwest::Client,
    gw: &tollgate_gateway::RunningGateway,
    tier: &str,
    want: f64,
) -> Duration {
    let t0 = Instant::now();
    let got = poll(
        250,
        Duration::from_millis(20),
        || share_of(c, gw, tier),
        |s| (s - want).abs() < 1e-9,
    )
    .await;
    assert!(
        (got - want).abs() < 1e-9,
        "{tier}'s share is {got}, not {want}"
    );
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floors_and_weights_changed_on_one_instance_apply_on_the_other_within_a_second() {
    let redis = Redis::start().await;
    // 6,000 TPM in a bucket of 6,000 tokens. ent: floor 0.8, lends
    // nothing; free: no floor. The 0.2 left is split 1:1, so free's lane
    // is 0.1 of the model (600 tokens).
    let mut ent = shared(0, 0, 0.8, 1.0);
    ent.lendable = Some(0.0);
    let tiers = [("ent", ent), ("free", shared(3, 0, 0.0, 1.0))];
    let mut m = model(1_000, 6_000);
    m.burst = 1.0;
    let _sim = sim().await;
    let mut file = config(&_sim.base_url(), m, &tiers);
    file.store.url = redis.url.clone();
    file.ledger.url = fresh_database();
    let a = gateway(file.clone()).await;
    let b = gateway(file).await;
    let c = http();
    let big = chat_body("hi", 2_000);
    let r = chat(&c, &b, "free", &big).await;
    expect_error(r, 400, "model_request_too_large_for_share").await;

    // The file's rules: floors summing past 1, a weight of 0, a null.
    for (change, names) in [
        (json!({"floor": 0.4}), "tiers.*.floor"),
        (json!({"weight": 0}), "tiers.free.weight"),
        (json!({"lendable": 1.5}), "tiers.free.lendable"),
    ] {
        let r = patch_tier(&c, &a, "free", &change).await;
        let e = expect_error(r, 400, "invalid_tier").await;
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains(names), "{change}: {msg}");
    }
    let r = patch_tier(&c, &a, "free", &json!({"floor": null})).await;
    expect_error(r, 400, "invalid_body").await;
    assert!((share_of(&c, &a, "free").await - 0.1).abs() < 1e-9);

    // ent's floor down to 0.4, then free's up to 0.4: ent 0.4 + 0.1, free
    // 0.4 + 0.1 (3,000 tokens).
    assert_eq!(
        patch_tier(&c, &a, "ent", &json!({"floor": 0.4}))
            .await
            .status(),
        200
    );
    let r = patch_tier(&c, &a, "free", &json!({"floor": 0.4, "weight": 1})).await;
    assert_eq!(r.status(), 200);
    assert!(
        (share_of(&c, &a, "free").await - 0.5).abs() < 1e-9,
        "at once where it was made"
    );
    let took = share_seen(&c, &b, "free", 0.5).await;
    assert!(
        took < Duration::from_millis(1_500),
        "instance B took {took:?}"
    );
    assert!((share_of(&c, &b, "ent").await - 0.5).abs() < 1e-9);
    // B's bucket holds it now: the request too large for free's old lane
    // fits its new one there.
    assert_eq!(chat(&c, &b, "free", &big).await.status(), 200);
    let s = Scrape::of(&c, &b).await;
    let share = s.sum(
        "tollgate_model_share",
        &[("model", "gpt-4o-mini"), ("tier", "free")],
    );
    assert!((share - 0.5).abs() < 1e-9, "B's /metrics: {share}");
    assert_eq!(
        s.sum(
            "tollgate_model_share_floor",
            &[("model", "gpt-4o-mini"), ("tier", "free")]
        ),
        0.4
    );

    // Free's override removed on B: the file's floor again, with ent's
    // override kept (0.4 + 0.3 and 0 + 0.3), on A too.
    let path = "/admin/overrides/tiers/free";
    assert_eq!(
        send(admin(&c, &b, Method::DELETE, path)).await.status(),
        200
    );
    assert!((share_of(&c, &b, "free").await - 0.3).abs() < 1e-9);
    let took = share_seen(&c, &a, "free", 0.3).await;
    assert!(
        took < Duration::from_millis(1_500),
        "instance A took {took:?}"
    );
}

#[tokio::test]
async fn a_floor_is_refused_on_tiers_the_file_does_not_share_by_floor_and_weight() {
    let (_sim, gw, c) = start(model(600, 60_000), &[("pro", pro_tier())]).await;
    for (change, field) in [
        (json!({"floor": 0.3}), "tiers.pro.floor"),
        (json!({"weight": 2}), "tiers.pro.weight"),
    ] {
        let r = patch_tier(&c, &gw, "pro", &change).await;
        let e = expect_error(r, 400, "invalid_tier").await;
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains(field) && msg.contains("do not share"), "{msg}");
    }
    assert_eq!(chat_model(&c, &gw).await["shared"], false);
}
