//! Clients and keys issued through the admin API, end to end: two `tollgate
//! serve` processes on one Redis and one PostgreSQL of the test's own, a
//! simulated upstream.
//!
//! - a client made on instance A, and a key issued to it there, work on
//!   instance B within a second; the key is answered once and listed only
//!   by its ends;
//! - a key revoked on A is refused on B within a second;
//! - an expired key is refused on both;
//! - a rotated key keeps working through the overlap, then only the new one;
//! - a key limited to some models is refused the others (403);
//! - a client disabled on A has its keys refused on B within a second,
//!   and served again once enabled;
//! - the audit holds one row per change, on PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::{Dir, Gateway, ADMIN};
use serde_json::{json, Value};
use tollgate_harness::postgres::PostgresServer;
use tollgate_harness::procs::{RedisServer, RedisSpec};

/// The longest a change may take to reach the other instance.
const WITHIN: Duration = Duration::from_secs(1);

async fn admin(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = c.request(method, url).bearer_auth(ADMIN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.expect("admin request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The status of a chat request with `key` for `model`.
async fn chat(c: &reqwest::Client, url: &str, key: &str, model: &str) -> u16 {
    c.post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// How long until `key` is answered `status` on `url` (polled every 10 ms,
/// for at most 5 s), up to the start of the request so answered.
async fn until(c: &reqwest::Client, url: &str, key: &str, status: u16) -> Duration {
    let started = Instant::now();
    loop {
        let sent = started.elapsed();
        let got = chat(c, url, key, "gpt-4o-mini").await;
        if got == status {
            return sent;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{key} still answered {got}, not {status}, after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_issued_revoked_expired_and_rotated_on_one_instance_hold_on_the_other() {
    let dir = Dir::new("keys");
    let redis = RedisServer::start(RedisSpec::default()).expect("redis-server");
    let pg = PostgresServer::start_with(false).expect("PostgreSQL");
    let sim = common::instant_sim().await;
    let mut config = common::config(&sim.base_url(), &[("pro", common::tier(10_000_000, None))]);
    config.store.url = redis.url();
    config.ledger.url = pg.url();
    let a = Gateway::start(&dir.0, "a", config.clone()).await;
    let b = Gateway::start(&dir.0, "b", config).await;
    let c = common::client();
    use reqwest::Method;

    // A client made on A, then made again: one client, no change.
    let made = json!({"id": "acme", "tier": "pro"});
    let (s, v) = admin(
        &c,
        Method::POST,
        format!("{}/admin/clients", a.url),
        Some(made.clone()),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = admin(
        &c,
        Method::POST,
        format!("{}/admin/clients", b.url),
        Some(made),
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = admin(
        &c,
        Method::POST,
        format!("{}/admin/clients", a.url),
        Some(json!({"id": "acme", "tier": "gold"})),
    )
    .await;
    assert_eq!(s, 400, "an unknown tier: {v}");
    let (s, _) = admin(
        &c,
        Method::POST,
        format!("{}/admin/clients", a.url),
        Some(json!({"id": "pro", "tier": "pro"})),
    )
    .await;
    assert_eq!(s, 409, "the id of a config-file client");

    // Issued on A: answered once, works on B within a second.
    let (s, issued) = admin(
        &c,
        Method::POST,
        format!("{}/admin/clients/acme/keys", a.url),
        Some(json!({"name": "ci"})),
    )
    .await;
    assert_eq!(s, 201, "{issued}");
    let key = issued["key"].as_str().unwrap().to_string();
    let id = issued["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("tg-") && key.len() > 30, "{key}");
    let seen = until(&c, &b.url, &key, 200).await;
    eprintln!("issued on A, served on B after {seen:?}");
    assert!(seen <= WITHIN, "issued key reached B after {seen:?}");
    let listed = c
        .get(format!("{}/admin/clients/acme/keys", b.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listed.contains(&key), "a listing shows the key: {listed}");
    let shown = issued["shown"].as_str().unwrap();
    assert!(
        listed.contains(shown) && shown.ends_with(&key[key.len() - 4..]),
        "{listed}"
    );

    // Revoked on A: refused on A at once, on B within a second.
    let (s, v) = admin(
        &c,
        Method::DELETE,
        format!("{}/admin/keys/{id}", a.url),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["revoked_at_ms"].is_i64(), "{v}");
    assert_eq!(chat(&c, &a.url, &key, "gpt-4o-mini").await, 401);
    let gone = until(&c, &b.url, &key, 401).await;
    eprintln!("revoked on A, refused on B after {gone:?}");
    assert!(
        gone <= WITHIN,
        "revoked key still served on B after {gone:?}"
    );
    let (s, _) = admin(
        &c,
        Method::DELETE,
        format!("{}/admin/keys/{id}", b.url),
        None,
    )
    .await;
    assert_eq!(s, 200, "revoking again is no change");
    let (s, _) = admin(
        &c,
        Method::DELETE,
        format!("{}/admin/keys/key_nope", b.url),
        None,
    )
    .await;
    assert_eq!(s, 404);

    // Expiring in 2 s: served, then refused on both.
    let (s, short) = admin(
        &c,
        Method::POST,
        format!("{}/admin/clients/acme/keys", a.url),
        Some(json!({"expires_in_secs": 2})),
    )
    .await;
    assert_eq!(s, 201, "{short}");
    let short_key = short["key"].as_str().unwrap().to_string();
    until(&c, &b.url, &short_key, 200).await;
    let expires = short["expires_at_ms"].as_i64().unwrap();
    let now = tollgate_gateway::ledger::row::now_ms();
    tokio::time::sleep(Duration::from_millis((expires - now).max(0) as u64 + 50)).await;
    for gw in [&a, &b] {
        assert_eq!(
            chat(&c, &gw.url, &short_key, "gpt-4o-mini").await,
            401,
            "expired"
        );
    }

    // Rotated with a 3 s overlap: both keys work, then only the new one.
    let (_, old) = admin(
        &c,
        Method::POST,
        format!("{}/admin/clients/acme/keys", a.url),
        Some(json!({"name": "app"})),
    )
    .await;
    let old_key = old["key"].as_str().unwrap().to_string();
    until(&c, &b.url, &old_key, 200).await;
    let (s, new) = admin(
        &c,
        Method::POST,
        format!(
            "{}/admin/keys/{}/rotate",
            b.url,
            old["id"].as_str().unwrap()
        ),
        Some(json!({"overlap_secs": 3})),
    )
    .await;
    assert_eq!(s, 201, "{new}");
    assert_eq!(new["name"], "app");
    let new_key = new["key"].as_str().unwrap().to_string();
    assert_ne!(new_key, old_key);
    let rotated = Instant::now();
    until(&c, &a.url, &new_key, 200).await;
    for gw in [&a, &b] {
        assert_eq!(
            chat(&c, &gw.url, &old_key, "gpt-4o-mini").await,
            200,
            "inside the overlap"
        );
    }
    tokio::time::sleep(
        Duration::from_secs(3).saturating_sub(rotated.elapsed()) + Duration::from_millis(100),
    )
    .await;
    for gw in [&a, &b] {
        assert_eq!(
            chat(&c, &gw.url, &old_key, "gpt-4o-mini").await,
            401,
            "after the overlap"
        );
        assert_eq!(chat(&c, &gw.url, &new_key, "gpt-4o-mini").await, 200);
    }

    // Limited to one model: another is refused, before anything is reserved.
    let (s, only) = admin(
        &c,
        Method::POST,
        format!("{}/admin/clients/acme/keys", a.url),
        Some(json!({"models": ["gpt-4o-mini"]})),
    )
    .await;
    assert_eq!(s, 201, "{only}");
    let only_key = only["key"].as_str().unwrap().to_string();
    until(&c, &b.url, &only_key, 200).await;
    assert_eq!(chat(&c, &b.url, &only_key, "broken").await, 403);
    let (s, v) = admin(
        &c,
        Method::POST,
        format!("{}/admin/clients/acme/keys", a.url),
        Some(json!({"models": ["gpt-5"]})),
    )
    .await;
    assert_eq!(s, 400, "an unknown model: {v}");

    // The client disabled on A: its keys refused on B within a second;
    // enabled again, served again.
    for (disabled, status) in [(true, 401), (false, 200)] {
        let (s, v) = admin(
            &c,
            Method::PATCH,
            format!("{}/admin/clients/acme", a.url),
            Some(json!({ "disabled": disabled })),
        )
        .await;
        assert_eq!((s, v["disabled"].as_bool()), (200, Some(disabled)), "{v}");
        assert_eq!(chat(&c, &a.url, &new_key, "gpt-4o-mini").await, status);
        let took = until(&c, &b.url, &new_key, status).await;
        eprintln!("client disabled={disabled} on A, answered {status} on B after {took:?}");
        assert!(
            took <= WITHIN,
            "disabled={disabled} reached B after {took:?}"
        );
    }

    // The audit on PostgreSQL: one row per change (the client, four keys
    // issued, one rotated, one revoked, the client disabled and enabled),
    // none for the changes that were none or refused, the same on both
    // instances.
    for gw in [&a, &b] {
        let (s, audit) = admin(&c, Method::GET, format!("{}/admin/audit", gw.url), None).await;
        assert_eq!(s, 200, "{audit}");
        let actions: Vec<&str> = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions.len(), 9, "{audit:#}");
        assert_eq!(actions[8], "POST /admin/clients");
        assert_eq!(actions[0], "PATCH /admin/clients/acme");
        assert!(
            actions[3].starts_with("POST /admin/keys/") && actions[3].ends_with("/rotate"),
            "{actions:?}"
        );
    }
}
