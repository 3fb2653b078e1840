//! End to end over HTTP: auth, bad input, headers, streaming, upstream errors,
//! embeddings and the admin API. A real simulated upstream on loopback.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

/// What a chat of "hello world" costs once the simulator has answered it:
/// 9 tokens in at $1/M, 16 out at $2/M.
const HELLO_WORLD_USD: f64 = (9.0 * 1.0 + 16.0 * 2.0) / 1e6;

#[tokio::test]
async fn unknown_or_missing_key_gets_401_in_openai_shape() {
    let (sim, gw, c) = start(model(1000, 1_000_000), &[("pro", pro_tier())]).await;
    let no_key = c
        .post(format!("{}/v1/chat/completions", gw.url()))
        .json(&chat_body("hi", 5));
    expect_error(send(no_key).await, 401, "invalid_api_key").await;
    let (status, e) = error_of(chat(&c, &gw, "nobody", &chat_body("hi", 5)).await).await;
    assert_eq!(
        (status, e["type"].as_str()),
        (401, Some("authentication_error"))
    );
    assert_eq!(get(&c, &gw, "/v1/models").await.status(), 401);
    assert_eq!(upstream_requests(&sim), 0);
}

#[tokio::test]
async fn bad_input_is_a_precise_4xx_and_charges_nothing() {
    let (sim, gw, c) = start(model(1000, 1_000_000), &[("pro", pro_tier())]).await;
    let url = format!("{}/v1/chat/completions", gw.url());
    let post_raw = |body: Vec<u8>| {
        send(
            c.post(&url)
                .bearer_auth("key-pro")
                .header("content-type", "application/json")
                .body(body),
        )
    };
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{\"model\": \"gpt-4o-mini\", \"messages\": [".to_vec(), 400, "invalid_json"),
        (br#"{"model": "gpt-4o-mini"}"#.to_vec(), 400, "missing_messages"),
        (br#"{"model": "gpt-4o-mini", "messages": []}"#.to_vec(), 400, "invalid_messages"),
        (br#"{"messages": [{"role": "user", "content": "hi"}]}"#.to_vec(), 400, "missing_model"),
        (serde_json::to_vec(&json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]})).unwrap(), 404, "model_not_found"),
        (serde_json::to_vec(&chat_body("hi", 5000)).unwrap(), 400, "context_length_exceeded"),
        (serde_json::to_vec(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3})).unwrap(), 400, "invalid_value"),
        (serde_json::to_vec(&json!({"model": "text-embedding-3-small", "messages": [{"role": "user", "content": "hi"}]})).unwrap(), 400, "model_not_supported"),
        (serde_json::to_vec(&chat_body(&"x".repeat(70 * 1024), 5)).unwrap(), 413, "request_too_large"),
    ];
    for (body, status, code) in cases {
        expect_error(post_raw(body).await, status, code).await;
    }
    assert_eq!(upstream_requests(&sim), 0, "nothing reached the upstream");
    assert_eq!(
        client_in_use(&gw, "pro").await,
        (0.0, 0.0),
        "nothing charged to the client's bucket"
    );
    assert_eq!(
        spend(&gw, "pro").await,
        0.0,
        "nothing charged to the budget"
    );
}

#[tokio::test]
async fn non_streamed_call_forwards_with_the_provider_key_settles_usage_and_sends_ratelimit_headers(
) {
    let (sim, gw, c) = start(model(1000, 1_000_000), &[("pro", pro_tier())]).await;
    let r = chat(&c, &gw, "pro", &chat_body("hello world", 500)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("100"));
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some("99"));
    assert_eq!(header(&r, "x-ratelimit-limit-tokens"), Some("100000"));
    assert!(header(&r, "x-ratelimit-remaining-tokens").is_some());
    assert!(header(&r, "x-ratelimit-reset-requests").is_some_and(|v| v.ends_with('s')));
    let v: Value = r.json().await.unwrap();
    let (input, output) = (
        v["usage"]["prompt_tokens"].as_u64().unwrap(),
        v["usage"]["completion_tokens"].as_u64().unwrap(),
    );
    assert_eq!((input, output), (9, 16));
    // The provider's key went upstream, never the client's.
    let auth = sim.stats.last_authorization.lock().clone();
    assert_eq!(
        auth.as_deref(),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    // Spend is the actual usage, not the estimate of 500 out.
    assert!((spend(&gw, "pro").await - HELLO_WORLD_USD).abs() < 1e-9);
    // And the bucket got the unused estimate back: far less than 509 tokens in use.
    let (_, tokens) = client_in_use(&gw, "pro").await;
    assert!(tokens <= 25.0 + 1e-6, "tokens in use {tokens}");
}

#[tokio::test]
async fn streamed_call_passes_events_through_and_settles_the_final_usage() {
    let (sim, gw, c) = start(model(1000, 1_000_000), &[("pro", pro_tier())]).await;
    // Without stream_options, with `null` (as if left out) and asking for usage.
    let asks = [
        (None, false),
        (Some(json!(null)), false),
        (Some(json!({"include_usage": true})), true),
    ];
    for (options, client_wants_usage) in asks {
        let mut body = chat_body("hello world", 1000);
        body["stream"] = json!(true);
        if let Some(options) = options {
            body["stream_options"] = options;
        }
        let before = spend(&gw, "pro").await;
        let r = chat(&c, &gw, "pro", &body).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-type"), Some("text/event-stream"));
        assert!(header(&r, "x-ratelimit-remaining-requests").is_some());
        let text = r.text().await.unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.last(), Some(&"data: [DONE]"));
        let content_events = events
            .iter()
            .filter(|e| e.contains("\"content\":\"") && !e.contains("\"content\":\"\""))
            .count();
        assert_eq!(content_events, 16);
        assert_eq!(
            text.contains("\"usage\""),
            client_wants_usage,
            "usage chunk only when the client asked"
        );
        // The gateway always asked the upstream for usage.
        let sent = sim.stats.last_body.lock().clone().unwrap();
        assert_eq!(sent["stream_options"]["include_usage"], json!(true));
        // Settled with the usage of the final chunk, not the estimate.
        let want = HELLO_WORLD_USD;
        let got = poll(
            50,
            Duration::from_millis(10),
            || async { spend(&gw, "pro").await - before },
            |got| (got - want).abs() < 1e-9,
        )
        .await;
        assert!((got - want).abs() < 1e-9, "spend {got} want {want}");
    }
    let mut body = chat_body("hello world", 1000);
    body["stream"] = json!(true);
    body["stream_options"] = json!("include_usage");
    expect_error(chat(&c, &gw, "pro", &body).await, 400, "invalid_type").await;
}

#[tokio::test]
async fn client_disconnect_mid_stream_settles_what_was_used_and_releases_the_rest() {
    let slow_chunks = sim_with(tollgate_gateway::upstream_sim::SimConfig {
        latency: Duration::from_millis(1),
        chunk_interval: Duration::from_millis(20),
        completion_tokens: 16,
        ..Default::default()
    })
    .await;
    let (_sim, gw, c) =
        start_behind(slow_chunks, model(1000, 1_000_000), &[("pro", pro_tier())]).await;
    let mut body = chat_body("hello world [sim:tokens=500]", 1000);
    body["stream"] = json!(true);
    let r = chat(&c, &gw, "pro", &body).await;
    assert_eq!(r.status(), 200);
    let mut s = r.bytes_stream();
    let mut seen = 0;
    while seen < 5 {
        let chunk = s.next().await.unwrap().unwrap();
        seen += String::from_utf8_lossy(&chunk).matches("data:").count();
    }
    drop(s); // the client goes away
    let estimate = (9.0 * 1.0 + 1000.0 * 2.0) / 1e6;
    let got = poll(
        100,
        Duration::from_millis(20),
        || spend(&gw, "pro"),
        |got| *got > 0.0,
    )
    .await;
    // Input plus the few chunks sent: far below the estimate, and above zero.
    assert!(
        got > 9.0 / 1e6 && got < 0.1 * estimate,
        "spend {got}, estimate {estimate}"
    );
    let (_, tokens) = client_in_use(&gw, "pro").await;
    assert!(
        tokens < 100.0,
        "the unused estimate was released: {tokens} tokens in use"
    );
}

#[tokio::test]
async fn upstream_429_and_5xx_pass_through_in_openai_shape_and_429_backs_off_the_provider_bucket() {
    let (_sim, gw, c) = start(model(600, 60_000), &[("pro", pro_tier())]).await;
    let r = chat(&c, &gw, "pro", &chat_body("hi [sim:429]", 10)).await;
    assert_eq!(header(&r, "retry-after"), Some("1"));
    assert!(header(&r, "x-ratelimit-limit-requests").is_some());
    expect_error(r, 429, "rate_limit_exceeded").await;
    // The provider asked for 1 s: the model's bucket holds about 1 s of its TPM.
    let (_, tokens) = model_in_use(&gw, "gpt-4o-mini").await;
    assert!(
        tokens > 900.0,
        "provider bucket backs off: {tokens} tokens in use"
    );

    // It also asked to wait 1 s (`retry-after`): nothing goes to it before.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = chat(&c, &gw, "pro", &chat_body("hi [sim:500]", 10)).await;
    let (status, e) = error_of(r).await;
    assert_eq!((status, e["type"].as_str()), (500, Some("server_error")));
    let r = chat(&c, &gw, "pro", &chat_body("hi [sim:503]", 10)).await;
    expect_error(r, 503, "upstream_503").await;
    assert_eq!(spend(&gw, "pro").await, 0.0, "failed calls cost nothing");
    let m = gw.gateway.metrics.counter(
        "tollgate_upstream_responses_total",
        &[("model", "gpt-4o-mini"), ("status", "429")],
    );
    assert_eq!(m, 1.0);
    let text = send(admin(&c, &gw, reqwest::Method::GET, "/metrics"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("outcome=\"upstream_rate_limited\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn embeddings_models_health_and_readiness() {
    let (_sim, gw, c) = start(model(1000, 1_000_000), &[("pro", pro_tier())]).await;
    let r = send(
        c.post(format!("{}/v1/embeddings", gw.url()))
            .bearer_auth("key-pro")
            .json(&json!({"model": "text-embedding-3-small", "input": ["hello world", "bye"]})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let r = send(
        c.get(format!("{}/v1/models", gw.url()))
            .bearer_auth("key-pro"),
    )
    .await;
    let v: Value = r.json().await.unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["gpt-4o-mini", "text-embedding-3-small"]);
    assert_eq!(get(&c, &gw, "/healthz").await.status(), 200);
    assert_eq!(get(&c, &gw, "/readyz").await.status(), 200);
}

#[tokio::test]
async fn admin_api_lists_usage_and_changes_tiers_live_and_refuses_invalid_changes() {
    let (_sim, gw, c) = start(
        model(1000, 1_000_000),
        &[("free", tier(10, 10_000, 3, 0)), ("pro", pro_tier())],
    )
    .await;
    let wrong_token = c
        .get(format!("{}/admin/clients", gw.url()))
        .bearer_auth("wrong");
    assert_eq!(send(wrong_token).await.status(), 401);
    assert_eq!(
        chat(&c, &gw, "free", &chat_body("hi", 5)).await.status(),
        200
    );
    let v = admin_json(&c, &gw, "/admin/clients").await;
    let free = v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "free")
        .unwrap()
        .clone();
    assert_eq!(free["tier"], "free");
    assert_eq!(free["usage"]["requests"]["in_use"], json!(1.0));
    assert!(free["spend"]["today_usd"].as_f64().unwrap() > 0.0);
    let v = admin_json(&c, &gw, "/admin/tiers").await;
    assert_eq!(v["tiers"].as_array().unwrap().len(), 2);

    // Move the client to pro: its next response carries pro's limits.
    assert_eq!(set_client_tier(&c, &gw, "free", "pro").await.status(), 200);
    assert_eq!(rpm_limit(&c, &gw, "free").await.as_deref(), Some("100"));
    // Change pro's limits: takes effect at once.
    let r = patch_tier(&c, &gw, "pro", &json!({"rpm": 250})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(rpm_limit(&c, &gw, "free").await.as_deref(), Some("250"));

    // Invalid changes: a precise 400 and nothing changes.
    for (path, body, code) in [
        ("/admin/tiers/pro", json!({"burst": -1.0}), "invalid_tier"),
        (
            "/admin/tiers/pro",
            json!({"rpm": 0, "tpm": 0}),
            "invalid_tier",
        ),
        ("/admin/tiers/pro", json!({"priority": 9}), "invalid_tier"),
        ("/admin/tiers/pro", json!({"rpn": 5}), "invalid_body"),
        (
            "/admin/clients/free/tier",
            json!({"tier": "platinum"}),
            "unknown_tier",
        ),
    ] {
        let method = if path.contains("clients") {
            Method::PUT
        } else {
            Method::PATCH
        };
        let (status, e) = error_of(send(admin(&c, &gw, method, path).json(&body)).await).await;
        assert_eq!(
            (status, e["code"].as_str().unwrap()),
            (400, code),
            "{path} {body}: {e}"
        );
    }
    let (status, _) = error_of(patch_tier(&c, &gw, "gold", &json!({"rpm": 5})).await).await;
    assert_eq!(status, 404);
    assert_eq!(
        rpm_limit(&c, &gw, "free").await.as_deref(),
        Some("250"),
        "invalid changes changed nothing"
    );
}
