//! Who may change the registry, and the record of every change: each admin
//! change leaves exactly one audit row (who by token name, what, before,
//! after, when), a change that changes nothing leaves none, the audit is
//! paged; a read-only token reads everything and is refused (403
//! `read_only_token`) on every changing route, changing nothing.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_gateway::auth::hash_key;
use tollgate_gateway::config::{AdminRole, AdminTokenConfig};

const OPS: &str = "ops-token";
const VIEWER: &str = "viewer-token";

async fn gateway_with_tokens() -> (
    tollgate_gateway::upstream_sim::SimUpstream,
    tollgate_gateway::RunningGateway,
    reqwest::Client,
) {
    let sim = sim().await;
    let mut c = config(
        &sim.base_url(),
        model(100_000, 100_000_000),
        &[("pro", pro_tier()), ("free", tier(5, 1_000, 0, 0))],
    );
    c.ledger.url = fresh_database();
    c.admin.tokens = vec![
        AdminTokenConfig {
            name: "ops".into(),
            sha256: hash_key(OPS),
            role: AdminRole::ReadWrite,
        },
        AdminTokenConfig {
            name: "viewer".into(),
            sha256: hash_key(VIEWER),
            role: AdminRole::ReadOnly,
        },
    ];
    (sim, gateway(c).await, http())
}

async fn call(
    c: &reqwest::Client,
    gw: &tollgate_gateway::RunningGateway,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = c
        .request(method, format!("{}{path}", gw.url()))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.expect("admin request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn audit(c: &reqwest::Client, gw: &tollgate_gateway::RunningGateway, query: &str) -> Value {
    let (s, v) = call(
        c,
        gw,
        VIEWER,
        Method::GET,
        &format!("/admin/audit{query}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test]
async fn every_admin_change_writes_one_audit_row_with_who_before_and_after() {
    let (_sim, gw, c) = gateway_with_tokens().await;
    let route = json!({"rules": [{"models": ["gpt-4o-mini"]}]});
    // (token, method, path, body): each one change.
    let changes: Vec<(&str, Method, String, Option<Value>)> = vec![
        (
            ADMIN,
            Method::PATCH,
            "/admin/tiers/pro".into(),
            Some(json!({"rpm": 20})),
        ),
        (
            OPS,
            Method::PUT,
            "/admin/clients/free/tier".into(),
            Some(json!({"tier": "pro"})),
        ),
        (
            OPS,
            Method::PUT,
            "/admin/routes/cheap".into(),
            Some(route.clone()),
        ),
        (
            OPS,
            Method::POST,
            "/admin/clients".into(),
            Some(json!({"id": "acme", "tier": "pro"})),
        ),
        (
            OPS,
            Method::POST,
            "/admin/clients/acme/keys".into(),
            Some(json!({"name": "ci"})),
        ),
        (
            ADMIN,
            Method::DELETE,
            "/admin/overrides/tiers/pro".into(),
            None,
        ),
        (
            ADMIN,
            Method::DELETE,
            "/admin/overrides/clients/free".into(),
            None,
        ),
        (
            ADMIN,
            Method::DELETE,
            "/admin/overrides/routes/cheap".into(),
            None,
        ),
    ];
    let mut key_id = String::new();
    for (token, method, path, body) in &changes {
        let (s, v) = call(&c, &gw, token, method.clone(), path, body.clone()).await;
        assert!(s == 200 || s == 201, "{method} {path}: {s} {v}");
        if path.ends_with("/keys") {
            key_id = v["id"].as_str().unwrap().to_string();
        }
    }
    let (s, rotated) = call(
        &c,
        &gw,
        OPS,
        Method::POST,
        &format!("/admin/keys/{key_id}/rotate"),
        Some(json!({"overlap_secs": 60})),
    )
    .await;
    assert_eq!(s, 201, "{rotated}");
    let revoke = format!("/admin/keys/{key_id}");
    let same = json!({"id": "acme", "tier": "pro"});
    // A revocation (a change), then the same again (no change, no row),
    // then a refused change (no row).
    for (method, path, body, status) in [
        (Method::DELETE, revoke.as_str(), None, 200),
        (Method::POST, "/admin/clients", Some(same), 200),
        (Method::DELETE, revoke.as_str(), None, 200),
        (
            Method::PATCH,
            "/admin/tiers/pro",
            Some(json!({"rpm": 0})),
            400,
        ),
    ] {
        let (s, v) = call(&c, &gw, OPS, method.clone(), path, body).await;
        assert_eq!(s, status, "{method} {path}: {v}");
    }
    let done = changes.len() + 2;

    let all = audit(&c, &gw, "?limit=1000").await;
    let entries = all["entries"].as_array().unwrap();
    assert_eq!(entries.len(), done, "one row per change: {all:#}");
    assert!(all["next"].is_null());
    // Newest first; in order of the changes.
    let mut oldest_first: Vec<&Value> = entries.iter().collect();
    oldest_first.reverse();
    for (i, (token, method, path, _)) in changes.iter().enumerate() {
        let e = oldest_first[i];
        let name = if *token == ADMIN { "admin" } else { "ops" };
        assert_eq!(e["token"], name, "{e}");
        assert_eq!(e["action"], format!("{method} {path}"), "{e}");
        assert!(e["at_ms"].as_i64().unwrap() > 0);
    }
    let text = all.to_string();
    for secret in [ADMIN, OPS, VIEWER, rotated["key"].as_str().unwrap()] {
        assert!(!text.contains(secret), "the audit shows a token or key");
    }
    // Before and after.
    let tier = oldest_first[0];
    assert_eq!(tier["object"], "tier:pro");
    assert_eq!(tier["before"], Value::Null);
    assert_eq!(tier["after"], json!({"fields": {"rpm": 20}}));
    let moved = oldest_first[1];
    assert_eq!(
        (moved["object"].as_str(), &moved["after"]),
        (Some("assignment:free"), &json!({"tier": "pro"}))
    );
    assert_eq!(oldest_first[2]["after"]["route"], route);
    let made = oldest_first[3];
    assert_eq!(made["object"], "client:acme");
    assert_eq!(
        (made["before"].clone(), made["after"]["tier"].clone()),
        (Value::Null, json!("pro"))
    );
    let issued = oldest_first[4];
    assert_eq!(issued["object"], format!("key:{key_id}"));
    assert_eq!(issued["after"]["name"], "ci");
    assert!(issued["after"].get("hash").is_none(), "{issued}");
    let removed = oldest_first[5];
    assert_eq!(
        (removed["before"].clone(), removed["after"].clone()),
        (json!({"fields": {"rpm": 20}}), Value::Null)
    );
    let rotation = oldest_first[8];
    let new_id = rotated["id"].as_str().unwrap();
    assert_eq!(rotation["object"], format!("key:{key_id},key:{new_id}"));
    assert_eq!(rotation["before"][format!("key:{new_id}")], Value::Null);
    assert!(
        rotation["after"][format!("key:{key_id}")]["expires_at_ms"].is_i64(),
        "{rotation}"
    );
    let revoked = oldest_first[9];
    assert!(
        revoked["before"]["revoked_at_ms"].is_null() && revoked["after"]["revoked_at_ms"].is_i64(),
        "{revoked}"
    );

    // Paged: three at a time, each page older than the last, all of them.
    let mut seen = Vec::new();
    let mut query = "?limit=3".to_string();
    loop {
        let page = audit(&c, &gw, &query).await;
        let got = page["entries"].as_array().unwrap();
        assert!(got.len() <= 3);
        seen.extend(got.iter().map(|e| e["version"].as_u64().unwrap()));
        match page["next"].as_u64() {
            Some(next) => query = format!("?limit=3&before={next}"),
            None => break,
        }
    }
    let want: Vec<u64> = entries
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(seen, want);
    let one = audit(&c, &gw, "?object=client:acme").await;
    assert_eq!(one["entries"].as_array().unwrap().len(), 1, "{one}");
    let (s, v) = call(&c, &gw, VIEWER, Method::GET, "/admin/audit?limit=x", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_query")),
        "{v}"
    );
}

#[tokio::test]
async fn a_read_only_token_reads_everything_and_changes_nothing() {
    let (_sim, gw, c) = gateway_with_tokens().await;
    // A client and a key to aim the changes at.
    let (s, _) = call(
        &c,
        &gw,
        OPS,
        Method::POST,
        "/admin/clients",
        Some(json!({"id": "acme", "tier": "pro"})),
    )
    .await;
    assert_eq!(s, 201);
    let (_, key) = call(&c, &gw, OPS, Method::POST, "/admin/clients/acme/keys", None).await;
    let key_id = key["id"].as_str().unwrap();
    let before = audit(&c, &gw, "").await;
    let reads = [
        "/admin/tiers",
        "/admin/clients",
        "/admin/models",
        "/admin/routes",
        "/admin/overrides",
        "/admin/usage",
        "/admin/audit",
        "/admin/clients/acme/keys",
    ];
    let mut seen_reads = Vec::new();
    for path in reads {
        let (s, v) = call(&c, &gw, VIEWER, Method::GET, path, None).await;
        assert_eq!(s, 200, "GET {path}: {v}");
        seen_reads.push(v);
    }
    // Every route that changes something, each with a body it would take.
    let changing: Vec<(Method, String, Value)> = vec![
        (Method::PATCH, "/admin/tiers/pro".into(), json!({"rpm": 20})),
        (
            Method::PUT,
            "/admin/clients/pro/tier".into(),
            json!({"tier": "free"}),
        ),
        (
            Method::PUT,
            "/admin/routes/cheap".into(),
            json!({"rules": [{"models": ["gpt-4o-mini"]}]}),
        ),
        (
            Method::POST,
            "/admin/clients".into(),
            json!({"id": "beta", "tier": "pro"}),
        ),
        (Method::POST, "/admin/clients/acme/keys".into(), json!({})),
        (
            Method::POST,
            format!("/admin/keys/{key_id}/rotate"),
            json!({"overlap_secs": 0}),
        ),
        (Method::DELETE, format!("/admin/keys/{key_id}"), Value::Null),
        (
            Method::DELETE,
            "/admin/overrides/tiers/pro".into(),
            Value::Null,
        ),
        (
            Method::DELETE,
            "/admin/overrides/clients/pro".into(),
            Value::Null,
        ),
        (
            Method::DELETE,
            "/admin/overrides/routes/cheap".into(),
            Value::Null,
        ),
        (
            Method::PATCH,
            "/admin/clients/acme".into(),
            json!({"disabled": true}),
        ),
        (
            Method::PATCH,
            format!("/admin/keys/{key_id}"),
            json!({"name": "x"}),
        ),
        (Method::POST, "/admin/orgs".into(), json!({"id": "grp"})),
        (
            Method::PATCH,
            "/admin/orgs/grp".into(),
            json!({"disabled": true}),
        ),
        (
            Method::PUT,
            "/admin/clients/acme/org".into(),
            json!({"org": null}),
        ),
        (
            Method::PUT,
            "/admin/clients/acme/limits".into(),
            json!({"rpm": 1}),
        ),
        (
            Method::PUT,
            format!("/admin/keys/{key_id}/limits"),
            json!({"rpm": 1}),
        ),
    ];
    // The table holds every changing route the router serves.
    for (method, pattern) in changing_routes() {
        assert!(
            changing
                .iter()
                .any(|(m, p, _)| m.as_str() == method && matches(&pattern, p)),
            "{method} {pattern} is not in the table"
        );
    }
    for (method, path, body) in &changing {
        let body = (!body.is_null()).then(|| body.clone());
        let (s, v) = call(&c, &gw, VIEWER, method.clone(), path, body).await;
        assert_eq!(s, 403, "{method} {path}: {v}");
        assert_eq!(v["error"]["type"], "permission_error", "{v}");
        assert_eq!(v["error"]["code"], "read_only_token", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("viewer"),
            "{v}"
        );
    }
    // Nothing changed: the same listings, no audit row.
    assert_eq!(audit(&c, &gw, "").await, before);
    for (path, was) in reads.iter().zip(&seen_reads) {
        if [
            "/admin/tiers",
            "/admin/routes",
            "/admin/overrides",
            "/admin/clients/acme/keys",
        ]
        .contains(path)
        {
            let (_, now) = call(&c, &gw, VIEWER, Method::GET, path, None).await;
            assert_eq!(&now, was, "{path} changed");
        }
    }
    // The key still works: it was neither rotated nor revoked.
    let r = c
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth(key["key"].as_str().unwrap())
        .json(&chat_body("hi", 5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A wrong token is still a 401, with or without a change.
    let (s, _) = call(
        &c,
        &gw,
        "nope",
        Method::PATCH,
        "/admin/tiers/pro",
        Some(json!({"rpm": 20})),
    )
    .await;
    assert_eq!(s, 401);
}

/// Every (method, path) of the router under `/admin/` other than GET, read
/// from its source.
fn changing_routes() -> Vec<(String, String)> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/server.rs"))
        .expect("server.rs");
    let mut out = Vec::new();
    for chunk in src.split(".route(").skip(1) {
        let Some(path) = chunk.split('"').nth(1).filter(|p| p.starts_with("/admin/")) else {
            continue;
        };
        // The last route's text ends where the router's does.
        let head = chunk.split(".fallback(").next().unwrap_or_default();
        for (call, method) in [
            ("post(", "POST"),
            ("put(", "PUT"),
            ("patch(", "PATCH"),
            ("delete(", "DELETE"),
        ] {
            if head.contains(call) {
                out.push((method.to_string(), path.to_string()));
            }
        }
    }
    assert!(out.len() >= 10, "{out:?}");
    out
}

/// Whether `path` is one of `pattern`'s (`{id}` matching any segment).
fn matches(pattern: &str, path: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.starts_with('{') || x == y)
}

#[tokio::test]
async fn organisations_and_levels_changes_are_audited_like_the_rest() {
    let (_sim, gw, c) = gateway_with_tokens().await;
    let (s, _) = call(
        &c,
        &gw,
        OPS,
        Method::POST,
        "/admin/clients",
        Some(json!({"id": "acme", "tier": "pro"})),
    )
    .await;
    assert_eq!(s, 201);
    let (_, key) = call(&c, &gw, OPS, Method::POST, "/admin/clients/acme/keys", None).await;
    let key_id = key["id"].as_str().unwrap().to_string();
    let changes: Vec<(Method, String, Value, &str)> = vec![
        (
            Method::POST,
            "/admin/orgs".into(),
            json!({"id": "grp"}),
            "org:grp",
        ),
        (
            Method::PATCH,
            "/admin/orgs/grp".into(),
            json!({"disabled": true}),
            "org:grp",
        ),
        (
            Method::PUT,
            "/admin/clients/acme/org".into(),
            json!({"org": "grp"}),
            "client:acme",
        ),
        (
            Method::PUT,
            "/admin/clients/acme/limits".into(),
            json!({"rpm": 7}),
            "client:acme",
        ),
        (
            Method::PUT,
            format!("/admin/keys/{key_id}/limits"),
            json!({"rpm": 3}),
            "key:",
        ),
    ];
    for (method, path, body, _) in &changes {
        let (s, v) = call(&c, &gw, OPS, method.clone(), path, Some(body.clone())).await;
        assert!(s == 200 || s == 201, "{method} {path}: {s} {v}");
    }
    let audit = audit(&c, &gw, "").await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2 + changes.len(), "{audit:#}");
    for (e, (method, path, _, object)) in entries.iter().rev().skip(2).zip(&changes) {
        assert_eq!(e["action"], format!("{method} {path}"), "{e}");
        assert!(e["object"].as_str().unwrap().starts_with(object), "{e}");
        assert_eq!(e["token"], "ops");
        assert_ne!(e["before"], e["after"], "{e}");
    }
    assert_eq!(
        entries[0]["after"]["limits"],
        json!({"rpm": 3}),
        "{:#}",
        entries[0]
    );
    assert_eq!(entries[3]["after"]["disabled"], 1, "{:#}", entries[3]);
}
