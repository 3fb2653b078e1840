//! Two gateway instances sharing one real `redis-server` (started here on a
//! free loopback port): a client's RPM and TPM hold across both, spend and
//! budgets are shared, and a live tier change reaches the other instance
//! within a second; the change notices' reads are judged as every store
//! call is.

mod common;

use std::time::{Duration, Instant};

use common::redis::Redis;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use tollgate::store::RedisOptions;
use tollgate::Store;
use tollgate_gateway::sync::LiveSync;
use tollgate_gateway::RunningGateway;

#[tokio::test]
async fn two_instances_hold_a_clients_rpm_and_tpm_together() {
    let redis = Redis::start().await;
    let (_sim, [a, b], c) = two_instances(
        &redis.url,
        &[
            ("small", tier(10, 1_000_000, 0, 0)),
            ("tokens", tier(1000, 1000, 0, 0)),
        ],
    )
    .await;
    let statuses = chat_alternating(&c, &[&a, &b], 20, "small", &chat_body("hi", 5)).await;
    assert_eq!(
        count(&statuses, 200),
        10,
        "10 RPM across both instances, not 20"
    );
    // TPM 1000: each request keeps 9 + 300 tokens (the simulator uses them all).
    let big = chat_body("hi [sim:tokens=300]", 300);
    let statuses = chat_alternating(&c, &[&a, &b], 10, "tokens", &big).await;
    assert_eq!(count(&statuses, 200), 3, "1000 TPM across both instances");
    // Spend is shared too.
    let (sa, sb) = (spend(&a, "tokens").await, spend(&b, "tokens").await);
    assert!(sa > 0.0 && (sa - sb).abs() < 1e-12, "{sa} vs {sb}");
}

#[tokio::test]
async fn a_daily_budget_holds_across_two_instances_under_concurrency() {
    let redis = Redis::start().await;
    let mut t = tier(1_000_000, 100_000_000, 0, 0);
    t.daily_budget_usd = Some(0.001);
    let (_sim, [a, b], c) = two_instances(&redis.url, &[("acme", t)]).await;
    // Each request is estimated at (9 + 100 out × 2) = $0.000209 and uses
    // (9 + 16 × 2) = $0.000041.
    let statuses = spawn_all(100, |i| {
        let (c, url) = (c.clone(), if i % 2 == 0 { a.url() } else { b.url() });
        async move {
            let r = chat_at(&c, &url, "acme", &chat_body("hello world", 100)).await;
            r.status().as_u16()
        }
    })
    .await;
    let ok = count(&statuses, 200);
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
    let tiers = [
        ("free", tier(10, 100_000, 3, 0)),
        ("pro", tier(500, 1_000_000, 0, 0)),
    ];
    let (_sim, [a, b], c) = two_instances(&redis.url, &tiers).await;
    assert_eq!(rpm_limit(&c, &b, "free").await.as_deref(), Some("10"));
    let within = Duration::from_secs(1);
    let changed = Instant::now();
    assert_eq!(set_client_tier(&c, &a, "free", "pro").await.status(), 200);
    await_rpm_limit(&c, &b, "free", "500", changed, within).await;
    let tier_change = Instant::now();
    let r = patch_tier(&c, &b, "pro", &json!({"rpm": 700})).await;
    assert_eq!(r.status(), 200);
    await_rpm_limit(&c, &a, "free", "700", tier_change, within).await;
    eprintln!(
        "client move seen in {:?}; tier change seen in {:?}",
        tier_change - changed,
        tier_change.elapsed()
    );
    // A third instance on the same database started later picks up both
    // changes at once.
    let late = gateway(a.gateway.config.clone()).await;
    assert_eq!(rpm_limit(&c, &late, "free").await.as_deref(), Some("700"));
}

/// The registry is the database's: a Redis restarted empty loses no tier
/// change and no client move, on the instances running and on one started
/// after; and the next change still reaches the other instance.
#[tokio::test]
async fn a_redis_restarted_empty_loses_no_registry_change() {
    let mut redis = Redis::start().await;
    let tiers = [
        ("free", tier(10, 100_000, 0, 0)),
        ("pro", tier(500, 1_000_000, 0, 0)),
    ];
    let (_sim, [a, b], c) = two_instances(&redis.url, &tiers).await;
    assert_eq!(set_client_tier(&c, &a, "free", "pro").await.status(), 200);
    let r = patch_tier(&c, &a, "pro", &json!({"rpm": 700})).await;
    assert_eq!(r.status(), 200);
    let route = json!({"rules": [{"models": ["gpt-4o-mini"]}]});
    let r = send(admin(&c, &a, Method::PUT, "/admin/routes/chat").json(&route)).await;
    assert_eq!(r.status(), 200);
    // The hierarchy: an organisation, a client of it with its own rpm, a key
    // with a budget of its own (spent until it refuses) and one without.
    let org = json!({"id": "grp", "limits": {"rpm": 6000, "monthly_budget_usd": 100.0}});
    let r = send(admin(&c, &a, Method::POST, "/admin/orgs").json(&org)).await;
    assert_eq!(r.status(), 201);
    let client = json!({"id": "c1", "tier": "pro", "org": "grp", "limits": {"rpm": 3000}});
    let r = send(admin(&c, &a, Method::POST, "/admin/clients").json(&client)).await;
    assert_eq!(r.status(), 201);
    let issue = |limits: Value| {
        let req = admin(&c, &a, Method::POST, "/admin/clients/c1/keys");
        async move {
            let v: Value = send(req.json(&json!({ "limits": limits })))
                .await
                .json()
                .await
                .unwrap();
            v["key"].as_str().unwrap().to_string()
        }
    };
    let capped = issue(json!({"daily_budget_usd": 0.0001})).await;
    let open = issue(json!({})).await;
    let keyed = |gw: &RunningGateway, key: &str| {
        c.post(format!("{}/v1/chat/completions", gw.url()))
            .bearer_auth(key.to_string())
            .json(&chat_body("hi", 5))
    };
    let (mut refused_by_key, mut answered) = (false, 0);
    for _ in 0..20 {
        let r = send(keyed(&a, &capped)).await;
        if r.status() == 429 {
            assert_eq!(header(&r, "x-tollgate-budget-level"), Some("key"));
            refused_by_key = true;
            break;
        }
        assert_eq!(r.status(), 200);
        answered += 1;
        // Each settles before the next asks (the estimate is below the use).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused_by_key, "the key's $0.0001 was never spent");
    // Every answered request is settled and in the ledger before the store
    // is wiped: a settlement still on its way then would find its hold gone
    // and charge nothing, and the rebuild could miss its row (DESIGN.md,
    // "Budgets survive a store reset").
    await_ledger_ok(&a, "c1", answered).await;
    await_rpm_limit(
        &c,
        &b,
        "free",
        "700",
        Instant::now(),
        Duration::from_secs(1),
    )
    .await;

    redis.restart_empty().await;
    // Past several checks for notices and re-reads of the database.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for gw in [&a, &b] {
        assert_eq!(rpm_limit(&c, gw, "free").await.as_deref(), Some("700"));
        assert_eq!(rpm_limit(&c, gw, "pro").await.as_deref(), Some("700"));
    }
    let late = gateway(a.gateway.config.clone()).await;
    assert_eq!(rpm_limit(&c, &late, "free").await.as_deref(), Some("700"));
    // Every organisation, client and key survived with its limits, and the
    // key's budget still holds (rebuilt from the ledger). Buckets the store
    // lost start drained and refill (`AfterReset`): the limits are large
    // enough to have room again a second and a half later.
    for gw in [&b, &late] {
        let org = admin_json(&c, gw, "/admin/orgs/grp").await;
        assert_eq!(org["clients"], json!(["c1"]), "{org}");
        assert_eq!(org["limits"]["rpm"], 6000, "{org}");
        let r = send(keyed(gw, &open)).await;
        assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("3000"));
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        let r = send(keyed(gw, &capped)).await;
        assert_eq!(header(&r, "x-tollgate-budget-level"), Some("key"));
        expect_error(r, 429, "daily_budget_exceeded").await;
    }
    let keys = admin_json(&c, &late, "/admin/clients/c1/keys").await;
    let budgets: Vec<&Value> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["limits"]["daily_budget_usd"])
        .collect();
    assert_eq!(budgets, [&json!(0.0001), &Value::Null], "{keys}");
    let listed = admin_json(&c, &late, "/admin/overrides").await;
    assert_eq!(listed["clients"]["free"]["tier"], "pro", "{listed}");
    let mut body = chat_body("hi", 5);
    body["model"] = json!("chat");
    for gw in [&b, &late] {
        let r = chat(&c, gw, "free", &body).await;
        assert_eq!(
            header(&r, "x-tollgate-route"),
            Some("chat/1"),
            "{:?}",
            r.status()
        );
    }

    // The next change reaches the other instance by its notice, or by the
    // re-read of the database every `REREAD_EVERY` checks (1 s) should the
    // store's connection still be coming back.
    let changed = Instant::now();
    let r = patch_tier(&c, &b, "pro", &json!({"rpm": 900})).await;
    assert_eq!(r.status(), 200);
    await_rpm_limit(&c, &a, "free", "900", changed, Duration::from_secs(2)).await;
}

/// Waits (at most 10 s) until `gw`'s ledger holds `ok` answered requests of
/// `client`.
async fn await_ledger_ok(gw: &RunningGateway, client: &str, ok: i64) {
    let ledger = gw.gateway.ledger.clone().expect("ledger");
    let query = tollgate_gateway::ledger::UsageQuery::parse(None, None, Some("client")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        ledger.flush().await;
        let report = ledger.report(query).await.expect("report");
        let now = report
            .groups
            .iter()
            .find(|g| g.key == client)
            .map_or(0, |g| g.ok);
        if now == ok {
            return;
        }
        assert!(
            now < ok && Instant::now() < deadline,
            "{now} of {ok} rows of {client}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client that leaves while its admission is still on its way to Redis
/// (the store paused, the budget's reservation sent but not answered) is
/// charged nothing once the store answers: the admission finishes without
/// it and gives back what it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_during_admission_is_charged_nothing() {
    let redis = Redis::start().await;
    let mut t = tier(1_000_000, 100_000_000, 0, 0);
    t.daily_budget_usd = Some(10.0);
    let (_sim, [a, _b], c) = two_instances(&redis.url, &[("acme", t)]).await;
    // One request first, so that every connection is open and warm.
    let r = chat_at(&c, &a.url(), "acme", &chat_body("hello world", 100)).await;
    assert_eq!(r.status(), 200);
    // Settled: the usage ($0.000041) replaced the estimate ($0.000209).
    let before = settled_spend(&a, "acme", |s| s > 0.0 && s < 0.0001).await;
    assert!(before > 0.0 && before < 0.0001, "{before}");

    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    redis.pause();
    let gone = impatient
        .post(format!("{}/v1/chat/completions", a.url()))
        .bearer_auth("key-acme")
        .json(&chat_body("hello world", 4_000))
        .send()
        .await;
    assert!(gone.is_err(), "the paused store cannot have answered");
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.resume();
    // What the gone request reserved (about $0.008 of estimated output) must
    // come back; read the spend until it settles for a few seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = spend(&a, "acme").await;
    assert!(
        (after - before).abs() < 1e-9,
        "spend {before} before, {after} after a request that never reached the upstream"
    );
}

/// The registry's change notices are judged as every store call is: a read
/// that only waits in this process (the one thread of its runtime kept
/// busy past the store's timeout) while Redis answers gets its number, and
/// a paused Redis (SIGSTOP) still fails it long before the connection's own
/// limit (`late_reply_timeout`).
#[tokio::test(flavor = "current_thread")]
async fn a_change_notice_read_kept_waiting_by_its_own_runtime_is_not_an_outage() {
    let redis = Redis::start().await;
    let timeout = Duration::from_millis(200);
    let options = RedisOptions::default()
        .connect_timeout(timeout)
        .response_timeout(timeout);
    let Store::Redis(store) = Store::redis_with(&redis.url, options).await.unwrap() else {
        unreachable!("a redis:// URL")
    };
    let sync = LiveSync::Redis(store, timeout);
    sync.announce(7).await.unwrap();
    for round in 0..3 {
        let read = tokio::spawn({
            let sync = sync.clone();
            async move { sync.announced().await }
        });
        // Runs after the read was handed to the connection, before the
        // connection's task has sent it: the reply waits for this thread.
        tokio::spawn(async { std::thread::sleep(Duration::from_millis(600)) });
        assert_eq!(read.await.unwrap(), Ok(7), "round {round}");
    }
    redis.pause();
    let started = Instant::now();
    let read = sync.announced().await;
    let waited = started.elapsed();
    redis.resume();
    assert!(read.is_err(), "{read:?}");
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
}
