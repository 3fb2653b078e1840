//! What the steps' unit tests run on: models, clients and books built from
//! a small configuration on the memory store, with no server and no
//! upstream.

use std::collections::BTreeMap;
use std::sync::Arc;

use tollgate::{OutagePolicy, Store};

use super::settle::Books;
use crate::budget::{Budgets, MemoryBudgets};
use crate::config::{ClientConfig, Config, ModelConfig, ModelKind, ProviderConfig, TierConfig};
use crate::metrics::Metrics;
use crate::model::Model;
use crate::registry::{Client, Registry};

/// A chat model limited to `rpm` and `tpm`, at $1/M tokens in and $2/M
/// out, with a 4096-token context.
pub(crate) fn model(rpm: u64, tpm: u64) -> ModelConfig {
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
        fallbacks: Vec::new(),
        floors: Default::default(),
    }
}

/// A tier with burst 1 and no budgets.
pub(crate) fn tier(rpm: u64, tpm: u64, max_wait_ms: u64) -> TierConfig {
    TierConfig {
        rpm: Some(rpm),
        tpm: Some(tpm),
        burst: 1.0,
        priority: 0,
        max_wait_ms,
        daily_budget_usd: None,
        monthly_budget_usd: None,
        floor: None,
        weight: None,
        lendable: None,
    }
}

/// Models, clients (one per tier, named after it) and books.
pub(crate) struct Fixture {
    pub(crate) books: Arc<Books>,
    pub(crate) models: BTreeMap<String, Arc<Model>>,
    pub(crate) registry: Registry,
}

impl Fixture {
    /// Builds `models` and `tiers` on a fresh memory store.
    pub(crate) async fn new(models: &[(&str, ModelConfig)], tiers: &[(&str, TierConfig)]) -> Self {
        let mut c = Config::default();
        c.providers.insert(
            "p".into(),
            ProviderConfig {
                base_url: "http://127.0.0.1:9".into(),
                api_key_env: None,
                models: models
                    .iter()
                    .map(|(n, m)| (n.to_string(), m.clone()))
                    .collect(),
            },
        );
        for (name, t) in tiers {
            c.tiers.insert(name.to_string(), t.clone());
            c.clients.push(ClientConfig {
                id: name.to_string(),
                tier: name.to_string(),
                key_sha256: vec![crate::auth::hash_key(&format!("key-{name}"))],
                limits: Default::default(),
            });
        }
        c.validate().expect("a valid configuration");
        let store = Store::memory();
        let outage = OutagePolicy::Closed;
        let models = crate::gateway::build_models(&c, &store, outage)
            .await
            .expect("models");
        let db = crate::ledger::Store::open("sqlite::memory:")
            .await
            .expect("database");
        let registry = Registry::open(&c, db, &store, outage)
            .await
            .expect("registry");
        let books = Arc::new(Books {
            budgets: Arc::new(Budgets::Memory(MemoryBudgets::new())),
            metrics: Arc::new(Metrics::new(true)),
            ledger: None,
            outage,
            inline: true,
        });
        Fixture {
            books,
            models,
            registry,
        }
    }

    /// The client named `id`.
    pub(crate) fn client(&self, id: &str) -> Arc<Client> {
        self.registry.client(id).expect("a client of the fixture")
    }

    /// The model named `name`.
    pub(crate) fn model(&self, name: &str) -> Arc<Model> {
        self.models[name].clone()
    }
}
