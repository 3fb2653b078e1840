//! `tollgate serve --demo`: a complete setup on loopback with no network and
//! no Redis: the simulated upstream, the four tiers, one client per tier.

use std::collections::BTreeMap;

use crate::auth::hash_key;
use crate::config::{ClientConfig, Config, ModelConfig, ModelKind, ProviderConfig, TierConfig};

/// The demo's admin token (loopback only).
pub const ADMIN_TOKEN: &str = "tg-admin-demo";

/// The demo clients: (client id, tier, API key).
pub const CLIENTS: &[(&str, &str, &str)] = &[
    ("acme-free", "free", "tg-demo-free"),
    ("acme-starter", "starter", "tg-demo-starter"),
    ("acme-pro", "professional", "tg-demo-pro"),
    ("acme-enterprise", "enterprise", "tg-demo-enterprise"),
];

fn model(rpm: u64, tpm: u64, input_price: f64, output_price: f64, kind: ModelKind) -> ModelConfig {
    ModelConfig {
        upstream_name: None,
        kind,
        rpm: Some(rpm),
        tpm: Some(tpm),
        input_tpm: None,
        output_tpm: None,
        burndown: 1.0,
        burst: 1.0,
        input_usd_per_mtok: input_price,
        output_usd_per_mtok: output_price,
        context_window: 128_000,
        default_max_tokens: 512,
        tokenizer: None,
    }
}

/// The four tiers of a typical SaaS.
pub fn tiers() -> BTreeMap<String, TierConfig> {
    let tier =
        |rpm, tpm, burst, priority, max_wait_ms, daily: Option<f64>, monthly: Option<f64>| {
            TierConfig {
                rpm: Some(rpm),
                tpm: Some(tpm),
                burst,
                priority,
                max_wait_ms,
                daily_budget_usd: daily,
                monthly_budget_usd: monthly,
            }
        };
    BTreeMap::from([
        (
            "free".to_string(),
            tier(10, 20_000, 1.0, 3, 0, Some(0.10), Some(1.0)),
        ),
        (
            "starter".to_string(),
            tier(60, 100_000, 1.0, 2, 2_000, Some(2.0), Some(30.0)),
        ),
        (
            "professional".to_string(),
            tier(600, 1_000_000, 1.5, 1, 10_000, Some(50.0), Some(1_000.0)),
        ),
        (
            "enterprise".to_string(),
            tier(3_000, 5_000_000, 2.0, 0, 30_000, None, Some(20_000.0)),
        ),
    ])
}

/// The demo configuration, with the simulated upstream at `upstream_base_url`.
pub fn config(listen: &str, upstream_base_url: &str) -> Config {
    let models = BTreeMap::from([
        (
            "gpt-4o-mini".to_string(),
            model(500, 200_000, 0.15, 0.60, ModelKind::Chat),
        ),
        (
            "gpt-4o".to_string(),
            model(100, 30_000, 2.50, 10.0, ModelKind::Chat),
        ),
        (
            "text-embedding-3-small".to_string(),
            model(1_000, 1_000_000, 0.02, 0.0, ModelKind::Embeddings),
        ),
    ]);
    let mut c = Config::default();
    c.server.listen = listen.to_string();
    c.admin.token_sha256 = Some(hash_key(ADMIN_TOKEN));
    c.providers.insert(
        "simulated".into(),
        ProviderConfig {
            base_url: upstream_base_url.to_string(),
            api_key_env: None,
            models,
        },
    );
    c.tiers = tiers();
    c.clients = CLIENTS
        .iter()
        .map(|(id, tier, key)| ClientConfig {
            id: id.to_string(),
            tier: tier.to_string(),
            key_sha256: vec![hash_key(key)],
        })
        .collect();
    c
}

/// What `--demo` prints at start.
pub fn banner(gateway_url: &str) -> String {
    let mut s = format!("tollgate demo gateway on {gateway_url} (memory store, simulated upstream on loopback)\n\nclients:\n");
    for (id, tier, key) in CLIENTS {
        s.push_str(&format!("  {id:<16} tier {tier:<13} key {key}\n"));
    }
    s.push_str(&format!("admin token: {ADMIN_TOKEN}   (GET {gateway_url}/admin/clients)\nmetrics:     {gateway_url}/metrics   (with the admin token: curl -H 'Authorization: Bearer {ADMIN_TOKEN}')\ndashboard:   {gateway_url}/dashboard   (sign in with the admin token)\n\ntry:\n"));
    s.push_str(&format!(
        "  curl -s {gateway_url}/v1/chat/completions -H 'Authorization: Bearer tg-demo-free' -H 'Content-Type: application/json' -d '{{\"model\": \"gpt-4o-mini\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}], \"max_tokens\": 50}}' -i\n"
    ));
    s
}
