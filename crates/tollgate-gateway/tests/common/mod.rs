//! Shared pieces of the end-to-end tests: a simulated upstream, a gateway on
//! loopback port 0, a small config, an HTTP client. No mocks: real servers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use tollgate_gateway::auth::hash_key;
use tollgate_gateway::config::{
    ClientConfig, Config, ModelConfig, ModelKind, ProviderConfig, TierConfig,
};
use tollgate_gateway::upstream_sim::{self, SimConfig, SimUpstream};
use tollgate_gateway::RunningGateway;

/// The provider key the gateway must send upstream (from this env variable).
pub const UPSTREAM_KEY_ENV: &str = "TOLLGATE_TEST_UPSTREAM_KEY";
pub const UPSTREAM_KEY: &str = "sk-upstream-secret";
pub const ADMIN: &str = "admin-token";

pub async fn sim() -> SimUpstream {
    sim_with(SimConfig {
        latency: Duration::from_millis(1),
        chunk_interval: Duration::ZERO,
        completion_tokens: 16,
    })
    .await
}

pub async fn sim_with(cfg: SimConfig) -> SimUpstream {
    upstream_sim::start(cfg, 0)
        .await
        .expect("start simulated upstream")
}

pub fn model(rpm: u64, tpm: u64) -> ModelConfig {
    ModelConfig {
        upstream_name: None,
        kind: ModelKind::Chat,
        rpm: Some(rpm),
        tpm: Some(tpm),
        input_tpm: None,
        output_tpm: None,
        burndown: 1.0,
        burst: 1.0,
        input_usd_per_mtok: 1.0,
        output_usd_per_mtok: 2.0,
        context_window: 4096,
        default_max_tokens: 256,
        tokenizer: None,
    }
}

pub fn tier(rpm: u64, tpm: u64, priority: u8, max_wait_ms: u64) -> TierConfig {
    TierConfig {
        rpm: Some(rpm),
        tpm: Some(tpm),
        burst: 1.0,
        priority,
        max_wait_ms,
        daily_budget_usd: None,
        monthly_budget_usd: None,
    }
}

/// A config with one provider (the simulator) serving `gpt-4o-mini` and
/// `text-embedding-3-small`, and the given tiers; one client per tier named
/// after it, with key `key-TIER`.
pub fn config(sim_url: &str, chat_model: ModelConfig, tiers: &[(&str, TierConfig)]) -> Config {
    std::env::set_var(UPSTREAM_KEY_ENV, UPSTREAM_KEY);
    let mut embed = model(100_000, 10_000_000);
    embed.kind = ModelKind::Embeddings;
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.server.max_body_bytes = 64 * 1024;
    c.admin.token_sha256 = Some(hash_key(ADMIN));
    c.providers.insert(
        "sim".into(),
        ProviderConfig {
            base_url: sim_url.to_string(),
            api_key_env: Some(UPSTREAM_KEY_ENV.into()),
            models: BTreeMap::from([
                ("gpt-4o-mini".to_string(), chat_model),
                ("text-embedding-3-small".to_string(), embed),
            ]),
        },
    );
    for (name, t) in tiers {
        c.tiers.insert(name.to_string(), t.clone());
        c.clients.push(ClientConfig {
            id: name.to_string(),
            tier: name.to_string(),
            key_sha256: vec![hash_key(&format!("key-{name}"))],
        });
    }
    c
}

pub async fn gateway(config: Config) -> RunningGateway {
    tollgate_gateway::start(config)
        .await
        .expect("start gateway")
}

pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("client")
}

pub fn chat_body(content: &str, max_tokens: u64) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens})
}

/// POSTs a chat request as client `who`.
pub async fn chat(
    c: &reqwest::Client,
    gw: &RunningGateway,
    who: &str,
    body: &Value,
) -> reqwest::Response {
    c.post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth(format!("key-{who}"))
        .json(body)
        .send()
        .await
        .expect("gateway reachable")
}

pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The error object of an OpenAI-shaped error body.
pub async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("JSON error body");
    let e = v
        .get("error")
        .cloned()
        .expect("OpenAI error shape {\"error\": {...}}");
    for k in ["message", "type", "code"] {
        assert!(e.get(k).is_some(), "error lacks {k}: {e}");
    }
    (status, e)
}

/// Today's spend of a client in USD.
pub async fn spend(gw: &RunningGateway, client: &str) -> f64 {
    let s = gw.gateway.budgets.spend(client).await.expect("spend");
    tollgate_gateway::budget::nano_to_usd(s.today)
}

/// Units of a client's bucket in use, per dimension (requests, tokens).
pub async fn client_in_use(gw: &RunningGateway, client: &str) -> (f64, f64) {
    let reg = gw.gateway.registry();
    let st = reg.clients[client].limiter.status().await.expect("status");
    let get = |d| st.dimension(d).map(|s| s.in_use).unwrap_or(0.0);
    (
        get(tollgate::Dimension::Requests),
        get(tollgate::Dimension::Tokens),
    )
}
