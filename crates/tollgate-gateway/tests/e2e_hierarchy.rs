//! End to end over HTTP: the hierarchy organisation → client → key, each
//! level's limits and budgets checked on every request. A level refuses
//! while the levels around it have room, names itself (in the message, the
//! `x-tollgate-budget-level` header and the ledger row), and concurrent
//! requests never overshoot it: the budgets' race test, run on every level.

mod common;

use common::redis::Redis;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_gateway::budget::{nano_to_usd, Level};
use tollgate_gateway::config::{LimitsConfig, OrgConfig};
use tollgate_gateway::RunningGateway;

/// A chat request with API key `key`.
async fn chat_with(c: &reqwest::Client, url: &str, key: &str, body: &Value) -> reqwest::Response {
    send(
        c.post(format!("{url}/v1/chat/completions"))
            .bearer_auth(key)
            .json(body),
    )
    .await
}

/// Issues a key for `client` with `limits`; answers (key, id).
async fn issue(
    c: &reqwest::Client,
    gw: &RunningGateway,
    client: &str,
    limits: Value,
) -> (String, String) {
    let path = format!("/admin/clients/{client}/keys");
    let r = send(admin(c, gw, Method::POST, &path).json(&json!({ "limits": limits }))).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    (
        v["key"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

async fn spend_at(gw: &RunningGateway, level: Level, id: &str) -> f64 {
    let s = gw.gateway.budgets.spend_at(level, id).await.expect("spend");
    nano_to_usd(s.today)
}

/// [`spend_at`] once `done` holds of it (on Redis, settlements follow the
/// answer), read every 25 ms for up to 2 s; the last value read.
async fn settled(gw: &RunningGateway, level: Level, id: &str, done: impl Fn(f64) -> bool) -> f64 {
    let every = std::time::Duration::from_millis(25);
    poll(80, every, || spend_at(gw, level, id), |s| done(*s)).await
}

fn budget(usd: f64) -> LimitsConfig {
    LimitsConfig {
        daily_budget_usd: Some(usd),
        ..Default::default()
    }
}

/// The budgets' race test on `level`: only that level's daily budget is
/// tight ($1; the organisation allows $5, the client's tier $50, so the
/// levels around it have room); most of it is spent, then 200 requests at
/// once. Each refusal
/// names the level; the level's spend stays within its budget plus what
/// the admitted requests used beyond their estimates, and is exactly what
/// they used; the ledger holds the level in every refusal's row. On
/// `redis`, two instances share the spend and the database (SQLite's
/// file, or the PostgreSQL at `postgres`), and the requests alternate
/// between them.
async fn race_on(level: Level, redis: Option<&Redis>, postgres: Option<&str>) {
    let mut m = model(1_000_000, 100_000_000);
    // $1000 per million tokens = $0.001 a token either way.
    m.input_usd_per_mtok = 1000.0;
    m.output_usd_per_mtok = 1000.0;
    let mut t = tier(1_000_000, 100_000_000, 0, 0);
    t.daily_budget_usd = Some(50.0);
    let sim = sim().await;
    let mut cfg = config(&sim.base_url(), m, &[("acme", t)]);
    cfg.ledger.url = postgres.map_or_else(fresh_database, str::to_string);
    if let Some(r) = redis {
        cfg.store.url = r.url.clone();
    }
    let tight = |l: Level, roomy: f64| if l == level { 1.0 } else { roomy };
    cfg.orgs.insert(
        "acme-corp".into(),
        OrgConfig {
            name: None,
            clients: vec!["acme".into()],
            limits: budget(tight(Level::Org, 5.0)),
        },
    );
    if level == Level::Client {
        // The client's own budget, over its tier's $50.
        cfg.clients[0].limits = budget(1.0);
    }
    let gw = gateway(cfg.clone()).await;
    let other = match redis {
        Some(_) => Some(gateway(cfg).await),
        None => None,
    };
    let c = http();
    let key_limits = if level == Level::Key {
        json!({"daily_budget_usd": 1.0})
    } else {
        json!({})
    };
    let (key, key_id) = issue(&c, &gw, "acme", key_limits).await;
    let id = match level {
        Level::Org => "acme-corp",
        Level::Client => "acme",
        Level::Key => key_id.as_str(),
    };
    let url = gw.url();
    let urls = [url.clone(), other.as_ref().map_or(url.clone(), |o| o.url())];
    if let Some(o) = &other {
        // The key issued on the first instance, known to the second.
        let known = poll(
            80,
            std::time::Duration::from_millis(25),
            || async { o.gateway.registry().authenticate(&key).is_some() },
            |k| *k,
        )
        .await;
        assert!(known, "the second instance never learnt the key");
    }
    // Spend most of the budget: about 16 in + 850 out = $0.866.
    let r = chat_with(
        &c,
        &url,
        &key,
        &chat_body("hello world [sim:tokens=850]", 880),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let used = v["usage"]["total_tokens"].as_u64().unwrap() as f64 * 0.001;
    let before = settled(&gw, level, id, |s| (s - used).abs() < 1e-9).await;
    assert!(
        (before - used).abs() < 1e-9 && before > 0.85,
        "{before}, used {used}"
    );
    // 200 at once, each estimated at 9 + 100 tokens = $0.109, using $0.025.
    let answers = spawn_all(200, |i| {
        let (c, url, key) = (c.clone(), urls[i % 2].clone(), key.clone());
        async move {
            let r = chat_with(&c, &url, &key, &chat_body("hello world", 100)).await;
            let status = r.status().as_u16();
            let named = header(&r, "x-tollgate-budget-level").map(str::to_string);
            let v: Value = r.json().await.unwrap();
            (status, named, v)
        }
    })
    .await;
    let (mut ok, mut refused, mut over_estimate) = (0, 0, 0.0);
    for (status, named, v) in answers {
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
                let message = v["error"]["message"].as_str().unwrap();
                let whose = format!("the {}'s daily budget", level.name());
                assert!(message.contains(&whose), "{message}");
                assert_eq!(named.as_deref(), Some(level.name()));
                refused += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    let exact = |s: f64| (s - (before + ok as f64 * 0.025)).abs() < 1e-9;
    let after = settled(&gw, level, id, exact).await;
    assert!(ok >= 1 && refused >= 150, "ok {ok}, refused {refused}");
    assert!(
        after <= 1.0 + over_estimate + 1e-9,
        "the {} spent ${after} of a $1 budget (allowed overshoot {over_estimate})",
        level.name()
    );
    assert!(
        (after - (before + ok as f64 * 0.025)).abs() < 1e-9,
        "the {}'s spend is exactly the actual usage: {after} (before {before}, {ok} admitted)",
        level.name()
    );
    // The levels around it had room all along: they spent the same.
    for (l, id) in [(Level::Org, "acme-corp"), (Level::Client, "acme")] {
        if l != level {
            let spent = settled(&gw, l, id, |s| (s - after).abs() < 1e-9).await;
            assert!(
                (spent - after).abs() < 1e-9 && spent < 5.0,
                "{}: {spent}",
                l.name()
            );
        }
    }
    // Every refusal's ledger row names the level; every row the key and
    // the organisation.
    if let Some(o) = &other {
        o.gateway.ledger.clone().expect("ledger").flush().await;
    }
    let ledger = gw.gateway.ledger.clone().expect("ledger");
    ledger.flush().await;
    let rows = ledger.store().rows().await.unwrap();
    assert_eq!(rows.len(), 201);
    let named = rows
        .iter()
        .filter(|r| r.budget_level.as_deref() == Some(level.name()))
        .count();
    assert_eq!(named, refused);
    assert!(rows
        .iter()
        .all(|r| r.key_id.as_deref() == Some(key_id.as_str())));
    assert!(rows.iter().all(|r| r.org.as_deref() == Some("acme-corp")));
}

#[tokio::test]
async fn concurrent_requests_never_overshoot_an_organisations_budget_while_its_client_has_room() {
    race_on(Level::Org, None, None).await;
}

#[tokio::test]
async fn concurrent_requests_never_overshoot_a_clients_own_budget_while_its_organisations_has_room()
{
    race_on(Level::Client, None, None).await;
}

#[tokio::test]
async fn concurrent_requests_never_overshoot_a_keys_budget_while_its_client_has_room() {
    race_on(Level::Key, None, None).await;
}

#[tokio::test]
async fn two_instances_on_redis_agree_on_every_levels_budget_under_concurrent_requests() {
    for level in [Level::Org, Level::Client, Level::Key] {
        let redis = Redis::start().await;
        race_on(level, Some(&redis), None).await;
    }
}

#[tokio::test]
async fn two_instances_on_redis_and_postgres_agree_on_every_levels_budget_under_concurrent_requests(
) {
    for level in [Level::Org, Level::Client, Level::Key] {
        let redis = Redis::start().await;
        let postgres = tollgate_harness::postgres::PostgresServer::start_with(false)
            .expect("a PostgreSQL server of the test's own");
        race_on(level, Some(&redis), Some(&postgres.url())).await;
    }
}

/// A key's budget belongs to the key, not to its secret: the key a
/// rotation issues spends what the key it replaces spent, in memory and on
/// Redis, and after a restart (the spend rebuilt from the ledger).
async fn rotation_carries_spend(mut redis: Option<&mut Redis>) {
    let mut m = model(1_000_000, 100_000_000);
    m.input_usd_per_mtok = 1000.0;
    m.output_usd_per_mtok = 1000.0;
    let sim = sim().await;
    let mut cfg = config(
        &sim.base_url(),
        m,
        &[("acme", tier(1_000_000, 100_000_000, 0, 0))],
    );
    cfg.ledger.url = fresh_database();
    if let Some(r) = &redis {
        cfg.store.url = r.url.clone();
    }
    let gw = gateway(cfg.clone()).await;
    let c = http();
    let (old, old_id) = issue(&c, &gw, "acme", json!({"daily_budget_usd": 1.0})).await;
    // About 16 in + 850 out = $0.866 of the $1.
    let big = chat_body("hello world [sim:tokens=850]", 880);
    assert_eq!(chat_with(&c, &gw.url(), &old, &big).await.status(), 200);
    settled(&gw, Level::Key, &old_id, |s| s > 0.85).await;
    let path = format!("/admin/keys/{old_id}/rotate");
    let r = send(admin(&c, &gw, Method::POST, &path).json(&json!({"overlap_secs": 60}))).await;
    assert_eq!(r.status(), 201);
    let rotated: Value = r.json().await.unwrap();
    let new = rotated["key"].as_str().unwrap().to_string();
    assert_eq!(rotated["limits"]["daily_budget_usd"], 1.0, "{rotated}");
    // The new key has $0.134 left, not $1: another $0.87 is refused as the key's.
    let refused_on = |gw: RunningGateway| {
        let (c, new, big) = (c.clone(), new.clone(), big.clone());
        async move {
            let r = chat_with(&c, &gw.url(), &new, &big).await;
            let status = r.status().as_u16();
            let level = header(&r, "x-tollgate-budget-level").map(str::to_string);
            let v: Value = r.json().await.unwrap();
            assert_eq!(
                (status, level.as_deref()),
                (429, Some("key")),
                "the rotated key spent its budget anew: {}",
                v["error"]
            );
            // A small one still fits in what is left.
            let small = chat_body("hello world", 50);
            assert_eq!(chat_with(&c, &gw.url(), &new, &small).await.status(), 200);
            gw
        }
    };
    let gw = refused_on(gw).await;
    // Started again (on Redis: with its counters gone), it still knows.
    gw.gateway.ledger.clone().expect("ledger").flush().await;
    drop(gw);
    if let Some(r) = redis.as_mut() {
        r.restart_empty().await;
    }
    let again = gateway(cfg).await;
    let r = chat_with(&c, &again.url(), &new, &big).await;
    assert_eq!(
        (r.status().as_u16(), header(&r, "x-tollgate-budget-level")),
        (429, Some("key")),
        "after a restart the rotated key's spend was rebuilt without its old key's"
    );
}

#[tokio::test]
async fn a_rotated_key_spends_the_budget_of_the_key_it_replaces() {
    rotation_carries_spend(None).await;
}

#[tokio::test]
async fn a_rotated_key_spends_the_budget_of_the_key_it_replaces_on_redis() {
    let mut redis = Redis::start().await;
    rotation_carries_spend(Some(&mut redis)).await;
}

#[tokio::test]
async fn a_keys_rpm_and_a_clients_own_rpm_refuse_while_the_level_above_has_room() {
    let sim = sim().await;
    let mut cfg = config(
        &sim.base_url(),
        model(1000, 1_000_000),
        &[("acme", tier(100, 1_000_000, 0, 0))],
    );
    let mut beta = cfg.clients[0].clone();
    beta.id = "beta".into();
    beta.key_sha256 = vec![tollgate_gateway::auth::hash_key("key-beta")];
    // Beta's own 2 RPM over its tier's 100.
    beta.limits.rpm = Some(2);
    cfg.clients.push(beta);
    cfg.orgs.insert(
        "group".into(),
        OrgConfig {
            name: None,
            clients: vec!["acme".into()],
            limits: LimitsConfig {
                rpm: Some(50),
                ..Default::default()
            },
        },
    );
    let gw = gateway(cfg).await;
    let c = http();
    let url = gw.url();
    let (key, _) = issue(&c, &gw, "acme", json!({"rpm": 2})).await;
    for _ in 0..2 {
        let r = chat_with(&c, &url, &key, &chat_body("hi", 5)).await;
        assert_eq!(r.status(), 200);
    }
    let r = chat_with(&c, &url, &key, &chat_body("hi", 5)).await;
    assert_eq!(header(&r, "x-tollgate-ratelimit-bucket"), Some("key"));
    let e = expect_error(r, 429, "key_rpm_exceeded").await;
    assert!(e["message"].as_str().unwrap().contains("API key"), "{e}");
    // The client (and its organisation) still have room: its file key works.
    let r = chat_with(&c, &url, "key-acme", &chat_body("hi", 5)).await;
    assert_eq!(r.status(), 200);
    // A client's own rpm over its tier's.
    for _ in 0..2 {
        assert_eq!(
            chat_with(&c, &url, "key-beta", &chat_body("hi", 5))
                .await
                .status(),
            200
        );
    }
    let r = chat_with(&c, &url, "key-beta", &chat_body("hi", 5)).await;
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("2"));
    expect_error(r, 429, "client_rpm_exceeded").await;
}

#[tokio::test]
async fn an_organisations_rpm_refuses_its_clients_while_each_has_room() {
    let sim = sim().await;
    let mut cfg = config(
        &sim.base_url(),
        model(1000, 1_000_000),
        &[
            ("a", tier(100, 1_000_000, 0, 0)),
            ("b", tier(100, 1_000_000, 0, 0)),
        ],
    );
    cfg.orgs.insert(
        "group".into(),
        OrgConfig {
            name: Some("Group".into()),
            clients: vec!["a".into(), "b".into()],
            limits: LimitsConfig {
                rpm: Some(3),
                ..Default::default()
            },
        },
    );
    let gw = gateway(cfg).await;
    let c = http();
    for who in ["a", "b", "a"] {
        assert_eq!(chat(&c, &gw, who, &chat_body("hi", 5)).await.status(), 200);
    }
    let r = chat(&c, &gw, "b", &chat_body("hi", 5)).await;
    assert_eq!(
        header(&r, "x-tollgate-ratelimit-bucket"),
        Some("organisation")
    );
    let e = expect_error(r, 429, "organisation_rpm_exceeded").await;
    assert!(e["message"].as_str().unwrap().contains("\"group\""), "{e}");
    let org = admin_json(&c, &gw, "/admin/orgs/group").await;
    assert_eq!(org["clients"], json!(["a", "b"]), "{org}");
    assert_eq!(org["source"], "file");
    // The client listing filters by the file's organisations too.
    let listed = admin_json(&c, &gw, "/admin/clients?org=group").await;
    let ids: Vec<&str> = listed["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"], "{listed}");
}

#[tokio::test]
async fn organisations_and_levels_are_made_and_changed_through_the_admin_api() {
    let (_sim, gw, c) = start(
        model(1000, 1_000_000),
        &[("pro", tier(100, 1_000_000, 0, 0))],
    )
    .await;
    let post = |body: Value| send(admin(&c, &gw, Method::POST, "/admin/orgs").json(&body));
    // Validated as the file is.
    let r = post(json!({"id": "acme", "limits": {"tpm": 0}})).await;
    let e = expect_error(r, 400, "invalid_change").await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("orgs.acme.limits.tpm"),
        "{e}"
    );
    let r = post(json!({"id": "a b"})).await;
    expect_error(r, 400, "invalid_value").await;
    let r = post(json!({"id": "acme", "limits": {"daily_budget_usd": 0.001}})).await;
    assert_eq!(r.status(), 201);
    // Again: no change; other settings: a conflict.
    let r = post(json!({"id": "acme", "limits": {"daily_budget_usd": 0.001}})).await;
    assert_eq!(r.status(), 200);
    let r = post(json!({"id": "acme", "name": "Other"})).await;
    expect_error(r, 409, "conflict").await;
    // A client in it, and a key of that client.
    let r = send(
        admin(&c, &gw, Method::POST, "/admin/clients")
            .json(&json!({"id": "c1", "tier": "pro", "org": "acme"})),
    )
    .await;
    assert_eq!(r.status(), 201);
    let r = send(
        admin(&c, &gw, Method::POST, "/admin/clients")
            .json(&json!({"id": "c2", "tier": "pro", "org": "nope"})),
    )
    .await;
    expect_error(r, 400, "invalid_value").await;
    let (key, key_id) = issue(&c, &gw, "c1", json!({})).await;
    let url = gw.url();
    // $0.001 a day: the first request's estimate does not fit.
    let r = chat_with(&c, &url, &key, &chat_body("hi", 500)).await;
    assert_eq!(header(&r, "x-tollgate-budget-level"), Some("organisation"));
    expect_error(r, 429, "daily_budget_exceeded").await;
    // Raised, it lets the request in.
    let r = send(
        admin(&c, &gw, Method::PATCH, "/admin/orgs/acme")
            .json(&json!({"limits": {"daily_budget_usd": 10.0}})),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        chat_with(&c, &url, &key, &chat_body("hi", 500))
            .await
            .status(),
        200
    );
    // A key's own budget, set after issue, refuses inside its client's.
    let path = format!("/admin/keys/{key_id}/limits");
    let r =
        send(admin(&c, &gw, Method::PUT, &path).json(&json!({"daily_budget_usd": 0.0001}))).await;
    assert_eq!(r.status(), 200);
    let r = chat_with(&c, &url, &key, &chat_body("hi", 500)).await;
    assert_eq!(header(&r, "x-tollgate-budget-level"), Some("key"));
    expect_error(r, 429, "daily_budget_exceeded").await;
    let r = send(admin(&c, &gw, Method::PUT, &path).json(&json!({"rpm": 0}))).await;
    expect_error(r, 400, "invalid_change").await;
    // A client's own limits; out of its organisation; a disabled one.
    let r = send(admin(&c, &gw, Method::PUT, "/admin/clients/c1/limits").json(&json!({"rpm": 1})))
        .await;
    assert_eq!(r.status(), 200);
    let r = send(admin(&c, &gw, Method::PUT, "/admin/clients/pro/limits").json(&json!({"rpm": 1})))
        .await;
    expect_error(r, 409, "conflict").await;
    let r = send(admin(&c, &gw, Method::PUT, "/admin/clients/c1/org").json(&json!({"org": null})))
        .await;
    assert_eq!(r.status(), 200);
    let listed = admin_json(&c, &gw, "/admin/orgs").await;
    assert_eq!(listed["orgs"][0]["clients"], json!([]), "{listed}");
    let r =
        send(admin(&c, &gw, Method::PUT, "/admin/clients/c1/org").json(&json!({"org": "acme"})))
            .await;
    assert_eq!(r.status(), 200);
    let r =
        send(admin(&c, &gw, Method::PATCH, "/admin/orgs/acme").json(&json!({"disabled": true})))
            .await;
    assert_eq!(r.status(), 200);
    let r = chat_with(&c, &url, &key, &chat_body("hi", 5)).await;
    assert_eq!(r.status(), 401);
    let one = admin_json(&c, &gw, "/admin/orgs/acme").await;
    assert_eq!(
        (one["disabled"].clone(), one["source"].clone()),
        (json!(true), json!("database"))
    );
    let r = send(admin(&c, &gw, Method::GET, "/admin/orgs/none")).await;
    expect_error(r, 404, "not_found").await;
}
