//! Fallback between models, through the gateway, in front of real simulated
//! upstreams that fail as configured (`upstream_sim::Faults`): each failure
//! before the first byte goes to the next candidate; after it a stream ends
//! with an error event; one attempt budget and one deadline per request;
//! nothing stays reserved; the answer says what happened.

mod common;
#[path = "common/fault_case.rs"]
mod fault_case;
#[path = "common/faulty_upstream.rs"]
mod faulty_upstream;

use std::time::{Duration, Instant};

use common::*;
use fault_case::data_lines;
use serde_json::{json, Value};
use tollgate_gateway::config::{Config, ProviderConfig};
use tollgate_gateway::upstream_sim::{Faults, SimConfig, SimUpstream};
use tollgate_gateway::RunningGateway;

const PRIMARY: &str = "gpt-4o-mini";
const BACKUP: &str = "backup";
const THIRD: &str = "third";
/// Far above what any answer here uses: a reservation left behind shows.
const MAX_TOKENS: u64 = 5_000;

async fn failing(specs: &[String]) -> SimUpstream {
    let mut faults = Faults::default();
    for s in specs {
        faults.add(s).unwrap();
    }
    sim_with(SimConfig {
        latency: Duration::from_millis(1),
        chunk_interval: Duration::ZERO,
        completion_tokens: 16,
        faults,
    })
    .await
}

struct Chain {
    primary: SimUpstream,
    others: SimUpstream,
    gw: RunningGateway,
}

/// `gpt-4o-mini` (on one simulated provider, failing as `primary_fault`
/// says) falls back to `backup` and then `third` (on another, failing as
/// `other_faults` say).
async fn chain(
    primary_fault: &str,
    other_faults: &[&str],
    tweak: impl FnOnce(&mut Config),
) -> Chain {
    let primary = failing(&[format!("{PRIMARY}={primary_fault}")]).await;
    let others = failing(
        &other_faults
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    )
    .await;
    let mut m = model(1_000, 1_000_000);
    m.context_window = 128_000;
    m.fallbacks = vec![BACKUP.into(), THIRD.into()];
    let mut c = config(&primary.base_url(), m, &[("pro", pro_tier())]);
    let other = |_| {
        let mut m = model(1_000, 1_000_000);
        m.context_window = 128_000;
        m
    };
    c.providers.insert(
        "other".into(),
        ProviderConfig {
            base_url: others.base_url(),
            api_key_env: Some(UPSTREAM_KEY_ENV.into()),
            models: [
                (BACKUP.to_string(), other(0)),
                (THIRD.to_string(), other(1)),
            ]
            .into(),
        },
    );
    c.server.upstream_timeout_secs = 1.0;
    c.server.upstream_first_byte_timeout_secs = 0.5;
    tweak(&mut c);
    Chain {
        primary,
        others,
        gw: gateway(c).await,
    }
}

fn streamed(stream: bool) -> Value {
    let mut b = chat_body("hello", MAX_TOKENS);
    b["stream"] = json!(stream);
    b
}

fn trail(r: &reqwest::Response) -> (String, String, String) {
    let h = |n| header(r, n).unwrap_or("-").to_string();
    (
        h("x-tollgate-model"),
        h("x-tollgate-route"),
        h("x-tollgate-attempts"),
    )
}

/// Tokens held on the client's and the primary's buckets: what was settled
/// (a few dozen tokens here), never the `MAX_TOKENS` estimate. After a 429
/// the primary's bucket is held back on purpose (the provider asked).
async fn nothing_reserved(gw: &RunningGateway, what: &str) {
    let (_, client) = client_in_use(gw, "pro").await;
    let (_, primary) = model_in_use(gw, PRIMARY).await;
    assert!(client < 500.0, "{what}: client {client}");
    // The admin API shows the same.
    let clients = admin_json(&http(), gw, "/admin/clients").await;
    let pro = clients["clients"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["id"] == "pro"))
        .cloned()
        .unwrap_or_else(|| panic!("{clients}"));
    let shown = pro["usage"]["tokens"]["in_use"].as_f64().unwrap();
    assert!(
        shown < 500.0,
        "{what}: /admin/clients shows {shown} tokens in use"
    );
    if what.starts_with("429") {
        assert!(
            primary > 1_000.0,
            "{what}: a 429 holds the provider back: {primary}"
        );
    } else {
        assert!(primary < 500.0, "{what}: primary {primary}");
    }
}

#[tokio::test]
async fn each_failure_before_the_first_byte_falls_back_to_the_next_candidate() {
    falls_back_on_each_fault(streamed, PRIMARY, |_| {}).await;
}

/// For each failure mode before the first byte, streamed and not: a request
/// (`body`) whose first candidate fails is served by the next one, the
/// answer says so (`route` in `x-tollgate-route`), the next got its own
/// model's name, and nothing stays reserved.
async fn falls_back_on_each_fault(body: fn(bool) -> Value, route: &str, tweak: fn(&mut Config)) {
    for fault in [
        "500",
        "503",
        "429:1",
        "hang",
        "slow:3000",
        "close:2",
        "unreachable",
    ] {
        for stream in [false, true] {
            if fault == "close:2" && stream {
                continue; // after the headers: the next test
            }
            let unreachable = fault == "unreachable";
            let k = chain(if unreachable { "500@0" } else { fault }, &[], |c| {
                tweak(c);
                if unreachable {
                    c.providers.get_mut("sim").unwrap().base_url = closed_port_url();
                }
            })
            .await;
            let r = chat(&http(), &k.gw, "pro", &body(stream)).await;
            let what = format!("{fault}, stream {stream}");
            assert_eq!(r.status(), 200, "{what}");
            assert_eq!(
                trail(&r),
                (BACKUP.into(), route.into(), "2".into()),
                "{what}"
            );
            assert!(header(&r, "x-request-id").is_some(), "{what}");
            let text = r.text().await.unwrap();
            if stream {
                assert!(
                    text.contains("[DONE]") && !text.contains("\"error\""),
                    "{what}: {text}"
                );
            } else {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["usage"]["completion_tokens"], 16, "{what}");
            }
            let tried = if unreachable { 0 } else { 1 };
            assert_eq!(k.primary.stats.requests_for(PRIMARY), tried, "{what}");
            assert_eq!(k.others.stats.requests_for(BACKUP), 1, "{what}");
            assert_eq!(k.others.stats.requests_for(THIRD), 0, "{what}");
            let sent = k.others.stats.last_body.lock().clone().unwrap();
            assert_eq!(
                sent["model"], BACKUP,
                "{what}: the model's own name upstream"
            );
            nothing_reserved(&k.gw, &what).await;
        }
    }
}

/// A loopback address nothing listens on.
fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn a_stream_that_breaks_after_its_first_byte_ends_with_an_error_event_and_no_fallback() {
    let k = chain("close:3", &[], |_| {}).await;
    let r = chat(&http(), &k.gw, "pro", &streamed(true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(trail(&r), (PRIMARY.into(), PRIMARY.into(), "1".into()));
    let events = data_lines(&r.text().await.unwrap());
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{events:?}");
    assert!(last["error"]["message"].is_string(), "{last}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert_eq!(k.others.stats.requests_for(BACKUP), 0);
    nothing_reserved(&k.gw, "").await;
}

#[tokio::test]
async fn the_attempt_budget_bounds_the_fallbacks() {
    // The answer after the last attempt is that attempt's failure.
    for (max, status, attempts, third) in [(2, 502, "2", 0), (3, 200, "3", 1)] {
        let k = chain("503", &["backup=502"], |c| c.server.max_attempts = max).await;
        let r = chat(&http(), &k.gw, "pro", &streamed(false)).await;
        assert_eq!(r.status(), status, "max_attempts {max}");
        let model = if max == 2 { BACKUP } else { THIRD };
        assert_eq!(trail(&r), (model.into(), PRIMARY.into(), attempts.into()));
        assert_eq!(k.primary.stats.requests_for(PRIMARY), 1);
        assert_eq!(k.others.stats.requests_for(BACKUP), 1);
        assert_eq!(k.others.stats.requests_for(THIRD), third);
        nothing_reserved(&k.gw, "").await;
    }
    // With 1 attempt, there is no fallback at all.
    let k = chain("503", &[], |c| c.server.max_attempts = 1).await;
    let r = chat(&http(), &k.gw, "pro", &streamed(true)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(trail(&r), (PRIMARY.into(), PRIMARY.into(), "1".into()));
    assert_eq!(k.others.stats.requests_for(BACKUP), 0);
}

#[tokio::test]
async fn the_deadline_bounds_the_whole_request_whatever_the_fallbacks() {
    for stream in [false, true] {
        // Each attempt may wait 0.5 s; three would take 1.5 s, the
        // deadline cuts the second at 0.8 s and the third never starts.
        let k = chain("hang", &["backup=hang"], |c| {
            c.server.upstream_timeout_secs = 0.5;
            c.server.upstream_first_byte_timeout_secs = 0.5;
            c.server.request_deadline_secs = 0.8;
        })
        .await;
        let t = Instant::now();
        let r = chat(&http(), &k.gw, "pro", &streamed(stream)).await;
        let took = t.elapsed();
        assert!(
            took < Duration::from_millis(1_300),
            "answered after {took:?}"
        );
        assert!(
            took >= Duration::from_millis(800),
            "answered after {took:?}"
        );
        assert_eq!(header(&r, "x-tollgate-attempts"), Some("2"));
        expect_error(r, 504, "upstream_timeout").await;
        assert_eq!(
            k.others.stats.requests_for(THIRD),
            0,
            "no attempt after the deadline"
        );
        nothing_reserved(&k.gw, "").await;
    }
}

#[tokio::test]
async fn gateway_only_metadata_never_goes_upstream() {
    let k = chain("503", &[], |_| {}).await;
    for (metadata, upstream) in [
        (
            json!({"tollgate_route": "cheap", "team": "a"}),
            Some(json!({"team": "a"})),
        ),
        (json!({"tollgate_route": "cheap"}), None),
    ] {
        let mut b = chat_body("hi", 50);
        b["metadata"] = metadata;
        let r = chat(&http(), &k.gw, "pro", &b).await;
        assert_eq!(r.status(), 200);
        for sim in [&k.primary, &k.others] {
            let seen = sim.stats.last_body.lock().clone().unwrap();
            assert_eq!(seen.get("metadata").cloned(), upstream.clone(), "{seen}");
        }
    }
}

#[tokio::test]
async fn every_answer_says_which_model_served_it_on_which_route_in_how_many_attempts() {
    let k = chain("500@0", &[], |_| {}).await;
    let r = chat(&http(), &k.gw, "pro", &streamed(false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(trail(&r), (PRIMARY.into(), PRIMARY.into(), "1".into()));
    assert!(header(&r, "x-request-id").is_some());
    // A refusal before any upstream call says so too.
    let mut b = chat_body("hi", 50);
    b["model"] = json!(BACKUP);
    b["max_tokens"] = json!(10_000_000);
    let r = chat(&http(), &k.gw, "pro", &b).await;
    assert!(r.status().is_client_error(), "{}", r.status());
    assert_eq!(header(&r, "x-tollgate-attempts"), Some("0"));
    assert_eq!(header(&r, "x-tollgate-route"), Some(BACKUP));
}

#[tokio::test]
async fn the_demo_catalogue_falls_back_from_the_premium_model_to_the_cheaper_ones() {
    use tollgate_gateway::demo;
    let mut sim = demo::sim_config();
    sim.latency = Duration::from_millis(1);
    sim.chunk_interval = Duration::ZERO;
    sim.faults = Faults::default();
    sim.faults.add(&format!("{}=503", demo::PREMIUM)).unwrap();
    sim.faults.add(&format!("{}=429", demo::BALANCED)).unwrap();
    let sim = tollgate_gateway::upstream_sim::start(sim, 0).await.unwrap();
    let gw = gateway(demo::config("127.0.0.1:0", &sim.base_url())).await;
    let r = http()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth("tg-demo-pro")
        .json(&json!({"model": demo::PREMIUM, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        trail(&r),
        (demo::CHEAP.into(), demo::PREMIUM.into(), "3".into())
    );
    for m in [demo::PREMIUM, demo::BALANCED, demo::CHEAP] {
        assert_eq!(sim.stats.requests_for(m), 1, "{m}");
    }
}

/// The chain of [`chain`] as a route: `auto`, one rule (`all`) naming the
/// primary, then `backup`, then `third`; the primary has no fallbacks of
/// its own, so only the route's list can serve a request elsewhere.
fn as_route(c: &mut Config) {
    let sim = c.providers.get_mut("sim").unwrap();
    sim.models.get_mut(PRIMARY).unwrap().fallbacks.clear();
    c.routes.insert(
        "auto".into(),
        toml::from_str(&format!(
            "[[rules]]\nname = \"all\"\nmodels = [\"{PRIMARY}\", \"{BACKUP}\", \"{THIRD}\"]\n"
        ))
        .unwrap(),
    );
}

fn routed(stream: bool) -> Value {
    let mut b = streamed(stream);
    b["model"] = json!("auto");
    b
}

#[tokio::test]
async fn a_routed_request_whose_first_model_fails_before_the_first_byte_is_served_by_the_next() {
    falls_back_on_each_fault(routed, "auto/all", as_route).await;
}

#[tokio::test]
async fn a_routed_request_falls_through_every_failing_model_to_the_last() {
    let k = chain("503", &[&format!("{BACKUP}=429:1")], as_route).await;
    let r = chat(&http(), &k.gw, "pro", &routed(false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(trail(&r), (THIRD.into(), "auto/all".into(), "3".into()));
    assert_eq!(k.others.stats.requests_for(BACKUP), 1);
    assert_eq!(k.others.stats.requests_for(THIRD), 1);
    nothing_reserved(&k.gw, "503 then 429").await;
}

#[tokio::test]
async fn a_routed_stream_that_breaks_after_its_first_byte_ends_with_an_error_event() {
    let k = chain("close:3", &[], as_route).await;
    let r = chat(&http(), &k.gw, "pro", &routed(true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(trail(&r), (PRIMARY.into(), "auto/all".into(), "1".into()));
    let events = data_lines(&r.text().await.unwrap());
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{events:?}");
    assert!(last["error"]["message"].is_string(), "{last}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert_eq!(
        k.others.stats.requests_for(BACKUP),
        0,
        "no fallback after the first byte"
    );
    nothing_reserved(&k.gw, "").await;
}

/// Tokens held on the route's later models' buckets: what was settled, never
/// the `MAX_TOKENS` estimate of an attempt that failed or never ran.
async fn nothing_reserved_on_the_route(gw: &RunningGateway, what: &str) {
    for m in [BACKUP, THIRD] {
        let (_, held) = model_in_use(gw, m).await;
        assert!(held < 500.0, "{what}: {m} holds {held} tokens");
    }
}

#[tokio::test]
async fn a_routed_request_stops_at_the_attempt_budget() {
    // The answer after the last attempt is that attempt's failure, as the
    // upstream gave it.
    for (max, status, model, third) in [(2, 502, BACKUP, 0), (3, 200, THIRD, 1)] {
        let k = chain("503", &["backup=502"], |c| {
            as_route(c);
            c.server.max_attempts = max;
        })
        .await;
        let r = chat(&http(), &k.gw, "pro", &routed(false)).await;
        assert_eq!(
            trail(&r),
            (model.into(), "auto/all".into(), max.to_string()),
            "max_attempts {max}"
        );
        if status == 200 {
            assert_eq!(r.status(), 200);
        } else {
            expect_error(r, status, "server_error").await;
        }
        assert_eq!(k.primary.stats.requests_for(PRIMARY), 1);
        assert_eq!(k.others.stats.requests_for(BACKUP), 1);
        assert_eq!(k.others.stats.requests_for(THIRD), third);
        nothing_reserved(&k.gw, "").await;
        nothing_reserved_on_the_route(&k.gw, &format!("max_attempts {max}")).await;
    }
    // With 1 attempt, the route's next models are never tried.
    let k = chain("503", &[], |c| {
        as_route(c);
        c.server.max_attempts = 1;
    })
    .await;
    let r = chat(&http(), &k.gw, "pro", &routed(true)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(trail(&r), (PRIMARY.into(), "auto/all".into(), "1".into()));
    assert_eq!(k.others.stats.requests_for(BACKUP), 0);
    nothing_reserved(&k.gw, "").await;
    nothing_reserved_on_the_route(&k.gw, "max_attempts 1").await;
}

#[tokio::test]
async fn a_routed_request_stops_at_its_deadline_whatever_the_route_has_left() {
    for stream in [false, true] {
        // Each attempt may wait 0.5 s for its first byte; the deadline cuts
        // the second (the route's `backup`) at 0.8 s and `third` never starts.
        let k = chain("hang", &["backup=hang"], |c| {
            as_route(c);
            c.server.upstream_timeout_secs = 0.5;
            c.server.upstream_first_byte_timeout_secs = 0.5;
            c.server.request_deadline_secs = 0.8;
        })
        .await;
        let t = Instant::now();
        let r = chat(&http(), &k.gw, "pro", &routed(stream)).await;
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_millis(1_300),
            "stream {stream}: answered after {took:?}, the deadline was 0.8 s"
        );
        assert_eq!(trail(&r), (BACKUP.into(), "auto/all".into(), "2".into()));
        let e = expect_error(r, 504, "upstream_timeout").await;
        assert!(e["message"].is_string(), "{e}");
        assert_eq!(k.others.stats.requests_for(BACKUP), 1);
        assert_eq!(
            k.others.stats.requests_for(THIRD),
            0,
            "no attempt after the deadline"
        );
        nothing_reserved(&k.gw, "").await;
        nothing_reserved_on_the_route(&k.gw, &format!("stream {stream}")).await;
    }
}
