//! The client API as OpenAI's defines it: JSON bodies only (415), message
//! content a string or an array of parts, compressed bodies decoded, errors
//! (405 too) in OpenAI's shape, `GET /v1/models/{id}`, `/v1/responses`
//! under the same limits and charges, a 404 that names what is served for
//! `/v1/completions`, and an `x-request-id` of the gateway's own (UUIDv7) on
//! every answer, the upstream's passed on as `x-upstream-request-id`. And
//! the simulated upstream behind the demo answers as the real API does.

mod common;

use std::io::Write;

use base64::Engine;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

async fn post_raw(
    c: &reqwest::Client,
    gw: &tollgate_gateway::RunningGateway,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = c
        .post(format!("{}{path}", gw.url()))
        .bearer_auth("key-pro")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req).await
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

#[tokio::test]
async fn only_json_bodies_are_taken_and_compressed_ones_are_decoded() {
    let (sim, gw, c) = start(model(100_000, 100_000_000), &[("pro", pro_tier())]).await;
    let body = json_bytes(&chat_body("hi", 5));
    let path = "/v1/chat/completions";
    let r = post_raw(
        &c,
        &gw,
        path,
        &[("content-type", "text/plain")],
        body.clone(),
    )
    .await;
    let e = expect_error(r, 415, "unsupported_media_type").await;
    assert!(
        e["message"].as_str().unwrap().contains("application/json"),
        "{e}"
    );
    let r = post_raw(&c, &gw, path, &[], body.clone()).await;
    expect_error(r, 415, "unsupported_media_type").await;
    assert_eq!(upstream_requests(&sim), 0);
    let ct = ("content-type", "application/json; charset=utf-8");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let r = post_raw(
        &c,
        &gw,
        path,
        &[ct, ("content-encoding", "gzip")],
        gz.finish().unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = post_raw(
        &c,
        &gw,
        path,
        &[ct, ("content-encoding", "br")],
        body.clone(),
    )
    .await;
    let e = expect_error(r, 415, "unsupported_content_encoding").await;
    assert!(e["message"].as_str().unwrap().contains("gzip"), "{e}");
    let r = post_raw(&c, &gw, path, &[ct, ("content-encoding", "gzip")], body).await;
    expect_error(r, 400, "invalid_content_encoding").await;
}

#[tokio::test]
async fn message_content_is_a_string_or_an_array_of_parts() {
    let (_sim, gw, c) = start(model(100_000, 100_000_000), &[("pro", pro_tier())]).await;
    let with = |content: Value| json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "max_tokens": 5});
    let r = chat(&c, &gw, "pro", &with(json!({"a": 1}))).await;
    let e = expect_error(r, 400, "invalid_content").await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("messages[0].content"),
        "{e}"
    );
    let r = chat(&c, &gw, "pro", &with(json!([{"text": "no type"}]))).await;
    expect_error(r, 400, "invalid_content").await;
    let r = chat(&c, &gw, "pro", &with(json!(42))).await;
    expect_error(r, 400, "invalid_content").await;
    let parts = json!([{"type": "text", "text": "hello"}, {"type": "text", "text": "world"}]);
    assert_eq!(chat(&c, &gw, "pro", &with(parts)).await.status(), 200);
    assert_eq!(
        chat(&c, &gw, "pro", &with(json!("hello"))).await.status(),
        200
    );
}

#[tokio::test]
async fn the_surface_answers_as_openai_and_every_answer_has_a_request_id() {
    let (_sim, gw, c) = start(
        model(100_000, 100_000_000),
        &[("pro", tier(2, 100_000, 0, 0))],
    )
    .await;
    let is_v7 = |r: &reqwest::Response| {
        let id = header(r, "x-request-id")
            .unwrap_or_else(|| panic!("no x-request-id on {}", r.status()));
        let u = uuid::Uuid::parse_str(id).expect("a UUID");
        assert_eq!(u.get_version_num(), 7, "{id}");
        u
    };
    // 405 in OpenAI's shape.
    let r = send(
        c.get(format!("{}/v1/chat/completions", gw.url()))
            .bearer_auth("key-pro"),
    )
    .await;
    is_v7(&r);
    expect_error(r, 405, "method_not_allowed").await;
    // Models, one by one.
    let r = send(
        c.get(format!("{}/v1/models/gpt-4o-mini", gw.url()))
            .bearer_auth("key-pro"),
    )
    .await;
    is_v7(&r);
    let m: Value = r.json().await.unwrap();
    assert_eq!(
        (m["id"].as_str(), m["object"].as_str()),
        (Some("gpt-4o-mini"), Some("model"))
    );
    let r = send(
        c.get(format!("{}/v1/models/nope", gw.url()))
            .bearer_auth("key-pro"),
    )
    .await;
    expect_error(r, 404, "model_not_found").await;
    // The legacy completions API: a 404 that says what is served.
    let r = send(
        c.post(format!("{}/v1/completions", gw.url()))
            .bearer_auth("key-pro")
            .json(&json!({"model": "gpt-4o-mini", "prompt": "hi"})),
    )
    .await;
    is_v7(&r);
    let e = expect_error(r, 404, "unsupported_endpoint").await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("/v1/chat/completions"),
        "{e}"
    );
    // Success, 401, 404 and 429 all carry ids, each its own.
    let ok = chat(&c, &gw, "pro", &chat_body("hi", 5)).await;
    assert_eq!(ok.status(), 200);
    let a = is_v7(&ok);
    assert!(header(&ok, "x-upstream-request-id").is_some_and(|v| v.starts_with("req_sim")));
    let r = chat(&c, &gw, "nobody", &chat_body("hi", 5)).await;
    assert_eq!(r.status(), 401);
    let b = is_v7(&r);
    assert_ne!(a, b);
    is_v7(&get(&c, &gw, "/nowhere").await);
    is_v7(&send(admin(&c, &gw, Method::GET, "/admin/tiers")).await);
    assert_eq!(
        chat(&c, &gw, "pro", &chat_body("hi", 5)).await.status(),
        200
    );
    let r = chat(&c, &gw, "pro", &chat_body("hi", 5)).await;
    assert_eq!(r.status(), 429);
    is_v7(&r);
}

#[tokio::test]
async fn the_responses_api_is_served_under_the_same_limits_and_charged_its_usage() {
    let mut t = tier(3, 100_000, 0, 0);
    t.daily_budget_usd = Some(10.0);
    let (_sim, gw, c) = start(model(100_000, 100_000_000), &[("pro", t)]).await;
    let url = format!("{}/v1/responses", gw.url());
    let body = json!({"model": "gpt-4o-mini", "input": "Say hello", "instructions": "Be brief.", "max_output_tokens": 50});
    let r = send(c.post(&url).bearer_auth("key-pro").json(&body)).await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-ratelimit-remaining-requests").is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "response");
    let u = &v["usage"];
    let first =
        u["input_tokens"].as_i64().unwrap() * 1000 + u["output_tokens"].as_i64().unwrap() * 2000;
    let spent = settled_spend(&gw, "pro", |s| s > 0.0).await;
    assert!(
        (spent - tollgate_gateway::budget::nano_to_usd(first)).abs() < 1e-12,
        "{spent} vs {first} nano"
    );
    // Streamed: typed events; the usage of `response.completed` is charged.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let r = send(c.post(&url).bearer_auth("key-pro").json(&streamed)).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let done: Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|e| e["type"] == "response.completed")
        .unwrap_or_else(|| panic!("no response.completed in {text}"));
    let u = &done["response"]["usage"];
    let second =
        u["input_tokens"].as_i64().unwrap() * 1000 + u["output_tokens"].as_i64().unwrap() * 2000;
    let want = tollgate_gateway::budget::nano_to_usd(first + second);
    let spent = settled_spend(&gw, "pro", |s| (s - want).abs() < 1e-12).await;
    assert!((spent - want).abs() < 1e-12, "{spent} vs {want}");
    // The same RPM as chat: the third request of 3 RPM passes, the fourth not.
    assert_eq!(
        chat(&c, &gw, "pro", &chat_body("hi", 5)).await.status(),
        200
    );
    let r = send(c.post(&url).bearer_auth("key-pro").json(&body)).await;
    expect_error(r, 429, "client_rpm_exceeded").await;
    // Bad input is refused as for chat.
    let r = send(
        c.post(&url)
            .bearer_auth("key-pro")
            .json(&json!({"model": "gpt-4o-mini", "input": {"a": 1}})),
    )
    .await;
    expect_error(r, 400, "invalid_input").await;
}

#[tokio::test]
async fn the_simulated_upstream_honours_n_max_tokens_and_encoding_format() {
    let (_sim, gw, c) = start(model(100_000, 100_000_000), &[("pro", pro_tier())]).await;
    let mut body = chat_body("hello", 5);
    body["n"] = json!(2);
    let v: Value = chat(&c, &gw, "pro", &body).await.json().await.unwrap();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "{v}");
    // The simulator writes 16 tokens; max_tokens 5 cuts them.
    assert!(
        choices.iter().all(|ch| ch["finish_reason"] == "length"),
        "{v}"
    );
    assert_eq!(v["usage"]["completion_tokens"], 10);
    let v: Value = chat(&c, &gw, "pro", &chat_body("hello", 100))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let embed = |format: Option<&str>| {
        let mut b = json!({"model": "text-embedding-3-small", "input": "hello"});
        if let Some(f) = format {
            b["encoding_format"] = json!(f);
        }
        let c = c.clone();
        let url = format!("{}/v1/embeddings", gw.url());
        async move {
            let r = send(c.post(url).bearer_auth("key-pro").json(&b)).await;
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["data"][0]["embedding"].clone()
        }
    };
    let floats: Vec<f32> = serde_json::from_value(embed(None).await).unwrap();
    assert_eq!(floats.len(), 8);
    let b64 = embed(Some("base64")).await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().expect("base64 is a string"))
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(decoded, floats);
}
