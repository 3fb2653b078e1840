//! Who may do what, right now: tiers, clients and their buckets, rebuilt from
//! the config file plus the live changes made through the admin API
//! ([`Overrides`], field by field: see [`crate::overrides`]). A rebuilt
//! limiter for the same key keeps its state, because the store holds the
//! state and limits travel with every call.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tollgate::{Error as LimitError, OutagePolicy, RateLimiter, Store};

use crate::auth::KeyIndex;
use crate::budget::{usd_to_nano, BudgetLimits};
use crate::config::{
    tier_limits, validate_route, validate_tier, Config, ConfigError, RouteConfig, TierConfig,
};

pub use crate::overrides::Overrides;

/// Why a registry could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The configuration (with the overrides) is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be reached to set up a bucket.
    #[error("the store is unavailable: {0}")]
    Store(String),
}

/// A tier as the request path uses it.
#[derive(Debug)]
pub struct Tier {
    /// Its name.
    pub name: String,
    /// Its settings (file + overrides).
    pub config: TierConfig,
    /// Longest wait in a queue.
    pub max_wait: Duration,
    /// Budgets in nano-USD.
    pub budget: BudgetLimits,
}

/// A client with its tier and bucket.
#[derive(Debug)]
pub struct Client {
    /// Its id.
    pub id: String,
    /// Its tier.
    pub tier: Arc<Tier>,
    /// The client's own bucket (the tier's RPM/TPM/burst), key `client:ID`.
    pub limiter: RateLimiter,
    /// Whether the client's last admission left its bucket plenty of room
    /// (then the next one asks the provider bucket at once; see `admission`).
    pub(crate) roomy: AtomicBool,
}

/// One consistent view of tiers, clients and keys.
#[derive(Debug, Default)]
pub struct Registry {
    /// Tiers by name.
    pub tiers: BTreeMap<String, Arc<Tier>>,
    /// Clients by id.
    pub clients: BTreeMap<String, Arc<Client>>,
    /// Key hash → client id.
    pub keys: KeyIndex,
    /// Routes by name: the file's, with the live ones on top.
    pub routes: BTreeMap<String, RouteConfig>,
}

impl Registry {
    /// Builds the registry from the file and the overrides. Overrides that no
    /// longer fit the file (an unknown tier or client) are skipped with a warning.
    pub async fn build(
        config: &Config,
        overrides: &Overrides,
        store: &Store,
        outage: OutagePolicy,
    ) -> Result<Registry, RegistryError> {
        let classes = config.priority.headroom.len();
        let mut tiers = BTreeMap::new();
        for (name, file_tier) in &config.tiers {
            let at = format!("tiers.{name}");
            validate_tier(&at, file_tier, classes)?;
            let t = match overrides.tiers.get(name) {
                Some(o) => {
                    let t = o.fields.apply(file_tier);
                    match validate_tier(&at, &t, classes) {
                        Ok(()) => t,
                        Err(e) => {
                            tracing::warn!(tier = %name, version = o.version, error = %e, "live override no longer fits the config file; using the file's tier");
                            file_tier.clone()
                        }
                    }
                }
                None => file_tier.clone(),
            };
            let t = &t;
            tiers.insert(
                name.clone(),
                Arc::new(Tier {
                    name: name.clone(),
                    config: t.clone(),
                    max_wait: Duration::from_millis(t.max_wait_ms),
                    budget: BudgetLimits {
                        daily: t.daily_budget_usd.map(usd_to_nano),
                        monthly: t.monthly_budget_usd.map(usd_to_nano),
                    },
                }),
            );
        }
        for name in overrides.tiers.keys().filter(|n| !tiers.contains_key(*n)) {
            tracing::warn!(tier = %name, "live change for a tier that is not in the config file; ignored");
        }
        let mut clients = BTreeMap::new();
        let mut keys = KeyIndex::default();
        for c in &config.clients {
            let tier_name = match overrides.client_tiers.get(&c.id) {
                Some(o) if tiers.contains_key(&o.tier) => &o.tier,
                Some(o) => {
                    tracing::warn!(client = %c.id, tier = %o.tier, "live tier change names an unknown tier; keeping the file's");
                    &c.tier
                }
                None => &c.tier,
            };
            let tier = tiers.get(tier_name).cloned().ok_or_else(|| {
                crate::config::invalid(format!("clients.{}.tier", c.id), "unknown tier")
            })?;
            let limiter = RateLimiter::builder(&format!("client:{}", c.id))
                .store(store.clone())
                .limits(tier_limits(&tier.config))
                .outage(outage)
                // The configuration (and its live changes) decides the limits.
                .replace_stored_limits(true)
                .build()
                .await
                .map_err(|e| match e {
                    LimitError::Store(e) => RegistryError::Store(e.to_string()),
                    e => {
                        crate::config::invalid(format!("tiers.{}", tier.name), e.to_string()).into()
                    }
                })?;
            for h in &c.key_sha256 {
                keys.insert(h, &c.id);
            }
            clients.insert(
                c.id.clone(),
                Arc::new(Client {
                    id: c.id.clone(),
                    tier,
                    limiter,
                    roomy: AtomicBool::new(false),
                }),
            );
        }
        Ok(Registry {
            tiers,
            clients,
            keys,
            routes: routes(config, overrides),
        })
    }
}

/// The file's routes with the live ones on top; a live route that no longer
/// fits the file (a model or tier gone) is skipped with a warning.
fn routes(config: &Config, overrides: &Overrides) -> BTreeMap<String, RouteConfig> {
    let mut routes = config.routes.clone();
    for (name, o) in &overrides.routes {
        match validate_route(config, name, &o.route) {
            Ok(()) => {
                routes.insert(name.clone(), o.route.clone());
            }
            Err(e) => {
                tracing::warn!(route = %name, version = o.version, error = %e, "live route no longer fits the config file; using the file's")
            }
        }
    }
    routes
}
