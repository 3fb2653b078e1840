//! End to end over HTTP: auth, bad input, headers, streaming, upstream errors,
//! embeddings and the admin API. A real simulated upstream on loopback.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

#[tokio::test]
async fn unknown_or_missing_key_gets_401_in_openai_shape() {
    let sim = sim().await;
    let gw = gateway(config(
        &sim.base_url(),
        model(1000, 1_000_000),
        &[("pro", tier(100, 100_000, 0, 0))],
    ))
    .await;
    let c = http();
    let r = c
        .post(format!("{}/v1/chat/completions", gw.url()))
        .json(&chat_body("hi", 5))
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(r).await;
    assert_eq!((status, e["code"].as_str()), (401, Some("invalid_api_key")));
    let r = c
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth("key-nobody")
        .json(&chat_body("hi", 5))
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(r).await;
    assert_eq!(
        (status, e["type"].as_str()),
        (401, Some("authentication_error"))
    );
    let r = c
        .get(format!("{}/v1/models", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        sim.stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn bad_input_is_a_precise_4xx_and_charges_nothing() {
    let sim = sim().await;
    let gw = gateway(config(
        &sim.base_url(),
        model(1000, 1_000_000),
        &[("pro", tier(100, 100_000, 0, 0))],
    ))
    .await;
    let c = http();
    let url = format!("{}/v1/chat/completions", gw.url());
    let send = |body: Vec<u8>| {
        let c = c.clone();
        let url = url.clone();
        async move {
            c.post(url)
                .bearer_auth("key-pro")
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
        }
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
        let (got, e) = error_of(send(body).await).await;
        assert_eq!(
            (got, e["code"].as_str().unwrap_or("")),
            (status, code),
            "{e}"
        );
    }
    assert_eq!(
        sim.stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing reached the upstream"
    );
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
    let sim = sim().await;
    let gw = gateway(config(
        &sim.base_url(),
        model(1000, 1_000_000),
        &[("pro", tier(100, 100_000, 0, 0))],
    ))
    .await;
    let c = http();
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
    // Spend is the actual usage (9 in at $1/M, 16 out at $2/M), not the estimate of 500 out.
    let want = (9.0 * 1.0 + 16.0 * 2.0) / 1e6;
    assert!((spend(&gw, "pro").await - want).abs() < 1e-9);
    // And the bucket got the unused estimate back: far less than 509 tokens in use.
    let (_, tokens) = client_in_use(&gw, "pro").await;
    assert!(tokens <= 25.0 + 1e-6, "tokens in use {tokens}");
}

#[tokio::test]
async fn streamed_call_passes_events_through_and_settles_the_final_usage() {
    let sim = sim().await;
    let gw = gateway(config(
        &sim.base_url(),
        model(1000, 1_000_000),
        &[("pro", tier(100, 100_000, 0, 0))],
    ))
    .await;
    let c = http();
    for client_wants_usage in [false, true] {
        let mut body = chat_body("hello world", 1000);
        body["stream"] = json!(true);
        if client_wants_usage {
            body["stream_options"] = json!({"include_usage": true});
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
        // Settled with the usage of the final chunk (9 in, 16 out), not the estimate.
        let want = (9.0 * 1.0 + 16.0 * 2.0) / 1e6;
        let mut got = 0.0;
        for _ in 0..50 {
            got = spend(&gw, "pro").await - before;
            if (got - want).abs() < 1e-9 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!((got - want).abs() < 1e-9, "spend {got} want {want}");
    }
}

#[tokio::test]
async fn client_disconnect_mid_stream_settles_what_was_used_and_releases_the_rest() {
    let sim = sim_with(tollgate_gateway::upstream_sim::SimConfig {
        latency: Duration::from_millis(1),
        chunk_interval: Duration::from_millis(20),
        completion_tokens: 16,
    })
    .await;
    let gw = gateway(config(
        &sim.base_url(),
        model(1000, 1_000_000),
        &[("pro", tier(100, 100_000, 0, 0))],
    ))
    .await;
    let c = http();
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
    let mut got = 0.0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        got = spend(&gw, "pro").await;
        if got > 0.0 {
            break;
        }
    }
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
    let sim = sim().await;
    let gw = gateway(config(
        &sim.base_url(),
        model(600, 60_000),
        &[("pro", tier(100, 100_000, 0, 0))],
    ))
    .await;
    let c = http();
    let r = chat(&c, &gw, "pro", &chat_body("hi [sim:429]", 10)).await;
    assert_eq!(header(&r, "retry-after"), Some("1"));
    assert!(header(&r, "x-ratelimit-limit-requests").is_some());
    let (status, e) = error_of(r).await;
    assert_eq!(
        (status, e["code"].as_str()),
        (429, Some("rate_limit_exceeded"))
    );
    // The provider asked for 1 s: the model's bucket holds about 1 s of its TPM.
    let st = gw.gateway.models["gpt-4o-mini"]
        .limiter
        .status()
        .await
        .unwrap();
    let tokens = st.dimension(tollgate::Dimension::Tokens).unwrap().in_use;
    assert!(
        tokens > 900.0,
        "provider bucket backs off: {tokens} tokens in use"
    );

    let r = chat(&c, &gw, "pro", &chat_body("hi [sim:500]", 10)).await;
    let (status, e) = error_of(r).await;
    assert_eq!((status, e["type"].as_str()), (500, Some("server_error")));
    let r = chat(&c, &gw, "pro", &chat_body("hi [sim:503]", 10)).await;
    let (status, e) = error_of(r).await;
    assert_eq!((status, e["code"].as_str()), (503, Some("upstream_503")));
    assert_eq!(spend(&gw, "pro").await, 0.0, "failed calls cost nothing");
    let m = gw.gateway.metrics.counter(
        "tollgate_upstream_responses_total",
        &[("model", "gpt-4o-mini"), ("status", "429")],
    );
    assert_eq!(m, 1.0);
    let text = c
        .get(format!("{}/metrics", gw.url()))
        .send()
        .await
        .unwrap()
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
    let sim = sim().await;
    let gw = gateway(config(
        &sim.base_url(),
        model(1000, 1_000_000),
        &[("pro", tier(100, 100_000, 0, 0))],
    ))
    .await;
    let c = http();
    let r = c
        .post(format!("{}/v1/embeddings", gw.url()))
        .bearer_auth("key-pro")
        .json(&json!({"model": "text-embedding-3-small", "input": ["hello world", "bye"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let r = c
        .get(format!("{}/v1/models", gw.url()))
        .bearer_auth("key-pro")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["gpt-4o-mini", "text-embedding-3-small"]);
    assert_eq!(
        c.get(format!("{}/healthz", gw.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/readyz", gw.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn admin_api_lists_usage_and_changes_tiers_live_and_refuses_invalid_changes() {
    let sim = sim().await;
    let gw = gateway(config(
        &sim.base_url(),
        model(1000, 1_000_000),
        &[
            ("free", tier(10, 10_000, 3, 0)),
            ("pro", tier(100, 100_000, 0, 0)),
        ],
    ))
    .await;
    let c = http();
    let admin = |method: reqwest::Method, path: &str| {
        c.request(method, format!("{}{path}", gw.url()))
            .bearer_auth(ADMIN)
    };
    let r = c
        .get(format!("{}/admin/clients", gw.url()))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        chat(&c, &gw, "free", &chat_body("hi", 5)).await.status(),
        200
    );
    let v: Value = admin(reqwest::Method::GET, "/admin/clients")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    let v: Value = admin(reqwest::Method::GET, "/admin/tiers")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tiers"].as_array().unwrap().len(), 2);

    // Move the client to pro: its next response carries pro's limits.
    let r = admin(reqwest::Method::PUT, "/admin/clients/free/tier")
        .json(&json!({"tier": "pro"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = chat(&c, &gw, "free", &chat_body("hi", 5)).await;
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("100"));
    // Change pro's limits: takes effect at once.
    let r = admin(reqwest::Method::PATCH, "/admin/tiers/pro")
        .json(&json!({"rpm": 250}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = chat(&c, &gw, "free", &chat_body("hi", 5)).await;
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("250"));

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
            reqwest::Method::PUT
        } else {
            reqwest::Method::PATCH
        };
        let (status, e) = error_of(admin(method, path).json(&body).send().await.unwrap()).await;
        assert_eq!(
            (status, e["code"].as_str().unwrap()),
            (400, code),
            "{path} {body}: {e}"
        );
    }
    let (status, _) = error_of(
        admin(reqwest::Method::PATCH, "/admin/tiers/gold")
            .json(&json!({"rpm": 5}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let r = chat(&c, &gw, "free", &chat_body("hi", 5)).await;
    assert_eq!(
        header(&r, "x-ratelimit-limit-requests"),
        Some("250"),
        "invalid changes changed nothing"
    );
}
