//! Clients and keys through the admin API: listed by id in pages, filtered
//! by tier and state, read, moved, disabled (its keys refused) and enabled
//! again; keys paged, read and changed; a key issuance retried with its
//! `Idempotency-Key` answers the same key and never issues a second.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

async fn call(
    c: &reqwest::Client,
    gw: &tollgate_gateway::RunningGateway,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = admin(c, gw, method, path);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = send(r).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn chat_status(c: &reqwest::Client, gw: &tollgate_gateway::RunningGateway, key: &str) -> u16 {
    c.post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth(key)
        .json(&chat_body("hi", 5))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn ids(v: &Value) -> Vec<String> {
    v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

async fn start_with_db() -> (
    tollgate_gateway::upstream_sim::SimUpstream,
    tollgate_gateway::RunningGateway,
    reqwest::Client,
) {
    let sim = sim().await;
    let mut config = config(
        &sim.base_url(),
        model(100_000, 100_000_000),
        &[("pro", pro_tier()), ("free", tier(50, 100_000, 0, 0))],
    );
    config.ledger.url = fresh_database();
    (sim, gateway(config).await, http())
}

#[tokio::test]
async fn clients_are_listed_in_pages_filtered_read_moved_and_disabled() {
    let (_sim, gw, c) = start_with_db().await;
    for (i, tier) in ["pro", "free", "pro", "free", "pro"].iter().enumerate() {
        let (s, v) = call(
            &c,
            &gw,
            Method::POST,
            "/admin/clients",
            Some(json!({"id": format!("c{i}"), "tier": tier})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    // Two a page: every client once, by id.
    let mut seen = Vec::new();
    let mut path = "/admin/clients?limit=2".to_string();
    loop {
        let (s, page) = call(&c, &gw, Method::GET, &path, None).await;
        assert_eq!(s, 200, "{page}");
        assert!(ids(&page).len() <= 2);
        seen.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => path = format!("/admin/clients?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ["c0", "c1", "c2", "c3", "c4", "free", "pro"]);
    let (_, free) = call(&c, &gw, Method::GET, "/admin/clients?tier=free", None).await;
    assert_eq!(ids(&free), ["c1", "c3", "free"]);
    assert_eq!(free["clients"][2]["source"], "file");
    assert_eq!(free["clients"][0]["source"], "api");
    let (s, bad) = call(&c, &gw, Method::GET, "/admin/clients?limit=many", None).await;
    assert_eq!(
        (s, bad["error"]["code"].as_str()),
        (400, Some("invalid_query")),
        "{bad}"
    );

    // Read, moved, disabled: its key refused; enabled: served again.
    let (_, key) = call(&c, &gw, Method::POST, "/admin/clients/c0/keys", None).await;
    let key = key["key"].as_str().unwrap().to_string();
    assert_eq!(chat_status(&c, &gw, &key).await, 200);
    let (s, one) = call(&c, &gw, Method::GET, "/admin/clients/c0", None).await;
    assert_eq!(
        (s, one["tier"].as_str(), one["disabled"].as_bool()),
        (200, Some("pro"), Some(false)),
        "{one}"
    );
    assert!(one["usage"]["requests"]["limit"].is_number(), "{one}");
    let (s, moved) = call(
        &c,
        &gw,
        Method::PATCH,
        "/admin/clients/c0",
        Some(json!({"tier": "free"})),
    )
    .await;
    assert_eq!((s, moved["tier"].as_str()), (200, Some("free")), "{moved}");
    let (s, off) = call(
        &c,
        &gw,
        Method::PATCH,
        "/admin/clients/c0",
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!((s, off["disabled"].as_bool()), (200, Some(true)), "{off}");
    assert_eq!(chat_status(&c, &gw, &key).await, 401);
    let (_, disabled) = call(&c, &gw, Method::GET, "/admin/clients?disabled=true", None).await;
    assert_eq!(ids(&disabled), ["c0"]);
    assert!(disabled["clients"][0]["usage"].is_null());
    let (s, again) = call(
        &c,
        &gw,
        Method::PATCH,
        "/admin/clients/c0",
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(
        (s, again["version"].clone()),
        (200, Value::Null),
        "no change: {again}"
    );
    // Enabled again (served again); refused changes.
    let changes = [
        ("/admin/clients/c0", json!({"disabled": false}), 200),
        ("/admin/clients/pro", json!({"disabled": true}), 409),
        ("/admin/clients/nope", json!({"disabled": true}), 404),
        ("/admin/clients/c0", json!({"tier": "gold"}), 400),
    ];
    for (path, body, status) in changes {
        let (s, v) = call(&c, &gw, Method::PATCH, path, Some(body)).await;
        assert_eq!(s, status, "{path}: {v}");
    }
    assert_eq!(chat_status(&c, &gw, &key).await, 200);
    let (_, audit) = call(&c, &gw, Method::GET, "/admin/audit?object=client:c0", None).await;
    let rows = audit["entries"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "made, moved, disabled, enabled: {audit:#}");
    assert_eq!(
        (
            rows[1]["before"]["disabled"].as_i64(),
            rows[1]["after"]["disabled"].as_i64()
        ),
        (Some(0), Some(1)),
        "{audit:#}"
    );

    // Keys: paged, read, renamed and limited.
    for _ in 0..2 {
        call(&c, &gw, Method::POST, "/admin/clients/c0/keys", None).await;
    }
    let (_, first) = call(&c, &gw, Method::GET, "/admin/clients/c0/keys?limit=2", None).await;
    assert_eq!(first["keys"].as_array().unwrap().len(), 2, "{first}");
    let next = first["next"].as_str().unwrap();
    let (_, rest) = call(
        &c,
        &gw,
        Method::GET,
        &format!("/admin/clients/c0/keys?limit=2&after={next}"),
        None,
    )
    .await;
    assert_eq!(
        (rest["keys"].as_array().unwrap().len(), rest["next"].clone()),
        (1, Value::Null),
        "{rest}"
    );
    let id = first["keys"][0]["id"].as_str().unwrap();
    let (s, k) = call(
        &c,
        &gw,
        Method::PATCH,
        &format!("/admin/keys/{id}"),
        Some(json!({"name": "renamed", "models": ["text-embedding-3-small"]})),
    )
    .await;
    assert_eq!((s, k["name"].as_str()), (200, Some("renamed")), "{k}");
    let (s, k) = call(&c, &gw, Method::GET, &format!("/admin/keys/{id}"), None).await;
    assert_eq!(
        (s, k["models"].clone()),
        (200, json!(["text-embedding-3-small"])),
        "{k}"
    );
    assert_eq!(
        chat_status(&c, &gw, &key).await,
        403,
        "the key may ask for embeddings only"
    );
    let path = format!("/admin/keys/{id}");
    for (method, path, body, status) in [
        (
            Method::PATCH,
            path.as_str(),
            Some(json!({"models": null})),
            200,
        ),
        (
            Method::PATCH,
            path.as_str(),
            Some(json!({"models": ["gpt-9"]})),
            400,
        ),
        (Method::GET, "/admin/keys/key_nope", None, 404),
    ] {
        let (s, v) = call(&c, &gw, method, path, body).await;
        assert_eq!(s, status, "{path}: {v}");
    }
    assert_eq!(chat_status(&c, &gw, &key).await, 200);
}

/// `body` posted to `url` with `Idempotency-Key: idem`: the status,
/// whether it was a replay (`Idempotent-Replayed`), and the answer.
fn post_once(
    c: &reqwest::Client,
    url: &str,
    idem: &'static str,
    body: Value,
) -> impl std::future::Future<Output = (u16, bool, Value)> + Send + 'static {
    let request = c
        .post(url)
        .bearer_auth(ADMIN)
        .header("Idempotency-Key", idem)
        .json(&body);
    async move {
        let r = request.send().await.unwrap();
        let replayed = r.headers().get("idempotent-replayed").is_some();
        (
            r.status().as_u16(),
            replayed,
            r.json::<Value>().await.unwrap(),
        )
    }
}

#[tokio::test]
async fn a_retried_key_issuance_answers_the_same_key_and_never_issues_a_second() {
    let (_sim, gw, c) = start_with_db().await;
    call(
        &c,
        &gw,
        Method::POST,
        "/admin/clients",
        Some(json!({"id": "acme", "tier": "pro"})),
    )
    .await;
    let body = json!({"name": "ci"});
    let url = format!("{}/admin/clients/acme/keys", gw.url());
    let issue = |idem: &'static str, body: Value| post_once(&c, &url, idem, body);
    // Eight at once with one header: one key, told to all eight.
    let answers = spawn_all(8, |_| issue("6f1c2a9e-retry", body.clone())).await;
    let first = &answers[0].2;
    for (s, _, v) in &answers {
        assert_eq!(*s, 201, "{v}");
        assert_eq!((&v["key"], &v["id"]), (&first["key"], &first["id"]), "{v}");
    }
    assert_eq!(
        answers.iter().filter(|(_, replayed, _)| !replayed).count(),
        1
    );
    // A retry later: the same key again.
    let (s, replayed, again) = issue("6f1c2a9e-retry", body.clone()).await;
    assert_eq!((s, replayed, &again["key"]), (201, true, &first["key"]));
    let (s, keys) = call(&c, &gw, Method::GET, "/admin/clients/acme/keys", None).await;
    assert_eq!(
        (s, keys["keys"].as_array().unwrap().len()),
        (200, 1),
        "{keys}"
    );
    assert_eq!(
        chat_status(&c, &gw, first["key"].as_str().unwrap()).await,
        200
    );
    // The header with another body: refused, nothing issued.
    let (s, _, v) = issue("6f1c2a9e-retry", json!({"name": "other"})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    // Another header: another key.
    let (s, replayed, other) = issue("second", body.clone()).await;
    assert_eq!((s, replayed), (201, false));
    assert_ne!(other["key"], first["key"]);
    let (_, keys) = call(&c, &gw, Method::GET, "/admin/clients/acme/keys", None).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2);
    let (_, audit) = call(&c, &gw, Method::GET, "/admin/audit", None).await;
    assert_eq!(
        audit["entries"].as_array().unwrap().len(),
        3,
        "the client and two keys: {audit:#}"
    );
    let stored = std::fs::read(gw.gateway.config.ledger.url.clone()).unwrap();
    let secret = first["key"].as_str().unwrap();
    assert!(
        !stored.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the database holds the key"
    );
}

#[tokio::test]
async fn a_retried_key_rotation_answers_the_same_key_and_rotates_once() {
    let (_sim, gw, c) = start_with_db().await;
    call(
        &c,
        &gw,
        Method::POST,
        "/admin/clients",
        Some(json!({"id": "acme", "tier": "pro"})),
    )
    .await;
    let (s, old) = call(
        &c,
        &gw,
        Method::POST,
        "/admin/clients/acme/keys",
        Some(json!({"name": "ci"})),
    )
    .await;
    assert_eq!(s, 201, "{old}");
    let rotate = format!(
        "{}/admin/keys/{}/rotate",
        gw.url(),
        old["id"].as_str().unwrap()
    );
    let send_rotate = |idem: &'static str, body: Value| post_once(&c, &rotate, idem, body);
    let body = json!({"overlap_secs": 60});
    // Eight at once with one header: one new key, told to all eight.
    let answers = spawn_all(8, |_| send_rotate("rotate-7c1e", body.clone())).await;
    let first = &answers[0].2;
    for (s, _, v) in &answers {
        assert_eq!(*s, 201, "{v}");
        assert_eq!((&v["key"], &v["id"]), (&first["key"], &first["id"]), "{v}");
    }
    assert_eq!(
        answers.iter().filter(|(_, replayed, _)| !replayed).count(),
        1
    );
    let (_, audit) = call(&c, &gw, Method::GET, "/admin/audit", None).await;
    let audited = audit["entries"].as_array().unwrap().len();
    // A retry later: the same key again, still two keys in all.
    let (s, replayed, again) = send_rotate("rotate-7c1e", body.clone()).await;
    assert_eq!((s, replayed, &again["key"]), (201, true, &first["key"]));
    let (_, keys) = call(&c, &gw, Method::GET, "/admin/clients/acme/keys", None).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2, "{keys}");
    for key in [&old["key"], &first["key"]] {
        assert_eq!(chat_status(&c, &gw, key.as_str().unwrap()).await, 200);
    }
    // The header with another body: refused, nothing rotated.
    let (s, _, v) = send_rotate("rotate-7c1e", json!({"overlap_secs": 0})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    assert_eq!(
        chat_status(&c, &gw, old["key"].as_str().unwrap()).await,
        200
    );
    // The same header on an issuance is another request: refused too.
    let r = c
        .post(format!("{}/admin/clients/acme/keys", gw.url()))
        .bearer_auth(ADMIN)
        .header("Idempotency-Key", "rotate-7c1e")
        .json(&json!({"name": "ci"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let (_, audit) = call(&c, &gw, Method::GET, "/admin/audit", None).await;
    assert_eq!(
        audit["entries"].as_array().unwrap().len(),
        audited,
        "the retries changed nothing: {audit:#}"
    );
}

#[tokio::test]
async fn a_client_is_listed_with_its_own_budget_over_its_tiers() {
    let (_sim, gw, c) = start_with_db().await;
    let made = json!({"id": "acme", "tier": "pro", "limits": {"daily_budget_usd": 5.0}});
    let (s, v) = call(&c, &gw, Method::POST, "/admin/clients", Some(made)).await;
    assert_eq!(s, 201, "{v}");
    let (_, one) = call(&c, &gw, Method::GET, "/admin/clients/acme", None).await;
    assert_eq!(one["spend"]["daily_budget_usd"], 5.0, "{one}");
    let (_, listed) = call(&c, &gw, Method::GET, "/admin/clients?tier=pro", None).await;
    assert_eq!(
        listed["clients"][0]["spend"]["daily_budget_usd"], 5.0,
        "{listed}"
    );
}
