//! Routes through the gateway, in front of the real simulated upstream: a
//! request for `model: "auto"` goes to the models of the first rule that
//! matches its tier, task, size and hint; candidates that cannot hold it
//! (context window), that its budget cannot pay (a cheaper one serves it,
//! 429 `budget_exceeded` when none can) or whose provider bucket cannot
//! start it within the tier's wait are passed over; nothing stays reserved;
//! routes change live through the admin API, on every instance.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_gateway::config::{Config, ModelConfig, RouteConfig};
use tollgate_gateway::RunningGateway;

const PREMIUM: &str = "premium";
const BALANCED: &str = "balanced";
const CHEAP: &str = "cheap";

/// A chat model at `input`/`output` USD per million tokens, counted 4
/// bytes a token, with a 128k context, far from its limits.
fn priced(input: f64, output: f64) -> ModelConfig {
    let mut m = model(100_000, 100_000_000);
    m.input_usd_per_mtok = input;
    m.output_usd_per_mtok = output;
    m.context_window = 128_000;
    m.tokenizer = Some("approx".into());
    m
}

/// The route `auto` of these tests: enterprise code and analysis go to the
/// premium model first; enterprise else to the balanced one; the hint
/// `cheap` and everyone else to the cheap one.
const AUTO: &str = r#"
[[rules]]
name = "hinted"
hint = "cheap"
models = ["cheap"]
[[rules]]
name = "premium"
tiers = ["enterprise"]
tasks = ["code", "analysis"]
models = ["premium", "balanced", "cheap"]
[[rules]]
name = "balanced"
tiers = ["enterprise"]
models = ["balanced", "cheap"]
[[rules]]
name = "cheap"
models = ["cheap", "balanced"]
"#;

fn route(text: &str) -> RouteConfig {
    toml::from_str(text).expect("a route")
}

/// The three models beside `gpt-4o-mini` on the simulated upstream, the
/// route `auto`, and tiers enterprise and free (one client each).
fn routed_config(sim_url: &str, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut c = config(
        sim_url,
        priced(0.15, 0.6),
        &[
            ("enterprise", tier(1_000, 10_000_000, 0, 0)),
            ("free", tier(1_000, 10_000_000, 3, 0)),
        ],
    );
    let models = &mut c.providers.get_mut("sim").unwrap().models;
    models.insert(PREMIUM.into(), priced(15.0, 75.0));
    models.insert(BALANCED.into(), priced(2.5, 10.0));
    models.insert(CHEAP.into(), priced(0.1, 0.4));
    c.routes.insert("auto".into(), route(AUTO));
    c.server.max_body_bytes = 1 << 20;
    tweak(&mut c);
    c
}

fn auto(content: &str, max_tokens: u64) -> Value {
    json!({"model": "auto", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens})
}

/// (`x-tollgate-model`, `x-tollgate-route`, `x-tollgate-attempts`).
fn trail(r: &reqwest::Response) -> (String, String, String) {
    let h = |n| header(r, n).unwrap_or("-").to_string();
    (
        h("x-tollgate-model"),
        h("x-tollgate-route"),
        h("x-tollgate-attempts"),
    )
}

fn served(model: &str, route: &str, attempts: u32) -> (String, String, String) {
    (model.into(), route.into(), attempts.to_string())
}

/// Every bucket holds only what was settled: no estimate left behind.
async fn nothing_reserved(gw: &RunningGateway, client: &str, settled_at_most: f64) {
    let (_, tokens) = client_in_use(gw, client).await;
    assert!(
        tokens <= settled_at_most,
        "client {client}: {tokens} tokens in use"
    );
    for m in [PREMIUM, BALANCED, CHEAP] {
        let (_, tokens) = model_in_use(gw, m).await;
        assert!(tokens <= settled_at_most, "{m}: {tokens} tokens in use");
    }
    let clients = admin_json(&http(), gw, "/admin/clients").await;
    let shown = clients["clients"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["id"] == client))
        .map(|c| c["usage"]["tokens"]["in_use"].as_f64().unwrap())
        .unwrap_or_else(|| panic!("{clients}"));
    assert!(shown <= settled_at_most, "/admin/clients shows {shown}");
}

#[tokio::test]
async fn requests_for_auto_are_routed_by_tier_task_and_hint() {
    let sim = sim().await;
    let gw = gateway(routed_config(&sim.base_url(), |_| {})).await;
    let c = http();
    for (who, text, hint, want) in [
        (
            "enterprise",
            "Fix this Python bug",
            None,
            served(PREMIUM, "auto/premium", 1),
        ),
        (
            "enterprise",
            "Compare these two plans",
            None,
            served(PREMIUM, "auto/premium", 1),
        ),
        (
            "enterprise",
            "Hello there",
            None,
            served(BALANCED, "auto/balanced", 1),
        ),
        (
            "enterprise",
            "Summarise the notes",
            None,
            served(BALANCED, "auto/balanced", 1),
        ),
        (
            "free",
            "Fix this Python bug",
            None,
            served(CHEAP, "auto/cheap", 1),
        ),
        (
            "enterprise",
            "Fix this Python bug",
            Some("header"),
            served(CHEAP, "auto/hinted", 1),
        ),
        (
            "enterprise",
            "Fix this Python bug",
            Some("metadata"),
            served(CHEAP, "auto/hinted", 1),
        ),
    ] {
        let mut body = auto(text, 50);
        let mut req = c
            .post(format!("{}/v1/chat/completions", gw.url()))
            .bearer_auth(format!("key-{who}"));
        match hint {
            Some("header") => req = req.header("x-tollgate-route", "cheap"),
            Some(_) => body["metadata"] = json!({"tollgate_route": "cheap", "team": "t"}),
            None => {}
        }
        let r = send(req.json(&body)).await;
        assert_eq!(r.status(), 200, "{who} {text}");
        assert_eq!(trail(&r), want, "{who} {text} {hint:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 16);
        let seen = sim.stats.last_body.lock().clone().unwrap();
        assert_eq!(
            seen["model"],
            want.0.as_str(),
            "the upstream is asked for the model"
        );
        // Gateway-only fields and headers stay in the gateway.
        let names = sim.stats.last_header_names.lock().clone();
        assert!(
            !names.iter().any(|n| n.starts_with("x-tollgate")),
            "{names:?}"
        );
        let metadata = seen.get("metadata").cloned();
        if hint == Some("metadata") {
            assert_eq!(metadata, Some(json!({"team": "t"})), "{seen}");
        } else {
            assert_eq!(metadata, None, "{seen}");
        }
    }
    assert_eq!(sim.stats.requests_for(PREMIUM), 2);
    assert_eq!(sim.stats.requests_for(BALANCED), 2);
    assert_eq!(sim.stats.requests_for(CHEAP), 3);
    // A route with no rule for the request, and a bad route's name.
    let mut c2 = routed_config(&sim.base_url(), |_| {});
    c2.routes.insert(
        "pro-only".into(),
        route("[[rules]]\ntiers = [\"enterprise\"]\nmodels = [\"cheap\"]\n"),
    );
    let gw2 = gateway(c2).await;
    let mut b = auto("hi", 5);
    b["model"] = json!("pro-only");
    let e = expect_error(chat(&c, &gw2, "free", &b).await, 400, "no_route").await;
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("\"pro-only\"") && msg.contains("\"free\""),
        "{msg}"
    );
    b["model"] = json!("nope");
    expect_error(chat(&c, &gw2, "free", &b).await, 404, "model_not_found").await;
}

#[tokio::test]
async fn a_model_whose_context_window_cannot_hold_the_request_is_skipped() {
    let sim = sim().await;
    let gw = gateway(routed_config(&sim.base_url(), |c| {
        let models = &mut c.providers.get_mut("sim").unwrap().models;
        models.get_mut(PREMIUM).unwrap().context_window = 4_096;
        models.get_mut(BALANCED).unwrap().context_window = 8_192;
    }))
    .await;
    let c = http();
    // 2,000 prompt tokens + 3,000 max_tokens: only the premium model's
    // window is too small; 7,000 + 3,000: only the cheap one's holds it.
    let code = |tokens: usize| format!("fix this code {}", "abcd".repeat(tokens));
    for (tokens, want) in [(2_000, BALANCED), (7_000, CHEAP)] {
        let r = chat(&c, &gw, "enterprise", &auto(&code(tokens), 3_000)).await;
        assert_eq!(r.status(), 200, "{tokens}");
        assert_eq!(trail(&r), served(want, "auto/premium", 1), "{tokens}");
    }
    assert_eq!(
        sim.stats.requests_for(PREMIUM),
        0,
        "nothing was sent to a model too small"
    );
    // When no candidate holds it, the answer is OpenAI's context error.
    let e = expect_error(
        chat(&c, &gw, "enterprise", &auto(&code(200_000), 10)).await,
        400,
        "context_length_exceeded",
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("context length"));
    nothing_reserved(&gw, "enterprise", 20_000.0).await;
}

#[tokio::test]
async fn a_client_near_its_budget_is_served_by_the_cheaper_model_then_refused() {
    budget_downgrade("daily").await;
}

#[tokio::test]
async fn a_client_near_its_monthly_budget_is_served_by_the_cheaper_model_then_refused() {
    budget_downgrade("monthly").await;
}

/// A client of `period` (daily or monthly) budget $0.01 routed to `auto`.
async fn budget_downgrade(period: &str) {
    let sim = sim().await;
    // $0.01: 1,000 output tokens cost $0.075 on the premium model, $0.01 on
    // the balanced one (just over, with the input), $0.0004 on the cheap one.
    let gw = gateway(routed_config(&sim.base_url(), |c| {
        let t = c.tiers.get_mut("enterprise").unwrap();
        if period == "daily" {
            t.daily_budget_usd = Some(0.01);
        } else {
            t.monthly_budget_usd = Some(0.01);
        }
    }))
    .await;
    let c = http();
    let r = chat(&c, &gw, "enterprise", &auto("Fix this Python bug", 1_000)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(trail(&r), served(CHEAP, "auto/premium", 1));
    assert_eq!(
        (
            sim.stats.requests_for(PREMIUM),
            sim.stats.requests_for(BALANCED)
        ),
        (0, 0)
    );
    let usage: Value = r.json().await.unwrap();
    let prompt = usage["usage"]["prompt_tokens"].as_f64().unwrap();
    let spent = settled_spend(&gw, "enterprise", |s| s > 0.0).await;
    // What was spent is the cheap model's price of what was used.
    let want = (prompt * 0.1 + 16.0 * 0.4) / 1e6;
    assert!((spent - want).abs() < 2e-9, "spent {spent}, want {want}");
    // 30,000 output tokens do not fit on any candidate: 429 budget_exceeded,
    // nothing sent, nothing reserved, nothing charged.
    let r = chat(&c, &gw, "enterprise", &auto("Fix this Python bug", 30_000)).await;
    assert_eq!(trail(&r).2, "0");
    let e = expect_error(r, 429, &format!("{period}_budget_exceeded")).await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{period} budget")),
        "{e}"
    );
    assert_eq!(sim.stats.requests_for(CHEAP), 1);
    nothing_reserved(&gw, "enterprise", 100.0).await;
    assert_eq!(spend(&gw, "enterprise").await, spent);
}

#[tokio::test]
async fn a_full_provider_bucket_routes_to_the_next_model_that_can_start_within_the_tiers_wait() {
    let sim = sim().await;
    // The premium model refills 1,000 tokens a second and holds 60,000; a
    // first request's 59,000 prompt tokens (kept: the input is charged
    // whole) leave it about 1,000.
    let gw = gateway(routed_config(&sim.base_url(), |c| {
        let p = c
            .providers
            .get_mut("sim")
            .unwrap()
            .models
            .get_mut(PREMIUM)
            .unwrap();
        p.tpm = Some(60_000);
        // A long prompt, yet still code: the premium rule's.
        c.classifier.long_context_tokens = 1_000_000;
        c.tiers
            .insert("patient".into(), tier(1_000, 10_000_000, 0, 10_000));
        c.tiers
            .insert("hasty".into(), tier(1_000, 10_000_000, 0, 100));
        for t in ["patient", "hasty"] {
            c.clients.push(tollgate_gateway::config::ClientConfig {
                id: t.into(),
                tier: t.into(),
                key_sha256: vec![tollgate_gateway::auth::hash_key(&format!("key-{t}"))],
                limits: Default::default(),
            });
        }
        let mut r = route(AUTO);
        r.rules[1].tiers = vec!["enterprise".into(), "patient".into(), "hasty".into()];
        c.routes.insert("auto".into(), r);
    }))
    .await;
    let c = http();
    let big = format!("debug {}", "abcd".repeat(59_000));
    let r = chat(&c, &gw, "enterprise", &auto(&big, 16)).await;
    assert_eq!(trail(&r), served(PREMIUM, "auto/premium", 1));
    // 3,000 more tokens: about two seconds away on the premium model.
    let ask = auto("Fix this Python bug", 3_000);
    let r = chat(&c, &gw, "hasty", &ask).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        trail(&r),
        served(BALANCED, "auto/premium", 1),
        "100 ms is too short to wait"
    );
    let r = chat(&c, &gw, "patient", &ask).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        trail(&r),
        served(PREMIUM, "auto/premium", 1),
        "10 s is long enough"
    );
    assert_eq!(sim.stats.requests_for(PREMIUM), 2);
    assert_eq!(sim.stats.requests_for(BALANCED), 1);
    // The hasty client's refused reservation on the premium model was given
    // back: the bucket holds the two requests that went there.
    let (_, premium) = model_in_use(&gw, PREMIUM).await;
    assert!(
        premium < 59_000.0 + 20.0 + 16.0 + 16.0,
        "premium holds {premium}"
    );
    let (_, hasty) = client_in_use(&gw, "hasty").await;
    assert!(hasty < 100.0, "hasty holds {hasty}");
}

#[tokio::test]
async fn a_route_changed_through_the_admin_api_is_checked_and_applies_at_once() {
    let sim = sim().await;
    let gw = gateway(routed_config(&sim.base_url(), |_| {})).await;
    let c = http();
    let put = |body: Value| send(admin(&c, &gw, Method::PUT, "/admin/routes/auto").json(&body));
    for (body, field) in [
        (
            json!({"rules": [{"models": ["nope"]}]}),
            "routes.auto.rules[0].models[0]",
        ),
        (
            json!({"rules": [{"models": []}]}),
            "routes.auto.rules[0].models",
        ),
        (
            json!({"rules": [{"models": ["cheap"], "tiers": ["gold"]}]}),
            "routes.auto.rules[0].tiers[0]",
        ),
        (json!({"rules": []}), "routes.auto.rules"),
    ] {
        let e = expect_error(put(body.clone()).await, 400, "invalid_route").await;
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains(field), "{body}: {msg}");
    }
    expect_error(put(json!({"rulez": []})).await, 400, "invalid_body").await;
    let r = put(json!({"rules": [{"name": "all", "models": ["balanced"]}]})).await;
    assert_eq!(r.status(), 200);
    let r = chat(&c, &gw, "free", &auto("hi", 5)).await;
    assert_eq!(trail(&r), served(BALANCED, "auto/all", 1));
    let listed = admin_json(&c, &gw, "/admin/routes").await;
    assert_eq!(listed["routes"]["auto"]["source"], "override", "{listed}");
    let o = admin_json(&c, &gw, "/admin/overrides").await;
    assert_eq!(
        o["routes"]["auto"]["rules"][0]["models"],
        json!(["balanced"]),
        "{o}"
    );
    let r = send(admin(
        &c,
        &gw,
        Method::DELETE,
        "/admin/overrides/routes/auto",
    ))
    .await;
    assert_eq!(r.status(), 200);
    let r = chat(&c, &gw, "free", &auto("hi", 5)).await;
    assert_eq!(trail(&r), served(CHEAP, "auto/cheap", 1));
    let listed = admin_json(&c, &gw, "/admin/routes").await;
    assert_eq!(listed["routes"]["auto"]["source"], "file", "{listed}");
}

#[tokio::test]
async fn two_instances_on_redis_agree_on_routes_and_live_changes() {
    let redis = redis::Redis::start().await;
    let sim = sim().await;
    // Live routes are the registry's: both instances on one database.
    let db = fresh_database();
    let shared = |_: ()| {
        let mut c = routed_config(&sim.base_url(), |_| {});
        c.store.url = redis.url.clone();
        c.ledger.url = db.clone();
        c.store.sync_interval_ms = 50;
        c
    };
    let a = gateway(shared(())).await;
    let b = gateway(shared(())).await;
    let c = http();
    let model_of = |r: &reqwest::Response| header(r, "x-tollgate-model").unwrap_or("-").to_string();
    for gw in [&a, &b] {
        let r = chat(&c, gw, "free", &auto("hi", 5)).await;
        assert_eq!(trail(&r), served(CHEAP, "auto/cheap", 1));
    }
    let r = send(
        admin(&c, &a, Method::PUT, "/admin/routes/auto")
            .json(&json!({"rules": [{"name": "all", "models": ["premium", "cheap"]}]})),
    )
    .await;
    assert_eq!(r.status(), 200);
    // A new route, made on one instance only.
    let r = send(
        admin(&c, &a, Method::PUT, "/admin/routes/chat-best")
            .json(&json!({"rules": [{"models": ["balanced"]}]})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let mut best = auto("hi", 5);
    best["model"] = json!("chat-best");
    let hi = auto("hi", 5);
    let every = Duration::from_millis(50);
    for gw in [&a, &b] {
        let r = poll(
            100,
            every,
            || chat(&c, gw, "free", &hi),
            |r| model_of(r) == PREMIUM,
        )
        .await;
        assert_eq!(trail(&r), served(PREMIUM, "auto/all", 1));
        let r = poll(
            100,
            every,
            || chat(&c, gw, "free", &best),
            |r| r.status() == 200,
        )
        .await;
        assert_eq!(trail(&r), served(BALANCED, "chat-best/1", 1));
        let listed = admin_json(&c, gw, "/admin/routes").await;
        assert_eq!(
            listed["routes"]["auto"]["rules"][0]["models"],
            json!(["premium", "cheap"])
        );
    }
    // Removed on the other instance, the file's route is back on both.
    let r = send(admin(
        &c,
        &b,
        Method::DELETE,
        "/admin/overrides/routes/auto",
    ))
    .await;
    assert_eq!(r.status(), 200);
    for gw in [&a, &b] {
        let r = poll(
            100,
            every,
            || chat(&c, gw, "free", &hi),
            |r| model_of(r) == CHEAP,
        )
        .await;
        assert_eq!(trail(&r), served(CHEAP, "auto/cheap", 1));
    }
    // A third instance started now reads the live routes.
    let third = gateway(shared(())).await;
    let r = chat(&c, &third, "free", &best).await;
    assert_eq!(trail(&r), served(BALANCED, "chat-best/1", 1));
}

#[tokio::test]
async fn the_models_list_shows_the_route_aliases_and_each_answers_in_openais_shape() {
    let sim = sim().await;
    let gw = gateway(routed_config(&sim.base_url(), |_| {})).await;
    let c = http();
    let get = |path: &str, key: Option<&str>| {
        let mut r = c.get(format!("{}{path}", gw.url()));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        send(r)
    };
    let ids = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let list: Value = get("/v1/models", Some("key-free"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(
        ids(&list),
        [
            "balanced",
            "cheap",
            "gpt-4o-mini",
            "premium",
            "text-embedding-3-small",
            "auto"
        ],
        "{list}"
    );
    let auto_entry = &list["data"][5];
    assert_eq!(auto_entry["object"], "model");
    assert_eq!(auto_entry["owned_by"], "tollgate");
    assert!(auto_entry["created"].is_u64(), "{auto_entry}");
    assert_eq!(
        auto_entry["tollgate_route"]["models"],
        json!(["cheap", "premium", "balanced"]),
        "each model of the route once, in the order its rules name them"
    );
    // One alias alone, as `client.models.retrieve("auto")` asks for it.
    let r = get("/v1/models/auto", Some("key-free")).await;
    assert_eq!(r.status(), 200);
    let one: Value = r.json().await.unwrap();
    assert_eq!(&one, auto_entry);
    // A route added live is listed and answers at once; the models still do.
    let r = send(
        admin(&c, &gw, Method::PUT, "/admin/routes/chat-cheap")
            .json(&json!({"rules": [{"models": ["cheap"]}]})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let list: Value = get("/v1/models", Some("key-free"))
        .await
        .json()
        .await
        .unwrap();
    assert!(ids(&list).contains(&"chat-cheap".to_string()), "{list}");
    let one: Value = get("/v1/models/chat-cheap", Some("key-free"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["id"], "chat-cheap");
    assert_eq!(one["tollgate_route"]["models"], json!(["cheap"]));
    let one: Value = get("/v1/models/premium", Some("key-free"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["owned_by"], "sim", "{one}");
    // Neither a model nor a route: 404 in OpenAI's shape; no key: 401.
    expect_error(
        get("/v1/models/nope", Some("key-free")).await,
        404,
        "model_not_found",
    )
    .await;
    assert_eq!(get("/v1/models/auto", None).await.status(), 401);
}
