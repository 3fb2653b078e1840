//! `tollgate serve --demo`: a complete setup on loopback with no network and
//! no Redis: the simulated upstream, the four tiers, one client per tier, and
//! a catalogue of a premium, a balanced and a cheap model from three
//! providers, each failing now and then as real providers do, and the
//! example configuration's routes (`model: "auto"`, `"chat-cheap"`,
//! `"chat-best"`) over them.

use std::collections::BTreeMap;

use crate::auth::hash_key;
use crate::config::{
    ClassifierConfig, ClientConfig, Config, ModelConfig, ModelKind, ProviderConfig, RouteConfig,
    TierConfig,
};
use crate::registry::issue::{Issued, NewKey, Refused};
use crate::upstream_sim::{Faults, SimConfig};

/// The demo's admin token (loopback only).
pub const ADMIN_TOKEN: &str = "tg-admin-demo";

/// The demo clients: (client id, tier, API key).
pub const CLIENTS: &[(&str, &str, &str)] = &[
    ("acme-free", "free", "tg-demo-free"),
    ("acme-starter", "starter", "tg-demo-starter"),
    ("acme-pro", "professional", "tg-demo-pro"),
    ("acme-enterprise", "enterprise", "tg-demo-enterprise"),
];

/// The premium model: the dearest, the widest context, the tightest limits.
pub const PREMIUM: &str = "claude-opus-4";
/// The balanced model.
pub const BALANCED: &str = "gpt-4o";
/// The cheap model: the cheapest, a million-token context, the widest limits.
pub const CHEAP: &str = "gemini-2.0-flash";

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
        fallbacks: Vec::new(),
        floors: Default::default(),
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
                floor: None,
                weight: None,
                lendable: None,
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

/// The demo's catalogue by provider: (provider, model, config).
fn catalogue() -> Vec<(&'static str, &'static str, ModelConfig)> {
    let with_context = |mut m: ModelConfig, tokens| {
        m.context_window = tokens;
        m
    };
    let falling_back = |mut m: ModelConfig, to: &[&str]| {
        m.fallbacks = to.iter().map(|s| s.to_string()).collect();
        m
    };
    vec![
        (
            "anthropic",
            PREMIUM,
            falling_back(
                with_context(model(50, 40_000, 15.0, 75.0, ModelKind::Chat), 200_000),
                &[BALANCED, CHEAP],
            ),
        ),
        (
            "openai",
            BALANCED,
            falling_back(model(100, 30_000, 2.50, 10.0, ModelKind::Chat), &[CHEAP]),
        ),
        (
            "google",
            CHEAP,
            with_context(
                model(2_000, 4_000_000, 0.10, 0.40, ModelKind::Chat),
                1_048_576,
            ),
        ),
        (
            "openai",
            "gpt-4o-mini",
            model(500, 200_000, 0.15, 0.60, ModelKind::Chat),
        ),
        (
            "openai",
            "text-embedding-3-small",
            model(1_000, 1_000_000, 0.02, 0.0, ModelKind::Embeddings),
        ),
    ]
}

/// How the demo's simulated upstream behaves: answers take 150 ms and
/// stream a chunk every 15 ms; the premium model is sometimes over its
/// limits (429), the balanced one sometimes fails (503) or drops the
/// stream, the cheap one is sometimes slow. Seeded, so a demo run repeats.
/// The premium and balanced models fall back to the cheaper ones
/// (`x-tollgate-model` and `x-tollgate-attempts` on each answer show it).
pub fn sim_config() -> SimConfig {
    let mut faults = Faults {
        seed: 1,
        ..Faults::default()
    };
    for spec in [
        "claude-opus-4=429:2@0.05",
        "gpt-4o=503@0.05",
        "gpt-4o=close:5@0.02",
        "gemini-2.0-flash=slow:1500@0.05",
    ] {
        // The specs above are fixed; a typo is caught by the demo's tests.
        if let Err(e) = faults.add(spec) {
            tracing::error!("demo fault {spec}: {e}");
        }
    }
    SimConfig {
        latency: std::time::Duration::from_millis(150),
        chunk_interval: std::time::Duration::from_millis(15),
        completion_tokens: 40,
        faults,
    }
}

/// The example configuration, whose routes and classifier the demo uses
/// (one source for both).
const EXAMPLE: &str = include_str!("../../../config/tollgate.example.toml");

/// The routes (per tier: premium for enterprise code and analysis, balanced
/// for professional and enterprise, cheap for the rest; a wide context for
/// long prompts; the hint `cheap`) and the classifier of the example
/// configuration.
pub fn routes() -> (BTreeMap<String, RouteConfig>, ClassifierConfig) {
    match toml::from_str::<Config>(EXAMPLE) {
        Ok(c) => (c.routes, c.classifier),
        Err(e) => {
            // The example is checked by the config's tests.
            tracing::error!(error = %e, "the example configuration does not parse");
            Default::default()
        }
    }
}

/// The demo configuration, with the simulated upstream at `upstream_base_url`.
pub fn config(listen: &str, upstream_base_url: &str) -> Config {
    let mut c = Config::default();
    c.server.listen = listen.to_string();
    c.admin.token_sha256 = Some(hash_key(ADMIN_TOKEN));
    for (provider, name, m) in catalogue() {
        c.providers
            .entry(provider.to_string())
            .or_insert_with(|| ProviderConfig {
                base_url: upstream_base_url.to_string(),
                api_key_env: None,
                models: BTreeMap::new(),
            })
            .models
            .insert(name.to_string(), m);
    }
    c.tiers = tiers();
    (c.routes, c.classifier) = routes();
    c.clients = CLIENTS
        .iter()
        .map(|(id, tier, key)| ClientConfig {
            id: id.to_string(),
            tier: tier.to_string(),
            key_sha256: vec![hash_key(key)],
            limits: Default::default(),
        })
        .collect();
    c
}

/// The client the demo makes through the registry at start, and its tier.
pub const NEW_CLIENT: (&str, &str) = ("acme-new", "starter");

/// What the demo does at start through the registry, as the admin API
/// would: makes [`NEW_CLIENT`] and issues it a key, answered once.
pub async fn issue_key(gw: &crate::gateway::Gateway) -> Result<Issued, Refused> {
    let registry = gw.registry();
    let (id, tier) = NEW_CLIENT;
    registry.create_client(id, tier).await?;
    let new = NewKey {
        name: Some("issued by the demo at start".into()),
        ..NewKey::default()
    };
    registry.issue_key(id, &new).await
}

/// The lines `--demo` prints about the key it issued at start.
pub fn issued_banner(gateway_url: &str, issued: &Issued) -> String {
    let (id, tier) = NEW_CLIENT;
    let key = &issued.key;
    format!(
        "\nissued at start through the registry (as POST /admin/clients and POST /admin/clients/{id}/keys do):\n  \
         {id:<16} tier {tier:<13} key {key}   (id {key_id}; shown this once, the gateway keeps its hash; listed as {shown})\n\
         use it:\n  \
         curl -s {gateway_url}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' -d '{{\"model\": \"gpt-4o-mini\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}], \"max_tokens\": 50}}' -i\n\
         issue another, revoke it:\n  \
         curl -s -X POST {gateway_url}/admin/clients/{id}/keys -H 'Authorization: Bearer {ADMIN_TOKEN}' -H 'Content-Type: application/json' -d '{{\"name\": \"ci\"}}'\n  \
         curl -s -X DELETE {gateway_url}/admin/keys/KEY_ID -H 'Authorization: Bearer {ADMIN_TOKEN}'\n  \
         or on the dashboard: {gateway_url}/dashboard/clients/{id}\n",
        key_id = issued.info.id,
        shown = issued.info.shown,
    )
}

/// What `--demo` prints at start.
pub fn banner(gateway_url: &str) -> String {
    let mut s = format!("tollgate demo gateway on {gateway_url} (memory store, simulated upstream on loopback)\n\nclients:\n");
    for (id, tier, key) in CLIENTS {
        s.push_str(&format!("  {id:<16} tier {tier:<13} key {key}\n"));
    }
    s.push_str(&format!("admin token: {ADMIN_TOKEN}   (GET {gateway_url}/admin/clients)\nmetrics:     {gateway_url}/metrics   (with the admin token: curl -H 'Authorization: Bearer {ADMIN_TOKEN}')\ndashboard:   {gateway_url}/dashboard   (sign in with the admin token)\n\ntry:\n"));
    s.push_str(&format!(
        "  curl -s {gateway_url}/v1/chat/completions -H 'Authorization: Bearer tg-demo-pro' -H 'Content-Type: application/json' -d '{{\"model\": \"{PREMIUM}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}], \"max_tokens\": 50}}' -i   # falls back to {BALANCED}, then {CHEAP}, when it fails (see x-tollgate-model)\n"
    ));
    s.push_str(&format!(
        "  curl -s {gateway_url}/v1/chat/completions -H 'Authorization: Bearer tg-demo-free' -H 'Content-Type: application/json' -d '{{\"model\": \"gpt-4o-mini\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}], \"max_tokens\": 50}}' -i\n"
    ));
    s.push_str(&format!(
        "  curl -s {gateway_url}/v1/chat/completions -H 'Authorization: Bearer tg-demo-enterprise' -H 'Content-Type: application/json' -d '{{\"model\": \"auto\", \"messages\": [{{\"role\": \"user\", \"content\": \"Fix this Python bug\"}}], \"max_tokens\": 50}}' -i   # routed by tier and task (see x-tollgate-route and x-tollgate-model)\n"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_has_a_premium_a_balanced_and_a_cheap_model_from_three_providers() {
        let c = config("127.0.0.1:0", "http://127.0.0.1:1/v1");
        let find = |name: &str| {
            c.providers
                .iter()
                .find_map(|(p, pc)| pc.models.get(name).map(|m| (p.clone(), m.clone())))
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        let (pp, premium) = find(PREMIUM);
        let (bp, balanced) = find(BALANCED);
        let (cp, cheap) = find(CHEAP);
        assert!(pp != bp && bp != cp && pp != cp, "{pp} {bp} {cp}");
        assert!(premium.output_usd_per_mtok > balanced.output_usd_per_mtok);
        assert!(balanced.output_usd_per_mtok > cheap.output_usd_per_mtok);
        assert!(premium.input_usd_per_mtok > balanced.input_usd_per_mtok);
        assert!(balanced.input_usd_per_mtok > cheap.input_usd_per_mtok);
        assert!(cheap.context_window > premium.context_window);
        assert!(premium.context_window > balanced.context_window);
        assert!(premium.rpm < balanced.rpm && balanced.rpm < cheap.rpm);
        // Each falls back to the cheaper ones, in order.
        assert_eq!(premium.fallbacks, [BALANCED, CHEAP]);
        assert_eq!(balanced.fallbacks, [CHEAP]);
        c.validate().expect("the demo config is valid");
    }

    #[test]
    fn the_demo_routes_each_tier_to_its_models() {
        use crate::config::TaskClass;
        use crate::routing::Facts;
        let c = config("127.0.0.1:0", "http://127.0.0.1:1/v1");
        let auto = &c.routes["auto"];
        let first = |tier, task, hint| {
            let f = Facts {
                tier,
                task,
                prompt_tokens: 100,
                hint,
            };
            let (_, rule) = auto.select(&f).expect("a rule");
            rule.models[0].clone()
        };
        assert_eq!(first("enterprise", TaskClass::Code, None), PREMIUM);
        assert_eq!(first("enterprise", TaskClass::General, None), BALANCED);
        assert_eq!(first("professional", TaskClass::Code, None), BALANCED);
        assert_eq!(first("free", TaskClass::Analysis, None), CHEAP);
        assert_eq!(first("starter", TaskClass::General, None), CHEAP);
        assert_eq!(first("enterprise", TaskClass::LongContext, None), CHEAP);
        assert_eq!(first("enterprise", TaskClass::Code, Some("cheap")), CHEAP);
        assert!(c.routes.contains_key("chat-cheap") && c.routes.contains_key("chat-best"));
    }

    #[test]
    fn the_demo_faults_parse_and_touch_catalogue_models() {
        let sim = sim_config();
        assert_eq!(sim.faults.by_model.len(), 3, "{:?}", sim.faults);
        let c = config("127.0.0.1:0", "http://127.0.0.1:1/v1");
        for m in sim.faults.by_model.keys() {
            assert!(
                c.providers.values().any(|p| p.models.contains_key(m)),
                "{m}"
            );
        }
    }
}
