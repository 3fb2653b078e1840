//! The real OpenAI Python SDK (`tests/python/sdk_faults.py`) against the
//! gateway in front of misbehaving upstreams (`common/faulty_upstream.rs`):
//! usage read whatever the JSON's spacing, no usage chunk for clients that
//! did not ask, the charge equal to the upstream's usage × prices, a budget
//! that holds under concurrent streams, and an error for every broken stream.

mod common;
#[path = "common/faulty_upstream.rs"]
mod faulty_upstream;
#[path = "common/sdk.rs"]
mod sdk;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use faulty_upstream::{Fault, FaultyUpstream, USAGE};
use tollgate_gateway::config::ProviderConfig;

/// Waits for `who`'s spend to reach `want` USD; returns it.
async fn spent(gw: &tollgate_gateway::RunningGateway, who: &str, want: f64) -> f64 {
    let done = |got: f64| (got - want).abs() < 1e-12;
    let got = settled_spend(gw, who, done).await;
    assert!(done(got), "{who} spent {got}, want {want}");
    got
}

/// What one call costs at $1/M in and $2/M out.
fn usd(input: u64, output: u64) -> f64 {
    (input as f64 + 2.0 * output as f64) / 1e6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_is_charged_the_upstreams_usage_and_sees_every_broken_stream_as_an_error() {
    let faults = [
        ("spaced", Fault::Well { spaced: true }),
        ("compact", Fault::Well { spaced: false }),
        ("cut-close", Fault::CutClose),
        ("cut-chunked", Fault::CutChunked),
        ("silent", Fault::Silent),
        ("stalled", Fault::Drip(Duration::from_millis(800))),
        ("malformed", Fault::Malformed),
    ];
    let mut ups = Vec::new();
    let budget_usd = 0.0002;
    let mut budget_tier = pro_tier();
    budget_tier.daily_budget_usd = Some(budget_usd);
    let mut cfg = config(
        "http://127.0.0.1:9",
        model(1000, 1_000_000),
        &[("pro", pro_tier()), ("budget", budget_tier)],
    );
    cfg.providers.clear();
    cfg.server.upstream_first_byte_timeout_secs = 1.0;
    cfg.server.upstream_idle_timeout_secs = 0.5;
    for (name, fault) in faults {
        let up = FaultyUpstream::start(fault).await;
        let mut m = model(1000, 1_000_000);
        m.tokenizer = Some("o200k_base".into());
        cfg.providers.insert(
            format!("p-{name}"),
            ProviderConfig {
                base_url: up.base_url(),
                api_key_env: None,
                models: BTreeMap::from([(name.to_string(), m)]),
            },
        );
        ups.push(up);
    }
    let gw = gateway(cfg).await;
    let stdout = sdk::run_python("sdk_faults.py", &gw.url()).await;

    // pro: 3 calls to each well model and 1 to `malformed`, at the upstream's
    // usage; the two cut streams their estimated input (9) and the one token
    // they carried, and so the cut Responses stream; the silent and the
    // stalled one their input.
    let want = 7.0 * usd(USAGE.0, USAGE.1) + 3.0 * usd(9, 1) + 2.0 * usd(9, 0);
    spent(&gw, "pro", want).await;

    // budget: each stream that went through at its usage, never past the budget.
    let ok: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("budget streams ok "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("the script prints how many budget streams went through");
    let want = ok * usd(USAGE.0, USAGE.1);
    let got = spent(&gw, "budget", want).await;
    assert!(got <= budget_usd, "spent {got} of a {budget_usd} budget");
    drop(ups);
}
